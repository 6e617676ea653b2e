"""Every aiortc internal that meshrtc.rtc.aiortc_adapter relies on, checked against the installed aiortc.

aiortc is pinned to 1.16.*; a new release may rename a private attribute or change what a method
does with it. Each check below names the internal it guards, so a failure says exactly what moved.
When one fails: read the new aiortc source, fix the adapter, then update the check (and, for the
pinned ``receive()`` source, the digest).
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aiortc
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, rtp
from aiortc import codecs as aiortc_codecs
from aiortc import rtcrtpsender as sender_module
from aiortc.codecs import h264, opus, vpx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc import opus as meshrtc_opus

#: sha256 of ``inspect.getsource(RTCRtpReceiver.receive)`` in aiortc 1.16.0. The adapter replaces
#: receive() with a copy that skips the decoder thread, so any change to it must be re-read.
RECEIVE_SOURCE_SHA256 = "d6d8d8d7a0bf4e95f3fb7cb78cf275d0a5f50c4912e0cb8498272008779916ef"
#: sha256 of ``inspect.getsource(RTCRtpSender._next_encoded_frame)`` in aiortc 1.16.0. The adapter
#: replaces it on every sender with ``next_encoded_frame`` (audio inline, audio level only when
#: negotiated), so any change to it must be re-read.
NEXT_ENCODED_FRAME_SOURCE_SHA256 = (
    "89dd9fa4fb33741cc60857f1cebae31c9a88b72da9a42f91abc6090f40cb8253"
)


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    """Several checks read the wrappers themselves; open_bridge installs them, so do what it does."""
    adapter.install_aiortc_patches()


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _live_objects() -> dict[str, Any]:
    """A receiver and a sender as aiortc builds them (no network: nothing is negotiated)."""

    async def build() -> dict[str, Any]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            audio = pc.addTransceiver("audio")
            video = pc.addTransceiver("video")
            return {
                "audio_receiver": audio.receiver,
                "video_receiver": video.receiver,
                "audio_sender": audio.sender,
                "video_sender": video.sender,
            }
        finally:
            await pc.close()

    return asyncio.run(build())


LIVE = _live_objects()


def test_aiortc_version_is_the_pinned_minor() -> None:
    assert aiortc.__version__.startswith("1.16."), (
        f"aiortc {aiortc.__version__} installed; the adapter is written against 1.16.*"
    )


# --- receiver: instance attributes the adapter reads or replaces ---------------------------------

RECEIVER_ATTRS = [
    adapter.RECEIVER_JITTER_BUFFER,
    adapter.RECEIVER_STARTED,
    adapter.RECEIVER_CODECS,
    adapter.RECEIVER_RTX_SSRC,
    adapter.RECEIVER_RTCP_TASK,
    adapter.RECEIVER_DECODER_THREAD,
]


@pytest.mark.parametrize("name", RECEIVER_ATTRS)
@pytest.mark.parametrize("kind", ["audio", "video"])
def test_receiver_instance_attribute_exists(kind: str, name: str) -> None:
    receiver = LIVE[f"{kind}_receiver"]
    assert hasattr(receiver, name), f"RTCRtpReceiver has no instance attribute {name!r}"


def test_receiver_starts_unstarted_without_decoder_thread() -> None:
    receiver = LIVE["audio_receiver"]
    assert getattr(receiver, adapter.RECEIVER_STARTED) is False
    assert getattr(receiver, adapter.RECEIVER_DECODER_THREAD) is None
    assert isinstance(getattr(receiver, adapter.RECEIVER_CODECS), dict)
    assert isinstance(getattr(receiver, adapter.RECEIVER_RTX_SSRC), dict)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("_handle_rtcp_packet", ["self", "packet"]),
        ("_handle_rtp_packet", ["self", "packet", "arrival_time_ms"]),
        ("_run_rtcp", ["self"]),
        ("_send_rtcp_pli", ["self", "media_ssrc"]),
        ("_send_rtcp_nack", ["self", "media_ssrc", "lost"]),
        ("receive", ["self", "parameters"]),
    ],
)
def test_receiver_method_signature(method: str, params: list[str]) -> None:
    fn = getattr(RTCRtpReceiver, method, None)
    assert fn is not None, f"RTCRtpReceiver.{method} is gone"
    assert _params(fn) == params, f"RTCRtpReceiver.{method}{inspect.signature(fn)} changed"


def test_receiver_rtcp_handler_and_pli_are_coroutines() -> None:
    names = ("_handle_rtcp_packet", "_send_rtcp_pli", "_send_rtcp_nack", "_run_rtcp", "receive")
    for name in names:
        assert inspect.iscoroutinefunction(getattr(RTCRtpReceiver, name)), name


def test_receiver_transport_is_a_public_property() -> None:
    assert isinstance(inspect.getattr_static(RTCRtpReceiver, "transport"), property)


def test_receive_source_is_the_one_the_adapter_copies() -> None:
    digest = hashlib.sha256(_source(RTCRtpReceiver.receive).encode()).hexdigest()
    assert digest == RECEIVE_SOURCE_SHA256, (
        "RTCRtpReceiver.receive changed: re-read it and update ReceiverTap.install's copy "
        f"(new sha256 {digest})"
    )


@pytest.mark.parametrize(
    "needle",
    [
        # the sink's answer is unpacked like this, and (False, None) means: no PLI, nothing to decode
        "pli_flag, encoded_frame = self.__jitter_buffer.add(packet)",
        "if encoded_frame is not None and self.__decoder_thread:",
        "if pli_flag:",
        # RTX is unwrapped and NACKs generated *before* the jitter buffer, so the sink sees both
        "packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)",
        "self.__nack_generator.add(packet)",
        "packet._data = depayload(codec, packet.payload)",
    ],
)
def test_receiver_rtp_path_calls_the_jitter_buffer_after_rtx_and_nack(needle: str) -> None:
    source = _source(RTCRtpReceiver._handle_rtp_packet)
    assert needle in source, f"RTCRtpReceiver._handle_rtp_packet no longer contains {needle!r}"
    if needle.startswith(("packet = unwrap_rtx", "self.__nack")):
        assert source.index(needle) < source.index("self.__jitter_buffer.add(packet)")


def test_decoder_thread_is_started_only_in_receive() -> None:
    # If aiortc started it elsewhere, replacing receive() would no longer keep it from running.
    for name, member in inspect.getmembers(RTCRtpReceiver, inspect.isfunction):
        if name != "receive":
            assert "threading.Thread(" not in _source(member), (
                f"RTCRtpReceiver.{name} starts a thread"
            )
    assert "threading.Thread(" in _source(RTCRtpReceiver.receive)


def test_sr_packets_reach_the_receiver_through_handle_rtcp_packet() -> None:
    source = _source(RTCDtlsTransport._handle_rtcp_data)
    assert "await recipient._handle_rtcp_packet(packet)" in source
    assert "await receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)" in _source(
        RTCDtlsTransport._handle_rtp_data
    )


def test_dtls_transport_register_rtp_receiver_signature() -> None:
    fn = RTCDtlsTransport._register_rtp_receiver
    assert _params(fn) == ["self", "receiver", "parameters"], inspect.signature(fn)


def test_track_event_fires_before_the_receiver_is_started() -> None:
    # The adapter installs everything from the "track" event; that must precede __connect().
    source = _source(RTCPeerConnection.setRemoteDescription)
    track = source.index('self.emit("track", event.track)')
    connect = source.index("asyncio.ensure_future(self.__connect())")
    assert track < connect
    connect_source = _source(RTCPeerConnection._RTCPeerConnection__connect)  # type: ignore[attr-defined]
    assert "await transceiver.receiver.receive(" in connect_source


# --- sender ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [adapter.SENDER_ENCODER, "_ssrc"])
@pytest.mark.parametrize("kind", ["audio", "video"])
def test_sender_instance_attribute_exists(kind: str, name: str) -> None:
    assert hasattr(LIVE[f"{kind}_sender"], name), f"RTCRtpSender has no instance attribute {name!r}"


def test_sender_encoder_is_none_before_the_first_frame() -> None:
    assert getattr(LIVE["video_sender"], adapter.SENDER_ENCODER) is None


@pytest.mark.parametrize(
    ("method", "params"),
    [("_handle_rtcp_packet", ["self", "packet"]), ("_send_keyframe", ["self"])],
)
def test_sender_method_signature(method: str, params: list[str]) -> None:
    fn = getattr(RTCRtpSender, method, None)
    assert fn is not None, f"RTCRtpSender.{method} is gone"
    assert _params(fn) == params, f"RTCRtpSender.{method}{inspect.signature(fn)} changed"


def test_sender_builds_its_encoder_with_the_module_get_encoder() -> None:
    assert callable(getattr(sender_module, adapter.GET_ENCODER, None)), (
        "aiortc.rtcrtpsender.get_encoder"
    )
    assert "self.__encoder = get_encoder(codec)" in _source(RTCRtpSender._next_encoded_frame)


# Sender Reports on the media clock (SenderControl._stamp_report_pair) -------------------------------


@pytest.mark.parametrize("name", [adapter.SENDER_NTP_TIMESTAMP, adapter.SENDER_RTP_TIMESTAMP])
@pytest.mark.parametrize("kind", ["audio", "video"])
def test_sender_report_pair_is_an_instance_attribute(kind: str, name: str) -> None:
    assert getattr(LIVE[f"{kind}_sender"], name, None) == 0, f"RTCRtpSender.{name} moved"


def test_sender_next_encoded_frame_is_looked_up_on_the_instance_once_per_frame() -> None:
    fn = getattr(RTCRtpSender, adapter.SENDER_NEXT_ENCODED_FRAME)
    assert inspect.iscoroutinefunction(fn)
    assert _params(fn) == ["self", "codec"]
    run_rtp = _source(RTCRtpSender._run_rtp)
    assert "enc_frame = await self._next_encoded_frame(codec)" in run_rtp
    assert "timestamp = uint32_add(timestamp_origin, enc_frame.timestamp)" in run_rtp
    assert "RTCEncodedFrame(payloads, timestamp, audio_level)" in _source(fn)


def test_sender_records_the_report_pair_after_each_packet_and_nothing_awaits_after_it() -> None:
    # The adapter re-stamps the NTP half at the next _next_encoded_frame call; that is only safe if
    # _run_rtp sets the pair last and awaits nothing else between it and the next frame.
    run_rtp = _source(RTCRtpSender._run_rtp)
    sent = run_rtp.index("await self.transport._send_rtp(packet_bytes)")
    ntp = run_rtp.index("self.__ntp_timestamp = clock.current_ntp_time()")
    rtp = run_rtp.index("self.__rtp_timestamp = packet.timestamp")
    loop_end = run_rtp.index("except (asyncio.CancelledError")
    assert sent < ntp < rtp < loop_end
    assert "await" not in run_rtp[rtp:loop_end]


# next_encoded_frame: aiortc's _next_encoded_frame without the per-frame hand-off ------------------


def test_next_encoded_frame_source_is_the_one_the_adapter_replaces() -> None:
    digest = hashlib.sha256(_source(RTCRtpSender._next_encoded_frame).encode()).hexdigest()
    assert digest == NEXT_ENCODED_FRAME_SOURCE_SHA256, (
        "RTCRtpSender._next_encoded_frame changed: re-read it and update the adapter's "
        f"next_encoded_frame (new sha256 {digest})"
    )


@pytest.mark.parametrize(
    "name",
    [
        adapter.SENDER_TRACK,
        adapter.SENDER_FORCE_KEYFRAME,
        adapter.SENDER_ENABLED,
        adapter.SENDER_HEADER_EXTENSIONS_MAP,
    ],
)
@pytest.mark.parametrize("kind", ["audio", "video"])
def test_sender_attributes_next_encoded_frame_reads(kind: str, name: str) -> None:
    assert hasattr(LIVE[f"{kind}_sender"], name), f"RTCRtpSender has no instance attribute {name!r}"


def test_sender_flags_start_as_next_encoded_frame_expects() -> None:
    sender = LIVE["audio_sender"]
    assert getattr(sender, adapter.SENDER_FORCE_KEYFRAME) is False
    assert getattr(sender, adapter.SENDER_ENABLED) is True
    assert getattr(sender, adapter.SENDER_TRACK) is None


def test_header_extension_ids_say_whether_audio_level_was_negotiated() -> None:
    extensions = getattr(LIVE["audio_sender"], adapter.SENDER_HEADER_EXTENSIONS_MAP)
    assert isinstance(extensions, rtp.HeaderExtensionsMap)
    assert getattr(extensions, adapter.HEADER_EXTENSIONS_IDS).audio_level is None
    assert "self.__ids.audio_level = ext.id" in _source(rtp.HeaderExtensionsMap.configure)
    assert "urn:ietf:params:rtp-hdrext:ssrc-audio-level" in _source(
        rtp.HeaderExtensionsMap.configure
    )
    # The map is configured in send(), before _run_rtp asks for the first frame.
    send = _source(RTCRtpSender.send)
    assert send.index("self.__rtp_header_extensions_map.configure(parameters)") < send.index(
        "self._run_rtp("
    )


def test_run_rtp_sends_the_level_only_when_the_frame_has_one() -> None:
    run_rtp = _source(RTCRtpSender._run_rtp)
    assert "if enc_frame.audio_level is not None:" in run_rtp
    assert "packet.extensions.audio_level = (False, -enc_frame.audio_level)" in run_rtp
    assert _params(sender_module.RTCEncodedFrame.__init__) == [
        "self",
        "payloads",
        "timestamp",
        "audio_level",
    ]
    assert callable(rtp.compute_audio_level_dbov)  # what audio_level_dbov must equal


def test_sender_report_and_lsr_come_from_the_pair() -> None:
    run_rtcp = _source(RTCRtpSender._run_rtcp)
    assert "ntp_timestamp=self.__ntp_timestamp" in run_rtcp
    assert "rtp_timestamp=self.__rtp_timestamp" in run_rtcp
    assert "self.__lsr = ((self.__ntp_timestamp) >> 16) & 0xFFFFFFFF" in run_rtcp
    # RTT is measured against the local time the SR was built, not against its NTP field.
    assert "self.__lsr_time = time.time()" in run_rtcp
    assert "rtt = time.time() - self.__lsr_time" in _source(RTCRtpSender._handle_rtcp_packet)


def test_sender_track_is_a_public_property() -> None:
    assert isinstance(inspect.getattr_static(RTCRtpSender, "track"), property)


def test_encoder_timestamps_are_the_frame_pts() -> None:
    # Video: the RTP timestamp is the frame's pts on 90 kHz. Opus: counted from aiortc's first
    # packet; BitrateOpusEncoder adds first_packet_pts back so it is the packet's own pts.
    for cls in (vpx.Vp8Encoder, h264.H264Encoder):
        assert (
            "timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)"
            in _source(cls.encode)
        )
    source = _source(opus.OpusEncoder.encode)
    assert "packets[0].pts - self.first_packet_pts" in source
    assert opus.OpusEncoder().first_packet_pts is None


def test_opus_encoder_resampler_is_what_bitrate_opus_encoder_skips() -> None:
    # BitrateOpusEncoder hands frames already in this shape straight to libopus (_opus_ready) and
    # otherwise resamples like OpusEncoder.encode; both must stay what aiortc does.
    resampler = opus.OpusEncoder().resampler
    assert (resampler.format.name, resampler.layout.name) == ("s16", "stereo")
    assert resampler.rate == opus.SAMPLE_RATE == 48000
    assert resampler.frame_size == opus.SAMPLES_PER_FRAME == 960
    assert fractions.Fraction(1, opus.SAMPLE_RATE) == opus.TIME_BASE
    source = _source(opus.OpusEncoder.encode)
    for line in (
        "for frame in self.resampler.resample(frame):",
        "packets += self.codec.encode(frame)",
        "if self.first_packet_pts is None and packets:",
        "self.first_packet_pts = packets[0].pts",
        "return [bytes(p) for p in packets], packets[0].pts - self.first_packet_pts",
        "return [], None",
    ):
        assert line in source, f"OpusEncoder.encode no longer has {line!r}"
    ours = adapter.BitrateOpusEncoder()
    mono = av.AudioFrame(format="s16", layout="mono", samples=960)
    for plane in mono.planes:
        plane.update(bytes(plane.buffer_size))
    mono.sample_rate, mono.pts, mono.time_base = 48000, 0, opus.TIME_BASE
    ours.encode(mono)
    assert ours.resampler is not None  # built like aiortc's the first time one is needed
    assert (ours.resampler.format.name, ours.resampler.layout.name) == ("s16", "stereo")
    assert (ours.resampler.rate, ours.resampler.frame_size) == (
        resampler.rate,
        resampler.frame_size,
    )


def test_opus_fmtp_comes_from_the_codec_list_in_offers_and_answers() -> None:
    """install_opus_fmtp puts useinbandfec=1 into aiortc's Opus entry: aiortc writes each codec's
    fmtp from its parameters, offers from CODECS and answers with a copy of the local entry."""
    from aiortc import rtcpeerconnection as pc_module
    from aiortc import sdp as aiortc_sdp

    assert "params = parameters_to_sdp(codec.parameters)" in _source(
        aiortc_sdp.MediaDescription.__str__
    )
    assert "codec = copy.deepcopy(codec)" in _source(pc_module.find_common_codecs)
    assert "useinbandfec" in aiortc_sdp.FMTP_INT_PARAMETERS  # parsed back as an int
    opus_entries = [c for c in aiortc_codecs.CODECS["audio"] if c.mimeType.lower() == "audio/opus"]
    assert len(opus_entries) == 1


def test_sender_applies_remb_to_the_encoder_target_bitrate() -> None:
    # Why SenderControl intercepts REMB: otherwise this line overwrites the quality controller's cap.
    source = _source(RTCRtpSender._handle_rtcp_packet)
    assert "self.__encoder.target_bitrate = bitrate" in source
    assert "packet.fmt == RTCP_PSFB_APP" in source


# --- codecs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "cls"), [(vpx, vpx.Vp8Encoder), (h264, h264.H264Encoder)], ids=["vp8", "h264"]
)
def test_video_encoder_target_bitrate_contract(module: Any, cls: type) -> None:
    prop = inspect.getattr_static(cls, "target_bitrate", None)
    assert isinstance(prop, property), f"{cls.__name__}.target_bitrate is not a property"
    assert prop.fset is not None, f"{cls.__name__}.target_bitrate has no setter"
    assert isinstance(module.MIN_BITRATE, int)
    assert isinstance(module.MAX_BITRATE, int)
    encoder = cls()
    encoder.target_bitrate = 1
    assert encoder.target_bitrate == module.MIN_BITRATE, "target_bitrate no longer clamps"
    encoder.target_bitrate = 10**9
    assert encoder.target_bitrate == module.MAX_BITRATE
    assert encoder.codec is None, f"{cls.__name__}.codec is created lazily"
    src = _source(cls)
    assert "> 0.1" in src, f"{cls.__name__} no longer recreates its codec on a >10% change"


def test_opus_encoder_shape_and_configuration() -> None:
    encoder = opus.OpusEncoder()
    for name in ("codec", "resampler", "first_packet_pts"):
        assert hasattr(encoder, name), f"OpusEncoder.{name}"
    assert _params(opus.OpusEncoder.encode) == ["self", "frame", "force_keyframe"]
    # BitrateOpusEncoder runs libopus itself, configured as aiortc's FFmpeg context is.
    codec = encoder.codec
    ours = adapter.BitrateOpusEncoder()
    # aiortc's 96 kb/s: ours starts where libopus sends what FFmpeg sends at 96 (the bitrate of
    # the two is compared in tests/test_opus_encoder.py).
    assert codec.bit_rate == adapter.AIORTC_OPUS_BITRATE
    assert ours.opus.bitrate == ours.target_bitrate == adapter.OPUS_DEFAULT_BITRATE
    assert dict(codec.options) == {"application": "voip"}  # ours: OPUS_APPLICATION_VOIP
    assert (codec.format.name, codec.layout.name) == ("s16", "stereo")
    assert codec.sample_rate == opus.SAMPLE_RATE == meshrtc_opus.SAMPLE_RATE == 48_000
    assert codec.time_base == opus.TIME_BASE
    assert not ours.inband_fec  # FFmpeg's default (fec=0, packet_loss=0), as aiortc leaves it
    assert ours.packet_loss_percent == 0


@pytest.mark.parametrize(
    ("fn", "params"),
    [
        (aiortc_codecs.depayload, ["codec", "payload"]),
        (aiortc_codecs.get_decoder, ["codec"]),
        (aiortc_codecs.is_rtx, ["codec"]),
        (JitterFrame.__init__, ["self", "data", "timestamp"]),
        (rtp.unpack_remb_fci, ["data"]),
    ],
    ids=lambda x: getattr(x, "__qualname__", str(x)),
)
def test_codec_helpers_signature(fn: Callable[..., Any], params: list[str]) -> None:
    assert _params(fn) == params, f"{fn.__qualname__}{inspect.signature(fn)} changed"


def test_vp8_payload_descriptor_fields() -> None:
    descriptor, rest = vpx.VpxPayloadDescriptor.parse(b"\x90\x80\x01\x00")
    assert (descriptor.partition_start, descriptor.partition_id) == (1, 0)
    assert rest == b"\x00"


def test_rtp_and_rtcp_packet_fields() -> None:
    packet = rtp.RtpPacket(
        payload_type=96, marker=1, sequence_number=7, timestamp=9, ssrc=3, payload=b"x"
    )
    for name in ("payload_type", "marker", "sequence_number", "timestamp", "ssrc", "payload"):
        assert hasattr(packet, name), f"RtpPacket.{name}"
    info = rtp.RtcpSenderInfo(ntp_timestamp=1, rtp_timestamp=2, packet_count=3, octet_count=4)
    sr = rtp.RtcpSrPacket(ssrc=5, sender_info=info)
    assert sr.reports == []
    report = rtp.RtcpReceiverInfo(
        ssrc=1, fraction_lost=2, packets_lost=3, highest_sequence=4, jitter=5, lsr=6, dlsr=7
    )
    assert rtp.RtcpRrPacket(ssrc=1, reports=[report]).reports[0].dlsr == 7
    assert rtp.RTCP_PSFB_APP == 15


# --- ICE: host addresses (meshrtc.rtc.host_candidates) and the PathControl test hook -------------


def test_aioice_host_address_lookup_signature() -> None:
    """host_candidates.install() replaces the module global aioice.ice.get_host_addresses(use_ipv4,
    use_ipv6), which Connection.gather_candidates looks up (synchronously) on every gathering."""
    import aioice.ice

    from meshrtc.rtc import host_candidates

    original = host_candidates._aioice_lookup
    assert _params(original) == ["use_ipv4", "use_ipv6"]
    lookup = getattr(aioice.ice, host_candidates.AIOICE_LOOKUP)
    assert callable(lookup)
    assert _params(lookup) == ["use_ipv4", "use_ipv6"]
    gather = _source(aioice.ice.Connection.gather_candidates)
    assert "addresses = get_host_addresses(" in gather
    # Called before the first await, in the task gathering: it sees that task's context variables.
    assert gather.index("get_host_addresses(") < gather.index("await ")


def test_peer_connection_gathers_through_its_private_gather() -> None:
    """use_host_addresses wraps RTCPeerConnection.__gather on the instance: setLocalDescription
    awaits it (through self, so the instance attribute wins) and it gathers every ICE transport
    with asyncio.gather, whose tasks copy the caller's context (hence the scoped addresses)."""
    gather = getattr(RTCPeerConnection, adapter.PC_GATHER)
    assert _params(gather) == ["self"]
    assert "await self.__gather()" in _source(RTCPeerConnection.setLocalDescription)
    body = _source(gather)
    assert "t.iceGatherer.gather()" in body
    assert "await asyncio.gather(*coros)" in body


