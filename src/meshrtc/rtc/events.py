"""What a PeerConnection hands to the media pipeline: decoded media and data, stamped on arrival.

``sender_time`` is the sender's capture time when A/V sync can map it (a Sender Report has been
seen), else ``None``; ``local_time`` is when the item was played out here (monotonic seconds), so a
consumer can measure its own delay without knowing RTP.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs
import av
import numpy as np
import numpy.typing as npt

__all__ = ["ReceivedAudio", "ReceivedData", "ReceivedMedia", "ReceivedVideo"]


@attrs.frozen(eq=False)
class ReceivedAudio:
    """Decoded (or concealed) audio: float32 samples shaped ``(frames, channels)`` at 48 kHz."""

    peer_id: str
    samples: npt.NDArray[np.float32]
    sample_rate: int
    channels: int
    sender_time: float | None
    local_time: float
    #: True when the samples stand in for lost packets rather than decoded ones.
    concealed: bool = False


@attrs.frozen(eq=False)
class ReceivedVideo:
    """One decoded picture."""

    peer_id: str
    frame: av.VideoFrame
    sender_time: float | None
    local_time: float


@attrs.frozen
class ReceivedData:
    """One data channel message, as sent (text stays ``str``, binary stays ``bytes``)."""

    peer_id: str
    data: bytes | str
    local_time: float


ReceivedMedia: TypeAlias = ReceivedAudio | ReceivedVideo | ReceivedData
