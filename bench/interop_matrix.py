"""In-process interop matrix: codec x DTLS certificate x DTLS role, and offers meshrtc cannot use.

Run: ``.venv/bin/python bench/interop_matrix.py`` (about 20-40 s; ``--seconds`` per case).

The "other stack" is a plain aiortc RTCPeerConnection on the bridge's loop (no meshrtc tap), set up
like the GStreamer clients of docs/interop.md: its audio is aiortc's Opus test track, its video a
160x120 picture at 30 fps, a data channel; its certificate is aiortc's ECDSA one or an RSA
certificate whose DTLS context lists GStreamer's suites (``ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH``).
Against it, an ordinary meshrtc ``PeerConnection`` with ``video_codec`` set. Role "offers": the
client offers (so it is DTLS server, aiortc answering as client); "answers": meshrtc offers. Each
case waits for Connected, then for audio and video both ways and a data message each way, for
``--seconds``.

Mismatch cases: a client offering only VP8 (or only PCMU audio) to a VP9 transport, one whose
only usable section is its data channel, one offering nothing usable at all, and SDP aiortc cannot
read; these report what the answer rejected or how long the ``peer.error`` took.
Output: one row per case (``result`` ok / FAILED with what was missing), then
``interop_ok=<ok cases>/<cases>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import attrs
import av
import numpy as np
import trio
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)
from OpenSSL import SSL

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType
from meshrtc.media.negotiation import SessionText
from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.stun import StunServer

GSTREAMER_SUITES = b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH"
OPTIONS = PeerOptions(video_fps=15.0, quality_interval=1.0)
W, H = 160, 120


class GstLikeCertificate(RTCCertificate):
    def _create_ssl_context(self, srtp_profiles: list[Any]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(GSTREAMER_SUITES)
        return ctx


class SmallVideo(VideoStreamTrack):
    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        rgb = np.zeros((H, W, 3), dtype=np.uint8)
        rgb[..., 1] = 140
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@attrs.define(eq=False)
class Client:
    pc: RTCPeerConnection
    channel: RTCDataChannel | None = None
    tracks: list[MediaStreamTrack] = attrs.Factory(list)
    frames: dict[str, int] = attrs.Factory(lambda: {"audio": 0, "video": 0})
    messages: list[str] = attrs.Factory(list)


def _codecs(kind: str, mime: str) -> list[Any]:
    """Only ``mime`` (and RTX for video): what a client configured for that one codec offers."""
    wanted = {mime.lower(), f"{kind}/rtx"} if kind == "video" else {mime.lower()}
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]


def _build(certificate: RTCCertificate | None, audio: str, video: str, data: bool) -> Client:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if certificate is not None:
        adapter.use_certificate(pc, certificate)
    client = Client(pc)
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv").setCodecPreferences(
        _codecs("audio", audio)
    )
    pc.addTransceiver(SmallVideo(), direction="sendrecv").setCodecPreferences(
        _codecs("video", video)
    )
    if data:
        client.channel = pc.createDataChannel("interop")
        client.channel.on("message", client.messages.append)
    pc.on("datachannel", lambda ch: ch.on("message", client.messages.append))
    pc.on("track", client.tracks.append)
    return client


async def _drain(client: Client, bridge: Bridge) -> None:
    """Pull decoded frames from the client's remote tracks (aiortc's own decoders)."""

    async def pull(track: MediaStreamTrack) -> None:
        while True:
            try:
                await bridge.run(track.recv)
            except MediaStreamError:
                return  # the connection closed
            client.frames[track.kind] += 1

    async with trio.open_nursery() as nursery:
        seen: set[int] = set()
        while True:
            for track in list(client.tracks):
                if id(track) not in seen:
                    seen.add(id(track))
                    nursery.start_soon(pull, track)
            await trio.sleep(0.05)


@attrs.define
class Row:
    case: str
    result: str
    detail: str
    connect_s: float | None = None
    cipher: str | None = None


async def _run_case(
    name: str,
    *,
    codec: str,
    rsa: bool,
    client_offers: bool,
    client_audio: str = "audio/opus",
    client_video: str | None = None,
    data: bool = True,
    seconds: float,
) -> Row:
    client_video = client_video or f"video/{codec}"
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(
            stun_servers=[stun.url],
            peer_id="server",
            video_codec=codec,
            ice_host_addresses=["127.0.0.1"],
        )
        signals_in, signals = trio.open_memory_channel[tuple[str, dict[str, Any]]](100)

        async def send(method: str, params: dict[str, Any]) -> None:
            signals_in.send_nowait((method, params))

        async with open_bridge() as bridge:
            certificate = adapter.rsa_certificate(kind=GstLikeCertificate) if rsa else None
            client = await bridge.call(_build, certificate, client_audio, client_video, data)
            bridge.register(client.pc)
            server = PeerConnection("client", bridge, config, send, options=OPTIONS)
            await nursery.start(server.run)
            started = time.monotonic()
            row = await _negotiate_and_measure(
                name, bridge, nursery, client, server, signals, client_offers, seconds
            )
            if row.connect_s is not None:
                row.connect_s -= started
            await server.aclose()
        nursery.cancel_scope.cancel()
    return row


async def _negotiate_and_measure(
    name: str,
    bridge: Bridge,
    nursery: trio.Nursery,
    client: Client,
    server: PeerConnection,
    signals: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]],
    client_offers: bool,
    seconds: float,
) -> Row:
    rejected: list[str] = []
    if client_offers:

        async def offer() -> str:
            await client.pc.setLocalDescription(await client.pc.createOffer())
            return str(client.pc.localDescription.sdp)

        await server.handle_signal("offer", {"sdp": await bridge.run(offer)})
        asked = time.monotonic()
        with trio.move_on_after(5):
            method, params = await signals.receive()
        if method == "error":
            took = (time.monotonic() - asked) * 1000
            return Row(name, "peer.error", f"{took:.0f} ms: {params['message'][:90]}")
        answer = SessionText.parse(params["sdp"])
        rejected = [s.kind for s in answer.sections if s.rejected]
        await bridge.run(adapter.apply_answer, client.pc, params["sdp"])
    else:
        await server.offer()
        with trio.move_on_after(5):
            method, params = await signals.receive()

        async def answer(sdp: str) -> str:
            await client.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await client.pc.setLocalDescription(await client.pc.createAnswer())
            return str(client.pc.localDescription.sdp)

        await server.handle_signal("answer", {"sdp": await bridge.run(answer, params["sdp"])})
    connected: float | None = None
    with trio.move_on_after(10):
        await server.wait_state("Connected")
        connected = time.monotonic()
    if connected is None:
        return Row(name, "FAILED", f"not Connected ({server.state}: {server.failure_reason})")
    nursery.start_soon(_drain, client, bridge)
    got = {"audio": 0, "video": 0, "data": 0}
    await server.send_audio(np.sin(np.arange(int(48_000 * seconds)) * 0.05).astype(np.float32))
    await server.send_video(np.full((H, W, 3), 90, dtype=np.uint8))
    await server.send_data("pong")
    deadline = trio.current_time() + seconds
    sent_ping = False
    while trio.current_time() < deadline:
        if not sent_ping and client.channel is not None and client.channel.readyState == "open":
            await bridge.call(client.channel.send, "ping")
            sent_ping = True
        with trio.move_on_after(0.1):
            item = await server.received.receive()
            if isinstance(item, ReceivedAudio) and not item.concealed:
                got["audio"] += 1
            elif isinstance(item, ReceivedVideo):
                got["video"] += 1
            elif isinstance(item, ReceivedData):
                got["data"] += 1
    expect = {k for k in ("audio", "video") if k not in rejected}
    missing = [f"{k} in" for k in expect if got[k] == 0]
    missing += [f"{k} out" for k in expect if client.frames[k] == 0]
    missing += [] if got["data"] else ["data in"]
    missing += [] if "pong" in client.messages else ["data out"]
    codecs = server.codecs
    detail = (
        f"in a/v/d {got['audio']}/{got['video']}/{got['data']}, out a/v "
        f"{client.frames['audio']}/{client.frames['video']}; "
        f"{codecs.get(FrameType.AUDIO, '-')} {codecs.get(FrameType.VIDEO, '-')}"
    )
    if rejected:
        detail += f"; rejected: {', '.join(rejected)}"
    return Row(
        name,
        "ok" if not missing else "FAILED",
        detail + (f"; missing {', '.join(missing)}" if missing else ""),
        connected,
        await server.dtls_cipher(),
    )


GARBAGE = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
)


async def _garbage() -> Row:
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], peer_id="server")
        signals_in, signals = trio.open_memory_channel[tuple[str, dict[str, Any]]](10)

        async def send(method: str, params: dict[str, Any]) -> None:
            signals_in.send_nowait((method, params))

        async with open_bridge() as bridge:
            server = PeerConnection("client", bridge, config, send, options=OPTIONS)
            await nursery.start(server.run)
            asked = time.monotonic()
            await server.handle_signal("offer", {"sdp": GARBAGE})
            method, params = await signals.receive()
            took = (time.monotonic() - asked) * 1000
            await server.aclose()
        nursery.cancel_scope.cancel()
    result = "peer.error" if method == "error" else "FAILED"
    return Row(
        "garbage SDP (no ICE credentials)", result, f"{took:.0f} ms: {params['message'][:90]}"
    )


async def main(seconds: float) -> int:
    rows: list[Row] = []
    cases: list[tuple[str, dict[str, Any]]] = []
    for codec in ("VP8", "VP9", "H264"):
        for rsa in (False, True):
            for client_offers in (True, False):
                cert = "RSA (GStreamer suites)" if rsa else "ECDSA"
                role = "client offers" if client_offers else "meshrtc offers"
                cases.append(
                    (
                        f"{codec} / {cert} / {role}",
                        {"codec": codec, "rsa": rsa, "client_offers": client_offers},
                    )
                )
    cases += [
        (
            "VP8-only offer to a VP9 transport",
            {"codec": "VP9", "rsa": True, "client_offers": True, "client_video": "video/VP8"},
        ),
        (
            "H264-only offer to a VP8 transport",
            {"codec": "VP8", "rsa": False, "client_offers": True, "client_video": "video/H264"},
        ),
        (
            "PCMU-only audio to a VP9 transport",
            {"codec": "VP9", "rsa": False, "client_offers": True, "client_audio": "audio/PCMU"},
        ),
        (
            "PCMU audio + VP8 video to a VP9 transport",
            {
                "codec": "VP9",
                "rsa": False,
                "client_offers": True,
                "client_audio": "audio/PCMU",
                "client_video": "video/VP8",
            },
        ),
        (
            "PCMU audio + VP8 video, no data channel, to a VP9 transport",
            {
                "codec": "VP9",
                "rsa": False,
                "client_offers": True,
                "client_audio": "audio/PCMU",
                "client_video": "video/VP8",
                "data": False,
            },
        ),
    ]
    for name, kwargs in cases:
        rows.append(await _run_case(name, seconds=seconds, **kwargs))
        _print(rows[-1])
    rows.append(await _garbage())
    _print(rows[-1])
    ok = sum(r.result in ("ok", "peer.error") for r in rows)
    print(f"interop_ok={ok}/{len(rows)}")
    return 0 if ok == len(rows) else 1


def _print(row: Row) -> None:
    connect = f"{row.connect_s:.2f}s" if row.connect_s is not None else "-"
    print(
        f"| {row.case} | {row.result} | {connect} | {row.cipher or '-'} | {row.detail} |",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="media time per case")
    args = parser.parse_args()
    sys.exit(trio.run(main, args.seconds))
