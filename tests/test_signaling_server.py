"""The signaling server over real loopback sockets.

The helpers at the top (``serving``, ``raw_peer``, ``mute_peer``) are shared by the other signaling
test modules: raw peers send exactly the frames a test wants, which the typed client never would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import wsproto
import wsproto.events
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, wrap_client_stream
from wsproto.utilities import LocalProtocolError

from meshrtc.__main__ import main
from meshrtc.errors import ConfigError
from meshrtc.signaling.server import HttpRequest, HttpResponse, SignalingServer

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
CANDIDATE = "candidate:1 1 udp 2122252543 127.0.0.1 53640 typ host"


@asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[SignalingServer]:
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0, **kwargs).run)
        yield server
        nursery.cancel_scope.cancel()


class RawPeer:
    """A bare WebSocket client that records every message it receives."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[Any] = []
        self.close_reason: CloseReason | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()
        self._ids = itertools.count(1)
        self.peer_id: str | None = None

    async def read(self) -> None:
        while True:
            try:
                text = await self.ws.get_message()
            except ConnectionClosed as exc:
                self.close_reason = exc.reason
                self.closed.set()
                self._poke()
                return
            self.received.append(json.loads(text))
            self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[Any], bool]) -> Any:
        with trio.fail_after(5):
            while True:
                for message in self.received:
                    if predicate(message):
                        return message
                if self.closed.is_set():
                    raise AssertionError(f"connection closed ({self.close_reason}) while waiting")
                await self._changed.wait()

    async def send(self, message: Any) -> None:
        if isinstance(message, str | bytes):
            await self.ws.send_message(message)
        else:
            await self.ws.send_message(json.dumps(message))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(request)
        response: dict[str, Any] = await self.wait_for(
            lambda m: m.get("id") == request_id and ("result" in m or "error" in m)
        )
        return response

    async def announce(self, peer_id: str, session: str = "default", **extra: Any) -> Any:
        response = await self.call(
            "peer.announce",
            {
                "peer_id": peer_id,
                "capabilities": ["audio", "video"],
                "session_id": session,
                **extra,
            },
        )
        if "result" in response:
            self.peer_id = peer_id
        return response

    def notifications(self, method: str | None = None) -> list[dict[str, Any]]:
        return [
            m for m in self.received if "method" in m and (method is None or m["method"] == method)
        ]

    async def wait_notification(self, method: str, **params: Any) -> dict[str, Any]:
        found: dict[str, Any] = await self.wait_for(
            lambda m: (
                m.get("method") == method
                and all(m["params"].get(k) == v for k, v in params.items())
            )
        )
        return found


@asynccontextmanager
async def raw_peer(url: str, path: str | None = None) -> AsyncIterator[RawPeer]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"{parts.hostname}:{parts.port}", path or parts.path
            )
            peer = RawPeer(ws)
            nursery.start_soon(peer.read)
            try:
                yield peer
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except* LocalProtocolError:
        pass  # trio-websocket #184: a server ping raced our close; harmless here
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


class MutePeer:
    """A WebSocket client that completes the handshake, can send, and then never reads again
    (so it answers no ping and no close)."""

    def __init__(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self.ws = ws

    async def send(self, message: Any) -> None:
        data = self.ws.send(wsproto.events.TextMessage(json.dumps(message)))
        await self.stream.send_all(data)


@asynccontextmanager
async def mute_peer(port: int) -> AsyncIterator[MutePeer]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(wsproto.events.Request(host="127.0.0.1", target="/ws")))
        with trio.fail_after(5):
            accepted = False
            while not accepted:
                ws.receive_data(await stream.receive_some(65536))
                accepted = any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events())
        yield MutePeer(stream, ws)
    finally:
        await stream.aclose()


async def http_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


# --- Addresses and paths ------------------------------------------------------------------------


