"""CPU per 20 ms audio frame of the send-side steps the adapter changed (docs/benchmarks.md,
"Per-member cost"): aiortc's RFC 6464 audio level vs meshrtc's numpy one, Opus encoding handed
to the default executor (aiortc) vs inline on the loop thread (meshrtc's ``next_encoded_frame``),
and aiortc's Opus resampler vs none for frames already in Opus's shape (``BitrateOpusEncoder``),
and the Opus encode itself: FFmpeg's libopus wrapper (aiortc's context, called directly) vs
libopus through ctypes (``meshrtc.rtc.opus.OpusEncoder``, issue 17; bare, and inside
``BitrateOpusEncoder`` with its frame-to-buffer step). The two libopus builds differ (PyAV's
bundles 1.6.1, opuslib-next-bundled 1.5.x), so the codec's own work may differ a little too.
With ``--speech``: libopus on bench/voice_loss.py's espeak-ng clip with in-band FEC off and on
(10% expected loss), what a sender pays while the path loses packets (SILK/hybrid plus the
FEC copy; needs espeak-ng).

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
import sys
import time
from pathlib import Path

import av
import numpy as np
from aiortc import rtp
from aiortc.codecs import opus

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.opus import OpusEncoder as LibopusEncoder


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
    """aiortc's OpusEncoder (every frame through its resampler, then FFmpeg) vs
    BitrateOpusEncoder (frames already s16 stereo 48 kHz 960 samples go straight to libopus),
    both inline."""
    results = []
    for encoder in (opus.OpusEncoder(), adapter.BitrateOpusEncoder()):
        start = time.process_time()
        for frame in frames:
            encoder.encode(frame, False)
        results.append(_per_frame_us(time.process_time() - start, len(frames)))
    return results[0], results[1]


def codec_costs(frames: list[av.AudioFrame]) -> tuple[float, float, float]:
    """The encode alone, per frame: FFmpeg's libopus context as aiortc configures it (no
    resampler), libopus through ctypes on the frame's samples, and BitrateOpusEncoder's whole
    direct path (samples out of the AudioFrame, encode, timestamp)."""
    ffmpeg = opus.OpusEncoder().codec
    start = time.process_time()
    for frame in frames:
        ffmpeg.encode(frame)
    theirs = time.process_time() - start
    samples = [np.ascontiguousarray(f.to_ndarray().reshape(-1)) for f in frames]
    bare = LibopusEncoder()
    start = time.process_time()
    for pcm in samples:
        bare.encode(pcm)
    ours = time.process_time() - start
    wrapped = adapter.BitrateOpusEncoder()
    start = time.process_time()
    for frame in frames:
        wrapped.encode(frame, False)
    whole = time.process_time() - start
    return tuple(_per_frame_us(t, len(frames)) for t in (theirs, ours, whole))  # type: ignore[return-value]


def fec_costs() -> tuple[float, float]:
    """libopus per 20 ms of speech at 96 kb/s: in-band FEC off, then on at 10% expected loss."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
    from voice_clip import speak

    mono = (np.clip(speak(), -1, 1) * 32767).astype(np.int16)
    stereo = np.repeat(mono, 2)
    pcm = [stereo[i : i + 1920] for i in range(0, len(stereo) - 1919, 1920)]
    results = []
    for fec, loss in ((False, 0), (True, 10)):
        encoder = LibopusEncoder()
        encoder.inband_fec, encoder.packet_loss_percent = fec, loss
        start = time.process_time()
        for frame in pcm:
            encoder.encode(frame)
        results.append(_per_frame_us(time.process_time() - start, len(pcm)))
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
    parser.add_argument(
        "--speech", action="store_true", help="also libopus with FEC off/on on the espeak clip"
    )
    args = parser.parse_args(argv)
    frames = _frames(args.frames)
    saved = []
    print(f"{os.cpu_count()} cores, {args.frames} frames per measurement, CPU us per frame")
    for round_ in range(1, args.rounds + 1):
        level_theirs, level_ours = level_costs(frames)
        executor = asyncio.run(_encode(frames, inline=False))
        inline = asyncio.run(_encode(frames, inline=True))
        resampled, direct = resampler_costs(frames)
        ffmpeg, libopus, wrapped = codec_costs(frames)
        saved.append(executor - inline + level_theirs - level_ours + resampled - direct)
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"round {round_}: audio level aiortc {level_theirs:.1f} / numpy {level_ours:.1f}; "
            f"Opus encode via executor {executor:.1f} / inline {inline:.1f}; "
            f"aiortc's (resampler + FFmpeg) {resampled:.1f} / ours (libopus direct) {direct:.1f}; "
            f"encode alone FFmpeg {ffmpeg:.1f} / libopus {libopus:.1f} "
            f"(in BitrateOpusEncoder {wrapped:.1f}); "
            f"saved {saved[-1]:.1f} us per frame; load {load}"
        )
        if args.speech:
            off, on = fec_costs()
            print(f"  speech: libopus FEC off {off:.1f} / on (10%) {on:.1f}; load {load}")
    print(f"sender_saved_us_per_frame={statistics.median(saved):.1f}")


if __name__ == "__main__":
    main()
