"""PeerConnection: one WebRTC connection to one remote peer (spec section 2).

The statechart is declared here, where the PeerConnection class lives. Its state mirrors aiortc's
real connection state (invariant 8): ``connected`` requires a remote SDP, and a lost path goes through
Reconnecting (rebuild and renegotiate, since aiortc has no ICE restart) before Failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs
import av
import numpy as np
import numpy.typing as npt
import trio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from transitions import MachineError

from meshrtc.config import TransportConfig
from meshrtc.errors import MeshRtcError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import (
    AudioPacket,
    Gap,
    JitterBuffer,
    KeyframeRequest,
    PlayoutItem,
    VideoFrame,
)
from meshrtc.media.keyframe import is_keyframe_for
from meshrtc.rtc.aiortc_adapter import (
    AudioDecoder,
    ImpairmentConfig,
    PeerTap,
    TapEvent,
    VideoDecoder,
    tap_peer_connection,
)
from meshrtc.rtc.bridge import Bridge, ToTrio
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.tracks import AudioOutputTrack, VideoOutputTrack
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

log = logging.getLogger(__name__)

_LIVE = ("New", "GatheringIce", "Connecting", "Connected", "Reconnecting")

PEER_CONNECTION_MACHINE = register(
    MachineSpec(
        name="PeerConnection",
        doc="New → Gathering ICE → Connecting → Connected → Failed | Closed; a lost path from "
        "Connecting or Connected goes to Reconnecting and back to Connected (spec section 2).",
        states=(*_LIVE, "Failed", "Closed"),
        initial="New",
        labels={"GatheringIce": "Gathering ICE"},
        transitions=(
            ("start_gathering", "New", "GatheringIce"),
            ("gathering_complete", "GatheringIce", "Connecting"),
            ("connected", ("Connecting", "Reconnecting"), "Connected"),
            ("connection_lost", ("Connecting", "Connected"), "Reconnecting"),
            ("fail", _LIVE, "Failed"),
            ("close", (*_LIVE, "Failed"), "Closed"),
        ),
    )
)


# ---------------------------------------------------------------------------------------------
# The connection


class PeerError(MeshRtcError):
    """A PeerConnection was used in a state that cannot do it (or negotiation went wrong)."""


SendSignal: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[object]]


@attrs.frozen
class _State:
    connection_state: str


@attrs.frozen
class _Message:
    data: bytes | str
    at: float


_Event: TypeAlias = TapEvent | _State | _Message

_CODEC_MIME = {"H264": "video/H264", "VP8": "video/VP8", "VP9": "video/VP9"}


class PeerConnection(StatefulModel):
    """One aiortc RTCPeerConnection on the bridge, run from trio.

    Why the split: aiortc keeps ICE/DTLS/SRTP/RTCP, we keep media from the RTP packet on, so the
    receive path (tap → jitter buffer → playout → decoder) runs here in trio and the asyncio thread
    only forwards packets. Signaling is an injected ``send_signal(method, params)`` so the same class
    works wired directly to another PeerConnection or through a SignalingClient.

    Use: ``await nursery.start(peer.run)``, then ``await peer.offer()`` on one side; feed incoming
    signals to :meth:`handle_signal`; read :attr:`received`; :meth:`aclose` when done.
    """

    state: str
    start_gathering = trigger_stub()
    gathering_complete = trigger_stub()
    connected = trigger_stub()
    connection_lost = trigger_stub()
    fail = trigger_stub()
    close = trigger_stub()

    def __init__(
        self,
        peer_id: str,
        bridge: Bridge,
        config: TransportConfig,
        send_signal: SendSignal,
        *,
        impairments: dict[FrameType, ImpairmentConfig] | None = None,
        max_received: int = 1000,
    ) -> None:
        self.peer_id = peer_id
        self.bridge = bridge
        self.config = config
        self._send_signal = send_signal
        self._impairments = impairments
        self.audio_track = AudioOutputTrack(max_queued=2.0)
        self.video_track = VideoOutputTrack(fps=30)
        self._received_send, self.received = trio.open_memory_channel[ReceivedMedia](max_received)
        #: Received items dropped because nobody read :attr:`received` in time.
        self.received_dropped = 0
        self._pipe: ToTrio[_Event]
        self._pipe, self._events = bridge.open_channel()
        self._pc: RTCPeerConnection | None = None
        self._tap: PeerTap | None = None
        self._channel: Any = None
        self._channel_open = trio.Event()
        self._buffers = {
            FrameType.AUDIO: JitterBuffer.from_config(FrameType.AUDIO, config),
            FrameType.VIDEO: JitterBuffer.from_config(
                FrameType.VIDEO, config, is_keyframe=is_keyframe_for(str(config.video_codec))
            ),
        }
        self._audio_decoder: AudioDecoder | None = None
        self._video_decoder: VideoDecoder | None = None
        self._wake = trio.Event()
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._running = False
        self.state_changed = trio.Event()
        self.keyframe_requests = 0
        PEER_CONNECTION_MACHINE.build(self)

    # -- setup ---------------------------------------------------------------------------------

    def _ice_servers(self) -> list[RTCIceServer]:
        servers = [RTCIceServer(urls=url) for url in self.config.stun_servers]
        servers += [
            RTCIceServer(urls=t.url, username=t.username, credential=t.credential)
            for t in self.config.turn_servers
        ]
        return servers

    def _build(self) -> tuple[RTCPeerConnection, PeerTap]:
        """On the loop thread: the connection, its transceivers, data channel and tap."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers()))
        pc.addTransceiver(self.audio_track, direction="sendrecv")
        video = pc.addTransceiver(self.video_track, direction="sendrecv")
        mime = _CODEC_MIME.get(str(self.config.video_codec).upper())
        capabilities = RTCRtpSender.getCapabilities("video")
        if mime is not None and capabilities is not None:
            preferred = [c for c in capabilities.codecs if c.mimeType.lower() == mime.lower()]
            rest = [c for c in capabilities.codecs if c.mimeType.lower() == "video/rtx"]
            if preferred:
                video.setCodecPreferences(preferred + rest)
        pipe = self._pipe
        pc.on("connectionstatechange", pipe.handler(lambda: _State(pc.connectionState)))
        pc.on("datachannel", self._attach_channel)
        tap = tap_peer_connection(pc, pipe.send, impairments=self._impairments)
        return pc, tap

    def _attach_channel(self, channel: Any) -> None:
        """On the loop thread (aiortc's ``datachannel`` event or our own createDataChannel)."""
        self._channel = channel
        pipe = self._pipe
        channel.on("message", pipe.handler(lambda data: _Message(data, time.monotonic())))
        token = self.bridge.trio_token
        if channel.readyState == "open":
            token.run_sync_soon(self._channel_open.set)
        else:
            channel.on("open", lambda: token.run_sync_soon(self._channel_open.set))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection until :meth:`aclose` (or cancellation); start it with nursery.start."""
        if self._running or self._done.is_set():
            raise PeerError(f"peer {self.peer_id}: run() was already started")
        self._running = True
        try:
            with self._cancel:
                pc, self._tap = await self.bridge.call(self._build)
                self._pc = pc
                self.bridge.register(pc)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump)
                    nursery.start_soon(self._playout)
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown()
            self._done.set()

    # -- signaling -----------------------------------------------------------------------------

    def _pc_or_raise(self) -> RTCPeerConnection:
        if self._pc is None:
            raise PeerError(f"peer {self.peer_id}: not running (start run() first)")
        return self._pc

    async def offer(self) -> None:
        """Create the data channel and send an offer (aiortc gathers all candidates into it)."""
        pc = self._pc_or_raise()

        def make_channel() -> None:
            self._attach_channel(pc.createDataChannel("meshrtc"))

        await self.bridge.call(make_channel)
        self._set_state(self.start_gathering)

        async def local_offer() -> RTCSessionDescription:
            await pc.setLocalDescription(await pc.createOffer())
            return pc.localDescription

        desc = await self.bridge.run(local_offer)
        self._set_state(self.gathering_complete)
        await self._send_signal("offer", {"sdp": desc.sdp, "type": desc.type})

    async def handle_signal(self, method: str, params: dict[str, Any]) -> None:
        """Apply an incoming ``offer``, ``answer`` or ``candidate`` from the remote peer."""
        pc = self._pc_or_raise()
        if method == "offer":
            self._set_state(self.start_gathering)

            async def answer() -> RTCSessionDescription:
                await pc.setRemoteDescription(RTCSessionDescription(params["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                return pc.localDescription

            desc = await self.bridge.run(answer)
            self._set_state(self.gathering_complete)
            await self._send_signal("answer", {"sdp": desc.sdp, "type": desc.type})
        elif method == "answer":
            await self.bridge.run(
                pc.setRemoteDescription, RTCSessionDescription(params["sdp"], "answer")
            )
        elif method == "candidate":
            text = str(params.get("candidate") or "")
            if not text:
                return  # end of candidates: aiortc needs no marker
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            candidate.sdpMid = params.get("sdpMid")
            candidate.sdpMLineIndex = params.get("sdpMLineIndex")
            await self.bridge.run(pc.addIceCandidate, candidate)
        else:
            raise PeerError(f"peer {self.peer_id}: unknown signal {method!r}")

    def _set_state(self, trigger: Callable[[], bool]) -> None:
        before = self.state
        try:
            moved = trigger()
        except MachineError:
            # aiortc reports what already happened (e.g. "closed" after our own close): the
            # machine only follows transitions that are real from where it is.
            return
        if not moved:
            return
        log.debug("peer %s: %s → %s", self.peer_id, before, self.state)
        self.state_changed.set()
        self.state_changed = trio.Event()

    # -- sending -------------------------------------------------------------------------------

    def send_audio(self, samples: npt.NDArray[np.floating] | npt.NDArray[np.int16]) -> None:
        """Queue mono 48 kHz samples; the track paces them out at 20 ms per packet."""
        self.audio_track.put(samples)

    def send_video(self, picture: av.VideoFrame | npt.NDArray[np.uint8]) -> None:
        """Replace the picture the video track sends (repeated at its frame rate)."""
        self.video_track.put(picture)

    async def send_data(self, data: bytes | str) -> None:
        """Send one message on the data channel (waits until the channel is open)."""
        await self._channel_open.wait()
        channel = self._channel
        await self.bridge.call(channel.send, data)

    async def wait_state(self, *states: str) -> str:
        while self.state not in states:
            await self.state_changed.wait()
        return self.state

    # -- receiving -----------------------------------------------------------------------------

    def _deliver(self, item: ReceivedMedia) -> None:
        try:
            self._received_send.send_nowait(item)
        except trio.WouldBlock:
            self.received_dropped += 1

    async def _pump(self) -> None:
        """Events from the loop thread: state changes, data messages, packets into the buffers."""
        async for event in self._events:
            if isinstance(event, MediaFrame):
                self._buffers[event.frame_type].insert(event, time.monotonic())
                self._wake.set()
            elif isinstance(event, _State):
                self._on_connection_state(event.connection_state)
            elif isinstance(event, _Message):
                self._deliver(ReceivedData(self.peer_id, event.data, event.at))

    def _on_connection_state(self, state: str) -> None:
        if state == "connected":
            self._set_state(self.connected)
        elif state == "failed":
            self._set_state(self.fail)
        elif state == "closed":
            self._set_state(self.close)

    async def _playout(self) -> None:
        """Pop each buffer when it is due and decode what comes out."""
        while True:
            dues = [d for b in self._buffers.values() if (d := b.next_due()) is not None]
            with trio.move_on_after(max(0.0, min(dues) - time.monotonic()) if dues else 1.0):
                await self._wake.wait()
            self._wake = trio.Event()
            now = time.monotonic()
            for buffer in self._buffers.values():
                due = buffer.next_due()
                if due is not None and due <= now:
                    for item in buffer.pop(now):
                        await self._play(item, now)

    async def _play(self, item: PlayoutItem, now: float) -> None:
        tap = self._tap
        if tap is None:
            return
        if isinstance(item, AudioPacket):
            decoder = self._audio_decoder
            if decoder is None:
                codec = tap.codec(item.frame)
                if codec is None:
                    return
                decoder = self._audio_decoder = AudioDecoder(codec)
            pcm = decoder.decode(item.frame)
            if len(pcm):
                self._deliver(self._audio(pcm, now, concealed=False))
        elif isinstance(item, Gap):
            if item.frame_type is FrameType.AUDIO and self._audio_decoder is not None:
                pcm = self._audio_decoder.conceal(AudioDecoder.FRAME_SAMPLES * item.count)
                self._deliver(self._audio(pcm, now, concealed=True))
        elif isinstance(item, VideoFrame):
            video = self._video_decoder
            if video is None:
                codec = tap.codec(item.packets[0])
                if codec is None:
                    return
                video = self._video_decoder = VideoDecoder(codec)
            for picture in video.decode(item.packets):
                self._deliver(ReceivedVideo(self.peer_id, picture, None, now))
            if video.keyframe_needed:
                await self._request_keyframe()
        elif isinstance(item, KeyframeRequest):
            await self._request_keyframe()

    def _audio(self, pcm: npt.NDArray[np.float32], now: float, *, concealed: bool) -> ReceivedAudio:
        rate = self._audio_decoder.sample_rate if self._audio_decoder else 48_000
        # sender_time stays None until SyncManager maps RTP time to the sender's clock.
        return ReceivedAudio(self.peer_id, pcm, rate, pcm.shape[1], None, now, concealed)

    async def _request_keyframe(self) -> None:
        tap = self._tap
        if tap is not None:
            self.keyframe_requests += 1
            await self.bridge.run(tap.request_keyframe)

    @property
    def codecs(self) -> dict[FrameType, str]:
        """The negotiated codec (MIME type) of each kind this side has started decoding."""
        out: dict[FrameType, str] = {}
        if self._audio_decoder is not None:
            out[FrameType.AUDIO] = self._audio_decoder.codec.mimeType
        if self._video_decoder is not None:
            out[FrameType.VIDEO] = self._video_decoder.codec.mimeType
        return out

    # -- teardown ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection and end :meth:`run`; idempotent."""
        self._cancel.cancel()
        if self._running:
            await self._done.wait()  # run()'s own teardown does the work
        elif not self._done.is_set():
            await self._teardown()
            self._done.set()

    async def _teardown(self) -> None:
        pc, tap = self._pc, self._tap
        if tap is not None:
            with contextlib.suppress(Exception):
                await self.bridge.call(tap.close)
        if pc is not None:
            with trio.move_on_after(5), contextlib.suppress(Exception):
                await self.bridge.run(pc.close)
            self.bridge.unregister(pc)
        self._pipe.close()
        self._received_send.close()
        self._set_state(self.close)
