"""SignalingClient against the real server (and a scripted one for the failures it cannot produce).

Reconnect tests inject the backoff sleep and the random source: the sleep records each delay and
waits for the test's go-ahead, so every reconnect happens exactly when the test says, in no time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import wsproto
import wsproto.events

from meshrtc.errors import ConfigError, MeshRtcError
from meshrtc.signaling.auth import TokenAuthority
from meshrtc.signaling.client import (
    Backoff,
    ClientEvent,
    Disconnected,
    Reconnected,
    SignalingClient,
    SignalingConnectionError,
    SignalingError,
    SignalingTimeoutError,
)
from meshrtc.signaling.protocol import (
    Answer,
    IceCandidate,
    Notification,
    Offer,
    PeerJoined,
    PeerLeft,
)
from meshrtc.signaling.server import SignalingServer

from .test_signaling_server import CANDIDATE, SDP, raw_peer, serving


class GatedSleep:
    """An injected backoff sleep: records the delay, then waits for :meth:`release`."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._send, self._receive = trio.open_memory_channel[None](100)
        self._called = trio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._called.set()
        self._called = trio.Event()
        await self._receive.receive()

    def release(self) -> None:
        self._send.send_nowait(None)

    async def wait_calls(self, count: int) -> None:
        """Wait until the client has started its ``count``-th backoff sleep."""
        with trio.fail_after(5):
            while len(self.delays) < count:
                await self._called.wait()


async def instant_sleep(seconds: float) -> None:
    await trio.lowlevel.checkpoint()


def client_for(url: str, peer_id: str, **kwargs: Any) -> SignalingClient:
    kwargs.setdefault("random", lambda: 0.5)
    kwargs.setdefault("sleep", instant_sleep)
    return SignalingClient(url, peer_id, **kwargs)


async def next_event(client: SignalingClient) -> ClientEvent:
    with trio.fail_after(5):
        return await client.notifications.receive()


async def next_event_of(client: SignalingClient, kind: type[Any]) -> Any:
    with trio.fail_after(5):
        while True:
            event = await client.notifications.receive()
            if isinstance(event, kind):
                return event


# --- Backoff ------------------------------------------------------------------------------------


