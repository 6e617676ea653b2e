"""Hostile members against the transport of ``meshrtc serve`` and against each other (issue 13).

Before: the transport was a WebSocket client of its own server, so eight members each sending 200
``peer.ice_candidate`` notifications to ``meshrtc-server`` overflowed its 1024-message send queue;
the server dropped the transport as a slow consumer (every member's media stopped), and a squatter
could then announce as ``meshrtc-server``. Six members could drop any other member the same way.

Now the transport reaches the hub through an in-process privileged link (``hub=server``) with a
reserved id, and every sender has its own budget of a recipient's queue: a flooder is refused
(-32008), then closed (1008), never the one it floods. Figures: docs/security.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
import wsproto
from trio_websocket import WebSocketConnection, open_websocket_url
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from meshrtc.signaling.client import Backoff, SignalingClient
from meshrtc.signaling.protocol import LeaveReason
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport
from tests.peer_helpers import Node, Session, feed_media, open_session, run_transport

log = logging.getLogger(__name__)

TRANSPORT_ID = "meshrtc-server"
CANDIDATE = "candidate:1 1 udp 2122252543 127.0.0.1 53640 typ host"
FLOOD = 200  # notifications per flooder: inside one connection's rate burst (200)


@attrs.define
class Flooder:
    peer_id: str
    sent: int = 0
    refused: int = 0
    close_code: int | None = None
    announced: trio.Event = attrs.Factory(trio.Event)


async def _announce(ws: WebSocketConnection, peer_id: str, **extra: Any) -> dict[str, Any]:
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "peer.announce",
        "params": {"peer_id": peer_id, "capabilities": ["audio"], **extra},
    }
    await ws.send_message(json.dumps(request))
    while True:
        reply: dict[str, Any] = json.loads(await ws.get_message())
        if reply.get("id") == 1:
            return reply


class RawMember:
    """A member on a raw wsproto connection: it writes whole bursts in one call, and reads only
    when asked (so it can stand for a tab paused for a moment, or a phone on a slow link)."""

    def __init__(self, stream: trio.SocketStream, host: str, path: str) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.host, self.path = host, path
        self.close_code: int | None = None
        self.refused = 0
        self.received = 0
        self.gone = False
        self._partial = ""

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, *, rcvbuf: int | None = None) -> AsyncIterator[RawMember]:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect((parts.hostname, parts.port))
        async with trio.SocketStream(sock) as stream:
            yield cls(stream, parts.hostname, parts.path)

    async def events(self) -> list[wsproto.events.Event]:
        """What the next read brings (empty once the connection is gone)."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.gone = True
            return []
        self.ws.receive_data(data)
        events: list[wsproto.events.Event] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                # wsproto hands over what arrived: a message may come in parts.
                self._partial += event.data
                if not event.message_finished:
                    continue
                event = TextMessage(self._partial)
                self._partial = ""
                self.received += 1
                if json.loads(event.data).get("error", {}).get("code") == -32008:
                    self.refused += 1
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
            events.append(event)
        return events

    async def announce(self, peer_id: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host=self.host, target=self.path)))
        announce = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "peer.announce",
            "params": {"peer_id": peer_id, "capabilities": ["audio"]},
        }
        while not self.gone:
            for event in await self.events():
                if isinstance(event, AcceptConnection):
                    await self.stream.send_all(self.ws.send(TextMessage(json.dumps(announce))))
                elif isinstance(event, TextMessage) and json.loads(event.data).get("id") == 1:
                    assert "result" in json.loads(event.data), event.data
                    return
        raise AssertionError(f"{peer_id}: the server closed before answering the announce")

    async def burst(self, messages: list[str]) -> bool:
        """Write every message in one call; false if the server had closed us already."""
        data = b"".join(self.ws.send(TextMessage(m)) for m in messages)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def drain(self, seconds: float) -> None:
        """Read for ``seconds`` or until the server closes the connection."""
        with trio.move_on_after(seconds):
            while not self.gone and self.close_code is None:
                await self.events()


async def _flood(url: str, flooder: Flooder, target: str, joined: trio.Event) -> None:
    """Announce, wait for the others, then write FLOOD candidates to ``target`` in one burst."""
    candidate = {"from": flooder.peer_id, "to": target, "candidate": CANDIDATE, "sdp_mid": "0"}
    note = json.dumps({"jsonrpc": "2.0", "method": "peer.ice_candidate", "params": candidate})
    async with RawMember.connect(url) as member:
        await member.announce(flooder.peer_id)
        flooder.announced.set()
        await joined.wait()
        if await member.burst([note] * FLOOD):
            flooder.sent = FLOOD
        await member.drain(1.0)
        flooder.refused, flooder.close_code = member.refused, member.close_code


