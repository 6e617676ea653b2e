"""The transport at 2-10 members, loaded by the fair (star) generator in a child process.

Run: ``.venv/bin/python bench/members.py [--sizes 2,4,6,8,10] [--seconds 10] [--video both]``
(about 2 minutes with the defaults). Each size is a fresh ``run_demo(split=True)``: this process
runs the signaling server, the STUN responder and the transport (running the default manifest);
the child runs ``size - 1`` star members (:mod:`meshrtc.loadgen`, docs/benchmarks.md), each
connected to the transport alone and replaying media encoded once. ``--mesh`` uses the old
generator instead (full meshrtc peers that also mesh with each other), for comparison.

Columns (per size; CPU is CPU time over the traffic window, % of ONE core):

* ``tr cpu`` / ``per mbr``: this process (transport + idle signaling/STUN), and that divided by
  the synthetic members; ``gen cpu``: the generator's process; ``gen/tr``: their ratio (the
  generator is fair below 0.25).
* ``added p50/p95/p99``: the transport's own share, from a packet's arrival to the mix of its slot
  leaving (``meshrtc.session.router``).
* ``e2e p50/p95``: tone onset captured at one member (its packet handed to aiortc) to the decoded
  mix at another (star: decoded on arrival, no member-side jitter buffer); ``onsets`` detected /
  expected (an onset > 0.5 s late is not counted); only ``--listeners`` members (default 2) decode
  everything back, so expected is ``listeners x (members - 2) x seconds``
  (each listener hears the other synthetic members).
* ``conn max``: the slowest member's join to its first decoded audio back (star; mesh: to its link
  Connected); ``teardown``: the transport closing after the traffic.
* ``drop/mbr``: per member, audio frames the transport dropped (stale, re-anchored) plus audio
  packets lost on the way back, averaged; ``skip``: packets the generator skipped after falling
  more than 100 ms behind (a busy generator; should be 0).

The machine may be shared: the load average is printed on every row. ``--soak MINUTES`` runs one
long 10-member audio + video run instead (not run by the tests). ``--profile FILE`` records this
process (the transport) with py-spy over each run's traffic window, one collapsed-stack file per
run (``FILE`` with ``-<mode>-<members>`` before its suffix; opens in speedscope), and prints each
run's active time per component (``bench/support/profile_attribution.py``); ``--profile-gil``
samples only the thread holding the GIL. Last line:
``members10_audio_added_p95_ms=<float>`` (nan when size 10 audio was not run).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import trio

from meshrtc.config import TransportConfig
from meshrtc.demo import DemoResult, run_demo
from support.profile_attribution import report

#: Bound on one run beyond its traffic seconds (child start, clip encoding, connect, teardowns).
RUN_MARGIN = 90.0
VIDEO = (320, 240)
#: py-spy's sampling rate (Hz) for ``--profile``; it reads the process without stopping it.
PROFILE_RATE = 200
#: How long py-spy may take to write its file after its ``--duration``.
PROFILE_EXIT_TIMEOUT = 30.0


class Profiler:
    """py-spy on this process, started at the first tick of a run (the traffic window's start:
    ``run_demo`` ticks only after the members connected) for that run's traffic seconds."""

    def __init__(self, output: Path, seconds: float, gil: bool = False) -> None:
        self.output = output
        self.seconds = seconds
        self.gil = gil
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *_args: object) -> None:
        if self.process is not None:
            return
        beside = Path(sys.executable).parent / "py-spy"
        spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
        self.process = subprocess.Popen(
            [
                spy, "record", "--pid", str(os.getpid()), "--rate", str(PROFILE_RATE),
                "--duration", str(max(1, int(self.seconds))), "--format", "raw",
                "--nonblocking", "--output", str(self.output), *(["--gil"] if self.gil else []),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def finish(self) -> str:
        if self.process is None:
            return f"profile: no traffic window, nothing recorded in {self.output}"
        self.process.wait(timeout=self.seconds + PROFILE_EXIT_TIMEOUT)
        return f"profile {self.output}\n{report(self.output)}"


def _f(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


async def _run(
    members: int,
    seconds: float,
    video: tuple[int, int] | None,
    generator: str,
    listeners: int,
    aligned: bool,
    profiler: Profiler | None = None,
) -> DemoResult:
    with trio.fail_after(seconds + RUN_MARGIN):
        return await run_demo(
            peers=members - 1,
            seconds=seconds,
            video=video,
            split=True,
            generator=generator,
            listeners=listeners,
            aligned=aligned,
            on_tick=None if profiler is None else profiler.start,
        )


HEADER = (
    f"{'mode':<11} {'mbrs':>4} {'tr cpu':>6} {'per mbr':>7} {'gen cpu':>7} {'gen/tr':>6} "
    f"{'added p50':>9} {'p95':>5} {'p99':>5} {'e2e p50':>7} {'p95':>5} {'onsets':>8} "
    f"{'conn max':>8} {'teardown':>8} {'drop/mbr':>8} {'skip':>4}  load 1/5/15"
)


def row(mode: str, members: int, result: DemoResult) -> str:
    cores = os.cpu_count() or 1
    tr = None if result.transport_cpu_pct is None else result.transport_cpu_pct * cores
    gen = None if result.peers_cpu_pct is None else result.peers_cpu_pct * cores
    synthetic = max(1, members - 1)
    per = None if tr is None else tr / synthetic
    ratio = None if tr is None or gen is None or tr <= 0 else gen / tr
    figures = result.peers.values()
    dropped = sum(p.transport_dropped + p.audio_lost for p in figures) / synthetic
    skipped = sum(p.send_skipped for p in figures)
    return (
        f"{mode:<11} {members:>4} {_f(tr, '.1f'):>6} {_f(per, '.1f'):>7} {_f(gen, '.1f'):>7} "
        f"{_f(ratio, '.2f'):>6} {_f(result.added_latency(50)):>9} "
        f"{_f(result.added_latency(95)):>5} {_f(result.added_latency(99)):>5} "
        f"{_f(result.latency(50)):>7} {_f(result.latency(95)):>5} "
        f"{'{}/{}'.format(*result.onsets()):>8} {_f(result.link_connect(100)):>8} "
        f"{result.teardown_ms:>8.0f} {dropped:>8.1f} {skipped:>4}  {_load()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4,6,8,10", help="members, the transport included")
    parser.add_argument("--seconds", type=float, default=10.0, help="traffic per run")
    parser.add_argument(
        "--video",
        choices=("both", "off", "only"),
        default="both",
        help="audio-only runs, audio + 320x240 video runs, or both (default)",
    )
    parser.add_argument("--mesh", action="store_true", help="the old full-mesh generator")
    parser.add_argument(
        "--listeners",
        type=int,
        default=2,
        help="star members that decode all audio back for the e2e latency probe (default: "
        "%(default)s; the others decode only their first packet)",
    )
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="star members' packets all on one 20 ms phase (the transport's best case; default: "
        "each member on its own seeded phase, as real users are)",
    )
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="one long 10-member a+v run")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the transport with py-spy over each traffic window (collapsed stacks, e.g. "
        "/tmp/members.txt -> /tmp/members-audio-10.txt) and print its time per component",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (the interpreter's own time; "
        "leaves out GIL waits, which plain sampling charges to the frame that waits)",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    if any(not 2 <= n <= 10 for n in sizes):
        parser.error("--sizes: 2-10 members (the transport is one)")
    generator = "mesh" if args.mesh else "star"
    modes: list[tuple[str, tuple[int, int] | None]] = []
    if args.video in ("both", "off"):
        modes.append(("audio", None))
    if args.video in ("both", "only"):
        modes.append(("audio+video", VIDEO))
    if args.soak is not None:
        modes, sizes = [("audio+video", VIDEO)], [10]
        args.seconds = 60.0 * args.soak
    target = TransportConfig(signaling_url="ws://127.0.0.1:1/").jitter_buffer_size_ms
    print(
        f"{os.cpu_count()} cores, load {_load()}, {args.seconds:g} s per run, {generator} "
        f"generator in a child process ({args.listeners} listeners, "
        f"{'aligned' if args.aligned else 'own'} phases); goals at 10 members: "
        f"audio <= 5 % of a core per member, "
        f"added p95 <= {target + 10} ms, e2e p95 <= 150 ms, connect <= 300 ms; a+v added p95 "
        f"<= 100 ms, teardown <= 100 ms; generator < 0.25 of the transport",
        flush=True,
    )
    print(HEADER, flush=True)
    added10 = float("nan")
    for mode, video in modes:
        for n in sizes:
            profiler = None
            if args.profile is not None:
                path = args.profile.with_name(
                    f"{args.profile.stem}-{mode}-{n}{args.profile.suffix}"
                )
                profiler = Profiler(path, args.seconds, gil=args.profile_gil)
            result = trio.run(
                functools.partial(
                    _run, n, args.seconds, video, generator, args.listeners, args.aligned, profiler
                )
            )
            print(row(mode, n, result), flush=True)
            if profiler is not None:
                print(profiler.finish(), flush=True)
            if video is None and n == 10:
                added10 = result.added_latency(95) or float("nan")
    print(f"load {_load()}")
    print(f"members10_audio_added_p95_ms={added10:.1f}")


if __name__ == "__main__":
    main()