def test_ice_transport_connection_and_stun_protocols() -> None:
    """PathControl wraps the StunProtocol sockets at RTCIceTransport._connection._protocols."""
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    transport_init = _source(RTCIceTransport.__init__)
    assert f"self.{adapter.ICE_CONNECTION} = gatherer._connection" in transport_init
    connection = RTCIceGatherer()._connection
    assert isinstance(connection, aioice.ice.Connection)
    assert isinstance(getattr(connection, adapter.ICE_PROTOCOLS), list)
    assert _params(aioice.ice.StunProtocol.datagram_received) == ["self", "data", "addr"]
    assert _params(aioice.ice.StunProtocol.send_data) == ["self", "data", "addr"]
    assert _params(aioice.ice.StunProtocol.send_stun) == ["self", "message", "addr"]
    # Sends and receives go through those (instance) attributes on every datagram.
    assert "protocol.send_data(" in _source(aioice.ice.Connection.sendto)
    assert "self.__protocol.send_stun(" in _source(aioice.stun.Transaction)


def test_sctp_fragments_data_channel_messages_itself() -> None:
    """Data channel messages are not chunked by meshrtc: aiortc's SCTP keeps packets under 1200
    bytes (docs/peers.md, data channel) and advertises 256 KiB messages, which PeerConnection.send_data
    relies on for its size error."""
    from aiortc import rtcsctptransport

    assert rtcsctptransport.SCTP_MAX_PACKET_LENGTH <= 1200
    assert rtcsctptransport.LOCAL_MAX_MESSAGE_SIZE == 262_144
    assert "Cannot send message of" in _source(rtcsctptransport.RTCSctpTransport._data_channel_send)


