"""RTCP report records as the media core sees them (RFC 3550 sections 6.4.1 and 6.4.2).

The rtc adapter copies these fields out of aiortc's packets; the sync and quality code consumes them.
Times on the receiver's side (``received_at``) are seconds on its monotonic clock; NTP timestamps are
the sender's 64-bit wall clock (32.32 fixed point, seconds since 1900).
"""

from __future__ import annotations

import attrs

__all__ = ["NTP_EPOCH_OFFSET", "ReceptionReport", "SenderReport", "ntp_to_seconds"]

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_EPOCH_OFFSET = 2_208_988_800


def ntp_to_seconds(ntp: int) -> float:
    """64-bit NTP timestamp -> seconds since 1900 as a float (sub-microsecond resolution kept)."""
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 4294967296.0


@attrs.frozen(slots=True)
class SenderReport:
    """One RTCP Sender Report: ties the sender's RTP clock of ``ssrc`` to its wall clock."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    received_at: float

    @property
    def ntp_seconds(self) -> float:
        return ntp_to_seconds(self.ntp_timestamp)

    @property
    def middle_ntp(self) -> int:
        """The middle 32 bits of the NTP timestamp: what a reception report echoes as LSR."""
        return (self.ntp_timestamp >> 16) & 0xFFFFFFFF


@attrs.frozen(slots=True)
class ReceptionReport:
    """One report block about a stream *we send*, from the remote receiver (RR or SR block)."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int
    received_at: float
