"""PeerManager meshes over loopback: real SignalingServer, StunServer, aiortc, all in one process.

Two and then five meshrtc peers join a session, connect every pair (the newcomer offers), and
exchange Opus audio, H.264 video and data both ways; each side decodes, and the counters of both
ends agree. A peer beyond ``max_peers`` is refused with a reason and disturbs nobody.
"""

from __future__ import annotations

import itertools
import time

import attrs
import numpy as np
import trio

from meshrtc.media.frame import FrameType
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData
from meshrtc.rtc.peers import PeerAdded, PeerConnected, PeerRefused, PeerRemoved

from .peer_helpers import (
    HEIGHT,
    LOUD_PEAK,
    TEST_OPTIONS,
    WIDTH,
    Node,
    Session,
    decoder_threads,
    dominant_frequency,
    feed_media,
    open_session,
)

#: 20 H.264 encoders and decoders in one process: 5 frames a second is enough to see them work.
#: The whole 8 s tone is queued (the default queue keeps 2 s of a clip handed over at once).
MESH5_OPTIONS = attrs.evolve(TEST_OPTIONS, video_fps=5.0, audio_send_queue=8.0)
#: Decoded frames of the sender's tone a receiver must have (the first 25 give its frequency).
LOUD = 10


def _loud(receiver: Node, sender: str) -> list[ReceivedAudio]:
    """The decoded frames that carry the tone (once it ends, silence follows)."""
    return [x for x in receiver.decoded_audio(sender) if float(np.abs(x.samples).max()) > LOUD_PEAK]


def _missing(receiver: Node, sender: str, audio: int, video: int, data: int) -> list[str]:
    """What ``receiver`` still lacks from ``sender`` (empty: enough); from running counts, as
    this is re-checked at every delivery."""
    tally = receiver.tally(sender)
    wanted = {
        "srs": len(receiver.peer(sender).sender_reports) == 2,
        "timed": any(tally.timed),
        "audio": tally.decoded >= audio,
        "loud": tally.loud >= LOUD,
        "video": tally.video >= video,
        "data": tally.data >= data,
    }
    return [name for name, ok in wanted.items() if not ok]


def _enough(receiver: Node, sender: str, audio: int, video: int, data: int) -> bool:
    return not _missing(receiver, sender, audio, video, data)


def _counts(receiver: Node, sender: Node) -> dict[str, object]:
    """What a short pair has (both ends' counters: the sender's data_sent, the receiver's late
    packets and the video jitter buffer's dropped frames tell the failures apart)."""
    peer = receiver.peer(sender.peer_id)
    video = peer.sync_manager.video_jitter_buffer
    return {
        "state": peer.state,
        "srs": len(peer.sender_reports),
        "timed": any(x.sender_time is not None for x in receiver.audio(sender.peer_id)[-5:]),
        "audio": len(receiver.audio(sender.peer_id)),
        "decoded": len(receiver.decoded_audio(sender.peer_id)),
        "loud": len(_loud(receiver, sender.peer_id)),
        "video": len(receiver.video(sender.peer_id)),
        "data": len(receiver.data(sender.peer_id)),
        "received": attrs.asdict(peer.stats),
        "sent": attrs.asdict(sender.peer(receiver.peer_id).stats),
        "video buffer": {
            "late": video.late_arrival_count,
            "dropped frames": video.dropped_frame_count,
            "keyframe requests": video.keyframe_requests,
        },
    }


