"""How a SignalingClient talks to a hub: a WebSocket, or a privileged link inside the server process.

:class:`SignalingLink` is the part of trio-websocket's ``WebSocketConnection`` the client uses
(send, receive, ping, close; :class:`~trio_websocket.ConnectionClosed` when it is gone), so the
client runs the same code over either. :class:`LocalLink` is the in-process one that
``meshrtc serve`` gives its own transport (:meth:`SignalingServer.connect_local`): messages go
straight into the hub and come back through an unbounded memory channel, so no member can make the
transport a "slow consumer", and no WebSocket client can take its reserved id (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio
from trio_websocket import CloseReason, ConnectionClosed

__all__ = ["LocalLink", "SignalingLink"]


class SignalingLink(Protocol):
    """One open connection to a signaling hub (``WebSocketConnection`` is one)."""

    async def send_message(self, message: str) -> None: ...

    async def get_message(self) -> str | bytes: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalLink:
    """A privileged in-process connection to a :class:`SignalingServer`'s hub.

    ``deliver`` hands one message to the hub (synchronously, as the server's read loop would);
    ``delivered`` tells the hub a relayed message left the queue (it frees its sender's budget);
    ``close`` makes the hub forget the connection. Built by ``SignalingServer.connect_local``.
    """

    def __init__(
        self,
        inbox: trio.MemoryReceiveChannel[tuple[int | None, str]],
        *,
        deliver: Callable[[str], None],
        delivered: Callable[[int], None],
        close: Callable[[], None],
    ) -> None:
        self._inbox = inbox
        self._deliver = deliver
        self._delivered = delivered
        self._close = close
        self._reason: CloseReason | None = None

    @property
    def closed(self) -> bool:
        return self._reason is not None

    def ended(self, code: int, message: str) -> None:
        """The server ended the link (shutdown): reads drain what is queued, then raise."""
        if self._reason is None:
            self._reason = CloseReason(code, message or None)

    def _check(self) -> None:
        if self._reason is not None:
            raise ConnectionClosed(self._reason)

    async def send_message(self, message: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        self._deliver(message)

    async def get_message(self) -> str:
        try:
            sender, text = await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.ended(1000, "")
            raise ConnectionClosed(self._reason) from None
        if sender is not None:
            self._delivered(sender)
        return text

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check()

    async def aclose(self) -> None:
        self.ended(1000, "")
        self._close()
        self._inbox.close()
        await trio.lowlevel.checkpoint()
