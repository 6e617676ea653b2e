"""Two PeerConnections in one process over loopback, wired to each other directly (no server)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType
from meshrtc.rtc.aiortc_adapter import ImpairmentConfig
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerError, refusal_reason, refusal_sdp
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.protocol import AnnounceResult, Answer, IceCandidate, Offer, validate_sdp
from meshrtc.signaling.server import SignalingServer

from .peer_helpers import HEIGHT, WIDTH, decoder_threads, picture, tone, wired_pair


async def _collect(
    peer: PeerConnection, out: list[ReceivedMedia], done: Callable[[list[ReceivedMedia]], bool]
) -> None:
    with trio.fail_after(15):
        while not done(out):
            out.append(await peer.received.receive())


async def _exchange(a: PeerConnection, b: PeerConnection, a_id: str, b_id: str) -> None:
    """``a`` (alice's connection to ``b_id``) and ``b`` connect and send each other everything."""
    with trio.fail_after(15):
        await a.wait_state("Connected")
        await b.wait_state("Connected")

    for i, peer in enumerate((a, b)):
        await peer.send_audio(tone(3.0, freq=440.0 * (i + 1)))
        await peer.send_video(picture(60 * (i + 1)))
    await a.send_data("hello from a")
    await b.send_data(b"\x00bytes from b")

    def enough(items: list[ReceivedMedia]) -> bool:
        audio = [x for x in items if isinstance(x, ReceivedAudio) and not x.concealed]
        video = [x for x in items if isinstance(x, ReceivedVideo)]
        data = [x for x in items if isinstance(x, ReceivedData)]
        return len(audio) >= 50 and len(video) >= 10 and len(data) >= 1

    got_a: list[ReceivedMedia] = []
    got_b: list[ReceivedMedia] = []
    async with trio.open_nursery() as inner:
        inner.start_soon(_collect, a, got_a, enough)
        inner.start_soon(_collect, b, got_b, enough)

    for got, other, data, freq in (
        (got_b, a_id, "hello from a", 440.0),
        (got_a, b_id, b"\x00bytes from b", 880.0),
    ):
        assert {x.peer_id for x in got} == {other}
        assert [x.data for x in got if isinstance(x, ReceivedData)] == [data]
        audio = [x for x in got if isinstance(x, ReceivedAudio)]
        assert all(x.sample_rate == 48_000 and x.samples.dtype == np.float32 for x in audio)
        assert all(b.local_time >= a.local_time for a, b in itertools.pairwise(audio))
        # The tone comes through: its dominant frequency is the one sent.
        pcm = np.concatenate([x.samples[:, 0] for x in audio if not x.concealed][-25:])
        spectrum = np.abs(np.fft.rfft(pcm))
        peak = float(np.fft.rfftfreq(len(pcm), 1 / 48_000)[int(np.argmax(spectrum))])
        assert abs(peak - freq) < 10, peak
        video = [x for x in got if isinstance(x, ReceivedVideo)]
        assert [(v.frame.width, v.frame.height) for v in video] == [(WIDTH, HEIGHT)] * len(video)
        stamps = [v.frame.pts for v in video if v.frame.pts is not None]
        assert len(stamps) == len(video)
        assert all(y > x for x, y in itertools.pairwise(stamps)), stamps
        assert all(y.local_time >= x.local_time for x, y in itertools.pairwise(video))

    for peer in (a, b):
        assert peer.codecs == {FrameType.AUDIO: "audio/opus", FrameType.VIDEO: "video/H264"}
        assert peer.stats.received_dropped == 0
    assert decoder_threads() == []
    await a.aclose()
    await b.aclose()
    assert a.state == "Closed"
    assert b.state == "Closed"


async def test_two_peers_wired_directly_exchange_audio_video_and_data() -> None:
    async with wired_pair() as pair:
        a, b = pair.a, pair.b
        assert a.state == "New"
        await pair.nursery.start(a.run)
        await pair.nursery.start(b.run)
        await a.offer()
        await _exchange(a, b, "alice", "bob")
        assert pair.bridge.registered == []
    assert pair.bridge.leftover_tasks == []  # aclose ended every aiortc task of both connections
    assert decoder_threads() == []


async def _route(client: SignalingClient, peers: dict[str, PeerConnection]) -> None:
    """Hand each forwarded offer/answer/candidate to the PeerConnection for its sender."""
    async for event in client.notifications:
        match event:
            case Offer(from_peer=who, sdp=sdp):
                await peers[who].handle_signal("offer", {"sdp": sdp})
            case Answer(from_peer=who, sdp=sdp):
                await peers[who].handle_signal("answer", {"sdp": sdp})
            case IceCandidate(from_peer=who):
                params = {
                    "candidate": event.candidate,
                    "sdpMid": event.sdp_mid,
                    "sdpMLineIndex": event.sdp_m_line_index,
                }
                await peers[who].handle_signal("candidate", params)
            case _:
                pass


def _via(client: SignalingClient, to: str) -> Callable[[str, dict[str, Any]], Any]:
    async def send(method: str, params: dict[str, Any]) -> None:
        if method == "offer":
            await client.offer(to, params["sdp"])
        elif method == "answer":
            await client.answer(to, params["sdp"])
        else:
            raise AssertionError(method)

    return send


async def test_two_peers_negotiate_through_the_signaling_server() -> None:
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        config = TransportConfig(stun_servers=[stun.url], video_codec="H264")
        async with open_bridge() as bridge:
            alice = SignalingClient(server.url, "alice")
            bob = SignalingClient(server.url, "bob")
            await nursery.start(alice.run)
            bob_result: AnnounceResult = await nursery.start(bob.run)
            # The newcomer (bob) offers to every peer its announce result lists.
            assert [p.peer_id for p in bob_result.peers] == ["alice"]
            at_alice = {
                "bob": PeerConnection("bob", bridge, config, _via(alice, "bob"), local_id="alice")
            }
            at_bob = {
                "alice": PeerConnection("alice", bridge, config, _via(bob, "alice"), local_id="bob")
            }
            nursery.start_soon(_route, alice, at_alice)
            nursery.start_soon(_route, bob, at_bob)
            await nursery.start(at_alice["bob"].run)
            await nursery.start(at_bob["alice"].run)
            await at_bob["alice"].offer()
            await _exchange(at_bob["alice"], at_alice["bob"], "bob", "alice")
            assert bridge.registered == []
            await alice.aclose()
            await bob.aclose()
        nursery.cancel_scope.cancel()
    assert decoder_threads() == []


async def test_loss_is_concealed_and_video_recovers_with_keyframes() -> None:
    """10 % packet loss at bob's side: audio gaps come out concealed, video asks for keyframes."""
    impair = {
        FrameType.AUDIO: ImpairmentConfig(seed=3, drop=0.1),
        FrameType.VIDEO: ImpairmentConfig(seed=4, drop=0.1),
    }
    async with wired_pair(b_impairments=impair) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await b.wait_state("Connected")
        await a.send_audio(tone(4.0))
        await a.send_video(picture(100))

        def enough(items: list[ReceivedMedia]) -> bool:
            concealed = [x for x in items if isinstance(x, ReceivedAudio) and x.concealed]
            video = [x for x in items if isinstance(x, ReceivedVideo)]
            return len(concealed) >= 3 and len(video) >= 20 and b.stats.keyframe_requests >= 1

        got: list[ReceivedMedia] = []
        await _collect(b, got, enough)
        audio = [x for x in got if isinstance(x, ReceivedAudio)]
        decoded = [x for x in audio if not x.concealed]
        # Concealment stands in for the lost packets: most audio is still decoded.
        assert len(decoded) > 4 * (len(audio) - len(decoded))
        assert all(x.samples.shape[1] == 2 for x in audio)
        video = [x for x in got if isinstance(x, ReceivedVideo)]
        assert all((v.frame.width, v.frame.height) == (WIDTH, HEIGHT) for v in video)
        await a.aclose()
        await b.aclose()
    assert pair.bridge.leftover_tasks == []
    assert decoder_threads() == []


async def test_aclose_without_run_closes_and_run_cannot_restart() -> None:
    async with open_bridge() as bridge:

        async def nowhere(method: str, params: dict[str, Any]) -> None:
            raise AssertionError("nothing may be signaled")

        config = TransportConfig(video_codec="H264")
        peer = PeerConnection("bob", bridge, config, nowhere)
        with pytest.raises(PeerError):
            await peer.offer()  # not running: no connection to offer from
        await peer.aclose()
        await peer.aclose()  # idempotent
        assert peer.state == "Closed"
        with pytest.raises(PeerError):
            await peer.run()
        assert bridge.registered == []


async def _pair(
    nursery: trio.Nursery, bridge: Any, config: TransportConfig, **kwargs: Any
) -> tuple[PeerConnection, PeerConnection]:
    """alice (offers) and bob, wired directly, Connected."""
    peers: dict[str, PeerConnection] = {}

    def wire(to: str) -> Callable[[str, dict[str, Any]], Any]:
        async def send(method: str, params: dict[str, Any]) -> None:
            nursery.start_soon(peers[to].handle_signal, method, params)

        return send

    a = PeerConnection("bob", bridge, config, wire("b"), local_id="alice", **kwargs)
    b = PeerConnection("alice", bridge, config, wire("a"), local_id="bob", **kwargs)
    peers.update(a=a, b=b)
    await nursery.start(a.run)
    await nursery.start(b.run)
    await a.offer()
    with trio.fail_after(15):
        await a.wait_state("Connected")
        await b.wait_state("Connected")
    return a, b


async def _data(peer: PeerConnection, n: int) -> list[ReceivedData]:
    out: list[ReceivedData] = []
    with trio.fail_after(15):
        while len(out) < n:
            item = await peer.received.receive()
            if isinstance(item, ReceivedData):
                out.append(item)
    return out


@pytest.mark.parametrize("mode", ["reliable", "unreliable"])
async def test_data_only_connection_carries_large_text_binary_and_json(mode: str) -> None:
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], data_channel_mode=mode)
        async with open_bridge() as bridge:
            a, b = await _pair(nursery, bridge, config, media=("data",))
            assert not a.audio
            assert not a.video
            assert a.data
            # SCTP splits what aiortc's 1189-byte packets cannot hold; no chunking of our own.
            big = bytes(range(256)) * 800  # 200 KiB
            document = {"rows": [{"i": i, "name": f"row {i}"} for i in range(3000)]}  # ~75 KB
            await a.send_data(big)
            await a.send_data(document)
            await a.send_data("ünïcode text")
            got = await _data(b, 3)
            assert [x.data for x in got[::2]] == [big, "ünïcode text"]
            assert got[1].json() == document
            assert all(x.peer_id == "alice" for x in got)
            assert b.stats.data_received == a.stats.data_sent == 3
            channel = a._link.channel  # type: ignore[union-attr]
            assert channel is not None
            assert channel.ordered is (mode == "reliable")
            assert channel.maxRetransmits == (None if mode == "reliable" else 0)
            # Larger than the remote accepts (aiortc advertises 256 KiB): a clear error.
            with pytest.raises(PeerError, match="262144"):
                await b.send_data(b"x" * 300_000)
            with pytest.raises(PeerError, match="audio is not negotiated"):
                await a.send_audio(tone(0.1))
            await a.aclose()
            await b.aclose()
        nursery.cancel_scope.cancel()


