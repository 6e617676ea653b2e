"""A member that may listen but not publish, as a session's pipeline sees it.

The transport drops every RTP packet of a member whose token lacks ``publish`` on arrival
(``PeerConnection.receive_media``), so such a member would be absent from the pipeline: and
MixMinus sends its mix only to peers whose frames it sees, so a listener would hear nothing.
:class:`ListenerFeed` stands in for the member's ``received`` channel: its data messages as they
come (the ``data`` grant is separate), and between them one 20 ms frame of silence per slot, on
the monotonic timeline the router grids. The pipeline then knows the member is there and mixes
for it, and nothing the member sends reaches anyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import numpy as np
import trio

from meshrtc.rtc.events import ReceivedAudio, ReceivedMedia

__all__ = ["ListenerFeed"]

#: One frame of the live audio path: 20 ms at 48 kHz, stereo (what the receive path delivers).
FRAME_SECONDS: Final = 0.02
SAMPLE_RATE: Final = 48_000
CHANNELS: Final = 2
#: After a stall, slots older than this are skipped rather than sent in a burst.
MAX_CATCH_UP: Final = 0.1


class ListenerFeed(trio.abc.ReceiveChannel[ReceivedMedia]):
    """``received``'s items (data only, for a member that may not publish), and silence between.

    Ends when ``received`` ends (the member's connection closed).
    """

    def __init__(
        self,
        peer_id: str,
        received: trio.MemoryReceiveChannel[ReceivedMedia],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peer_id = peer_id
        self._received = received
        self._clock = clock
        self._next: float | None = None
        self._silence = np.zeros((int(SAMPLE_RATE * FRAME_SECONDS), CHANNELS), dtype=np.float32)
        self._silence.flags.writeable = False
        #: Silent frames handed out so far.
        self.silent_frames = 0

    async def receive(self) -> ReceivedMedia:
        while True:
            try:
                return self._received.receive_nowait()
            except trio.WouldBlock:
                pass
            now = self._clock()
            if self._next is None or self._next <= now:
                slot = now if self._next is None else max(self._next, now - MAX_CATCH_UP)
                self._next = slot + FRAME_SECONDS
                self.silent_frames += 1
                return ReceivedAudio(self.peer_id, self._silence, SAMPLE_RATE, CHANNELS, None, slot)
            with trio.move_on_after(self._next - now):
                return await self._received.receive()

    async def aclose(self) -> None:
        await self._received.aclose()