def test_default_backoff_doubles_from_one_second_with_up_to_25_percent_jitter() -> None:
    backoff = Backoff()
    assert backoff.tries == 5
    assert [backoff.delay(n, 0.0) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [backoff.delay(n, 0.999) for n in range(5)] == pytest.approx(
        [1.249, 2.498, 4.996, 9.992, 19.984], rel=1e-3
    )
    assert backoff.delay(5, 0.0) == 30.0  # capped
    assert backoff.delay(12, 0.5) == 30.0 * 1.125  # jitter on top of the cap


def test_backoff_is_configurable_and_validated() -> None:
    assert Backoff(initial=0.1, factor=3, maximum=1).delay(3, 0) == 1
    for bad in ({"tries": -1}, {"tries": 1.5}, {"factor": 0.5}, {"jitter": -0.1}):
        with pytest.raises(ConfigError, match="backoff"):
            Backoff(**bad)


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("http://x/ws", "a"), {}, "url"),
        (("ws://x:99999/ws", "a"), {}, "url"),
        (("ws://x/ws", "a b"), {}, "peer_id"),
        (("ws://x/ws", "a"), {"capabilities": ["smell"]}, "announce"),
        (("ws://x/ws", "a"), {"session_id": "no/slash"}, "announce"),
        (("ws://x/ws", "a"), {"request_timeout": 0}, "request_timeout"),
    ],
)
def test_bad_client_settings_are_config_errors(
    args: tuple[str, str], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SignalingClient(*args, **kwargs)
    assert info.value.field == field


# --- The happy path -----------------------------------------------------------------------------


async def test_two_clients_announce_relay_and_leave() -> None:
    async with serving() as server, trio.open_nursery() as nursery:
        alice = client_for(server.url, "alice", user_data={"name": "Alice"})
        assert alice.state == "Idle"
        first = await nursery.start(alice.run)
        assert alice.state == "Ready"
        assert first.peers == ()
        assert first.session_id == "default"
        bob = client_for(server.url, "bob", capabilities=["audio"])
        second = await nursery.start(bob.run)
        assert [p.peer_id for p in second.peers] == ["alice"]
        assert second.peers[0].user_data == {"name": "Alice"}

        joined = await next_event(alice)
        assert isinstance(joined, PeerJoined)
        assert joined.peer.peer_id == "bob"
        assert set(alice.peers) == {"bob"}
        assert set(bob.peers) == {"alice"}

        await bob.offer("alice", SDP)
        assert await next_event(alice) == Offer("bob", "alice", SDP)
        await alice.answer("bob", SDP)
        assert await next_event(bob) == Answer("alice", "bob", SDP)
        await bob.ice_candidate("alice", CANDIDATE, sdp_mid="0", sdp_m_line_index=0)
        await bob.ice_candidate("alice", "", confirm=False)
        assert await next_event(alice) == IceCandidate("bob", "alice", CANDIDATE, "0", 0)
        end = await next_event(alice)
        assert isinstance(end, IceCandidate)
        assert end.end_of_candidates
        assert [p.peer_id for p in await alice.list_peers()] == ["bob"]

        await bob.aclose()
        assert bob.state == "Closed"
        assert await next_event(alice) == PeerLeft("bob", "disconnect")
        assert alice.peers == {}
        with pytest.raises(trio.EndOfChannel):
            await bob.notifications.receive()
        await alice.aclose()


async def test_server_errors_raise_signaling_error_with_code_and_message() -> None:
    async with serving() as server, trio.open_nursery() as nursery:
        alice = client_for(server.url, "alice")
        await nursery.start(alice.run)
        with pytest.raises(SignalingError) as info:
            await alice.offer("ghost", SDP)
        assert info.value.code == -32000
        assert info.value.message == "peer 'ghost' not found"
        assert isinstance(info.value, MeshRtcError)
        with pytest.raises(SignalingError) as bad_sdp:
            await alice.answer("ghost", "v=0\r\n")
        assert bad_sdp.value.code == -32003
        with pytest.raises(SignalingError) as unknown:
            await alice.request("peer.teleport", {})
        assert unknown.value.code == -32601
        assert alice.state == "Ready"
        await alice.aclose()


async def test_requests_before_the_client_is_ready_fail_at_once() -> None:
    client = client_for("ws://127.0.0.1:9/ws", "a")
    with pytest.raises(SignalingConnectionError, match="Idle"):
        await client.offer("b", SDP)
    with pytest.raises(SignalingConnectionError):
        await client.notify("peer.list", {})
    await client.aclose()
    assert client.state == "Closed"


# --- Refusals -----------------------------------------------------------------------------------


async def test_a_taken_id_on_first_announce_is_fatal() -> None:
    async with serving() as server, raw_peer(server.url) as squatter:
        await squatter.announce("alice")
        client = client_for(server.url, "alice")
        async with trio.open_nursery() as nursery:
            with pytest.raises(SignalingError) as info:
                await nursery.start(client.run)
        assert info.value.code == -32006
        assert client.state == "Closed"


async def test_a_bad_token_is_fatal() -> None:
    authority = TokenAuthority(b"s" * 32)
    async with serving(auth=authority) as server:
        client = client_for(server.url, "alice", token="guess")
        async with trio.open_nursery() as nursery:
            with pytest.raises(SignalingConnectionError, match="HTTP 401: malformed token"):
                await nursery.start(client.run)
        assert client.state == "Closed"
        ok = client_for(server.url, "alice", token=authority.issue("alice", "default"))
        async with trio.open_nursery() as nursery:
            assert (await nursery.start(ok.run)).peer_id == "alice"
            await ok.aclose()


async def test_a_refused_handshake_is_fatal() -> None:
    async with serving() as server:
        client = client_for(server.url.replace("/ws", "/elsewhere"), "alice")
        async with trio.open_nursery() as nursery:
            with pytest.raises(SignalingConnectionError, match="HTTP 404"):
                await nursery.start(client.run)


# --- Reconnecting -------------------------------------------------------------------------------


async def start_server_on(
    nursery: trio.Nursery, port: int
) -> tuple[SignalingServer, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[SignalingServer]) -> None:
        with scope:
            await SignalingServer(port=port, shutdown_timeout=0.2).run(task_status=task_status)

    server: SignalingServer = await nursery.start(run)
    return server, scope


async def test_reconnects_with_backoff_and_announces_again() -> None:
    sleep = GatedSleep()
    async with trio.open_nursery() as nursery:
        server, scope = await start_server_on(nursery, 0)
        port = server.port
        client = client_for(server.url, "alice", sleep=sleep, random=lambda: 0.5)
        await nursery.start(client.run)

        scope.cancel()  # the server goes away
        lost = await next_event(client)
        assert isinstance(lost, Disconnected)
        assert "1001" in lost.reason
        await sleep.wait_calls(1)
        assert client.state == "Reconnecting"
        assert sleep.delays == [1.0 * 1.125]

        server, scope = await start_server_on(nursery, port)
        async with raw_peer(server.url) as bob:
            await bob.announce("bob")
            sleep.release()
            back = await next_event(client)
            assert isinstance(back, Reconnected)
            assert [p.peer_id for p in back.result.peers] == ["bob"]
            assert client.state == "Ready"
            assert client.reconnects == 1
            assert set(client.peers) == {"bob"}
            assert server.hub.sessions() == {"default": ("bob", "alice")}
            await client.offer("bob", SDP)
            await bob.wait_notification("peer.offer", **{"from": "alice"})
        await client.aclose()
        scope.cancel()


async def test_a_stale_id_on_reannounce_is_retried() -> None:
    sleep = GatedSleep()
    async with trio.open_nursery() as nursery:
        server, scope = await start_server_on(nursery, 0)
        port = server.port
        client = client_for(server.url, "alice", sleep=sleep, random=lambda: 0.0)
        await nursery.start(client.run)
        scope.cancel()
        await sleep.wait_calls(1)

        server, scope = await start_server_on(nursery, port)
        # The ghost stands for our own old connection, whose resume secret we would hold; this
        # one is a stranger's, so its id must not stay held for it once it is gone.
        server.hub.resume_grace = 0.0
        async with raw_peer(server.url) as ghost:
            # Our old connection is still registered (as on a server that has not noticed yet).
            await ghost.announce("alice")
            sleep.release()
            await sleep.wait_calls(2)
            assert sleep.delays == [1.0, 2.0]
            assert client.state == "Reconnecting"
        sleep.release()  # the ghost is gone now
        back = await next_event_of(client, Reconnected)
        assert back.result.peer_id == "alice"
        assert server.hub.sessions() == {"default": ("alice",)}
        await client.aclose()
        scope.cancel()


async def test_gives_up_after_the_configured_tries() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)
        await trio.lowlevel.checkpoint()

    client = client_for(f"ws://127.0.0.1:{port}/ws", "alice", sleep=record, random=lambda: 1.0)
    async with trio.open_nursery() as nursery:
        with pytest.raises(SignalingConnectionError, match="gave up after 5"):
            await nursery.start(client.run)
    assert delays == [1.25, 2.5, 5.0, 10.0, 20.0]
    assert client.state == "Closed"