async def test_remote_candidates_are_validated_before_aiortc_sees_them() -> None:
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url])
        async with open_bridge() as bridge:
            a, b = await _pair(nursery, bridge, config, media=("data",))
            # Our own candidates come from our SDP (aiortc gathers them all before the offer).
            assert a.local_candidates
            assert all(" 127.0.0.1 " in c for c in a.local_candidates if "typ host" in c)
            assert set(a.remote_candidates) == set(b.local_candidates)
            before = list(b.remote_candidates)
            await b.handle_signal("candidate", {"candidate": "candidate:x 1 udp 1 nowhere"})
            good = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"
            await b.handle_signal("candidate", {"candidate": good, "sdpMid": "0"})
            await b.handle_signal("candidate", {"candidate": ""})  # end of candidates
            await b.send_data("after the candidates")  # the supervisor handled them in order
            await _data(a, 1)
            assert b.stats.invalid_candidates == 1
            assert b.remote_candidates == [*before, good]
            assert b.state == "Connected"
            with pytest.raises(PeerError):
                await b.handle_signal("rollback", {})
            await a.aclose()
            await b.aclose()
        nursery.cancel_scope.cancel()


async def test_a_peer_needs_some_media_and_connected_needs_a_remote_sdp() -> None:
    async with open_bridge() as bridge:

        async def nowhere(method: str, params: dict[str, Any]) -> None:
            raise AssertionError("nothing may be signaled")

        with pytest.raises(PeerError, match="at least one"):
            PeerConnection("bob", bridge, TransportConfig(), nowhere, local_id="a", media=())
        no_data = TransportConfig(enable_data_channel=False)
        with pytest.raises(PeerError, match="at least one"):
            PeerConnection("bob", bridge, no_data, nowhere, local_id="a", media=("data",))
        with pytest.raises(PeerError, match="itself"):
            PeerConnection("bob", bridge, TransportConfig(), nowhere, local_id="bob")
        peer = PeerConnection("bob", bridge, TransportConfig(), nowhere, local_id="alice")
        # The machine is the peer's Negotiation (rtc/negotiation.py); its guard says no.
        peer._negotiation.start_gathering()
        peer._negotiation.gathering_complete()
        assert peer.state == "Connecting"
        assert peer._negotiation.connected() is False  # the guard: no remote description yet
        assert peer.state == "Connecting"
        await peer.aclose()
        assert peer.state == "Closed"


def test_refusal_is_a_valid_answer_that_says_why() -> None:
    sdp = refusal_sdp("mesh of bob is full (10 of max_peers=10)")
    assert validate_sdp(sdp, "answer") == sdp  # the signaling server forwards it
    assert refusal_reason(sdp) == "mesh of bob is full (10 of max_peers=10)"
    assert (
        refusal_reason("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 x 0\r\n") is None
    )
    assert " 0 UDP/DTLS/SCTP" in sdp  # every section rejected