def test_aioice_nominated_pair_shape() -> None:
    """selected_candidate_pair reads aioice Connection._nominated[component] → CandidatePair."""
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceGatherer

    connection = RTCIceGatherer()._connection
    nominated = getattr(connection, adapter.ICE_NOMINATED)
    assert isinstance(nominated, dict)
    assert "self._nominated[pair.component] = pair" in _source(aioice.ice.Connection.check_complete)
    pair_properties = {"local_candidate", "component"}
    for name in pair_properties:
        assert isinstance(inspect.getattr_static(aioice.ice.CandidatePair, name), property), name
    candidate = aioice.Candidate(
        foundation="1",
        component=1,
        transport="udp",
        priority=1,
        host="127.0.0.1",
        port=9,
        type="relay",
    )
    for name in ("type", "host", "port"):
        assert hasattr(candidate, name), f"aioice.Candidate.{name}"
    assert "self.remote_candidate = remote_candidate" in _source(aioice.ice.CandidatePair.__init__)


# --- VP9 (the adapter's "VP9 (RFC 9628)" section and meshrtc.rtc.vp9_codec) ----------------------


def test_codec_list_is_one_shared_object_read_at_negotiation_time() -> None:
    """install_vp9 appends VP9 to aiortc.codecs.CODECS["video"] in place; every reader must see it."""
    from aiortc import rtcpeerconnection as pc_module

    assert pc_module.CODECS is aiortc_codecs.CODECS
    assert "for params in CODECS[kind]:" in _source(aiortc_codecs.get_capabilities)
    assert "CODECS[transceiver.kind][:]" in _source(RTCPeerConnection.createOffer)
    assert "find_common_codecs(CODECS[media.kind], media.rtp.codecs)" in _source(
        RTCPeerConnection.setRemoteDescription
    )
    # setCodecPreferences (peer.py's VP9 preference) matches codecs by MIME type and parameters.
    assert "codec.parameters == pref.parameters" in _source(pc_module.filter_preferred_codecs)


