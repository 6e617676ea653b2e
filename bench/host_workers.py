"""Supervised worker processes (meshrtc.host.worker): how long the supervision contract takes.

Run: ``.venv/bin/python bench/host_workers.py [--rounds N]`` (about 10 s with the default 10 rounds).
Each round starts one worker (``python -m meshrtc.host.worker_main``) and times, in the supervisor:

- ``start``: ``open_process`` to the worker's hello (interpreter start + ``import meshrtc``);
- ``rtt``: ping → pong round trips over the control channel (20 pings, 10 ms apart);
- ``kill9``: ``kill -9`` from outside → the WorkerProcess is Failed (died, SIGKILL) and reaped;
  ping timeout and exit grace are 60 s, so only waiting on the process can see it this fast;
- ``stop``: ``stop()`` on an obedient worker → shutdown, bye, exit 0, reaped (a second worker).

Figures are medians and maxima over the rounds, with the load average (two shared cores). There is
no baseline: before this, meshrtc had no worker processes. Last line:
``worker_kill9_detect_ms_p50=<float>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import time

import trio

from meshrtc.host.worker import FailureReason, WorkerConfig, WorkerProcess, WorkerState

CONFIG = WorkerConfig(
    hello_timeout=60.0,
    ping_interval=0.01,
    ping_timeout=60.0,
    drain_timeout=10.0,
    exit_grace=60.0,
)


async def one_round(index: int, figures: dict[str, list[float]]) -> None:
    async with trio.open_nursery() as nursery:
        victim = WorkerProcess(f"victim-{index}", CONFIG)
        t0 = time.perf_counter()
        await nursery.start(victim.run)
        figures["start"].append(time.perf_counter() - t0)
        for _ in range(20):
            await victim.next_pong()
            assert victim.last_rtt is not None
            figures["rtt"].append(victim.last_rtt)
        assert victim.pid is not None
        t0 = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        await victim.finished.wait()
        figures["kill9"].append(time.perf_counter() - t0)
        assert victim.failure is FailureReason.DIED
        assert victim.exit_signal is signal.SIGKILL

        obedient = WorkerProcess(f"obedient-{index}", CONFIG)
        await nursery.start(obedient.run)
        t0 = time.perf_counter()
        await obedient.stop()
        figures["stop"].append(time.perf_counter() - t0)
        assert obedient.state is WorkerState.Stopped
        assert obedient.returncode == 0


async def main(rounds: int) -> None:
    figures: dict[str, list[float]] = {"start": [], "rtt": [], "kill9": [], "stop": []}
    for index in range(rounds):
        await one_round(index, figures)
    load = os.getloadavg()
    print(f"{rounds} rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared box)")
    for name, values in figures.items():
        ms = [v * 1000 for v in values]
        print(f"{name:6s} n={len(ms):3d} p50={statistics.median(ms):8.2f} ms max={max(ms):8.2f} ms")
    print(f"worker_kill9_detect_ms_p50={statistics.median(figures['kill9']) * 1000:.2f}")


if __name__ == "__main__":
    # Every victim's failure is deliberate; its WARNING would only bury the figures.
    logging.getLogger("meshrtc.host.worker").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    trio.run(main, parser.parse_args().rounds)
