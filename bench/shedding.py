"""What the transport's LoadMonitor sees under load, and the shed levels it reaches.

Runs ``run_demo(split=True)`` (the fair star generator in a child process, as ``bench/members.py``)
at the given sizes with audio + 320x240 video and samples, every 0.5 s of traffic, the shedder's
level. Per size: the slot ticks' lateness p50 / p95 / max (ms), late ticks (over 10 ms) / ticks, the
highest level reached and the seconds spent at each level, with the run's added latency and video
frames dropped by the router (``shed_video``) and the pictures per second each member's outgoing
video track sent. ``--level N`` pins level N from the first tick of traffic (what each level saves,
on the same machine, whether or not the load would reach it). ``--no-shed`` pins the level at
NONE from the first tick of traffic (the connect phase may have raised it; the monitor still
measures) for a with/without comparison on the same machine.

    .venv/bin/python bench/shedding.py --sizes 6,10 --seconds 10

Last line ``shed10_max_level=<int>``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import trio

from meshrtc.demo import run_demo
from meshrtc.session.shedding import ShedLevel


async def one(
    members: int, seconds: float, shed: bool, pin: ShedLevel = ShedLevel.NONE
) -> dict[str, Any]:
    levels: list[int] = []
    box: dict[str, Any] = {}

    def on_tick(transport: Any, running: Any, *_: object) -> None:
        shedder = transport.load.shedder
        if not shed and (shedder.max_level != pin or shedder.level != pin):
            # The monitor runs from the transport's start: the connect phase may have raised it.
            shedder.max_level = shedder.level = pin
            running.router.apply_plan(shedder.plan)
            transport._shed_video(shedder.plan)  # the send side's listener, as the monitor calls it
        levels.append(int(shedder.level))
        # Pictures the transport's outgoing video tracks sent (the send side of the plan).
        sent = _video_sent(transport)
        box.setdefault("sent0", (time.monotonic(), sent[0]))
        box["sent1"] = (time.monotonic(), sent[0])
        box["sent_members"] = max(box.get("sent_members", 0), sent[1])
        box["monitor"] = transport.load
        box["router"] = running.router

    with trio.fail_after(seconds + 120):
        result = await run_demo(
            peers=members - 1,
            seconds=seconds,
            video=(320, 240),
            split=True,
            generator="star",
            listeners=2,
            on_tick=on_tick,
        )
    monitor = box["monitor"]
    stats = monitor.shedder.statistics()
    late = np.array(monitor.lateness) * 1000
    shed_video = sum(box["router"].statistics().shed_video.values())
    (t0, s0), (t1, s1) = box["sent0"], box["sent1"]
    fps = (s1 - s0) / (t1 - t0) / max(1, box["sent_members"]) if t1 > t0 else float("nan")
    return {
        "late": (np.percentile(late, 50), np.percentile(late, 95), late.max()),
        "late_ticks": (stats.late_ticks, stats.ticks),
        "max_level": max(levels, default=0),
        "seconds_at": {lvl.name: round(s, 1) for lvl, s in stats.seconds_at.items()},
        "added": (result.added_latency(50), result.added_latency(95)),
        "shed_video": shed_video,
        "cpu": result.transport_cpu_pct,
        "video_fps": fps,
    }


def _video_sent(transport: Any) -> tuple[int, int]:
    """(pictures sent by the transport's video tracks so far, tracks counted)."""
    total = tracks = 0
    manager = transport.peers
    for peer_id in [] if manager is None else manager.list_connected():
        link = getattr(manager.get_peer(peer_id), "_link", None)
        track = getattr(link, "video_track", None)
        if track is not None:
            total += track.sent
            tracks += 1
    return total, tracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6,10")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-shed", action="store_true")
    parser.add_argument(
        "--level",
        type=int,
        choices=[int(x) for x in ShedLevel],
        help="pin this shed level from the first tick of traffic (what each level saves)",
    )
    args = parser.parse_args()
    pin = ShedLevel(args.level or 0)
    if args.level is not None:
        args.no_shed = True
    last = 0
    members = 0
    for members in (int(x) for x in args.sizes.split(",")):
        r = trio.run(one, members, args.seconds, not args.no_shed, pin)
        mode = pin.name if args.level is not None else "off" if args.no_shed else "on"
        p50, p95, worst = r["late"]
        a50, a95 = r["added"]
        print(
            f"members={members:2d} shed={mode} tick late p50/p95/max "
            f"{p50:.1f}/{p95:.1f}/{worst:.0f} ms, late ticks {r['late_ticks'][0]}/"
            f"{r['late_ticks'][1]}, max level {r['max_level']} {r['seconds_at']}, added p50/p95 "
            f"{a50 or float('nan'):.0f}/{a95 or float('nan'):.0f} ms, shed_video {r['shed_video']}, "
            f"tr cpu {r['cpu'] or float('nan'):.0f} %, video sent {r['video_fps']:.1f} "
            f"pictures/s per member, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        last = r["max_level"]
    print(f"shed{members}_max_level={last}")


if __name__ == "__main__":
    main()
