"""Media through a signaling outage: the longest silence, and whether anyone gave up (issue 13).

Run: ``.venv/bin/python bench/signaling_outage.py --outage 3`` (about 15 s) and ``--outage 45``
(about 70-100 s). For the "before" figure run the same script against another tree's meshrtc:
``PYTHONPATH=/tmp/old/src .venv/bin/python bench/signaling_outage.py --outage 3`` (the server child
inherits the path). Only APIs both trees have are used, with their default reconnect backoff.

``meshrtc signal`` runs in a child process. Two PeerManagers in this process (alice and bob, audio
only, loopback) connect through it and send each other a tone, 50 Opus frames a second. Once the
stream is steady the server child is killed (SIGKILL: no close frames), and started again on the
same port ``--outage`` seconds later. The bench waits until both clients announced again (or one
gave up: ``SignalingConnectionError`` out of its client, which ends a process such as ``meshrtc
serve``), then five seconds more. It prints, per direction, the longest gap between two decoded
frames from two seconds before the kill to the end, whether each link's PeerConnection object was
kept, and the load average; the last line is ``longest_silence_s=... gave_up=...``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import trio

from meshrtc.config import TransportConfig
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.client import SignalingClient, SignalingConnectionError
from support.signal_process import signal_process

#: How long past both re-announces (or a give-up) the audio is still watched.
AFTER = 5.0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without a frame (the edges count as frames)."""
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


Times = dict[tuple[str, str], list[float]]


class Changes:
    """Wakes whoever waits for a condition whenever something was recorded."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._event.wait()


CHANGES = Changes()


async def collect(peer: PeerConnection, times: list[float]) -> None:
    async for item in peer.received:
        if isinstance(item, ReceivedAudio) and not item.concealed:
            times.append(time.monotonic())
            CHANGES.poke()


async def follow(name: str, manager: PeerManager, times: Times, nursery: trio.Nursery) -> None:
    """A collector for every PeerConnection the manager holds, rebuilt ones included."""
    seen: set[int] = set()
    async for _event in manager.events:
        for remote, peer in manager.peers.items():
            if id(peer) not in seen:
                seen.add(id(peer))
                nursery.start_soon(collect, peer, times.setdefault((name, remote), []))


async def feed(manager: PeerManager, freq: float) -> None:
    """Half a second of tone every half second on every connected link (a steady producer)."""
    tone = (0.3 * np.sin(2 * np.pi * freq * np.arange(24_000) / 48_000)).astype(np.float32)
    t = trio.current_time()
    for _ in range(2000):  # 1000 s at most
        for remote in manager.list_connected():
            peer = manager.get_peer(remote)
            if peer is not None:
                await peer.send_audio(tone)
        t += 0.5
        await trio.sleep_until(t)


async def run(outage: float) -> tuple[float, list[str]]:
    gave_up: list[str] = []
    times: Times = {}
    managers: dict[str, PeerManager] = {}
    clients: dict[str, SignalingClient] = {}
    killed = 0.0
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        with trio.socket.socket() as probe:  # a free port, to restart the server on
            await probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = ["--port", str(port)]

        async def member(name: str, url: str, task_status: trio.TaskStatus[None]) -> None:
            client = SignalingClient(url, name, capabilities=("audio",))
            config = TransportConfig(signaling_url=url, stun_servers=[stun.url], peer_id=name)
            manager = PeerManager(config, client, bridge=bridge, options=PeerOptions())
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(client.run)
                    await inner.start(manager.run)
                    clients[name], managers[name] = client, manager
                    inner.start_soon(follow, name, manager, times, inner)
                    inner.start_soon(feed, manager, 440.0 if name == "alice" else 660.0)
                    task_status.started()
            except* SignalingConnectionError as group:
                after = time.monotonic() - killed
                gave_up.append(f"{name}, {after:.1f} s after the kill: {group.exceptions[0]}")
                CHANGES.poke()

        def steady() -> bool:
            return all(
                len(times.get(key, ())) >= 100 for key in (("alice", "bob"), ("bob", "alice"))
            )

        async with signal_process(args) as (url, process):
            for name in ("alice", "bob"):
                await nursery.start(member, name, url)
            with trio.fail_after(30):
                await CHANGES.until(steady)
            first = {name: dict(managers[name].peers) for name in managers}
            start = time.monotonic() - 2.0
            killed = time.monotonic()
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await trio.sleep(max(0.0, killed + outage - time.monotonic()))
        async with signal_process(args):
            restarted = time.monotonic()
            with trio.move_on_after(outage + 90):
                # Frames arrive 50 times a second throughout, so the condition is re-checked often.
                await CHANGES.until(
                    lambda: bool(gave_up) or all(c.reconnects >= 1 for c in clients.values())
                )
            back = time.monotonic()
            await trio.sleep(AFTER)
            end = time.monotonic()
            print(f"outage {outage:g} s: server back {restarted - killed:.1f} s after the kill")
            for name, client in clients.items():
                print(f"  {name}: reconnects={client.reconnects} state={client.state}")
            print(f"  both re-announced (or one gave up) {back - killed:.1f} s after the kill")
            worst = 0.0
            for (receiver, sender), ts in sorted(times.items()):
                gap = longest_gap(ts, start, end)
                worst = max(worst, gap)
                kept = managers[receiver].get_peer(sender) is first[receiver].get(sender)
                frames = len([t for t in ts if start < t < end])
                print(
                    f"  {sender} -> {receiver}: longest silence {gap:.2f} s, {frames} frames "
                    f"in {end - start:.1f} s, link object kept: {kept}"
                )
            nursery.cancel_scope.cancel()
    return worst, gave_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the server is away")
    args = parser.parse_args()
    worst, gave_up = trio.run(run, args.outage)
    for line in gave_up:
        print(f"  GAVE UP: {line}")
    print(f"load average {load()} (shared machine)")
    print(f"longest_silence_s={worst:.2f} gave_up={len(gave_up)}")


if __name__ == "__main__":
    main()
