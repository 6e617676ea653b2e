"""What a PeerConnection hands to the media pipeline: decoded media and data, stamped in time.

``sender_time`` is the sender's wall clock at capture (Unix seconds, from the RTCP Sender Report
mapping of that stream) once A/V sync has a mapping, else ``None``; ``local_time`` is when the item
is presented here (monotonic seconds, the SyncManager's common timeline), so a consumer can measure
its own delay and line peers up without knowing RTP.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

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
    #: True when the samples stand in for a lost packet rather than decoded ones.
    concealed: bool = False
    #: The RTP timestamp the samples start at (the sender's 48 kHz clock); for ordering checks.
    rtp_timestamp: int | None = None
    #: When its packet arrived here (monotonic seconds; ``None`` when concealed): with the time an
    #: output leaves, it gives the delay this process adds, jitter buffer included.
    received_at: float | None = None


@attrs.frozen(eq=False)
class ReceivedVideo:
    """One decoded picture."""

    peer_id: str
    frame: av.VideoFrame
    sender_time: float | None
    local_time: float
    #: The RTP timestamp of the frame (90 kHz sender clock).
    rtp_timestamp: int | None = None


@attrs.frozen
class ReceivedData:
    """One data channel message, as sent (text stays ``str``, binary stays ``bytes``)."""

    peer_id: str
    data: bytes | str
    local_time: float

    def json(self) -> Any:
        """The message parsed as JSON (what ``PeerConnection.send_data`` makes of a non-text value)."""
        return json.loads(self.data)


ReceivedMedia: TypeAlias = ReceivedAudio | ReceivedVideo | ReceivedData
