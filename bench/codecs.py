"""Video codec cost: VP8, VP9 and H.264 encode and decode at 320x240, 640x480 and 1280x720.

Run: ``.venv/bin/python bench/codecs.py`` (15-30 s; ``--quick`` for a smoke run).

Each codec runs exactly as meshrtc runs it: the encoder object ``aiortc.rtcrtpsender`` builds once
:mod:`meshrtc.rtc.aiortc_adapter` is imported (aiortc's ``Vp8Encoder`` and ``H264Encoder``,
meshrtc's ``Vp9Encoder``), at its default bitrate, ``encode()`` returning RTP payloads (so
packetization is included); and the adapter's ``VideoDecoder`` on those payloads as ``MediaFrame``s
(depayloading included). The content is camera-like: smooth moving gradients, a moving block and
light noise, a new picture every frame, 30 fps timestamps on the 90 kHz clock.

Per case: 5 warm-up frames (codec open, first keyframe) are not timed, then frames are encoded until
``--frames`` are done or ``--seconds`` have passed, then the same frames are decoded. Timings are
process CPU time (every thread of the process; nothing else runs in it) and wall time per frame.
"CPU %" is CPU time per frame times 30 frames per second: the share of one core the codec needs for
one 30 fps stream. The machine may be shared: CPU time is the steadier of the two figures.

Last line: ``vp9_720p_encode_ms=<CPU ms per 1280x720 VP9 frame encoded>``.
"""

from __future__ import annotations

import argparse
import fractions
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs
import av
import numpy as np
import numpy.typing as npt
from aiortc import rtcrtpsender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.rtc import aiortc_adapter
from meshrtc.rtc.aiortc_adapter import VideoDecoder

RESOLUTIONS = ((320, 240), (640, 480), (1280, 720))
CODECS = (
    RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=97),
    RTCRtpCodecParameters(
        mimeType="video/VP9", clockRate=90_000, payloadType=103, parameters={"profile-id": "0"}
    ),
    RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90_000,
        payloadType=99,
        parameters={
            "level-asymmetry-allowed": "1",
            "packetization-mode": "1",
            "profile-level-id": "42e01f",
        },
    ),
)
FPS = 30
WARMUP = 5
TIME_BASE = fractions.Fraction(1, 90_000)


@attrs.frozen
class Result:
    codec: str
    width: int
    height: int
    frames: int
    encode_cpu_ms: float
    encode_wall_ms: float
    decode_cpu_ms: float
    decode_wall_ms: float
    kbps: float
    packets_per_frame: float

    @property
    def encode_pct(self) -> float:
        return self.encode_cpu_ms * FPS / 10

    @property
    def decode_pct(self) -> float:
        return self.decode_cpu_ms * FPS / 10


