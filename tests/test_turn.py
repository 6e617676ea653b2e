"""TURN: two meshrtc peers whose media can only go through a real TURN server (coturn).

Both peers join through the signaling server with ``ice_transport_policy="relay"`` and coturn
(tests/turn_server.py) as their TURN server, so the only candidates they gather and offer are
addresses coturn allocated, in the relay port range it was given. The tests show that:

* both ends connect and exchange audio (the right tone), video and data;
* ICE selected a relay↔relay pair on both sides, the two pairs mirror each other, and every
  address is in coturn's relay range;
* coturn itself relayed the traffic: when the peers close, each allocation is deleted and coturn
  logs what it relayed, at least every RTP packet the peer behind it received;
* a wrong credential gets no allocation, hence no candidate: the connection goes to Failed with a
  reason naming the TURN server as soon as its attempts are used up (no waiting for a timeout),
  and leaves no task, thread or socket behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import numpy as np
import trio

from meshrtc.config import TransportConfig, TurnServer
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerManager
from meshrtc.signaling.client import Backoff, SignalingClient

from .conftest import require_binary
from .peer_helpers import (
    TEST_OPTIONS,
    Node,
    Session,
    decoder_threads,
    dominant_frequency,
    feed_media,
    open_session,
    open_sockets,
)
from .turn_server import Coturn, run_coturn


async def _join(
    s: Session, peer_id: str, turn: TurnServer, options: PeerOptions = TEST_OPTIONS
) -> Node:
    """``Session.join`` with a TURN server and the relay-only policy in the peer's configuration."""
    config = TransportConfig(
        signaling_url=s.server.url,
        stun_servers=[s.stun.url],
        turn_servers=[turn],
        ice_transport_policy="relay",
        peer_id=peer_id,
        video_codec="H264",
    )
    client = SignalingClient(s.server.url, peer_id)
    await s.nursery.start(client.run)
    manager = PeerManager(config, client, bridge=s.bridge, options=options)
    await s.nursery.start(manager.run)
    node = Node(peer_id, client, manager, s.changes)
    s.nodes[peer_id] = node
    s.nursery.start_soon(node.follow, s.nursery)
    return node


def _candidate(line: str) -> tuple[str, tuple[str, int]]:
    """(type, (host, port)) of an SDP ``candidate:`` line."""
    fields = line.split()
    return fields[fields.index("typ") + 1], (fields[4], int(fields[5]))


def _check_only_relay_candidates(peer: PeerConnection, turn: Coturn) -> None:
    for candidates in (peer.local_candidates, peer.remote_candidates):
        assert candidates, f"{peer.local_id} ↔ {peer.peer_id}: no candidates"
        for kind, address in map(_candidate, candidates):
            assert kind == "relay", candidates
            assert turn.is_relay_address(address), (address, turn.min_port, turn.max_port)


def _loud(node: Node, other: str) -> list[np.ndarray]:
    return [
        x.samples[:, 0] for x in node.decoded_audio(other) if float(np.abs(x.samples).max()) > 0.1
    ]


