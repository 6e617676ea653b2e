"""The control protocol over a trio socket: frames out, messages in (both sides use it).

The one place that moves control bytes, so the supervisor and the worker cannot disagree on framing.
Sends are serialised by a lock (a frame must never interleave with another), receives are owned by
one task (trio's stream raises if two tasks receive at once, which is the check we want).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Collection

import trio

from meshrtc.host.control import (
    DEFAULT_MAX_FRAME,
    ControlProtocolError,
    FrameDecoder,
    Message,
    encode,
)

__all__ = ["ControlChannel"]

_RECEIVE_SIZE = 65536


class ControlChannel:
    """One end of a control socketpair. ``receive()`` returns None once the peer closed its end."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        accept: Collection[str],
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.max_frame = max_frame
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._decoder = FrameDecoder(max_frame=max_frame, accept=accept)
        self._pending: deque[Message] = deque()
        self._send_lock = trio.Lock()
        self._at_eof = False
        self._error: ControlProtocolError | None = None

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message, max_frame=self.max_frame))

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are: for whole frames from :func:`encode` (and tests that corrupt one)."""
        async with self._send_lock:
            await self._stream.send_all(data)

    async def receive(self) -> Message | None:
        """The next message; None at a clean end of stream.

        Raises ControlProtocolError once the messages before the bad frame were returned.
        """
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self._at_eof:
                return None
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            try:
                if not data:
                    self._at_eof = True
                    self._decoder.eof()
                    return None
                self._pending.extend(self._decoder.feed(data))
            except ControlProtocolError as exc:
                self._pending.extend(exc.decoded)
                self._error = exc
        return self._pending.popleft()

    async def aclose(self) -> None:
        await self._stream.aclose()
