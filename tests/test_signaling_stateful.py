"""A hypothesis state machine against a real signaling server on loopback.

Hypothesis has no async stateful testing, so each machine owns a trio loop in a helper thread and
calls into it with ``trio.from_thread.run``. Raw WebSocket peers join, leave, offer, answer, trickle
candidates, send garbage, spoof ``from`` and target other sessions; the model predicts every
response and every notification. After each step a barrier (one ``peer.list`` per connection, whose
response arrives after everything queued before it) lets the invariants compare exactly:

- no message crosses sessions: each connection receives exactly the notifications the model expects;
- every request gets exactly one response;
- every live peer's view of its session (built from what it received) equals the server's.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import hypothesis.strategies as st
import outcome
import trio
import trio.testing
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshrtc.signaling.server import SignalingServer

from .test_signaling_server import CANDIDATE, SDP, RawPeer, raw_peer

T = TypeVar("T")

MAX_PEERS = 3
MAX_CONNECTIONS = 6
SESSIONS = ("default", "s1")
METHODS = st.sampled_from(["peer.offer", "peer.answer", "peer.ice_candidate"])

# (frame, JSON-RPC code of the id-less error it must get back)
GARBAGE: list[tuple[str | bytes, int]] = [
    ("not json", -32700),
    ("", -32700),
    (b"\x00\x01binary", -32700),
    ('{"jsonrpc":"2.0","id":1,"method":"peer.list"', -32700),
    ("[1, 2]", -32600),
    ("42", -32600),
    ('{"jsonrpc":"2.0","method":7}', -32600),
    ('{"jsonrpc":"2.0","id":{"x":1},"method":"peer.list"}', -32600),
    ('{"jsonrpc":"2.0","id":1e400,"method":"peer.list"}', -32700),
]


class LoopThread:
    """A trio loop in a helper thread; sync code calls into it with :meth:`run`."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._outcome: outcome.Outcome[None] | None = None
        self._thread = threading.Thread(target=self._target, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the trio loop thread did not start")

    def _target(self) -> None:
        self._outcome = outcome.capture(trio.run, self._main)
        self._ready.set()  # in case the loop failed before it was ready

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def close(self) -> None:
        if self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
            self._thread.join(10)
        assert not self._thread.is_alive(), "the trio loop did not stop"
        assert self._outcome is not None
        self._outcome.unwrap()


@attrs.define(eq=False)
class Conn:
    """One connection as the model sees it, and what it has received so far."""

    peer: RawPeer
    stop: trio.Event
    done: trio.Event
    peer_id: str | None = None
    session: str | None = None
    expected_notifications: list[dict[str, Any]] = attrs.field(factory=list)
    expected_null_errors: list[int] = attrs.field(factory=list)
    sent_ids: list[int] = attrs.field(factory=list)
    announce_ids: set[int] = attrs.field(factory=set)
    leave_ids: set[int] = attrs.field(factory=set)
    view: list[str] | None = None  # built only from received messages
    seen: int = 0


async def _peer_task(url: str, task_status: trio.TaskStatus[Conn]) -> None:
    async with raw_peer(url) as peer:
        conn = Conn(peer, trio.Event(), trio.Event())
        task_status.started(conn)
        await conn.stop.wait()
    conn.done.set()


def _notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


class SignalingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = LoopThread()
        self.server: SignalingServer = self.loop.run(self._start_server)
        self.conns: list[Conn] = []
        self.sessions: dict[str, list[str]] = {}  # the model: session -> ids in join order
        self.ids_used: list[str] = []
        self.fresh = 0

    async def _start_server(self) -> SignalingServer:
        server = SignalingServer(
            port=0, max_peers=MAX_PEERS, rate_limit=10_000, rate_burst=10_000, shutdown_timeout=0.2
        )
        started: SignalingServer = await self.loop.nursery.start(server.run)
        return started

    def teardown(self) -> None:
        try:
            for conn in self.conns:
                self.loop.run(self._close, conn)
        finally:
            self.loop.close()

    # --- helpers run on the trio loop ------------------------------------------------------------

    async def _open(self) -> Conn:
        conn: Conn = await self.loop.nursery.start(_peer_task, self.server.url)
        return conn

    async def _close(self, conn: Conn) -> None:
        conn.stop.set()
        with trio.fail_after(5):
            await conn.done.wait()

    async def _call(self, conn: Conn, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await conn.peer.call(method, params)
        conn.sent_ids.append(response["id"])
        return response

    async def _send(self, conn: Conn, frame: Any) -> None:
        await conn.peer.send(frame)

    async def _wait_for_hub(self, connections: int) -> None:
        # The hub forgets a connection only after the server has read its close; wait for that.
        with trio.fail_after(5):
            while self.server.hub.connections != connections:
                await trio.testing.wait_all_tasks_blocked(0.001)

    def call(self, conn: Conn, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.loop.run(self._call, conn, method, params)

    # --- model helpers -------------------------------------------------------------------------

    def conn_of(self, peer_id: str) -> Conn | None:
        return next((c for c in self.conns if c.peer_id == peer_id), None)

    def leave(self, conn: Conn, reason: str) -> None:
        assert conn.peer_id is not None
        assert conn.session is not None
        members = self.sessions[conn.session]
        members.remove(conn.peer_id)
        for other_id in members:
            other = self.conn_of(other_id)
            assert other is not None
            other.expected_notifications.append(
                _notification("peer.left", {"peer_id": conn.peer_id, "reason": reason})
            )
        if not members:
            del self.sessions[conn.session]
        conn.peer_id = conn.session = None

    @staticmethod
    def error_code(response: dict[str, Any]) -> int | None:
        return response["error"]["code"] if "error" in response else None

    # --- rules ---------------------------------------------------------------------------------

    @precondition(lambda self: len(self.conns) < MAX_CONNECTIONS)
    @rule()
    def connect(self) -> None:
        self.conns.append(self.loop.run(self._open))

    @precondition(lambda self: len(self.conns) < MAX_CONNECTIONS)
    @rule(data=st.data(), session=st.sampled_from(SESSIONS))
    def join(self, data: st.DataObject, session: str) -> None:
        """Connect and announce a fresh id in one step, so that sessions fill up quickly."""
        self.connect()
        self.announce(data, session, reuse=False, conn=self.conns[-1])

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), session=st.sampled_from(SESSIONS), reuse=st.booleans())
    def announce(
        self, data: st.DataObject, session: str, reuse: bool, conn: Conn | None = None
    ) -> None:
        if conn is None:
            conn = data.draw(st.sampled_from(self.conns))
        taken = [c.peer_id for c in self.conns if c.peer_id is not None]
        if reuse and taken:
            peer_id = data.draw(st.sampled_from(taken))
        else:
            self.fresh += 1
            peer_id = f"p{self.fresh}"
        params = {"peer_id": peer_id, "capabilities": ["audio"], "session_id": session}
        response = self.call(conn, "peer.announce", params)
        conn.announce_ids.add(response["id"])
        members = self.sessions.get(session, [])
        if conn.peer_id is not None:
            assert self.error_code(response) == -32600
        elif peer_id in taken:
            assert self.error_code(response) == -32006
        elif len(members) >= MAX_PEERS:
            assert self.error_code(response) == -32005
        else:
            result = response["result"]
            assert [p["peer_id"] for p in result["peers"]] == members
            assert result["session_id"] == session
            joined = {"peer_id": peer_id, "capabilities": ["audio"], "user_data": {}}
            for other_id in members:
                other = self.conn_of(other_id)
                assert other is not None
                other.expected_notifications.append(_notification("peer.joined", joined))
            self.sessions.setdefault(session, []).append(peer_id)
            self.ids_used.append(peer_id)
            conn.peer_id, conn.session = peer_id, session

    def announced(self) -> list[Conn]:
        return [c for c in self.conns if c.peer_id is not None]

    def cross_session_pairs(self) -> list[tuple[Conn, Conn]]:
        return [
            (a, b) for a in self.announced() for b in self.announced() if a.session != b.session
        ]

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), method=METHODS, as_notification=st.booleans())
    def relay(self, data: st.DataObject, method: str, as_notification: bool) -> None:
        """Mostly between members of one session, sometimes to a ghost or a departed id."""
        conn = data.draw(
            st.sampled_from(self.announced() or self.conns) | st.sampled_from(self.conns)
        )
        live = [
            c.peer_id
            for c in self.announced()
            if c is not conn and c.session == conn.session and c.peer_id is not None
        ]
        anyone = st.sampled_from(["ghost", *self.ids_used])
        to = data.draw(st.sampled_from(live) | anyone if live else anyone)
        self.send_relay(data, conn, method, conn.peer_id or "nobody", to, as_notification)

    @precondition(lambda self: self.cross_session_pairs())
    @rule(data=st.data(), method=METHODS, as_notification=st.booleans())
    def relay_to_another_session(
        self, data: st.DataObject, method: str, as_notification: bool
    ) -> None:
        conn, target = data.draw(st.sampled_from(self.cross_session_pairs()))
        assert conn.peer_id is not None
        assert target.peer_id is not None
        self.send_relay(data, conn, method, conn.peer_id, target.peer_id, as_notification)

    @precondition(lambda self: len(self.announced()) >= 2)
    @rule(data=st.data(), method=METHODS)
    def spoof_from(self, data: st.DataObject, method: str) -> None:
        conn = data.draw(st.sampled_from(self.announced()))
        victim = data.draw(st.sampled_from([c for c in self.announced() if c is not conn]))
        assert victim.peer_id is not None
        self.send_relay(data, conn, method, victim.peer_id, victim.peer_id, False)

    def send_relay(
        self,
        data: st.DataObject,
        conn: Conn,
        method: str,
        frm: str,
        to: str,
        as_notification: bool,
    ) -> None:
        params: dict[str, Any] = {"from": frm, "to": to}
        if method == "peer.ice_candidate":
            params["candidate"] = data.draw(st.sampled_from([CANDIDATE, ""]))
            params["sdp_mid"] = "0"
        else:
            params["sdp"] = SDP
            as_notification = False  # only candidates may be trickled as notifications
        target = self.conn_of(to)
        if conn.peer_id is None:
            expected: int | None = -32001
        elif frm != conn.peer_id:
            expected = -32007
        elif to == conn.peer_id:
            expected = -32602
        elif target is None:
            expected = -32000
        elif target.session != conn.session:
            expected = -32007
        else:
            expected = None
            target.expected_notifications.append(_notification(method, params))
        event(f"relay expects {expected}")
        if as_notification:
            self.loop.run(self._send, conn, {"jsonrpc": "2.0", "method": method, "params": params})
            return
        response = self.call(conn, method, params)
        assert self.error_code(response) == expected, response
        if expected is None:
            assert response["result"] == {"status": "forwarded"}

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), garbage=st.sampled_from(GARBAGE))
    def send_garbage(self, data: st.DataObject, garbage: tuple[str | bytes, int]) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        frame, code = garbage
        self.loop.run(self._send, conn, frame)
        conn.expected_null_errors.append(code)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), own=st.booleans())
    def disconnect(self, data: st.DataObject, own: bool) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        others = [i for i in self.ids_used if i != conn.peer_id] or ["ghost"]
        peer_id = conn.peer_id if own and conn.peer_id else data.draw(st.sampled_from(others))
        response = self.call(conn, "peer.disconnect", {"peer_id": peer_id})
        if conn.peer_id is None:
            assert self.error_code(response) == -32001
        elif peer_id != conn.peer_id:
            assert self.error_code(response) == -32007
        else:
            assert response["result"] == {"status": "left"}
            conn.leave_ids.add(response["id"])
            self.leave(conn, "disconnect")

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        self.conns.remove(conn)
        self.loop.run(self._close, conn)
        if conn.peer_id is not None:
            self.leave(conn, "closed")
        self.loop.run(self._wait_for_hub, len(self.conns))

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def everything_matches_after_a_barrier(self) -> None:
        assert self.server.hub.sessions() == {s: tuple(m) for s, m in self.sessions.items()}
        for conn in self.conns:
            listed = self.call(conn, "peer.list", {})
            self.check(conn, listed)

    def check(self, conn: Conn, listed: dict[str, Any]) -> None:
        if conn.peer_id is None:
            assert self.error_code(listed) == -32001
        else:
            assert conn.session is not None
            others = [i for i in self.sessions[conn.session] if i != conn.peer_id]
            assert [p["peer_id"] for p in listed["result"]["peers"]] == others
        new = conn.peer.received[conn.seen :]
        conn.seen = len(conn.peer.received)
        notifications = [m for m in new if "method" in m]
        assert notifications == conn.expected_notifications, "wrong or cross-session messages"
        conn.expected_notifications.clear()
        answered = [m["id"] for m in new if "method" not in m and m["id"] is not None]
        assert sorted(answered) == sorted(conn.sent_ids), "not exactly one response per request"
        assert len(set(answered)) == len(answered)
        conn.sent_ids.clear()
        null_errors = [m["error"]["code"] for m in new if "method" not in m and m["id"] is None]
        assert null_errors == conn.expected_null_errors
        conn.expected_null_errors.clear()
        # The peer's own view, built only from what it received, equals the server's.
        for message in new:
            if message.get("id") in conn.announce_ids and "result" in message:
                conn.view = [p["peer_id"] for p in message["result"]["peers"]]
            elif message.get("id") in conn.leave_ids and "result" in message:
                conn.view = None
            elif message.get("method") == "peer.joined":
                assert conn.view is not None
                conn.view.append(message["params"]["peer_id"])
            elif message.get("method") == "peer.left":
                assert conn.view is not None
                conn.view.remove(message["params"]["peer_id"])
        if conn.peer_id is None:
            assert conn.view is None
        else:
            assert conn.session is not None
            server_view = self.server.hub.sessions()[conn.session]
            assert conn.view == [i for i in server_view if i != conn.peer_id]


TestSignalingStateful = SignalingMachine.TestCase
TestSignalingStateful.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
