"""VP9: the RFC 9628 payload format (hand-built vectors, hypothesis round trips and loss), the PyAV
encoder/decoder, its registration with aiortc (capabilities, profile-id negotiation, receive path),
and two meshrtc peers negotiating VP9 over loopback and decoding video both ways."""

from __future__ import annotations

import asyncio
import fractions
import random
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest
import trio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import rtcrtpreceiver as receiver_module
from aiortc import rtcrtpsender as sender_module
from aiortc.exceptions import OperationError
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrtc.config import TransportConfig, VideoCodec
from meshrtc.errors import ConfigError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.keyframe import KeyframePolicy
from meshrtc.media.vp9 import (
    DEFAULT_MAX_PAYLOAD_SIZE,
    MAX_PICTURE_ID,
    LayerIndices,
    PayloadDescriptor,
    PictureGroupEntry,
    ScalabilityStructure,
    Vp9Depayloader,
    Vp9Payloader,
    Vp9PayloadError,
    depayload_frame,
    is_keyframe,
    parse_descriptor,
    parse_frame_header,
)
from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc import vp9_codec
from meshrtc.rtc.aiortc_adapter import ImpairmentConfig, TapEvent, tap_peer_connection
from meshrtc.rtc.bridge import ToTrio, open_bridge
from meshrtc.rtc.events import ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.tracks import VideoOutputTrack

from .peer_helpers import wired_pair

I, P, L, F, B, E, V, Z = (0x80 >> k for k in range(8))  # noqa: E741 (the RFC's names)


# --- descriptor: hand-built vectors (RFC 9628 section 4.2 layouts) ------------------------------


def test_non_flexible_descriptor_with_15_bit_picture_id_and_layer_indices() -> None:
    payload = bytes(
        [
            I | L | B,  # |I|P|L|F|B|E|V|Z| = 1 0 1 0 1 0 0 0
            0x80 | 0x12,  # M=1, PictureID high 7 bits
            0x34,  # PictureID low 8 bits: 0x1234
            (2 << 5) | 0x10 | (1 << 1) | 1,  # TID=2, U=1, SID=1, D=1
            0x07,  # TL0PICIDX (F=0)
            0xAB,  # VP9 data
        ]
    )
    descriptor, offset = parse_descriptor(payload)
    assert offset == 5
    assert descriptor == PayloadDescriptor(
        start_of_frame=True,
        end_of_frame=False,
        picture_id=0x1234,
        layer=LayerIndices(2, True, 1, True, 7),
    )
    assert bytes(descriptor) == payload[:5]
    assert not descriptor.keyframe_start  # SID 1: not where a decoder can start
    assert not is_keyframe(payload)


def test_7_bit_picture_id_keyframe_end_of_frame() -> None:
    payload = bytes([I | B | E | Z, 0x05, 0x82, 0x49, 0x83, 0x42])
    descriptor, offset = parse_descriptor(payload)
    assert offset == 2
    assert (descriptor.picture_id, descriptor.long_picture_id) == (5, False)
    assert descriptor.start_of_frame
    assert descriptor.end_of_frame
    assert descriptor.not_upper_reference
    assert not descriptor.inter_predicted
    assert bytes(descriptor) == payload[:2]
    assert is_keyframe(payload)


def test_flexible_mode_reference_indices() -> None:
    payload = bytes(
        [
            I | P | L | F | B | E,
            0x80,  # M=1, PictureID 0x0001 (two bytes)
            0x01,
            (1 << 5) | (0 << 1),  # TID=1, SID=0; no TL0PICIDX in flexible mode
            (1 << 1) | 1,  # P_DIFF=1, N=1: another follows
            (2 << 1) | 1,  # P_DIFF=2, N=1
            (4 << 1) | 0,  # P_DIFF=4, N=0: last
            0xFF,
        ]
    )
    descriptor, offset = parse_descriptor(payload)
    assert offset == 7
    assert descriptor.flexible
    assert descriptor.inter_predicted
    assert descriptor.references == (1, 2, 4)
    assert descriptor.layer == LayerIndices(temporal_id=1, spatial_id=0)
    assert bytes(descriptor) == payload[:7]
    assert not is_keyframe(payload)


