"""Publish and subscribe grants hold on our side of every media link (issue 13, LiveKit's meaning).

Before: the hub only narrowed the capabilities it told the others, so a token with ``subscribe``
alone (or ``publish`` alone) was treated as both: a listener was heard in everyone's mix, and a
speaker got the mix back. Now the hub passes the grants on (``PeerInfo.grants``) and each meshrtc
peer, the transport of ``serve`` included, enforces them whatever the member's SDP offers: our
media sections answer sendonly / recvonly, and RTP that arrives anyway is dropped on arrival.

One session, audio only (lean): the transport on its privileged link, ``alice`` (every grant,
440 Hz), ``lurker`` (subscribe only, sends 660 Hz anyway, and offers sendrecv like any meshrtc
client) and ``speaker`` (publish only, 1000 Hz). About 6 s on a quiet machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import numpy as np
import pytest
import trio

from meshrtc.rtc.peers import PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.session.listener import ListenerFeed
from meshrtc.signaling.auth import TokenAuthority
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport
from tests.peer_helpers import TEST_OPTIONS, Changes, Node, Session, run_transport, tick, tone

log = logging.getLogger(__name__)

SECRET = b"g" * 48
TRANSPORT_ID = "meshrtc-server"
TONES = {"alice": 440.0, "lurker": 660.0, "speaker": 1000.0}
GRANTS = {
    "alice": ["publish", "subscribe"],
    "lurker": ["subscribe"],
    "speaker": ["publish"],
}


def levels(node: Node, remote: str, freq: float, frames: int = 25) -> list[float]:
    """Amplitude of ``freq`` in each run of ``frames`` decoded frames ``node`` got from ``remote``
    (half-second spans: a tone's leakage onto another's frequency is negligible)."""
    decoded = node.decoded_audio(remote)
    out = []
    for start in range(0, len(decoded) - frames + 1, frames):
        span = decoded[start : start + frames]
        mono = np.concatenate([x.samples[:, 0] for x in span]).astype(np.float64)
        t = np.arange(mono.size) / 48_000
        out.append(float(2.0 * abs(np.dot(mono, np.exp(-2j * np.pi * freq * t))) / mono.size))
    return out


async def _speak(node: Node, seconds: float) -> None:
    for remote in node.manager.list_connected():
        await node.peer(remote).send_audio(tone(seconds, TONES[node.peer_id]))


@asynccontextmanager
async def granted_session() -> AsyncIterator[tuple[Session, WebRtcTransport, dict[str, Node]]]:
    authority = TokenAuthority(SECRET)
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        server: SignalingServer = await nursery.start(SignalingServer(port=0, auth=authority).run)
        session = Session(nursery, stun, server, Changes())
        nursery.start_soon(tick, session.changes)
        config = attrs.evolve(session.config(TRANSPORT_ID), ice_host_addresses=("127.0.0.1",))
        transport = WebRtcTransport(config, hub=server)
        await nursery.start(run_transport, transport)
        nodes: dict[str, Node] = {}
        for peer_id, grants in GRANTS.items():
            token = authority.issue(peer_id, "default", grants=grants)
            client = SignalingClient(server.url, peer_id, capabilities=("audio",), token=token)
            await nursery.start(client.run)
            config = attrs.evolve(session.config(peer_id), ice_host_addresses=("127.0.0.1",))
            manager = PeerManager(config, client, options=TEST_OPTIONS)
            await nursery.start(manager.run)
            node = nodes[peer_id] = Node(peer_id, client, manager, session.changes)
            nursery.start_soon(node.follow, nursery)
        everyone = {TRANSPORT_ID, *nodes}
        await session.until(
            lambda: all(
                set(n.manager.list_connected()) == everyone - {pid} for pid, n in nodes.items()
            ),
            30,
        )
        for node in nodes.values():
            nursery.start_soon(partial(_speak, node, 30.0))
        try:
            yield session, transport, nodes
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_listener_is_not_heard_and_a_speaker_gets_no_media() -> None:
    async with granted_session() as (session, transport, nodes):
        alice, lurker, speaker = nodes["alice"], nodes["lurker"], nodes["speaker"]
        assert transport.peers is not None
        # The transport learned each member's grants from the hub, never from the member.
        to_lurker = transport.peers.get_peer("lurker")
        to_speaker = transport.peers.get_peer("speaker")
        assert to_lurker is not None
        assert to_speaker is not None
        assert (to_lurker.send_media, to_lurker.receive_media) == (True, False)
        assert (to_speaker.send_media, to_speaker.receive_media) == (False, True)
        # Enough of the mix for a few spectra (the mix is late or partial now and then when the
        # machine is busy, so presence is the best half second, absence is every one).
        await session.until(
            lambda: (
                len(alice.decoded_audio(TRANSPORT_ID)) >= 150
                and len(lurker.decoded_audio(TRANSPORT_ID)) >= 150
            ),
            30,
        )
        heard = {
            (name, freq): levels(node, TRANSPORT_ID, freq)
            for name, node in (("alice", alice), ("lurker", lurker))
            for freq in TONES.values()
        }
        log.warning(
            "mix levels (best, worst half second) %s; load %s",
            {k: (round(max(v), 4), round(min(v), 4)) for k, v in heard.items()},
            os.getloadavg(),
        )
        # The listener hears the others through the mix, and nobody ever hears the listener.
        assert max(heard["lurker", 440.0]) > 0.1
        assert max(heard["lurker", 1000.0]) > 0.1
        assert max(heard["alice", 1000.0]) > 0.1
        assert max(heard["alice", 660.0]) < 0.03
        assert max(heard["lurker", 660.0]) < 0.03
        # The speaker is heard but gets nothing: no audio from the transport or from alice.
        assert speaker.audio(TRANSPORT_ID) == []
        assert speaker.audio("alice") == []
        # Peer to peer the same: alice takes nothing from the listener, the listener hears her.
        assert alice.audio("lurker") == []
        assert len(lurker.decoded_audio("alice")) > 0
        assert to_lurker.stats.audio_packets == 0
        # The transport's pipeline sees the listener as silence (it gets its mix), never its tone.
        running = transport.sessions.get_session("default")
        assert running is not None
        assert "lurker" in running.session.peers


async def test_the_listener_feed_passes_data_and_fills_silence() -> None:
    from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia

    now = [100.0]
    send, receive = trio.open_memory_channel[ReceivedMedia](10)
    feed = ListenerFeed("lurker", receive, clock=lambda: now[0])
    first = await feed.receive()
    assert isinstance(first, ReceivedAudio)
    assert (first.local_time, first.samples.shape, float(abs(first.samples).max())) == (
        100.0,
        (960, 2),
        0.0,
    )
    message = ReceivedData("lurker", "hi", 100.001)
    send.send_nowait(message)
    assert await feed.receive() is message
    now[0] = 100.02
    assert (await feed.receive()).local_time == pytest.approx(100.02)
    now[0] = 105.0  # a stall: no burst of 250 frames, the feed resumes near now
    assert (await feed.receive()).local_time == pytest.approx(104.9)
    send.close()
    with pytest.raises(trio.EndOfChannel):
        await feed.receive()


async def test_media_sent_anyway_by_a_member_who_may_not_publish_is_dropped() -> None:
    """A hostile client: our answer says sendonly, it rewrites it to sendrecv and sends anyway.
    Nothing it sends reaches ``received`` (nor a jitter buffer or a decoder). aiortc already
    drops RTP for a section it answered sendonly; the receive path's own check
    (``unpublished_packets``) is there for whatever gets past it. About 2 s."""
    from meshrtc.config import TransportConfig
    from meshrtc.rtc.bridge import open_bridge
    from meshrtc.rtc.events import ReceivedAudio
    from meshrtc.rtc.peer import PeerConnection

    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], ice_host_addresses=("127.0.0.1",))
        async with open_bridge() as bridge:
            peers: dict[str, PeerConnection] = {}

            def wire(to: str, rewrite: bool = False) -> Any:
                async def send(method: str, params: dict[str, Any]) -> None:
                    if rewrite and "sdp" in params:
                        params = {
                            **params,
                            "sdp": params["sdp"].replace("a=sendonly", "a=sendrecv"),
                        }
                    nursery.start_soon(peers[to].handle_signal, method, params)

                return send

            hostile = PeerConnection(
                "transport", bridge, config, wire("t"), local_id="mallory", media=("audio",)
            )
            # The transport's side: mallory may subscribe but not publish.
            guard = PeerConnection(
                "mallory",
                bridge,
                config,
                wire("m", rewrite=True),
                local_id="transport",
                media=("audio",),
                receive_media=False,
            )
            peers.update(m=hostile, t=guard)
            heard: list[ReceivedAudio] = []

            async def collect(peer: PeerConnection, into: list[ReceivedAudio]) -> None:
                async for item in peer.received:
                    if isinstance(item, ReceivedAudio) and not item.concealed:
                        into.append(item)  # noqa: PERF401 (read as it arrives)

            got_back: list[ReceivedAudio] = []
            with trio.fail_after(20):
                await nursery.start(hostile.run)
                await nursery.start(guard.run)
                nursery.start_soon(collect, guard, heard)
                nursery.start_soon(collect, hostile, got_back)
                await hostile.offer()
                await hostile.wait_state("Connected")
                await guard.wait_state("Connected")
                await hostile.send_audio(tone(5.0, 660.0))
                await guard.send_audio(tone(5.0, 440.0))
                # It still hears us (subscribe), while what it sends stops at the door.
                # It still hears us (subscribe); 1 s of its own tone was sent meanwhile.
                while len(got_back) < 50:  # noqa: ASYNC110 (the collector has no event)
                    await trio.sleep(0.02)
            log.warning(
                "hostile sender: %d packets dropped on arrival, %d audio packets buffered, "
                "%d items delivered; load %s",
                guard.stats.unpublished_packets,
                guard.stats.audio_packets,
                len(heard),
                os.getloadavg(),
            )
            assert heard == []
            assert guard.stats.audio_packets == 0
            nursery.cancel_scope.cancel()