async def _round_trips(url: str, peer_id: str, until: trio.Event, out: list[float]) -> None:
    """An honest member: peer.list round trips (seconds) until ``until`` is set."""
    async with open_websocket_url(url) as ws:
        assert "result" in await _announce(ws, peer_id)
        n = 100
        while not until.is_set() or not out:
            n += 1
            started = trio.current_time()
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": n, "method": "peer.list"}))
            while json.loads(await ws.get_message()).get("id") != n:
                pass
            out.append(trio.current_time() - started)
            await trio.sleep(0.01)


async def _client_round_trips(node: Node, until: trio.Event, out: list[float]) -> None:
    """The honest member's own signaling client: peer.list round trips until ``until``."""
    while not until.is_set() or not out:
        started = trio.current_time()
        await node.client.list_peers()
        out.append(trio.current_time() - started)
        await trio.sleep(0.01)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@asynccontextmanager
async def serving_transport() -> AsyncIterator[tuple[Session, WebRtcTransport, Node]]:
    """The ``meshrtc serve`` wiring (transport on the in-process link) and one honest member
    whose media link to the transport is up and carrying the mix back."""
    async with open_session() as session:
        config = attrs.evolve(session.config(TRANSPORT_ID), ice_host_addresses=("127.0.0.1",))
        transport = WebRtcTransport(config, hub=session.server)
        await session.nursery.start(run_transport, transport)
        honest = await session.join("honest")
        await session.until(lambda: TRANSPORT_ID in honest.manager.list_connected(), 30)
        session.nursery.start_soon(partial(feed_media, honest, 30.0, freq=440.0, shade=90))
        await session.until(lambda: len(honest.audio(TRANSPORT_ID)) >= 5, 20)
        yield session, transport, honest


@pytest.mark.slow
async def test_eight_flooders_cannot_drop_the_transport() -> None:
    async with serving_transport() as (session, transport, honest):
        server = session.server
        flooders = [Flooder(f"flood{i}") for i in range(8)]
        joined, done = trio.Event(), trio.Event()
        rtts: list[float] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_client_round_trips, honest, done, rtts)
                async with trio.open_nursery() as attack:
                    for f in flooders:
                        attack.start_soon(_flood, server.url, f, TRANSPORT_ID, joined)
                    await session.until(
                        lambda: len(server.hub.sessions().get("default", ())) == 10, 10
                    )
                    heard_before = len(honest.audio(TRANSPORT_ID))
                    joined.set()
                done.set()
            # Media keeps flowing: the honest member still hears the transport's mix.
            await session.until(lambda: len(honest.audio(TRANSPORT_ID)) >= heard_before + 25, 10)
        client = transport.signaling
        assert client is not None
        log.warning(
            "flood of %d x %d candidates to the transport: rtt median %.1f ms, max %.1f ms; "
            "flooders sent %s, refused %s, closed %s; transport events dropped %d; load %s",
            len(flooders),
            FLOOD,
            1000 * statistics.median(rtts),
            1000 * max(rtts),
            [f.sent for f in flooders],
            [f.refused for f in flooders],
            [f.close_code for f in flooders],
            client.dropped_events,
            _load(),
        )
        # The transport was never dropped, never reconnected, and kept its id.
        assert client.state == "Ready"
        assert client.reconnects == 0
        assert TRANSPORT_ID in server.hub.sessions()["default"]
        assert TRANSPORT_ID in honest.manager.list_connected()
        # Whoever was cut off was a flooder, closed for flooding (1008), nobody else.
        assert {f.close_code for f in flooders} <= {None, 1008}
        assert "honest" in server.hub.sessions()["default"]


async def test_no_websocket_client_can_announce_as_the_transport() -> None:
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        async with open_websocket_url(server.url) as ws:
            reply = await _announce(ws, TRANSPORT_ID)
        assert reply["error"]["code"] == -32007
        assert "reserved" in reply["error"]["message"]
        assert server.hub.sessions() == {}
        nursery.cancel_scope.cancel()


async def test_six_flooders_cannot_drop_a_seventh_member() -> None:
    """The victim stops reading for the length of the flood (a paused tab, a slow link: its
    small receive buffer fills at once), then reads again. Before, its queue overflowed and the
    server dropped it as a slow consumer; now each flooder fills only its own share."""
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        flooders = [Flooder(f"flood{i}") for i in range(6)]
        joined = trio.Event()
        async with RawMember.connect(server.url, rcvbuf=4096) as victim:
            await victim.announce("victim")
            with trio.fail_after(20):
                async with trio.open_nursery() as attack:
                    for f in flooders:
                        attack.start_soon(_flood, server.url, f, "victim", joined)
                    for f in flooders:
                        await f.announced.wait()
                    joined.set()
                # The flood is over: the victim reads again and is still a member.
                await victim.drain(0.5)
                assert victim.close_code is None
                assert "victim" in server.hub.sessions()["default"]
        log.warning(
            "6 x %d candidates to one paused member: it received %d, flooders refused %s, "
            "closed %s; load %s",
            FLOOD,
            victim.received,
            [f.refused for f in flooders],
            [f.close_code for f in flooders],
            _load(),
        )
        assert {f.close_code for f in flooders} <= {None, 1008}
        nursery.cancel_scope.cancel()