async def test_audio_video_and_data_flow_only_through_the_turn_relay(tmp_path: Path) -> None:
    binary = require_binary("turnserver", "coturn")
    async with run_coturn(binary, tmp_path) as turn:
        async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
            alice = await _join(s, "alice", turn.turn_server())
            started = time.monotonic()
            bob = await _join(s, "bob", turn.turn_server())
            await s.until(s.all_connected, within=20)
            print(f"connected through TURN {time.monotonic() - started:.3f} s after bob joined")
            a_to_b, b_to_a = alice.peer("bob"), bob.peer("alice")
            _check_only_relay_candidates(a_to_b, turn)
            _check_only_relay_candidates(b_to_a, turn)

            await feed_media(alice, 3.0, freq=440.0, shade=60)
            await feed_media(bob, 3.0, freq=660.0, shade=120)
            await a_to_b.send_data("relayed text")
            await b_to_a.send_data(b"relayed bytes")

            def enough(node: Node, other: str) -> bool:
                return (
                    len(_loud(node, other)) >= 25
                    and len(node.video(other)) >= 5
                    and node.data(other) != []
                )

            await s.until(lambda: enough(alice, "bob") and enough(bob, "alice"), within=30)
            for node, other, freq, data in (
                (bob, "alice", 440.0, "relayed text"),
                (alice, "bob", 660.0, b"relayed bytes"),
            ):
                pcm = np.concatenate(_loud(node, other)[:25])
                assert abs(dominant_frequency(pcm) - freq) < 10
                assert node.data(other) == [data]
                peer = node.peer(other)
                assert peer.stats.video_decode_errors == 0
                assert {(v.frame.width, v.frame.height) for v in node.video(other)} == {(160, 120)}

            # The pair ICE uses on each side: relay to relay, each the mirror of the other.
            pair_a = await a_to_b.candidate_pair()
            pair_b = await b_to_a.candidate_pair()
            assert pair_a is not None
            assert pair_b is not None
            for pair in (pair_a, pair_b):
                assert (pair.local_type, pair.remote_type) == ("relay", "relay"), pair
                assert turn.is_relay_address(pair.local_address), pair
                assert turn.is_relay_address(pair.remote_address), pair
            assert pair_a.local_address == pair_b.remote_address
            assert pair_b.local_address == pair_a.remote_address
            assert pair_a.local_address != pair_b.local_address

            await alice.manager.aclose()
            await bob.manager.aclose()
            # What each peer received over RTP, counted by meshrtc (fixed now: both are closed).
            rtp_received = {
                pair_a.remote_address: a_to_b.stats.audio_packets + a_to_b.stats.video_packets,
                pair_b.remote_address: b_to_a.stats.audio_packets + b_to_a.stats.video_packets,
            }

        # Closing deleted both allocations; coturn logged what each one relayed.
        await turn.log.until(lambda: len(turn.peer_usage()) >= 2, within=10)
        usage = turn.peer_usage()
        print("coturn peer usage:", usage)
        assert len(usage) == 2, usage
        assert {u.username for u in usage} == {turn.username}
        # Alice's allocation has a permission for bob's relayed address and vice versa: every
        # packet between them crossed coturn twice (into one allocation, out of the other).
        assert {u.peers for u in usage} == {
            frozenset({pair_a.remote_address}),
            frozenset({pair_b.remote_address}),
        }
        for u, mirror in ((usage[0], usage[1]), (usage[1], usage[0])):
            (peer_address,) = u.peers
            # What came in from that peer's allocation: the RTP its client counted (at least the 25
            # loud audio packets and 5 pictures waited for) plus RTCP, DTLS, SCTP and ICE checks.
            assert u.received_packets >= rtp_received[peer_address] >= 30, (u, rtp_received)
            assert u.received_packets <= mirror.sent_packets, usage
            assert u.received_bytes > 0
        assert len(turn.log.matching(r"ALLOCATE processed, success")) == 2
        assert len(turn.log.matching(r"CHANNEL_BIND processed, success")) >= 2


async def test_a_wrong_credential_fails_the_connection_with_a_reason(tmp_path: Path) -> None:
    binary = require_binary("turnserver", "coturn")
    tries = 2
    options = attrs.evolve(
        TEST_OPTIONS,
        connect_timeout=10.0,  # not what ends it: no candidate fails each attempt at once
        reconnect=Backoff(tries=tries, initial=0.1, factor=2.0, maximum=0.2, jitter=0.0),
        polite_wait=0.1,
    )
    threads_before = decoder_threads()
    async with run_coturn(binary, tmp_path) as turn:
        async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
            sockets_before = open_sockets()
            wrong = turn.turn_server(credential="not-the-password")
            started = time.monotonic()
            alice = await _join(s, "alice", wrong, options)
            bob = await _join(s, "bob", wrong, options)
            await s.until(lambda: "bob" in alice.manager.peers and "alice" in bob.manager.peers)
            peers = [alice.peer("bob"), bob.peer("alice")]
            with trio.fail_after(8):
                for peer in peers:
                    await peer.wait_state("Failed")
            elapsed = time.monotonic() - started
            print(f"wrong TURN credential: both sides Failed {elapsed:.2f} s after joining")
            assert elapsed < options.connect_timeout
            for peer in peers:
                reason = peer.failure_reason
                assert reason is not None
                assert f"no relay candidate: {turn.url} gave no TURN allocation" in reason, reason
                assert f"gave up after {tries} reconnect attempts" in reason, reason
                assert not peer.local_candidates
                assert await peer.candidate_pair() is None
                assert not peer.refused
                assert [state for _, state in peer.history][:3] == [
                    "New",
                    "GatheringIce",
                    "Connecting",
                ]
                assert peer.history[-1][1] == "Failed"
                assert "Connected" not in [state for _, state in peer.history]
            # coturn checked the credential and refused: nothing was allocated.
            assert turn.log.matching(r"user <meshrtc>: .*error 401")
            assert not turn.log.matching(r"ALLOCATE processed, success")
            await alice.manager.aclose()
            await bob.manager.aclose()
            await alice.client.aclose()
            await bob.client.aclose()
            assert bridge.registered == []
            assert open_sockets() == sockets_before  # every TURN client socket was closed
        assert bridge.leftover_tasks == []
        assert bridge.errors == []
    assert decoder_threads() == threads_before
