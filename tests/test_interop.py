"""Interop (docs/interop.md): VP8 end to end, offers with sections meshrtc cannot use, unanswerable
offers, and peers with RSA DTLS certificates, in both DTLS roles.

The "other stack" here is a plain aiortc RTCPeerConnection driven through the bridge, set up the way
the offending clients were: VP8-only or PCMU-only offers (a browser or GStreamer configured for
them), an RSA certificate whose DTLS lists only ECDHE-RSA suites (GStreamer's default, as far as
its DTLS server is concerned). The meshrtc side is an ordinary PeerConnection. The GStreamer
client itself is tests/gst_* (engineer E's), which exercises the same paths over the real stack.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import av
import pytest
import trio
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtcdtlstransport import SRTP_PROFILES
from OpenSSL import SSL

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType
from meshrtc.media.negotiation import Section, SessionText
from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.protocol import PeerErrorNotice

from .peer_helpers import open_session, picture, tone, wired_pair

#: GStreamer's DTLS cipher list (ext/dtls/gstdtlsagent.c). With its default RSA certificate, as
#: DTLS server it can only pick the (EC)DHE-RSA / RSA suites among these.
GSTREAMER_SUITES = b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH"
OPTIONS = PeerOptions(video_fps=10.0, quality_interval=1.0)


class GstLikeCertificate(RTCCertificate):
    """An RSA certificate whose DTLS contexts list GStreamer's suites (a GStreamer peer's DTLS)."""

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(GSTREAMER_SUITES)
        return ctx


class SmallVideoTrack(VideoStreamTrack):
    """aiortc's test video at 160x120 (its 640x480 at 30 fps costs a core in VP9 on this box)."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(picture(120), format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


# --- VP8 end to end ---------------------------------------------------------------------------


async def test_two_meshrtc_peers_on_vp8_exchange_audio_video_and_data() -> None:
    config = TransportConfig(video_codec="VP8", ice_host_addresses=["127.0.0.1"])
    async with wired_pair(config=config, options=OPTIONS) as pair:
        a, b = pair.a, pair.b
        await pair.nursery.start(a.run)
        await pair.nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        for peer, shade in ((a, 60), (b, 200)):
            await peer.send_audio(tone(2.0))
            await peer.send_video(picture(shade))
            await peer.send_data(f"hello from {peer.local_id}")
        for peer, shade in ((b, 60), (a, 200)):
            got: list[ReceivedMedia] = []
            with trio.fail_after(20):
                while not (
                    sum(isinstance(x, ReceivedVideo) for x in got) >= 5
                    and sum(isinstance(x, ReceivedAudio) and not x.concealed for x in got) >= 10
                    and any(isinstance(x, ReceivedData) for x in got)
                ):
                    got.append(await peer.received.receive())
            video = [x for x in got if isinstance(x, ReceivedVideo)]
            red = video[-1].frame.to_ndarray(format="rgb24")[..., 0].astype(float)
            assert abs(red.mean() - shade) < 12, red.mean()
            assert peer.codecs == {FrameType.AUDIO: "audio/opus", FrameType.VIDEO: "video/VP8"}
            assert peer.stats.video_decode_errors == 0
        assert "VP8/90000" in (a.local_sdp or "")
        assert "VP9/90000" not in (a.local_sdp or "")  # only the configured codec is offered
        await a.aclose()
        await b.aclose()


# --- a plain aiortc client against a meshrtc PeerConnection -------------------------------------


@attrs.define(eq=False)
class Client:
    """A plain aiortc RTCPeerConnection on the bridge's loop, as another stack would be."""

    bridge: Bridge
    pc: RTCPeerConnection
    channel: RTCDataChannel | None = None
    tracks: list[MediaStreamTrack] = attrs.Factory(list)
    messages: list[str] = attrs.Factory(list)


