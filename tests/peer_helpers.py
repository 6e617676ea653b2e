"""Helpers for the PeerConnection / PeerManager loopback tests: a session of meshrtc peers in one process.

Every node is a real SignalingClient and PeerManager against an in-process SignalingServer, with an
in-process StunServer as the configured STUN server (an unanswered one would cost 5 s of gathering).
Collectors move every received item into lists and wake waiters, so tests wait on conditions with
``trio.fail_after`` instead of sleeping.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType
from meshrtc.pipeline import default_manifest
from meshrtc.rtc.aiortc_adapter import ImpairmentConfig
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerAdded, PeerEvent, PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.session import RunningSession
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport

WIDTH, HEIGHT = 160, 120
#: Small and slow video: a 5-peer mesh runs 20 H.264 encoders and decoders on 2 shared cores.
TEST_OPTIONS = PeerOptions(video_fps=10.0, quality_interval=1.0)


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(int(48_000 * seconds), dtype=np.float32) / 48_000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def picture(shade: int) -> npt.NDArray[np.uint8]:
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[..., 0] = shade
    rgb[..., 1] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    return rgb


def dominant_frequency(pcm: npt.NDArray[np.float32]) -> float:
    spectrum = np.abs(np.fft.rfft(pcm))
    return float(np.fft.rfftfreq(len(pcm), 1 / 48_000)[int(np.argmax(spectrum))])


def decoder_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]


def open_fds() -> set[str]:
    """What every open descriptor of this process points at (``socket:[inode]`` for sockets)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue  # closed between listdir and readlink (the listing's own fd)
    return out


def open_sockets() -> set[str]:
    return {entry.split("->", 1)[1] for entry in open_fds() if "socket:" in entry}