def test_scalability_structure_with_resolutions_and_picture_group() -> None:
    payload = bytes(
        [
            I | B | V,
            0x80,
            0x00,
            (1 << 5) | 0x10 | 0x08,  # N_S=1 (two spatial layers), Y=1, G=1
            0x01, 0x40, 0x00, 0xB4,  # layer 0: 320x180
            0x02, 0x80, 0x01, 0x68,  # layer 1: 640x360
            0x02,  # N_G=2
            (0 << 5) | 0x00 | (1 << 2), 0x02,  # TID=0, U=0, R=1: P_DIFF 2
            (1 << 5) | 0x10 | (2 << 2), 0x01, 0x03,  # TID=1, U=1, R=2: P_DIFF 1, 3
            0x9D,
        ]
    )  # fmt: skip
    descriptor, offset = parse_descriptor(payload)
    assert offset == len(payload) - 1
    assert descriptor.scalability == ScalabilityStructure(
        2,
        ((320, 180), (640, 360)),
        (PictureGroupEntry(0, False, (2,)), PictureGroupEntry(1, True, (1, 3))),
    )
    assert bytes(descriptor) == payload[:-1]
    assert is_keyframe(payload)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "empty"),
        (bytes([I | B]), "PictureID"),
        (bytes([I | B, 0x80]), "extended PictureID"),
        (bytes([L | B]), "layer indices"),
        (bytes([L | B, 0x00]), "TL0PICIDX"),
        (bytes([F | P | B]), "P_DIFF"),
        (bytes([F | P | B, 0x03]), "P_DIFF"),  # N=1 promises another
        (bytes([F | P | B, 0x03, 0x05, 0x07, 0x08]), "more than 3"),
        (bytes([F | P | B, 0x00]), "P_DIFF 0"),  # references the picture itself
        (bytes([B | V]), "scalability structure"),
        (bytes([B | V, 0x10, 0x01, 0x40]), "resolutions"),
        (bytes([B | V, 0x08]), "N_G"),
        (bytes([B | V, 0x08, 0x01]), "picture group entry 0"),
        (bytes([B | V, 0x08, 0x01, 0x08, 0x01]), "entry 0 P_DIFF"),  # R=2, one present
    ],
)
def test_malformed_descriptors_are_refused_naming_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(Vp9PayloadError, match=field):
        parse_descriptor(payload)
    assert not is_keyframe(payload)


def test_inconsistent_descriptors_cannot_be_built() -> None:
    with pytest.raises(Vp9PayloadError, match="TL0PICIDX"):
        PayloadDescriptor(True, True, layer=LayerIndices())  # non-flexible needs TL0PICIDX
    with pytest.raises(Vp9PayloadError, match="P_DIFF"):
        PayloadDescriptor(True, True, inter_predicted=True, flexible=True)
    with pytest.raises(Vp9PayloadError, match="PictureID"):
        PayloadDescriptor(True, True, picture_id=0x80, long_picture_id=False)
    with pytest.raises(Vp9PayloadError, match="resolutions"):
        ScalabilityStructure(2, ((1, 1),))


# --- descriptor: hypothesis round trips -----------------------------------------------------------

scalability_structures = st.integers(1, 8).flatmap(
    lambda n: st.builds(
        ScalabilityStructure,
        st.just(n),
        st.none() | st.tuples(*[st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))] * n),
        st.none()
        | st.lists(
            st.builds(
                PictureGroupEntry,
                st.integers(0, 7),
                st.booleans(),
                st.lists(st.integers(1, 255), max_size=3).map(tuple),
            ),
            max_size=6,
        ).map(tuple),
    )
)


@st.composite
def descriptors(draw: st.DrawFn) -> PayloadDescriptor:
    flexible = draw(st.booleans())
    inter = draw(st.booleans())
    long_pid = draw(st.booleans())
    pid = draw(st.none() | st.integers(0, MAX_PICTURE_ID if long_pid else 0x7F))
    layer = draw(
        st.none()
        | st.builds(
            LayerIndices,
            st.integers(0, 7),
            st.booleans(),
            st.integers(0, 7),
            st.booleans(),
            st.none() if flexible else st.integers(0, 255),
        )
    )
    refs: tuple[int, ...] = ()
    if flexible and inter:
        refs = tuple(draw(st.lists(st.integers(1, 127), min_size=1, max_size=3)))
    return PayloadDescriptor(
        start_of_frame=draw(st.booleans()),
        end_of_frame=draw(st.booleans()),
        inter_predicted=inter,
        picture_id=pid,
        long_picture_id=long_pid or pid is None,
        flexible=flexible,
        layer=layer,
        references=refs,
        scalability=draw(st.none() | scalability_structures),
        not_upper_reference=draw(st.booleans()),
    )


@given(descriptors(), st.binary(max_size=8))
def test_descriptor_round_trip_and_every_truncation_is_refused(
    descriptor: PayloadDescriptor, data: bytes
) -> None:
    encoded = bytes(descriptor)
    assert parse_descriptor(encoded + data) == (descriptor, len(encoded))
    assert parse_descriptor(memoryview(encoded + data)) == (descriptor, len(encoded))
    for cut in range(len(encoded)):
        with pytest.raises(Vp9PayloadError):
            parse_descriptor(encoded[:cut])