async def _client(
    bridge: Bridge,
    *,
    certificate: RTCCertificate | None = None,
    video: str | None = None,
    audio: str = "audio/opus",
    data: bool = True,
) -> Client:
    def build() -> Client:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if certificate is not None:
            adapter.use_certificate(pc, certificate)
        client = Client(bridge, pc)
        transceiver = pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        transceiver.setCodecPreferences(_only(audio))
        if video is not None:
            transceiver = pc.addTransceiver(SmallVideoTrack(), direction="sendrecv")
            transceiver.setCodecPreferences(adapter.codec_preferences("video", video))
        if data:
            client.channel = pc.createDataChannel("interop")
            client.channel.on("message", client.messages.append)
        pc.on("track", client.tracks.append)
        pc.on("datachannel", lambda ch: ch.on("message", client.messages.append))
        return client

    client = await bridge.call(build)
    bridge.register(client.pc)
    return client


def _only(mime: str) -> list[Any]:
    kind = mime.split("/")[0]
    capabilities = adapter.RTCRtpSender.getCapabilities(kind)
    return [c for c in capabilities.codecs if c.mimeType.lower() == mime.lower()]


async def _offer(client: Client) -> str:
    async def make() -> str:
        await client.pc.setLocalDescription(await client.pc.createOffer())
        sdp: str = client.pc.localDescription.sdp
        return sdp

    return await client.bridge.run(make)


@asynccontextmanager
async def _server(
    video_codec: str = "VP9",
) -> AsyncIterator[tuple[trio.Nursery, Bridge, PeerConnection, trio.MemoryReceiveChannel[Any]]]:
    async with _server_and_stun(video_codec) as (nursery, bridge, server, signals, _stun):
        yield nursery, bridge, server, signals


@asynccontextmanager
async def _server_and_stun(
    video_codec: str = "VP9",
) -> AsyncIterator[
    tuple[trio.Nursery, Bridge, PeerConnection, trio.MemoryReceiveChannel[Any], str]
]:
    """A meshrtc PeerConnection ("server", answering "client") whose signals land in a channel."""
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(
            stun_servers=[stun.url],
            peer_id="server",
            video_codec=video_codec,
            ice_host_addresses=["127.0.0.1"],
        )
        signals_in, signals = trio.open_memory_channel[tuple[str, dict[str, Any]]](100)

        async def send(method: str, params: dict[str, Any]) -> None:
            signals_in.send_nowait((method, params))

        async with open_bridge() as bridge:
            server = PeerConnection("client", bridge, config, send, options=OPTIONS)
            await nursery.start(server.run)
            yield nursery, bridge, server, signals, stun.url
            await server.aclose()
        nursery.cancel_scope.cancel()


async def _until(condition: Callable[[], bool], within: float) -> None:
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - state on the loop thread: no trio event
            await trio.sleep(0.02)


async def _flows(client: Client, server: PeerConnection, *, audio: bool, video: bool) -> None:
    """Media and data go both ways between ``client`` and ``server`` (both Connected)."""
    with trio.fail_after(15):
        await server.wait_state("Connected")
    await _until(lambda: client.channel is not None and client.channel.readyState == "open", 10)
    if audio:
        await server.send_audio(tone(2.0))
    if video:
        await server.send_video(picture(90))
    assert client.channel is not None
    await client.bridge.call(client.channel.send, "ping")
    await server.send_data("pong")
    got: list[ReceivedMedia] = []

    def enough() -> bool:
        return (
            (not audio or sum(isinstance(x, ReceivedAudio) and not x.concealed for x in got) >= 10)
            and (not video or sum(isinstance(x, ReceivedVideo) for x in got) >= 3)
            and any(isinstance(x, ReceivedData) for x in got)
        )

    with trio.fail_after(20):
        while not enough():
            got.append(await server.received.receive())
    assert [x.data for x in got if isinstance(x, ReceivedData)] == ["ping"]
    await _until(lambda: "pong" in client.messages, 10)
    # What the server sends arrives at the client's decoder too.
    kinds = {t.kind for t in client.tracks}
    assert kinds == {k for k, on in (("audio", audio), ("video", video)) if on}
    for track in client.tracks:
        frame = await client.bridge.run(track.recv)
        assert frame is not None


