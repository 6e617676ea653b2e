"""The aiortc adapter: the one module that touches aiortc's private attributes.

aiortc keeps ICE, DTLS, SRTP, RTCP, NACK/RTX and REMB; meshrtc owns media from the RTP packet on
(docs/architecture.md). This module makes that split on each RTCPeerConnection, on aiortc's asyncio
thread, before any packet can arrive (the ``track`` event fires inside ``setRemoteDescription``,
before it schedules ``__connect``, which is where ``receiver.receive()`` registers the receiver
with the RTP router):

* **Receive.** Each ``RTCRtpReceiver``'s jitter buffer (``_RTCRtpReceiver__jitter_buffer``) becomes a
  :class:`_Sink` whose ``add()`` returns ``(False, None)``. aiortc calls it after its own statistics,
  NACK generation, RTX unwrapping and REMB, so the sink sees each media packet exactly once, already
  unwrapped from RTX, and turns it into a :class:`~meshrtc.media.frame.MediaFrame`; aiortc never gets
  a frame to decode. Its ``receive()`` is replaced by one that does what aiortc's does *except* start
  the non-daemon decoder thread (the contract test pins aiortc's source of that method). Sender
  Reports are copied by wrapping ``_handle_rtcp_packet`` on the instance.
* **Send.** :class:`SenderControl` reads and sets the encoder's ``target_bitrate`` and intercepts
  REMB so the quality controller's cap is not overwritten a second later; Opus is encoded by
  libopus itself through :class:`BitrateOpusEncoder` (bitrate and in-band FEC settable between
  frames), installed by wrapping ``aiortc.rtcrtpsender``'s ``get_encoder``. Each sender's
  ``_next_encoded_frame`` is replaced by :func:`next_encoded_frame`: audio encoded on the loop
  thread instead of a thread-pool hand-off per frame, the RFC 6464 audio level computed only when
  negotiated (the contract test pins aiortc's source of the method it replaces).
* **Decode.** :class:`VideoDecoder` turns our jitter buffer's video frames into pictures with
  aiortc's own depayloaders and PyAV decoders. Audio is not decoded through aiortc at all:
  :class:`meshrtc.rtc.opus.OpusDecoder` calls libopus itself (its concealment and in-band FEC).
* **VP9.** aiortc 1.16 has none; :func:`install_vp9` (run by :func:`install_aiortc_patches`) adds it to
  aiortc's codec list (``video/VP9``, ``profile-id=0``), teaches its negotiation to refuse other VP9
  profiles, and its sender/receiver to build :class:`~meshrtc.rtc.vp9_codec.Vp9Encoder` /
  :class:`~meshrtc.rtc.vp9_codec.Vp9Decoder` and strip RFC 9628 descriptors. See the VP9 section.
* **DTLS with RSA peers.** :func:`install_dtls_rsa_suites` (likewise) adds the ECDHE-RSA
  suites to aiortc's ECDSA-only DTLS cipher list, so a peer with an RSA certificate can be DTLS
  server; :func:`rsa_certificate` / :func:`use_certificate` / :func:`dtls_cipher` for tests and
  diagnostics. See the DTLS section.
* **Negotiation.** :func:`answer_offer` answers an offer with the sections we cannot use rejected
  (port 0) instead of aiortc refusing all of it, or raises :class:`UnanswerableOfferError` with the
  reason; :func:`apply_answer` applies an answer that rejects sections. aiortc's own codec matching
  decides (:func:`unusable_sections`); the SDP text work is :mod:`meshrtc.media.negotiation`.
* **Test hooks.** :class:`Impairment` drops, duplicates, reorders and delays packets between the tap
  and our jitter buffer, seeded, counting what it did. :class:`PathControl` works one level lower,
  on the ICE datagrams of a connection: it kills the path both ways (and restores it), or drops a
  seeded fraction of what arrives, so aiortc itself sees the loss (RTCP reports, ICE, DTLS).
* **Installation.** Importing this module changes nothing in aiortc or aioice:
  :func:`install_aiortc_patches` (called by :func:`~meshrtc.rtc.bridge.open_bridge`) installs the
  process-wide patches above, idempotently; :func:`use_host_addresses` chooses one connection's
  ICE host addresses without touching any other's.

Everything that runs inline in aiortc's receive loop catches its own exceptions: one escaping would
end the transport's receive task. Failures are counted and logged once per tap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol, cast, runtime_checkable

import attrs
import av
import numpy as np
from aiortc import (
    RTCCertificate,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import codecs as _aiortc_codecs
from aiortc import rtcpeerconnection as _aiortc_pc_module
from aiortc import rtcrtpreceiver as _aiortc_receiver_module
from aiortc import rtcrtpsender as _aiortc_sender_module
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import depayload, get_decoder, is_rtx
from aiortc.codecs import h264 as _aiortc_h264
from aiortc.codecs import opus as _aiortc_opus
from aiortc.codecs import vpx as _aiortc_vpx
from aiortc.codecs.base import Encoder
from aiortc.codecs.opus import SAMPLE_RATE as OPUS_SAMPLE_RATE
from aiortc.codecs.opus import SAMPLES_PER_FRAME as OPUS_FRAME
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import convert_timebase
from aiortc.rtcdtlstransport import generate_certificate
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpsender import RTCEncodedFrame
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
)
from av.audio.frame import AudioFrame
from av.frame import Frame
from av.packet import Packet
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from meshrtc.errors import MeshRtcError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.negotiation import (
    SessionText,
    StandIn,
    reject_in_answer,
    stand_in_answer,
    stand_in_offer,
)
from meshrtc.media.rtcp import ReceptionReport, SenderReport
from meshrtc.media.vp9 import Vp9Depayloader, Vp9PayloadError, parse_descriptor
from meshrtc.rtc import host_candidates, vp9_codec
from meshrtc.rtc.opus import OpusEncoder as LibopusEncoder

__all__ = [
    "AdapterError",
    "BitrateOpusEncoder",
    "CandidatePairInfo",
    "Impairment",
    "ImpairmentConfig",
    "NegotiatedAnswer",
    "PathControl",
    "PeerTap",
    "ReceiverTap",
    "RembReport",
    "RtcpActivity",
    "SenderControl",
    "TapEvent",
    "TapStats",
    "TimedTrack",
    "UnanswerableOfferError",
    "UnusableSection",
    "VideoDecoder",
    "answer_offer",
    "apply_answer",
    "audio_level_dbov",
    "audio_level_negotiated",
    "codec_preferences",
    "dtls_cipher",
    "ice_transports",
    "install_aiortc_patches",
    "install_dtls_rsa_suites",
    "install_encoder_patches",
    "install_vp9",
    "is_vp9",
    "next_encoded_frame",
    "rsa_certificate",
    "selected_candidate_pair",
    "stand_in_codec",
    "tap_peer_connection",
    "unusable_sections",
    "use_certificate",
    "use_host_addresses",
]

log = logging.getLogger(__name__)

# Private names, in one place; tests/test_aiortc_contract.py checks each against the pinned aiortc.
RECEIVER_JITTER_BUFFER: Final = "_RTCRtpReceiver__jitter_buffer"
RECEIVER_STARTED: Final = "_RTCRtpReceiver__started"
RECEIVER_CODECS: Final = "_RTCRtpReceiver__codecs"
RECEIVER_RTX_SSRC: Final = "_RTCRtpReceiver__rtx_ssrc"
RECEIVER_RTCP_TASK: Final = "_RTCRtpReceiver__rtcp_task"
RECEIVER_DECODER_THREAD: Final = "_RTCRtpReceiver__decoder_thread"
SENDER_ENCODER: Final = "_RTCRtpSender__encoder"
#: The (NTP, RTP) pair ``RTCRtpSender._run_rtp`` records after each packet it sends and
#: ``_run_rtcp`` puts in the next Sender Report (deriving ``__lsr`` from that NTP for its RTT).
#: :class:`SenderControl` re-stamps the NTP half from the track's media clock; see its docstring.
SENDER_NTP_TIMESTAMP: Final = "_RTCRtpSender__ntp_timestamp"
SENDER_RTP_TIMESTAMP: Final = "_RTCRtpSender__rtp_timestamp"
#: ``RTCRtpSender._next_encoded_frame(codec)``: called by ``_run_rtp`` once per frame, after the
#: previous frame's packets were sent; replaced on the instance by :class:`SenderControl` with
#: :func:`next_encoded_frame` (the contract test pins aiortc's source of it).
SENDER_NEXT_ENCODED_FRAME: Final = "_next_encoded_frame"
#: What :func:`next_encoded_frame` reads and writes as aiortc's own ``_next_encoded_frame`` does:
#: the track, the keyframe request flag, whether the sender is enabled, and the negotiated header
#: extensions (``HeaderExtensionsMap``, whose private ``__ids`` says which have an id).
SENDER_TRACK: Final = "_RTCRtpSender__track"
SENDER_FORCE_KEYFRAME: Final = "_RTCRtpSender__force_keyframe"
SENDER_ENABLED: Final = "_enabled"
SENDER_HEADER_EXTENSIONS_MAP: Final = "_RTCRtpSender__rtp_header_extensions_map"
HEADER_EXTENSIONS_IDS: Final = "_HeaderExtensionsMap__ids"
#: Module global of ``aiortc.rtcrtpsender`` that builds a sender's encoder at its first frame.
GET_ENCODER: Final = "get_encoder"
#: Module globals of ``aiortc.rtcrtpreceiver`` (its RTP path and decoder thread call them) and of
#: ``aiortc.rtcpeerconnection`` (its codec negotiation calls it), wrapped for VP9 by install_vp9().
GET_DECODER: Final = "get_decoder"
DEPAYLOAD: Final = "depayload"
IS_CODEC_COMPATIBLE: Final = "is_codec_compatible"
#: ``RTCIceTransport._connection`` (the aioice Connection) and its ``_protocols`` (one
#: ``StunProtocol`` per local candidate socket): where :class:`PathControl` sits.
ICE_CONNECTION: Final = "_connection"
ICE_PROTOCOLS: Final = "_protocols"
#: aioice ``Connection._nominated``: component → the ``CandidatePair`` ICE selected (what
#: :func:`selected_candidate_pair` reports; aiortc has no public view of it).
ICE_NOMINATED: Final = "_nominated"

#: What the sink answers aiortc: no picture loss to report, no frame for its decoder.
_NOTHING: Final[tuple[bool, None]] = (False, None)
_KIND: Final = {"audio": FrameType.AUDIO, "video": FrameType.VIDEO}


class AdapterError(MeshRtcError):
    """The adapter cannot do what was asked with this aiortc object (wrong state or codec)."""


# ---------------------------------------------------------------------------------------------
# Events handed to the trio side


@attrs.frozen(slots=True)
class RembReport:
    """A REMB estimate from the remote receiver about streams we send (bits per second)."""

    bitrate: int
    ssrcs: tuple[int, ...]
    received_at: float


@attrs.frozen(slots=True)
class RtcpActivity:
    """RTCP that carries nothing to use but shows the path is alive.

    aiortc sends Sender Reports from the start, with a zero NTP time until its first RTP packet: a
    remote that sends no media yet (an idle mesh link) is heard from only through them.
    """

    ssrc: int
    received_at: float


#: Everything a :class:`PeerTap` emits; one callback (typically a ``ToTrio.send``) takes them all.
TapEvent = MediaFrame | SenderReport | ReceptionReport | RembReport | RtcpActivity


class EventSink(Protocol):
    def __call__(self, event: TapEvent, /) -> None: ...


@runtime_checkable
class TimedTrack(Protocol):
    """An outgoing track on a media clock (``meshrtc.rtc.tracks``): the NTP time of a pts it stamped."""

    def ntp_time(self, pts: int) -> int: ...


@attrs.define
class TapStats:
    """Counters of one receiver tap (read them from any thread; they only grow)."""

    packets: int = 0
    sender_reports: int = 0
    #: SRs with NTP timestamp 0 (sent before the first RTP packet): no mapping, liveness only
    #: (emitted as :class:`RtcpActivity`).
    zero_ntp_reports: int = 0
    #: Packets with an RTX payload type that reached the sink (aiortc unwraps RTX before it; >0 is a bug).
    rtx_filtered: int = 0
    #: Exceptions caught inside the tap (the first is logged with its traceback).
    errors: int = 0


# ---------------------------------------------------------------------------------------------
# Impairment (test-only)


@attrs.frozen
class ImpairmentConfig:
    """Seeded network impairment between the tap and our jitter buffer (tests only).

    Probabilities are per packet. ``delay`` is the largest extra delay in seconds, drawn uniformly
    per packet, so a ``delay`` above the packet interval also reorders.
    """

    seed: int = 0
    drop: float = attrs.field(
        default=0.0,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0)),
    )
    duplicate: float = attrs.field(
        default=0.0,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0)),
    )
    reorder: float = attrs.field(
        default=0.0,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0)),
    )
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))


class Impairment:
    """Decides, per packet, what the network does to it. Sans-IO: the tap schedules the delays.

    :meth:`plan` returns ``(extra_delay, frame)`` pairs to deliver, in order; an empty list means the
    packet was dropped. A reordered packet is held back and delivered right after the next one.
    """

    def __init__(self, config: ImpairmentConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._held: MediaFrame | None = None
        self.seen = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.delayed = 0
        #: (ssrc, sequence number) of every dropped packet, in drop order.
        self.dropped_packets: list[tuple[int, int]] = []
        #: (ssrc, RTP timestamp) of every dropped packet, in drop order (to match concealment).
        self.dropped_timestamps: list[tuple[int, int]] = []

    def plan(self, frame: MediaFrame) -> list[tuple[float, MediaFrame]]:
        config = self.config
        rng = self._rng
        self.seen += 1
        if config.drop and rng.random() < config.drop:
            self.dropped += 1
            self.dropped_packets.append((frame.ssrc, frame.sequence_number))
            self.dropped_timestamps.append((frame.ssrc, frame.rtp_timestamp))
            return []
        out: list[MediaFrame] = [frame]
        if config.duplicate and rng.random() < config.duplicate:
            self.duplicated += 1
            out.append(frame)
        if self._held is not None:
            out.append(self._held)
            self._held = None
        elif config.reorder and rng.random() < config.reorder:
            self.reordered += 1
            self._held = out.pop(0)
        planned: list[tuple[float, MediaFrame]] = []
        for item in out:
            delay = rng.uniform(0.0, config.delay) if config.delay else 0.0
            if delay > 0.0:
                self.delayed += 1
            planned.append((delay, item))
        return planned

    def flush(self) -> MediaFrame | None:
        """The packet held back for reordering, if any (the stream ended before its successor)."""
        held, self._held = self._held, None
        return held


class PathControl:
    """Kill, thin out and restore the network path of RTCPeerConnections (tests only).

    Sits on the ICE datagram sockets (aioice ``StunProtocol``) of every connection it is attached
    to, so everything above sees a real network fault: consent checks, DTLS, SCTP and RTP/RTCP all
    go missing, aiortc's own receive statistics count the loss and its RTCP reports tell the remote.

    * :meth:`kill` drops every datagram both ways until :meth:`restore`.
    * :attr:`drop` (0-1) drops that fraction of *incoming* datagrams, seeded; the remote then reads
      the loss in our reception reports.

    Attach each connection after its local description is set (the sockets exist from gathering
    on) and before connectivity checks can start. Connections attached while the path is killed
    start dead, which is what a rebuilt connection meets on a path that is still down. Nothing is
    wrapped until the control is first used, so an unused control costs nothing per packet. Use it
    on the loop thread.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.killed = False
        self.drop = 0.0
        self._rng = random.Random(seed)
        self._pcs: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self._wrapped: weakref.WeakSet[Any] = weakref.WeakSet()
        self._armed = False
        #: Datagrams dropped on the way in and on the way out.
        self.dropped_in = 0
        self.dropped_out = 0

    def attach(self, pc: RTCPeerConnection) -> None:
        self._pcs.add(pc)
        if self._armed:
            self._wrap(pc)

    def kill(self) -> None:
        """Drop every datagram of the attached connections, both ways."""
        self.killed = True
        self._arm()

    def restore(self) -> None:
        """Let datagrams through again (:attr:`drop` still applies)."""
        self.killed = False

    def set_drop(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise AdapterError(f"drop must be in [0, 1], got {fraction}")
        self.drop = fraction
        if fraction:
            self._arm()

    def _arm(self) -> None:
        self._armed = True
        for pc in list(self._pcs):
            self._wrap(pc)

    def _wrap(self, pc: RTCPeerConnection) -> None:
        for protocol in _stun_protocols(pc):
            if protocol not in self._wrapped:
                self._wrap_protocol(protocol)
                self._wrapped.add(protocol)

    def _wrap_protocol(self, protocol: Any) -> None:
        receive = protocol.datagram_received
        send_data = protocol.send_data
        send_stun = protocol.send_stun

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if self.killed or (self.drop and self._rng.random() < self.drop):
                self.dropped_in += 1
                return
            receive(data, addr)

        async def send_data_filtered(data: bytes, addr: tuple[str, int]) -> None:
            if self.killed:
                self.dropped_out += 1
                return
            await send_data(data, addr)

        def send_stun_filtered(message: Any, addr: tuple[str, int]) -> None:
            if self.killed:
                self.dropped_out += 1
                return
            send_stun(message, addr)

        # Instance overrides: asyncio's datagram transport and aioice look these up per call.
        setattr(protocol, "datagram_received", datagram_received)  # noqa: B010
        setattr(protocol, "send_data", send_data_filtered)  # noqa: B010
        setattr(protocol, "send_stun", send_stun_filtered)  # noqa: B010


def ice_transports(pc: RTCPeerConnection) -> list[Any]:
    """The distinct ``RTCIceTransport``s of ``pc`` (one with max-bundle), media and data."""
    transports: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        transports[id(ice)] = ice
    if pc.sctp is not None:
        ice = pc.sctp.transport.transport
        transports[id(ice)] = ice
    return list(transports.values())


def _stun_protocols(pc: RTCPeerConnection) -> list[Any]:
    protocols: list[Any] = []
    for ice in ice_transports(pc):
        connection = getattr(ice, ICE_CONNECTION)
        protocols.extend(getattr(connection, ICE_PROTOCOLS))
    return protocols


@attrs.frozen
class CandidatePairInfo:
    """The ICE candidate pair a connection sends and receives on (``type`` is host/srflx/prflx/relay).

    With ``ice_transport_policy="relay"`` both types must be ``relay``: that is how a test or an
    operator sees that media really goes through the TURN server, not merely that it was configured.
    """

    local_type: str
    local_address: tuple[str, int]
    remote_type: str
    remote_address: tuple[str, int]


def selected_candidate_pair(pc: RTCPeerConnection) -> CandidatePairInfo | None:
    """The pair ICE nominated for ``pc``'s (bundled) transport, None before there is one.

    Call it on the loop thread. Component 1 only: meshrtc negotiates rtcp-mux and max-bundle.
    """
    for ice in ice_transports(pc):
        connection = getattr(ice, ICE_CONNECTION)
        pair = getattr(connection, ICE_NOMINATED).get(1)
        if pair is not None:
            local, remote = pair.local_candidate, pair.remote_candidate
            return CandidatePairInfo(
                local.type, (local.host, local.port), remote.type, (remote.host, remote.port)
            )
    return None


# ---------------------------------------------------------------------------------------------
# Receive side


class _Sink:
    """Stands in for aiortc's receiver jitter buffer: every packet goes to the tap, none to aiortc."""

    __slots__ = ("_tap",)

    def __init__(self, tap: ReceiverTap) -> None:
        self._tap = tap

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self._tap._on_rtp(packet)
        return _NOTHING


class ReceiverTap:
    """The tap on one ``RTCRtpReceiver``: RTP to :class:`MediaFrame`, SR to :class:`SenderReport`.

    Lives on the asyncio thread; ``emit`` is called inline for every packet and must be cheap and
    non-blocking (``ToTrio.send`` is).
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        kind: FrameType,
        emit: EventSink,
        impairment: Impairment | None = None,
    ) -> None:
        self.receiver = receiver
        self.kind = kind
        self.emit = emit
        self.impairment = impairment
        self.stats = TapStats()
        #: Negotiated codecs by payload type, filled when aiortc starts the receiver.
        self.codecs: dict[int, RTCRtpCodecParameters] = {}
        self.rtx_payload_types: frozenset[int] = frozenset()
        #: Media SSRCs seen so far (the keyframe request needs one).
        self.ssrcs: set[int] = set()
        self._error_logged = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    # installation (on the asyncio thread, before receive())

    def install(self) -> None:
        receiver = self.receiver
        if getattr(receiver, RECEIVER_STARTED):
            raise AdapterError(
                "receiver already started: tap the RTCPeerConnection before setRemoteDescription"
            )
        setattr(receiver, RECEIVER_JITTER_BUFFER, _Sink(self))
        original_rtcp = receiver._handle_rtcp_packet

        async def handle_rtcp(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpSrPacket):
                self._on_sr(packet)
            await original_rtcp(packet)

        setattr(receiver, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010 (instance override of a method)

        async def receive(parameters: RTCRtpReceiveParameters) -> None:
            # aiortc's RTCRtpReceiver.receive() minus the decoder thread (pinned by the contract test).
            if getattr(receiver, RECEIVER_STARTED):
                return
            codecs: dict[int | None, RTCRtpCodecParameters] = getattr(receiver, RECEIVER_CODECS)
            rtx_ssrc: dict[int, int] = getattr(receiver, RECEIVER_RTX_SSRC)
            for codec in parameters.codecs:
                codecs[codec.payloadType] = codec
            for encoding in parameters.encodings:
                if encoding.rtx:
                    rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
            self._on_receive(parameters)
            receiver.transport._register_rtp_receiver(receiver, parameters)
            setattr(receiver, RECEIVER_RTCP_TASK, asyncio.ensure_future(receiver._run_rtcp()))
            setattr(receiver, RECEIVER_STARTED, True)

        setattr(receiver, "receive", receive)  # noqa: B010

    def _on_receive(self, parameters: RTCRtpReceiveParameters) -> None:
        self.codecs = {c.payloadType: c for c in parameters.codecs if c.payloadType is not None}
        self.rtx_payload_types = frozenset(pt for pt, c in self.codecs.items() if is_rtx(c))

    # the hot path

    def _on_rtp(self, packet: RtpPacket) -> None:
        try:
            if packet.payload_type in self.rtx_payload_types:
                self.stats.rtx_filtered += 1
                return
            frame = MediaFrame(
                self.kind,
                packet.timestamp,
                packet.sequence_number,
                packet.payload,
                time.monotonic(),
                bool(packet.marker),
                packet.ssrc,
                packet.payload_type,
            )
            self.stats.packets += 1
            if packet.ssrc not in self.ssrcs:
                self.ssrcs.add(packet.ssrc)
            if self._closed:
                return
            if self.impairment is None:
                self.emit(frame)
            else:
                self._impair(frame)
        except Exception:  # noqa: BLE001 - never into aiortc's receive loop; _failed logs it
            self._failed()

    def _on_sr(self, packet: RtcpSrPacket) -> None:
        try:
            info = packet.sender_info
            if self._closed:
                return
            if info.ntp_timestamp == 0:
                self.stats.zero_ntp_reports += 1
                self.emit(RtcpActivity(ssrc=packet.ssrc, received_at=time.monotonic()))
                return
            self.stats.sender_reports += 1
            self.emit(
                SenderReport(
                    ssrc=packet.ssrc,
                    ntp_timestamp=info.ntp_timestamp,
                    rtp_timestamp=info.rtp_timestamp,
                    packet_count=info.packet_count,
                    octet_count=info.octet_count,
                    received_at=time.monotonic(),
                )
            )
        except Exception:  # noqa: BLE001 - inline in aiortc's RTCP handling; _failed logs it
            self._failed()

    def _failed(self) -> None:
        self.stats.errors += 1
        if not self._error_logged:
            self._error_logged = True
            log.exception(
                "%s receiver tap failed (counted in stats.errors, logged once)", self.kind.value
            )

    # impairment (tests)

    def _impair(self, frame: MediaFrame) -> None:
        assert self.impairment is not None
        for delay, item in self.impairment.plan(frame):
            if delay <= 0.0:
                self.emit(item)
            else:
                self._deliver_later(delay, item)

    def _deliver_later(self, delay: float, frame: MediaFrame) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._deliver_late(frame)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _deliver_late(self, frame: MediaFrame) -> None:
        if self._closed:
            return
        try:
            self.emit(attrs.evolve(frame, received_at=time.monotonic()))
        except Exception:  # noqa: BLE001 - inline in aiortc's RTCP handling; _failed logs it
            self._failed()

    # control

    async def send_pli(self, media_ssrc: int | None = None) -> bool:
        """Ask the remote sender for a keyframe (RTCP PLI). Returns False when no SSRC is known yet."""
        ssrc = media_ssrc if media_ssrc is not None else next(iter(self.ssrcs), None)
        if ssrc is None:
            return False
        await self.receiver._send_rtcp_pli(ssrc)
        return True

    async def send_nack(self, media_ssrc: int, seqs: Sequence[int]) -> None:
        """Ask the remote sender to resend these RTP packets (RTCP generic NACK, RFC 4585).

        aiortc's receiver NACKs video only; meshrtc decides the audio ones (media/nack.py). The
        sender resends from its RTP history whatever the kind (RTX-wrapped if RTX was negotiated).
        """
        await self.receiver._send_rtcp_nack(media_ssrc, list(seqs))

    def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


# ---------------------------------------------------------------------------------------------
# Send side: encoder control


#: Opus bitrate range libopus accepts (bits per second).
OPUS_MIN_BITRATE: Final = 6_000
OPUS_MAX_BITRATE: Final = 510_000
#: aiortc asks FFmpeg's libopus wrapper for 96 kb/s, but the two do not send alike at one setting:
#: on bench/voice_loss.py's espeak clip FFmpeg sends 138.3 kb/s (PESQ-WB 4.57 decoded with libopus)
#: where libopus told 96 kb/s sends 84.0 (4.35); told 128 / 144 / 160 kb/s it sends 111.8 / 125.7 /
#: 139.6 kb/s (4.525 / 4.549 / 4.565). (On a steady synthetic voice FFmpeg sends 77 kb/s and libopus
#: its target; the cause is in FFmpeg's wrapper and was not found.) meshrtc starts at 144 kb/s: the
#: clean quality of before (issue 17: no worse at 0 % loss than 4.54 by more than 0.05) with fewer
#: bytes than FFmpeg's on speech. At 48 kb/s the two agree (FFmpeg 46.6 kb/s).
AIORTC_OPUS_BITRATE: Final = 96_000
OPUS_DEFAULT_BITRATE: Final = 144_000
#: aiortc recreates a video encoder only when the target moves by more than this fraction.
REENCODE_THRESHOLD: Final = 0.1


class BitrateOpusEncoder(Encoder):
    """aiortc's Opus encoder interface on libopus itself (:class:`meshrtc.rtc.opus.OpusEncoder`),
    with ``target_bitrate`` like aiortc's VP8/H.264 encoders and in-band FEC control.

    aiortc's own ``OpusEncoder`` runs FFmpeg's libopus wrapper, which fixes bitrate, FEC and
    expected loss when its context opens: a bitrate change meant a fresh context (one frame of
    discontinuity at the remote) and FEC was never on. Here every setting reaches libopus between
    two frames: :attr:`target_bitrate`, and :meth:`set_fec` (loss-driven, media/opus_fec.py, applied
    by rtc/peer.py through :meth:`SenderControl.set_fec`). The configuration is aiortc's (the
    contract test compares): VOIP, VBR, 20 ms frames of 48 kHz stereo s16, FEC off, at
    :data:`OPUS_DEFAULT_BITRATE` (the clean quality aiortc's 96 kb/s had). ``encode``
    and the setters run on the loop thread (:func:`next_encoded_frame`).

    **Timestamps.** A packet's timestamp is the pts of the first sample it decodes to: its frame's
    pts minus libopus's lookahead (312 samples), which is what FFmpeg's packet pts said, so RTP
    timestamps and the Sender Reports' mapping are what they were (tests/test_sender_encoding.py
    compares with aiortc's). ``first_packet_pts`` is the first packet's, as in aiortc's encoder.

    **No resampler for frames already in Opus's shape.** aiortc sends every frame through a PyAV
    ``AudioResampler`` (s16, stereo, 48 kHz, 960-sample frames). meshrtc's audio tracks produce
    exactly that, so the resampler would only copy; while every frame has that shape
    (:func:`_opus_ready`) its samples go to libopus directly. The first frame that has not
    switches to a resampler with aiortc's settings for good, so its buffering never sees a gap.
    """

    def __init__(self) -> None:
        self.opus = LibopusEncoder(bitrate=OPUS_DEFAULT_BITRATE)
        self._target_bitrate = OPUS_DEFAULT_BITRATE
        self.resampler: av.AudioResampler | None = None
        self.first_packet_pts: int | None = None
        #: Bitrate changes applied (each without a new encoder).
        self.bitrate_changes = 0
        #: FEC settings applied (:meth:`set_fec` calls that changed something).
        self.fec_changes = 0
        #: Frames encoded without the resampler; False once one needed it.
        self.direct = 0
        self._direct_ok = True

    @property
    def target_bitrate(self) -> int:
        return self._target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        target = max(OPUS_MIN_BITRATE, min(int(bitrate), OPUS_MAX_BITRATE))
        if target != self._target_bitrate:
            self.opus.bitrate = target
            self._target_bitrate = target
            self.bitrate_changes += 1

    @property
    def inband_fec(self) -> bool:
        return self.opus.inband_fec

    @property
    def packet_loss_percent(self) -> int:
        return self.opus.packet_loss_percent

    def set_fec(self, on: bool, packet_loss_percent: int) -> None:
        """In-band FEC on or off, and the loss libopus should expect (0-100; 0 sends no FEC)."""
        percent = max(0, min(100, int(packet_loss_percent)))
        if (on, percent) == (self.opus.inband_fec, self.opus.packet_loss_percent):
            return
        self.opus.inband_fec = on
        self.opus.packet_loss_percent = percent
        self.fec_changes += 1

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if self._direct_ok and _opus_ready(frame):
            self.direct += 1
            frames: Sequence[AudioFrame] = (cast(AudioFrame, frame),)
        else:
            if not isinstance(frame, AudioFrame):
                raise AdapterError(f"Opus encodes audio frames, not {type(frame).__name__}")
            self._direct_ok = False
            if self.resampler is None:
                self.resampler = av.AudioResampler(
                    format="s16", layout="stereo", rate=OPUS_SAMPLE_RATE, frame_size=OPUS_FRAME
                )
            frames = self.resampler.resample(frame)
        payloads = [self._encode_frame(f) for f in frames]
        if not payloads or frames[0].pts is None:
            return [], cast(int, None)  # aiortc's answer while the resampler buffers
        timestamp = int(frames[0].pts) - self.opus.lookahead
        if self.first_packet_pts is None:
            self.first_packet_pts = timestamp
        return payloads, timestamp

    def _encode_frame(self, frame: AudioFrame) -> bytes:
        samples = np.frombuffer(cast(Any, frame.planes[0]), dtype=np.int16)
        return self.opus.encode(samples[: frame.samples * 2])

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        """Pre-encoded Opus (a track that yields packets), as aiortc's encoder passes it on."""
        return [bytes(packet)], convert_timebase(
            cast(int, packet.pts),
            packet.time_base,
            _aiortc_opus.TIME_BASE,
        )


def _opus_ready(frame: Frame) -> bool:
    """Whether aiortc's Opus resampler would pass ``frame`` through unchanged (its settings are
    checked against aiortc's in the contract test)."""
    return (
        isinstance(frame, AudioFrame)
        and frame.samples == _aiortc_opus.SAMPLES_PER_FRAME
        and frame.sample_rate == OPUS_SAMPLE_RATE
        and frame.format.name == "s16"
        and frame.layout.name == "stereo"
        and frame.pts is not None
        and frame.time_base == _aiortc_opus.TIME_BASE
    )


_patched_get_encoder: Callable[[RTCRtpCodecParameters], Any] | None = None


def install_encoder_patches() -> None:
    """Make aiortc's senders build :class:`BitrateOpusEncoder` for Opus and
    :class:`~meshrtc.rtc.vp9_codec.Vp9Encoder` for VP9 (idempotent, process-wide).

    ``RTCRtpSender`` looks ``get_encoder`` up in its own module at the first frame; the wrapper
    delegates every other codec to whatever was installed before it (aiortc's). The rest of VP9
    (codec list, negotiation, receive path) is :func:`install_vp9`, which calls this.
    """
    global _patched_get_encoder
    if (
        _patched_get_encoder is not None
        and getattr(_aiortc_sender_module, GET_ENCODER) is _patched_get_encoder
    ):
        return
    previous: Callable[[RTCRtpCodecParameters], Any] = getattr(_aiortc_sender_module, GET_ENCODER)

    def get_encoder(codec: RTCRtpCodecParameters) -> Any:
        mime = codec.mimeType.lower()
        if mime == "audio/opus":
            return BitrateOpusEncoder()
        if mime == VP9_MIME_LOWER:
            return vp9_codec.Vp9Encoder()
        return previous(codec)

    _patched_get_encoder = get_encoder
    setattr(_aiortc_sender_module, GET_ENCODER, get_encoder)


def bitrate_limits(encoder: object) -> tuple[int, int] | None:
    """(min, max) bits per second the encoder clamps to, or None for one without a bitrate."""
    if isinstance(encoder, BitrateOpusEncoder):
        return OPUS_MIN_BITRATE, OPUS_MAX_BITRATE
    if isinstance(encoder, _aiortc_vpx.Vp8Encoder):
        return _aiortc_vpx.MIN_BITRATE, _aiortc_vpx.MAX_BITRATE
    if isinstance(encoder, _aiortc_h264.H264Encoder):
        return _aiortc_h264.MIN_BITRATE, _aiortc_h264.MAX_BITRATE
    if isinstance(encoder, vp9_codec.Vp9Encoder):
        return vp9_codec.MIN_BITRATE, vp9_codec.MAX_BITRATE
    return None


#: RFC 6465 Appendix A's bounds, as aiortc's ``rtp.compute_audio_level_dbov`` applies them.
_MAX_SAMPLE_VALUE: Final = 32767
_MIN_AUDIO_LEVEL: Final = -127


def audio_level_dbov(frame: AudioFrame) -> int:
    """aiortc's ``rtp.compute_audio_level_dbov`` with numpy: the same integer for every frame.

    aiortc's is a Python loop over every sample (1920 per 20 ms stereo frame): about 0.3 ms per
    frame, per member, on the loop thread. Like aiortc's, it sums the squares of *all* int16 values
    in plane 0 (both channels) and divides by ``frame.samples``; the sum is exact in int64 and
    below 2**53, so the float that follows is the one aiortc's float accumulator reaches.
    """
    values = np.frombuffer(cast(Any, frame.planes[0]), dtype=np.int16).astype(np.int64)
    energy = float(np.dot(values, values))
    rms = math.sqrt(energy / (frame.samples * _MAX_SAMPLE_VALUE * _MAX_SAMPLE_VALUE))
    if rms <= 0:
        return _MIN_AUDIO_LEVEL
    return round(min(max(20 * math.log10(rms), _MIN_AUDIO_LEVEL), 0))


def audio_level_negotiated(sender: RTCRtpSender) -> bool:
    """Whether the remote accepted the ssrc-audio-level header extension for this sender.

    aiortc computes the level for every audio frame it encodes and its serializer drops it when
    the extension has no id; meshrtc computes it only when it will be sent.
    """
    extensions = getattr(sender, SENDER_HEADER_EXTENSIONS_MAP)
    return getattr(extensions, HEADER_EXTENSIONS_IDS).audio_level is not None


async def next_encoded_frame(
    sender: RTCRtpSender, codec: RTCRtpCodecParameters
) -> RTCEncodedFrame | None:
    """aiortc's ``RTCRtpSender._next_encoded_frame``, minus two per-frame costs.

    * **Audio is encoded on the loop thread.** aiortc hands every frame to the default executor
      (``run_in_executor``): for a 20 ms Opus frame the hand-off (a future, a queue, waking a pool
      thread, ``call_soon_threadsafe`` back) cost about as much as the encoding, per member.
      Video frames still go to the executor: a VP9 frame takes milliseconds, which would stall
      every member's audio on the loop thread.
    * **The audio level is computed only when negotiated** (:func:`audio_level_negotiated`), and
      then with numpy (:func:`audio_level_dbov`) instead of aiortc's per-sample Python loop.

    Everything else is aiortc's: a disabled sender reads and drops frames, the encoder is built by
    ``aiortc.rtcrtpsender.get_encoder`` (meshrtc's, :func:`install_encoder_patches`) at the first
    frame, a pending keyframe request is consumed, pre-encoded packets are packed, and a frame
    that yields no payload (resampler buffering) returns None.
    """
    data = await getattr(sender, SENDER_TRACK).recv()
    if not getattr(sender, SENDER_ENABLED):
        return None
    encoder = getattr(sender, SENDER_ENCODER)
    if encoder is None:
        encoder = getattr(_aiortc_sender_module, GET_ENCODER)(codec)
        setattr(sender, SENDER_ENCODER, encoder)
    audio_level = None
    if isinstance(data, Frame):
        force_keyframe = getattr(sender, SENDER_FORCE_KEYFRAME)
        setattr(sender, SENDER_FORCE_KEYFRAME, False)
        if isinstance(data, AudioFrame):
            if audio_level_negotiated(sender):
                audio_level = audio_level_dbov(data)
            payloads, timestamp = encoder.encode(data, force_keyframe)
        else:
            payloads, timestamp = await asyncio.get_running_loop().run_in_executor(
                None, encoder.encode, data, force_keyframe
            )
    else:
        payloads, timestamp = encoder.pack(data)
    if not payloads:
        return None
    # aiortc's own annotation says int, but it passes None for video and pre-encoded packets.
    return RTCEncodedFrame(payloads, timestamp, cast(int, audio_level))


class SenderControl:
    """Bitrate and keyframe control of one ``RTCRtpSender`` (use on the asyncio thread).

    The quality controller sets a *cap* with :meth:`set_bitrate`; REMB estimates from the remote
    are intercepted and the encoder runs at ``min(cap, remb)``. Without the interception aiortc would
    write every REMB straight into the encoder and undo the cap within a second. A target that is
    within :data:`REENCODE_THRESHOLD` of what the encoder runs at is not written: aiortc would not act
    on it and a later small step could then cross the threshold and recreate the encoder (a video
    keyframe) for a change nobody asked for.

    **Sender Reports on the media clock.** aiortc builds each SR from the pair ``_run_rtp`` records
    after every packet: (NTP *when the packet was sent*, its RTP timestamp). Send time includes the
    encode time and the track's queue, which differ between audio and video, so a receiver mapping
    both streams through their SRs would see a per-connection A/V offset. When the sender's track is
    a :class:`TimedTrack` (meshrtc's outgoing tracks), the NTP half of that pair is re-stamped with
    the track's media-clock time of the same RTP timestamp: the pair stays one consistent point (so
    ``_run_rtcp``'s ``__lsr``, derived from it, still matches what the remote echoes and aiortc's RTT
    stays right), only it now says when the frame was *captured*, on the clock both tracks
    share. The hook replaces ``_next_encoded_frame`` on the instance (with
    :func:`next_encoded_frame`, aiortc's minus its per-frame costs):
    ``_run_rtp`` calls it right after the previous frame's last packet went out, with no await in
    between (sending a packet on UDP does not suspend), so no SR can read the unstamped pair.
    """

    def __init__(self, sender: RTCRtpSender, emit: EventSink | None = None) -> None:
        self.sender = sender
        self.kind = _KIND[sender.kind]
        self.emit = emit
        self.cap: int | None = None
        self.remb: int | None = None
        #: The encoder's own starting target (what a shedding scale applies to before any cap or
        #: REMB), read the first time the control sees the encoder.
        self._unscaled: int | None = None
        self.errors = 0
        self._error_logged = False
        #: Encoder timestamp (the track's pts) of the frame whose packets were sent last, and
        #: aiortc's random RTP timestamp origin (learnt from the first pair).
        self._sent_timestamp: int | None = None
        self._rtp_origin: int | None = None
        #: The sender's track and whether it is a TimedTrack, checked once per track: a
        #: runtime-checkable Protocol's isinstance walks its members on every call (~7 % of a
        #: star member's CPU when it ran per packet; the transport pays it per member too).
        self._track: object = None
        self._timed = False
        #: (NTP, RTP) pairs re-stamped from the media clock; pairs that did not match the frame.
        self.reports_stamped = 0
        self.reports_unmatched = 0

    @property
    def ssrc(self) -> int:
        ssrc: int = self.sender._ssrc
        return ssrc

    @property
    def encoder(self) -> Any:
        """aiortc's encoder object, None until the first frame has been encoded (and after stop)."""
        return getattr(self.sender, SENDER_ENCODER)

    @property
    def target_bitrate(self) -> int | None:
        """What the encoder is told to produce (already clamped by the codec), None before the first frame."""
        encoder = self.encoder
        bitrate = getattr(encoder, "target_bitrate", None)
        return None if bitrate is None else int(bitrate)

    @property
    def limits(self) -> tuple[int, int] | None:
        return bitrate_limits(self.encoder)

    def set_bitrate(self, bitrate: int | None) -> int | None:
        """Cap the send bitrate (None lifts the cap). Returns the encoder's target afterwards.

        Before the first frame there is no encoder: the cap is kept and applied at the next RTCP
        feedback from the remote (about once a second), and None is returned.
        """
        if bitrate is not None and bitrate <= 0:
            raise AdapterError(f"bitrate must be positive, got {bitrate}")
        self.cap = bitrate
        self._apply()
        return self.target_bitrate

    @property
    def scale(self) -> float:
        """The load-shedding scale of the sender's track (``bitrate_scale`` of a
        :class:`~meshrtc.rtc.tracks.VideoOutputTrack`; 1.0 for any other track)."""
        scale = getattr(getattr(self.sender, SENDER_TRACK, None), "bitrate_scale", 1.0)
        return float(scale) if isinstance(scale, int | float) and 0 < scale <= 1 else 1.0

    def _wanted(self) -> int | None:
        values = [v for v in (self.cap, self.remb) if v is not None]
        return min(values) if values else None

    def refresh(self) -> int | None:
        """Apply the track's current shedding scale now (else it lands at the next RTCP report,
        about a second later). Returns the encoder's target afterwards."""
        self._apply()
        return self.target_bitrate

    def _apply(self) -> None:
        """Run the encoder at ``min(cap, remb)`` times the track's shedding scale: the shed level
        halves what the controller and the remote's estimate allow, so a level that is lowered
        again gives back exactly that. With neither a cap nor a REMB yet, the scale applies to
        the encoder's own starting target."""
        encoder = self.encoder
        if encoder is None or not hasattr(encoder, "target_bitrate"):
            return
        if self._unscaled is None:
            self._unscaled = int(encoder.target_bitrate)
        wanted = self._wanted()
        wanted = max(1, int((self._unscaled if wanted is None else wanted) * self.scale))
        current = int(encoder.target_bitrate)
        low, high = bitrate_limits(encoder) or (wanted, wanted)
        clamped = max(low, min(wanted, high))
        if clamped != current and abs(clamped - current) / current > REENCODE_THRESHOLD:
            encoder.target_bitrate = clamped

    def set_fec(self, on: bool, packet_loss_percent: int) -> bool:
        """Opus in-band FEC on or off and the loss libopus should expect (media/opus_fec.py
        decides, rtc/peer.py applies). False, changing nothing, while the sender has no Opus encoder
        (before its first frame, or not Opus): the caller applies it at its next decision."""
        encoder = self.encoder
        if not isinstance(encoder, BitrateOpusEncoder):
            return False
        encoder.set_fec(on, packet_loss_percent)
        return True

    def request_keyframe(self) -> None:
        """Make the next encoded video frame a keyframe."""
        self.sender._send_keyframe()

    def install(self) -> None:
        original = self.sender._handle_rtcp_packet

        async def handle_rtcp(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                if self._on_remb(packet):
                    return  # applied by us, capped
            elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
                self._on_reports(packet)
            await original(packet)

        setattr(self.sender, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010
        original_next = getattr(self.sender, SENDER_NEXT_ENCODED_FRAME, None)
        if original_next is None:
            return  # a stand-in sender (tests): nothing to stamp or encode
        sender = self.sender
        lean = isinstance(sender, RTCRtpSender)  # a stand-in keeps its own frames

        async def stamped_next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
            self._stamp_report_pair()
            if lean:
                encoded = await next_encoded_frame(sender, codec)
            else:
                encoded = await original_next(codec)
            if encoded is not None:
                self._sent_timestamp = int(encoded.timestamp)
            return encoded

        setattr(self.sender, SENDER_NEXT_ENCODED_FRAME, stamped_next_encoded_frame)

    def _stamp_report_pair(self) -> None:
        """Make the pending SR pair say the media clock's NTP time of its RTP timestamp."""
        try:
            timestamp = self._sent_timestamp
            track = self.sender.track
            if track is not self._track:
                self._track, self._timed = track, isinstance(track, TimedTrack)
            if timestamp is None or not self._timed:
                return
            rtp_timestamp = getattr(self.sender, SENDER_RTP_TIMESTAMP)
            if self._rtp_origin is None:
                self._rtp_origin = (rtp_timestamp - timestamp) & 0xFFFFFFFF
            if (self._rtp_origin + timestamp) & 0xFFFFFFFF != rtp_timestamp:
                self.reports_unmatched += 1  # not the frame we saw: leave aiortc's pair alone
                return
            timed = cast(TimedTrack, track)  # checked above (once per track)
            setattr(self.sender, SENDER_NTP_TIMESTAMP, timed.ntp_time(timestamp))
            self.reports_stamped += 1
        except Exception:  # noqa: BLE001 - inline in aiortc's RTP loop; _failed logs it
            self._failed()

    def _on_remb(self, packet: RtcpPsfbPacket) -> bool:
        try:
            bitrate, ssrcs = unpack_remb_fci(packet.fci)
        except ValueError:
            return False
        try:
            if self.ssrc not in ssrcs:
                return False
            self.remb = bitrate
            self._apply()
            if self.emit is not None:
                self.emit(RembReport(bitrate, tuple(ssrcs), time.monotonic()))
        except Exception:  # noqa: BLE001 - inline in aiortc's RTCP handling; _failed logs it
            self._failed()
        return True

    def _on_reports(self, packet: RtcpRrPacket | RtcpSrPacket) -> None:
        try:
            self._apply()  # a cap set before the first frame lands here
            if self.emit is None:
                return
            now = time.monotonic()
            ssrc = self.ssrc
            for r in packet.reports:
                if r.ssrc == ssrc:
                    self.emit(
                        ReceptionReport(
                            ssrc=r.ssrc,
                            fraction_lost=r.fraction_lost,
                            packets_lost=r.packets_lost,
                            highest_sequence=r.highest_sequence,
                            jitter=r.jitter,
                            last_sr=r.lsr,
                            delay_since_last_sr=r.dlsr,
                            received_at=now,
                        )
                    )
        except Exception:  # noqa: BLE001 - inline in aiortc's RTCP handling; _failed logs it
            self._failed()

    def _failed(self) -> None:
        self.errors += 1
        if not self._error_logged:
            self._error_logged = True
            log.exception("%s sender tap failed (counted, logged once)", self.kind.value)


# ---------------------------------------------------------------------------------------------
# Per peer connection


class PeerTap:
    """All taps of one RTCPeerConnection. Create it with :func:`tap_peer_connection`."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        emit: EventSink,
        impairments: dict[FrameType, ImpairmentConfig] | None = None,
    ) -> None:
        self.pc = pc
        self.emit = emit
        self.impairment_configs = dict(impairments or {})
        self.receivers: list[ReceiverTap] = []
        self.senders: list[SenderControl] = []
        self._tapped: set[int] = set()

    def _on_track(self, track: Any) -> None:
        try:
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    self._tap_receiver(transceiver.receiver, track.kind)
            self._tap_senders()
        except Exception:
            # pyee would re-raise into setRemoteDescription; an untapped receiver then shows up as
            # silence, which the peer's metrics report, rather than as a failed negotiation.
            log.exception("tapping a new track failed")

    def _on_signaling(self) -> None:
        try:
            self._tap_senders()
        except Exception:
            log.exception("tapping senders failed")

    def _tap_receiver(self, receiver: RTCRtpReceiver, kind: str) -> None:
        if id(receiver) in self._tapped:
            return
        frame_type = _KIND[kind]
        config = self.impairment_configs.get(frame_type)
        tap = ReceiverTap(receiver, frame_type, self.emit, Impairment(config) if config else None)
        tap.install()
        self._tapped.add(id(receiver))
        self.receivers.append(tap)

    def _tap_senders(self) -> None:
        for sender in self.pc.getSenders():
            if id(sender) not in self._tapped:
                control = SenderControl(sender, self.emit)
                control.install()
                self._tapped.add(id(sender))
                self.senders.append(control)

    def receiver(self, kind: FrameType) -> ReceiverTap | None:
        return next((r for r in self.receivers if r.kind is kind), None)

    def sender(self, kind: FrameType) -> SenderControl | None:
        return next((s for s in self.senders if s.kind is kind), None)

    def codec(self, frame: MediaFrame) -> RTCRtpCodecParameters | None:
        """The negotiated codec of ``frame`` (by payload type on its receiver)."""
        for tap in self.receivers:
            if tap.kind is frame.frame_type and frame.payload_type in tap.codecs:
                return tap.codecs[frame.payload_type]
        return None

    async def request_keyframe(self, media_ssrc: int | None = None) -> bool:
        """Send a PLI for ``media_ssrc`` (default: the first video stream seen). Run it on the loop."""
        for tap in self.receivers:
            if tap.kind is FrameType.VIDEO and (media_ssrc is None or media_ssrc in tap.ssrcs):
                return await tap.send_pli(media_ssrc)
        return False

    async def send_nack(self, media_ssrc: int, seqs: Sequence[int]) -> bool:
        """NACK ``seqs`` of the stream ``media_ssrc`` (False: no receiver has seen it). On the loop."""
        for tap in self.receivers:
            if media_ssrc in tap.ssrcs:
                await tap.send_nack(media_ssrc, seqs)
                return True
        return False

    def close(self) -> None:
        """Stop emitting (packets are still counted) and cancel pending impairment deliveries."""
        for tap in self.receivers:
            tap.close()


def tap_peer_connection(
    pc: RTCPeerConnection,
    emit: EventSink,
    *,
    impairments: dict[FrameType, ImpairmentConfig] | None = None,
) -> PeerTap:
    """Tap ``pc``: call on the asyncio thread, after creating it and before ``setRemoteDescription``.

    Every media packet, Sender Report, reception report about our streams and REMB estimate of
    ``pc`` is passed to ``emit`` on the asyncio thread (give it ``ToTrio.send``).
    ``impairments`` (tests only) impairs the packets of that media kind before ``emit``.
    """
    install_encoder_patches()
    tap = PeerTap(pc, emit, impairments)
    pc.on("track", tap._on_track)
    pc.on("signalingstatechange", tap._on_signaling)
    for transceiver in pc.getTransceivers():  # tracks that already exist (renegotiation)
        if transceiver.receiver.track is not None:
            tap._tap_receiver(transceiver.receiver, transceiver.receiver.track.kind)
    tap._tap_senders()
    return tap


# ---------------------------------------------------------------------------------------------
# Decoding our jitter buffer's output


class VideoDecoder:
    """The packets of one video frame (same RTP timestamp, in sequence order) → ``av.VideoFrame``s.

    Depayloads each packet with aiortc's depayloader for the negotiated codec and decodes the
    concatenation with aiortc's decoder (libvpx / FFmpeg h264 via PyAV); VP9 goes through
    :class:`~meshrtc.media.vp9.Vp9Depayloader` (a frame must run B … E) and
    :class:`~meshrtc.rtc.vp9_codec.Vp9Decoder`. A malformed or incomplete frame or a decode failure
    returns no frames and counts in :attr:`errors`; whether that calls for a keyframe is decided by
    :class:`~meshrtc.media.keyframe.KeyframePolicy`, not here.
    """

    def __init__(self, codec: RTCRtpCodecParameters) -> None:
        if not codec.mimeType.lower().startswith("video/"):
            raise AdapterError(f"VideoDecoder decodes video, not {codec.mimeType}")
        self.codec = codec
        #: VP9 only: the RFC 9628 reassembly (its ``stats`` count malformed and incomplete frames).
        self.vp9: Vp9Depayloader | None = None
        if is_vp9(codec):
            self.vp9 = Vp9Depayloader()
            self._decoder: Any = vp9_codec.Vp9Decoder()
        else:
            self._decoder = get_decoder(codec)
        self.errors = 0

    def decode(self, packets: Sequence[MediaFrame]) -> list[av.VideoFrame]:
        if not packets:
            return []
        codec = self.codec
        try:
            if self.vp9 is not None:
                data = _vp9_frame_data(self.vp9, packets)
            else:
                data = b"".join(
                    depayload(codec, bytes(p.payload)) for p in packets if len(p.payload)
                )
            decoded = self._decoder.decode(JitterFrame(data, packets[0].rtp_timestamp))
            frames = cast(list[av.VideoFrame], decoded)
        except (ValueError, av.FFmpegError):
            self.errors += 1
            return []
        return frames


# ---------------------------------------------------------------------------------------------
# VP9 (RFC 9628): registration with aiortc. Everything VP9 that touches aiortc is in this section;
# the payload format is meshrtc.media.vp9, the PyAV encoder/decoder meshrtc.rtc.vp9_codec.

VP9_MIME: Final = "video/VP9"
VP9_MIME_LOWER: Final = "video/vp9"
#: The VP9 profile meshrtc negotiates: profile 0 (8-bit 4:2:0) is what libvpx-vp9 makes from yuv420p
#: and what every WebRTC endpoint decodes. A VP9 offer without ``profile-id`` means profile 0 (RFC 9628).
VP9_PROFILE_ID: Final = 0


def is_vp9(codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> bool:
    return codec.mimeType.lower() == VP9_MIME_LOWER


def vp9_profile(codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> int | None:
    """The codec's VP9 ``profile-id`` (0 when absent), None when it is not a number."""
    value = codec.parameters.get("profile-id", VP9_PROFILE_ID)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _vp9_frame_data(depayloader: Vp9Depayloader, packets: Sequence[MediaFrame]) -> bytes:
    """The VP9 frame (all its layer frames) carried by ``packets``; raises Vp9PayloadError."""
    parts: list[bytes] = []
    for packet in packets:
        frame = depayloader.push(
            packet.payload, sequence_number=packet.sequence_number, timestamp=packet.rtp_timestamp
        )
        if frame is not None:
            parts.append(frame.data)
    if depayloader.pending or not parts:
        depayloader.reset()
        raise Vp9PayloadError("incomplete VP9 frame (no B … E run)")
    return parts[0] if len(parts) == 1 else b"".join(parts)


_vp9_patches: dict[str, Callable[..., Any]] = {}


def _vp9_codec_parameters(payload_type: int) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=VP9_MIME,
        clockRate=90_000,
        payloadType=payload_type,
        rtcpFeedback=[
            RTCRtcpFeedback(type="nack"),
            RTCRtcpFeedback(type="nack", parameter="pli"),
            RTCRtcpFeedback(type="ccm", parameter="fir"),
            RTCRtcpFeedback(type="goog-remb"),
        ],
        parameters={"profile-id": str(VP9_PROFILE_ID)},
    )


def _install_vp9_codec() -> None:
    """Append VP9 (and its RTX) to aiortc's video codecs, after VP8 and H.264.

    Appended, not prepended: a plain aiortc connection keeps preferring VP8 as before; meshrtc's
    PeerConnection puts VP9 first with ``setCodecPreferences`` (``config.video_codec``). aiortc
    reads this one list object for offers, answers and ``getCapabilities``.
    """
    codecs = _aiortc_codecs.CODECS
    video = codecs["video"]
    if any(is_vp9(c) for c in video):
        return
    used = [c.payloadType for kind in codecs.values() for c in kind if c.payloadType is not None]
    payload_type = max(used) + 1
    if payload_type + 1 > 127:
        raise AdapterError("no dynamic RTP payload type left for VP9")
    video.append(_vp9_codec_parameters(payload_type))
    video.append(
        RTCRtpCodecParameters(
            mimeType="video/rtx",
            clockRate=90_000,
            payloadType=payload_type + 1,
            parameters={"apt": payload_type},
        )
    )


def _wrap(module: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``module.name`` with ``make(current)`` unless our wrapper is already there."""
    key = f"{module.__name__}.{name}"
    current = getattr(module, name)
    if _vp9_patches.get(key) is current:
        return
    wrapper = make(current)
    _vp9_patches[key] = wrapper
    setattr(module, name, wrapper)


def install_vp9() -> None:
    """Teach aiortc VP9 (idempotent, process-wide; run by :func:`install_aiortc_patches`).

    * codec list: ``video/VP9`` with ``profile-id=0`` and RTX, so offers, answers and
      ``RTCRtpSender.getCapabilities("video")`` (hence ``setCodecPreferences``) include it;
    * negotiation: ``is_codec_compatible`` matches VP9 only at the same profile, so a remote that
      offers only profile 2 (10-bit) gets no VP9: another common codec is picked, or, with nothing
      in common, aiortc refuses the description (``OperationError``) and the link fails cleanly;
    * receive: ``get_decoder`` / ``depayload`` as ``aiortc.rtcrtpreceiver`` calls them (for plain
      aiortc receivers; meshrtc's tapped receivers decode with :class:`VideoDecoder`);
    * send: :func:`install_encoder_patches` builds the encoder.
    """
    _install_vp9_codec()

    def compatible(previous: Callable[..., Any]) -> Callable[..., Any]:
        def is_codec_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
            if is_vp9(a) and is_vp9(b):
                if a.clockRate != b.clockRate:
                    return False
                ours, theirs = vp9_profile(a), vp9_profile(b)
                if ours is None or ours != theirs:
                    log.info(
                        "not negotiating VP9 profile-id=%s: meshrtc sends and decodes profile %s",
                        b.parameters.get("profile-id"),
                        VP9_PROFILE_ID,
                    )
                    return False
                return True
            return bool(previous(a, b))

        return is_codec_compatible

    def decoder(previous: Callable[..., Any]) -> Callable[..., Any]:
        def get_decoder(codec: RTCRtpCodecParameters) -> Any:
            if is_vp9(codec):
                return vp9_codec.Vp9Decoder()
            return previous(codec)

        return get_decoder

    def depayloader(previous: Callable[..., Any]) -> Callable[..., Any]:
        def depayload(codec: RTCRtpCodecParameters, payload: bytes) -> bytes:
            if is_vp9(codec):
                _, offset = parse_descriptor(payload)  # Vp9PayloadError is a ValueError
                return payload[offset:]
            return bytes(previous(codec, payload))

        return depayload

    _wrap(_aiortc_pc_module, IS_CODEC_COMPATIBLE, compatible)
    _wrap(_aiortc_receiver_module, GET_DECODER, decoder)
    _wrap(_aiortc_receiver_module, DEPAYLOAD, depayloader)
    install_encoder_patches()


# ---------------------------------------------------------------------------------------------
# DTLS: peers with RSA certificates.
#
# aiortc's certificate is ECDSA and its context lists only ECDHE-ECDSA suites (RFC 8827 allows
# that). In TLS 1.2 the suite names the *server's* certificate type, so a peer with an RSA
# certificate (GStreamer's default) that ends up DTLS server (it offered, aiortc answers as DTLS
# client) finds no suite it can use: "no shared cipher". Listing the ECDHE-RSA suites too lets
# such a server pick one; as server, aiortc's OpenSSL still only picks suites its ECDSA key can
# sign, so nothing changes for ECDSA peers. The client's certificate type never depended on the
# suite. (aiortc PR #1392 proposes the same.)

#: ``RTCCertificate._create_ssl_context(self, srtp_profiles)``: builds every DTLS context.
CREATE_SSL_CONTEXT: Final = "_create_ssl_context"
#: ``RTCPeerConnection.__certificates``: the certificate its DTLS transports are created with.
PC_CERTIFICATES: Final = "_RTCPeerConnection__certificates"
#: ``RTCDtlsTransport._ssl``: its OpenSSL connection (None before ``start``), read by
#: :func:`dtls_cipher`.
DTLS_SSL: Final = "_ssl"
#: aiortc's own suites (ECDSA), each followed by its ECDHE-RSA twin; AEAD first.
DTLS_CIPHERS: Final = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
    b"ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)


def install_dtls_rsa_suites() -> None:
    """Make every aiortc DTLS context list the ECDHE-RSA suites too (idempotent, process-wide;
    run by :func:`install_aiortc_patches`)."""

    def make(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _create_ssl_context(self: RTCCertificate, srtp_profiles: list[Any]) -> SSL.Context:
            ctx = previous(self, srtp_profiles)
            ctx.set_cipher_list(DTLS_CIPHERS)
            return cast(SSL.Context, ctx)

        return _create_ssl_context

    _wrap(RTCCertificate, CREATE_SSL_CONTEXT, make)


def rsa_certificate(
    bits: int = 2048, *, kind: type[RTCCertificate] = RTCCertificate
) -> RTCCertificate:
    """A self-signed RSA certificate in aiortc's shape (what GStreamer and many SIP stacks use).

    For tests and for applications that must present RSA; install it with :func:`use_certificate`.
    ``kind`` may be a subclass (a test's certificate with its own DTLS context).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    # aiortc's helpers are typed for EC keys; they only call what every private key has.
    return kind(key=cast(Any, key), cert=generate_certificate(cast(Any, key)))


def dtls_cipher(pc: RTCPeerConnection) -> str | None:
    """The DTLS cipher suite ``pc``'s (bundled) transport negotiated; None before the handshake.

    For diagnostics and the interop tests (which suite an RSA peer got). Call on the loop thread.
    """
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transport in transports:
        connection = getattr(transport, DTLS_SSL, None)
        if connection is not None and transport.state == "connected":
            name = connection.get_cipher_name()
            return str(name) if name is not None else None
    return None


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate) -> None:
    """Make ``pc`` present ``certificate`` in DTLS (its SDP fingerprint follows).

    Call it right after creating ``pc``, before any transceiver or data channel: aiortc hands the
    certificate to each DTLS transport when it creates one.
    """
    if pc.getTransceivers() or pc.sctp is not None:
        raise AdapterError("use_certificate: the connection already has a DTLS transport")
    setattr(pc, PC_CERTIFICATES, [certificate])


# ---------------------------------------------------------------------------------------------
# Negotiation: sections of an offer meshrtc cannot use are rejected, not fatal.
#
# aiortc refuses a whole offer when one audio/video section shares no codec with it
# ("Failed to set remote video description send parameters"), and it cannot produce or apply a
# rejected section (port 0) at all. meshrtc.media.negotiation does the SDP text work; here is the
# aiortc part: which sections aiortc would refuse (its own codec matching, with our codec
# preferences), and the one codec a rejected section carries while aiortc looks at it.

#: ``aiortc.rtcpeerconnection`` functions ``setRemoteDescription`` negotiates codecs with.
FIND_COMMON_CODECS: Final = "find_common_codecs"
FILTER_PREFERRED_CODECS: Final = "filter_preferred_codecs"


def codec_preferences(kind: str, mime: str | None = None) -> list[RTCRtpCodecCapability]:
    """What a meshrtc transceiver of ``kind`` negotiates: ``mime`` (audio: ``audio/opus`` when
    None, the one audio codec meshrtc decodes; video e.g. ``video/VP8``, with its RTX). Empty:
    aiortc's defaults (video ``mime`` None, or a codec aiortc lacks)."""
    capabilities = RTCRtpSender.getCapabilities(kind)
    wanted = (mime or ("audio/opus" if kind == "audio" else "")).lower()
    preferred = [c for c in capabilities.codecs if c.mimeType.lower() == wanted]
    if not preferred:
        return []
    rtx = [c for c in capabilities.codecs if c.mimeType.lower() == f"{kind}/rtx"]
    return preferred + rtx


def _codec_name(codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> str:
    return codec.mimeType.split("/", 1)[-1]


@attrs.frozen
class UnusableSection:
    """An offered audio/video section meshrtc rejects: why, and the codec it carries meanwhile."""

    index: int
    kind: str
    reason: str
    stand_in: StandIn


def unusable_sections(
    offer: str, preferences: Mapping[str, Sequence[RTCRtpCodecCapability]]
) -> dict[int, UnusableSection]:
    """The audio/video sections of ``offer`` that share no codec with us, by index.

    Decided with aiortc's own ``find_common_codecs`` and ``filter_preferred_codecs`` (what
    ``setRemoteDescription`` runs) and ``preferences`` (kind → :func:`codec_preferences`), so a
    section kept here is one aiortc accepts. Sections the offerer rejected itself (port 0) are left
    alone (a ``bundle-only`` section's port 0 is not a rejection). Raises ``ValueError`` (or
    whatever aiortc's parser raises) for SDP aiortc cannot read.
    """
    description = aiortc_sdp.SessionDescription.parse(offer)
    sections = SessionText.parse(offer).sections
    if len(sections) != len(description.media):
        raise ValueError(f"{len(sections)} m= lines but aiortc read {len(description.media)}")
    find_common = getattr(_aiortc_pc_module, FIND_COMMON_CODECS)
    filter_preferred = getattr(_aiortc_pc_module, FILTER_PREFERRED_CODECS)
    out: dict[int, UnusableSection] = {}
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video") or sections[index].rejected:
            continue
        preferred = list(preferences.get(media.kind, ()))
        common = filter_preferred(
            find_common(_aiortc_codecs.CODECS[media.kind], media.rtp.codecs), preferred
        )
        if common:
            continue
        stand_in = stand_in_codec(media.kind, preferred)
        if stand_in is None:
            raise AdapterError(f"aiortc has no {media.kind} codec")
        offered = sorted({_codec_name(c) for c in media.rtp.codecs if not is_rtx(c)})
        ours = sorted({_codec_name(c) for c in preferred if not c.mimeType.endswith("/rtx")})
        reason = (
            f"{media.kind} section {index} offers {', '.join(offered) or 'no codec'}; "
            f"meshrtc {media.kind} uses {', '.join(ours) or 'aiortc defaults'}"
        )
        out[index] = UnusableSection(index, media.kind, reason, stand_in)
    return out


def stand_in_codec(kind: str, preferences: Sequence[RTCRtpCodecCapability]) -> StandIn | None:
    """The codec a rejected ``kind`` section carries while aiortc negotiates it (as inactive)."""
    codecs = [c for c in preferences if not c.mimeType.lower().endswith("/rtx")]
    if not codecs:
        capabilities = RTCRtpSender.getCapabilities(kind)
        codecs = [c for c in capabilities.codecs if not c.mimeType.lower().endswith("/rtx")]
    if not codecs:
        return None
    codec = codecs[0]
    encoding = f"{_codec_name(codec)}/{codec.clockRate}"
    if codec.channels:
        encoding += f"/{codec.channels}"
    fmtp = aiortc_sdp.parameters_to_sdp(codec.parameters) if codec.parameters else None
    return StandIn(encoding, fmtp)


class UnanswerableOfferError(AdapterError):
    """Nothing in the offer can be answered (every section unusable, or aiortc refused it)."""


@attrs.frozen
class NegotiatedAnswer:
    """Our answer as the offerer gets it, and the sections it rejects (index → reason)."""

    sdp: str
    rejected: dict[int, str]


def _reason(exc: Exception) -> str:
    """What went wrong, in words for the offerer: aiortc's message, or the type when there is none
    worth reading (a bare ``KeyError('sideways')`` says only which key)."""
    text = str(exc)
    if isinstance(exc, KeyError | IndexError) or not text:
        return f"malformed SDP ({type(exc).__name__} {text})".replace(" )", ")")
    return text


async def answer_offer(
    pc: RTCPeerConnection, offer: str, preferences: Mapping[str, Sequence[RTCRtpCodecCapability]]
) -> NegotiatedAnswer:
    """Apply ``offer`` and create the answer, rejecting (port 0) each section we cannot use.

    Run it on the loop thread. Raises :class:`UnanswerableOfferError` with the reason when no
    section is left to answer or aiortc refuses the offer anyway (the offerer is told why).
    """
    try:
        unusable = unusable_sections(offer, preferences)
    except AdapterError:
        raise
    except Exception as exc:  # aiortc's parser raises many types on bad SDP
        raise UnanswerableOfferError(f"unreadable offer: {_reason(exc)}") from exc
    sections = SessionText.parse(offer).sections
    usable = [i for i, section in enumerate(sections) if not section.rejected and i not in unusable]
    if not usable:
        reasons = "; ".join(u.reason for u in unusable.values()) or "every section is rejected"
        raise UnanswerableOfferError(f"no section of the offer can be answered: {reasons}")
    seen = stand_in_offer(offer, {i: u.stand_in for i, u in unusable.items()})
    try:
        await pc.setRemoteDescription(RTCSessionDescription(seen, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc raises many types; the offerer is told
        raise UnanswerableOfferError(f"aiortc refused the offer: {_reason(exc)}") from exc
    answer = reject_in_answer(pc.localDescription.sdp, offer, unusable)
    for section in unusable.values():
        log.info("answering with a rejected section: %s", section.reason)
    return NegotiatedAnswer(answer, {i: u.reason for i, u in unusable.items()})


async def apply_answer(pc: RTCPeerConnection, answer: str) -> tuple[int, ...]:
    """Apply ``answer`` to our offer, accepting rejected (port 0) audio/video sections as
    inactive ones; return their indices. Run it on the loop thread."""
    seen, rejected = stand_in_answer(answer, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(seen, "answer"))
    return rejected


# ---------------------------------------------------------------------------------------------
# Installation: nothing above changes aiortc or aioice until open_bridge asks.

#: ``RTCPeerConnection.__gather()``: ``setLocalDescription`` awaits it to gather every ICE
#: transport's candidates; :func:`use_host_addresses` wraps it on one instance.
PC_GATHER: Final = "_RTCPeerConnection__gather"


def install_aiortc_patches() -> None:
    """Install every process-wide change meshrtc makes to aiortc and aioice (idempotent).

    :func:`~meshrtc.rtc.bridge.open_bridge` calls it before its loop starts, so importing meshrtc
    changes no aiortc global; a program that uses these helpers without a bridge calls it first.
    Each step checks its own wrapper is in place, so calling it again (or after a test restored
    one global) installs only what is missing.
    """
    install_vp9()
    install_opus_fmtp()
    install_dtls_rsa_suites()
    host_candidates.install()


#: What meshrtc's Opus ``a=fmtp`` adds in offers and answers (RFC 7587 section 6.1): our decoder
#: uses in-band FEC (rtc/opus.py recovers a lost frame from the next packet), so browsers and
#: other stacks should send it when they see loss (Chromium's Opus encoder turns FEC on from the
#: ``useinbandfec`` of the *other* side's fmtp, whichever side offered).
OPUS_FMTP: Final[Mapping[str, int]] = {"useinbandfec": 1}
#: ``a=rtcp-fb:<opus> nack`` (RFC 4585): we NACK lost audio on a short RTT (media/nack.py) and
#: aiortc's sender resends audio on a NACK whatever was negotiated; saying so asks the other side
#: (a browser) to keep its audio packets for resending too. aiortc answers with the feedback both
#: sides listed (``find_common_codecs``), so a peer that does not list it is not told.
OPUS_RTCP_FEEDBACK: Final = RTCRtcpFeedback(type="nack")


def install_opus_fmtp() -> None:
    """Make aiortc's Opus codec carry :data:`OPUS_FMTP` and :data:`OPUS_RTCP_FEEDBACK`
    (idempotent, process-wide).

    aiortc writes a codec's ``a=fmtp`` from its entry in ``aiortc.codecs.CODECS`` when it offers,
    and answers with a copy of that same local entry (``find_common_codecs``), so the entry's
    parameters cover both. They are updated in place: codec preferences built from
    ``getCapabilities`` share the dict, and ``filter_preferred_codecs`` compares parameters.
    """
    for codec in _aiortc_codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.update(OPUS_FMTP)
            if OPUS_RTCP_FEEDBACK not in codec.rtcpFeedback:
                codec.rtcpFeedback.append(OPUS_RTCP_FEEDBACK)


def use_host_addresses(pc: RTCPeerConnection, addresses: Sequence[str] | None) -> None:
    """Make ``pc`` gather host candidates on exactly ``addresses`` (``None``: the process default).

    aioice has no per-connection choice (module docstring of :mod:`meshrtc.rtc.host_candidates`),
    so ``pc``'s own gathering step runs inside :func:`~meshrtc.rtc.host_candidates.gathering_on`;
    other connections, gathering at the same time on the same loop, keep theirs. Needs
    :func:`install_aiortc_patches` (the bridge's); call before ``setLocalDescription``.
    """
    if addresses is None:
        return
    chosen = tuple(addresses)
    gather: Callable[[], Coroutine[Any, Any, None]] = getattr(pc, PC_GATHER)

    async def gather_on_chosen() -> None:
        with host_candidates.gathering_on(chosen):
            await gather()

    setattr(pc, PC_GATHER, gather_on_chosen)
