"""MediaFrame: one RTP packet's worth of media and its metadata (docs/architecture.md)."""

from __future__ import annotations

import enum

import attrs

__all__ = ["CLOCK_RATES", "FrameType", "MediaFrame"]


class FrameType(enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"


#: The only RTP clock rates meshrtc accepts: Opus at 48 kHz (RFC 7587), video at 90 kHz.
CLOCK_RATES = {FrameType.AUDIO: 48_000, FrameType.VIDEO: 90_000}


@attrs.frozen(slots=True)
class MediaFrame:
    """An RTP packet's media as the jitter buffer sees it.

    ``payload`` is kept as given (``bytes`` or a ``memoryview`` into the receive buffer): the media
    path never copies it before the decoder (media moves by reference). ``received_at`` is on the receiver's
    monotonic clock, in seconds.
    """

    frame_type: FrameType
    rtp_timestamp: int
    sequence_number: int
    payload: bytes | memoryview = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    received_at: float
    marker_bit: bool = False
    ssrc: int = 0
    payload_type: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.sequence_number <= 0xFFFF:
            raise ValueError(f"sequence_number {self.sequence_number} is not 16-bit")
        if not 0 <= self.rtp_timestamp <= 0xFFFFFFFF:
            raise ValueError(f"rtp_timestamp {self.rtp_timestamp} is not 32-bit")
        if not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc {self.ssrc} is not 32-bit")

    @property
    def clock_rate(self) -> int:
        return CLOCK_RATES[self.frame_type]
