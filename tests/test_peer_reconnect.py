"""Reconnection: a killed path goes Reconnecting → Connected with media again, or Failed for good.

The path is killed with the adapter's PathControl (every ICE datagram of the connection dropped,
both ways, including those of connections rebuilt while it is down) and then restored. aiortc has no
ICE restart, so the PeerConnection rebuilds its RTCPeerConnection and renegotiates through
signaling; the lower id offers, the other gives way on glare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from meshrtc.config import TransportConfig
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerConnected, PeerReconnecting, PeerRemoved
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.client import Backoff

from .peer_helpers import Changes, Node, decoder_threads, open_session, picture, tone

FAST = PeerOptions(
    video_fps=10.0,
    quality_interval=1.0,
    media_timeout=1.0,
    reconnect_timeout=2.0,
)


def _media_after(node: Node, remote: str, since: float) -> tuple[int, int]:
    items = node.received.get(remote, [])
    audio = sum(
        1
        for x in items
        if isinstance(x, ReceivedAudio) and not x.concealed and x.local_time > since
    )
    video = sum(1 for x in items if isinstance(x, ReceivedVideo) and x.local_time > since)
    return audio, video


async def test_killed_path_reconnects_and_media_flows_again() -> None:
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice", options=FAST)
        bob = await s.join("bob", options=FAST)
        await s.until(s.all_connected, within=15)
        for node, other, shade in ((alice, "bob", 50), (bob, "alice", 150)):
            await node.peer(other).send_audio(tone(30.0, 440.0))
            await node.peer(other).send_video(picture(shade))
        await s.until(
            lambda: _media_after(alice, "bob", 0)[1] >= 3 and _media_after(bob, "alice", 0)[1] >= 3
        )
        at_bob = bob.peer("alice")
        at_alice = alice.peer("bob")
        await s.until(lambda: at_bob.sync_manager.state == "Synced", within=10)

        # Only what follows the kill counts: a PeerReconnecting from an earlier loss must not pass
        # for the kill's (both Connected again then: the failure seen once under load at 478480b).
        history = [state for _, state in at_bob.history], [state for _, state in at_alice.history]
        assert history[0] == history[1] == ["New", "GatheringIce", "Connecting", "Connected"]
        seen_at_bob, seen_at_alice = len(bob.events), len(alice.events)
        await bridge.call(at_bob.path_control.kill)
        killed = time.monotonic()
        await s.until(
            lambda: (
                any(isinstance(e, PeerReconnecting) for e in bob.events[seen_at_bob:])
                and any(isinstance(e, PeerReconnecting) for e in alice.events[seen_at_alice:])
            ),
            within=10,
        )
        detected = time.monotonic() - killed
        # The silence was noticed (media_timeout 1 s; aiortc's consent check would take ~30 s) by
        # one side, or both; a side that had not noticed yet followed the other's new offer.
        reasons = [at_bob.last_loss_reason, at_alice.last_loss_reason]
        assert any(r is not None and "no RTP/RTCP" in r for r in reasons), reasons
        assert all(r is not None and ("no RTP/RTCP" in r or "renegotiated" in r) for r in reasons)
        assert at_bob.state == at_alice.state == "Reconnecting"
        # Sync state starts over with the rebuilt connection.
        assert at_bob.sync_manager.state == "Unsynced"
        # Rebuilt connections meet the dead path too: keep it down through at least one attempt.
        await s.until(lambda: at_alice.stats.links >= 2, within=5)
        await trio.sleep(1.0)  # the path stays down a while (scenario, not a wait for a result)
        assert at_bob.state == at_alice.state == "Reconnecting"

        await bridge.call(at_bob.path_control.restore)
        restored = time.monotonic()
        await s.until(
            lambda: (
                PeerConnected("alice", reconnected=True) in bob.events
                and PeerConnected("bob", reconnected=True) in alice.events
            ),
            within=15,
        )
        connected = time.monotonic() - restored
        await s.until(
            lambda: (
                min(_media_after(bob, "alice", restored)) >= 1
                and min(_media_after(alice, "bob", restored)) >= 1
            ),
            within=10,
        )
        flowing = time.monotonic() - restored
        print(
            f"loss detected after {detected:.2f} s; after the path returned: Connected in "
            f"{connected:.2f} s, audio and video decoded on both sides in {flowing:.2f} s "
            f"({at_alice.stats.links} connections built by alice, {at_bob.stats.links} by bob)"
        )
        # The same PeerConnection objects went Connected → Reconnecting → Connected.
        for peer in (at_bob, at_alice):
            states = [state for _, state in peer.history]
            assert states[:4] == ["New", "GatheringIce", "Connecting", "Connected"]
            assert states[4:] == ["Reconnecting", "Connected"]
            assert peer.stats.reconnects == 1
            assert peer.stats.links >= 2
            assert peer.failure_reason is None
        assert alice.manager.get_peer("bob") is at_alice
        assert not [e for e in alice.events + bob.events if isinstance(e, PeerRemoved)]
        # The lower id (alice) offered the rebuilds; bob only answered.
        assert at_bob.polite
        assert not at_alice.polite
        assert at_bob.path_control.dropped_in > 0
        # Media is back in sync on the new connection.
        await s.until(lambda: at_bob.sync_manager.state == "Synced", within=10)
        await s.until(
            lambda: any(
                isinstance(x, ReceivedAudio)
                and x.local_time > restored
                and x.sender_time is not None
                for x in bob.received["alice"]
            ),
            within=10,
        )
        assert decoder_threads() == []


class Wire:
    """Direct signaling between PeerConnections; while holding, messages wait in :attr:`held`."""

    def __init__(self, nursery: trio.Nursery, changes: Changes) -> None:
        self.nursery = nursery
        self.changes = changes
        self.peers: dict[str, PeerConnection] = {}
        self.holding = False
        self.held: list[tuple[str, str, dict[str, Any]]] = []

    def to(self, name: str) -> Callable[[str, dict[str, Any]], Any]:
        async def send(method: str, params: dict[str, Any]) -> None:
            if self.holding:
                self.held.append((name, method, params))
                self.changes.poke()
            else:
                self.nursery.start_soon(self.peers[name].handle_signal, method, params)

        return send

    async def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for name, method, params in held:
            await self.peers[name].handle_signal(method, params)


async def _drain(peer: PeerConnection, out: list[ReceivedMedia], changes: Changes) -> None:
    async for item in peer.received:
        out.append(item)
        changes.poke()


async def test_path_that_stays_down_fails_after_the_configured_attempts() -> None:
    options = PeerOptions(
        media_timeout=0.5,
        reconnect_timeout=0.5,
        polite_wait=0.1,
        reconnect=Backoff(tries=2, initial=0.05, factor=2.0, maximum=0.1, jitter=0.0),
        video_fps=10.0,
    )
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], video_codec="H264")
        async with open_bridge() as bridge:
            wire = Wire(nursery, Changes())
            a = PeerConnection(
                "bob", bridge, config, wire.to("b"), local_id="alice", options=options
            )
            b = PeerConnection(
                "alice", bridge, config, wire.to("a"), local_id="bob", options=options
            )
            wire.peers.update(a=a, b=b)
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.offer()
            with trio.fail_after(10):
                await a.wait_state("Connected")
                await b.wait_state("Connected")
            await bridge.call(b.path_control.kill)
            with trio.fail_after(15):
                await a.wait_state("Failed")
                await b.wait_state("Failed")
            for peer in (a, b):
                assert [state for _, state in peer.history][-3:] == [
                    "Connected",
                    "Reconnecting",
                    "Failed",
                ]
                assert peer.failure_reason is not None
                assert "gave up after 2 reconnect attempts" in peer.failure_reason
                assert not peer.refused
            # Failed is final: the connections are closed, nothing is left registered.
            assert bridge.registered == []
            with trio.fail_after(5):
                async for _ in b.received:  # the channel ends
                    pass
        assert bridge.leftover_tasks == []
        nursery.cancel_scope.cancel()


async def test_glare_the_lower_id_keeps_its_offer_the_other_rolls_back() -> None:
    """Both sides offer a rebuild at once; alice (lower id) ignores bob's, bob answers alice's."""
    options = PeerOptions(
        media_timeout=0.5, reconnect_timeout=10.0, polite_wait=0.05, video_fps=10.0
    )
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], video_codec="H264")
        async with open_bridge() as bridge:
            changes = Changes()
            wire = Wire(nursery, changes)
            a = PeerConnection(
                "bob", bridge, config, wire.to("b"), local_id="alice", options=options
            )
            b = PeerConnection(
                "alice", bridge, config, wire.to("a"), local_id="bob", options=options
            )
            wire.peers.update(a=a, b=b)
            got: list[ReceivedMedia] = []
            await nursery.start(a.run)
            await nursery.start(b.run)
            nursery.start_soon(_drain, a, [], changes)
            nursery.start_soon(_drain, b, got, changes)
            await a.offer()
            with trio.fail_after(10):
                await a.wait_state("Connected")
                await b.wait_state("Connected")

            # Hold signaling, cut the path: each side detects the loss and sends its own offer.
            wire.holding = True
            await bridge.call(a.path_control.kill)
            await changes.until(
                lambda: {(to, m) for to, m, _ in wire.held} == {("a", "offer"), ("b", "offer")},
                within=10,
            )
            await bridge.call(a.path_control.restore)
            await wire.release()  # both offers cross: bob's reaches alice, alice's reaches bob

            with trio.fail_after(10):
                await a.wait_state("Connected")
                await b.wait_state("Connected")
            assert a.stats.ignored_offers == 1  # alice kept her offer
            assert b.stats.ignored_offers == 0  # bob rolled his back and answered
            assert a.stats.reconnects == b.stats.reconnects == 1
            await a.send_audio(tone(2.0))
            since = time.monotonic()
            await changes.until(
                lambda: any(
                    isinstance(x, ReceivedAudio) and x.local_time > since and not x.concealed
                    for x in got
                ),
                within=10,
            )
            await a.aclose()
            await b.aclose()
            assert bridge.registered == []
        assert bridge.leftover_tasks == []
        nursery.cancel_scope.cancel()


async def test_an_idle_link_is_not_taken_for_a_dead_one() -> None:
    """Two peers that send no media: their links carry only RTCP (zero-NTP Sender Reports), which
    must keep them alive past ``media_timeout``, not rebuild them over and over."""
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        # aiortc sends RTCP every 0.5-1.5 s, so an idle link needs media_timeout above 1.5 s.
        idle = attrs.evolve(FAST, media_timeout=2.0)
        alice = await s.join("alice", options=idle)
        bob = await s.join("bob", options=idle)
        await s.until(s.all_connected, within=15)
        histories = [list(alice.peer("bob").history), list(bob.peer("alice").history)]
        # Two media timeouts of silence: a link judged on RTP alone would have failed.
        await trio.sleep(2 * idle.media_timeout)
        for node, other, history in ((alice, "bob", histories[0]), (bob, "alice", histories[1])):
            peer = node.peer(other)
            assert peer.state == "Connected"
            assert peer.history == history
            assert (peer.stats.links, peer.stats.reconnects) == (1, 0)
            assert peer.stats.audio_packets == 0  # nothing was sent: the link really was idle