def _check_pair(
    receiver: Node, sender: Node, freq: float, data: list[bytes | str], *, loaded: bool
) -> None:
    """What ``receiver`` got from ``sender``: decoded, in order, complete, and as sent.

    ``loaded``: 20 connections in one process need more than the one core the GIL gives them
    (docs/peers.md): senders fall behind and skip ahead, packets reach their jitter buffer after
    their playout time and are concealed. What must hold regardless is checked either way.
    """
    got_from = receiver.peer(sender.peer_id)
    sent_to = sender.peer(receiver.peer_id)
    audio = receiver.audio(sender.peer_id)
    assert all(x.peer_id == sender.peer_id for x in receiver.received[sender.peer_id])
    assert all(x.sample_rate == 48_000 and x.samples.dtype == np.float32 for x in audio)
    assert all(x.samples.shape == (960, 2) for x in audio)
    # Output order: presentation times never go back, RTP time moves one packet at a time.
    assert all(b.local_time >= a.local_time for a, b in itertools.pairwise(audio))
    # Decoded audio comes out in RTP order, one packet's worth at a time (a sender whose loop
    # stalled skips ahead by whole packets, tracks.py); concealed items between them carry
    # estimated stamps. The drift stage resamples (media/audio_stage.py): a frame starts within
    # ±1% (the correction's bound) of a packet's worth after the previous one, never inside it;
    # where the stage restarted (a timeline jump under load) it starts on a new phase.
    stamps = [x.rtp_timestamp for x in audio if not x.concealed]
    steps = [b - a for a, b in itertools.pairwise(stamps) if a is not None and b is not None]
    assert len(steps) == len(stamps) - 1
    assert all(step >= 0.99 * 960 for step in steps), sorted(set(steps))
    one_packet = [step for step in steps if abs(step - 960) <= 0.01 * 960]
    assert len(one_packet) >= 0.5 * len(steps), sorted(set(steps))
    # The tone arrives as sent (the packets that carry it: once it ends, silence follows).
    loud = _loud(receiver, sender.peer_id)
    assert len(loud) >= LOUD, _counts(receiver, sender)
    pcm = np.concatenate([x.samples[:, 0] for x in loud[:25]])
    assert abs(dominant_frequency(pcm) - freq) < 10
    video = receiver.video(sender.peer_id)
    assert {(v.frame.width, v.frame.height) for v in video} == {(WIDTH, HEIGHT)}
    assert all(b.local_time >= a.local_time for a, b in itertools.pairwise(video))
    assert all(
        b.rtp_timestamp is not None
        and a.rtp_timestamp is not None
        and b.rtp_timestamp > a.rtp_timestamp
        for a, b in itertools.pairwise(video)
    )
    # Once an SR arrived, items carry the sender's capture wall clock (Unix seconds; both ends
    # share this machine's clock): typically a jitter buffer's delay before we present them.
    wall_offset = time.time() - time.monotonic()
    delays = sorted(
        x.local_time + wall_offset - x.sender_time for x in audio if x.sender_time is not None
    )
    assert delays, "no audio item was mapped to the sender's wall clock"
    assert all(-1.0 < d < 10.0 for d in delays), (delays[0], delays[-1])  # the right clock
    if not loaded:
        # Loaded, senders stamp their RTCP pairs late and the mapping moves by tens of ms.
        assert 0.0 < delays[len(delays) // 2] < 0.5, delays[len(delays) // 2]
    # Data: every message, in order, as sent (text, bytes, JSON).
    assert receiver.data(sender.peer_id) == data
    assert got_from.stats.data_received == sent_to.stats.data_sent == len(data)
    # Counters of the two ends agree: nothing lost on loopback, every decoded item counted.
    assert got_from.quality.packets_lost() == 0
    # A packet can still miss its playout time on a loaded machine: it is concealed, then
    # refused as late. Nothing else is concealed.
    buffer = got_from.sync_manager.audio_jitter_buffer
    if loaded:
        # Gaps still inside the SyncManager are not delivered yet; an overrun drops unreceived
        # packets without a gap.
        assert got_from.stats.concealed_frames <= buffer.packet_loss_count
    else:
        assert got_from.stats.concealed_frames == buffer.packet_loss_count == 0
    lost_items = got_from.stats.concealed_frames + got_from.stats.recovered_frames
    assert lost_items <= buffer.packet_loss_count
    assert got_from.stats.video_decode_errors == 0
    assert got_from.stats.audio_frames >= len(audio)
    assert got_from.stats.video_frames >= len(video)
    assert got_from.stats.received_dropped == 0
    # Every packet the sender had sent by its last Sender Report reached us.
    for kind in (FrameType.AUDIO, FrameType.VIDEO):
        report = got_from.sender_reports.get(kind)
        assert report is not None, f"no {kind.value} Sender Report from {sender.peer_id}"
        received = (
            got_from.stats.audio_packets
            if kind is FrameType.AUDIO
            else got_from.stats.video_packets
        )
        assert received >= report.packet_count
    assert got_from.codecs == {FrameType.AUDIO: "audio/opus", FrameType.VIDEO: "video/H264"}
    metrics = receiver.manager.get_metrics(sender.peer_id)
    assert metrics is not None
    assert metrics.packet_loss_rate == 0.0
    assert metrics.audio_bitrate_kbps > 0


def _messages(sender: str, receiver: str) -> list[bytes | str | dict[str, object]]:
    return [f"{sender}→{receiver} text", f"{sender}:{receiver}".encode(), {"from": sender, "n": 3}]


async def _exchange(
    s: Session,
    names: list[str],
    audio: int,
    video: int,
    *,
    loaded: bool = False,
    tone: float = 4.0,
) -> None:
    """Every peer sends a ``tone`` of its own, a picture and three messages to every other.

    ``tone`` (seconds) must outlast what a loaded receiver can miss of it: in the five-peer mesh
    the shared asyncio loop falls behind, arrivals step up to a second later and stay there, and
    the jitter buffer refuses them as late until its base-transit window has rolled over twice
    (up to 4 s, media/jitter.py). With 4 s handed over (2 s kept by the default send queue), a
    receiver then decoded 2-7 frames of the tone and the silence after it.
    """
    freqs = {name: 300.0 + 100.0 * i for i, name in enumerate(names)}
    started = time.monotonic()
    for i, name in enumerate(names):
        await feed_media(s.nodes[name], tone, freq=freqs[name], shade=40 * (i + 1))
    for sender, receiver in itertools.permutations(names, 2):
        for message in _messages(sender, receiver):
            await s.nodes[sender].peer(receiver).send_data(message)
    sent = time.monotonic()
    #: Per criterion, when some pair last lacked it (what the wait was for, when it was long).
    lacked: dict[str, tuple[float, str, str]] = {}

    def every_pair_has_enough() -> bool:
        now = time.monotonic()
        done = True
        for snd, r in itertools.permutations(names, 2):
            for name in _missing(s.nodes[r], snd, audio, video, 3):
                lacked[name] = (now, snd, r)
                done = False
        return done

    try:
        await s.until(every_pair_has_enough, within=30)
        waits = ", ".join(
            f"{name} {at - sent:.2f} s ({snd}->{r})" for name, (at, snd, r) in lacked.items()
        )
        print(
            f"media and data sent in {sent - started:.2f} s; every pair had enough "
            f"{time.monotonic() - sent:.2f} s later (last lacking: {waits})"
        )
        if lacked:
            _, snd, r = max(lacked.values())
            print(f"{snd}->{r}: {_counts(s.nodes[r], s.nodes[snd])}")
    except trio.TooSlowError:
        short = {
            f"{snd}->{r}": _counts(s.nodes[r], s.nodes[snd])
            for snd, r in itertools.permutations(names, 2)
            if not _enough(s.nodes[r], snd, audio, video, 3)
        }
        raise AssertionError(f"short of media after 30 s: {short}") from None
    for sender, receiver in itertools.permutations(names, 2):
        expected = [
            m if isinstance(m, bytes | str) else f'{{"from":"{sender}","n":3}}'
            for m in _messages(sender, receiver)
        ]
        _check_pair(s.nodes[receiver], s.nodes[sender], freqs[sender], expected, loaded=loaded)


async def test_two_peers_join_connect_and_exchange_media_and_data() -> None:
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice")
        started = time.monotonic()
        bob = await s.join("bob")
        await s.until(s.all_connected, within=15)
        print(f"2 peers connected {time.monotonic() - started:.3f} s after the second joined")
        # The newcomer (bob) offered; alice waited for the offer.
        assert PeerAdded("alice", initiator=True) in bob.events
        assert PeerAdded("bob", initiator=False) in alice.events
        assert PeerConnected("alice", reconnected=False) in bob.events
        for node, other in ((alice, "bob"), (bob, "alice")):
            peer = node.peer(other)
            assert peer.state == "Connected"
            assert peer.local_sdp is not None
            assert peer.remote_sdp is not None
            assert peer.connected_at is not None
            assert peer.connected_at >= peer.created_at
            assert peer.local_candidates
            assert all(c.startswith("candidate:") for c in peer.ice_candidates)
            assert [state for _, state in peer.history] == [
                "New",
                "GatheringIce",
                "Connecting",
                "Connected",
            ]
        await _exchange(s, ["alice", "bob"], audio=60, video=10)
        # A received message parses back to what was sent.
        last = [x for x in alice.received["bob"] if isinstance(x, ReceivedData)][-1]
        assert last.json() == {"from": "bob", "n": 3}
        assert decoder_threads() == []


async def test_five_peers_form_a_full_mesh() -> None:
    names = [f"p{i}" for i in range(1, 6)]
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        started = time.monotonic()
        for name in names:
            await s.join(name, options=MESH5_OPTIONS)
        await s.until(s.all_connected, within=30)
        print(f"5-peer mesh connected in {time.monotonic() - started:.2f} s")
        for later, earlier in itertools.combinations(reversed(names), 2):
            # Each newcomer offered to everyone already there.
            assert PeerAdded(earlier, initiator=True) in s.nodes[later].events
            assert PeerAdded(later, initiator=False) in s.nodes[earlier].events
        await _exchange(s, names, audio=30, video=5, loaded=True, tone=8.0)
        for node in s.nodes.values():
            assert len(node.manager.list_connected()) == 4
            assert not [e for e in node.events if isinstance(e, PeerRemoved)]
        assert decoder_threads() == []


async def test_a_peer_beyond_max_peers_is_refused_and_disturbs_nobody() -> None:
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        for name in ("a", "b", "c"):
            await s.join(name, max_peers=3)
        await s.until(s.all_connected, within=20)
        for name in ("a", "b", "c"):
            await feed_media(s.nodes[name], 8.0, freq=500.0, shade=90)
        histories = {
            (n, r): list(s.nodes[n].peer(r).history)
            for n in ("a", "b", "c")
            for r in ("a", "b", "c")
            if n != r
        }
        before = {(n, r): len(s.nodes[n].decoded_audio(r)) for (n, r) in histories}

        d = await s.join("d", max_peers=3)

        def refused(node: Node, peer_id: str, by_remote: bool) -> bool:
            return any(
                isinstance(e, PeerRefused) and e.peer_id == peer_id and e.by_remote is by_remote
                for e in node.events
            )

        # d offers to a and b (its own limit leaves room for two) and refuses c; a and b are full.
        await s.until(
            lambda: (
                refused(d, "a", True)
                and refused(d, "b", True)
                and refused(d, "c", False)
                and all(refused(s.nodes[n], "d", False) for n in ("a", "b"))
                and refused(s.nodes["c"], "d", True)
            ),
            within=15,
        )
        reasons = [e.reason for e in d.events if isinstance(e, PeerRefused) and e.by_remote]
        assert all("full" in r and "max_peers=3" in r for r in reasons), reasons
        await s.until(
            lambda: {e.peer_id for e in d.events if isinstance(e, PeerRemoved)} == {"a", "b"},
            within=10,
        )
        assert not d.manager.peers
        assert d.manager.list_connected() == []
        failed = [e for e in d.events if isinstance(e, PeerRemoved)]
        assert all("refused by" in e.reason for e in failed)
        # The three others never noticed: same connections, same history, media still flowing.
        await s.until(
            lambda: all(
                len(s.nodes[n].decoded_audio(r)) >= before[(n, r)] + 25 for (n, r) in histories
            ),
            within=15,
        )
        for (n, r), history in histories.items():
            peer = s.nodes[n].peer(r)
            assert peer.state == "Connected"
            assert peer.history == history
        for n in ("a", "b", "c"):
            assert sorted(s.nodes[n].manager.list_connected()) == sorted({"a", "b", "c"} - {n})
            assert "d" not in s.nodes[n].manager.peers
        d_peer_events = [e for e in d.events if isinstance(e, PeerConnected)]
        assert d_peer_events == []