def test_negotiation_calls_the_module_is_codec_compatible() -> None:
    """install_vp9 wraps rtcpeerconnection.is_codec_compatible to match VP9 by profile-id."""
    from aiortc import rtcpeerconnection as pc_module

    assert callable(getattr(pc_module, adapter.IS_CODEC_COMPATIBLE))
    assert "if is_codec_compatible(codec, c):" in _source(pc_module.find_common_codecs)
    assert (
        "def is_codec_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:"
        in inspect.getsource(pc_module)
    )
    # With nothing in common aiortc refuses the description (what a VP9 profile 2 offer meets).
    assert "Failed to set remote {} description send parameters" in _source(
        RTCPeerConnection.setRemoteDescription
    )


def test_receiver_module_globals_for_vp9_decoding() -> None:
    """install_vp9 wraps rtcrtpreceiver.get_decoder / depayload (plain aiortc receivers)."""
    from aiortc import rtcrtpreceiver as receiver_module

    for name in (adapter.GET_DECODER, adapter.DEPAYLOAD):
        assert callable(getattr(receiver_module, name)), f"aiortc.rtcrtpreceiver.{name}"
    assert "decoder = get_decoder(codec)" in _source(receiver_module.decoder_worker)
    rtp_path = _source(RTCRtpReceiver._handle_rtp_packet)
    assert "packet._data = depayload(codec, packet.payload)" in rtp_path
    assert (
        "except ValueError as exc:" in rtp_path
    )  # Vp9PayloadError is a ValueError: packet dropped


