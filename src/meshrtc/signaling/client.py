"""SignalingClient: one peer's connection to the signaling server, kept alive across drops.

The client connects, announces, and then serves two kinds of traffic on one WebSocket: requests it
sends and awaits by id (:meth:`SignalingClient.request` and the ``offer``/``answer``/... helpers),
and notifications the server pushes, delivered in order on :attr:`SignalingClient.notifications`.
When the connection drops (socket closed, pings unanswered) it reconnects with exponential backoff
plus jitter and announces again; consumers see :class:`Disconnected` then :class:`Reconnected` on the
same channel, so the rtc layer can tell which links survived (docs/signaling.md, "Re-announcing").

It gives up after ``backoff.tries`` failed attempts only when its ``keep_trying`` predicate says
nothing depends on it any more: the PeerManager answers "some peer's media still flows", and media
that flows needs no signaling, so a long server outage must not end the process (issue 13).
Every announce carries this client instance's random ``incarnation``, which lets the others tell
the same process re-announcing (keep its live link) from a restarted one (its old link is gone).

The random source and the backoff sleep are injected, so reconnect tests are deterministic and do
not wait for real seconds.
"""

from __future__ import annotations

import enum
import logging
import random as _random
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    wrap_client_stream,
)

from meshrtc.backoff import Backoff
from meshrtc.config import validate_peer_id
from meshrtc.errors import ConfigError, MeshRtcError
from meshrtc.signaling.link import SignalingLink
from meshrtc.signaling.protocol import (
    DEFAULT_SESSION_ID,
    MAX_MESSAGE_SIZE,
    Announce,
    AnnounceResult,
    Answer,
    Capability,
    ErrorCode,
    ErrorResponse,
    IceCandidate,
    JsonObject,
    Method,
    Notification,
    Offer,
    PeerErrorNotice,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    RequestId,
    RequestTracker,
    Response,
    ServerEvent,
    SignalingError,
    encode,
    parse_notification,
    parse_server_message,
)
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = [
    "CLIENT_MACHINE",
    "Backoff",
    "ClientEvent",
    "ClientState",
    "Disconnected",
    "Reconnected",
    "SignalingClient",
    "SignalingConnectionError",
    "SignalingError",
    "SignalingTimeoutError",
]

log = logging.getLogger(__name__)


class ClientState(enum.StrEnum):
    Idle = "Idle"
    Connecting = "Connecting"
    Announcing = "Announcing"
    Ready = "Ready"
    Reconnecting = "Reconnecting"
    Closed = "Closed"


_C = ClientState
_CONNECTED = (_C.Connecting, _C.Announcing, _C.Ready)

CLIENT_MACHINE = register(
    MachineSpec(
        name="SignalingClient",
        doc="Idle → Connecting → Announcing → Ready. A lost connection (or a failed attempt) goes "
        "to Reconnecting, which waits out the backoff and tries again, or gives up after the "
        "configured tries unless keep_trying says media still flows (then it keeps retrying at "
        "the capped delay); closing is allowed from every state.",
        states=ClientState,
        initial=_C.Idle,
        transitions=(
            ("connect", _C.Idle, _C.Connecting),
            ("opened", _C.Connecting, _C.Announcing),
            ("announced", _C.Announcing, _C.Ready),
            ("connection_lost", _CONNECTED, _C.Reconnecting),
            ("retry", _C.Reconnecting, _C.Connecting),
            ("give_up", _C.Reconnecting, _C.Closed, "tries_exhausted"),
            ("closed", (_C.Idle, *_CONNECTED, _C.Reconnecting), _C.Closed),
        ),
    )
)


class SignalingConnectionError(MeshRtcError):
    """The client is not connected (yet, any more, or it gave up reconnecting)."""


class SignalingTimeoutError(SignalingConnectionError, TimeoutError):
    """No response arrived within the request timeout."""


@attrs.frozen
class Reconnected:
    """The connection came back and the client announced again; ``result`` is the new view."""

    result: AnnounceResult


@attrs.frozen
class Disconnected:
    """The connection was lost; the client is reconnecting (requests fail until Reconnected)."""

    reason: str


#: What :attr:`SignalingClient.notifications` carries: typed server notifications, raw ones the
#: client does not know (a newer server), and the client's own connection events.
ClientEvent: TypeAlias = ServerEvent | Notification | Reconnected | Disconnected