@given(st.binary(max_size=40))
def test_parsing_arbitrary_bytes_refuses_or_accounts_for_every_byte(payload: bytes) -> None:
    try:
        descriptor, offset = parse_descriptor(payload)
    except Vp9PayloadError:
        assert not is_keyframe(payload)
        return
    assert 1 <= offset <= len(payload)
    assert len(bytes(descriptor)) == offset  # only reserved bits can differ
    assert is_keyframe(payload) is descriptor.keyframe_start


# --- payloader / depayloader ----------------------------------------------------------------------


def frame_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_smallest_payload_size_fits_the_largest_descriptor() -> None:
    # Keyframe start: byte 0, 15-bit PictureID (2), [L + TL0PICIDX (2)], SS: N_S/Y/G (1),
    # one resolution (4), N_G (1), one group entry (1) with one P_DIFF (1); plus one data byte.
    for layer, smallest in ((False, 1 + 2 + 8 + 1), (True, 1 + 2 + 2 + 8 + 1)):
        with pytest.raises(ConfigError, match="max_payload_size"):
            Vp9Payloader(max_payload_size=smallest - 1, layer_indices=layer)
        payloader = Vp9Payloader(max_payload_size=smallest, layer_indices=layer)
        payloads = payloader.payload(b"\x01\x02\x03", keyframe=True, resolution=(0xFFFF, 1))
        # One data byte fits in the first packet; the other two share the second.
        assert [len(p) for p in payloads] == [smallest, (5 if layer else 3) + 2]


def test_packet_counts_at_mtu_boundaries() -> None:
    mtu = 200
    first_cap = mtu - 11  # keyframe start: byte 0, PictureID, SS
    rest_cap = mtu - 3  # byte 0, PictureID
    for size, count in [
        (first_cap - 1, 1),
        (first_cap, 1),
        (first_cap + 1, 2),
        (first_cap + rest_cap, 2),
        (first_cap + rest_cap + 1, 3),
    ]:
        payloader = Vp9Payloader(max_payload_size=mtu)
        frame = frame_bytes(size, size)
        payloads = payloader.payload(frame, keyframe=True, resolution=(320, 240))
        assert len(payloads) == count, size
        assert max(len(p) for p in payloads) <= mtu
        assert depayload_frame(payloads).data == frame
    # Inter frames have no SS: the first packet holds as much as the others.
    payloader = Vp9Payloader(max_payload_size=mtu)
    assert len(payloader.payload(frame_bytes(2 * rest_cap, 1), keyframe=False)) == 2
    assert len(payloader.payload(frame_bytes(2 * rest_cap + 1, 1), keyframe=False)) == 3