# --- A scripted server for what the real one never does ----------------------------------------


Script = Callable[[trio.SocketStream, wsproto.WSConnection, dict[str, Any]], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    """Accepts WebSockets with wsproto, answers the announce, then runs ``script``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        announce: dict[str, Any] | None = None
        while announce is None:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.Request):
                    await stream.send_all(ws.send(wsproto.events.AcceptConnection()))
                elif isinstance(event, wsproto.events.TextMessage):
                    announce = json.loads(event.data)
        result = {
            "peer_id": announce["params"]["peer_id"],
            "session_id": "default",
            "peers": [],
            "server_time": 0.0,
        }
        reply = {"jsonrpc": "2.0", "id": announce["id"], "result": result}
        await stream.send_all(ws.send(wsproto.events.TextMessage(json.dumps(reply))))
        await script(stream, ws, announce)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield f"ws://127.0.0.1:{port}/ws"
        nursery.cancel_scope.cancel()


async def test_unanswered_pings_count_as_a_lost_connection() -> None:
    async def go_silent(stream: trio.SocketStream, ws: wsproto.WSConnection, _: Any) -> None:
        custom = {"jsonrpc": "2.0", "method": "peer.custom", "params": {"x": 1}}
        await stream.send_all(ws.send(wsproto.events.TextMessage(json.dumps(custom))))
        await trio.sleep_forever()  # never reads again, so never answers a ping

    sleep = GatedSleep()
    async with scripted_server(go_silent) as url, trio.open_nursery() as nursery:
        client = client_for(url, "alice", ping_interval=0.05, ping_timeout=0.1, sleep=sleep)
        await nursery.start(client.run)
        # A notification this client does not know is passed on raw, not dropped.
        assert await next_event(client) == Notification("peer.custom", {"x": 1})
        lost = await next_event(client)
        assert lost == Disconnected("no pong within 0.1s")
        await sleep.wait_calls(1)
        await client.aclose()
        assert client.state == "Closed"
        nursery.cancel_scope.cancel()


async def test_a_request_without_response_times_out() -> None:
    answered: list[str] = []

    async def answer_nothing(stream: trio.SocketStream, ws: wsproto.WSConnection, _: Any) -> None:
        while data := await stream.receive_some(65536):
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.TextMessage):
                    answered.append(event.data)
                elif isinstance(event, wsproto.events.Ping):
                    await stream.send_all(ws.send(event.response()))

    async with scripted_server(answer_nothing) as url, trio.open_nursery() as nursery:
        client = client_for(url, "alice", request_timeout=0.1)
        await nursery.start(client.run)
        with pytest.raises(SignalingTimeoutError, match=r"peer\.list within 0\.1s"):
            await client.list_peers()
        assert client.state == "Ready"  # a slow answer is not a lost connection
        assert json.loads(answered[0])["method"] == "peer.list"
        nursery.cancel_scope.cancel()


async def test_a_full_notification_channel_drops_and_counts() -> None:
    async with serving() as server, trio.open_nursery() as nursery:
        alice = client_for(server.url, "alice", event_buffer=1)
        await nursery.start(alice.run)
        async with raw_peer(server.url) as bob, raw_peer(server.url) as carol:
            await bob.announce("bob")
            await carol.announce("carol")
            await bob.call("peer.offer", {"from": "bob", "to": "alice", "sdp": SDP})
            # Responses come in order after the notifications, so this is a barrier.
            await alice.list_peers()
            assert alice.dropped_events == 2  # carol's peer.joined and bob's offer
            # The view of the session is kept even when events are dropped.
            assert set(alice.peers) == {"bob", "carol"}
        first = await next_event(alice)
        assert isinstance(first, PeerJoined)
        assert first.peer.peer_id == "bob"
        await alice.aclose()