@attrs.define(eq=False)
class _Waiter:
    method: str
    event: trio.Event = attrs.field(factory=trio.Event)
    response: Response | ErrorResponse | None = None
    lost: str | None = None


@attrs.define(eq=False)
class _Attempt:
    """How one connection attempt ended."""

    reason: str = "closed"
    ready: bool = False
    error: BaseException | None = None


#: Errors from a re-announce that are worth retrying: our old connection may not be gone yet.
_RETRYABLE_ON_REANNOUNCE: Final = frozenset({ErrorCode.PEER_ID_TAKEN, ErrorCode.SESSION_FULL})


class SignalingClient(StatefulModel):
    """A peer's signaling connection. Run it with ``result = await nursery.start(client.run)``.

    ``nursery.start`` returns the first :class:`AnnounceResult` (the peers to offer to). Requests
    made while the client is not Ready fail at once with :class:`SignalingConnectionError` rather
    than queueing behind a reconnect, so the caller decides what a lost offer means.
    """

    state: ClientState
    connect = trigger_stub()
    opened = trigger_stub()
    announced = trigger_stub()
    connection_lost = trigger_stub()
    retry = trigger_stub()
    give_up = trigger_stub()
    closed = trigger_stub()

    def __init__(
        self,
        url: str,
        peer_id: str,
        *,
        capabilities: Sequence[str] = ("audio", "video", "data"),
        session_id: str = DEFAULT_SESSION_ID,
        user_data: Mapping[str, Any] | None = None,
        token: str | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
        backoff: Backoff | None = None,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        ssl_context: ssl.SSLContext | None = None,
        event_buffer: int = 1024,
        connector: Callable[[], Awaitable[SignalingLink]] | None = None,
        keep_trying: Callable[[], bool] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError("url", url, "a ws:// or wss:// URL with a host")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError("url", url, "a ws:// or wss:// URL with a valid port") from None
        self.url = url
        self._host = parts.hostname
        self._port = port or (443 if parts.scheme == "wss" else 80)
        self._path, self._query = parts.path or "/", parts.query
        self._resource = ""
        self.set_token(token)
        self._ssl_context = ssl_context or (
            ssl.create_default_context() if parts.scheme == "wss" else None
        )
        self.peer_id = validate_peer_id("peer_id", peer_id)
        #: This client instance, announced with every (re-)announce (:attr:`PeerInfo.incarnation`).
        self.incarnation = secrets.token_hex(8)
        params: JsonObject = {
            "peer_id": peer_id,
            "capabilities": list(capabilities),
            "session_id": session_id,
            "incarnation": self.incarnation,
        }
        if user_data is not None:
            params["user_data"] = dict(user_data)
        try:
            self._announce = Announce.from_json(params)
        except SignalingError as err:
            raise ConfigError("announce", params, err.message) from None
        for name, value in (
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(name, value, "a number of seconds > 0")
        self.request_timeout = float(request_timeout)
        self.connect_timeout = float(connect_timeout)
        self.ping_interval = float(ping_interval)
        self.ping_timeout = float(ping_timeout)
        self.backoff = backoff or Backoff()
        #: Asked once ``backoff.tries`` attempts failed: True keeps the client retrying (at the
        #: capped delay) instead of giving up. The PeerManager sets it to "some media flows".
        self.keep_trying = keep_trying
        self._random = random
        self._sleep = sleep
        CLIENT_MACHINE.build(self)
        self._events_in, self.notifications = trio.open_memory_channel[ClientEvent](event_buffer)
        self._tracker = RequestTracker()
        self._waiters: dict[RequestId, _Waiter] = {}
        self._ws: SignalingLink | None = None
        #: Opens the link instead of a WebSocket to ``url`` (``SignalingServer.connect_local``).
        self._connector = connector
        self._run_scope = trio.CancelScope()
        self._peers: dict[str, PeerInfo] = {}
        self._closing = False
        #: Reconnect attempts in a row that failed (the give_up guard counts them).
        self._failures = 0
        self._announced_once = False
        self._stopped = trio.Event()
        #: The latest announce result (the first one, or the one after the last reconnect).
        self.announce_result: AnnounceResult | None = None
        #: How many times the client reconnected and announced again.
        self.reconnects = 0
        #: ``trio.current_time()`` when the current outage began (None while connected).
        self.down_since: float | None = None
        #: Seconds from the last drop to the announce that ended it.
        self.last_outage = 0.0
        #: Failed attempts that ``keep_trying`` turned into one more try (over all outages).
        self.kept_trying = 0
        #: Notifications dropped because nobody read :attr:`notifications` (logged as errors).
        self.dropped_events = 0

    @property
    def session_id(self) -> str:
        return self._announce.session_id

    @property
    def capabilities(self) -> tuple[Capability, ...]:
        return self._announce.capabilities

    @property
    def peers(self) -> Mapping[str, PeerInfo]:
        """This client's view of the other peers in its session, kept from the notifications."""
        return dict(self._peers)

    # --- Requests -------------------------------------------------------------------------------

    async def request(self, method: str, params: Mapping[str, Any]) -> JsonObject:
        """Send a request and return its result; a server error raises :class:`SignalingError`.

        No response within ``request_timeout`` raises :class:`SignalingTimeoutError`; wrap the call
        in ``trio.fail_after`` for a shorter bound.
        """
        if self.state is not _C.Ready:
            raise SignalingConnectionError(f"not connected to the signaling server ({self.state})")
        return await self._request(method, dict(params), self.request_timeout)

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        """Send a notification (no response, so no error is ever reported back)."""
        ws = self._ws
        if self.state is not _C.Ready or ws is None:
            raise SignalingConnectionError(f"not connected to the signaling server ({self.state})")
        try:
            await ws.send_message(encode(Notification(method, dict(params))))
        except ConnectionClosed:
            raise SignalingConnectionError("the signaling connection closed") from None

    async def offer(self, to: str, sdp: str) -> None:
        await self.request(Method.OFFER, Offer(self.peer_id, to, sdp).to_json())

    async def answer(self, to: str, sdp: str) -> None:
        await self.request(Method.ANSWER, Answer(self.peer_id, to, sdp).to_json())

    async def report_error(self, to: str, code: int, message: str) -> None:
        """``peer.error``: tell ``to`` we cannot answer its offer (``code`` -32009 and why)."""
        await self.request(Method.ERROR, PeerErrorNotice(self.peer_id, to, code, message).to_json())

    async def ice_candidate(
        self,
        to: str,
        candidate: str,
        *,
        sdp_mid: str | None = None,
        sdp_m_line_index: int | None = None,
        username_fragment: str | None = None,
        confirm: bool = True,
    ) -> None:
        """Trickle one candidate (``""`` ends them); ``confirm=False`` sends a notification."""
        params = IceCandidate(
            self.peer_id, to, candidate, sdp_mid, sdp_m_line_index, username_fragment
        ).to_json()
        if confirm:
            await self.request(Method.ICE_CANDIDATE, params)
        else:
            await self.notify(Method.ICE_CANDIDATE, params)

    async def list_peers(self) -> tuple[PeerInfo, ...]:
        result = await self.request(Method.LIST, {})
        peers = result.get("peers")
        if not isinstance(peers, list):
            raise SignalingError(ErrorCode.INTERNAL_ERROR, "peer.list result has no peers list")
        return tuple(PeerInfo.from_json(p) for p in peers)

    async def _request(self, method: str, params: JsonObject, limit: float) -> JsonObject:
        ws = self._ws
        if ws is None:
            raise SignalingConnectionError("not connected to the signaling server")
        request = self._tracker.new_request(method, params)
        waiter = _Waiter(method)
        self._waiters[request.id] = waiter
        try:
            with trio.move_on_after(limit) as scope:
                try:
                    await ws.send_message(encode(request))
                except ConnectionClosed:
                    raise SignalingConnectionError("the signaling connection closed") from None
                await waiter.event.wait()
            if scope.cancelled_caught:
                raise SignalingTimeoutError(f"no response to {method} within {limit:g}s")
        finally:
            self._waiters.pop(request.id, None)
            self._tracker.forget(request.id)
        if waiter.lost is not None:
            raise SignalingConnectionError(f"{method}: connection lost ({waiter.lost})")
        response = waiter.response
        if isinstance(response, ErrorResponse):
            raise response.to_exception()
        assert response is not None
        return response.result

    # --- Lifecycle ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[AnnounceResult] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, announce, and keep the connection up until :meth:`aclose` or cancellation.

        Raises :class:`SignalingError` if the server refuses the announce, and
        :class:`SignalingConnectionError` after ``backoff.tries`` failed attempts in a row.
        """
        self.connect()
        try:
            with self._run_scope:
                await self._connect_loop(task_status)
        finally:
            self.fire_if_taken("closed")  # unless it gave up (Closed already)
            self._events_in.close()
            self._stopped.set()

    def tries_exhausted(self) -> bool:
        """Guard of ``give_up``: this many reconnect attempts in a row failed, and nothing (no
        flowing media, by ``keep_trying``) asks for more."""
        if self._failures < self.backoff.tries:
            return False
        return self.keep_trying is None or not self.keep_trying()

    def set_token(self, token: str | None) -> None:
        """Present ``token`` from the next connection attempt on.

        The server checks a token when a connection opens, not during it, so a call outlives its
        token; but a reconnect after expiry is refused. An application that refreshes tokens hands
        the new one here, and the next retry gets back in.
        """
        query = self._query
        if token is not None:
            # The server checks the token at the WebSocket upgrade, before any JSON-RPC.
            if not isinstance(token, str) or not token:
                raise ConfigError("token", token, "a non-empty string or None")
            pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
            query = urlencode([*pairs, ("token", token)])
        self._resource = self._path + (f"?{query}" if query else "")

    def _media_depends_on_retrying(self) -> bool:
        """A refusal is final at the first connect (a wrong token or certificate should fail fast)
        and after a drop when nothing flows; it is one more failed attempt while media flows."""
        return self._announced_once and self.keep_trying is not None and self.keep_trying()

    async def _connect_loop(self, task_status: trio.TaskStatus[AnnounceResult]) -> None:
        self._failures = 0
        while True:
            attempt = await self._attempt(task_status)
            if self._closing:
                return
            if attempt.error is not None:
                if not self._media_depends_on_retrying():
                    raise attempt.error
                # Refused (token expired, certificate no longer trusted...) while our links still
                # carry media: ending the process would cut the call that needs no signaling. Say
                # so loudly and keep trying; a fixed server or a new token lets us back in.
                log.error("%s: %s; retrying because media still flows", self.peer_id, attempt.error)
            self.connection_lost()
            if attempt.ready:
                self._failures = 0
                self.down_since = trio.current_time()
                self._emit(Disconnected(attempt.reason))
            if self.fire_if_taken("give_up"):
                raise SignalingConnectionError(
                    f"gave up after {self.backoff.tries} reconnect attempts: {attempt.reason}"
                )
            if self._failures >= self.backoff.tries:
                self.kept_trying += 1
            delay = self.backoff.delay(self._failures, self._random())
            self._failures += 1
            log.info(
                "%s: signaling connection lost (%s); retry %d/%d%s in %.2fs",
                self.peer_id,
                attempt.reason,
                self._failures,
                self.backoff.tries,
                " (media still flows)" if self._failures > self.backoff.tries else "",
                delay,
            )
            await self._sleep(delay)
            self.retry()

    async def aclose(self) -> None:
        """Leave the session (``peer.disconnect``), close the socket; :meth:`run` then returns."""
        if self._closing:
            return
        self._closing = True
        if self.state is _C.Idle:
            self.closed()
            self._events_in.close()
            return
        if self.state is _C.Ready:
            with trio.move_on_after(1.0):
                try:
                    await self._request(Method.DISCONNECT, {"peer_id": self.peer_id}, 1.0)
                except (SignalingError, SignalingConnectionError) as err:
                    log.debug("%s: peer.disconnect failed: %s", self.peer_id, err)
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(1.0):
                await ws.aclose()
        self._run_scope.cancel()  # whatever run() is doing now: connecting, serving, backing off
        with trio.move_on_after(2.0):
            await self._stopped.wait()

    async def _open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        if self._ssl_context is not None:
            stream = await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=self._ssl_context
            )
            # Handshake here: under trio-websocket 0.12.2 a failed one left the upgrade waiting
            # out connect_timeout, and an untrusted certificate was retried like a network fault.
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                await trio.aclose_forcefully(stream)
                raise _tls_failure(self.url, exc.__cause__) from None
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return stream
        return await trio.open_tcp_stream(self._host, self._port)

    async def _attempt(self, task_status: trio.TaskStatus[AnnounceResult]) -> _Attempt:
        if self._connector is not None:
            return await self._attempt_link(self._connector, task_status)
        attempt = _Attempt()
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await self._open_stream()
        except SignalingConnectionError as exc:  # the server's certificate is not trusted
            attempt.reason, attempt.error = str(exc), exc
            return attempt
        except (OSError, trio.TooSlowError) as exc:
            attempt.reason = f"cannot connect to {self.url}: {exc or type(exc).__name__}"
            return attempt
        try:
            async with trio.open_nursery() as nursery:
                await self._session(nursery, stream, attempt, task_status)
        except ExceptionGroup as group:
            # trio-websocket's reader raised: the handshake was rejected, or (#184) a ping arrived
            # while we were closing and it tried to pong in LOCAL_CLOSING.
            leaf = _first_leaf(group)
            attempt.reason = f"{type(leaf).__name__}: {leaf}"
            if isinstance(leaf, ConnectionRejected):
                why = bytes(leaf.body or b"").decode("utf-8", "replace").strip()[:200]
                attempt.error = SignalingConnectionError(
                    f"{self.url} refused the WebSocket handshake (HTTP {leaf.status_code}"
                    + (f": {why})" if why else ")")
                )
        finally:
            self._ws = None
            self._fail_waiters(attempt.reason)
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return attempt

    async def _attempt_link(
        self,
        connector: Callable[[], Awaitable[SignalingLink]],
        task_status: trio.TaskStatus[AnnounceResult],
    ) -> _Attempt:
        """One attempt over an injected link (the in-process one of ``meshrtc serve``)."""
        attempt = _Attempt()
        try:
            with trio.fail_after(self.connect_timeout):
                link = await connector()
        except (OSError, trio.TooSlowError) as exc:
            attempt.reason = f"cannot open the signaling link: {exc or type(exc).__name__}"
            return attempt
        try:
            async with trio.open_nursery() as nursery:
                await self._serve_link(nursery, link, attempt, task_status)
        finally:
            self._ws = None
            self._fail_waiters(attempt.reason)
            with trio.CancelScope(shield=True):
                await link.aclose()
        return attempt

    async def _session(
        self,
        nursery: trio.Nursery,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        attempt: _Attempt,
        task_status: trio.TaskStatus[AnnounceResult],
    ) -> None:
        try:
            with trio.fail_after(self.connect_timeout):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"{self._host}:{self._port}",
                    self._resource,
                    max_message_size=MAX_MESSAGE_SIZE,
                    receive_buffer_size=64 * 1024,
                )
        except (HandshakeError, ConnectionClosed, trio.TooSlowError) as exc:
            attempt.reason = f"WebSocket handshake failed: {exc!r}"
            nursery.cancel_scope.cancel()
            return
        await self._serve_link(nursery, ws, attempt, task_status)

    async def _serve_link(
        self,
        nursery: trio.Nursery,
        ws: SignalingLink,
        attempt: _Attempt,
        task_status: trio.TaskStatus[AnnounceResult],
    ) -> None:
        """Announce over an open link and leave its read and ping loops running in ``nursery``."""
        self._ws = ws
        self.opened()
        nursery.start_soon(self._read_loop, ws, attempt, nursery.cancel_scope)
        nursery.start_soon(self._ping_loop, ws, attempt, nursery.cancel_scope)
        try:
            result = AnnounceResult.from_json(
                await self._request(Method.ANNOUNCE, self._announce_params(), self.request_timeout)
            )
            if self.state is not _C.Ready:  # the reader found the result malformed
                raise SignalingError(ErrorCode.INTERNAL_ERROR, "malformed announce result")
        except SignalingError as err:
            retryable = self._announced_once and err.code in _RETRYABLE_ON_REANNOUNCE
            attempt.reason = f"announce refused: {err.message}"
            if not retryable:
                attempt.error = err
            nursery.cancel_scope.cancel()
            return
        except SignalingConnectionError as err:
            attempt.reason = str(err)
            nursery.cancel_scope.cancel()
            return
        attempt.ready = True
        if not self._announced_once:
            self._announced_once = True
            task_status.started(result)
        log.info("%s: announced in session %s", self.peer_id, result.session_id)
        # The read and ping loops end the connection by cancelling the nursery.

    def _announce_params(self) -> JsonObject:
        """The announce, with the secret of the last one: the server then gives us back our id
        after a drop (and refuses it to anyone else for its grace period)."""
        params = self._announce.to_json()
        result = self.announce_result
        if result is not None and result.resume is not None:
            params["resume"] = result.resume
        return params

    async def _read_loop(
        self, ws: SignalingLink, attempt: _Attempt, scope: trio.CancelScope
    ) -> None:
        while True:
            try:
                data = await ws.get_message()
            except ConnectionClosed as exc:
                why = exc.reason
                attempt.reason = (
                    "connection closed"
                    if why is None
                    else f"connection closed ({why.code} {why.reason or why.name})"
                )
                if not self._closing:
                    # When we are the ones closing, aclose() is still waiting for the server's
                    # close frame, which trio-websocket's reader (in this nursery) must read.
                    scope.cancel()
                return
            try:
                message = parse_server_message(data)
            except SignalingError as err:
                log.warning("%s: ignoring a bad message from the server: %s", self.peer_id, err)
                continue
            if isinstance(message, Notification):
                self._on_notification(message)
            else:
                self._on_response(message)

    def _on_response(self, response: Response | ErrorResponse) -> None:
        try:
            request_id = self._tracker.match(response)
        except SignalingError:
            if isinstance(response, ErrorResponse):
                log.warning("%s: server error: %s", self.peer_id, response.message)
            else:
                log.warning("%s: response to unknown request %r", self.peer_id, response.id)
            return
        if request_id is None:
            log.debug("%s: late response to abandoned request %r", self.peer_id, response.id)
            return
        waiter = self._waiters.get(request_id)
        if waiter is None:
            return
        if waiter.method == Method.ANNOUNCE and isinstance(response, Response):
            # Applied here, in arrival order, so a peer.joined right behind the result is not lost
            # and whoever sees Reconnected already finds the client Ready.
            try:
                result = AnnounceResult.from_json(response.result)
            except SignalingError as err:
                log.warning("%s: bad announce result: %s", self.peer_id, err)
            else:
                self._peers = {p.peer_id: p for p in result.peers}
                self.announce_result = result
                if self.down_since is not None:
                    self.last_outage = trio.current_time() - self.down_since
                self.down_since = None
                self.announced()
                if self._announced_once:
                    self.reconnects += 1
                    self._emit(Reconnected(result))
        waiter.response = response
        waiter.event.set()

    def _on_notification(self, notification: Notification) -> None:
        try:
            event: ClientEvent = parse_notification(notification)
        except SignalingError as err:
            if err.code != ErrorCode.METHOD_NOT_FOUND:
                log.warning("%s: ignoring bad %s: %s", self.peer_id, notification.method, err)
                return
            event = notification
        if isinstance(event, PeerJoined):
            self._peers[event.peer.peer_id] = event.peer
        elif isinstance(event, PeerLeft):
            self._peers.pop(event.peer_id, None)
        self._emit(event)

    def _emit(self, event: ClientEvent) -> None:
        try:
            self._events_in.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
            log.error("%s: notifications channel full; dropped %r", self.peer_id, event)
        except trio.ClosedResourceError:
            pass

    async def _ping_loop(
        self, ws: SignalingLink, attempt: _Attempt, scope: trio.CancelScope
    ) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            try:
                with trio.fail_after(self.ping_timeout):
                    await ws.ping()
            except trio.TooSlowError:
                attempt.reason = f"no pong within {self.ping_timeout:g}s"
                scope.cancel()
                return
            except ConnectionClosed:
                scope.cancel()
                return

    def _fail_waiters(self, reason: str) -> None:
        for request_id in self._tracker.clear():
            waiter = self._waiters.get(request_id)
            if waiter is not None:
                waiter.lost = reason
                waiter.event.set()


def _tls_failure(url: str, cause: BaseException | None) -> Exception:
    """A certificate we do not trust is a configuration error, raised at once; any other TLS
    failure (a reset, a server restarting) is an :class:`OSError` that is retried."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return SignalingConnectionError(
            f"{url}: TLS certificate verify failed ({cause.verify_message}); if the server's "
            "certificate is from your own CA, pass its file as cafile "
            "(TransportConfig.signaling_cafile)"
        )
    return OSError(f"TLS handshake failed: {cause or 'connection closed'}")


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