async def _gone(server: SignalingServer, peer_id: str) -> None:
    """Until the hub has noticed that ``peer_id``'s connection closed (bounded: 5 s)."""
    with trio.fail_after(5):
        while True:
            if server.hub.session_of(peer_id) is None:
                return
            await trio.sleep(0.005)


async def test_a_dropped_peers_id_is_held_for_the_holder_of_its_secret() -> None:
    """Before, a squatter could announce a peer's id 6 ms after its connection dropped and get the
    signaling meant for it. Now the announce returns a resume secret, and within the grace period
    only its holder reclaims the id."""
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        async with open_websocket_url(server.url) as alice:
            first = await _announce(alice, "alice")
        secret = first["result"]["resume"]
        assert isinstance(secret, str)
        assert len(secret) >= 16
        await _gone(server, "alice")
        async with open_websocket_url(server.url) as squatter:
            refused = await _announce(squatter, "alice")
            assert refused["error"]["code"] == -32006
            assert "held" in refused["error"]["message"]
            guessed = await _announce(squatter, "alice", resume="x" * len(secret))
            assert guessed["error"]["code"] == -32006
        async with open_websocket_url(server.url) as back:
            resumed = await _announce(back, "alice", resume=secret)
            assert resumed["result"]["peer_id"] == "alice"
            assert resumed["result"]["resume"] != secret
            # Leaving on purpose releases the id at once.
            await back.send_message(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "peer.disconnect",
                        "params": {"peer_id": "alice"},
                    }
                )
            )
            await _gone(server, "alice")
        # After the grace period (none here) anyone may take a dropped id.
        server.hub.resume_grace = 0.0
        async with open_websocket_url(server.url) as other:
            assert "result" in await _announce(other, "alice")
        await _gone(server, "alice")
        async with open_websocket_url(server.url) as later:
            assert "result" in await _announce(later, "alice")
        nursery.cancel_scope.cancel()


async def test_the_client_resumes_its_id_after_a_drop() -> None:
    """A SignalingClient whose connection dropped announces again with its secret; a squatter
    that tries in between (while the client waits out its backoff) is refused."""
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        squatter_replies: list[dict[str, Any]] = []

        async def backoff_sleep(_seconds: float) -> None:
            await _gone(server, "bob")
            async with open_websocket_url(server.url) as squatter:
                squatter_replies.append(await _announce(squatter, "bob"))

        client = SignalingClient(
            server.url, "bob", backoff=Backoff(tries=2), random=lambda: 0.0, sleep=backoff_sleep
        )
        await nursery.start(client.run)
        # The server drops bob's connection (as it would after unanswered pings).
        conn_id = server.hub._peers["bob"].conn_id
        server._live[conn_id].end(LeaveReason.TIMEOUT, 1001, "ping timeout")
        with trio.fail_after(10):
            while client.reconnects < 1:  # noqa: ASYNC110 (no event for a reconnect)
                await trio.sleep(0.01)
        assert squatter_replies[0]["error"]["code"] == -32006
        assert server.hub.session_of("bob") == "default"
        await client.aclose()
        nursery.cancel_scope.cancel()


def _sdp(*media: str) -> str:
    """An offer that passes the signaling server's shape check (v=, o=, s=, t=, m= lines)."""
    head = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    return head + "".join(media)


#: An Opus section with no ICE credentials and no DTLS fingerprint: aiortc cannot use it.
_NO_TRANSPORT = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"
#: A well-formed section in a codec meshrtc does not speak (PCMU only).
_PCMU_ONLY = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


async def _signal(ws: WebSocketConnection, method: str, request_id: int, **params: Any) -> None:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    await ws.send_message(json.dumps(message))


async def _next_error(ws: WebSocketConnection, within: float = 10.0) -> dict[str, Any]:
    """The next peer.error notification (or error response) that reaches ``ws``."""
    with trio.fail_after(within):
        while True:
            message: dict[str, Any] = json.loads(await ws.get_message())
            if message.get("method") == "peer.error":
                params: dict[str, Any] = message["params"]
                return {"from": params["from"], **params["error"]}
            if "error" in message:
                error: dict[str, Any] = message["error"]
                return error


