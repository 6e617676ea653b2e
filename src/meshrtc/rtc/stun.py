"""An embedded STUN binding responder (RFC 5389 Binding Success with XOR-MAPPED-ADDRESS).

The spec requires at least one STUN server, and aiortc waits 5 s for one that does not answer before
its SDP is ready. Demos and tests therefore run this responder on loopback and point the config's
STUN URL at it, so gathering finishes in milliseconds without any outside network.

:class:`StunResponder` is sans-IO (datagram in, datagram out); :class:`StunServer` is the trio UDP
loop around it. The message codec is aioice's, which aiortc already depends on.
"""

from __future__ import annotations

import logging

import attrs
import trio
from aioice import stun

__all__ = ["StunResponder", "StunServer"]

log = logging.getLogger(__name__)

#: Larger datagrams are not STUN requests we answer (a Binding Request is ~20-100 bytes).
MAX_DATAGRAM = 1500


@attrs.define
class StunResponder:
    """Answers Binding Requests; ignores everything else, counting it."""

    answered: int = 0
    ignored: int = 0

    def respond(self, datagram: bytes, addr: tuple[str, int]) -> bytes | None:
        if len(datagram) > MAX_DATAGRAM:
            self.ignored += 1
            return None
        try:
            request = stun.parse_message(datagram)
        except ValueError:
            self.ignored += 1
            return None
        if (
            request.message_method != stun.Method.BINDING
            or request.message_class != stun.Class.REQUEST
        ):
            self.ignored += 1
            return None
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
        response.attributes["SOFTWARE"] = "meshrtc"
        response.add_fingerprint()
        self.answered += 1
        return bytes(response)


@attrs.define
class StunServer:
    """UDP STUN binding server; ``await nursery.start(server.run)`` returns once bound.

    ``port=0`` picks a free port; the bound one is in :attr:`port` (and :attr:`url`) after start.
    """

    host: str = "127.0.0.1"
    port: int = 0
    responder: StunResponder = attrs.field(factory=StunResponder)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"stun:{host}:{self.port}"

    async def run(
        self, *, task_status: trio.TaskStatus[StunServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        family = trio.socket.AF_INET6 if ":" in self.host else trio.socket.AF_INET
        with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            log.info("STUN responder on %s", self.url)
            task_status.started(self)
            while True:
                datagram, addr = await sock.recvfrom(MAX_DATAGRAM + 1)
                reply = self.responder.respond(datagram, addr)
                if reply is not None:
                    try:
                        await sock.sendto(reply, addr)
                    except OSError as exc:  # an unreachable peer must not stop the server
                        log.debug("STUN reply to %s failed: %s", addr, exc)