async def test_port_zero_is_reported_and_both_paths_accept_websockets() -> None:
    async with serving() as server:
        assert server.port > 0
        assert server.url == f"ws://127.0.0.1:{server.port}/ws"
        async with raw_peer(server.url) as a, raw_peer(server.url, "/") as b:
            assert (await a.announce("a"))["result"]["peers"] == []
            result = (await b.announce("b"))["result"]
            assert [p["peer_id"] for p in result["peers"]] == ["a"]
            joined = await a.wait_notification("peer.joined", peer_id="b")
            assert joined["params"] == {
                "peer_id": "b",
                "capabilities": ["audio", "video"],
                "user_data": {},
            }


def test_port_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError, match="not listening"):
        _ = SignalingServer().port


async def test_other_paths_are_refused_with_a_clean_404() -> None:
    async with serving() as server:
        reply = await http_exchange(server.port, UPGRADE.format(path="/nope").encode())
        assert reply.startswith(b"HTTP/1.1 404 ")
        assert b"/ws" in reply
        async with raw_peer(server.url, "/ws?x=1") as peer:
            assert "result" in await peer.announce("query-strings-are-fine")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
        (b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", b"400"),
        (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_plain_http_gets_a_clean_refusal(request_bytes: bytes, status: bytes) -> None:
    async with serving() as server:
        reply = await http_exchange(server.port, request_bytes)
        assert reply.split(b" ")[1] == status
        assert b"Connection: close" in reply


async def test_an_http_handler_serves_plain_gets_on_the_same_port() -> None:
    seen: list[HttpRequest] = []

    async def page(request: HttpRequest) -> HttpResponse | None:
        seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/":
            return HttpResponse(200, b"<h1>demo</h1>", "text/html")
        return None

    async with serving(http_handler=page) as server:
        reply = await http_exchange(server.port, b"GET /?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert reply.endswith(b"\r\n\r\n<h1>demo</h1>")
        assert b"Content-Type: text/html" in reply
        assert seen[0].header("HOST") == "x"
        head = await http_exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 13" in head
        missing = await http_exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 ")
        broken = await http_exchange(server.port, b"GET /boom HTTP/1.1\r\n\r\n")
        assert broken.startswith(b"HTTP/1.1 500 ")
        async with raw_peer(server.url, "/") as peer:
            assert "result" in await peer.announce("still-works")


# --- Forwarding and isolation -------------------------------------------------------------------


async def test_offer_answer_and_candidates_reach_only_their_target() -> None:
    async with (
        serving() as server,
        raw_peer(server.url) as a,
        raw_peer(server.url) as b,
        raw_peer(server.url) as c,
        raw_peer(server.url) as other,
    ):
        await a.announce("a", "s")
        await b.announce("b", "s")
        await c.announce("c", "s")
        await other.announce("o", "t")
        offer = {"from": "c", "to": "a", "sdp": SDP}
        assert (await c.call("peer.offer", offer))["result"] == {"status": "forwarded"}
        assert (await a.wait_notification("peer.offer"))["params"] == offer
        answer = {"from": "a", "to": "c", "sdp": SDP}
        assert (await a.call("peer.answer", answer))["result"] == {"status": "forwarded"}
        assert (await c.wait_notification("peer.answer"))["params"] == answer
        # A candidate as a notification: forwarded, no response.
        ice = {"from": "c", "to": "a", "candidate": CANDIDATE, "sdp_mid": "0"}
        await c.send({"jsonrpc": "2.0", "method": "peer.ice_candidate", "params": ice})
        assert (await a.wait_notification("peer.ice_candidate"))["params"] == ice
        # Another session is forbidden, even though the id exists.
        refused = await other.call("peer.offer", {"from": "o", "to": "a", "sdp": SDP})
        assert refused["error"]["code"] == -32007
        assert (await other.call("peer.list"))["result"] == {"peers": []}
        listed = (await a.call("peer.list"))["result"]["peers"]
        assert [p["peer_id"] for p in listed] == ["b", "c"]
        assert b.notifications("peer.offer") == []
        assert b.notifications("peer.ice_candidate") == []
        assert other.notifications() == []
        assert [m["id"] for m in c.received if "id" in m] == [1, 2]


async def test_leaving_by_closing_the_socket_tells_the_others() -> None:
    async with serving() as server, raw_peer(server.url) as a:
        await a.announce("a")
        async with raw_peer(server.url) as b:
            await b.announce("b")
        left = await a.wait_notification("peer.left", peer_id="b")
        assert left["params"]["reason"] == "closed"
        assert server.hub.sessions() == {"default": ("a",)}


# --- Limits -------------------------------------------------------------------------------------


async def test_oversized_message_closes_with_1009_and_the_peer_leaves() -> None:
    async with (
        serving(max_message_size=64 * 1024) as server,
        raw_peer(server.url) as big,
        raw_peer(server.url) as neighbour,
    ):
        await big.announce("big")
        await neighbour.announce("n")
        await big.send("x" * (64 * 1024 + 1))
        with trio.fail_after(5):
            await big.closed.wait()
        assert big.close_reason is not None
        assert big.close_reason.code == 1009
        left = await neighbour.wait_notification("peer.left", peer_id="big")
        assert left["params"]["reason"] == "message_too_big"
        assert (await neighbour.call("peer.list"))["result"] == {"peers": []}


async def test_flooding_past_the_rate_limit_closes_with_1008() -> None:
    async with (
        serving(rate_limit=1.0, rate_burst=3.0) as server,
        raw_peer(server.url) as flood,
        raw_peer(server.url) as neighbour,
    ):
        await neighbour.announce("n")
        await flood.announce("f")
        with contextlib.suppress(ConnectionClosed):  # the close may come before the 10th
            for _ in range(10):
                await flood.send({"jsonrpc": "2.0", "method": "peer.list"})
        with trio.fail_after(5):
            await flood.closed.wait()
        assert flood.close_reason is not None
        assert flood.close_reason.code == 1008
        left = await neighbour.wait_notification("peer.left", peer_id="f")
        assert left["params"]["reason"] == "rate_limited"


async def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    async with (
        serving(ping_interval=0.05, ping_timeout=0.2) as server,
        raw_peer(server.url) as neighbour,
        mute_peer(server.port) as mute,
    ):
        await neighbour.announce("n")
        await mute.send(
            {
                "jsonrpc": "2.0",
                "method": "peer.announce",
                "params": {"peer_id": "mute", "capabilities": ["audio"]},
            }
        )
        await neighbour.wait_notification("peer.joined", peer_id="mute")
        left = await neighbour.wait_notification("peer.left", peer_id="mute")
        assert left["params"]["reason"] == "timeout"
        # The neighbour itself answers pings and stays.
        assert (await neighbour.call("peer.list"))["result"] == {"peers": []}


async def test_a_peer_that_does_not_read_costs_its_sender_not_itself() -> None:
    """A recipient that stops reading fills only the sender's share of its queue (issue 13): the
    sender's relays are refused (-32008), then the sender is closed (1008) if it keeps going. The
    mute peer is not dropped for it (its unanswered pings drop it: test above)."""
    big_sdp = SDP + "a=x-pad:" + "p" * 60_000 + "\r\n"  # under the SDP size limit
    async with (
        serving(outbox_size=2, rate_limit=1000.0, rate_burst=1000.0) as server,
        raw_peer(server.url) as sender,
        mute_peer(server.port) as mute,
    ):
        await sender.announce("s")
        await mute.send(
            {
                "jsonrpc": "2.0",
                "method": "peer.announce",
                "params": {"peer_id": "mute", "capabilities": ["audio"]},
            }
        )
        await sender.wait_notification("peer.joined", peer_id="mute")
        with trio.fail_after(20):
            for _ in range(500):
                reply = await sender.call("peer.offer", {"from": "s", "to": "mute", "sdp": big_sdp})
                if "error" in reply:
                    break
        assert reply["error"]["code"] == -32008
        assert "has not read" in reply["error"]["message"]
        assert server.hub.sessions() == {"default": ("s", "mute")}
        offer = {"from": "s", "to": "mute", "sdp": SDP}
        with trio.fail_after(5):
            with contextlib.suppress(ConnectionClosed):  # closed part-way: that is the point
                for n in range(10):
                    await sender.send(
                        {"jsonrpc": "2.0", "id": 1000 + n, "method": "peer.offer", "params": offer}
                    )
            await sender.closed.wait()
        assert sender.close_reason is not None
        assert sender.close_reason.code == 1008
        assert server.hub.sessions() == {"default": ("mute",)}


async def test_a_failure_inside_one_connection_does_not_stop_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving() as server, raw_peer(server.url) as neighbour:
        await neighbour.announce("n")
        real_receive = server.hub.receive

        def receive(conn_id: int, data: str | bytes, now: float) -> Any:
            if data == "explode":
                raise RuntimeError("simulated bug in the I/O layer")
            return real_receive(conn_id, data, now)

        monkeypatch.setattr(server.hub, "receive", receive)
        async with raw_peer(server.url) as victim:
            first = await victim.announce("v")
            await victim.send("explode")
            with trio.fail_after(5):
                await victim.closed.wait()
            assert victim.close_reason is not None
            assert victim.close_reason.code == 1011
        left = await neighbour.wait_notification("peer.left", peer_id="v")
        assert left["params"]["reason"] == "error"
        async with raw_peer(server.url) as newcomer:
            # The dropped id is held for its holder's resume secret (issue 13).
            assert "result" in await newcomer.announce("v", resume=first["result"]["resume"])


# --- Shutdown -----------------------------------------------------------------------------------


async def test_cancelling_the_server_closes_every_peer_within_a_second() -> None:
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run_server(task_status: trio.TaskStatus[SignalingServer]) -> None:
            with scope:
                await SignalingServer(port=0, shutdown_timeout=0.5).run(task_status=task_status)
            stopped.set()

        server: SignalingServer = await nursery.start(run_server)
        async with (
            raw_peer(server.url) as a,
            raw_peer(server.url) as b,
            raw_peer(server.url) as c,
            mute_peer(server.port) as mute,
        ):
            await a.announce("a")
            await b.announce("b", "other")
            await mute.send({"jsonrpc": "2.0", "method": "peer.list"})
            scope.cancel()
            with trio.fail_after(1.0):
                for peer in (a, b, c):
                    await peer.closed.wait()
                    assert peer.close_reason is not None
                    assert peer.close_reason.code == 1001
                # The mute peer never answers the close; shutdown_timeout still bounds the stop.
                await stopped.wait()


async def test_close_stops_the_server_gracefully() -> None:
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        async with raw_peer(server.url) as peer:
            await peer.announce("a")
            server.close()
            with trio.fail_after(1.0):
                await peer.closed.wait()
            assert peer.close_reason is not None
            assert peer.close_reason.code == 1001
    with pytest.raises(OSError, match="connect"):  # the listener is closed
        await trio.open_tcp_stream("127.0.0.1", server.port)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_peers": 11}, "max_peers"),
        ({"max_peers": 0}, "max_peers"),
        ({"port": 70000}, "port"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"rate_limit": float("inf")}, "rate_limit"),
        ({"max_message_size": 10}, "max_message_size"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SignalingServer(**kwargs)
    assert info.value.field == field


# --- CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "99999"], "port number"),
        (["--port", "http"], "port number"),
        (["--max-peers", "11"], "from 1 to 10"),
        (["--rate-limit", "-3"], "positive"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_signal_cli_refuses_bad_arguments(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["signal", *argv])
    assert info.value.code == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err_lines) == 1
    assert words in err_lines[0]


def test_signal_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["signal", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--auth-secret-file", "--insecure", "--max-peers"):
        assert option in out


async def test_signal_cli_serves_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "meshrtc", "signal", "--port", "0", "--log-level", "error"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the server exited before listening"
                line += chunk
        assert line.startswith(b"meshrtc signal: listening on ws://127.0.0.1:")
        url = line.decode().rsplit(" ", 1)[1].strip()
        async with raw_peer(url) as peer:
            assert "result" in await peer.announce("cli")
            process.send_signal(signal.SIGINT)
            with trio.fail_after(5):
                await peer.closed.wait()
                assert await process.wait() == 0
            assert peer.close_reason is not None
            assert peer.close_reason.code == 1001
        err = await process.stderr.receive_some(65536)
        assert b"stopped" in err
        assert b"Traceback" not in err
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()