@pytest.mark.parametrize(
    ("offered", "rejected_kind"),
    [
        ({"video": "video/VP8"}, "video"),
        ({"video": "video/VP8", "bundle-only": "yes"}, "video"),
        ({"audio": "audio/PCMU", "video": "video/VP9"}, "audio"),
    ],
    ids=["vp8-video-to-vp9-server", "vp8-video-bundle-only-like-gstreamer", "pcmu-audio"],
)
async def test_an_unusable_section_is_rejected_and_the_rest_works(
    offered: dict[str, str], rejected_kind: str
) -> None:
    async with _server("VP9") as (_nursery, bridge, server, signals):
        client = await _client(
            bridge, video=offered["video"], audio=offered.get("audio", "audio/opus")
        )
        offer = await _offer(client)
        if "bundle-only" in offered:
            offer = _bundle_only(offer)
        await server.handle_signal("offer", {"sdp": offer})
        with trio.fail_after(5):
            method, params = await signals.receive()
        assert method == "answer"
        answer = SessionText.parse(params["sdp"])
        by_kind = {s.kind: s for s in answer.sections}
        assert by_kind[rejected_kind].port == 0
        assert by_kind[rejected_kind].mid is not None
        assert all(s.port != 0 for s in answer.sections if s.kind != rejected_kind)
        bundle = next(x for x in answer.session if x.startswith("a=group:BUNDLE"))
        assert by_kind[rejected_kind].mid not in bundle.split()[1:]
        rejected = await bridge.run(adapter.apply_answer, client.pc, params["sdp"])
        assert [answer.sections[i].kind for i in rejected] == [rejected_kind]
        await _flows(client, server, audio=rejected_kind != "audio", video=rejected_kind != "video")
        expected = {FrameType.AUDIO: "audio/opus", FrameType.VIDEO: "video/VP9"}
        del expected[FrameType.AUDIO if rejected_kind == "audio" else FrameType.VIDEO]
        assert server.codecs == expected


def _bundle_only(offer: str) -> str:
    """``offer`` as GStreamer's webrtcbin writes it: every section after the first has port 0 and
    ``a=bundle-only`` (RFC 8843 section 6), which is not a rejection."""
    text = SessionText.parse(offer)
    sections = [text.sections[0]]
    for section in text.sections[1:]:
        bundled = section.with_port(0)
        sections.append(Section((*bundled.lines, "a=bundle-only")))
    return attrs.evolve(text, sections=tuple(sections)).render()


#: Well-formed for the signaling server (it checks shape), useless to aiortc: no ICE credentials.
GARBAGE = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
)


async def test_an_offer_with_nothing_usable_gets_an_error_with_the_reason_within_1_s() -> None:
    async with _server("VP9") as (_nursery, bridge, server, signals):
        client = await _client(bridge, video="video/VP8", audio="audio/PCMU", data=False)
        offer = await _offer(client)
        started = time.monotonic()
        await server.handle_signal("offer", {"sdp": offer})
        with trio.fail_after(1.0):
            method, params = await signals.receive()
        elapsed = time.monotonic() - started
        assert method == "error", (method, params)
        assert params["code"] == -32009
        assert "offers PCMU" in params["message"]
        assert "offers VP8" in params["message"]
        assert "VP9" in params["message"]
        assert elapsed < 1.0
        with trio.fail_after(5):
            await server.wait_state("Failed")
        assert server.failure_reason is not None
        assert "offers VP8" in server.failure_reason
        assert server.stats.refused_offers == 1