class Changes:
    """One condition variable for a whole test: everything that records something calls :meth:`poke`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, condition: Callable[[], bool], within: float) -> None:
        with trio.fail_after(within):
            while not condition():
                await self._event.wait()


#: A decoded audio frame peaking above this carries a test tone (``tone`` uses 0.5).
LOUD_PEAK = 0.1


@attrs.define
class Tally:
    """Running counts of what one node received from one remote, kept as items arrive.

    Conditions that tests wait on are re-checked at every delivery; recounting the lists (and
    taking every audio frame's peak) each time cost the five-peer mesh's trio thread more the
    longer it ran, on the cores the peers under test need.
    """

    audio: int = 0
    #: Audio items that were decoded (not concealed), and of those the ones carrying a tone.
    decoded: int = 0
    loud: int = 0
    video: int = 0
    data: int = 0
    #: Whether each of the last five audio items carried the sender's wall clock.
    timed: collections.deque[bool] = attrs.Factory(lambda: collections.deque(maxlen=5))

    def add(self, item: ReceivedMedia) -> None:
        if isinstance(item, ReceivedAudio):
            self.audio += 1
            self.timed.append(item.sender_time is not None)
            if not item.concealed:
                self.decoded += 1
                if float(np.abs(item.samples).max()) > LOUD_PEAK:
                    self.loud += 1
        elif isinstance(item, ReceivedVideo):
            self.video += 1
        elif isinstance(item, ReceivedData):
            self.data += 1


@attrs.define(eq=False)
class Node:
    """One meshrtc peer: its signaling client, its PeerManager, what it received and saw."""

    peer_id: str
    client: SignalingClient
    manager: PeerManager
    changes: Changes
    events: list[PeerEvent] = attrs.Factory(list)
    received: dict[str, list[ReceivedMedia]] = attrs.Factory(dict)
    tallies: dict[str, Tally] = attrs.Factory(dict)

    def peer(self, remote: str) -> PeerConnection:
        peer = self.manager.get_peer(remote)
        assert peer is not None, f"{self.peer_id} has no connection to {remote}"
        return peer

    def audio(self, remote: str) -> list[ReceivedAudio]:
        return [x for x in self.received.get(remote, []) if isinstance(x, ReceivedAudio)]

    def decoded_audio(self, remote: str) -> list[ReceivedAudio]:
        return [x for x in self.audio(remote) if not x.concealed]

    def video(self, remote: str) -> list[ReceivedVideo]:
        return [x for x in self.received.get(remote, []) if isinstance(x, ReceivedVideo)]

    def data(self, remote: str) -> list[bytes | str]:
        return [x.data for x in self.received.get(remote, []) if isinstance(x, ReceivedData)]

    async def follow(self, nursery: trio.Nursery) -> None:
        """Record manager events; start a collector for every PeerConnection it adds."""
        async for event in self.manager.events:
            self.events.append(event)
            if isinstance(event, PeerAdded):
                peer = self.manager.get_peer(event.peer_id)
                if peer is not None:
                    nursery.start_soon(self._collect, peer)
            self.changes.poke()

    def tally(self, remote: str) -> Tally:
        return self.tallies.setdefault(remote, Tally())

    async def _collect(self, peer: PeerConnection) -> None:
        items = self.received.setdefault(peer.peer_id, [])
        tally = self.tally(peer.peer_id)
        async for item in peer.received:
            items.append(item)
            tally.add(item)
            self.changes.poke()


@attrs.define(eq=False)
class Session:
    """The shared servers of a test and the nodes joined so far."""

    nursery: trio.Nursery
    stun: StunServer
    server: SignalingServer
    changes: Changes
    bridge: Bridge | None = None
    nodes: dict[str, Node] = attrs.Factory(dict)

    def config(self, peer_id: str, *, max_peers: int = 10) -> TransportConfig:
        return TransportConfig(
            signaling_url=self.server.url,
            stun_servers=[self.stun.url],
            peer_id=peer_id,
            video_codec="H264",
            max_peers=max_peers,
        )

    async def join(
        self,
        peer_id: str,
        *,
        options: PeerOptions = TEST_OPTIONS,
        max_peers: int = 10,
        impairments: dict[str, dict[FrameType, ImpairmentConfig]] | None = None,
        own_bridge: bool = False,
    ) -> Node:
        client = SignalingClient(self.server.url, peer_id)
        await self.nursery.start(client.run)
        manager = PeerManager(
            self.config(peer_id, max_peers=max_peers),
            client,
            bridge=None if own_bridge else self.bridge,
            options=options,
            impairments=impairments,
        )
        await self.nursery.start(manager.run)
        node = Node(peer_id, client, manager, self.changes)
        self.nodes[peer_id] = node
        self.nursery.start_soon(node.follow, self.nursery)
        return node

    async def until(self, condition: Callable[[], bool], within: float = 20.0) -> None:
        await self.changes.until(condition, within)

    def all_connected(self, *names: str) -> bool:
        names = names or tuple(self.nodes)
        return all(
            sorted(self.nodes[n].manager.list_connected()) == sorted(set(names) - {n})
            for n in names
        )


@asynccontextmanager
async def open_session(*, shared_bridge: Bridge | None = None) -> AsyncIterator[Session]:
    """A STUN server and a signaling server on loopback; everything is cancelled on exit."""
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        session = Session(nursery, stun, server, Changes(), shared_bridge)
        # Some conditions are counters with no event of their own (links built, packets seen on
        # the loop thread): re-check every condition now and then, not only on deliveries.
        nursery.start_soon(tick, session.changes)
        try:
            yield session
        finally:
            nursery.cancel_scope.cancel()


async def tick(changes: Changes) -> None:
    """Wake ``changes`` waiters every 50 ms: conditions that nothing pokes (stats, clocks) are
    re-checked at that pace."""
    while True:
        await trio.sleep(0.05)
        changes.poke()


async def run_transport(
    transport: WebRtcTransport, *, task_status: trio.TaskStatus[RunningSession]
) -> None:
    """``transport`` running the default manifest until cancelled (``nursery.start`` gives the
    running session)."""
    async with transport, trio.open_nursery() as nursery:
        running: RunningSession = await nursery.start(transport.run_session, default_manifest())
        task_status.started(running)
        await trio.sleep_forever()


async def feed_media(node: Node, seconds: float, *, freq: float, shade: int) -> None:
    """Queue ``seconds`` of a tone and one picture on every connection of ``node``."""
    for remote in node.manager.list_connected():
        peer = node.peer(remote)
        await peer.send_audio(tone(seconds, freq))
        await peer.send_video(picture(shade))


@attrs.define
class WiredPair:
    """Two PeerConnections whose signaling is wired directly (no server), not started yet."""

    nursery: trio.Nursery
    bridge: Bridge
    #: Alice's connection to bob, and bob's to alice (``peer_id`` names the remote).
    a: PeerConnection
    b: PeerConnection


@asynccontextmanager
async def wired_pair(
    *,
    config: TransportConfig | None = None,
    media: tuple[str, ...] = ("audio", "video", "data"),
    options: PeerOptions | None = None,
    b_impairments: dict[FrameType, ImpairmentConfig] | None = None,
    b_config: TransportConfig | None = None,
) -> AsyncIterator[WiredPair]:
    """An embedded STUN responder, one bridge, and alice ↔ bob handing signals to each other.

    ``config`` gets the STUN URL filled in (default: H.264); ``b_config`` (default: ``config``)
    is bob's. Everything is cancelled on exit.
    """
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        base = config or TransportConfig(video_codec="H264")
        config = attrs.evolve(base, stun_servers=[stun.url])
        config_b = config if b_config is None else attrs.evolve(b_config, stun_servers=[stun.url])
        async with open_bridge() as bridge:
            peers: dict[str, PeerConnection] = {}

            def wire(to: str) -> Callable[[str, dict[str, Any]], Any]:
                async def send(method: str, params: dict[str, Any]) -> None:
                    nursery.start_soon(peers[to].handle_signal, method, params)

                return send

            a = PeerConnection(
                "bob", bridge, config, wire("b"), local_id="alice", media=media, options=options
            )
            b = PeerConnection(
                "alice",
                bridge,
                config_b,
                wire("a"),
                local_id="bob",
                media=media,
                options=options,
                impairments=b_impairments,
            )
            peers.update(a=a, b=b)
            yield WiredPair(nursery, bridge, a, b)
        nursery.cancel_scope.cancel()