def pictures(width: int, height: int, count: int) -> list[av.VideoFrame]:
    """``count`` camera-like yuv420p frames: a textured scene panning, a block moving, noise."""
    rng = np.random.default_rng(20251107)
    pad = 4 * count + 8
    yy, xx = np.mgrid[0 : height + pad, 0 : width + pad].astype(np.float32)
    scene = np.stack(
        [
            128 + 90 * np.sin(xx / 97) * np.cos(yy / 61),
            128 + 90 * np.sin((xx + yy) / 143),
            128 + 90 * np.cos(np.hypot(xx - width / 2, yy - height / 2) / 40),
        ],
        axis=-1,
    )
    out = []
    for i in range(count):
        rgb = scene[2 * i : 2 * i + height, 4 * i : 4 * i + width].copy()
        bx = int((width - width // 5) * (0.5 + 0.5 * np.sin(i / 9)))
        by = int((height - height // 5) * (0.5 + 0.5 * np.cos(i / 13)))
        rgb[by : by + height // 5, bx : bx + width // 5] = (230, 40, 40)
        rgb += rng.normal(0.0, 2.0, rgb.shape).astype(np.float32)
        image: npt.NDArray[np.uint8] = np.clip(rgb, 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * (90_000 // FPS)
        frame.time_base = TIME_BASE
        out.append(frame)
    return out


def timed(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(arg)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run_case(codec: RTCRtpCodecParameters, frames: list[av.VideoFrame], budget: float) -> Result:
    # The encoder aiortc's sender would build for this codec, with meshrtc's patches installed.
    encoder = getattr(rtcrtpsender, aiortc_adapter.GET_ENCODER)(codec)
    encoded: list[tuple[list[bytes], int]] = [encoder.encode(frame) for frame in frames[:WARMUP]]
    enc_cpu = enc_wall = 0.0
    timed_frames = 0
    for frame in frames[WARMUP:]:
        out, cpu, wall = timed(encoder.encode, frame)
        encoded.append(out)
        enc_cpu += cpu
        enc_wall += wall
        timed_frames += 1
        if enc_wall > budget:
            break
    decoder = VideoDecoder(codec)
    sequence = 0
    dec_cpu = dec_wall = 0.0
    decoded = 0
    for i, (payloads, timestamp) in enumerate(encoded):
        packets = []
        for k, payload in enumerate(payloads):
            marker = k == len(payloads) - 1
            packets.append(
                MediaFrame(FrameType.VIDEO, timestamp, sequence, payload, 0.0, marker, 1, 0)
            )
            sequence = (sequence + 1) & 0xFFFF
        pics, cpu, wall = timed(decoder.decode, packets)
        if i >= WARMUP:
            dec_cpu += cpu
            dec_wall += wall
            decoded += len(pics)
    if decoder.errors or decoded != timed_frames:
        raise RuntimeError(f"{codec.mimeType}: {decoder.errors} decode errors, {decoded} frames")
    measured = encoded[WARMUP : WARMUP + timed_frames]
    octets = sum(len(p) for payloads, _ in measured for p in payloads)
    first = frames[0]
    return Result(
        codec.mimeType.split("/")[1],
        first.width,
        first.height,
        timed_frames,
        1000 * enc_cpu / timed_frames,
        1000 * enc_wall / timed_frames,
        1000 * dec_cpu / timed_frames,
        1000 * dec_wall / timed_frames,
        octets * 8 * FPS / timed_frames / 1000,
        sum(len(payloads) for payloads, _ in measured) / timed_frames,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="timed frames per case")
    parser.add_argument("--seconds", type=float, default=2.5, help="encode time budget per case")
    parser.add_argument("--quick", action="store_true", help="10 frames per case")
    args = parser.parse_args(argv)
    count = 10 if args.quick else args.frames
    assert aiortc_adapter.VP9_MIME  # imported for its patches: the VP9 encoder and codec list
    results: list[Result] = []
    print(
        f"{'codec':<5} {'size':>9} {'frames':>6} {'enc ms':>7} {'(wall)':>7} {'dec ms':>7} "
        f"{'(wall)':>7} {'enc %':>6} {'dec %':>6} {'total %':>7} {'kb/s':>6} {'pkt/f':>5}"
    )
    for width, height in RESOLUTIONS:
        frames = pictures(width, height, WARMUP + count)
        for codec in CODECS:
            r = run_case(codec, frames, args.seconds)
            results.append(r)
            print(
                f"{r.codec:<5} {f'{r.width}x{r.height}':>9} {r.frames:>6} "
                f"{r.encode_cpu_ms:>7.2f} {r.encode_wall_ms:>7.2f} {r.decode_cpu_ms:>7.2f} "
                f"{r.decode_wall_ms:>7.2f} {r.encode_pct:>6.1f} {r.decode_pct:>6.1f} "
                f"{r.encode_pct + r.decode_pct:>7.1f} {r.kbps:>6.0f} {r.packets_per_frame:>5.1f}",
                flush=True,
            )
    vp9 = next(r for r in results if r.codec == "VP9" and r.height == 720)
    print(
        f"VP9 1280x720 at 30 fps: encode {vp9.encode_pct:.0f}% + decode {vp9.decode_pct:.0f}% of "
        f"one core (target: under 30%)"
    )
    print(f"vp9_720p_encode_ms={vp9.encode_cpu_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
