"""Keyframe detectors on hand-built RTP payloads (RFC 7741, RFC 9628, RFC 6184)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrtc.errors import ConfigError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.keyframe import (
    KeyframePolicy,
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


# --- KeyframePolicy (sans-IO: the time is passed in) --------------------------------------------


def test_a_loss_sends_one_pli_and_a_burst_of_reasons_does_not_storm() -> None:
    policy = KeyframePolicy(min_interval=0.3, retry_interval=1.0)
    assert policy.need(10.0)  # the jitter buffer's KeyframeRequest: a PLI now
    assert policy.wanted_since == 10.0
    # More reasons right after (decode failures, backlog drops): no second PLI within the interval.
    assert not policy.need(10.05)
    assert not policy.decoded(10.1, pictures=0, errors=1, keyframe=False, number=0)
    assert not policy.backlog_full(10.2)
    assert not policy.poll(10.29)
    assert policy.requests == 1
    assert policy.wanted_since == 10.0  # since the first reason, not the latest


def test_an_unanswered_request_is_repeated_after_the_retry_interval() -> None:
    policy = KeyframePolicy(min_interval=0.3, retry_interval=1.0)
    assert policy.need(0.0)
    assert not policy.poll(0.5)
    assert not policy.poll(0.999)
    assert policy.poll(1.0)
    assert not policy.poll(1.5)
    assert policy.poll(2.0)
    assert policy.requests == 3


def test_a_decoded_picture_satisfies_the_request() -> None:
    policy = KeyframePolicy()
    assert policy.need(0.0)
    answer = policy.submitted()
    assert not policy.decoded(0.1, pictures=1, errors=0, keyframe=True, number=answer)
    assert policy.wanted_since is None
    assert not any(policy.poll(t) for t in (1.0, 2.0, 5.0, 60.0))
    assert policy.requests == 1


def test_a_picture_of_a_frame_already_in_the_decoder_does_not_end_the_retries() -> None:
    """The jitter buffer lost a frame and asked once; frames released before the loss (a keyframe
    among them) come out of the decode thread as pictures; the keyframe the PLI brought was itself
    lost. The request goes on being repeated until a keyframe submitted after it is decoded (the
    buffer drops every frame until one comes and never asks again): the five-peer mesh test froze
    one pair's video for 30 s."""
    policy = KeyframePolicy(min_interval=0.3, retry_interval=1.0)
    in_flight = [policy.submitted(), policy.submitted()]  # a keyframe, then a delta frame
    assert policy.need(0.0)
    assert not policy.decoded(0.05, pictures=1, errors=0, keyframe=True, number=in_flight[0])
    assert not policy.decoded(0.1, pictures=1, errors=0, keyframe=False, number=in_flight[1])
    assert policy.wanted_since == 0.0
    assert policy.poll(1.0)
    # A repeat is not a new reason: a keyframe submitted before it still answers.
    answer = policy.submitted()
    assert policy.poll(2.0)
    assert not policy.decoded(2.1, pictures=1, errors=0, keyframe=True, number=answer)
    assert policy.wanted_since is None
    assert not policy.poll(3.1)
    assert policy.requests == 3


def test_a_broken_decoder_asks_until_it_produces_a_picture() -> None:
    policy = KeyframePolicy(min_interval=0.3, retry_interval=1.0)
    assert policy.decoded(0.0, pictures=0, errors=1, keyframe=False, number=policy.submitted())
    # Picture-less results after the failure keep asking (at most every min_interval).
    assert not policy.decoded(0.1, pictures=0, errors=0, keyframe=False, number=policy.submitted())
    assert policy.decoded(0.4, pictures=0, errors=0, keyframe=False, number=policy.submitted())
    assert not policy.decoded(0.8, pictures=1, errors=0, keyframe=True, number=policy.submitted())
    # Healthy again: an empty result is fine.
    assert not policy.decoded(1.5, pictures=0, errors=0, keyframe=False, number=policy.submitted())
    assert policy.requests == 2


def test_after_a_backlog_drop_frames_are_skipped_until_a_keyframe() -> None:
    policy = KeyframePolicy()
    assert policy.admit(keyframe=False, recognisable=True)
    assert policy.backlog_full(0.0)
    assert policy.skipping
    assert not policy.admit(keyframe=False, recognisable=True)
    assert policy.admit(keyframe=False, recognisable=False)  # cannot tell keyframes: never skip
    assert policy.admit(keyframe=True, recognisable=True)
    policy.submitted()
    assert not policy.skipping
    assert policy.admit(keyframe=False, recognisable=True)


def test_policy_intervals_are_checked() -> None:
    with pytest.raises(ConfigError):
        KeyframePolicy(min_interval=0.0)
    with pytest.raises(ConfigError):
        KeyframePolicy(min_interval=2.0, retry_interval=1.0)


_EVENTS = st.lists(
    st.tuples(
        st.floats(0.0, 0.5),  # time step
        st.sampled_from(
            ["need", "poll", "backlog", "picture", "keyframe", "stale keyframe", "error", "empty"]
        ),
    ),
    max_size=200,
)


@given(events=_EVENTS)
def test_policy_invariants_over_any_event_order(events: list[tuple[float, str]]) -> None:
    """PLIs are never closer than min_interval; while a keyframe is wanted and the loop keeps
    polling, the next PLI comes within retry_interval (plus one poll step); a satisfied policy that
    sees no new reason never sends; a keyframe submitted before the latest reason (number 0: before
    any) answers nothing, one submitted just now answers."""
    policy = KeyframePolicy(min_interval=0.3, retry_interval=1.0)
    now = 0.0
    sent: list[float] = []
    last_reason_or_pli: float | None = None
    for step, event in events:
        now += step
        if event == "need":
            pli = policy.need(now)
        elif event == "poll":
            pli = policy.poll(now)
        elif event == "backlog":
            pli = policy.backlog_full(now)
        elif event == "stale keyframe":
            wanted = policy.wanted_since
            pli = policy.decoded(now, pictures=1, errors=0, keyframe=True, number=0)
            assert policy.wanted_since == wanted
        else:
            errors = int(event == "error")
            pictures = int(event in ("picture", "keyframe"))
            number = policy.submitted()
            pli = policy.decoded(
                now, pictures=pictures, errors=errors, keyframe=event == "keyframe", number=number
            )
        if pli:
            sent.append(now)
        if event == "poll" and policy.wanted_since is not None and last_reason_or_pli is not None:
            assert now - sent[-1] < policy.retry_interval or pli
        if event in ("need", "backlog", "error") or pli:
            last_reason_or_pli = now
        if event == "keyframe":
            last_reason_or_pli = None
            assert policy.wanted_since is None
            assert not policy.poll(now + 1e6)  # nothing wanted: no retry, however late
    assert all(b - a >= policy.min_interval for a, b in itertools.pairwise(sent))
    assert policy.requests == len(sent)