async def test_a_garbage_offer_through_the_signaling_server_gets_peer_error_within_1_s() -> None:
    """The whole path: an offerer's peer.offer → server → PeerManager → PeerConnection fails to
    answer → peer.error → server → the offerer's notifications, with the reason, within 1 s."""
    async with open_session() as session:
        await session.join("server")
        offerer = SignalingClient(session.server.url, "offerer")
        await session.nursery.start(offerer.run)
        started = time.monotonic()
        await offerer.offer("server", GARBAGE)
        with trio.fail_after(1.0):
            async for event in offerer.notifications:
                if isinstance(event, PeerErrorNotice):
                    break
        assert time.monotonic() - started < 1.0
        assert (event.from_peer, event.to_peer, event.code) == ("server", "offerer", -32009)
        assert "aiortc refused the offer" in event.message
        assert "ICE username fragment or password is missing" in event.message
        await offerer.aclose()


async def test_a_meshrtc_offerer_fails_at_once_with_the_reason_of_a_peer_error() -> None:
    async with _server_and_stun("VP9") as (nursery, bridge, _server_peer, _signals, stun):
        config = TransportConfig(
            peer_id="client", stun_servers=[stun], ice_host_addresses=["127.0.0.1"]
        )
        sent: list[tuple[str, dict[str, Any]]] = []

        async def send(method: str, params: dict[str, Any]) -> None:
            sent.append((method, params))

        offerer = PeerConnection("server", bridge, config, send, options=OPTIONS)
        await nursery.start(offerer.run)
        await offerer.offer()
        await _until(lambda: bool(sent), 5)
        assert sent[0][0] == "offer"
        await offerer.handle_signal("error", {"code": -32009, "message": "no common codec"})
        with trio.fail_after(1):
            await offerer.wait_state("Failed")
        assert offerer.failure_reason == "server cannot answer our offer: no common codec"


# --- RSA certificates -------------------------------------------------------------------------


