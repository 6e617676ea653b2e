"""RTP sequence-number and timestamp arithmetic across wraparound (RFC 3550).

16-bit sequence numbers wrap every 65536 packets (about 22 minutes of 50 packet/s audio, seconds of
video at high rates) and 32-bit timestamps every ~13 h at 90 kHz; every comparison in meshrtc goes
through these helpers so that "newer" stays correct across 0xFFFF -> 0x0000.
"""

from __future__ import annotations

__all__ = [
    "SEQ_MOD",
    "TS_MOD",
    "SequenceUnwrapper",
    "TimestampUnwrapper",
    "seq_diff",
    "seq_lt",
    "ts_diff",
]

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
_SEQ_HALF = SEQ_MOD >> 1
_TS_HALF = TS_MOD >> 1


def seq_diff(a: int, b: int) -> int:
    """``a - b`` on the 16-bit circle, in [-32768, 32767]: positive when ``a`` is newer."""
    return ((a - b + _SEQ_HALF) & 0xFFFF) - _SEQ_HALF


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes before ``b`` on the 16-bit circle."""
    return seq_diff(a, b) < 0


def ts_diff(a: int, b: int) -> int:
    """``a - b`` on the 32-bit timestamp circle, in [-2**31, 2**31 - 1]."""
    return ((a - b + _TS_HALF) & 0xFFFFFFFF) - _TS_HALF


class SequenceUnwrapper:
    """Maps 16-bit sequence numbers to extended (unbounded) integers.

    Each value is placed nearest to the last one seen, so late or reordered packets from before a wrap
    unwrap to values below the newest; the first value maps to itself.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        last = self._last
        if last is None:
            self._last = seq
            return seq
        ext = last + seq_diff(seq, last & 0xFFFF)
        if ext > last:
            self._last = ext
        return ext

    def reset(self) -> None:
        self._last = None


class TimestampUnwrapper:
    """Maps 32-bit RTP timestamps to extended integers, like :class:`SequenceUnwrapper`."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, ts: int) -> int:
        last = self._last
        if last is None:
            self._last = ts
            return ts
        ext = last + ts_diff(ts, last & 0xFFFFFFFF)
        if ext > last:
            self._last = ext
        return ext

    def reset(self) -> None:
        self._last = None
