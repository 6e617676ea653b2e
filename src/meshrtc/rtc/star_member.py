"""A synthetic session member that connects to the transport alone and sends pre-encoded media.

The load generator (:mod:`meshrtc.loadgen`, docs/benchmarks.md) runs up to nine of these in one
process. Each must cost far less than what it makes the transport do, so:

* **Star, not mesh.** A member offers to the transport only (the newcomer offers, docs/signaling.md)
  and ignores the other members' ``peer.joined``; it has no PeerManager and no link to anyone else.
  Real users' PeerManagers are untouched.
* **Encoded once.** :func:`encode_tone_clip` / :func:`encode_video_clip` encode a gated tone and a
  moving 320x240 pattern once at start; :class:`ReplayTrack` hands aiortc the packets as
  ``av.Packet`` objects with a fresh pts (:class:`~meshrtc.loadgen.replay.Replay`). aiortc's
  ``RTCRtpSender`` packs a ``Packet`` with its encoder's public ``pack()`` instead of encoding it,
  numbers the RTP packets itself and computes no audio level for it.
* **Decode only what a check needs.** Received media is taken at the adapter's tap as RTP payloads
  on aiortc's own thread (no jitter buffer, no crossing to trio per packet): video is counted by
  marker bit (one per frame), audio packets are counted, sequence gaps counted as lost, and only a
  listener decodes Opus (the tone-onset latency probe); every member decodes its first packet
  back, which is what "connected" means here (the first decoded mix).

Everything that runs on the asyncio thread (tracks, tap callbacks) only touches this member's own
counters; the trio side reads them after the traffic (ints and floats, written by one thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import av
import numpy as np
import numpy.typing as npt
import trio
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from av.video.frame import PictureType

from meshrtc.errors import MeshRtcError
from meshrtc.loadgen.replay import EncodedClip, Handoff
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET
from meshrtc.rtc.aiortc_adapter import (
    PeerTap,
    TapEvent,
    apply_answer,
    codec_preferences,
    tap_peer_connection,
    use_host_addresses,
)
from meshrtc.rtc.bridge import Bridge
from meshrtc.rtc.opus import OpusDecoder
from meshrtc.rtc.vp9_codec import encoder_context
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.protocol import Answer, Offer, PeerErrorNotice

__all__ = [
    "AUDIO_RATE",
    "VIDEO_CLOCK",
    "MemberCounters",
    "ReplayTrack",
    "StarMember",
    "StarMemberError",
    "encode_tone_clip",
    "encode_video_clip",
    "silence_clip",
]

log = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_STEP = 960  # 20 ms
VIDEO_CLOCK = 90_000
#: A member this far behind its packets' due times skips ahead instead of sending a burst, as a
#: capture device would lose the samples (counted in ``skipped``).
MAX_BEHIND = 0.1


class StarMemberError(MeshRtcError):
    """The transport refused or failed a star member's connection."""


# --- clips (encoded once) ---------------------------------------------------------------------


