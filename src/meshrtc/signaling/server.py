"""The signaling server that ships with meshrtc (``meshrtc signal``), embeddable in any trio program.

Two halves. :class:`SignalingHub` is the whole server logic as a plain synchronous object: it takes
what a connection sent and returns what to send to whom, so session isolation, forwarding and every
error code are tested without a socket. :class:`SignalingServer` moves bytes for it over
trio-websocket 0.12.2 and works around that version's sharp edges:

- an exception escaping a connection handler would tear down the whole server, so every connection
  runs inside a catch-all that logs;
- after a server-initiated close the library does not close the TCP stream, so we own the stream
  and always close it ourselves;
- there is no keepalive, so each connection pings in a loop under ``trio.fail_after``;
- a message larger than ``max_message_size`` closes the connection with 1009; the peer then leaves;
- ``get_message()`` is always being awaited, or pings would stop being answered.

The server reads the HTTP request head itself before handing a WebSocket upgrade to trio-websocket
(:func:`trio_websocket.wrap_server_stream` over a stream that replays the head). That is what lets a
plain ``GET`` be answered by an optional :data:`HttpHandler` on the same port (the demo page).

With an ``ssl_context`` the same port speaks TLS (``wss://`` and ``https://``). The connection caps
are counted at accept, before the handshake, because a handshake costs CPU; the handshake is bounded
by ``handshake_timeout`` so a client that never finishes one gives its slot back; a failed one is a
single debug line with the client address. Plain HTTP sent to the TLS port gets a plain 400 saying
so (a ``ws://`` URL pointed at a ``wss://`` server then fails with a reason, not a hang).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import itertools
import logging
import math
import resource
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeAlias
from urllib.parse import parse_qs, urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from meshrtc.config import MAX_PEERS_LIMIT
from meshrtc.errors import ConfigError
from meshrtc.signaling.auth import AuthError, Claims, FailedTokenThrottle, Grant, TokenAuthority
from meshrtc.signaling.limits import ConnectionCounter, FloodGuard, Verdict, connection_budget
from meshrtc.signaling.link import LocalLink
from meshrtc.signaling.protocol import (
    CLIENT_METHODS,
    DEFAULT_RESUME_GRACE,
    MAX_MESSAGE_SIZE,
    Announce,
    AnnounceResult,
    Answer,
    Capability,
    ClientParams,
    Disconnect,
    ErrorCode,
    IceCandidate,
    LeaveReason,
    ListPeers,
    Method,
    Notification,
    Offer,
    PeerErrorNotice,
    PeerInfo,
    PeerLeft,
    Request,
    Response,
    SignalingError,
    encode,
    parse_client_message,
    parse_params,
)

__all__ = [
    "Close",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "Send",
    "SignalingHub",
    "SignalingServer",
]

log = logging.getLogger(__name__)

WEBSOCKET_PATHS: Final = ("/ws", "/")
MAX_HTTP_HEAD: Final = 16 * 1024
#: Where a server with a ``metrics`` source serves it (Prometheus text; docs/host.md, "Metrics").
METRICS_PATH: Final = "/metrics"
#: The ``session`` claim of an operator token (``meshrtc token --session '*'``): not a valid session
#: id (``PEER_ID_PATTERN``), so such a token admits to ``/metrics`` but can join no session, and no
#: member token can read ``/metrics``.
OPERATOR_SESSION: Final = "*"


# --- The hub: all server logic, no I/O ----------------------------------------------------------


@attrs.frozen
class Send:
    """Send ``text`` to connection ``conn``; ``sender`` is the connection it relays from, if any.

    Relayed messages are charged to their sender's budget toward ``conn`` until the I/O layer
    reports them written (:meth:`SignalingHub.delivered`), so a flood fills the flooder's share of
    the recipient's queue, never the queue itself.
    """

    conn: int
    text: str
    sender: int | None = None


@attrs.frozen
class Close:
    """Close connection ``conn`` with a WebSocket close code (the peer then leaves with ``reason``)."""

    conn: int
    code: int
    message: str
    reason: LeaveReason


Action: TypeAlias = Send | Close


#: Largest message a connection that has not announced may send: an announce is well under 2 KiB,
#: and a stranger's 1 MiB blob is refused before it is even parsed as JSON.
MAX_UNANNOUNCED_MESSAGE: Final = 16 * 1024
#: Methods only a member may call: checked before their params (an offer's SDP) are validated.
_MEMBER_METHODS: Final = frozenset(CLIENT_METHODS - {Method.ANNOUNCE})


@attrs.define
class _Conn:
    conn_id: int
    guard: FloodGuard
    #: The client's address, for log lines ("" when the I/O layer has none to give).
    address: str = ""
    peer: PeerInfo | None = None
    session_id: str | None = None
    #: The server's own in-process link (the transport of ``serve``): no rate limit, may announce
    #: a reserved id, and its relays are never refused.
    privileged: bool = False
    #: Relayed messages queued to this connection and not written yet, by sender connection.
    backlog: collections.Counter[int] = attrs.field(factory=collections.Counter)
    #: Relays refused (a recipient's budget for it was full) since a recipient last caught up
    #: with everything it relayed; past ``relay_budget`` of them the connection is closed.
    relay_refused: int = 0
    #: The secret its announce returned: whoever shows it may reclaim the id after a drop.
    resume: str | None = None
    #: The connection's verified access token (servers with a secret), checked at each announce.
    claims: Claims | None = None
    #: A stray answer or candidate from it was logged (once per connection is enough to debug).
    stray_logged: bool = False


class _FloodingError(Exception):
    """A sender kept relaying to a recipient whose budget for it was full: close the sender."""


#: Peer ids no WebSocket client may announce: the transport of ``meshrtc serve`` uses the first,
#: over the in-process link (:meth:`SignalingServer.connect_local`).
RESERVED_PEER_IDS: Final = frozenset({"meshrtc-server"})
#: Relayed messages one sender may have queued toward one recipient (``SignalingServer`` derives
#: it from its outbox size so that every member's share together fits in the queue).
DEFAULT_RELAY_BUDGET: Final = 64


def _forbidden(message: str) -> SignalingError:
    return SignalingError(ErrorCode.FORBIDDEN, message)


class SignalingHub:
    """Sessions, peers and forwarding, as a synchronous state object.

    Peer ids are unique across the server (so a target in another session can be refused as
    forbidden rather than silently not found); sessions are created by their first announce and
    vanish with their last peer. The hub decides who a message is from: the connection's announced
    id, never what the message claims.
    """

    def __init__(
        self,
        *,
        max_peers: int = MAX_PEERS_LIMIT,
        auth_required: bool = False,
        rate_limit: float = 100.0,
        rate_burst: float = 200.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_peers = max_peers
        #: Every announce must match its connection's token (given to :meth:`open`).
        self.auth_required = auth_required
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        #: Refused messages within ``flood_window`` seconds before the flooder is closed (1008);
        #: only the first ``refusal_replies`` refusals of a window are answered.
        self.max_refused = max(1, int(rate_burst))
        self.flood_window = 2.0
        self.refusal_replies = 3
        self._wall_clock = wall_clock
        #: Relayed messages one sender may have queued toward one recipient; past it the sender's
        #: relays there are refused (-32008) and, after as many refusals again, it is closed.
        self.relay_budget = DEFAULT_RELAY_BUDGET
        #: Peer ids only a privileged (in-process) connection may announce.
        self.reserved_ids = RESERVED_PEER_IDS
        #: Seconds a dropped peer's id stays reserved for the holder of its resume secret.
        self.resume_grace = DEFAULT_RESUME_GRACE
        self._clock: Callable[[], float] = time.monotonic
        #: Ids of peers whose connection dropped: (resume secret, monotonic expiry).
        self._held: dict[str, tuple[str, float]] = {}
        self._conns: dict[int, _Conn] = {}
        self._peers: dict[str, _Conn] = {}
        self._sessions: dict[str, dict[str, PeerInfo]] = {}
        #: (offerer, answerer) with an offer not answered yet; pairs that exchanged an offer. Only
        #: to name stray answers and candidates in the log; they are still forwarded.
        self._offers: set[tuple[str, str]] = set()
        self._linked: set[frozenset[str]] = set()

    # Views (tests, the demo, operators).

    def sessions(self) -> dict[str, tuple[str, ...]]:
        """Every session and its peer ids in join order."""
        return {sid: tuple(peers) for sid, peers in self._sessions.items()}

    def session_of(self, peer_id: str) -> str | None:
        conn = self._peers.get(peer_id)
        return None if conn is None else conn.session_id

    @property
    def connections(self) -> int:
        return len(self._conns)

    # Events from the I/O layer.

    def open(self, conn_id: int, address: str = "", *, claims: Claims | None = None) -> None:
        """A connection opened; ``claims`` is its token, verified by the I/O layer at accept."""
        if conn_id in self._conns:
            raise ValueError(f"connection {conn_id} is already open")
        guard = FloodGuard(
            self.rate_limit,
            self.rate_burst,
            window=self.flood_window,
            max_refusals=self.max_refused,
            replies=self.refusal_replies,
        )
        self._conns[conn_id] = _Conn(conn_id, guard, address, claims=claims)

    def close(self, conn_id: int, reason: LeaveReason) -> list[Action]:
        """The connection is gone: its peer (if any) leaves and the others are told why."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        return self._leave(conn, reason)

    def open_privileged(self, conn_id: int) -> None:
        """Open the server's own in-process connection (the transport of ``meshrtc serve``).

        It is trusted code in this process: no rate limit and no token, it may announce a reserved
        id, and its relays are never refused. Members relaying to it are still held to their
        budget, so their floods cost them, not it.
        """
        if conn_id in self._conns:
            raise ValueError(f"connection {conn_id} is already open")
        unlimited = FloodGuard(math.inf, math.inf)
        self._conns[conn_id] = _Conn(conn_id, unlimited, "in-process", privileged=True)

    def delivered(self, conn_id: int, sender: int) -> None:
        """A message relayed from ``sender`` was written to ``conn_id``: it leaves the budget."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.backlog[sender] -= 1
        if conn.backlog[sender] <= 0:
            del conn.backlog[sender]
            # The recipient caught up with everything this sender relayed: a clean slate (an
            # honest sender refused while a peer was paused is not closed later for it).
            source = self._conns.get(sender)
            if source is not None:
                source.relay_refused = 0

    def receive(self, conn_id: int, data: str | bytes, now: float) -> list[Action]:
        """Handle one WebSocket message; ``now`` is monotonic seconds (for the rate limit)."""
        conn = self._conns[conn_id]
        # Cheapest checks first: the token bucket (before parsing, so malformed messages spend
        # tokens too), the size a stranger may send, then membership before any SDP is read.
        verdict = conn.guard.check(now)
        if verdict is Verdict.CLOSE:
            log.warning(
                "conn %d (%s): closing, kept flooding past the rate limit", conn_id, conn.address
            )
            return [Close(conn_id, 1008, "rate limit exceeded", LeaveReason.RATE_LIMITED)]
        if verdict is Verdict.DROP:
            return []
        if conn.peer is None and len(data) > MAX_UNANNOUNCED_MESSAGE:
            log.debug(
                "conn %d (%s): %d-character message before announce",
                conn_id,
                conn.address,
                len(data),
            )
            too_big = SignalingError(
                ErrorCode.NOT_ANNOUNCED,
                f"not announced: messages before peer.announce are limited to "
                f"{MAX_UNANNOUNCED_MESSAGE} characters",
            )
            return [Send(conn_id, encode(too_big.to_response()))]
        try:
            message = parse_client_message(data)
        except SignalingError as err:
            log.debug("conn %d (%s): %s", conn_id, conn.address, err)
            return [Send(conn_id, encode(err.to_response()))]
        request_id = message.id if isinstance(message, Request) else None
        if verdict is Verdict.REFUSE:
            if request_id is None:
                return []
            refusal = SignalingError(
                ErrorCode.RATE_LIMITED,
                f"rate limit exceeded ({self.rate_limit:g} messages/s, bursts of "
                f"{self.rate_burst:g}); slow down",
                request_id=request_id,
            )
            return [Send(conn_id, encode(refusal.to_response()))]
        try:
            if conn.peer is None and message.method in _MEMBER_METHODS:
                self._member(conn)  # raises NOT_ANNOUNCED before an offer's SDP is validated
            params = parse_params(message.method, message.params)
            result, actions = self._dispatch(conn, params)
        except _FloodingError as flood:
            log.warning("conn %d (%s): closing, %s", conn_id, conn.address, flood)
            return [Close(conn_id, 1008, "flooding a peer", LeaveReason.RATE_LIMITED)]
        except SignalingError as err:
            log.debug("conn %d: %s %s", conn_id, message.method, err)
            if request_id is None:
                return []
            return [Send(conn_id, encode(err.with_id(request_id).to_response()))]
        except Exception:
            log.exception("conn %d: internal error handling %s", conn_id, message.method)
            if request_id is None:
                return []
            internal = SignalingError(
                ErrorCode.INTERNAL_ERROR, "internal server error", request_id=request_id
            )
            return [Send(conn_id, encode(internal.to_response()))]
        if request_id is not None:
            actions.append(Send(conn_id, encode(Response(request_id, result))))
        return actions

    # Methods.

    def _dispatch(
        self,
        conn: _Conn,
        params: ClientParams,
    ) -> tuple[dict[str, object], list[Action]]:
        if isinstance(params, Announce):
            return self._announce(conn, params)
        peer, session = self._member(conn)
        if isinstance(params, ListPeers):
            others = [p.to_json() for pid, p in session.items() if pid != peer.peer_id]
            return {"peers": others}, []
        if isinstance(params, Disconnect):
            if params.peer_id != peer.peer_id:
                raise _forbidden(f"you can only disconnect yourself ({peer.peer_id!r})")
            return {"status": "left"}, self._leave(conn, LeaveReason.DISCONNECT)
        if params.from_peer != peer.peer_id:
            raise _forbidden(
                f"'from' is {params.from_peer!r} but you announced as {peer.peer_id!r}"
            )
        if params.to_peer == peer.peer_id:
            raise SignalingError(ErrorCode.INVALID_PARAMS, "'to' is yourself")
        target = self._peers.get(params.to_peer)
        if target is None:
            raise SignalingError(ErrorCode.PEER_NOT_FOUND, f"peer {params.to_peer!r} not found")
        if target.session_id != conn.session_id:
            raise _forbidden(f"peer {params.to_peer!r} is in another session")
        self._charge(conn, target)
        self._note_relay(conn, peer.peer_id, params)
        forward = Notification(params.METHOD, params.to_json())
        return {"status": "forwarded"}, [Send(target.conn_id, encode(forward), conn.conn_id)]

    def _note_relay(self, conn: _Conn, sender: str, params: ClientParams) -> None:
        """Remember offers; log (once per connection, at debug, with the address) an answer to
        no offer or a candidate between peers that never exchanged one."""
        if isinstance(params, Offer):
            self._offers.add((sender, params.to_peer))
            self._linked.add(frozenset((sender, params.to_peer)))
            return
        if isinstance(params, Answer | PeerErrorNotice):
            if (params.to_peer, sender) in self._offers:
                self._offers.discard((params.to_peer, sender))
                return
            what = "answer to no offer"
        elif isinstance(params, IceCandidate):
            if frozenset((sender, params.to_peer)) in self._linked:
                return
            what = "candidate before any offer"
        else:
            return
        if not conn.stray_logged:
            conn.stray_logged = True
            log.debug(
                "conn %d (%s): stray %s from %s to %s (forwarded; not logged again for this "
                "connection)",
                conn.conn_id,
                conn.address,
                what,
                sender,
                params.to_peer,
            )

    def _charge(self, sender: _Conn, target: _Conn) -> None:
        """Count one relay against ``sender``'s budget toward ``target``, or refuse it.

        Each sender gets its own share of a recipient's queue, so however many members flood one
        peer (the transport included), the queue cannot overflow and the recipient is never the
        one dropped: the flooder is refused, then closed.
        """
        if not sender.privileged and target.backlog[sender.conn_id] >= self.relay_budget:
            sender.relay_refused += 1
            peer_id = target.peer.peer_id if target.peer is not None else "?"
            if sender.relay_refused > self.relay_budget:
                raise _FloodingError(f"kept relaying to {peer_id!r} past its budget")
            raise SignalingError(
                ErrorCode.RATE_LIMITED,
                f"peer {peer_id!r} has not read {self.relay_budget} of your messages yet; "
                f"slow down",
            )
        target.backlog[sender.conn_id] += 1

    def _member(self, conn: _Conn) -> tuple[PeerInfo, dict[str, PeerInfo]]:
        if conn.peer is None or conn.session_id is None:
            raise SignalingError(ErrorCode.NOT_ANNOUNCED, "not announced: send peer.announce first")
        return conn.peer, self._sessions[conn.session_id]

    def _announce(self, conn: _Conn, params: Announce) -> tuple[dict[str, object], list[Action]]:
        if conn.peer is not None:
            raise SignalingError(
                ErrorCode.INVALID_REQUEST,
                f"already announced as {conn.peer.peer_id!r}; send peer.disconnect first",
            )
        if params.peer_id in self.reserved_ids and not conn.privileged:
            raise _forbidden(
                f"peer id {params.peer_id!r} is reserved for the server's own transport"
            )
        info = params.info
        if self.auth_required and not conn.privileged:
            info = _authorized(conn.claims, params, self._wall_clock())
        if params.peer_id in self._peers:
            raise SignalingError(
                ErrorCode.PEER_ID_TAKEN, f"peer id {params.peer_id!r} is already taken"
            )
        self._check_held(params)
        session = self._sessions.get(params.session_id, {})
        if len(session) >= self.max_peers:
            raise SignalingError(
                ErrorCode.SESSION_FULL,
                f"session {params.session_id!r} is full (at most {self.max_peers} peers)",
            )
        others = tuple(session.values())
        session[info.peer_id] = info
        self._sessions[params.session_id] = session
        self._peers[info.peer_id] = conn
        conn.peer, conn.session_id = info, params.session_id
        log.info("peer %s joined session %s", info.peer_id, params.session_id)
        joined = encode(Notification(Method.JOINED, info.to_json()))
        actions: list[Action] = [Send(self._peers[p.peer_id].conn_id, joined) for p in others]
        self._held.pop(info.peer_id, None)
        conn.resume = secrets.token_urlsafe(18)
        result = AnnounceResult(
            info.peer_id, params.session_id, others, self._wall_clock(), conn.resume
        )
        return result.to_json(), actions

    def _check_held(self, params: Announce) -> None:
        """Refuse an id held for a dropped peer unless the announce shows that peer's secret.

        Before, a squatter could announce a peer's id a few milliseconds after its TCP connection
        dropped and receive the signaling meant for it; now only the holder of the secret from
        the peer's last announce reclaims it within ``resume_grace`` seconds (docs/security.md).
        """
        now = self._clock()
        for peer_id in [p for p, (_, until) in self._held.items() if until <= now]:
            del self._held[peer_id]
        held = self._held.get(params.peer_id)
        if held is None:
            return
        secret, until = held
        if params.resume is None or not hmac.compare_digest(params.resume, secret):
            raise SignalingError(
                ErrorCode.PEER_ID_TAKEN,
                f"peer id {params.peer_id!r} is held for its dropped connection for "
                f"{until - now:.0f} s more; only that client may resume it",
            )

    def _leave(self, conn: _Conn, reason: LeaveReason) -> list[Action]:
        if conn.peer is None or conn.session_id is None:
            return []
        peer_id, session_id = conn.peer.peer_id, conn.session_id
        conn.peer = conn.session_id = None
        if conn.resume is not None and reason not in (LeaveReason.DISCONNECT, LeaveReason.SHUTDOWN):
            self._held[peer_id] = (conn.resume, self._clock() + self.resume_grace)
        conn.resume = None
        self._offers = {pair for pair in self._offers if peer_id not in pair}
        self._linked = {pair for pair in self._linked if peer_id not in pair}
        del self._peers[peer_id]
        session = self._sessions[session_id]
        del session[peer_id]
        if not session:
            del self._sessions[session_id]
        log.info("peer %s left session %s (%s)", peer_id, session_id, reason.value)
        left = encode(Notification(Method.LEFT, PeerLeft(peer_id, reason.value).to_json()))
        return [Send(self._peers[pid].conn_id, left) for pid in session]


def _authorized(claims: Claims | None, params: Announce, now: float) -> PeerInfo:
    """The announced peer as its token allows it, or FORBIDDEN saying which claim differs.

    The token is checked again here, not only at the upgrade: a connection may announce (or
    announce again after ``peer.disconnect``) long after it opened, and an expired token must not
    join anyone then. A peer already in a session is not cut off when its token expires
    (docs/security.md, "Token expiry").

    The grants travel with the peer (:attr:`PeerInfo.grants`), and a meshrtc peer (the transport
    of ``serve`` too) enforces them on its own side of each media link: it takes no media from a
    peer without ``publish`` and sends none to one without ``subscribe``, whatever that peer's
    SDP offers. Without ``data`` the capabilities lose ``data``, and with neither ``publish`` nor
    ``subscribe`` they lose audio and video (docs/security.md).
    """
    if claims is None:
        raise _forbidden("no access token on this connection")
    if now >= claims.expires_at:
        raise _forbidden(
            f"the access token expired {now - claims.expires_at:.0f} s ago; reconnect with a "
            "fresh one"
        )
    if params.peer_id != claims.peer_id:
        raise _forbidden(f"the token is for peer {claims.peer_id!r}, not {params.peer_id!r}")
    if params.session_id != claims.session_id:
        raise _forbidden(
            f"the token is for session {claims.session_id!r}, not {params.session_id!r}"
        )
    allowed = set(params.info.capabilities)
    if Grant.DATA not in claims.grants:
        allowed -= {Capability.DATA}
    if not claims.grants & {Grant.PUBLISH, Grant.SUBSCRIBE}:
        allowed -= {Capability.AUDIO, Capability.VIDEO}
    kept = tuple(c for c in params.info.capabilities if c in allowed)
    if not kept:
        # Never an empty list: peers build no connection for a member with nothing to exchange.
        grants = sorted(g.value for g in claims.grants)
        raise _forbidden(f"the token grants none of the announced capabilities (grants: {grants})")
    granted = tuple(sorted(g.value for g in claims.grants))
    return attrs.evolve(params.info, capabilities=kept, grants=granted)


# --- Plain HTTP on the same port ----------------------------------------------------------------


@attrs.frozen
class HttpRequest:
    """A plain (non-WebSocket) HTTP request head."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, include_body: bool = True) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Status')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if include_body else head