def test_empty_frame_makes_no_packets_and_uses_no_picture_id() -> None:
    payloader = Vp9Payloader(picture_id=MAX_PICTURE_ID)
    assert payloader.payload(b"", keyframe=False) == []
    payloads = payloader.payload(b"\x00", keyframe=False)
    assert parse_descriptor(payloads[0])[0].picture_id == MAX_PICTURE_ID
    assert parse_descriptor(payloader.payload(b"\x00", keyframe=False)[0])[0].picture_id == 0


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    keys=st.lists(st.booleans(), min_size=8, max_size=8),
    mtu=st.integers(14, 1500),
    layer=st.booleans(),
    picture_id=st.integers(0, MAX_PICTURE_ID),
    first_sequence=st.integers(0, 0xFFFF),
    seed=st.integers(0, 2**16),
)
def test_payload_round_trip(
    sizes: list[int],
    keys: list[bool],
    mtu: int,
    layer: bool,
    picture_id: int,
    first_sequence: int,
    seed: int,
) -> None:
    payloader = Vp9Payloader(
        max_payload_size=mtu, picture_id=picture_id, layer_indices=layer, tl0_pic_idx=seed % 256
    )
    depayloader = Vp9Depayloader()
    seq = first_sequence
    for i, size in enumerate(sizes):
        frame = frame_bytes(size, seed + i)
        payloads = payloader.payload(frame, keyframe=keys[i], resolution=(640, 480))
        assert all(len(p) <= mtu for p in payloads)
        descriptors = [parse_descriptor(p) for p in payloads]
        chunks = [len(p) - offset for p, (_, offset) in zip(payloads, descriptors, strict=True)]
        assert all(c >= 1 for c in chunks)
        # Balanced: all but the (smaller-capacity) first packet differ by at most one byte.
        assert max(chunks[1:], default=0) - min(chunks[1:], default=0) <= 1
        # As few packets as the capacities allow.
        head = len(payloads[0]) - chunks[0]
        tail = len(payloads[-1]) - chunks[-1]
        assert size > (mtu - head) + (len(payloads) - 2) * (mtu - tail) or len(payloads) == 1
        out = None
        for payload in payloads:
            assert out is None
            out = depayloader.push(payload, sequence_number=seq, timestamp=i * 3000)
            seq = (seq + 1) & 0xFFFF
        assert out is not None
        assert out.data == frame
        assert out.keyframe is keys[i]
        assert out.picture_id == (picture_id + i) & MAX_PICTURE_ID
        assert out.packets == len(payloads)
        first = out.descriptor
        assert not first.flexible
        if layer:
            assert first.layer == LayerIndices(tl0_pic_idx=(seed + i) % 256)
        else:
            assert first.layer is None
        if keys[i]:
            assert first.scalability is not None
            assert first.scalability.resolutions == ((640, 480),)
        assert all(d.scalability is None for d, _ in descriptors[1:])
        assert not any(d.scalability for d, _ in descriptors) or keys[i]
    assert depayloader.stats.frames == len(sizes)
    assert (depayloader.stats.incomplete, depayloader.stats.orphans) == (0, 0)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=10),
    mtu=st.integers(100, 1200),
    first_sequence=st.integers(0, 0xFFFF),
    data=st.data(),
)
def test_loss_drops_incomplete_frames_and_never_corrupts_one(
    sizes: list[int], mtu: int, first_sequence: int, data: st.DataObject
) -> None:
    payloader = Vp9Payloader(max_payload_size=mtu)
    packets: list[tuple[int, int, int, bytes]] = []  # (frame index, sequence, timestamp, payload)
    frames = [frame_bytes(size, i) for i, size in enumerate(sizes)]
    seq = first_sequence
    for i, frame in enumerate(frames):
        for payload in payloader.payload(frame, keyframe=i == 0):
            packets.append((i, seq, 90 * i, payload))
            seq = (seq + 1) & 0xFFFF
    lost = data.draw(st.sets(st.integers(0, len(packets) - 1)))
    depayloader = Vp9Depayloader()
    got = []
    for k, (_, sequence, timestamp, payload) in enumerate(packets):
        if k in lost:
            continue
        out = depayloader.push(payload, sequence_number=sequence, timestamp=timestamp)
        if out is not None:
            got.append(out)
    damaged = {packets[k][0] for k in lost}
    intact = [i for i in range(len(frames)) if i not in damaged]
    assert [f.rtp_timestamp // 90 for f in got] == intact
    assert all(f.data == frames[f.rtp_timestamp // 90] for f in got)
    assert depayloader.stats.frames == len(intact)


def test_depayloader_refuses_malformed_packets_and_drops_the_partial_frame() -> None:
    payloader = Vp9Payloader(max_payload_size=100)
    payloads = payloader.payload(frame_bytes(250, 0), keyframe=True)
    depayloader = Vp9Depayloader()
    assert depayloader.push(payloads[0], sequence_number=1, timestamp=0) is None
    assert depayloader.pending
    with pytest.raises(Vp9PayloadError, match="PictureID"):
        depayloader.push(bytes([I | E]), sequence_number=2, timestamp=0)
    assert not depayloader.pending
    with pytest.raises(Vp9PayloadError, match="no VP9 data"):
        depayloader.push(bytes([B | E]), sequence_number=3, timestamp=0)
    assert depayloader.stats.malformed == 2
    assert depayloader.stats.incomplete == 1
    # The rest of the frame is orphaned, not glued onto anything.
    assert depayloader.push(payloads[1], sequence_number=2, timestamp=0) is None
    assert depayloader.stats.orphans == 1


def test_depayload_frame_needs_exactly_one_whole_frame() -> None:
    payloader = Vp9Payloader(max_payload_size=100)
    payloads = payloader.payload(frame_bytes(250, 0), keyframe=False)
    assert len(payloads) == 3
    with pytest.raises(Vp9PayloadError, match="E=1"):
        depayload_frame(payloads[:2])
    with pytest.raises(Vp9PayloadError, match="does not continue"):
        depayload_frame(payloads[1:])
    second = payloader.payload(b"\x01", keyframe=False)
    with pytest.raises(Vp9PayloadError, match="follows the end"):
        depayload_frame([*payloads, *second])


# --- the VP9 bitstream header ---------------------------------------------------------------------


def _bits(*fields: tuple[int, int]) -> bytes:
    value, count = 0, 0
    for width, field in fields:
        value = (value << width) | field
        count += width
    pad = -count % 8
    return (value << pad).to_bytes((count + pad) // 8, "big")


def test_frame_header_of_hand_built_frames() -> None:
    key = _bits(
        (2, 2),  # frame_marker
        (1, 0), (1, 0),  # profile 0
        (1, 0),  # show_existing_frame
        (1, 0),  # frame_type KEY_FRAME
        (1, 1), (1, 1),  # show_frame, error_resilient_mode
        (24, 0x498342),  # frame_sync_code
        (3, 2), (1, 0),  # color_space BT_709, color_range
        (16, 1279), (16, 719),
    )  # fmt: skip
    header = parse_frame_header(key)
    assert (header.profile, header.keyframe, header.width, header.height) == (0, True, 1280, 720)
    assert header.error_resilient
    assert header.show_frame
    inter = parse_frame_header(_bits((2, 2), (1, 0), (1, 0), (1, 0), (1, 1), (1, 1), (1, 0)))
    assert (inter.keyframe, inter.width) == (False, None)
    shown = parse_frame_header(_bits((2, 2), (1, 0), (1, 0), (1, 1), (3, 5)))
    assert shown.show_existing_frame
    assert not shown.keyframe
    with pytest.raises(Vp9PayloadError, match="frame_marker"):
        parse_frame_header(b"\x00\x00")
    with pytest.raises(Vp9PayloadError, match="sync code"):
        parse_frame_header(_bits((2, 2), (4, 0), (1, 1), (1, 1), (24, 0x123456)))
    with pytest.raises(Vp9PayloadError, match="truncated"):
        parse_frame_header(key[:6])


# --- PyAV encoder / decoder -----------------------------------------------------------------------

W, H = 320, 240


def moving_picture(i: int, width: int = W, height: int = H) -> av.VideoFrame:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = ((xx + 4 * i) % 256).astype(np.uint8)
    rgb[..., 1] = ((yy * 255) // height).astype(np.uint8)
    x = (10 * i) % (width - 40)
    rgb[40:80, x : x + 40, 2] = 255
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts = i * 3000
    frame.time_base = fractions.Fraction(1, 90_000)
    return frame


def luma(frame: av.VideoFrame) -> npt.NDArray[np.float64]:
    return frame.reformat(format="gray").to_ndarray().astype(np.float64)


def psnr(a: av.VideoFrame, b: av.VideoFrame) -> float:
    mse = float(np.mean((luma(a) - luma(b)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def test_encoder_decoder_round_trip_with_forced_keyframe() -> None:
    encoder = vp9_codec.Vp9Encoder(max_payload_size=600)
    decoder = vp9_codec.Vp9Decoder()
    depayloader = Vp9Depayloader()
    seq = 0
    decoded: list[av.VideoFrame] = []
    keyframes: list[int] = []
    for i in range(20):
        source = moving_picture(i)
        payloads, timestamp = encoder.encode(source, force_keyframe=i == 12)
        assert timestamp == i * 3000
        assert payloads
        assert all(len(p) <= 600 for p in payloads)
        frame = None
        for payload in payloads:
            frame = depayloader.push(payload, sequence_number=seq, timestamp=timestamp)
            seq += 1
        assert frame is not None
        header = parse_frame_header(frame.data)
        assert header.profile == 0
        assert header.keyframe is frame.keyframe
        if frame.keyframe:
            keyframes.append(i)
            assert (header.width, header.height) == (W, H)
            assert frame.descriptor.scalability is not None
            assert frame.descriptor.scalability.resolutions == ((W, H),)
        pictures = decoder.decode(JitterFrame(frame.data, timestamp))
        assert len(pictures) == 1
        picture = pictures[0]
        assert isinstance(picture, av.VideoFrame)
        assert (picture.width, picture.height) == (W, H)
        assert picture.pts == timestamp
        decoded.append(picture)
        if i >= 2:  # past the rate controller's first guess
            assert psnr(source, picture) > 28, i
    assert keyframes == [0, 12]
    assert encoder.keyframes == 2
    assert encoder.recreated == 0


def test_encoder_target_bitrate_is_clamped_and_recreates_only_on_large_changes() -> None:
    encoder = vp9_codec.Vp9Encoder()
    assert encoder.target_bitrate == vp9_codec.DEFAULT_BITRATE
    encoder.target_bitrate = 1
    assert encoder.target_bitrate == vp9_codec.MIN_BITRATE
    encoder.target_bitrate = 10**9
    assert encoder.target_bitrate == vp9_codec.MAX_BITRATE
    assert adapter.bitrate_limits(encoder) == (vp9_codec.MIN_BITRATE, vp9_codec.MAX_BITRATE)
    encoder.target_bitrate = 1_000_000
    encoder.encode(moving_picture(0))
    assert encoder.codec is not None
    assert encoder.codec.bit_rate == 1_000_000
    encoder.target_bitrate = 1_050_000  # 5 %: kept, no new keyframe
    encoder.encode(moving_picture(1))
    assert (encoder.recreated, encoder.keyframes) == (0, 1)
    encoder.target_bitrate = 600_000  # 40 %: a new encoder at the new rate, starting with a key
    payloads, _ = encoder.encode(moving_picture(2))
    assert (encoder.recreated, encoder.keyframes) == (1, 2)
    assert encoder.codec.bit_rate == 600_000
    assert is_keyframe(payloads[0])


def test_encoder_packs_pre_encoded_packets() -> None:
    codec = vp9_codec.encoder_context(W, H, 400_000)
    encoder = vp9_codec.Vp9Encoder()
    decoder = vp9_codec.Vp9Decoder()
    for i in range(3):
        for packet in codec.encode(moving_picture(i).reformat(format="yuv420p")):
            payloads, timestamp = encoder.pack(packet)
            assert timestamp == i * 3000
            frame = depayload_frame(payloads, timestamp=timestamp)
            assert frame.keyframe is (i == 0)
            if frame.keyframe:
                assert frame.descriptor.scalability is not None
                assert frame.descriptor.scalability.resolutions == ((W, H),)
            assert len(decoder.decode(JitterFrame(frame.data, timestamp))) == 1


# --- registration with aiortc ----------------------------------------------------------------------

VP9_CODEC = RTCRtpCodecParameters(
    mimeType="video/VP9", clockRate=90_000, payloadType=103, parameters={"profile-id": "0"}
)


def _media_frames(payloads: list[bytes], first_sequence: int, timestamp: int) -> list[MediaFrame]:
    return [
        MediaFrame(FrameType.VIDEO, timestamp, (first_sequence + k) & 0xFFFF, p, 0.0, k == 0)
        for k, p in enumerate(payloads)
    ]


def test_vp9_is_in_aiortc_capabilities_once_with_profile_0() -> None:
    adapter.install_aiortc_patches()  # what open_bridge does
    adapter.install_vp9()  # idempotent
    adapter.install_encoder_patches()
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None
    vp9 = [c for c in capabilities.codecs if c.mimeType == "video/VP9"]
    assert [c.parameters for c in vp9] == [{"profile-id": "0"}]
    assert isinstance(sender_module.get_encoder(VP9_CODEC), vp9_codec.Vp9Encoder)
    assert isinstance(receiver_module.get_decoder(VP9_CODEC), vp9_codec.Vp9Decoder)
    payload = Vp9Payloader().payload(b"\x01\x02", keyframe=False)[0]
    assert receiver_module.depayload(VP9_CODEC, payload) == b"\x01\x02"
    with pytest.raises(ValueError, match="PictureID"):
        receiver_module.depayload(VP9_CODEC, bytes([I | B]))


def test_video_decoder_decodes_vp9_and_asks_for_a_keyframe_after_damage() -> None:
    encoder = vp9_codec.Vp9Encoder(max_payload_size=300)
    decoder = adapter.VideoDecoder(VP9_CODEC)
    assert decoder.vp9 is not None
    seq = 100
    payloads, ts = encoder.encode(moving_picture(0))
    assert len(payloads) > 2
    # The keyframe loses its middle packet: nothing decoded, a keyframe wanted.
    damaged = _media_frames(payloads, seq, ts)
    policy = KeyframePolicy()
    assert decoder.decode([damaged[0], *damaged[2:]]) == []
    assert decoder.errors == 1
    assert policy.decoded(0.0, pictures=0, errors=1, keyframe=True, number=policy.submitted())
    seq += len(payloads)
    # A P frame before any keyframe cannot be decoded either.
    payloads, ts = encoder.encode(moving_picture(1))
    assert decoder.decode(_media_frames(payloads, seq, ts)) == []
    assert decoder.errors == 2
    seq += len(payloads)
    # A malformed descriptor: refused, counted.
    assert decoder.decode(_media_frames([bytes([I | B | E])], seq, ts)) == []
    assert decoder.errors == 3
    assert decoder.vp9.stats.malformed == 1
    seq += 1
    # The requested keyframe arrives whole: decoding resumes.
    payloads, ts = encoder.encode(moving_picture(2), force_keyframe=True)
    pictures = decoder.decode(_media_frames(payloads, seq, ts))
    assert [(p.width, p.height) for p in pictures] == [(W, H)]
    assert decoder.errors == 3
    number = policy.submitted()
    assert not policy.decoded(5.0, pictures=len(pictures), errors=0, keyframe=True, number=number)
    assert policy.wanted_since is None
    assert psnr(moving_picture(2), pictures[0]) > 25


def _negotiate(offer_edit: Callable[[str], str], answer_prefers_vp9: bool) -> str:
    """Offer from one aiortc connection, edited, answered by another; the answer's video codecs."""

    adapter.install_aiortc_patches()  # what open_bridge does; these connections have no bridge

    async def run() -> str:
        offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            offerer.addTransceiver("video", direction="sendrecv")
            await offerer.setLocalDescription(await offerer.createOffer())
            transceiver = answerer.addTransceiver("video", direction="sendrecv")
            if answer_prefers_vp9:
                capabilities = RTCRtpSender.getCapabilities("video")
                assert capabilities is not None
                transceiver.setCodecPreferences(
                    [c for c in capabilities.codecs if c.mimeType in ("video/VP9", "video/rtx")]
                )
            sdp = offer_edit(offerer.localDescription.sdp)
            await answerer.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await answerer.setLocalDescription(await answerer.createAnswer())
            answer: str = answerer.localDescription.sdp
            return answer
        finally:
            await offerer.close()
            await answerer.close()

    return asyncio.run(run())


def _rtpmap(sdp: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in sdp.splitlines() if line.startswith("a=rtpmap:")]


def test_profile_0_is_negotiated() -> None:
    answer = _negotiate(lambda sdp: sdp, answer_prefers_vp9=True)
    assert _rtpmap(answer) == ["VP9/90000", "rtx/90000"]
    assert "profile-id=0" in answer


def test_vp9_without_profile_id_means_profile_0() -> None:
    def drop_profile(sdp: str) -> str:
        lines = sdp.split("\r\n")
        kept = [x for x in lines if not (x.startswith("a=fmtp:") and x.endswith(" profile-id=0"))]
        assert len(kept) == len(lines) - 1
        return "\r\n".join(kept)

    answer = _negotiate(drop_profile, answer_prefers_vp9=True)
    assert _rtpmap(answer)[0] == "VP9/90000"


def test_other_vp9_profiles_fall_back_to_another_codec() -> None:
    answer = _negotiate(lambda sdp: sdp.replace("profile-id=0", "profile-id=2"), False)
    names = _rtpmap(answer)
    assert "VP9/90000" not in names
    assert names[0] == "VP8/90000"


def test_other_vp9_profiles_with_nothing_else_in_common_are_refused_cleanly() -> None:
    with pytest.raises(OperationError, match="video"):
        _negotiate(lambda sdp: sdp.replace("profile-id=0", "profile-id=2"), True)


# --- the send side on live aiortc connections: bitrate control and PLI -----------------------------


async def _offer_answer(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def test_sender_control_steers_vp9_and_a_pli_brings_a_keyframe() -> None:
    async with open_bridge() as bridge:
        config = RTCConfiguration(iceServers=[])
        a = await bridge.call(RTCPeerConnection, config)
        bridge.register(a)
        b = await bridge.call(RTCPeerConnection, config)
        bridge.register(b)
        track = VideoOutputTrack(fps=30)

        def add_vp9_sender() -> None:
            transceiver = a.addTransceiver(track, direction="sendonly")
            capabilities = RTCRtpSender.getCapabilities("video")
            assert capabilities is not None
            transceiver.setCodecPreferences(
                [c for c in capabilities.codecs if c.mimeType in ("video/VP9", "video/rtx")]
            )

        await bridge.call(add_vp9_sender)
        a_pipe: ToTrio[TapEvent]
        a_pipe, _a_events = bridge.open_channel()
        b_pipe: ToTrio[TapEvent]
        b_pipe, b_events = bridge.open_channel()
        a_tap = await bridge.call(tap_peer_connection, a, a_pipe.send)
        b_tap = await bridge.call(tap_peer_connection, b, b_pipe.send)
        await bridge.run(_offer_answer, a, b)
        track.put(moving_picture(0).to_ndarray(format="rgb24"))
        control = a_tap.sender(FrameType.VIDEO)
        assert control is not None
        received: list[MediaFrame] = []

        async def until(done: Callable[[], bool]) -> None:
            with trio.fail_after(15):
                while not done():
                    event = await b_events.receive()
                    if isinstance(event, MediaFrame):
                        received.append(event)

        def keyframes() -> int:
            return sum(is_keyframe(f.payload) for f in received)

        await until(lambda: len({f.rtp_timestamp for f in received}) >= 10)
        codec = b_tap.codec(received[0])
        assert codec is not None
        assert codec.mimeType == "video/VP9"
        # The quality controller's cap reaches the VP9 encoder, within its limits (a cap also
        # keeps REMB from moving the target, so the keyframes below are the PLI's).
        assert await bridge.call(lambda: control.limits) == (
            vp9_codec.MIN_BITRATE,
            vp9_codec.MAX_BITRATE,
        )
        assert await bridge.call(control.set_bitrate, 300_000) == 300_000
        encoder = await bridge.call(lambda: control.encoder)
        assert isinstance(encoder, vp9_codec.Vp9Encoder)
        await until(lambda: encoder.codec is not None and encoder.codec.bit_rate == 300_000)
        # The receiver's PLI makes the sender's next frame a keyframe (not a new encoder).
        recreated, before = encoder.recreated, keyframes()
        assert await bridge.run(b_tap.request_keyframe)
        await until(lambda: keyframes() > before)
        assert encoder.recreated == recreated
        assert await bridge.call(control.set_bitrate, 10_000) == vp9_codec.MIN_BITRATE
        # Everything b received decodes.
        decoder = adapter.VideoDecoder(codec)
        by_ts: dict[int, list[MediaFrame]] = {}
        for f in received:
            by_ts.setdefault(f.rtp_timestamp, []).append(f)
        pictures = [p for group in list(by_ts.values())[:-1] for p in decoder.decode(group)]
        assert len(pictures) == len(by_ts) - 1
        assert decoder.errors == 0


# --- two meshrtc peers over loopback ----------------------------------------------------------------

PW, PH = 160, 120


def shade_picture(shade: int) -> npt.NDArray[np.uint8]:
    rgb = np.zeros((PH, PW, 3), dtype=np.uint8)
    rgb[..., 0] = shade
    rgb[..., 1] = np.linspace(0, 255, PW, dtype=np.uint8)
    return rgb


async def test_two_peers_negotiate_vp9_and_decode_video_both_ways() -> None:
    config = TransportConfig()  # VP9 is the default video codec
    assert config.video_codec is VideoCodec.VP9
    options = PeerOptions(video_fps=15.0)
    async with wired_pair(config=config, media=("video",), options=options) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        await a.send_video(shade_picture(60))
        await b.send_video(shade_picture(200))

        async def collect(peer: PeerConnection, out: list[ReceivedMedia]) -> None:
            with trio.fail_after(20):
                while sum(isinstance(x, ReceivedVideo) for x in out) < 10:
                    out.append(await peer.received.receive())

        got_a: list[ReceivedMedia] = []
        got_b: list[ReceivedMedia] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, a, got_a)
            inner.start_soon(collect, b, got_b)

        for got, shade in ((got_b, 60), (got_a, 200)):
            video = [x for x in got if isinstance(x, ReceivedVideo)]
            assert [(v.frame.width, v.frame.height) for v in video] == [(PW, PH)] * len(video)
            red = video[-1].frame.to_ndarray(format="rgb24")[..., 0].astype(float)
            assert abs(red.mean() - shade) < 12, red.mean()
        for peer in (a, b):
            assert peer.codecs == {FrameType.VIDEO: "video/VP9"}
            assert peer.stats.video_decode_errors == 0

        await a.aclose()
        await b.aclose()


def test_default_max_payload_size_fits_a_1280_byte_path() -> None:
    # RTP header 12 + header extensions (mid, abs-send-time) 12 + SRTP tag 16 + UDP 8 + IPv6 40.
    assert DEFAULT_MAX_PAYLOAD_SIZE + 12 + 12 + 16 + 8 + 40 <= 1280


async def test_vp9_recovers_from_loss_with_keyframe_requests() -> None:
    """15 % of bob's incoming video packets dropped: the jitter buffer (VP9 keyframe detector)
    drops what cannot be decoded, asks for keyframes, and decoding resumes without errors."""
    impair = {FrameType.VIDEO: ImpairmentConfig(seed=5, drop=0.15)}
    config = TransportConfig()  # VP9 is the default video codec
    options = PeerOptions(video_fps=15.0)
    async with wired_pair(
        config=config, media=("video",), options=options, b_impairments=impair
    ) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await b.wait_state("Connected")
        video: list[ReceivedVideo] = []
        at_first_request: int | None = None
        with trio.fail_after(30):
            while at_first_request is None or len(video) < at_first_request + 5:
                await a.send_video(moving_picture(len(video)).to_ndarray(format="rgb24"))
                item = await b.received.receive()
                if isinstance(item, ReceivedVideo):
                    video.append(item)
                if at_first_request is None and b.stats.keyframe_requests >= 1:
                    at_first_request = len(video)
        assert b.codecs == {FrameType.VIDEO: "video/VP9"}
        assert all((v.frame.width, v.frame.height) == (320, 240) for v in video)
        assert b.stats.video_decode_errors == 0
        await a.aclose()
        await b.aclose()
