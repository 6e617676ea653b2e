"""The MixMinus node's time per 20 ms slot at 2, 6 and 10 members (sans-IO mixer, no trio).

Each slot, every member pushes one 20 ms 48 kHz stereo frame (1920 float32 samples, 16-bit PCM
values, loud enough that the clip limiter works) into :class:`MixMinusMixer`, which mixes the slot
for every member once the last frame arrives, as in a session. Timed per slot with
``time.perf_counter`` over ``--slots`` slots after a warm-up; reported as the median and p95 per
slot and the mix function alone (``mix_minus``) per slot. Compare trees with ``PYTHONPATH``:

    .venv/bin/python bench/mixminus.py
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/mixminus.py

Last line ``mixminus10_slot_us=<float>`` (median, 10 members).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from meshrtc.pipeline.data import Audio
from meshrtc.pipeline.nodes.mixminus import MixMinusMixer, mix_minus

SAMPLES = 1920  # 20 ms, 48 kHz, stereo interleaved


def frames_for(members: int, slots: int, seed: int) -> list[list[Audio]]:
    rng = np.random.default_rng(seed)
    pcm = (rng.integers(-20_000, 20_001, (members, SAMPLES)) / 32768).astype(np.float32)
    return [
        [
            Audio(
                samples=pcm[m], sample_rate=48_000, channels=2, peer_id=f"m{m}", timestamp=s * 0.02
            )
            for m in range(members)
        ]
        for s in range(slots)
    ]


def per_slot(members: int, slots: int) -> tuple[list[float], list[float]]:
    mixer = MixMinusMixer()
    data = frames_for(members, slots + 50, seed=members)
    slot_times: list[float] = []
    for s, frames in enumerate(data):
        now = s * 0.02
        start = time.perf_counter()
        for frame in frames:
            mixer.push(frame, now)
        if s >= 50:
            slot_times.append(time.perf_counter() - start)
    assert mixer.windows >= slots, mixer.windows
    pcm = {f.peer_id or "": f.samples for f in data[0]}
    receivers = list(pcm)
    mix_times: list[float] = []
    for _ in range(slots):
        start = time.perf_counter()
        mix_minus(pcm, receivers, "clip")
        mix_times.append(time.perf_counter() - start)
    return slot_times, mix_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,6,10")
    parser.add_argument("--slots", type=int, default=3000)
    args = parser.parse_args()
    last = 0.0
    for members in (int(x) for x in args.sizes.split(",")):
        slot_times, mix_times = per_slot(members, args.slots)
        slot_us = statistics.median(slot_times) * 1e6
        p95 = statistics.quantiles(slot_times, n=20)[-1] * 1e6
        mix_us = statistics.median(mix_times) * 1e6
        print(
            f"members={members:2d} slot median {slot_us:7.1f} us p95 {p95:7.1f} us "
            f"(mix_minus alone {mix_us:6.1f} us) load={os.getloadavg()[0]:.2f}"
        )
        last = slot_us
    print(f"mixminus{members}_slot_us={last:.1f}")


if __name__ == "__main__":
    main()
