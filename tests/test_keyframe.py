"""Keyframe detectors on hand-built RTP payloads (RFC 7741, RFC 9628, RFC 6184)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrtc.errors import ConfigError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.keyframe import (
    h264_is_keyframe,
    is_keyframe_for,
    vp8_is_keyframe,
    vp9_is_keyframe,
)

# --- VP8 (RFC 7741) ------------------------------------------------------------------------------
# Descriptor byte 0: |X|R|N|S|R|PID(3)|; X adds |I|L|T|K|RSV|, then PictureID (M bit: 15 bits),
# TL0PICIDX (L), TID/Y/KEYIDX (T or K). The VP8 payload header's first byte ends in the P bit.
VP8_KEY_HEADER = 0x9C  # size bits, show_frame, version 0 ... P=0
VP8_DELTA_HEADER = 0x9D  # ... P=1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x10, VP8_KEY_HEADER, 0x01, 0x2A]), True),  # S=1, PID=0, no extension
        (bytes([0x10, VP8_DELTA_HEADER, 0x01]), False),  # P=1: interframe
        (bytes([0x00, VP8_KEY_HEADER]), False),  # S=0: continuation of a partition
        (bytes([0x11, VP8_KEY_HEADER]), False),  # PID=1: not the first partition
        (bytes([0x90, 0x80, 0x05, VP8_KEY_HEADER]), True),  # X, I with a 7-bit PictureID
        (bytes([0x90, 0x80, 0x85, 0x01, VP8_KEY_HEADER]), True),  # 15-bit PictureID (M=1)
        (bytes([0x90, 0x80, 0x85, 0x01, VP8_DELTA_HEADER]), False),
        (bytes([0x90, 0xE0, 0x85, 0x01, 0x07, 0x40, VP8_KEY_HEADER]), True),  # I, L, T
        (bytes([0x90, 0xE0, 0x85, 0x01, 0x07, 0x40, VP8_DELTA_HEADER]), False),
        (bytes([0x90, 0x10, 0x20, VP8_KEY_HEADER]), True),  # K alone: one KEYIDX byte
        (bytes([0x90, 0x40, 0x07, VP8_DELTA_HEADER]), False),  # L alone
        (b"", False),
        (bytes([0x10]), False),  # no VP8 header at all
        (bytes([0x90]), False),  # X set, extension byte missing
        (bytes([0x90, 0x80]), False),  # I set, PictureID missing
        (bytes([0x90, 0x80, 0x85, 0x01]), False),  # ends before the VP8 header
    ],
)
def test_vp8(payload: bytes, expected: bool) -> None:
    assert vp8_is_keyframe(payload) is expected
    assert vp8_is_keyframe(memoryview(payload)) is expected


# --- VP9 (RFC 9628) ------------------------------------------------------------------------------
# Byte 0: |I|P|L|F|B|E|V|Z|; I adds a 7- or 15-bit PictureID; L adds |TID(3)|U|SID(3)|D|.
I, P, L, F, B, E, V, Z = (0x80 >> k for k in range(8))  # noqa: E741 (the RFC's names)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([B | E]), True),  # one-packet keyframe, no optional fields
        (bytes([B]), True),  # first packet of a multi-packet keyframe
        (bytes([E]), False),  # last packet (B clear): not a frame start
        (bytes([P | B | E]), False),  # inter-predicted
        (bytes([I | B | V, 0x12, 0x00]), True),  # 7-bit PictureID, then a one-layer SS
        (bytes([I | B | V, 0x12, 0xAA]), False),  # SS says G=1 but N_G is missing: malformed
        (bytes([I | B, 0x81, 0x23]), True),  # 15-bit PictureID
        (bytes([I | P | B, 0x81, 0x23]), False),
        (bytes([I | L | B, 0x81, 0x23, 0b000_0_000_0, 0x00]), True),  # SID 0
        (bytes([I | L | B, 0x05, 0b001_0_001_1, 0x00]), False),  # SID 1: not the base layer
        (bytes([L | B | F, 0b000_1_000_0]), True),  # flexible mode, SID 0
        (b"", False),
        (bytes([I | B]), False),  # PictureID missing
        (bytes([I | B, 0x81]), False),  # 15-bit PictureID cut short
        (bytes([I | L | B, 0x81, 0x23]), False),  # layer indices missing
    ],
)
def test_vp9(payload: bytes, expected: bool) -> None:
    assert vp9_is_keyframe(payload) is expected
    assert vp9_is_keyframe(memoryview(payload)) is expected


# --- H.264 (RFC 6184) ----------------------------------------------------------------------------
def nal(kind: int, nri: int = 3) -> int:
    return (nri << 5) | kind


def stap_a(*units: bytes) -> bytes:
    body = b"".join(len(u).to_bytes(2, "big") + u for u in units)
    return bytes([nal(24)]) + body


def fu_a(kind: int, *, start: bool) -> bytes:
    return bytes([nal(28), (0x80 if start else 0) | kind, 0x11, 0x22])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([nal(5), 0x88, 0x84]), True),  # IDR slice
        (bytes([nal(7), 0x42, 0x00, 0x1F]), True),  # SPS
        (bytes([nal(8), 0xCE]), False),  # PPS alone
        (bytes([nal(1, 2), 0x9A]), False),  # non-IDR slice
        (stap_a(bytes([nal(7), 0x42, 0x00]), bytes([nal(8), 0xCE])), True),  # SPS + PPS
        (stap_a(bytes([nal(6), 0x05]), bytes([nal(5), 0x88])), True),  # SEI + IDR
        (stap_a(bytes([nal(6), 0x05]), bytes([nal(1), 0x9A])), False),
        (bytes([nal(24), 0x00, 0x09, nal(7)]), False),  # STAP-A unit runs past the end
        (bytes([nal(24), 0x00, 0x00, nal(7)]), False),  # zero-length unit
        (fu_a(5, start=True), True),  # first fragment of an IDR
        (fu_a(5, start=False), False),  # later fragment: not a frame start
        (fu_a(1, start=True), False),
        (bytes([nal(28)]), False),  # FU header missing
        (b"", False),
    ],
)
def test_h264(payload: bytes, expected: bool) -> None:
    assert h264_is_keyframe(payload) is expected
    assert h264_is_keyframe(memoryview(payload)) is expected


@given(st.binary(max_size=24))
def test_detectors_never_raise(payload: bytes) -> None:
    for detector in (vp8_is_keyframe, vp9_is_keyframe, h264_is_keyframe):
        assert detector(payload) in (True, False)


def test_is_keyframe_for_reads_the_frame_payload() -> None:
    key = MediaFrame(FrameType.VIDEO, 0, 1, bytes([B | E]), 0.0, True)
    delta = MediaFrame(FrameType.VIDEO, 0, 2, bytes([P | B | E]), 0.0, True)
    detect = is_keyframe_for("vp9")
    assert detect(key)
    assert not detect(delta)
    assert is_keyframe_for("H264")(MediaFrame(FrameType.VIDEO, 0, 1, bytes([nal(5)]), 0.0))


def test_is_keyframe_for_unknown_codec() -> None:
    with pytest.raises(ConfigError, match="AV1"):
        is_keyframe_for("AV1")
