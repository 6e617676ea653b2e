"""CPU per 20 ms audio frame of the send-side steps the adapter changed (docs/benchmarks.md,
"Per-member cost"): aiortc's RFC 6464 audio level vs meshrtc's numpy one, Opus encoding handed
to the default executor (aiortc) vs inline on the loop thread (meshrtc's ``next_encoded_frame``),
and aiortc's Opus resampler vs none for frames already in Opus's shape (``BitrateOpusEncoder``).

Run: ``.venv/bin/python bench/sender_costs.py [--frames 500] [--rounds 3]`` (a few seconds).
Process CPU time (all threads), so the executor's hand-off (futures, queue, waking a pool thread,
``call_soon_threadsafe`` back) is counted with the encoding. The transport pays each of these
once per member per 20 ms: 50 times a second. Seeded stereo noise, s16 48 kHz, as the transport's
tracks produce. The load average is printed: the machine may be shared. Last line:
``sender_saved_us_per_frame=<float>`` (the three savings added, median over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import statistics
import time

import av
import numpy as np
from aiortc import rtp
from aiortc.codecs import opus

from meshrtc.rtc import aiortc_adapter as adapter


def _frames(count: int) -> list[av.AudioFrame]:
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        pcm = rng.normal(0, 3000, 1920).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = 960 * i
        frame.time_base = fractions.Fraction(1, 48000)
        frames.append(frame)
    return frames


def _per_frame_us(seconds: float, frames: int) -> float:
    return 1e6 * seconds / frames


def level_costs(frames: list[av.AudioFrame]) -> tuple[float, float]:
    start = time.process_time()
    for frame in frames:
        rtp.compute_audio_level_dbov(frame)
    theirs = time.process_time() - start
    start = time.process_time()
    for frame in frames:
        adapter.audio_level_dbov(frame)
    ours = time.process_time() - start
    return _per_frame_us(theirs, len(frames)), _per_frame_us(ours, len(frames))


def resampler_costs(frames: list[av.AudioFrame]) -> tuple[float, float]:
    """aiortc's OpusEncoder (every frame through its resampler) vs BitrateOpusEncoder (frames
    already s16 stereo 48 kHz 960 samples go straight to the codec), both inline."""
    results = []
    for encoder in (opus.OpusEncoder(), adapter.BitrateOpusEncoder()):
        start = time.process_time()
        for frame in frames:
            encoder.encode(frame, False)
        results.append(_per_frame_us(time.process_time() - start, len(frames)))
    return results[0], results[1]


async def _encode(frames: list[av.AudioFrame], inline: bool) -> float:
    encoder = adapter.BitrateOpusEncoder()
    loop = asyncio.get_running_loop()
    start = time.process_time()
    for frame in frames:
        if inline:
            encoder.encode(frame, False)
        else:
            await loop.run_in_executor(None, encoder.encode, frame, False)
    return _per_frame_us(time.process_time() - start, len(frames))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500, help="20 ms frames per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    frames = _frames(args.frames)
    saved = []
    print(f"{os.cpu_count()} cores, {args.frames} frames per measurement, CPU us per frame")
    for round_ in range(1, args.rounds + 1):
        level_theirs, level_ours = level_costs(frames)
        executor = asyncio.run(_encode(frames, inline=False))
        inline = asyncio.run(_encode(frames, inline=True))
        resampled, direct = resampler_costs(frames)
        saved.append(executor - inline + level_theirs - level_ours + resampled - direct)
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"round {round_}: audio level aiortc {level_theirs:.1f} / numpy {level_ours:.1f}; "
            f"Opus encode via executor {executor:.1f} / inline {inline:.1f}; "
            f"with resampler {resampled:.1f} / without {direct:.1f}; "
            f"saved {saved[-1]:.1f} us per frame; load {load}"
        )
    print(f"sender_saved_us_per_frame={statistics.median(saved):.1f}")


if __name__ == "__main__":
    main()
