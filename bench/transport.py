"""Demo workload at 1, 3, 5 and 9 synthetic peers (+ the transport: 2-10 mesh members).

Run: ``.venv/bin/python bench/transport.py [--seconds 4]`` (about 2 minutes). Audio both ways first,
then with 320x240 video. The synthetic peers run in a child process (``run_demo(split=True)``), so
``tr cpu %`` is the transport's process alone (signaling server and STUN responder included, both
idle once connected) and ``peers cpu %`` the child's; both are CPU time over the traffic window as a
share of all the machine's cores. ``--in-process`` runs everything in one process as before (then
``tr cpu %`` includes the peers).

Latency: ``e2e`` is the demo's tone-onset method (meshrtc.demo docstring: capture pacing, two Opus
encodes/decodes, both jitter buffers, the pipeline), measured in the peers' process; ``added`` is
the transport's share alone (arrival at the transport to the mix leaving for a peer). ``onsets`` is
detected/expected tone onsets: an onset more than 0.5 s late is not counted, so a shortfall is latency the e2e
percentiles do not show. ``connect ms``: from the peers starting to join until every link is
Connected on both sides (the synthetic peers also mesh with each other: n(n+1)/2 connections);
``link p50/max``: per peer, from its join to its link with the transport Connected. Teardown: the
transport closing (its peer connections, bridge thread) after the traffic.

Goals (docs/benchmarks.md): added p95 <= jitter target + 10 ms; connect <= 300 ms; teardown <= 100 ms;
10 members with audio leave >= 40 % of the machine (transport CPU <= 60 %). The machine is shared:
the load average is printed with the figures. Last line: ``peers10_audio_cpu_pct=<float>`` (the
transport's CPU at 9 peers + transport, audio only).
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import trio

from meshrtc.config import TransportConfig
from meshrtc.demo import DemoResult, run_demo

#: Bound on one run beyond its traffic seconds (child start, connect, both teardowns).
RUN_MARGIN = 90.0


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def _run(n: int, seconds: float, video: tuple[int, int] | None, split: bool) -> DemoResult:
    with trio.fail_after(seconds + RUN_MARGIN):
        # The mesh generator, as this benchmark's history was measured (bench/members.py: star).
        return await run_demo(peers=n, seconds=seconds, video=video, split=split, generator="mesh")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    # Mesh members = synthetic peers + the transport; 9 + 1 is the 10-member limit.
    parser.add_argument("--sizes", default="1,3,5,9")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="peers in this process too")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    modes: list[tuple[str, tuple[int, int] | None]] = [("audio", None)]
    if not args.no_video:
        modes.append(("audio+video 320x240", (320, 240)))
    target = TransportConfig(signaling_url="ws://127.0.0.1:1/").jitter_buffer_size_ms
    print(
        f"{os.cpu_count()} cores, {_load()}, {args.seconds:g} s per run, "
        f"{'in-process' if args.in_process else 'peers in a child process'}; "
        f"goals: added p95 <= {target + 10} ms, connect <= 300 ms, teardown <= 100 ms, "
        f"10-member audio tr cpu <= 60 %",
        flush=True,
    )
    print(
        f"{'mode':<20} {'peers':>5} {'tr cpu %':>8} {'peers cpu %':>11} {'e2e p50':>7} "
        f"{'e2e p95':>7} {'onsets':>7} {'added p50':>9} {'added p95':>9} {'connect ms':>10} "
        f"{'link p50':>8} {'link max':>8} {'teardown ms':>11}"
    )
    cpu10 = float("nan")
    for mode, video in modes:
        for n in sizes:
            result = trio.run(
                functools.partial(_run, n, args.seconds, video, split=not args.in_process)
            )
            print(
                f"{mode:<20} {n:>5} {_f(result.transport_cpu_pct):>8} "
                f"{_f(result.peers_cpu_pct):>11} {_f(result.latency(50)):>7} "
                f"{_f(result.latency(95)):>7} {'{}/{}'.format(*result.onsets()):>7} "
                f"{_f(result.added_latency(50)):>9} {_f(result.added_latency(95)):>9} "
                f"{result.connect_ms:>10.0f} {_f(result.link_connect(50), '.0f'):>8} "
                f"{_f(result.link_connect(100), '.0f'):>8} {result.teardown_ms:>11.1f}",
                flush=True,
            )
            if video is None and n == 9 and result.transport_cpu_pct is not None:
                cpu10 = result.transport_cpu_pct
    print(_load())
    print(f"peers10_audio_cpu_pct={cpu10:.1f}")


if __name__ == "__main__":
    main()
