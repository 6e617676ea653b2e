"""The star load generator's child process (``run_demo(split=True)``, ``bench/members.py``).

It speaks the protocol of :mod:`meshrtc.demo_peers` (ready / join / connected / go / figures / stop
/ closed, one JSON line per event), so the parent treats both generators alike; what differs is
what runs here: :class:`~meshrtc.rtc.star_member.StarMember` s, each connected to the transport
alone and replaying media encoded once before ``ready`` (docs/benchmarks.md).

``connected`` means every member has decoded its first audio packet back from the transport (the
mix of the others' idle silence): the issue's "join → first decoded mix". Listeners (the first
``--listeners`` members, default all) decode every packet back for the tone-onset latency probe;
the others decode only that first packet. The figures' ``cpu_s`` is this process's CPU time over
the traffic window (every thread: aiortc's, the bridge's, trio's).

``--report-every S`` (``bench/soak.py``) adds ``{"event": "counters", ...}`` lines during the
traffic, every ``S`` seconds: per member what it sent and got back so far (:func:`counters`), this
process's CPU time and RSS. They read counters the members keep anyway: no per-packet work.

The child never outlives its parent: end of stdin stops it, ``--deadline`` bounds its life.
Run as ``python -m meshrtc.loadgen --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from typing import Any

import attrs
import trio

from meshrtc.demo import GATE_ON, GATE_PERIOD, PeerFigures, tone_frequency
from meshrtc.demo_peers import ParentChannel, run_child
from meshrtc.loadgen.onsets import OnsetProbe
from meshrtc.loadgen.resources import rss_kib
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.star_member import (
    StarMember,
    encode_tone_clip,
    encode_video_clip,
    silence_clip,
)

__all__ = ["counters", "main", "run_members"]

log = logging.getLogger(__name__)

#: The demo's data messages: one per member every this many seconds.
CHAT_INTERVAL = 0.25


def counters(member: StarMember) -> dict[str, int]:
    """One member's running totals: live audio packets sent (and skipped), audio packets and
    video frames got back, audio packets lost on the way back."""
    c = member.counters
    return {
        "audio_sent": member.audio_track.sent_live,
        "send_skipped": member.audio_track.skipped,
        "audio_received": c.audio_packets,
        "audio_lost": c.audio_lost,
        "video_received": c.video_frames,
    }


def _video(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


async def run_members(
    *,
    signaling_url: str,
    stun_url: str,
    members: int,
    seconds: float,
    video: tuple[int, int] | None,
    connect_timeout: float,
    stdin: trio.abc.ReceiveStream,
    stdout: trio.abc.SendStream,
    listeners: int | None = None,
    fps: float = 10.0,
    transport_id: str = "transport",
    aligned: bool = False,
    seed: int = 0,
    report_every: float | None = None,
) -> None:
    """The child's whole life, driven by the parent's words (module docstring)."""
    # The reporter and the main task both write: one line at a time.
    writing = trio.Lock()

    async def emit(message: dict[str, Any]) -> None:
        async with writing:
            await stdout.send_all((json.dumps(message) + "\n").encode())

    ids = [f"peer{i + 1}" for i in range(members)]
    frequencies = {pid: tone_frequency(i) for i, pid in enumerate(ids)}
    # Encoded once, before anything is measured.
    tones = {
        pid: encode_tone_clip(f, period=GATE_PERIOD, on=GATE_ON) for pid, f in frequencies.items()
    }
    idle = silence_clip()
    picture = None if video is None else encode_video_clip(*video, fps=fps)
    captured: dict[str, float] = {}
    echoed = dict.fromkeys(ids, 0)
    sent = dict.fromkeys(ids, 0)
    listening = members if listeners is None else listeners
    # Each member's 20 ms packets on its own phase (seeded), as real users' are; ``aligned``: all
    # on one, the transport's best case (every frame of an instant falls in one grid slot).
    epoch = time.monotonic()
    rng = random.Random(seed)
    phases = [0.0 if aligned else rng.uniform(0.0, tones[pid].interval) for pid in ids]

    def on_onset(pid: str) -> Any:
        return lambda t: captured.__setitem__(pid, t)

    def on_data(pid: str) -> Any:
        prefix = f"hello {pid} "

        def count(message: str | bytes) -> None:
            if isinstance(message, str) and message.startswith(prefix):
                echoed[pid] += 1

        return count

    async with trio.open_nursery() as outer:
        parent = ParentChannel(stdin, outer.cancel_scope)
        outer.start_soon(parent.pump)
        async with open_bridge(name="meshrtc-loadgen") as bridge:
            await emit({"event": "ready"})
            await parent.expect("join")
            probes: dict[str, OnsetProbe] = {}
            group: list[StarMember] = []
            async with trio.open_nursery() as nursery:
                for i, pid in enumerate(ids):
                    listener = None
                    if i < listening and members > 1:  # alone, there is no other tone to time
                        probe = probes[pid] = OnsetProbe(
                            frequencies, captured.get, own=pid, max_latency=GATE_ON
                        )
                        listener = _listen(probe)
                    member = StarMember(
                        pid,
                        bridge,
                        signaling_url=signaling_url,
                        transport_id=transport_id,
                        audio=tones[pid],
                        video=picture,
                        idle_audio=idle,
                        stun_servers=(stun_url,),
                        listener=listener,
                        on_onset=on_onset(pid),
                        on_data=on_data(pid),
                        epoch=epoch + phases[i],
                    )
                    await nursery.start(member.run)
                    group.append(member)
                with trio.fail_after(connect_timeout):
                    while not all(m.counters.first_audio_at is not None for m in group):  # noqa: ASYNC110 - 5 ms: connect's resolution
                        await trio.sleep(0.005)
                await emit({"event": "connected", "t": time.monotonic()})
                await parent.expect("go")
                cpu0, wall0 = time.process_time(), time.monotonic()
                for m in group:
                    m.start_traffic(seconds)

                async def chat() -> None:
                    n = 0
                    end = trio.current_time() + seconds
                    while trio.current_time() < end:
                        for m in group:
                            if m.send_data(f"hello {m.peer_id} {n}"):
                                sent[m.peer_id] += 1
                        n += 1
                        await trio.sleep(CHAT_INTERVAL)

                async def report(every: float) -> None:
                    start = trio.current_time()
                    for n in range(int(seconds // every) + 1):  # t = 0, every, ... <= seconds
                        await trio.sleep_until(start + n * every)
                        await emit(
                            {
                                "event": "counters",
                                "t": time.monotonic() - wall0,
                                "cpu_s": time.process_time() - cpu0,
                                "rss_kib": rss_kib(),
                                "peers": {m.peer_id: counters(m) for m in group},
                            }
                        )

                nursery.start_soon(chat)
                if report_every is not None and report_every > 0:
                    nursery.start_soon(report, report_every)
                await trio.sleep(seconds + 0.5)
                cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
                figures = {}
                for m in group:
                    c = m.counters
                    probe_ = probes.get(m.peer_id)
                    assert m.joined_at is not None
                    figures[m.peer_id] = attrs.asdict(
                        PeerFigures(
                            m.peer_id,
                            frequencies[m.peer_id],
                            audio_sent=m.audio_track.sent_live,
                            audio_received=c.audio_packets,
                            video_received=c.video_frames,
                            data_sent=sent[m.peer_id],
                            data_echoed=echoed[m.peer_id],
                            heard={} if probe_ is None else dict(probe_.heard),
                            latencies_ms=[]
                            if probe_ is None
                            else [1000 * v for v in probe_.latencies],
                            connect_ms=None
                            if c.first_audio_at is None
                            else 1000.0 * (c.first_audio_at - m.joined_at),
                            audio_lost=c.audio_lost,
                            send_skipped=m.audio_track.skipped,
                            send_late_idle_ms=1000.0 * m.audio_track.late_max[0],
                            send_late_ms=1000.0 * m.audio_track.late_max[1],
                        )
                    )
                await emit({"event": "figures", "peers": figures, "cpu_s": cpu_s, "wall_s": wall_s})
                await parent.expect("stop")
                nursery.cancel_scope.cancel()
            t_exit = time.monotonic()
        await emit({"event": "closed", "teardown_ms": 1000.0 * (time.monotonic() - t_exit)})
        outer.cancel_scope.cancel()


def _listen(probe: OnsetProbe) -> Any:
    def listener(pcm: Any, arrived: float) -> None:
        probe.feed(pcm[:, 0] if pcm.ndim == 2 else pcm, arrived)

    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshrtc.loadgen",
        description="Star load generator members, driven by a parent over stdin/stdout "
        "(meshrtc.demo.run_demo starts this; not meant to be run by hand).",
    )
    parser.add_argument("--signaling", required=True, help="signaling server URL (loopback)")
    parser.add_argument("--stun", required=True, help="STUN server URL (loopback)")
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--video", type=_video, default=None, metavar="WxH")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--listeners", type=int, default=None, help="default: every member")
    parser.add_argument("--options", default=None, help="ignored (the mesh child's PeerOptions)")
    parser.add_argument(
        "--aligned", action="store_true", help="every member's packets on one phase (best case)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the members' phases")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument(
        "--report-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a 'counters' line every SECONDS of traffic (bench/soak.py)",
    )
    parser.add_argument(
        "--deadline", type=float, required=True, help="the child exits after this many seconds"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="child %(levelname)s %(name)s: %(message)s")

    async def body(stdin: trio.lowlevel.FdStream, stdout: trio.lowlevel.FdStream) -> None:
        await run_members(
            signaling_url=args.signaling,
            stun_url=args.stun,
            members=args.peers,
            seconds=args.seconds,
            video=args.video,
            fps=args.fps,
            listeners=args.listeners,
            connect_timeout=args.connect_timeout,
            aligned=args.aligned,
            seed=args.seed,
            report_every=args.report_every,
            stdin=stdin,
            stdout=stdout,
        )

    return run_child(args.deadline, body)


if __name__ == "__main__":
    sys.exit(main())