#: Answers plain HTTP requests on the signaling port; ``None`` means "not mine" (the server then
#: answers 426 on a WebSocket path and 404 elsewhere). One request per connection.
HttpHandler: TypeAlias = Callable[[HttpRequest], Awaitable[HttpResponse | None]]


def _parse_head(head: bytes) -> HttpRequest | None:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        return None
    headers = []
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.lower(), value.strip()))
    return HttpRequest(method, target, tuple(headers))


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


class _PrefixedStream(trio.abc.Stream):
    """A stream that first replays bytes already read (the HTTP head we inspected).

    It also says why a connection failed: when wsproto rejects a frame (invalid UTF-8 in a text
    message: 1007; a protocol violation: 1002), trio-websocket 0.12.2 records the code but closes
    the TCP stream without sending a close frame, so the client saw 1006. :meth:`aclose` sends the
    close frame it skipped, once, bounded in time.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        #: The WebSocket on top of this stream, once accepted (its ``closed`` says why it ended).
        self.websocket: WebSocketConnection | None = None
        self._close_frame_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data[:1] == _CLOSE_FRAME_START:  # wsproto sends each frame in one call
            self._close_frame_sent = True
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        reason = self.websocket.closed if self.websocket is not None else None
        if reason is not None and reason.code in _UNSENT_CLOSE_CODES and not self._close_frame_sent:
            self._close_frame_sent = True
            text = (reason.reason or "")[:120].encode("ascii", "replace")  # valid UTF-8, short
            payload = reason.code.to_bytes(2, "big") + text
            with (
                trio.move_on_after(0.2),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self._stream.send_all(_CLOSE_FRAME_START + bytes([len(payload)]) + payload)
        await self._stream.aclose()


#: The first byte of a TLS ClientHello (content type 22, handshake), RFC 8446 section 5.1.
_TLS_HANDSHAKE_RECORD: Final = 0x16
_TLS_ONLY: Final = b"this port speaks TLS: use https:// or wss://\n"
#: An unmasked, final close frame (what a server sends).
_CLOSE_FRAME_START: Final = b"\x88"
#: Codes wsproto reports for a frame it rejected (protocol error, invalid payload data such as bad
#: UTF-8, unsupported data); trio-websocket closes for these without telling the client.
_UNSENT_CLOSE_CODES: Final = frozenset({1002, 1003, 1007})


# --- The trio server ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Live:
    """A WebSocket connection being served; ``end`` stops its loops and records how to close."""

    conn_id: int
    #: What to write, with the connection each relayed message came from (for its budget).
    outbox: trio.MemorySendChannel[tuple[int | None, str]]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: LeaveReason = LeaveReason.CLOSED
    close_code: int = 1000
    close_message: str = ""
    ended: bool = False
    #: Called once when it ends (the in-process link closes itself here; WebSockets use ``scope``).
    on_end: Callable[[LeaveReason], None] | None = None

    def end(self, reason: LeaveReason, code: int = 1000, message: str = "") -> None:
        if not self.ended:
            self.ended = True
            self.reason, self.close_code, self.close_message = reason, code, message
            if self.on_end is not None:
                self.on_end(reason)
        self.scope.cancel()


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(name, value, "a number > 0")
    if not math.isfinite(value):
        raise ConfigError(name, value, "a finite number > 0")
    return float(value)


class SignalingServer:
    """The signaling server. Start it with ``server = await nursery.start(SignalingServer().run)``.

    ``port=0`` binds a free port; :attr:`port` and :attr:`url` report it once started. Cancelling
    the scope that runs :meth:`run` (or calling :meth:`close`) closes every WebSocket with 1001
    within ``shutdown_timeout`` seconds.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auth: TokenAuthority | None = None,
        token_throttle: FailedTokenThrottle | None = None,
        max_peers: int = MAX_PEERS_LIMIT,
        rate_limit: float = 100.0,
        rate_burst: float = 200.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
        outbox_size: int = 1024,
        handshake_timeout: float = 10.0,
        shutdown_timeout: float = 1.0,
        max_connections: int | None = None,
        max_connections_per_address: int = 64,
        ssl_context: ssl.SSLContext | None = None,
        http_handler: HttpHandler | None = None,
        paths: Sequence[str] = WEBSOCKET_PATHS,
        wall_clock: Callable[[], float] = time.time,
        allowed_origins: Sequence[str] = (),
        metrics: Callable[[], tuple[bytes, str]] | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "an integer from 0 to 65535")
        if isinstance(max_peers, bool) or not isinstance(max_peers, int):
            raise ConfigError("max_peers", max_peers, f"an integer from 1 to {MAX_PEERS_LIMIT}")
        if not 1 <= max_peers <= MAX_PEERS_LIMIT:
            raise ConfigError("max_peers", max_peers, f"an integer from 1 to {MAX_PEERS_LIMIT}")
        if not isinstance(max_message_size, int) or max_message_size < 1024:
            raise ConfigError("max_message_size", max_message_size, "an integer >= 1024")
        if not isinstance(outbox_size, int) or outbox_size < 1:
            raise ConfigError("outbox_size", outbox_size, "an integer >= 1")
        self.host = host
        self._requested_port = port
        self.ping_interval = _positive("ping_interval", ping_interval)
        self.ping_timeout = _positive("ping_timeout", ping_timeout)
        self.handshake_timeout = _positive("handshake_timeout", handshake_timeout)
        self.shutdown_timeout = _positive("shutdown_timeout", shutdown_timeout)
        self.max_message_size = max_message_size
        self.outbox_size = outbox_size
        self.http_handler = http_handler
        #: Renders ``/metrics`` (body, content type); with ``auth``, only for an operator token.
        self.metrics = metrics
        self.paths = tuple(paths)
        #: Browser origins (``https://app.example:8443``, or ``*``) allowed to open a WebSocket
        #: besides the server's own pages; a client that sends no Origin is not a browser page.
        self.allowed_origins = tuple(o.rstrip("/").lower() for o in allowed_origins)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context", ssl_context, "an ssl.SSLContext or None")
        #: TLS for every connection (``meshrtc.signaling.tls.server_context``); None: plain TCP.
        self.ssl_context = ssl_context
        #: Verifies the ``token`` query parameter of every WebSocket upgrade (None: no tokens).
        self.auth = auth
        self.token_throttle = token_throttle or FailedTokenThrottle()
        #: Verified claims of connections between the upgrade and the hub's ``open``.
        self._claims: dict[int, Claims] = {}
        self.hub = SignalingHub(
            max_peers=max_peers,
            auth_required=auth is not None,
            rate_limit=_positive("rate_limit", rate_limit),
            rate_burst=max(1.0, _positive("rate_burst", rate_burst)),
            wall_clock=wall_clock,
        )
        # Every member's share of one recipient's queue fits in it twice over, with room left
        # for the server's own messages: relays alone can never overflow a queue.
        self.hub.relay_budget = max(1, outbox_size // (2 * max_peers))
        self._listeners: list[trio.SocketListener] = []
        self._bound_port: int | None = None
        self._ids = itertools.count(1)
        self._live: dict[int, _Live] = {}
        self._handshaking: dict[int, trio.CancelScope] = {}
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = connection_budget(fd_limit)
        if max_connections is None:
            max_connections = budget
        elif isinstance(max_connections, int) and max_connections > budget:
            raise ConfigError(
                "max_connections",
                max_connections,
                f"at most {budget} with this process's open-file limit of {fd_limit} (the rest is "
                "headroom for the server's own files; raise the limit with ulimit -n)",
            )
        for name, cap in (
            ("max_connections", max_connections),
            ("max_connections_per_address", max_connections_per_address),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigError(name, cap, "an integer >= 1")
        #: Refused at accept, before a byte is read: total, and per client address.
        self.connections = ConnectionCounter(max_connections, max_connections_per_address)
        self._stop = trio.Event()
        self._closing = False

    # Addresses.

    @property
    def port(self) -> int:
        """The bound port (the first listener's, if the host resolved to several)."""
        if self._bound_port is None:
            raise RuntimeError("the server is not listening yet: start it with nursery.start")
        return self._bound_port

    @property
    def url(self) -> str:
        """``ws://host:port/ws`` (``wss://`` with TLS) for clients on this machine."""
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://{self._authority()}{self.paths[0]}"

    @property
    def http_url(self) -> str:
        """``http://host:port/`` (``https://`` with TLS): where the page of an ``http_handler`` is."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{self._authority()}/"

    def _authority(self) -> str:
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    # Lifecycle.

    async def run(
        self, *, task_status: trio.TaskStatus[SignalingServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or :meth:`close`; then close every connection gracefully."""
        self._listeners = await trio.open_tcp_listeners(self._requested_port, host=self.host)
        self._bound_port = self._listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as outer:
                # Cancellation from outside reaches only this watcher; the connections run in a
                # shielded scope so that they can still send their close frames (bounded below).
                outer.start_soon(self._stop_when_cancelled)
                with trio.CancelScope(shield=True) as shield:
                    async with trio.open_nursery() as conns:
                        accept = trio.CancelScope()
                        conns.start_soon(self._accept, conns, accept)
                        log.info("signaling server listening on %s", self.url)
                        task_status.started(self)
                        await self._stop.wait()
                        accept.cancel()
                        self._shutdown(shield)
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()

    async def connect_local(self) -> LocalLink:
        """Open a privileged in-process link to the hub (how ``meshrtc serve`` runs its transport).

        Unlike a WebSocket client it has no rate limit, needs no token, may announce a reserved
        id (``meshrtc-server``), and its queue is unbounded: members who flood it are refused and
        then closed by their relay budget, and cannot get it dropped as a slow consumer. Pass it
        to a client as ``SignalingClient(..., connector=server.connect_local)``.
        """
        await trio.lowlevel.checkpoint()
        if self._closing:
            raise ConnectionRefusedError("the signaling server is stopping")
        conn_id = next(self._ids)
        outbox, inbox = trio.open_memory_channel[tuple[int | None, str]](math.inf)
        live = _Live(conn_id, outbox)

        def deliver(text: str) -> None:
            if not live.ended:
                self._dispatch(self.hub.receive(conn_id, text, trio.current_time()))

        def close(reason: LeaveReason = LeaveReason.CLOSED) -> None:
            live.ended = True
            if self._live.pop(conn_id, None) is None:
                return
            actions = self.hub.close(conn_id, reason)
            if not self._closing:
                self._dispatch(actions)
            outbox.close()

        def on_end(reason: LeaveReason) -> None:
            link.ended(live.close_code, live.close_message)
            close(reason)

        link = LocalLink(
            inbox,
            deliver=deliver,
            delivered=lambda sender: self.hub.delivered(conn_id, sender),
            close=close,
        )
        live.on_end = on_end
        self._live[conn_id] = live
        self.hub.open_privileged(conn_id)
        log.debug("conn %d: in-process link open", conn_id)
        return link

    def close(self) -> None:
        """Stop serving: :meth:`run` closes every connection and returns."""
        self._stop.set()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stop.set()

    def _shutdown(self, shield: trio.CancelScope) -> None:
        self._closing = True
        shield.deadline = trio.current_time() + self.shutdown_timeout
        log.info("signaling server stopping: closing %d connections", len(self._live))
        for live in list(self._live.values()):
            live.end(LeaveReason.SHUTDOWN, 1001, "server shutting down")
        for scope in list(self._handshaking.values()):
            scope.cancel()

    async def _accept(self, conns: trio.Nursery, scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._handle_stream, self._listeners, handler_nursery=conns)

    # One TCP connection.

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        # The connection cap comes first, before any handshake or token work (docs/security.md).
        address = _peer_address(stream)
        refusal = self.connections.admit(address)
        if refusal is not None:
            log.info("refusing a connection from %s: %s", address, refusal)
            with trio.CancelScope(shield=True):
                if self.ssl_context is None:  # a TLS client could not read a plain reply
                    with trio.move_on_after(0.2):
                        await _send_quietly(stream, HttpResponse(503, refusal.encode() + b"\n"))
                await stream.aclose()
            return
        try:
            await self._handle_admitted(stream, address)
        finally:
            self.connections.release(address)

    async def _handle_admitted(self, stream: trio.SocketStream, address: str) -> None:
        conn_id = next(self._ids)
        log.debug("conn %d: TCP connection from %s", conn_id, address)
        scope = trio.CancelScope()
        self._handshaking[conn_id] = scope
        tls: trio.SSLStream[_PrefixedStream] | None = None
        try:
            with scope:
                if self.ssl_context is None:
                    await self._serve_stream(conn_id, stream, address)
                else:
                    tls = await self._tls_handshake(conn_id, stream, address)
                    if tls is not None:
                        await self._serve_stream(conn_id, tls, address)
        except Exception:
            # trio-websocket 0.12.2 would let this take the whole server down.
            log.exception("conn %d: handler failed", conn_id)
        finally:
            self._handshaking.pop(conn_id, None)
            with trio.CancelScope(shield=True):
                if tls is not None:
                    # close_notify, bounded: a client that stopped reading cannot hold the slot.
                    with trio.move_on_after(0.2):
                        await tls.aclose()
                await stream.aclose()

    async def _tls_handshake(
        self, conn_id: int, stream: trio.SocketStream, address: str
    ) -> trio.SSLStream[_PrefixedStream] | None:
        """The TLS stream once its handshake is done; None (logged once) if it failed or timed out.

        Cheap refusals come first: an address locked out for bad tokens, and a first byte that is
        not a TLS handshake record (plain HTTP gets a plain 400, anything else is just closed).
        """
        assert self.ssl_context is not None
        if self.auth is not None and self.token_throttle.locked(address, trio.current_time()) > 0:
            log.debug("conn %d (%s): refused before TLS, locked out", conn_id, address)
            return None
        with trio.move_on_after(self.handshake_timeout):
            try:
                first = await stream.receive_some(MAX_HTTP_HEAD)
                if not first:
                    log.debug("conn %d (%s): closed before a TLS handshake", conn_id, address)
                    return None
                if first[0] != _TLS_HANDSHAKE_RECORD:
                    log.debug("conn %d (%s): not a TLS handshake", conn_id, address)
                    if first[:1].isalpha():  # plain HTTP: say why, in plain text
                        await _send_quietly(stream, HttpResponse(400, _TLS_ONLY))
                        with trio.move_on_after(0.1):  # read the rest, or closing resets the reply
                            await stream.receive_some(MAX_HTTP_HEAD)
                    return None
                # Not https_compatible: aclose sends close_notify, so a client can tell our close
                # from a truncation; a client's ragged close is handled where we read.
                tls = trio.SSLStream(
                    _PrefixedStream(stream, first), self.ssl_context, server_side=True
                )
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                why = exc.__cause__ or exc
                log.debug("conn %d (%s): TLS handshake failed: %s", conn_id, address, why)
                return None
            return tls
        log.debug(
            "conn %d (%s): no TLS handshake within %gs", conn_id, address, self.handshake_timeout
        )
        return None

    async def _serve_stream(self, conn_id: int, stream: trio.abc.Stream, address: str) -> None:
        if self.auth is not None:
            # An address that kept presenting bad tokens is refused before its head is read.
            wait = self.token_throttle.locked(address, trio.current_time())
            if wait > 0:
                log.debug("conn %d (%s): refused, locked out for %.0fs", conn_id, address, wait)
                await _send_quietly(stream, _locked_out(wait))
                with trio.move_on_after(0.1):  # read what it sent, or closing resets the reply
                    await stream.receive_some(MAX_HTTP_HEAD)
                return
        buffer = b""
        with trio.move_on_after(self.handshake_timeout):
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > MAX_HTTP_HEAD:
                    await _send_quietly(stream, HttpResponse(431, b"request head too large\n"))
                    return
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError as exc:  # a reset, or TLS closed without notify
                    log.debug("conn %d (%s): broken before a request: %s", conn_id, address, exc)
                    return
                if not chunk:
                    return
                if not buffer and chunk[0] == _TLS_HANDSHAKE_RECORD and self.ssl_context is None:
                    # A wss:// client: close now (it cannot read a plain reply) instead of
                    # letting it wait out handshake_timeout for a head that never comes.
                    log.debug("conn %d (%s): TLS handshake on a plain port", conn_id, address)
                    return
                buffer += chunk
        if b"\r\n\r\n" not in buffer:
            log.debug("conn %d: no HTTP request head within %gs", conn_id, self.handshake_timeout)
            return
        head = buffer.split(b"\r\n\r\n", 1)[0]
        if len(head) > MAX_HTTP_HEAD:
            await _send_quietly(stream, HttpResponse(431, b"request head too large\n"))
            return
        request = _parse_head(head)
        if request is None:
            await _send_quietly(stream, HttpResponse(400, b"malformed HTTP request\n"))
            return
        if "websocket" in _tokens(request.header("upgrade")):
            problem = _websocket_problem(request)
            if problem is not None:
                await _send_quietly(stream, HttpResponse(400, problem.encode() + b"\n"))
                return
            if request.path not in self.paths:
                await _send_quietly(stream, HttpResponse(404, _not_found(self.paths)))
                return
            refused = _origin_problem(request, self.allowed_origins)
            if refused is not None:
                log.warning("conn %d (%s): refused: %s", conn_id, address, refused)
                await _send_quietly(stream, HttpResponse(403, refused.encode() + b"\n"))
                return
            if self.auth is not None:
                refusal = self._check_token(conn_id, address, request)
                if refusal is not None:
                    await _send_quietly(stream, refusal)
                    return
            try:
                await self._serve_websocket(conn_id, _PrefixedStream(stream, buffer), address)
            finally:
                self._claims.pop(conn_id, None)
        elif request.path == METRICS_PATH and self.metrics is not None:
            await self._serve_metrics(conn_id, stream, request, address)
        else:
            await self._serve_http(stream, request)

    def _check_token(self, conn_id: int, address: str, request: HttpRequest) -> HttpResponse | None:
        """Verify the upgrade's ``token`` query parameter: None if good, else the refusal to send."""
        assert self.auth is not None
        tokens = parse_qs(urlsplit(request.target).query).get("token", [])
        try:
            if len(tokens) > 1:
                raise AuthError("more than one 'token' query parameter")
            self._claims[conn_id] = self.auth.verify(tokens[0] if tokens else None)
        except AuthError as err:
            locked = self.token_throttle.failed(address, trio.current_time())
            log.warning("conn %d (%s): refused: %s", conn_id, address, err)
            if locked:
                log.warning(
                    "%s: %d failed tokens within %gs; refusing it for %gs",
                    address,
                    self.token_throttle.max_failures,
                    self.token_throttle.window,
                    self.token_throttle.lockout,
                )
            return HttpResponse(401, f"{err}\n".encode())
        return None

    async def _serve_metrics(
        self, conn_id: int, stream: trio.abc.Stream, request: HttpRequest, address: str
    ) -> None:
        """``/metrics``: with a secret, only for an operator token (``Authorization: Bearer`` or
        the ``token`` query parameter), whose failures count toward the address's lockout."""
        assert self.metrics is not None
        response: HttpResponse | None
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(405, b"method not allowed\n", headers=(("Allow", "GET"),))
        else:
            response = self._operator_refusal(conn_id, address, request)
        if response is None:
            body, content_type = self.metrics()
            response = HttpResponse(200, body, content_type=content_type)
        await _send_quietly(stream, response, include_body=request.method != "HEAD")

    def _operator_refusal(
        self, conn_id: int, address: str, request: HttpRequest
    ) -> HttpResponse | None:
        if self.auth is None:
            return None
        scheme, _, bearer = (request.header("authorization") or "").partition(" ")
        tokens = parse_qs(urlsplit(request.target).query).get("token", [])
        if bearer and scheme.lower() == "bearer":
            tokens = [bearer.strip(), *tokens]
        try:
            if len(tokens) > 1:
                raise AuthError("more than one token (Authorization header or 'token' parameter)")
            claims = self.auth.verify(tokens[0] if tokens else None)
        except AuthError as err:
            self.token_throttle.failed(address, trio.current_time())
            log.warning("conn %d (%s): %s refused: %s", conn_id, address, METRICS_PATH, err)
            return HttpResponse(401, f"{err}\n".encode(), headers=(("WWW-Authenticate", "Bearer"),))
        if claims.session_id != OPERATOR_SESSION:
            log.warning(
                "conn %d (%s): %s refused: a member token (%r)",
                conn_id,
                address,
                METRICS_PATH,
                claims.peer_id,
            )
            text = f"not an operator token (its session must be {OPERATOR_SESSION!r})\n"
            return HttpResponse(403, text.encode())
        return None

    async def _serve_http(self, stream: trio.abc.Stream, request: HttpRequest) -> None:
        response: HttpResponse | None = None
        if self.http_handler is not None and request.method in ("GET", "HEAD"):
            try:
                response = await self.http_handler(request)
            except Exception:
                log.exception("HTTP handler failed for %s %s", request.method, request.target)
                response = HttpResponse(500, b"internal server error\n")
        if response is None:
            if request.method not in ("GET", "HEAD"):
                response = HttpResponse(405, b"method not allowed\n", headers=(("Allow", "GET"),))
            elif request.path in self.paths:
                scheme = "ws" if self.ssl_context is None else "wss"
                text = f"this is a meshrtc signaling WebSocket endpoint; connect with {scheme}://\n"
                response = HttpResponse(426, text.encode(), headers=(("Upgrade", "websocket"),))
            else:
                response = HttpResponse(404, _not_found(self.paths))
        await _send_quietly(stream, response, include_body=request.method != "HEAD")

    async def _serve_websocket(self, conn_id: int, stream: _PrefixedStream, address: str) -> None:
        try:
            await self._serve_websocket_inner(conn_id, stream, address)
        except* LocalProtocolError as group:
            # trio-websocket #184: a ping that arrives after we sent our close frame makes its
            # reader try to pong in LOCAL_CLOSING and raise. The connection is closing anyway.
            log.debug("conn %d: ignoring %r while closing", conn_id, group.exceptions[0])

    async def _serve_websocket_inner(
        self, conn_id: int, stream: _PrefixedStream, address: str
    ) -> None:
        async with trio.open_nursery() as ws_nursery:
            # trio-websocket's reader task lives in ws_nursery, which is only cancelled after the
            # close handshake below, so the peer's close reply can still be read.
            try:
                request = None
                with trio.move_on_after(self.handshake_timeout):
                    request = await wrap_server_stream(
                        ws_nursery,
                        stream,
                        max_message_size=self.max_message_size,
                        receive_buffer_size=64 * 1024,
                    )
                if request is not None:
                    ws = await request.accept()
                    stream.websocket = ws
                    await self._serve_peer(conn_id, ws, address)
            finally:
                ws_nursery.cancel_scope.cancel()

    async def _serve_peer(self, conn_id: int, ws: WebSocketConnection, address: str) -> None:
        outbox, inbox = trio.open_memory_channel[tuple[int | None, str]](self.outbox_size)
        live = _Live(conn_id, outbox)
        self._handshaking.pop(conn_id, None)
        self._live[conn_id] = live
        # The TCP peer's address, taken at accept: under the replaying stream ws.remote is no address.
        self.hub.open(conn_id, address, claims=self._claims.pop(conn_id, None))
        log.debug("conn %d: WebSocket open (%s)", conn_id, address)
        if self._closing:
            live.end(LeaveReason.SHUTDOWN, 1001, "server shutting down")
        try:
            with live.scope:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._read_loop, live, ws)
                    tasks.start_soon(self._write_loop, live, ws, inbox)
                    tasks.start_soon(self._ping_loop, live, ws)
        except Exception:
            log.exception("conn %d: failed while serving; closing it", conn_id)
            live.end(LeaveReason.ERROR, 1011, "internal server error")
        finally:
            del self._live[conn_id]
            actions = self.hub.close(conn_id, live.reason)
            if not self._closing:
                self._dispatch(actions)
            outbox.close()
            with trio.CancelScope(shield=True) as closing:
                closing.deadline = trio.current_time() + min(1.0, self.shutdown_timeout)
                await ws.aclose(live.close_code, live.close_message or None)
            log.debug("conn %d: closed (%s)", conn_id, live.reason.value)

    async def _read_loop(self, live: _Live, ws: WebSocketConnection) -> None:
        while True:
            try:
                data = await ws.get_message()
            except ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else 1006
                too_big = code == 1009
                live.end(LeaveReason.MESSAGE_TOO_BIG if too_big else LeaveReason.CLOSED, code)
                return
            self._dispatch(self.hub.receive(live.conn_id, data, trio.current_time()))

    async def _write_loop(
        self,
        live: _Live,
        ws: WebSocketConnection,
        inbox: trio.MemoryReceiveChannel[tuple[int | None, str]],
    ) -> None:
        async for sender, text in inbox:
            try:
                await ws.send_message(text)
            except ConnectionClosed:
                live.end(LeaveReason.CLOSED)
                return
            if sender is not None:
                self.hub.delivered(live.conn_id, sender)

    async def _ping_loop(self, live: _Live, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            try:
                with trio.fail_after(self.ping_timeout):
                    await ws.ping()
            except trio.TooSlowError:
                log.info("conn %d: no pong within %gs", live.conn_id, self.ping_timeout)
                live.end(LeaveReason.TIMEOUT, 1001, "ping timeout")
                return
            except ConnectionClosed:
                live.end(LeaveReason.CLOSED)
                return

    def _dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            live = self._live.get(action.conn)
            if live is None or live.ended:
                continue
            if isinstance(action, Close):
                live.end(action.reason, action.code, action.message)
                continue
            try:
                live.outbox.send_nowait((action.sender, action.text))
            except trio.WouldBlock:
                log.warning("conn %d: not reading; dropping it as a slow consumer", live.conn_id)
                live.end(LeaveReason.SLOW_CONSUMER, 1008, "too slow reading messages")
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue


def _websocket_problem(request: HttpRequest) -> str | None:
    if request.method != "GET":
        return "a WebSocket handshake must be a GET"
    if "upgrade" not in _tokens(request.header("connection")):
        return "missing 'Connection: Upgrade'"
    if request.header("sec-websocket-version") != "13":
        return "missing or unsupported Sec-WebSocket-Version (13 required)"
    if not request.header("sec-websocket-key"):
        return "missing Sec-WebSocket-Key"
    return None


def _origin_problem(request: HttpRequest, allowed: Sequence[str]) -> str | None:
    """Why a browser page of another origin may not open a WebSocket here, or None.

    Browsers send ``Origin`` with every WebSocket handshake and let any page open one to any
    host, loopback included (no same-origin policy for WebSockets): without this check any web
    page the user visits could join a session of a server without a secret and hear its mix.
    Pages served by this server (same host and port) and ``allowed`` origins may; clients that
    send no Origin (programs, not pages) are not affected; tokens are checked after.
    """
    origin = request.header("origin")
    if origin is None:
        return None
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return None
    parts = urlsplit(origin)
    host = (request.header("host") or "").strip().lower()
    if parts.scheme in ("http", "https") and parts.netloc and parts.netloc == host:
        return None
    return (
        f"origin {origin[:100]!r} may not open a WebSocket here (only this server's own pages; "
        "allow others with --allow-origin)"
    )


def _peer_address(stream: trio.SocketStream) -> str:
    """The client's IP address (the throttle's key and the log lines' "who")."""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return "?"


def _locked_out(wait: float) -> HttpResponse:
    retry = max(1, math.ceil(wait))
    return HttpResponse(
        429,
        f"too many failed tokens from this address; retry in {retry}s\n".encode(),
        headers=(("Retry-After", str(retry)),),
    )


def _not_found(paths: Sequence[str]) -> bytes:
    return f"not found; the signaling WebSocket is at {' or '.join(paths)}\n".encode()


async def _send_quietly(
    stream: trio.abc.Stream, response: HttpResponse, *, include_body: bool = True
) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(response.encode(include_body=include_body))
