"""Wire A/V skew of what a meshrtc PeerConnection sends, per connection (docs/benchmarks.md).

Run: ``.venv/bin/python bench/av_skew.py [--connections 6] [--seconds 8] [--codecs VP9,H264]``
(about 15 s per connection). Each connection is a fresh pair of directly wired PeerConnections
(``tests/peer_helpers.wired_pair``): alice sends a beep and a white frame at the same capture
instant every ``--period`` seconds (``tests/av_probe.py``); bob maps each event's RTP timestamp
through alice's Sender Reports and prints, per connection, the median skew (audio minus video: the
constant a receiver's lip sync would show), the largest deviation of one event from that median,
and the worst |skew|; then the p95 of |skew| over every event of every connection. Goal:
p95 |skew| <= 10 ms on every connection.

``--transport``: the way the issue measured it, through the server. A ``WebRtcTransport`` runs a
manifest that returns each member's own audio and video (one ``PassThrough``, target ``sender``);
the member (a meshrtc PeerManager) sends the events to the transport and maps what comes back
through the *transport's* Sender Reports. That adds the member's send path, the transport's
receive-side A/V sync (SyncManager) and the router's 20 ms audio grid to the send path measured
without it.

``--no-timestamps`` hands frames over without a capture time (a library user's plain
``send_audio(samples)``): the track then stamps them when handed over.

Long run (the "no step" check): ``--connections 1 --seconds 1800 --window 60`` prints the median skew
of each 60 s window and the largest change between consecutive windows; a step (an underrun that
shifted audio for good) shows there. The machine is shared: the load average is printed with
every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import os
import pathlib
import sys
from collections.abc import AsyncIterator

import attrs
import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.av_probe import (
    Received,
    Skew,
    analyse,
    percentile,
    receive,
    send_events,
    supports_timestamps,
)
from tests.peer_helpers import wired_pair

from meshrtc.config import TransportConfig
from meshrtc.pipeline.manifest import Manifest
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:+.1f}"


async def one_connection(
    codec: str,
    seconds: float,
    period: float,
    fps: float,
    timestamps: bool,
    window: float,
    transport: bool = False,
) -> tuple[Skew, list[tuple[float, Skew]]]:
    if transport:
        async with _through_transport(codec) as member:
            return await _measure(member, member, seconds, period, fps, timestamps, window)
    config = TransportConfig(video_codec=codec)
    async with wired_pair(config=config, media=("audio", "video"), options=PeerOptions()) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(20):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        return await _measure(a, b, seconds, period, fps, timestamps, window)


@contextlib.asynccontextmanager
async def _through_transport(codec: str) -> AsyncIterator[PeerConnection]:
    """A transport echoing each member's media, and one member's connection to it (Connected)."""
    manifest = Manifest.from_dict(
        {
            "version": "v1",
            "nodes": [{"id": "echo", "node_type": "PassThrough", "params": {"target": "sender"}}],
            "connections": [],
        }
    )
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        config = TransportConfig(
            signaling_url=server.url, stun_servers=[stun.url], video_codec=codec
        )
        async with WebRtcTransport(attrs.evolve(config, peer_id="server")) as transport:
            await nursery.start(transport.run_session, manifest)
            client = SignalingClient(server.url, "alice")
            await nursery.start(client.run)
            manager = PeerManager(attrs.evolve(config, peer_id="alice"), client)
            await nursery.start(manager.run)

            added = trio.Event()

            async def drain() -> None:
                async for _event in manager.events:
                    if manager.get_peer("server") is not None:
                        added.set()

            nursery.start_soon(drain)
            with trio.fail_after(20):
                await added.wait()
                peer = manager.get_peer("server")
                assert peer is not None
                await peer.wait_state("Connected")
            yield peer
        nursery.cancel_scope.cancel()


async def _measure(
    a: PeerConnection,
    b: PeerConnection,
    seconds: float,
    period: float,
    fps: float,
    timestamps: bool,
    window: float,
) -> tuple[Skew, list[tuple[float, Skew]]]:
    """``a`` sends the events and ``b`` maps them (one connection both ways through a transport)."""
    stamped = timestamps and supports_timestamps(a)
    got = Received()
    windows: list[tuple[float, Skew]] = []
    async with trio.open_nursery() as inner:
        inner.start_soon(receive, b, got)
        done = 0.0
        while done < seconds:
            step = min(window, seconds - done) if window > 0 else seconds
            await send_events(a, step, period=period, fps=fps, timestamps=stamped)
            done += step
            if window > 0:
                await trio.sleep(0.3)
                windows.append((done, analyse(got, period=period)))
                print(
                    f"  t={done:>6.0f} s median {_ms(windows[-1][1].median)} ms "
                    f"events {len(windows[-1][1].skews)} {_load()}",
                    flush=True,
                )
                got.audio.clear()
                got.video.clear()
        await trio.sleep(0.5)
        inner.cancel_scope.cancel()
    return analyse(got, period=period), windows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--fps", type=float, default=10.0, help="pictures fed per second")
    parser.add_argument("--codecs", default="VP9,H264")
    parser.add_argument("--no-timestamps", action="store_true")
    parser.add_argument("--transport", action="store_true", help="through a WebRtcTransport")
    parser.add_argument("--window", type=float, default=0.0, help="long run: seconds per window")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, {_load()}; {args.connections} connections x {args.seconds:g} s, "
        f"event every {args.period:g} s, {'no ' if args.no_timestamps else ''}capture timestamps, "
        f"{'through a transport' if args.transport else 'wired pair'}",
        flush=True,
    )
    p95_all: list[float] = []
    for codec in args.codecs.split(","):
        print(
            f"{codec:<5} {'conn':>4} {'events':>6} {'median ms':>9} {'spread ms':>9} "
            f"{'worst ms':>8}  load"
        )
        every: list[float] = []
        for n in range(args.connections):
            skew, windows = trio.run(
                functools.partial(
                    one_connection,
                    codec,
                    args.seconds,
                    args.period,
                    args.fps,
                    not args.no_timestamps,
                    args.window,
                    args.transport,
                )
            )
            if windows:
                medians = [w.median for _, w in windows if w.skews]
                steps = [abs(b - a) for a, b in itertools.pairwise(medians)]
                skew = Skew([s for _, w in windows for s in w.skews], 0, 0)
                print(
                    f"  windows {len(windows)}, largest step between windows "
                    f"{max(steps, default=0.0) * 1000:.1f} ms"
                )
            every += [abs(s) for s in skew.skews]
            print(
                f"{codec:<5} {n:>4} {len(skew.skews):>6} {_ms(skew.median):>9} "
                f"{skew.spread * 1000:>9.1f} {skew.worst * 1000:>8.1f}  {_load()}",
                flush=True,
            )
        p95 = percentile(every, 95)
        p95_all.append(p95)
        print(f"{codec}: p95 |skew| {p95 * 1000:.1f} ms over {len(every)} events, {_load()}")
    print(f"av_skew_p95_ms={max(p95_all) * 1000:.1f}")


if __name__ == "__main__":
    main()