def test_every_dtls_context_lists_ecdhe_rsa_suites_after_the_ecdsa_ones() -> None:
    ctx = RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    # TLS 1.3 suites (TLS_*) come first in OpenSSL's list; DTLS 1.2 never uses them.
    suites = [s for s in SSL.Connection(ctx).get_cipher_list() if not s.startswith("TLS_")]
    assert suites[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert "ECDHE-RSA-AES128-GCM-SHA256" in suites
    assert all(s.startswith(("ECDHE-ECDSA-", "ECDHE-RSA-")) for s in suites)


def test_use_certificate_only_before_a_transport_exists() -> None:
    async def check() -> None:
        pc = RTCPeerConnection()
        try:
            certificate = adapter.rsa_certificate()
            adapter.use_certificate(pc, certificate)
            pc.createDataChannel("x")
            fingerprints = {f.value for f in certificate.getFingerprints()}
            await pc.setLocalDescription(await pc.createOffer())
            assert any(value in pc.localDescription.sdp for value in fingerprints)
            with pytest.raises(adapter.AdapterError):
                adapter.use_certificate(pc, certificate)
        finally:
            await pc.close()

    import asyncio

    asyncio.run(check())


@pytest.mark.parametrize("rsa_role", ["dtls-server", "dtls-client"])
async def test_a_peer_with_an_rsa_certificate_connects_and_media_flows(rsa_role: str) -> None:
    """The RSA peer offers (it is DTLS server: aiortc answers as client, ``setup:active``) or
    answers meshrtc's offer (then it is DTLS client)."""
    async with _server("VP9") as (_nursery, bridge, server, signals):
        certificate = adapter.rsa_certificate(kind=GstLikeCertificate)
        client = await _client(bridge, certificate=certificate, video="video/VP9")
        if rsa_role == "dtls-server":
            await server.handle_signal("offer", {"sdp": await _offer(client)})
            with trio.fail_after(5):
                method, params = await signals.receive()
            assert method == "answer"
            assert "a=setup:active" in params["sdp"]
            await bridge.run(adapter.apply_answer, client.pc, params["sdp"])
        else:
            await server.offer()
            with trio.fail_after(5):
                method, params = await signals.receive()
            assert method == "offer"

            async def answer(offer: str) -> str:
                await client.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
                await client.pc.setLocalDescription(await client.pc.createAnswer())
                sdp: str = client.pc.localDescription.sdp
                return sdp

            reply = await bridge.run(answer, params["sdp"])
            assert "a=setup:active" in reply
            await server.handle_signal("answer", {"sdp": reply})
        await _flows(client, server, audio=True, video=True)
        # The suite follows the DTLS server's certificate: RSA when the RSA peer is server.
        expected = "ECDHE-RSA-" if rsa_role == "dtls-server" else "ECDHE-ECDSA-"
        for cipher in (
            await bridge.call(adapter.dtls_cipher, client.pc),
            await server.dtls_cipher(),
        ):
            assert cipher is not None
            assert cipher.startswith(expected), cipher


async def test_meshrtc_peers_with_different_video_codecs_connect_with_audio_and_data() -> None:
    """A VP8 meshrtc peer offering to a VP9 one: the answer rejects video, the offerer applies it
    (the rejected section stands in as inactive), audio and data flow, nobody retries."""
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        base = TransportConfig(stun_servers=[stun.url], ice_host_addresses=["127.0.0.1"])
        async with open_bridge() as bridge:
            peers: dict[str, PeerConnection] = {}

            def wire(to: str) -> Callable[[str, dict[str, Any]], Any]:
                async def send(method: str, params: dict[str, Any]) -> None:
                    nursery.start_soon(peers[to].handle_signal, method, params)

                return send

            vp8 = PeerConnection(
                "vp9-peer",
                bridge,
                attrs.evolve(base, peer_id="vp8-peer", video_codec="VP8"),
                wire("vp9"),
                options=OPTIONS,
            )
            vp9 = PeerConnection(
                "vp8-peer",
                bridge,
                attrs.evolve(base, peer_id="vp9-peer", video_codec="VP9"),
                wire("vp8"),
                options=OPTIONS,
            )
            peers.update(vp8=vp8, vp9=vp9)
            await nursery.start(vp8.run)
            await nursery.start(vp9.run)
            await vp8.offer()
            with trio.fail_after(15):
                await vp8.wait_state("Connected")
                await vp9.wait_state("Connected")
            assert [
                s.kind for s in SessionText.parse(vp8.remote_sdp or "").sections if s.rejected
            ] == ["video"]
            for peer in (vp8, vp9):
                await peer.send_audio(tone(2.0))
                await peer.send_video(picture(80))  # goes nowhere: video was rejected
                await peer.send_data(f"from {peer.local_id}")
            for peer in (vp8, vp9):
                got: list[ReceivedMedia] = []
                with trio.fail_after(15):
                    while not (
                        sum(isinstance(x, ReceivedAudio) and not x.concealed for x in got) >= 10
                        and any(isinstance(x, ReceivedData) for x in got)
                    ):
                        got.append(await peer.received.receive())
                assert not any(isinstance(x, ReceivedVideo) for x in got)
                assert peer.codecs == {FrameType.AUDIO: "audio/opus"}
                assert peer.stats.links == 1  # connected on the first negotiation
            await vp8.aclose()
            await vp9.aclose()
        nursery.cancel_scope.cancel()


async def test_meshrtc_serve_runs_with_video_codec_vp8() -> None:
    """The reported crash: ``meshrtc serve --video-codec VP8`` exited with a traceback at start."""
    from .browser_helpers import meshrtc_serve

    async with meshrtc_serve("--video-codec", "VP8") as served:
        assert served.url.startswith("http://127.0.0.1:")
        assert served.process.returncode is None
    assert served.process.returncode == 0  # SIGINT: the graceful stop
