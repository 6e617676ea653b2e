"""Demo workload at 1, 3, 5 and 10 peers: CPU, audio added latency, connect and teardown time.

Run: ``.venv/bin/python bench/transport.py [--seconds 4]``. Audio both ways first, then with 320x240
video. CPU % is this process's CPU time over wall time, as a share of the machine's 2 cores (the
whole workload, synthetic peers included, runs in this one process, so the transport's own share is
lower). Latency is the demo's tone-onset method (meshrtc.demo docstring). Last line:
``peers10_audio_cpu_pct=<float>``.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import trio

from meshrtc.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    # Mesh members = synthetic peers + the transport; 9 + 1 is the 10-member limit.
    parser.add_argument("--sizes", default="1,3,5,9")
    parser.add_argument("--no-video", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    sizes = [int(x) for x in args.sizes.split(",")]
    modes: list[tuple[str, tuple[int, int] | None]] = [("audio", None)]
    if not args.no_video:
        modes.append(("audio+video 320x240", (320, 240)))
    print(
        f"{'mode':<20} {'peers':>5} {'cpu %':>7} {'p50 ms':>7} {'p95 ms':>7} {'connect ms':>10} "
        f"{'teardown ms':>11}"
    )
    cpu10 = float("nan")
    for mode, video in modes:
        for n in sizes:
            cpu0, wall0 = time.process_time(), time.monotonic()
            result = trio.run(
                functools.partial(run_demo, peers=n, seconds=args.seconds, video=video)
            )
            cpu = 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0) / cores
            p50, p95 = result.latency(50), result.latency(95)
            print(
                f"{mode:<20} {n:>5} {cpu:>7.1f} {p50 or float('nan'):>7.1f} "
                f"{p95 or float('nan'):>7.1f} {result.connect_ms:>10.0f} {result.teardown_ms:>11.1f}",
                flush=True,
            )
            if video is None and n == 9:
                cpu10 = cpu
    print(f"peers10_audio_cpu_pct={cpu10:.1f}")


if __name__ == "__main__":
    main()
