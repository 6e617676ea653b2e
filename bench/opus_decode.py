"""Opus decode cost per 20 ms frame: aiortc's FFmpeg path (meshrtc's decoder until issue 17) vs
libopus directly (:class:`meshrtc.rtc.opus.OpusDecoder`), plus its PLC and FEC recovery.

Run: ``.venv/bin/python bench/opus_decode.py [--seconds 30] [--rounds 5]`` (about 10 s).

Why: every member's audio is decoded once per receiving link, 50 times a second (issue 14's
per-member CPU goal). The old path is what ``AudioDecoder`` did: aiortc's ``get_decoder`` (libopus
behind PyAV/FFmpeg), ``JitterFrame`` in, ``av.AudioFrame`` s16 out, to float32 in [-1, 1). The new
path is the same work through ctypes into the libopus that ``opuslib-next-bundled`` ships.

Input: a voiced synthetic signal (harmonics of a gliding 140 Hz pitch, a formant near 700 Hz, a
slow level swing: tests/test_opus.py's), stereo, encoded once with libopus at 96 kb/s (aiortc's
sending bitrate) without FEC, and at 32 kb/s with in-band FEC for the recovery figure. Each
figure is the best of ``--rounds`` passes over the packets: process CPU time per frame (the
steadier figure on a shared machine) and wall time, with the load average.
"CPU % at 50/s" is the share of one core a single decoded stream costs.

Last line: ``opus_decode_us=<CPU µs per frame, libopus directly>``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import opuslib_next
import opuslib_next.api.ctl
import opuslib_next.api.encoder
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from meshrtc.rtc.opus import OpusDecoder, has_fec

SR = 48_000
FRAME = 960
_SIGNAL_VOICE = 3001  # OPUS_SIGNAL_VOICE
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=SR, channels=2, payloadType=111)


def voiced(seconds: float) -> npt.NDArray[np.int16]:
    t = np.arange(int(SR * seconds)) / SR
    phase = 2 * np.pi * np.cumsum(140.0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))) / SR
    x = sum(
        np.sin(k * phase) * (np.exp(-(((k * 140.0 - 700) / 600) ** 2)) + 0.3) / k
        for k in range(1, 30)
    )
    x = np.asarray(x) / np.abs(x).max() * 0.4 * (0.8 + 0.2 * np.sin(2 * np.pi * 2 * t))
    mono = (x * 32767).astype(np.int16)
    return np.stack([mono, mono // 2], axis=1)


def encode(pcm: npt.NDArray[np.int16], bitrate: int, fec: bool) -> list[bytes]:
    encoder: Any = opuslib_next.Encoder(SR, 2, "voip" if fec else "audio")
    encoder.bitrate = bitrate
    encoder.inband_fec = int(fec)
    encoder.packet_loss_perc = 20 if fec else 0
    if fec:  # speech mode: SILK, which is what carries LBRR (FEC) data
        opuslib_next.api.encoder.encoder_ctl(
            encoder.encoder_state, opuslib_next.api.ctl.set_signal, _SIGNAL_VOICE
        )
    return [
        bytes(encoder.encode(pcm[i : i + FRAME].tobytes(), FRAME))
        for i in range(0, len(pcm) - FRAME + 1, FRAME)
    ]


def old_path(packets: list[bytes]) -> None:
    """AudioDecoder.decode as it was (rtc/aiortc_adapter.py before issue 17)."""
    decoder = get_decoder(OPUS)
    scale = np.float32(1.0 / 32768.0)
    for n, payload in enumerate(packets):
        decoded = decoder.decode(JitterFrame(payload, n * FRAME))
        parts = [f.to_ndarray().reshape(-1, 2) for f in decoded if isinstance(f, av.AudioFrame)]
        pcm16 = parts[0] if len(parts) == 1 else np.concatenate(parts)
        pcm16.astype(np.float32) * scale


def new_path(packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    for payload in packets:
        decoder.decode(payload)


def plc(packets: list[bytes]) -> None:
    """Every 5th packet lost and concealed (the 4 others decoded, so PLC starts from speech)."""
    decoder = OpusDecoder()
    for n, payload in enumerate(packets):
        if n % 5 == 4:
            decoder.conceal()
        else:
            decoder.decode(payload)


def fec(packets: list[bytes]) -> None:
    """Every 5th packet lost and recovered from the next one's FEC data."""
    decoder = OpusDecoder()
    for n, payload in enumerate(packets):
        if n % 5 == 4 and n + 1 < len(packets):
            decoder.recover(packets[n + 1])
        else:
            decoder.decode(payload)


def best(
    fn: Callable[[list[bytes]], None], packets: list[bytes], rounds: int
) -> tuple[float, float]:
    """(CPU µs, wall µs) per frame, best of ``rounds``."""
    cpu = wall = float("inf")
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn(packets)
        c1, w1 = time.process_time(), time.perf_counter()
        cpu = min(cpu, (c1 - c0) / len(packets) * 1e6)
        wall = min(wall, (w1 - w0) / len(packets) * 1e6)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per pass")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pcm = voiced(args.seconds)
    plain = encode(pcm, 96_000, fec=False)
    protected = encode(pcm, 32_000, fec=True)
    share = sum(map(has_fec, protected)) / len(protected)
    print(f"{len(plain)} frames of 20 ms per pass; FEC data in {share:.0%} of the 32 kb/s packets")
    print(f"{'path':<44} {'CPU µs':>8} {'wall µs':>8} {'CPU % at 50/s':>14}")
    cases: list[tuple[str, Callable[[list[bytes]], None], list[bytes]]] = [
        ("old: aiortc/FFmpeg decode, 96 kb/s", old_path, plain),
        ("new: libopus decode, 96 kb/s", new_path, plain),
        ("new: libopus decode, 32 kb/s + FEC", new_path, protected),
        ("new: 1 in 5 concealed (PLC), 32 kb/s", plc, protected),
        ("new: 1 in 5 recovered (FEC), 32 kb/s", fec, protected),
    ]
    results: dict[str, float] = {}
    for name, fn, packets in cases:
        cpu, wall = best(fn, packets, args.rounds)
        results[name] = cpu
        print(f"{name:<44} {cpu:8.1f} {wall:8.1f} {cpu * 50 / 1e4:13.2f}%")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average: {load} (shared machine: rerun a figure you doubt)")
    print(f"opus_decode_us={results['new: libopus decode, 96 kb/s']:.1f}")


if __name__ == "__main__":
    main()
