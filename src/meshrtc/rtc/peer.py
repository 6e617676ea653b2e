"""PeerConnection: one WebRTC connection to one remote peer (docs/peers.md).

aiortc keeps ICE, DTLS, SRTP, SCTP and RTCP; this class owns everything from the RTP packet on and
runs in trio. Each ``RTCPeerConnection`` it builds (a *link*) lives on the bridge's asyncio thread,
tapped by the adapter, so the asyncio side only forwards packets and events.

Why links: aiortc has no ICE restart, so a lost path is repaired by building a fresh
RTCPeerConnection and negotiating it again through signaling (docs/peers.md, "Reconnection"). The
PeerConnection is the durable entity (peer id, connection id, state, sync, quality,
``received``); links come and go underneath it. Who offers a rebuild follows docs/signaling.md: the
lower peer id offers; the other is polite and gives way when both offer at once.

Every negotiation and state decision (glare, rebuild, backoff, give-up, timers) is made by the
sans-IO :class:`~meshrtc.rtc.negotiation.Negotiation`; this class is its trio shell. One task,
:meth:`PeerConnection._supervise`, reads a single control channel (signals from the remote, aiortc
state changes, the Negotiation's next deadline), feeds each to the Negotiation and carries out the
actions it returns before reading the next, so there is no interleaving to reason about. Per
link, a :class:`~meshrtc.rtc.receiver.MediaReceiver` runs the receive path (ingest → SyncManager →
decode → keyframe policy) and hands what is due to :attr:`PeerConnection.received`; this class
only builds it and joins it with the link.

The state (the Negotiation's) mirrors aiortc's connection state, never ahead of it: Connected is
entered on aiortc's ``connected`` (never without a remote SDP: the transition is guarded), and left
the moment aiortc reports ``failed``/``closed``, a remote re-offer replaces the link, or the media
falls silent for ``media_timeout`` (aioice's own consent check takes ~30 s to notice a dead path).
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final, TypeAlias

import attrs
import av
import numpy as np
import numpy.typing as npt
import trio
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
)
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp

from meshrtc.config import DataChannelMode, IceTransportPolicy, TransportConfig
from meshrtc.errors import ConfigError, MeshRtcError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.nack import NackConfig
from meshrtc.media.negotiation import accepted_kinds
from meshrtc.media.opus_fec import FecDecision, FecPolicy, FecSetting
from meshrtc.media.quality import (
    OPUS_FEC_MIN_KBPS,
    BitrateAction,
    BitrateController,
    BitrateDecision,
    ConnectionQuality,
    ConnectionQualityMetrics,
)
from meshrtc.media.rtcp import SenderReport
from meshrtc.media.sync import SyncManager
from meshrtc.rtc.aiortc_adapter import (
    CandidatePairInfo,
    ImpairmentConfig,
    NegotiatedAnswer,
    PathControl,
    PeerTap,
    UnanswerableOfferError,
    answer_offer,
    apply_answer,
    codec_preferences,
    dtls_cipher,
    selected_candidate_pair,
    tap_peer_connection,
    use_host_addresses,
)
from meshrtc.rtc.bridge import Bridge, ToTrio
from meshrtc.rtc.events import ReceivedMedia
from meshrtc.rtc.negotiation import (
    PEER_CONNECTION_MACHINE,
    Action,
    AddCandidate,
    ApplyAnswer,
    BackOff,
    BuildLink,
    DropLink,
    FlushCandidates,
    GiveUp,
    Negotiation,
    PeerState,
    QueueCandidate,
    ResetMedia,
    SendAnswer,
    SendError,
    SendOffer,
)
from meshrtc.rtc.peer_stats import PeerStats
from meshrtc.rtc.receiver import ChannelMessage, MediaEvent, MediaReceiver, buffers_jitter_ms
from meshrtc.rtc.tracks import (
    DEFAULT_SEND_LATENCY,
    AudioOutputTrack,
    MediaClock,
    VideoOutputTrack,
)
from meshrtc.signaling.client import Backoff
from meshrtc.signaling.protocol import ErrorCode, lower_id_offers, validate_candidate

__all__ = [
    "PEER_CONNECTION_MACHINE",
    "REALTIME_SEND_QUEUE",
    "PeerConnection",
    "PeerError",
    "PeerOptions",
    "PeerStats",
    "SendSignal",
    "refusal_reason",
    "refusal_sdp",
]

log = logging.getLogger(__name__)

#: Session-level SDP attribute naming the negotiation an offer belongs to; the answer echoes it, so
#: a late answer to an abandoned attempt is recognised and ignored. Other endpoints ignore it.
ATTEMPT_ATTRIBUTE: Final = "x-meshrtc-attempt"
#: Session-level SDP attribute of an answer that refuses the connection (mesh full); its value is
#: a reason token, the ``s=`` line says it in words.
REFUSAL_ATTRIBUTE: Final = "x-meshrtc-refused"

_CODEC_MIME = {"H264": "video/H264", "VP8": "video/VP8", "VP9": "video/VP9"}
_MEDIA_KINDS = frozenset({"audio", "video", "data"})
#: ``PeerOptions.audio_send_queue`` for real-time producers (a pipeline, a microphone): 100 ms.
REALTIME_SEND_QUEUE = 0.1


class PeerError(MeshRtcError):
    """A PeerConnection cannot do what was asked (not running, media not negotiated, closed ...)."""


#: ``send_signal(method, params)``: ``offer``/``answer`` with ``{"sdp"}``, ``error`` with ``{"code",
#: "message"}`` (we cannot answer the remote's offer: ``peer.error``). Any async callable; the
#: PeerManager adapts it to the SignalingClient, tests may wire two PeerConnections directly.
SendSignal: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[object]]


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(attribute.name, value, "a number > 0")


@attrs.frozen(kw_only=True)
class PeerOptions:
    """Timing and policy of a PeerConnection (kept apart from TransportConfig: they tune one connection).

    ``reconnect.tries`` is how many rebuilt connections are tried before Failed; the delay before
    attempt ``n`` is ``reconnect.delay(n)`` (the first attempt after a loss starts at once). The
    polite side (higher id) waits ``polite_wait`` longer before offering itself, so the lower id's
    offer normally arrives first and there is no glare.
    """

    #: From the first offer or answer until Connected.
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: From a rebuilt connection's offer or answer until Connected.
    reconnect_timeout: float = attrs.field(default=2.5, validator=_positive)
    #: Connected with audio or video negotiated, but no RTP or RTCP for this long: the path is lost.
    #: A link that carries no media yet is heard from only through RTCP, which aiortc sends every
    #: 0.5-1.5 s: keep this above 1.5 s unless media always flows.
    media_timeout: float = attrs.field(default=3.0, validator=_positive)
    reconnect: Backoff = attrs.field(
        factory=lambda: Backoff(tries=8, initial=0.25, factor=2.0, maximum=1.0, jitter=0.25)
    )
    polite_wait: float = attrs.field(default=1.0, validator=_positive)
    #: Metrics refresh and bitrate decisions (kept within 1-5 s).
    quality_interval: float = attrs.field(default=2.0, validator=_positive)
    #: How often the remote's new loss reports on our audio are read for the Opus FEC decision
    #: (media/opus_fec.py): they arrive about once a second, and FEC should follow the first
    #: lossy one without waiting for the next bitrate decision (each read is a look at a short
    #: list: bench/voice_loss.py scores 10 % loss about 0.2 PESQ lower when FEC starts 0.5 s later).
    fec_interval: float = attrs.field(default=0.2, validator=_positive)
    #: Ask the sender again for lost audio packets while a resend can still play (media/nack.py:
    #: only on an RTT up to ``max_rtt``, 30 ms by default, and only for packets whose playout is
    #: more than 1.5 RTT + 5 ms away, and only when the answer lists ``nack`` for Opus: our
    #: offers do, Chromium's answers drop it). None turns it off.
    audio_nack: NackConfig | None = attrs.Factory(NackConfig)
    #: Loss and RTT must stay low this long before the bitrate is probed upwards.
    probe_after: float = attrs.field(default=5.0, validator=_positive)
    #: Opus bitrate range for the controller (kb/s); it starts at the top, 144 kb/s to libopus:
    #: the clean quality aiortc's FFmpeg encoder had at its 96 (aiortc_adapter.OPUS_DEFAULT_BITRATE).
    audio_kbps: tuple[float, float] = (16.0, 144.0)
    video_fps: float = attrs.field(default=30.0, validator=_positive)
    #: Most audio :meth:`PeerConnection.send_audio` keeps queued ahead of the sender (seconds);
    #: beyond it the oldest is dropped (counted on the track). The default lets a caller hand over a
    #: clip (a file, TTS) in one call; a real-time producer wants :data:`REALTIME_SEND_QUEUE`, so a
    #: stall it catches up on in a burst does not add its length to every later frame (the
    #: transport uses that).
    audio_send_queue: float = attrs.field(default=2.0, validator=_positive)
    #: From a frame's capture time (the ``timestamp`` given to :meth:`PeerConnection.send_audio` /
    #: :meth:`~PeerConnection.send_video`, else when it was handed over) to its deadline: a
    #: tolerance, not a delay (a frame goes out once handed over). Audio handed over later loses
    #: its slot to silence and is dropped, counted on its track (``late``); see rtc/tracks.py.
    send_latency: float = attrs.field(default=DEFAULT_SEND_LATENCY, validator=_positive)
    #: Items :attr:`PeerConnection.received` holds before newer ones are dropped (and counted).
    max_received: int = attrs.field(default=1000, validator=_positive)
    #: How long :meth:`PeerConnection.send_data` waits for an open data channel.
    data_open_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Bound on closing one RTCPeerConnection.
    close_timeout: float = attrs.field(default=2.0, validator=_positive)


# --- control messages (all handled by the supervisor task) -----------------------------------


@attrs.frozen
class _Signal:
    method: str
    params: Mapping[str, Any]


@attrs.frozen
class _StartOffer:
    pass


@attrs.frozen
class _PcState:
    generation: int
    #: aiortc's ``connectionState`` (a string of aiortc's, not one of our states).
    connection_state: str


@attrs.frozen
class _ChannelReady:
    generation: int
    channel: RTCDataChannel


_Control: TypeAlias = _Signal | _StartOffer | _PcState | _ChannelReady

#: aiortc's connection states that are events for the Negotiation (the others are steps within).
_LINK_EVENTS: Final = {"connected": "up", "failed": "down", "closed": "down"}


_MediaEvent: TypeAlias = MediaEvent


@attrs.define(eq=False)
class _Link:
    """One RTCPeerConnection and what belongs to it alone."""

    generation: int
    offerer: bool
    pc: RTCPeerConnection
    tap: PeerTap
    media_pipe: ToTrio[_MediaEvent]
    media: trio.MemoryReceiveChannel[_MediaEvent]
    audio_track: AudioOutputTrack | None
    video_track: VideoOutputTrack | None
    started_at: float
    #: The link's receive path: ingest, sync, decode, keyframe policy.
    receiver: MediaReceiver
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    pending_candidates: list[RTCIceCandidate | None] = attrs.Factory(list)
    #: Media kinds the negotiation accepted (a section the answer rejected carries nothing).
    kinds: frozenset[str] = frozenset()
    channel: RTCDataChannel | None = None
    controllers: dict[FrameType, BitrateController] = attrs.Factory(dict)
    #: Opus in-band FEC: the policy fed with the remote's reports on our audio, the newest
    #: report it has read, and what the encoder was last told.
    fec: FecPolicy = attrs.Factory(FecPolicy)
    fec_read_until: float | None = None
    audio_ssrc: int | None = None
    fec_applied: FecSetting = attrs.Factory(FecSetting)

    @property
    def last_activity(self) -> float:
        """Newest arrival of anything from the remote (the media timeout reads it)."""
        return self.receiver.last_activity

    @last_activity.setter
    def last_activity(self, value: float) -> None:
        self.receiver.last_activity = value


# --- SDP helpers --------------------------------------------------------------------------------


def _eol(sdp: str) -> str:
    return "\r\n" if "\r\n" in sdp else "\n"


def _with_session_attribute(sdp: str, name: str, value: str) -> str:
    """``sdp`` with ``a=name:value`` added at session level (before the first ``m=`` line)."""
    eol = _eol(sdp)
    lines = sdp.split(eol)
    at = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    lines.insert(at, f"a={name}:{value}")
    return eol.join(lines)


def _session_attribute(sdp: str, name: str) -> str | None:
    prefix = f"a={name}:"
    for line in sdp.splitlines():
        if line.startswith("m="):
            return None
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def refusal_sdp(reason: str, token: str = "mesh-full") -> str:
    """An SDP answer that refuses a connection: every section rejected (port 0), plus a reason.

    Sent as ``peer.answer`` to a peer we will not connect to. A meshrtc peer reads the
    ``a=x-meshrtc-refused`` attribute and fails its connection with the reason; any other
    endpoint sees an answer that rejects all media and cannot connect either.
    """
    words = " ".join(reason.split()) or "refused"
    return (
        "v=0\r\n"
        "o=- 0 0 IN IP4 0.0.0.0\r\n"
        f"s=meshrtc refused: {words}\r\n"
        "t=0 0\r\n"
        f"a={REFUSAL_ATTRIBUTE}:{token}\r\n"
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    )


def refusal_reason(sdp: str) -> str | None:
    """The reason of a refusal made by :func:`refusal_sdp`, None for an ordinary SDP."""
    if _session_attribute(sdp, REFUSAL_ATTRIBUTE) is None:
        return None
    for line in sdp.splitlines():
        if line.startswith("s=meshrtc refused: "):
            return line.removeprefix("s=meshrtc refused: ").strip()
    return _session_attribute(sdp, REFUSAL_ATTRIBUTE)


def _sdp_candidates(sdp: str) -> list[str]:
    """The valid ``candidate:...`` lines of an SDP (invalid ones are logged and left out)."""
    out: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            candidate = line.removeprefix("a=")
            try:
                out.append(validate_candidate(candidate))
            except ValueError as err:
                log.warning("ignoring an invalid candidate in an SDP (%s): %.80s", err, line)
    return out


# --- loop-thread coroutines ------------------------------------------------------------------


async def _local_offer(pc: RTCPeerConnection, path: PathControl) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    path.attach(pc)  # sockets exist now; checks cannot start before the answer
    sdp: str = pc.localDescription.sdp
    return sdp


async def _local_answer(
    pc: RTCPeerConnection,
    offer: str,
    path: PathControl,
    preferences: Mapping[str, list[RTCRtpCodecCapability]],
) -> NegotiatedAnswer:
    # Sections we cannot use are rejected (port 0), the rest answered (docs/codecs.md).
    answer = await answer_offer(pc, offer, preferences)
    path.attach(pc)  # before the connect task aiortc just scheduled gets to run
    return answer


async def _apply_answer(pc: RTCPeerConnection, answer: str) -> tuple[int, ...]:
    return await apply_answer(pc, answer)


class PeerConnection:
    """One remote peer: negotiation, reconnection, receive and send paths, quality (docs/peers.md).

    ``peer_id`` names the *remote* peer; ``local_id`` (default ``config.peer_id``) is ours, for the
    offer rule. ``media`` is what to negotiate (``audio``/``video``/``data``; data also needs
    ``config.enable_data_channel``); at least one must remain. ``send_media`` / ``receive_media``
    (default True) say whether audio and video go to / are taken from the remote: False when its
    token lacks ``subscribe`` / ``publish``. Our media sections then offer or answer recvonly /
    sendonly, and RTP that arrives anyway is dropped on arrival (the remote's SDP is never
    trusted for it); with neither, no audio or video is negotiated.

    Use: ``await nursery.start(peer.run)``; on the offering side ``await peer.offer()``; feed every
    signal from the remote to :meth:`handle_signal`; read :attr:`received`; send with
    :meth:`send_audio` / :meth:`send_video` / :meth:`send_data`; :meth:`aclose` when done. ``run``
    returns when the connection is closed or has Failed (see :attr:`failure_reason`).
    """

    def __init__(
        self,
        peer_id: str,
        bridge: Bridge,
        config: TransportConfig,
        send_signal: SendSignal,
        *,
        local_id: str | None = None,
        media: Collection[str] = ("audio", "video", "data"),
        options: PeerOptions | None = None,
        impairments: dict[FrameType, ImpairmentConfig] | None = None,
        on_state_change: Callable[[PeerConnection, str], None] | None = None,
        rand: Callable[[], float] = random.random,
        send_media: bool = True,
        receive_media: bool = True,
    ) -> None:
        unknown = set(media) - _MEDIA_KINDS
        if not (send_media or receive_media):
            media = set(media) - {"audio", "video"}
        if unknown:
            raise PeerError(f"unknown media {sorted(unknown)}; use audio, video, data")
        self.peer_id = peer_id
        self.local_id = config.peer_id if local_id is None else local_id
        if self.local_id == peer_id:
            raise PeerError(f"a peer does not connect to itself ({peer_id!r})")
        self.bridge = bridge
        self.config = config
        self.options = options or PeerOptions()
        self.audio = "audio" in media
        self.video = "video" in media
        self.data = "data" in media and config.enable_data_channel
        #: Audio and video go to the remote (it may subscribe) / are taken from it (it may publish).
        self.send_media = send_media
        self.receive_media = receive_media
        if not (self.audio or self.video or self.data):
            raise PeerError(
                f"peer {peer_id}: needs at least one of audio, video or a data channel "
                f"(media={sorted(media)}, enable_data_channel={config.enable_data_channel})"
            )
        #: Unique per PeerConnection object; its links are ``<connection_id>.<generation>``.
        self.connection_id = f"{self.local_id}-{peer_id}-{secrets.token_hex(4)}"
        self.created_at = time.monotonic()
        self.local_sdp: str | None = None
        self.remote_sdp: str | None = None
        self.local_candidates: list[str] = []
        self.remote_candidates: list[str] = []
        #: (monotonic time, state) of every state entered, starting with New.
        self.history: list[tuple[float, PeerState]] = [(self.created_at, PeerState.New)]
        self.stats = PeerStats()
        #: The latest Sender Report per kind on the current link.
        self.sender_reports: dict[FrameType, SenderReport] = {}
        #: Bitrate decisions that changed a target: (kind, decision, encoder target afterwards).
        self.bitrate_decisions: list[tuple[FrameType, BitrateDecision, int | None]] = []
        #: FEC decisions the audio encoder applied (media/opus_fec.py; docs/codecs.md).
        self.fec_decisions: list[FecDecision] = []
        #: Test-only network hook on every RTCPeerConnection this peer builds.
        self.path_control = PathControl()
        self.sync_manager = SyncManager(
            peer_id,
            jitter_buffer_size_ms=float(config.jitter_buffer_size_ms),
            is_keyframe=self._is_keyframe,
        )
        sync = self.sync_manager
        self.quality = ConnectionQuality(peer_id, jitter_ms=lambda: buffers_jitter_ms(sync))
        self._metrics: ConnectionQualityMetrics | None = None
        self._send_signal = send_signal
        self._impairments = impairments
        self._on_state_change = on_state_change
        self._rand = rand
        self._received_send, self.received = trio.open_memory_channel[ReceivedMedia](
            self.options.max_received
        )
        self._control_send, self._control = trio.open_memory_channel[_Control](math.inf)
        self._control_pipe: ToTrio[_Control] = bridge.to_trio(self._control_send)
        self._link: _Link | None = None
        self._last_picture: av.VideoFrame | npt.NDArray[np.uint8] | None = None
        #: The load-shedding plan of the outgoing video (:meth:`set_video_plan`), kept for the
        #: tracks of rebuilt links.
        self._video_plan: dict[str, Any] = {}
        #: Whether the remote's video is decoded (:meth:`set_video_decode`), kept for rebuilt links.
        self._decode_video = True
        #: Audio was sent once: a rebuilt link's track starts at once (silence until fed).
        self._audio_started = False
        self._nursery: trio.Nursery | None = None
        self._cancel = trio.CancelScope()
        self._started = False
        self._done = trio.Event()
        self._changed = trio.Event()
        backoff = self.options.reconnect
        #: Every negotiation, glare, rebuild, backoff and give-up decision (rtc/negotiation.py).
        self._negotiation = Negotiation(
            peer_id=peer_id,
            connection_id=self.connection_id,
            polite=self.polite,
            connect_timeout=self.options.connect_timeout,
            reconnect_timeout=self.options.reconnect_timeout,
            media_timeout=self.options.media_timeout,
            polite_wait=self.options.polite_wait,
            tries=backoff.tries,
            backoff_delay=lambda attempt: backoff.delay(attempt, self._rand()),
            on_state_change=self._after_state_change,
        )

    # --- state (the Negotiation's) ----------------------------------------------------------------

    @property
    def state(self) -> PeerState:
        return self._negotiation.state

    @property
    def is_connected(self) -> bool:
        """Connected now (asked of the machine, not compared by name)."""
        return self._negotiation.is_connected

    @property
    def is_live(self) -> bool:
        """Not Failed or Closed (it may still negotiate)."""
        return self._negotiation.live

    @property
    def has_link(self) -> bool:
        """Connected or Reconnecting: its media link is up or repairing itself."""
        return self._negotiation.has_link

    @property
    def generation(self) -> int:
        """The newest link's number (1 for the first; each rebuild adds one)."""
        return self._negotiation.generation

    @property
    def audio_sent(self) -> tuple[int, int, int, int]:
        """The current link's outgoing audio so far: 20 ms frames handed to aiortc, how many of
        those were silence (nothing queued for the slot), frames dropped because their slot had
        gone out (late), and frames dropped in all (late, or evicted from a full queue);
        (0, 0, 0, 0) without one. Counts the track keeps anyway; a rebuilt link starts from zero
        (``bench/soak.py`` reads it)."""
        link = self._link
        track = None if link is None else link.audio_track
        if track is None:
            return (0, 0, 0, 0)
        return (track.sent, track.silent, track.late, track.dropped)

    @property
    def connected_at(self) -> float | None:
        return self._negotiation.connected_at

    @property
    def failure_reason(self) -> str | None:
        return self._negotiation.failure_reason

    @property
    def refused(self) -> bool:
        """True when the remote refused us (its mesh is full): Failed for good, do not retry."""
        return self._negotiation.refused

    @property
    def last_loss_reason(self) -> str | None:
        """Why the last connected link was given up (media silent, aiortc failed, re-offered)."""
        return self._negotiation.last_loss_reason

    def _after_state_change(self, state: PeerState) -> None:
        self._absorb_statistics()  # the callback below reads ``stats.reconnects``
        self.history.append((time.monotonic(), state))
        log.info("peer %s ↔ %s: %s", self.local_id, self.peer_id, state)
        self._notify()
        if self._on_state_change is not None:
            self._on_state_change(self, state)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_state(self, *states: str) -> PeerState:
        """Wait until the state is one of ``states`` (bound it with ``trio.fail_after``)."""
        while self.state not in states:
            await self._changed.wait()
        return self.state

    @property
    def ice_candidates(self) -> list[str]:
        """Validated candidates: ours (from our SDP; aiortc does not trickle) then the remote's."""
        return [*self.local_candidates, *self.remote_candidates]

    @property
    def polite(self) -> bool:
        """True when the remote's id is lower: it offers rebuilds, we give way on glare."""
        return not lower_id_offers(self.local_id, self.peer_id)

    @property
    def codecs(self) -> dict[FrameType, str]:
        """The negotiated codec (MIME type) of each kind the current link has started decoding."""
        link = self._link
        return {} if link is None else link.receiver.codecs

    def get_metrics(self) -> ConnectionQualityMetrics:
        """The latest quality snapshot (refreshed every ``quality_interval``; computed if none yet)."""
        if self._metrics is None:
            return self.quality.snapshot(time.monotonic())
        return self._metrics

    async def candidate_pair(self) -> CandidatePairInfo | None:
        """The ICE candidate pair the current connection uses; None before ICE selected one.

        Shows whether media is direct (host/srflx) or relayed by the TURN server (relay).
        """
        link = self._link
        if link is None:
            return None
        return await self.bridge.call(selected_candidate_pair, link.pc)

    async def dtls_cipher(self) -> str | None:
        """The DTLS cipher suite of the current connection, None before the handshake.

        ``ECDHE-RSA-…`` with a peer whose certificate is RSA (it was DTLS server), else
        ``ECDHE-ECDSA-…`` (docs/codecs.md, interop).
        """
        link = self._link
        if link is None:
            return None
        return await self.bridge.call(dtls_cipher, link.pc)

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[PeerConnection] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection until it is closed, cancelled or Failed."""
        if self._started or self._negotiation.closed:
            raise PeerError(f"peer {self.peer_id}: run() starts once, and not after aclose()")
        self._started = True
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._quality_loop)
                    nursery.start_soon(self._fec_loop)
                    task_status.started(self)
                    await self._supervise()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown()
            self._done.set()

    async def aclose(self) -> None:
        """Close the connection and end :meth:`run` (idempotent; bounded in time)."""
        self._cancel.cancel()
        if not self._started:
            await self._teardown()
            self._done.set()
        else:
            await self._done.wait()

    async def _teardown(self) -> None:
        await self._drop_link()
        self._control_pipe.close()
        self._control_send.close()
        self._received_send.close()
        self._negotiation.shutdown()

    async def offer(self) -> None:
        """Make this side the offerer of the first negotiation (the newcomer, docs/signaling.md)."""
        if self._nursery is None or self._done.is_set():
            raise PeerError(f"peer {self.peer_id}: not running (start run() first)")
        self._control_send.send_nowait(_StartOffer())

    async def handle_signal(self, method: str, params: Mapping[str, Any]) -> None:
        """Queue an ``offer``, ``answer``, ``candidate`` or ``error`` from the remote (never blocks).

        ``offer``/``answer`` take ``{"sdp"}``; ``candidate`` takes ``{"candidate", "sdpMid",
        "sdpMLineIndex"}`` (an empty candidate ends the remote's candidates); ``error`` takes
        ``{"code", "message"}`` (the remote cannot answer our offer: we fail). Signals that arrive
        before :meth:`run` wait for it; after the connection closed they are dropped.
        """
        if method not in ("offer", "answer", "candidate", "error"):
            raise PeerError(f"peer {self.peer_id}: unknown signal {method!r}")
        try:
            self._control_send.send_nowait(_Signal(method, dict(params)))
        except trio.ClosedResourceError:
            log.debug("peer %s: %s after close, dropped", self.peer_id, method)

    # --- the supervisor: events to the Negotiation, its actions carried out --------------------

    async def _supervise(self) -> None:
        negotiation = self._negotiation
        while negotiation.live:
            deadline = negotiation.next_deadline(self._activity())
            message: _Control | None = None
            wait = math.inf if deadline is None else deadline - time.monotonic()
            if wait > 0:
                with trio.move_on_after(wait):
                    message = await self._control.receive()
            if message is None:
                await self._carry_out(negotiation.timer(time.monotonic(), self._activity()))
            else:
                await self._on_control(message)

    def _activity(self) -> float | None:
        """The current link's newest arrival from the remote (the media timeout counts from it)."""
        link = self._link
        return None if link is None else link.last_activity

    async def _on_control(self, message: _Control) -> None:
        negotiation = self._negotiation
        if isinstance(message, _Signal):
            sdp = str(message.params.get("sdp", ""))
            if message.method == "offer":
                await self._carry_out(negotiation.remote_offer(time.monotonic()), sdp=sdp)
            elif message.method == "answer":
                tag = _session_attribute(sdp, ATTEMPT_ATTRIBUTE)
                await self._carry_out(negotiation.remote_answer(tag, refusal_reason(sdp)), sdp=sdp)
            elif message.method == "error":
                message_text = str(message.params.get("message", ""))
                await self._carry_out(negotiation.remote_error(message_text))
            else:
                await self._on_candidate(message.params)
        elif isinstance(message, _StartOffer):
            await self._carry_out(negotiation.want_offer())
        elif isinstance(message, _PcState):
            link_event = _LINK_EVENTS.get(message.connection_state)
            now = time.monotonic()
            if link_event == "up":
                await self._carry_out(negotiation.link_up(message.generation, now))
            elif link_event == "down":
                why = message.connection_state
                await self._carry_out(negotiation.link_down(message.generation, now, why))
        else:
            link = self._link
            if link is not None and link.generation == message.generation:
                link.channel = message.channel
                self._notify()

    async def _carry_out(
        self,
        actions: list[Action],
        *,
        sdp: str = "",
        candidate: RTCIceCandidate | None = None,
    ) -> None:
        """Do what the Negotiation decided, in order. ``sdp`` is the remote's offer or answer the
        actions are about, ``candidate`` the remote candidate."""
        self._absorb_statistics()
        for action in actions:
            link = self._link
            if isinstance(action, BuildLink):
                if action.offerer:
                    await self._build_offer(action.generation)
                else:
                    await self._build_answer(action.generation, sdp)
            elif isinstance(action, SendOffer):
                offer = self.local_sdp or ""
                sdp_out = _with_session_attribute(offer, ATTEMPT_ATTRIBUTE, action.tag)
                await self._signal("offer", {"sdp": sdp_out})
            elif isinstance(action, SendAnswer):
                answer = self.local_sdp or ""
                tag = _session_attribute(sdp, ATTEMPT_ATTRIBUTE)
                if tag is not None:
                    answer = _with_session_attribute(answer, ATTEMPT_ATTRIBUTE, tag)
                await self._signal("answer", {"sdp": answer})
            elif isinstance(action, SendError):
                code = int(ErrorCode.UNANSWERABLE_OFFER)
                await self._signal("error", {"code": code, "message": action.message})
            elif isinstance(action, ApplyAnswer) and link is not None:
                await self._apply_answer(link, sdp)
            elif isinstance(action, AddCandidate) and link is not None:
                await self._add_candidate(link, candidate)
            elif isinstance(action, QueueCandidate) and link is not None:
                link.pending_candidates.append(candidate)
            elif isinstance(action, FlushCandidates) and link is not None:
                await self._flush_candidates(link)
            elif isinstance(action, ResetMedia):
                self.sync_manager.reset()
            elif isinstance(action, DropLink):
                await self._drop_link()
                # The decision may be to answer the remote's offer (it renegotiated): pass it on.
                after = self._negotiation.link_dropped(time.monotonic())
                await self._carry_out(after, sdp=sdp, candidate=candidate)
            elif isinstance(action, BackOff):
                log.debug("peer %s: next attempt at %.3f", self.peer_id, action.until)
            elif isinstance(action, GiveUp):
                log.debug("peer %s: gave up (refused: %s)", self.peer_id, action.refused)
        self._absorb_statistics()

    def _absorb_statistics(self) -> None:
        """The Negotiation's counters into :attr:`stats` (read by the manager on state changes)."""
        counts = self._negotiation.statistics()
        self.stats.ignored_offers = counts.ignored_offers
        self.stats.stale_answers = counts.stale_answers
        self.stats.refused_offers = counts.refused_offers
        self.stats.reconnects = counts.reconnects

    async def _build_offer(self, generation: int) -> None:
        """A fresh offering link, its offer created; the Negotiation then sends it."""
        negotiation = self._negotiation
        await self._drop_link()
        try:
            link = await self._new_link(generation, offerer=True)
        except MeshRtcError as err:  # the bridge is closing
            await self._carry_out(negotiation.build_failed(str(err)))
            return
        negotiation.link_built(generation, link.started_at)
        try:
            sdp = await self.bridge.run(_local_offer, link.pc, self.path_control)
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types; the link fails either way
            reason = f"creating an offer failed: {exc!r}"
            await self._carry_out(negotiation.link_failed(time.monotonic(), reason))
            return
        self._set_local(sdp)
        await self._carry_out(negotiation.offer_ready(time.monotonic()))
        await self._fail_without_candidates()

    async def _build_answer(self, generation: int, offer: str) -> None:
        """A fresh answering link with ``offer`` applied and answered; the Negotiation sends it."""
        negotiation = self._negotiation
        await self._drop_link()
        try:
            link = await self._new_link(generation, offerer=False)
        except MeshRtcError as err:  # the bridge is closing
            await self._carry_out(negotiation.build_failed(str(err)))
            return
        negotiation.link_built(generation, link.started_at)
        try:
            negotiated = await self.bridge.run(
                _local_answer, link.pc, offer, self.path_control, self._codec_preferences()
            )
        except UnanswerableOfferError as exc:
            await self._carry_out(negotiation.offer_unanswerable(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - an aiortc failure past the offer itself
            reason = f"answering the offer failed: {exc!r}"
            await self._carry_out(negotiation.offer_unanswerable(reason))
            return
        answer = negotiated.sdp
        link.kinds = accepted_kinds(answer)
        self._set_remote(offer)
        self._set_local(answer)
        media = bool(link.kinds & {"audio", "video"})
        await self._carry_out(negotiation.answer_ready(time.monotonic(), media=media), sdp=offer)
        await self._fail_without_candidates()

    async def _apply_answer(self, link: _Link, sdp: str) -> None:
        try:
            rejected = await self.bridge.run(_apply_answer, link.pc, sdp)
        except Exception as exc:  # noqa: BLE001 - bad SDP or aiortc refusing it; the link fails
            reason = f"applying the answer failed: {exc!r}"
            await self._carry_out(self._negotiation.link_failed(time.monotonic(), reason))
            return
        if rejected:
            log.info("peer %s: the answer rejects sections %s", self.peer_id, list(rejected))
        link.kinds = accepted_kinds(sdp)
        self._set_remote(sdp)
        media = bool(link.kinds & {"audio", "video"})
        await self._carry_out(self._negotiation.answer_applied(media=media))

    async def _on_candidate(self, params: Mapping[str, Any]) -> None:
        text = str(params.get("candidate") or "")
        candidate: RTCIceCandidate | None = None
        if text:
            try:
                text = validate_candidate(text).removeprefix("a=")
                candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            except ValueError as err:
                self.stats.invalid_candidates += 1
                if self.stats.invalid_candidates == 1:  # once: a stream of them floods nothing
                    log.debug(
                        "peer %s: refusing candidate %.80r: %s (counted in invalid_candidates, "
                        "not logged again)",
                        self.peer_id,
                        text,
                        err,
                    )
                return
            candidate.sdpMid = params.get("sdpMid")
            index = params.get("sdpMLineIndex")
            candidate.sdpMLineIndex = 0 if index is None and candidate.sdpMid is None else index
            self.remote_candidates.append(text)
        await self._carry_out(self._negotiation.remote_candidate(), candidate=candidate)

    async def _flush_candidates(self, link: _Link) -> None:
        pending, link.pending_candidates = link.pending_candidates, []
        for candidate in pending:
            await self._add_candidate(link, candidate)

    async def _add_candidate(self, link: _Link, candidate: RTCIceCandidate | None) -> None:
        try:
            await self.bridge.run(link.pc.addIceCandidate, candidate)
        except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the connection
            log.warning("peer %s: aiortc refused a candidate: %r", self.peer_id, exc)

    async def _fail_without_candidates(self) -> None:
        """A link that gathered no candidate can never connect: fail it now, saying why, instead
        of at its deadline. Only after signaling, so the remote's connection moves on too."""
        if not self.local_candidates:
            reason = self._no_candidates_reason()
            await self._carry_out(self._negotiation.link_failed(time.monotonic(), reason))

    def _no_candidates_reason(self) -> str:
        if self.config.ice_transport_policy is IceTransportPolicy.RELAY:
            if not self.config.turn_servers:
                return "no relay candidate: ice_transport_policy is relay but no TURN server is set"
            # aiortc uses the first TURN server only and does not say why an allocation failed.
            return (
                f"no relay candidate: {self.config.turn_servers[0].url} gave no TURN allocation "
                "(wrong username/credential, or the server is unreachable)"
            )
        return "no local ICE candidate (no usable host address)"

    def _set_local(self, sdp: str) -> None:
        self.local_sdp = sdp
        self.local_candidates = _sdp_candidates(sdp)

    def _set_remote(self, sdp: str) -> None:
        self.remote_sdp = sdp
        self.remote_candidates = _sdp_candidates(sdp)

    async def _signal(self, method: str, params: dict[str, Any]) -> None:
        try:
            await self._send_signal(method, params)
        except MeshRtcError as err:
            # The attempt's deadline turns this into a failed attempt (and a retry).
            log.warning("peer %s: sending %s failed: %s", self.peer_id, method, err)

    # --- links ----------------------------------------------------------------------------------

    async def _new_link(self, generation: int, *, offerer: bool) -> _Link:
        assert self._nursery is not None
        if generation > 1:
            self.sync_manager.reset()
        self.sender_reports.clear()
        media_pipe: ToTrio[_MediaEvent]
        media_pipe, media = self.bridge.open_channel(4096)
        # One media clock for both tracks: their RTP timestamps and Sender Reports keep the
        # capture-time relation of what is sent (rtc/tracks.py).
        media_clock = MediaClock(latency=self.options.send_latency)
        audio_track = (
            AudioOutputTrack(
                channels=2, max_queued=self.options.audio_send_queue, clock=media_clock
            )
            if self.audio and self.send_media
            else None
        )
        video_track = (
            VideoOutputTrack(fps=self.options.video_fps, clock=media_clock)
            if self.video and self.send_media
            else None
        )
        if video_track is not None and self._video_plan:
            video_track.set_plan(**self._video_plan)
        if video_track is not None and self._last_picture is not None:
            video_track.put(self._last_picture)
        if audio_track is not None and self._audio_started:
            audio_track.start()
        pc, tap = await self.bridge.call(
            self._build, generation, offerer, media_pipe, audio_track, video_track
        )
        self.bridge.register(pc)
        now = time.monotonic()
        receiver = MediaReceiver(
            self.peer_id,
            tap=tap,
            bridge=self.bridge,
            sync=self.sync_manager,
            quality=self.quality,
            stats=self.stats,
            sender_reports=self.sender_reports,
            deliver=self._deliver,
            close_timeout=self.options.close_timeout,
            started_at=now,
            accept_media=self.receive_media,
            nack=self.options.audio_nack,
        )
        receiver.decode_video = self._decode_video  # a fresh decoder: no keyframe to ask for yet
        link = _Link(
            generation, offerer, pc, tap, media_pipe, media, audio_track, video_track, now, receiver
        )
        self._link = link
        self.stats.links += 1
        self._nursery.start_soon(self._run_link, link)
        return link

    def _ice_servers(self) -> list[RTCIceServer]:
        servers = [RTCIceServer(urls=url) for url in self.config.stun_servers]
        servers += [
            RTCIceServer(urls=t.url, username=t.username, credential=t.credential)
            for t in self.config.turn_servers
        ]
        return servers

    def _build(
        self,
        generation: int,
        offerer: bool,
        media_pipe: ToTrio[_MediaEvent],
        audio_track: AudioOutputTrack | None,
        video_track: VideoOutputTrack | None,
    ) -> tuple[RTCPeerConnection, PeerTap]:
        """On the loop thread: the connection, its transceivers, data channel and tap."""
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=self._ice_servers(),
                iceTransportPolicy=RTCIceTransportPolicy(self.config.ice_transport_policy.value),
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        use_host_addresses(pc, self.config.ice_host_addresses)
        preferences = self._codec_preferences()
        # What the remote may do decides our direction, whatever its SDP offers: aiortc answers
        # the intersection of the offered direction and ours.
        direction = "sendrecv" if self.receive_media else "sendonly"
        if not self.send_media:
            direction = "recvonly"
        if self.audio:
            audio = pc.addTransceiver(audio_track or "audio", direction=direction)
            audio.setCodecPreferences(preferences["audio"])
        if self.video:
            video = pc.addTransceiver(video_track or "video", direction=direction)
            if preferences["video"]:
                video.setCodecPreferences(preferences["video"])
            else:
                log.warning(
                    "%s is not available in aiortc; using its default codecs",
                    self.config.video_codec,
                )
        control = self._control_pipe
        pc.on(
            "connectionstatechange",
            control.handler(lambda: _PcState(generation, pc.connectionState)),
        )
        if self.data:
            if offerer:
                reliable = self.config.data_channel_mode is DataChannelMode.RELIABLE
                channel = pc.createDataChannel(
                    "meshrtc", ordered=reliable, maxRetransmits=None if reliable else 0
                )
                self._attach_channel(generation, channel, media_pipe)

            def on_datachannel(channel: RTCDataChannel) -> None:
                try:
                    self._attach_channel(generation, channel, media_pipe)
                except Exception:
                    log.exception("peer %s: attaching a data channel failed", self.peer_id)

            pc.on("datachannel", on_datachannel)
        tap = tap_peer_connection(pc, media_pipe.send, impairments=self._impairments)
        return pc, tap

    def _codec_preferences(self) -> dict[str, list[RTCRtpCodecCapability]]:
        """Per kind, the only codecs this peer negotiates: ``config.audio_codec`` (Opus) and
        ``config.video_codec``."""
        mime = _CODEC_MIME.get(str(self.config.video_codec).upper())
        return {
            "audio": codec_preferences("audio", f"audio/{self.config.audio_codec.value}"),
            "video": codec_preferences("video", mime),
        }

    def _attach_channel(
        self, generation: int, channel: RTCDataChannel, media_pipe: ToTrio[_MediaEvent]
    ) -> None:
        """On the loop thread: messages to the link's media channel, readiness to the supervisor."""
        channel.on(
            "message", media_pipe.handler(lambda data: ChannelMessage(data, time.monotonic()))
        )
        ready = _ChannelReady(generation, channel)
        if channel.readyState == "open":
            self._control_pipe.send(ready)
        else:
            channel.on("open", self._control_pipe.handler(lambda: ready))

    async def _drop_link(self) -> None:
        """Close the current link (its tasks, tap and RTCPeerConnection), bounded in time."""
        link, self._link = self._link, None
        if link is None:
            return
        link.scope.cancel()
        link.media_pipe.close()
        await link.receiver.aclose()  # the decode thread: shielded, bounded by close_timeout
        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout) as scope:
            try:
                await self.bridge.call(link.tap.close)
                await self.bridge.run(link.pc.close)
            except MeshRtcError as err:
                log.warning("peer %s: closing link %d: %s", self.peer_id, link.generation, err)
        if scope.cancelled_caught:
            log.error(
                "peer %s: closing link %d took over %.1f s",
                self.peer_id,
                link.generation,
                self.options.close_timeout,
            )
        self.bridge.unregister(link.pc)
        link.media.close()

    async def _run_link(self, link: _Link) -> None:
        with link.scope:
            await link.receiver.run(link.media)

    # --- receive path (rtc/receiver.py) ---------------------------------------------------------

    def _is_keyframe(self, frame: MediaFrame) -> bool:
        """The video jitter buffer's keyframe test: the current link's receiver knows the codec."""
        link = self._link
        return link is not None and link.receiver.is_keyframe(frame)

    def _deliver(self, item: ReceivedMedia) -> None:
        try:
            self._received_send.send_nowait(item)
        except trio.WouldBlock:
            self.stats.received_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # --- quality ----------------------------------------------------------------------------------

    async def _quality_loop(self) -> None:
        while True:
            await trio.sleep(self.options.quality_interval)
            metrics = self._metrics = self.quality.snapshot(time.monotonic())
            link = self._link
            if self._negotiation.is_connected and link is not None:
                await self._adapt_bitrates(link, metrics)

    async def _adapt_bitrates(self, link: _Link, metrics: ConnectionQualityMetrics) -> None:
        for kind in (FrameType.AUDIO, FrameType.VIDEO):
            control = link.tap.sender(kind)
            if control is None:
                continue
            controller = link.controllers.get(kind)
            if controller is None:
                controller = await self._new_controller(kind, control)
                if controller is None:
                    continue
                link.controllers[kind] = controller
            if kind is FrameType.AUDIO:
                # FEC's copy comes out of the same bitrate: keep the floor where it pays.
                floor = OPUS_FEC_MIN_KBPS if link.fec_applied.inband_fec else None
                await self._apply_bitrate(kind, control, controller.set_floor(floor))
            await self._apply_bitrate(kind, control, controller.update_from(metrics))

    async def _fec_loop(self) -> None:
        while True:
            await trio.sleep(self.options.fec_interval)
            link = self._link
            if self._negotiation.is_connected and link is not None:
                await self._adapt_fec(link)

    async def _adapt_fec(self, link: _Link) -> None:
        """Feed the remote's new loss reports on our audio to the link's FEC policy and tell the
        encoder when its setting changes (the audio floor follows in :meth:`_adapt_bitrates`)."""
        control = link.tap.sender(FrameType.AUDIO)
        if control is None:
            return
        if link.audio_ssrc is None:
            link.audio_ssrc = await self.bridge.call(lambda: control.ssrc)
        reports = self.quality.loss_reports(link.audio_ssrc, after=link.fec_read_until)
        reason = "not applied yet (no Opus encoder before the first frame)"
        for at, loss in reports:
            reason = link.fec.on_report(at, loss).reason
            link.fec_read_until = at
        setting = link.fec.setting
        if setting != link.fec_applied:
            try:
                applied = await self.bridge.call(
                    control.set_fec, setting.inband_fec, setting.packet_loss_percent
                )
            except MeshRtcError as err:
                log.warning("peer %s: setting Opus FEC failed: %s", self.peer_id, err)
                applied = False
            if applied:
                decision = FecDecision(setting, link.fec_applied, link.fec.smoothed_loss, reason)
                link.fec_applied = setting
                self.fec_decisions.append(decision)
                log.info(
                    "peer %s: Opus FEC %s, expecting %d%% loss (smoothed %.1f%%: %s)",
                    self.peer_id,
                    "on" if setting.inband_fec else "off",
                    setting.packet_loss_percent,
                    decision.smoothed_loss,
                    decision.reason,
                )

    async def _apply_bitrate(
        self, kind: FrameType, control: Any, decision: BitrateDecision
    ) -> None:
        if decision.action is BitrateAction.HOLD:
            return
        target = int(decision.target_kbps * 1000)
        try:
            applied = await self.bridge.call(control.set_bitrate, target)
        except MeshRtcError as err:
            log.warning("peer %s: setting the %s bitrate failed: %s", self.peer_id, kind.value, err)
            return
        self.bitrate_decisions.append((kind, decision, applied))
        log.info(
            "peer %s: %s bitrate %s to %.0f kb/s (%s)",
            self.peer_id,
            kind.value,
            decision.action.value,
            decision.target_kbps,
            decision.reason,
        )

    async def _new_controller(self, kind: FrameType, control: Any) -> BitrateController | None:
        probe = self.options.probe_after
        if kind is FrameType.AUDIO:
            low, high = self.options.audio_kbps
            return BitrateController(
                min_kbps=low,
                max_kbps=high,
                start_kbps=high,
                decrease_factor=0.85,
                increase_factor=1.15,
                probe_after_s=probe,
            )
        limits, target = await self.bridge.call(lambda: (control.limits, control.target_bitrate))
        if limits is None or target is None:
            return None  # no encoder before the first frame
        low, high = limits[0] / 1000, limits[1] / 1000
        return BitrateController(
            min_kbps=low,
            max_kbps=high,
            start_kbps=min(high, max(low, target / 1000)),
            decrease_factor=0.85,
            increase_factor=1.15,
            probe_after_s=probe,
        )

    # --- send path ------------------------------------------------------------------------------

    async def send_audio(
        self,
        samples: npt.NDArray[np.floating] | npt.NDArray[np.int16],
        timestamp: float | None = None,
    ) -> None:
        """Queue 48 kHz samples (mono ``(n,)``/``(n, 1)`` or stereo ``(n, 2)``, float32 in [-1, 1]
        or int16); the track paces them out as 20 ms Opus packets. Dropped while reconnecting.

        ``timestamp``: when the first sample was captured (``time.monotonic()`` seconds; a pipeline
        output's ``timestamp``). Audio and video sent with timestamps keep their relation on the
        wire. Without one, the samples continue those still queued, or start now.
        """
        if not self.audio:
            raise PeerError(f"peer {self.peer_id}: audio is not negotiated")
        self._audio_started = True
        link = self._link
        if link is not None and link.audio_track is not None:
            link.audio_track.put(samples, timestamp)

    async def send_video(
        self, frame: av.VideoFrame | npt.NDArray[np.uint8], timestamp: float | None = None
    ) -> None:
        """Show ``frame`` (an ``av.VideoFrame`` or an ``(h, w, 3)`` uint8 RGB array) from its
        capture ``timestamp`` (as for :meth:`send_audio`; default now) on; the track repeats it at
        its frame rate until the next one, across reconnections too."""
        if not self.video:
            raise PeerError(f"peer {self.peer_id}: video is not negotiated")
        self._last_picture = frame
        link = self._link
        if link is not None and link.video_track is not None:
            link.video_track.put(frame, timestamp)

    def set_video_plan(
        self, *, bitrate_scale: float = 1.0, framerate_scale: float = 1.0, video: bool = True
    ) -> None:
        """Shed outgoing video work (docs/transport.md, "Shedding load"): the encoder runs at
        ``bitrate_scale`` times what the bitrate controller and the remote's REMB allow, the track
        sends ``framerate_scale`` of its frame rate, and with ``video=False`` nothing at all;
        turned back on, the next picture is a keyframe.

        Does not block (the transport's load monitor calls it on the trio thread): the track takes
        the plan at once and the sender's bitrate and keyframe request are queued on the loop. The
        plan holds for rebuilt links too.
        """
        plan: dict[str, Any] = {
            "bitrate_scale": bitrate_scale,
            "framerate_scale": framerate_scale,
            "video": video,
        }
        if plan == self._video_plan or (not self._video_plan and plan == _FULL_VIDEO):
            return
        self._video_plan = plan
        link = self._link
        track = None if link is None else link.video_track
        if link is None or track is None:
            return
        resumed = track.paused and video
        track.set_plan(**plan)
        control = link.tap.sender(FrameType.VIDEO)
        if control is None or not self.bridge.running:
            return  # no sender yet: its first RTCP report applies the scale
        self.bridge.call_soon(control.refresh)
        if resumed:
            self.bridge.call_soon(control.request_keyframe)

    def set_video_decode(self, on: bool) -> None:
        """Decode the remote's video (``on``, the default) or let it pass undecoded: the transport
        turns it off while load shedding turns video off (nobody gets pictures then). Turned back
        on, one keyframe is asked for. Does not block; holds for rebuilt links too.
        (rtc/receiver.py, ``MediaReceiver.set_decode_video``.)"""
        self._decode_video = on
        link = self._link
        if link is not None:
            link.receiver.set_decode_video(on)

    async def send_data(self, data: bytes | str | Any) -> None:
        """Send one message: ``bytes`` and ``str`` as they are, anything else as compact JSON text.

        Waits (up to ``data_open_timeout``) for an open channel; a message larger than the remote
        accepts (aiortc: 256 KiB; SCTP splits it into 1189-byte packets) raises :class:`PeerError`.
        """
        if not self.data:
            raise PeerError(f"peer {self.peer_id}: no data channel is negotiated")
        payload: bytes | str
        if isinstance(data, bytes | str):
            payload = data
        else:
            payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
        negotiation = self._negotiation
        with trio.move_on_after(self.options.data_open_timeout):
            # Until Connected with an open channel, or Failed/Closed.
            while negotiation.live and not (
                negotiation.is_connected and self._link is not None and self._link.channel
            ):
                await self._changed.wait()
        link = self._link
        if link is None or link.channel is None or not negotiation.is_connected:
            raise PeerError(f"peer {self.peer_id}: no open data channel ({self.state})")
        try:
            await self.bridge.call(_send_on_channel, link.channel, payload)
        except ValueError as err:
            raise PeerError(f"peer {self.peer_id}: {err}") from None
        self.stats.data_sent += 1


#: The plan of a peer whose video is not shed.
_FULL_VIDEO: Final[dict[str, Any]] = {"bitrate_scale": 1.0, "framerate_scale": 1.0, "video": True}


def _send_on_channel(channel: RTCDataChannel, payload: bytes | str) -> None:
    if channel.readyState != "open":
        raise ValueError(f"the data channel is {channel.readyState}")
    channel.send(payload)
