from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.seq import SequenceUnwrapper, TimestampUnwrapper, seq_diff, seq_lt, ts_diff

seqs = st.integers(0, 0xFFFF)


def test_wraparound_examples() -> None:
    assert seq_diff(0, 0xFFFF) == 1
    assert seq_diff(0xFFFF, 0) == -1
    assert seq_lt(0xFFFE, 3)
    assert not seq_lt(3, 0xFFFE)
    assert seq_diff(0x8000, 0) == -0x8000
    assert ts_diff(5, 0xFFFFFFFB) == 10


@given(seqs, st.integers(-0x7FFF, 0x7FFF))
def test_seq_diff_inverts_addition(a: int, delta: int) -> None:
    b = (a + delta) & 0xFFFF
    assert seq_diff(b, a) == delta
    assert seq_lt(a, b) == (delta > 0)


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_inverts_addition(a: int, delta: int) -> None:
    assert ts_diff((a + delta) & 0xFFFFFFFF, a) == delta


@given(start=st.integers(0xFF00, 0xFFFF), steps=st.lists(st.integers(-100, 300), max_size=200))
def test_unwrapper_recovers_the_true_sequence(start: int, steps: list[int]) -> None:
    """Any walk whose jumps stay under half the circle unwraps exactly, across 0xFFFF -> 0."""
    unwrapper = SequenceUnwrapper()
    true = start
    assert unwrapper.unwrap(true & 0xFFFF) == true
    newest = true
    for step in steps:
        candidate = true + step
        if abs(candidate - newest) >= 0x8000:
            continue
        true = candidate
        newest = max(newest, true)
        assert unwrapper.unwrap(true & 0xFFFF) == true


def test_timestamp_unwrapper_crosses_32_bits() -> None:
    u = TimestampUnwrapper()
    assert u.unwrap(0xFFFFFF00) == 0xFFFFFF00
    assert u.unwrap(0x100) == 0x1_0000_0100
    assert u.unwrap(0xFFFFFFF0) == 0xFFFFFFF0
    u.reset()
    assert u.unwrap(7) == 7


def test_media_frame_keeps_payload_without_copy() -> None:
    buf = bytearray(b"\x01\x02\x03\x04")
    view = memoryview(buf)[1:]
    frame = MediaFrame(FrameType.AUDIO, 960, 65535, view, 1.5, True, 0xDEADBEEF)
    assert frame.payload is view
    assert frame.clock_rate == 48_000
    assert "3 bytes" in repr(frame)


@pytest.mark.parametrize(
    ("field", "value"), [("sequence_number", 65536), ("rtp_timestamp", -1), ("ssrc", 2**32)]
)
def test_media_frame_rejects_out_of_range_fields(field: str, value: int) -> None:
    kwargs = {"sequence_number": 0, "rtp_timestamp": 0, "ssrc": 0, field: value}
    with pytest.raises(ValueError, match=field):
        MediaFrame(FrameType.VIDEO, payload=b"", received_at=0.0, **kwargs)