def _opus_packets(chunks: list[npt.NDArray[np.float32]]) -> list[bytes]:
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for k, chunk in enumerate(chunks):
        pcm = np.clip(chunk * 32767.0, -32768, 32767).astype(np.int16)
        stereo = np.repeat(pcm, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = k * AUDIO_STEP
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        payloads, _ts = encoder.encode(frame)
        packets += payloads
    return packets


def encode_tone_clip(
    frequency: float, *, period: float = 1.0, on: float = 0.5, amplitude: float = 0.1
) -> EncodedClip:
    """``period`` seconds of Opus: a tone at ``frequency`` for the first ``on`` seconds, then
    silence; the tone's first packet is the clip's one onset (looped, one onset per period)."""
    frames = round(period * AUDIO_RATE / AUDIO_STEP)
    chunks = []
    for k in range(frames):
        if k * AUDIO_STEP < on * AUDIO_RATE:
            idx = np.arange(k * AUDIO_STEP, (k + 1) * AUDIO_STEP, dtype=np.float64)
            chunks.append(amplitude * np.sin(2 * np.pi * frequency * idx / AUDIO_RATE))
        else:
            chunks.append(np.zeros(AUDIO_STEP))
    packets = _opus_packets([c.astype(np.float32) for c in chunks])
    return EncodedClip(tuple(packets), AUDIO_STEP, AUDIO_RATE, onsets=frozenset({0}))


def silence_clip() -> EncodedClip:
    """One Opus packet of silence (what a member sends before the traffic starts)."""
    packets = _opus_packets([np.zeros(AUDIO_STEP, np.float32) for _ in range(5)])
    return EncodedClip((packets[-1],), AUDIO_STEP, AUDIO_RATE)


def _pattern(width: int, height: int, step: int) -> npt.NDArray[np.uint8]:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = 60
    rgb[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)
    x = (step * 4) % width
    rgb[:, x : x + 8, 2] = 255
    return rgb


def encode_video_clip(
    width: int = 320,
    height: int = 240,
    *,
    fps: float = 10.0,
    seconds: float = 2.0,
    keyframe_every: int = 10,
    bitrate: int = 300_000,
) -> EncodedClip:
    """A moving pattern in VP9 (meshrtc's encoder settings), a keyframe every ``keyframe_every``
    frames so a receiver that lost one waits at most that long."""
    codec = encoder_context(width, height, bitrate)
    step = round(VIDEO_CLOCK / fps)
    packets: list[bytes] = []
    keyframes: set[int] = set()
    count = max(1, round(seconds * fps))
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(_pattern(width, height, i), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i * step
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        frame.pict_type = PictureType.I if i % keyframe_every == 0 else PictureType.NONE
        for packet in codec.encode(frame):
            if packet.is_keyframe:
                keyframes.add(len(packets))
            packets.append(bytes(packet))
    packets.extend(bytes(packet) for packet in codec.encode(None))
    return EncodedClip(tuple(packets), step, VIDEO_CLOCK, keyframes=frozenset(keyframes))


# --- sending ----------------------------------------------------------------------------------


class ReplayTrack(MediaStreamTrack):
    """An outgoing track that returns pre-encoded ``av.Packet`` objects, paced in real time.

    Before :meth:`start` it replays ``idle`` (None: sends nothing); from :meth:`start` on, ``clip``,
    its pts continuing where the idle packets left off (:class:`~meshrtc.loadgen.replay.Handoff`:
    the packet handed out is chosen after the pacing sleep, so a start during that sleep cannot
    put the clip a frame off the pacing line). ``epoch`` fixes the phase of its 20 ms
    packets (members whose epochs differ by a fraction of a packet fall between each other's
    slots at the transport, as real users do). ``on_onset`` is called (asyncio thread)
    with ``time.monotonic()`` when a tone onset packet is handed to aiortc: the latency probe's
    capture time.
    """

    def __init__(
        self,
        kind: str,
        clip: EncodedClip,
        *,
        idle: EncodedClip | None = None,
        on_onset: Callable[[float], None] | None = None,
        epoch: float | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        #: Packets are due on ``epoch + k * interval`` (monotonic); None: from the first recv().
        self.epoch = epoch
        self.clip = clip
        self.idle = idle
        self.handoff = Handoff(clip, idle)
        self.on_onset = on_onset
        self._time_base = fractions.Fraction(1, clip.clock_rate)
        #: Read once: the Sender Reports follow one straight line (see :meth:`ntp_time`).
        self._wall_offset = time.time() - time.monotonic()
        self._started: asyncio.Event | None = None
        self._t0: float | None = None
        #: Packets skipped after a stall.
        self.skipped = 0
        #: The latest a packet was handed over after its due time (seconds): idle, live. The
        #: generator's own pacing jitter, which the transport's jitter buffer sees.
        self.late_max = [0.0, 0.0]

    def start(self, seconds: float | None = None) -> None:
        """Switch to the clip (call on the asyncio thread); after ``seconds`` of it, back to idle
        (or nothing), so a run has exactly the tone onsets its length promises."""
        self.handoff.start(None if seconds is None else round(seconds / self.clip.interval))
        if self._started is not None:
            self._started.set()

    @property
    def sent_live(self) -> int:
        """Packets of the clip handed to aiortc (skipped ones not included)."""
        return self.handoff.sent_live

    def ntp_time(self, pts: int) -> int:
        """NTP time of ``pts``: when it was due, on one straight line (the adapter puts it in the
        Sender Reports, as for meshrtc's own tracks). aiortc's own pair would be the send time of
        the last packet, off by the pacing's jitter, and the transport maps every frame with it."""
        t0 = time.monotonic() if self._t0 is None else self._t0
        unix = t0 + self._wall_offset + pts / self.clip.clock_rate + NTP_EPOCH_OFFSET
        fraction, seconds = math.modf(unix)
        return (int(seconds) << 32) | min(int(fraction * (1 << 32)), 0xFFFFFFFF)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        handoff = self.handoff
        if not handoff.sending:  # idle without an idle clip: wait for start(), then re-phase
            self._t0 = None
            self._started = asyncio.Event()
            await self._started.wait()
            self._started = None
        interval = self.clip.interval
        now = time.monotonic()
        if self._t0 is None:
            start = now
            if self.epoch is not None:  # the next instant of this track's phase
                start = self.epoch + math.ceil((now - self.epoch) / interval) * interval
            self._t0 = start - handoff.count * interval
        due = self._t0 + handoff.count * interval
        if due > now:
            await asyncio.sleep(due - now)
            late = time.monotonic() - due
        else:
            late = now - due
        if late > MAX_BEHIND:
            behind = int(late / interval)
            self.skipped += behind
            handoff.skip(behind)
        if self.readyState != "live":
            raise MediaStreamError
        # Chosen only now: a start() during the sleep above applies to this packet, on its place.
        item = handoff.next()
        if late > self.late_max[item.live]:
            self.late_max[item.live] = late
        packet = av.Packet(item.data)
        packet.pts = item.pts
        packet.time_base = self._time_base
        if item.keyframe:
            packet.is_keyframe = True
        if item.live and item.onset and self.on_onset is not None:
            self.on_onset(time.monotonic())
        return packet


# --- the member ---------------------------------------------------------------------------------


@attrs.define
class MemberCounters:
    """What one member got back (written on the asyncio thread, read after the traffic)."""

    audio_packets: int = 0
    #: Audio sequence numbers never seen (gaps between consecutive packets, modulo 2**16).
    audio_lost: int = 0
    video_frames: int = 0
    data_received: int = 0
    #: ``time.monotonic()`` of aiortc's ``connected`` and of the first decoded audio packet back.
    connected_at: float | None = None
    first_audio_at: float | None = None


#: ``listener(pcm, arrived)``: decoded audio (``(n, channels)`` float32) and its arrival time.
Listener = Callable[[npt.NDArray[np.float32], float], None]


class StarMember:
    """One member: signaling, one RTCPeerConnection to ``transport_id``, replay tracks, a tap.

    ``await nursery.start(member.run)`` returns once the offer is out; the connection completes
    in the background (watch :attr:`counters`). Cancelling ``run`` closes the connection (bounded)
    and leaves the session.
    """

    def __init__(
        self,
        peer_id: str,
        bridge: Bridge,
        *,
        signaling_url: str,
        transport_id: str,
        audio: EncodedClip,
        video: EncodedClip | None = None,
        idle_audio: EncodedClip | None = None,
        session_id: str = "default",
        stun_servers: tuple[str, ...] = (),
        host_addresses: tuple[str, ...] | None = ("127.0.0.1",),
        data: bool = True,
        listener: Listener | None = None,
        on_onset: Callable[[float], None] | None = None,
        on_data: Callable[[str | bytes], None] | None = None,
        close_timeout: float = 2.0,
        token: str | None = None,
        epoch: float | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.bridge = bridge
        self.signaling_url = signaling_url
        self.transport_id = transport_id
        self.session_id = session_id
        self.stun_servers = stun_servers
        self.host_addresses = host_addresses
        self.data = data
        self.listener = listener
        self.on_data = on_data
        self.close_timeout = close_timeout
        self.token = token
        self.counters = MemberCounters()
        self.audio_track = ReplayTrack(
            "audio", audio, idle=idle_audio, on_onset=on_onset, epoch=epoch
        )
        self.video_track = None if video is None else ReplayTrack("video", video, epoch=epoch)
        self.joined_at: float | None = None
        self._tap: PeerTap | None = None
        self._channel: RTCDataChannel | None = None
        self._decoder: OpusDecoder | None = None
        self._last_seq: int | None = None

    @property
    def capabilities(self) -> tuple[str, ...]:
        caps = ["audio"]
        if self.video_track is not None:
            caps.append("video")
        if self.data:
            caps.append("data")
        return tuple(caps)

    # --- trio side ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[StarMember] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.joined_at = time.monotonic()
        client = SignalingClient(
            self.signaling_url,
            self.peer_id,
            capabilities=self.capabilities,
            session_id=self.session_id,
            token=self.token,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            pc = await self.bridge.call(self._build)
            self.bridge.register(pc)
            try:
                offer = await self.bridge.run(_local_offer, pc)
                await client.offer(self.transport_id, offer)
                task_status.started(self)
                async for event in client.notifications:
                    await self._on_signal(pc, event)
            finally:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self.close_timeout),
                    contextlib.suppress(MeshRtcError),
                ):
                    await self.bridge.run(pc.close)
                self.bridge.unregister(pc)
                nursery.cancel_scope.cancel()

    async def _on_signal(self, pc: RTCPeerConnection, event: object) -> None:
        if isinstance(event, Answer) and event.from_peer == self.transport_id:
            await self.bridge.run(apply_answer, pc, event.sdp)
        elif isinstance(event, PeerErrorNotice) and event.from_peer == self.transport_id:
            raise StarMemberError(f"{self.peer_id}: the transport refused: {event.message}")
        elif isinstance(event, Offer):
            # Only the transport is a peer of ours; another member never offers (it is a star).
            log.info("%s: ignoring an offer from %s", self.peer_id, event.from_peer)

    def start_traffic(self, seconds: float | None = None) -> None:
        """Switch the tracks from idle to their clips for ``seconds`` (thread-safe)."""
        self.bridge.call_soon(self._start_on_loop, seconds)

    def _start_on_loop(self, seconds: float | None) -> None:
        self.audio_track.start(seconds)
        if self.video_track is not None:
            self.video_track.start(seconds)

    def send_data(self, text: str) -> bool:
        """Queue ``text`` on the data channel if it is open (thread-safe); false if it is not."""
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return False
        self.bridge.call_soon(_send_if_open, channel, text)
        return True

    # --- asyncio side ---------------------------------------------------------------------------

    def _build(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[RTCIceServer(urls=url) for url in self.stun_servers],
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        use_host_addresses(pc, self.host_addresses)
        audio = pc.addTransceiver(self.audio_track, direction="sendrecv")
        audio.setCodecPreferences(codec_preferences("audio", "audio/opus"))
        if self.video_track is not None:
            video = pc.addTransceiver(self.video_track, direction="sendrecv")
            video.setCodecPreferences(codec_preferences("video", "video/VP9"))
        if self.data:
            channel = pc.createDataChannel("meshrtc", ordered=True)
            channel.on("message", self._on_message)
            self._channel = channel

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected" and self.counters.connected_at is None:
                self.counters.connected_at = time.monotonic()

        self._tap = tap_peer_connection(pc, self._on_event)
        return pc

    def _on_message(self, message: str | bytes) -> None:
        self.counters.data_received += 1
        if self.on_data is not None:
            self.on_data(message)

    def _on_event(self, event: TapEvent) -> None:
        if not isinstance(event, MediaFrame):
            return
        counters = self.counters
        if event.frame_type is FrameType.VIDEO:
            if event.marker_bit:
                counters.video_frames += 1
            return
        counters.audio_packets += 1
        last, self._last_seq = self._last_seq, event.sequence_number
        if last is not None:
            gap = (event.sequence_number - last - 1) & 0xFFFF
            if gap < 0x8000:  # a reordered (older) packet is not a loss
                counters.audio_lost += gap
        if self.listener is None and counters.first_audio_at is not None:
            return
        pcm = self._decode(event)
        if pcm is None or not len(pcm):
            return
        if counters.first_audio_at is None:
            counters.first_audio_at = event.received_at
        if self.listener is not None:
            self.listener(pcm, event.received_at)

    def _decode(self, frame: MediaFrame) -> npt.NDArray[np.float32] | None:
        decoder = self._decoder
        if decoder is None:
            codec = None if self._tap is None else self._tap.codec(frame)
            if codec is None:
                return None
            decoder = self._decoder = OpusDecoder()
        return decoder.decode(frame.payload)


async def _local_offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    description: RTCSessionDescription = pc.localDescription
    return str(description.sdp)


def _send_if_open(channel: RTCDataChannel, text: Any) -> None:
    if channel.readyState == "open":
        channel.send(text)