def test_sender_forces_a_keyframe_on_pli_and_fir() -> None:
    handler = _source(RTCRtpSender._handle_rtcp_packet)
    assert "RTCP_PSFB_FIR" in handler
    assert "RTCP_PSFB_PLI" in handler
    assert "self._send_keyframe()" in handler
    next_frame = _source(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.encode, data, force_keyframe" in next_frame
    assert "self.__encoder.pack(data)" in next_frame


def test_sender_resends_any_kind_from_its_history_on_a_nack() -> None:
    # media/nack.py asks for audio packets: the sender must resend them whatever the kind.
    handler = _source(RTCRtpSender._handle_rtcp_packet)
    assert "packet.fmt == RTCP_RTPFB_NACK" in handler
    assert "await self._retransmit(seq)" in handler
    retransmit = _source(RTCRtpSender._retransmit)
    assert "kind" not in retransmit
    assert "self.__rtp_history.get(sequence_number % RTP_HISTORY_SIZE)" in retransmit
    run_rtp = _source(RTCRtpSender._run_rtp)
    assert "self.__rtp_history[packet.sequence_number % RTP_HISTORY_SIZE] = (" in run_rtp


def test_codec_base_classes_and_helpers_vp9_codec_uses() -> None:
    from aiortc import mediastreams, sdp
    from aiortc.codecs import base

    assert base.Encoder.__abstractmethods__ == frozenset({"encode", "pack"})
    assert _params(base.Encoder.encode) == ["self", "frame", "force_keyframe"]
    assert _params(base.Encoder.pack) == ["self", "packet"]
    assert base.Decoder.__abstractmethods__ == frozenset({"decode"})
    assert _params(base.Decoder.decode) == ["self", "encoded_frame"]
    assert _params(vpx.number_of_threads) == ["pixels", "cpus"]
    assert (mediastreams.VIDEO_TIME_BASE.numerator, mediastreams.VIDEO_TIME_BASE.denominator) == (
        1,
        90_000,
    )
    assert _params(mediastreams.convert_timebase) == ["pts", "from_base", "to_base"]
    # VP9's fmtp goes out and comes back as text: "profile-id=0" <-> {"profile-id": "0"}.
    assert sdp.parameters_to_sdp({"profile-id": "0"}) == "profile-id=0"
    assert sdp.parameters_from_sdp("profile-id=0") == {"profile-id": "0"}


# --- DTLS with RSA peers and rejected sections (the adapter's "DTLS" and "Negotiation" parts) -----


def test_every_dtls_context_comes_from_the_certificate_method_the_adapter_wraps() -> None:
    from aiortc.rtcdtlstransport import RTCCertificate

    fn = getattr(RTCCertificate, adapter.CREATE_SSL_CONTEXT)
    assert _params(fn) == ["self", "srtp_profiles"]
    # The wrapper sets the cipher list after aiortc's own, on the context aiortc returns.
    previous = fn.__closure__[0].cell_contents
    assert "ctx.set_cipher_list(" in _source(previous)
    assert "return ctx" in _source(previous)
    assert f"self.__local_certificate.{adapter.CREATE_SSL_CONTEXT}(" in _source(
        RTCDtlsTransport.start
    )


def test_certificates_are_a_list_on_the_connection_given_to_each_dtls_transport() -> None:
    from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate

    source = inspect.getsource(RTCPeerConnection)
    assert f"self.{adapter.PC_CERTIFICATES.removeprefix('_RTCPeerConnection')} = [" in source
    assert "RTCDtlsTransport(iceTransport, self.__certificates)" in source
    assert _params(RTCCertificate.__init__) == ["self", "key", "cert"]
    assert _params(generate_certificate) == ["key"]

    async def check() -> None:
        pc = RTCPeerConnection()
        try:
            certificates = getattr(pc, adapter.PC_CERTIFICATES)
            assert isinstance(certificates, list)
            assert all(isinstance(c, RTCCertificate) for c in certificates)
            # Its DTLS transport holds the OpenSSL connection the adapter reads the suite from.
            transport = pc.addTransceiver("audio").receiver.transport
            assert getattr(transport, adapter.DTLS_SSL) is None
        finally:
            await pc.close()

    asyncio.run(check())
    assert "self._ssl = SSL.Connection(" in _source(RTCDtlsTransport.start)


def test_negotiation_helpers_the_adapter_calls_before_aiortc() -> None:
    from aiortc import rtcpeerconnection as pc_module

    find_common = getattr(pc_module, adapter.FIND_COMMON_CODECS)
    filter_preferred = getattr(pc_module, adapter.FILTER_PREFERRED_CODECS)
    assert _params(find_common) == ["local_codecs", "remote_codecs"]
    assert _params(filter_preferred) == ["codecs", "preferred"]
    source = _source(RTCPeerConnection.setRemoteDescription)
    # unusable_sections must predict exactly the check that raises.
    assert "common = filter_preferred_codecs(" in source
    assert "transceiver._preferred_codecs," in source
    assert "if not len(common):" in source


def test_an_inactive_section_creates_no_track_and_moves_no_media() -> None:
    """stand_in_offer / stand_in_answer make rejected sections ``a=inactive``; aiortc must then
    neither emit a track nor start the sender or receiver for them."""
    source = _source(RTCPeerConnection.setRemoteDescription)
    assert "direction = reverse_direction(media.direction)" in source
    assert 'direction in ["recvonly", "sendrecv"]' in source
    answer = _source(RTCPeerConnection.createAnswer)
    assert "transceiver.direction, transceiver._offerDirection" in answer
    connect = _source(RTCPeerConnection._RTCPeerConnection__connect)  # type: ignore[attr-defined]
    assert 'if transceiver.currentDirection in ["sendonly", "sendrecv"]:' in connect
    assert 'if transceiver.currentDirection in ["recvonly", "sendrecv"]:' in connect
    # Sections in the answer's BUNDLE group move onto the bundle transport (no ICE of their own).
    assert "slaveMids = bundle.items[1:]" in source


def test_sdp_parser_fields_unusable_sections_reads() -> None:
    from aiortc import sdp

    description = sdp.SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    media = description.media[0]
    assert (media.kind, media.port) == ("video", 0)
    assert [c.mimeType for c in media.rtp.codecs] == ["video/VP8"]


def test_rtcp_interval_is_aiortc_own() -> None:
    """TransportConfig has no RTCP interval: README and config.py state aiortc's own, a random
    0.5-1.5 s between reports, on both the sender's and the receiver's RTCP loop."""
    for loop in (RTCRtpSender._run_rtcp, RTCRtpReceiver._run_rtcp):
        assert "await asyncio.sleep(0.5 + random.random())" in _source(loop)