@pytest.mark.slow
async def test_offers_the_transport_cannot_answer_get_a_reason_and_cost_nobody_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, a bad offer to the transport got no reply (and aiortc's raw exception in the log);
    now its sender gets peer.error (-32009) saying why, or the server's -32602 for what it never
    relays; the honest member's link and media are untouched. About 8 s."""
    caplog.set_level(logging.DEBUG, "meshrtc")
    async with serving_transport() as (session, transport, honest):
        assert transport.peers is not None
        link = transport.peers.get_peer("honest")
        assert link is not None
        heard_before = len(honest.audio(TRANSPORT_ID))
        async with open_websocket_url(session.server.url) as ws:
            assert "result" in await _announce(ws, "mallory")
            replies = []
            for n, sdp in enumerate(
                (_sdp(_NO_TRANSPORT), _sdp(_PCMU_ONLY), _sdp(*[_NO_TRANSPORT] * 65)), start=10
            ):
                await _signal(ws, "peer.offer", n, to=TRANSPORT_ID, sdp=sdp, **{"from": "mallory"})
                # The next offer goes at once: it must find the failed connection given up
                # (before, it could reach it while still closing and vanish unanswered).
                replies.append(await _next_error(ws))
        log.warning("replies to bad offers: %s; load %s", replies, _load())
        no_transport, pcmu, too_many = replies
        assert no_transport["code"] == pcmu["code"] == -32009
        assert no_transport["from"] == pcmu["from"] == TRANSPORT_ID
        assert "ICE username fragment or password is missing" in no_transport["message"]
        assert "Error(" not in no_transport["message"]  # a reason, not a raw exception
        assert "PCMU" in pcmu["message"] or "codec" in pcmu["message"]
        assert too_many["code"] == -32002  # the server's SDP bounds: never reaches the transport
        assert "more than 64 'm=' sections" in too_many["message"]
        # Nobody else paid: the same link, never rebuilt, still carrying the mix.
        await session.until(lambda: len(honest.audio(TRANSPORT_ID)) >= heard_before + 25, 10)
        assert transport.peers.get_peer("honest") is link
        assert link.stats.reconnects == 0
        assert link.is_connected
    raw = [r for r in caplog.records if "Error(" in r.getMessage() and r.levelno >= logging.INFO]
    assert raw == [], [r.getMessage() for r in raw]


async def test_stray_answers_and_candidates_to_the_transport_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member sends the transport answers, candidates and peer.error notices that belong to no
    offer: first while the transport waits for its offer, then after its connection ended. Each
    kind is ignored and logged once at debug, nothing fails. Before, the first ones were logged
    each time (peer.error at info) and the later ones not at all. About 2 s."""
    caplog.set_level(logging.DEBUG, "meshrtc")
    async with open_session() as session:
        config = attrs.evolve(session.config(TRANSPORT_ID), ice_host_addresses=("127.0.0.1",))
        transport = WebRtcTransport(config, hub=session.server)
        await session.nursery.start(run_transport, transport)
        assert transport.peers is not None
        async with open_websocket_url(session.server.url) as ws:
            assert "result" in await _announce(ws, "mallory")
            stray = {"from": "mallory", "to": TRANSPORT_ID}
            noise = {"code": -32009, "message": "noise"}
            n = 100
            for phase in ("waiting for its offer", "after its connection ended"):
                for _ in range(5):
                    n += 3
                    await _signal(ws, "peer.answer", n, sdp=_sdp(_PCMU_ONLY), **stray)
                    await _signal(ws, "peer.ice_candidate", n + 1, candidate=CANDIDATE, **stray)
                    await _signal(ws, "peer.error", n + 2, error=noise, **stray)
                for _ in range(15):  # every one was relayed: the transport has them all
                    reply = json.loads(await ws.get_message())
                    assert reply.get("result") == {"status": "forwarded"}, (phase, reply)
                if phase == "waiting for its offer":
                    await session.until(lambda: len(_strays(caplog, "mallory")) >= 3, 5)
                    # An offer it cannot answer ends mallory's connection on the transport.
                    await _signal(ws, "peer.offer", 1, sdp=_sdp(_PCMU_ONLY), **stray)
                    assert (await _next_error(ws))["code"] == -32009
                    await session.until(lambda: transport.peers.get_peer("mallory") is None, 5)
            await session.until(lambda: len(_strays(caplog, "mallory")) >= 4, 5)
        assert transport.signaling is not None
        assert transport.signaling.state == "Ready"
    lines = _strays(caplog, "mallory")
    log.warning("stray lines: %s", lines)
    # Once per kind while its connection waited (answer, candidate, error), once after.
    assert len(lines) == 4, lines
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.getMessage() in lines)
    assert not [r for r in caplog.records if "Error(" in r.getMessage()]


def _strays(caplog: pytest.LogCaptureFixture, peer_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("meshrtc.rtc")
        and peer_id in r.getMessage()
        and "not logged again" in r.getMessage()
    ]
