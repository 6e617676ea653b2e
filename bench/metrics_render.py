"""What a scrape of ``/metrics`` costs the event loop (meshrtc.host.metrics; docs/host.md, "Metrics").

Run: ``.venv/bin/python bench/metrics_render.py [--rounds N]`` (under a second). A session of ten
members (the most a session holds) with the router's full window of 5000 added-latency samples
(seeded), timed on this thread:

- ``histogram``: bucketing the 5000 samples (what :func:`~meshrtc.host.metrics.snapshot` does per
  session, with numpy);
- ``render``: the whole page from a snapshot, with prometheus_client's ProcessCollector (reads
  ``/proc/self``), as ``GET /metrics`` renders it.

Medians and maxima over the rounds, with the load average (two shared cores). Last line:
``metrics_render_ms_p50=<float>``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

from meshrtc.host.metrics import (
    LatencyHistogram,
    MemberMetrics,
    MetricsSnapshot,
    SessionMetrics,
    metrics_registry,
    render,
)


def _member(peer_id: str) -> MemberMetrics:
    return MemberMetrics(
        peer_id=peer_id,
        state="Connected",
        rtt_seconds=0.01,
        loss_ratio=0.01,
        jitter_seconds=0.004,
        jitter_buffer_delay_seconds={"audio": 0.06, "video": 0.08},
        frames_in=100_000,
        frames_out=100_000,
        frames_dropped={"stale": 1, "grid": 2, "shed_video": 0, "receive_overflow": 0},
        link_rebuilds=1,
    )


def _timed(fn: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - started))
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(15)
    samples = [rng.uniform(0.02, 0.2) for _ in range(5000)]
    members = tuple(_member(f"member-{i}") for i in range(10))

    def snapshot() -> MetricsSnapshot:
        session = SessionMetrics("default", "Active", 10, members, LatencyHistogram.of(samples))
        return MetricsSnapshot(sessions=(session,), signaling={"default": 11})

    registry = metrics_registry(lambda: [snapshot()])
    size = len(render(registry))
    results = {
        "histogram": _timed(lambda: LatencyHistogram.of(samples), args.rounds),
        "render": _timed(lambda: render(registry), args.rounds),
    }
    print(f"rounds {args.rounds}, page {size} bytes, load average {os.getloadavg()}")
    for name, times in results.items():
        print(f"{name:>10}: p50 {statistics.median(times):.3f} ms, max {times[-1]:.3f} ms")
    print(f"metrics_render_ms_p50={statistics.median(results['render']):.3f}")


if __name__ == "__main__":
    main()
