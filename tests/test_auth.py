"""Access tokens: the token module, the server's check at the upgrade, the announce binding, the
guessing throttle, the CLI, and ``meshrtc serve`` with a secret (hostile clients, loopback only).

Before issue 13 ``serve`` took no token at all and ``signal --token`` compared a shared string in
``peer.announce``: any local process joined, and guesses were answered at 700/s with nothing logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio

from meshrtc.__main__ import SERVE_PEER_ID, main
from meshrtc.backoff import Backoff
from meshrtc.errors import ConfigError, MeshRtcError
from meshrtc.signaling.auth import (
    AuthError,
    FailedTokenThrottle,
    Grant,
    TokenAuthority,
    load_secret,
)
from meshrtc.signaling.client import SignalingClient, SignalingConnectionError
from meshrtc.signaling.protocol import LeaveReason, SignalingError
from meshrtc.signaling.server import Send, SignalingHub, SignalingServer

from .test_signaling_server import raw_peer, serving

SECRET = b"k" * 64
NOW = 1_800_000_000.0


def authority(now: float = NOW, secret: bytes = SECRET) -> TokenAuthority:
    return TokenAuthority(secret, clock=lambda: now)


# --- The token module ---------------------------------------------------------------------------


def test_a_token_round_trips_its_claims() -> None:
    token = authority().issue("alice", "room", ttl=60, grants=["publish", "data"])
    claims = authority(NOW + 59).verify(token)
    assert (claims.peer_id, claims.session_id) == ("alice", "room")
    assert claims.expires_at == NOW + 60
    assert claims.grants == {Grant.PUBLISH, Grant.DATA}


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("not-a-jwt", "malformed token"),
        ("x" * 5000, "malformed token"),
        (
            TokenAuthority(b"z" * 40, clock=lambda: NOW).issue("alice", "room"),
            "bad token signature",
        ),
        (
            jwt.encode({"sub": "alice", "session": "room", "exp": NOW + 60}, SECRET, "HS512"),
            "HS256",
        ),
        (jwt.encode({"session": "room", "exp": NOW + 60}, SECRET, "HS256"), "no 'sub'"),
        (jwt.encode({"sub": "alice", "exp": NOW + 60}, SECRET, "HS256"), "no 'session'"),
        (jwt.encode({"sub": "alice", "session": "room"}, SECRET, "HS256"), "no 'exp'"),
        (
            jwt.encode({"sub": "a", "session": "r", "exp": NOW + 60, "grants": ["root"]}, SECRET),
            "grants",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str | None, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        authority().verify(token)


def test_an_unsigned_token_is_refused() -> None:
    unsigned = jwt.encode({"sub": "alice", "session": "room", "exp": NOW + 60}, None, "none")
    with pytest.raises(AuthError):
        authority().verify(unsigned)


def test_expiry_is_checked_against_the_injected_clock() -> None:
    token = authority().issue("alice", "room", ttl=30)
    authority(NOW + 29.9).verify(token)
    with pytest.raises(AuthError, match="expired"):
        authority(NOW + 30).verify(token)


def test_short_secrets_and_bad_grants_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        TokenAuthority(b"short")
    with pytest.raises(ConfigError):
        authority().issue("alice", "room", grants=["root"])
    with pytest.raises(ConfigError):
        authority().issue("alice", "room", ttl=0)


def test_the_secret_comes_from_the_file_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_secret(path, env={"MESHRTC_AUTH_SECRET": "e" * 40}) == SECRET
    assert load_secret(None, env={"MESHRTC_AUTH_SECRET": "e" * 40}) == b"e" * 40
    assert load_secret(None, env={}) is None
    path.write_bytes(b"tiny")
    with pytest.raises(MeshRtcError, match="at least 32"):
        load_secret(path, env={})
    with pytest.raises(MeshRtcError, match="cannot read"):
        load_secret(tmp_path / "missing", env={})


def test_the_throttle_locks_an_address_out_then_lets_it_back() -> None:
    throttle = FailedTokenThrottle(max_failures=3, window=10.0, lockout=30.0)
    assert not throttle.failed("a", 0.0)
    assert not throttle.failed("a", 1.0)
    assert throttle.locked("b", 1.0) == 0.0
    assert throttle.failed("a", 2.0)
    assert throttle.locked("a", 2.0) == 30.0
    assert throttle.locked("b", 2.0) == 0.0  # per address
    assert throttle.locked("a", 32.0) == 0.0
    # Failures further apart than the window never add up to a lockout.
    assert not any(throttle.failed("c", 11.0 * i) for i in range(10))


def test_the_throttle_table_is_bounded() -> None:
    throttle = FailedTokenThrottle(max_failures=2, max_addresses=100)
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
        throttle.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(throttle._locked_until) <= 100
    assert len(throttle._failures) <= 100


# --- The server ---------------------------------------------------------------------------------


async def upgrade(port: int, query: str) -> tuple[int, bytes]:
    """A raw WebSocket upgrade request; the HTTP status and body of the reply (101 if accepted)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        reply = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in reply:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            status = int(head.split(b" ")[1]) if head else 0
            if status != 101:
                while chunk := await stream.receive_some(4096):
                    body += chunk
    return status, body


@asynccontextmanager
async def secured(**kwargs: Any) -> AsyncIterator[tuple[SignalingServer, TokenAuthority]]:
    auth = TokenAuthority(SECRET)
    async with serving(auth=auth, **kwargs) as server:
        yield server, auth


async def test_no_token_bad_signature_and_expired_are_refused_at_the_upgrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "meshrtc.signaling.server")
    forged = TokenAuthority(b"f" * 40).issue("alice", "default")
    expired = TokenAuthority(SECRET, clock=lambda: time.time() - 7200).issue("alice", "default")
    async with secured() as (server, _):
        cases = [("", "missing token"), (f"token={forged}", "bad token signature")]
        cases.append((f"token={expired}", "token expired"))
        for query, why in cases:
            status, body = await upgrade(server.port, query)
            assert status == 401
            assert body.decode().startswith(why)
        assert server.hub.connections == 0
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3  # once each, with the client's address
    assert all("127.0.0.1" in line for line in refusals)


async def test_a_valid_token_joins_and_the_announce_must_match_it() -> None:
    async with secured() as (server, auth):
        async with raw_peer(server.url, path=f"/ws?token={auth.issue('alice', 'room')}") as peer:
            wrong_sub = await peer.announce("mallory", "room")
            assert wrong_sub["error"]["code"] == -32007
            assert "token is for peer 'alice'" in wrong_sub["error"]["message"]
            wrong_session = await peer.announce("alice", "default")
            assert wrong_session["error"]["code"] == -32007
            assert "token is for session 'room'" in wrong_session["error"]["message"]
            joined = await peer.announce("alice", "room")
            assert joined["result"]["peer_id"] == "alice"
        assert server.hub.sessions() == {}


async def test_grants_narrow_what_the_others_are_told() -> None:
    async with secured() as (server, auth):
        listener = auth.issue("lurker", "room", grants=["subscribe"])
        nothing = auth.issue("ghost", "room", grants=[])
        async with (
            raw_peer(server.url, path=f"/ws?token={listener}") as lurker,
            raw_peer(server.url, path=f"/ws?token={nothing}") as ghost,
            raw_peer(server.url, path=f"/ws?token={auth.issue('full', 'room')}") as full,
        ):
            assert "result" in await lurker.announce("lurker", "room")
            # Never an empty list (a peer builds no connection for one): refused instead.
            refused = await ghost.announce("ghost", "room")
            assert refused["error"]["code"] == -32007
            assert "grants none of the announced capabilities" in refused["error"]["message"]
            seen = (await full.announce("full", "room"))["result"]["peers"]
            caps = {p["peer_id"]: p["capabilities"] for p in seen}
            assert caps == {"lurker": ["audio", "video"]}
            # The grants travel with the peer, set by the hub from the token (tests/test_grants.py).
            assert {p["peer_id"]: p["grants"] for p in seen} == {"lurker": ["subscribe"]}


def _request(method: str, request_id: int, **params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def _reply(actions: list[Any], request_id: int) -> dict[str, Any]:
    replies = [json.loads(a.text) for a in actions if isinstance(a, Send)]
    return next(r for r in replies if r.get("id") == request_id)


def test_an_expired_token_announces_nobody_but_a_member_stays() -> None:
    """The token is checked at the upgrade and at every announce; a member whose token expires
    during the call is not cut off (LiveKit checks at join only), but it cannot announce again."""
    now = [NOW]
    auth = TokenAuthority(SECRET, clock=lambda: now[0])
    hub = SignalingHub(auth_required=True, wall_clock=lambda: now[0])
    hub.open(1, "127.0.0.1", claims=auth.verify(auth.issue("alice", "default", ttl=60)))
    announce = _request("peer.announce", 1, peer_id="alice", capabilities=["audio"])
    assert "result" in _reply(hub.receive(1, announce, 0.0), 1)
    now[0] += 3600  # an hour-long call on a one-minute token
    assert "result" in _reply(hub.receive(1, _request("peer.list", 2), 1.0), 2)
    assert hub.sessions() == {"default": ("alice",)}
    assert "result" in _reply(
        hub.receive(1, _request("peer.disconnect", 3, peer_id="alice"), 2.0), 3
    )
    again = _reply(hub.receive(1, announce.replace('"id": 1', '"id": 4'), 3.0), 4)
    assert again["error"]["code"] == -32007
    assert "access token expired 3540 s ago" in again["error"]["message"]
    assert hub.sessions() == {}


def test_the_tokens_session_is_checked_before_the_session_is_full() -> None:
    """A full session tells a client without a token for it nothing but 'not your session'."""
    auth = authority()
    hub = SignalingHub(max_peers=1, auth_required=True, wall_clock=lambda: NOW)
    hub.open(1, claims=auth.verify(auth.issue("alice", "room")))
    announce = _request(
        "peer.announce", 1, peer_id="alice", session_id="room", capabilities=["audio"]
    )
    assert "result" in _reply(hub.receive(1, announce, 0.0), 1)
    hub.open(2, claims=auth.verify(auth.issue("mallory", "lobby")))
    crash = _request(
        "peer.announce", 2, peer_id="mallory", session_id="room", capabilities=["audio"]
    )
    refused = _reply(hub.receive(2, crash, 0.0), 2)
    assert refused["error"]["code"] == -32007  # not -32005 (session full)
    assert "token is for session 'lobby'" in refused["error"]["message"]


async def test_a_dropped_member_with_an_expired_token_cannot_resume() -> None:
    """Resume needs a new connection, so the upgrade checks the token again: the resume secret
    alone does not bring back a member whose token has expired (HTTP 401, with the reason)."""
    now = [time.time()]
    auth = TokenAuthority(SECRET, clock=lambda: now[0])
    async with serving(auth=auth, wall_clock=lambda: now[0]) as server:
        token = auth.issue("alice", "default", ttl=60)
        async with raw_peer(server.url, path=f"/ws?token={token}") as peer:
            secret = (await peer.announce("alice", "default"))["result"]["resume"]
        with trio.fail_after(5):
            while server.hub.session_of("alice") is not None:  # noqa: ASYNC110 (no event)
                await trio.sleep(0.005)
        now[0] += 61
        status, body = await upgrade(server.port, f"token={token}")
        assert (status, body.decode()[:13]) == (401, "token expired")
        assert secret  # held for alice, but only a valid token gets as far as showing it


async def test_a_refused_reconnect_is_retried_while_media_flows_and_a_new_token_gets_back_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call outlives its token (checked when a connection opens). If signaling drops after the
    token expired, the refusal must not end a client whose media still flows: it keeps retrying,
    and the fresh token the application hands it (``set_token``) gets it back in. With no media,
    the same refusal is final."""
    now = [time.time()]
    auth = TokenAuthority(SECRET, clock=lambda: now[0])
    flows = [True]
    quick = Backoff(tries=1, initial=0.02, factor=1.0, maximum=0.02, jitter=0.0)
    async with serving(auth=auth, wall_clock=lambda: now[0]) as server:
        client = SignalingClient(
            server.url,
            "alice",
            token=auth.issue("alice", "default", ttl=60),
            backoff=quick,
            keep_trying=lambda: flows[0],
        )
        failures: list[SignalingConnectionError] = []

        async def run_client(task_status: trio.TaskStatus[object]) -> None:
            try:
                await client.run(task_status=task_status)
            except SignalingConnectionError as err:
                failures.append(err)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_client)
                now[0] += 61
                (live,) = server._live.values()
                live.end(LeaveReason.TIMEOUT, 1001, "ping timeout")
                while client.kept_trying < 3:  # noqa: ASYNC110 (refused attempts, no event)
                    await trio.sleep(0.01)
                assert client.state != "Closed"
                client.set_token(auth.issue("alice", "default", ttl=60))
                while client.state != "Ready":  # noqa: ASYNC110
                    await trio.sleep(0.01)
                assert server.hub.session_of("alice") == "default"
                now[0] += 61
                flows[0] = False
                (live,) = server._live.values()
                live.end(LeaveReason.TIMEOUT, 1001, "ping timeout")
                while not failures:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    assert "HTTP 401: token expired" in str(failures[0])
    assert any("retrying because media still flows" in r.getMessage() for r in caplog.records)


async def test_the_client_presents_its_token_in_the_url_and_a_bad_one_is_fatal() -> None:
    async with secured() as (server, auth):
        good = SignalingClient(server.url, "alice", token=auth.issue("alice", "default"))
        async with trio.open_nursery() as nursery:
            assert (await nursery.start(good.run)).peer_id == "alice"
            await good.aclose()
        wrong = SignalingClient(server.url, "alice", token=auth.issue("bob", "default"))
        async with trio.open_nursery() as nursery:
            with pytest.raises(SignalingError, match="token is for peer 'bob'"):
                await nursery.start(wrong.run)
        missing = SignalingClient(server.url, "alice")
        async with trio.open_nursery() as nursery:
            with pytest.raises(SignalingConnectionError, match="HTTP 401: missing token"):
                await nursery.start(missing.run)


async def test_guessing_is_locked_out_after_a_few_failures() -> None:
    """Bounded: 40 guesses from one address; only the first five are even verified."""
    throttle = FailedTokenThrottle(max_failures=5, window=60.0, lockout=60.0)
    async with secured(token_throttle=throttle) as (server, auth):
        statuses = [(await upgrade(server.port, f"token=guess{i}"))[0] for i in range(40)]
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 35
        # Locked out means locked out: even a good token waits (the address is the attacker's).
        status, body = await upgrade(server.port, f"token={auth.issue('alice', 'default')}")
        assert status == 429
        assert b"retry in" in body


async def test_a_transport_presents_its_configured_token() -> None:
    """``TransportConfig.auth_token`` reaches the URL: with it the transport joins; without it,
    entering the transport fails with the server's reason."""
    import attrs

    from meshrtc.config import TransportConfig
    from meshrtc.rtc.stun import StunServer
    from meshrtc.transport import WebRtcTransport

    async with secured() as (server, auth), trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(
            signaling_url=server.url,
            stun_servers=[stun.url],
            peer_id="t1",
            ice_host_addresses=("127.0.0.1",),
            auth_token=auth.issue("t1", "default"),
        )
        assert "auth_token" not in repr(config)
        with trio.fail_after(20):
            async with WebRtcTransport(config) as transport:
                assert transport.state == "Ready"
                assert server.hub.sessions() == {"default": ("t1",)}
            refused = pytest.RaisesExc(SignalingConnectionError, match="HTTP 401: missing token")
            with pytest.RaisesGroup(refused, flatten_subgroups=True, allow_unwrapped=True):
                async with WebRtcTransport(attrs.evolve(config, auth_token=None)):
                    pass
        nursery.cancel_scope.cancel()


# --- The command line ---------------------------------------------------------------------------


def test_token_command_prints_a_token_the_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    argv = ["token", "--secret-file", str(secret), "--session", "room", "--peer", "alice"]
    assert main([*argv, "--ttl", "120", "--grant", "subscribe"]) == 0
    claims = TokenAuthority(SECRET).verify(capsys.readouterr().out.strip())
    assert (claims.peer_id, claims.session_id, claims.grants) == (
        "alice",
        "room",
        {Grant.SUBSCRIBE},
    )
    assert 110 < claims.expires_at - time.time() <= 120


def test_token_command_needs_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHRTC_AUTH_SECRET", raising=False)
    assert main(["token", "--session", "room", "--peer", "alice"]) == 2
    assert "no secret" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["signal", "serve"])
def test_a_non_loopback_bind_without_a_secret_refuses_to_start(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHRTC_AUTH_SECRET", raising=False)
    assert main([command, "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without --auth-secret-file" in err
    assert "--insecure" in err


@pytest.mark.parametrize("command", ["signal", "serve"])
def test_without_a_secret_the_servers_say_so(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loopback default starts, but says on stderr that anyone may join (before the server is
    even built)."""
    from meshrtc.signaling import server as server_module

    class BuiltError(Exception):
        pass

    def built(*_args: object, **_kwargs: object) -> None:
        raise BuiltError

    monkeypatch.delenv("MESHRTC_AUTH_SECRET", raising=False)
    monkeypatch.setattr(server_module, "SignalingServer", built)
    with pytest.raises(BuiltError):
        main([command, "--port", "0"])
    err = capsys.readouterr().err
    assert f"meshrtc {command}: no auth secret: any client can join any session" in err
    assert "loopback only" in err


# --- meshrtc serve with a secret ----------------------------------------------------------------


@pytest.mark.slow
async def test_serve_with_a_secret_a_member_with_a_token_hears_the_mix(tmp_path: Path) -> None:
    """The real command with ``--auth-secret-file``: its own transport gets in (it issues itself a
    token), a member with a token hears another member's tone through the mix, and a client
    without one is refused at the upgrade."""
    from meshrtc.config import TransportConfig
    from meshrtc.demo import AMPLITUDE, SyntheticPeer, goertzel
    from meshrtc.rtc.bridge import open_bridge
    from meshrtc.rtc.events import ReceivedAudio
    from meshrtc.rtc.peer import REALTIME_SEND_QUEUE, PeerConnection, PeerOptions
    from meshrtc.rtc.peers import PeerManager
    from meshrtc.rtc.stun import StunServer

    from .browser_helpers import meshrtc_serve

    class ServeMember(SyntheticPeer):
        def link(self) -> PeerConnection | None:
            return self.manager.get_peer(SERVE_PEER_ID)

    async def drain(manager: PeerManager, keep_transport_link: bool) -> None:
        """Read every link's events and items (but the one the test listens to) so none fills."""
        seen: set[str] = set()
        async with trio.open_nursery() as links:
            async for _event in manager.events:
                for pid, peer in manager.peers.items():
                    if pid not in seen and not (keep_transport_link and pid == SERVE_PEER_ID):
                        seen.add(pid)
                        links.start_soon(discard, peer)

    async def discard(peer: PeerConnection) -> None:
        async for _item in peer.received:
            pass

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    auth = TokenAuthority(SECRET)
    options = PeerOptions(video_fps=10.0, audio_send_queue=REALTIME_SEND_QUEUE)
    with trio.fail_after(60):
        async with (
            meshrtc_serve("--auth-secret-file", str(secret)) as serve,
            trio.open_nursery() as nursery,
        ):
            ws = serve.url.replace("http://", "ws://", 1).rstrip("/") + "/ws"
            with pytest.raises(SignalingConnectionError, match="HTTP 401: missing token"):
                await nursery.start(SignalingClient(ws, "intruder").run)
            stun: StunServer = await nursery.start(StunServer().run)
            async with open_bridge(name="test-auth-serve") as bridge:
                members = []
                for index, pid in enumerate(("alice", "bob")):
                    config = TransportConfig(
                        signaling_url=ws,
                        stun_servers=[stun.url],
                        peer_id=pid,
                        ice_host_addresses=("127.0.0.1",),
                        auth_token=auth.issue(pid, "default"),
                    )
                    client = SignalingClient(ws, pid, session_id="default", token=config.auth_token)
                    await nursery.start(client.run)
                    manager = PeerManager(config, client, bridge=bridge, options=options)
                    await nursery.start(manager.run)
                    members.append(ServeMember(index, manager, None))
                    nursery.start_soon(drain, manager, pid == "bob")
                alice, bob = members
                for _ in range(600):  # bounded: 30 s at most
                    if alice.note_connected() and bob.note_connected():
                        break
                    await trio.sleep(0.05)
                assert alice.note_connected()
                assert bob.note_connected()
                # Both send: the transport sends a member its mix as that member's audio arrives.
                nursery.start_soon(alice.send, 20.0, time.monotonic())
                nursery.start_soon(bob.send, 20.0, time.monotonic())
                link = bob.link()
                assert link is not None
                heard = 0
                async for item in link.received:
                    if isinstance(item, ReceivedAudio) and not item.concealed:
                        mono = item.samples[:, 0] if item.samples.ndim == 2 else item.samples
                        if goertzel(mono, alice.figures.frequency) > AMPLITUDE * 0.3:
                            heard += 1
                            if heard >= 10:
                                break
                assert heard >= 10
                nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_the_page_passes_its_token_through(tmp_path: Path) -> None:
    """``meshrtc serve --auth-secret-file``: the page opened with ``?token=...`` joins as the
    token's peer id (whatever its name field says) and connects to the transport; opened without
    one it ends in the error state."""
    from tests.browser_helpers import TRANSPORT_ID, meshrtc_serve, open_chromium
    from tests.test_browser import _encode, _fail_with, chromium, query, wait_connected

    binary = chromium()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    token = TokenAuthority(SECRET).issue("carol", "default")
    with trio.fail_after(60):
        async with (
            meshrtc_serve("--auth-secret-file", str(secret)) as serve,
            open_chromium(binary) as browser,
        ):
            try:
                with trio.fail_after(40):
                    page = await browser.new_page(
                        serve.url + "?" + _encode({**query("someone", "VP9"), "token": token})
                    )
                    snap = await wait_connected(page, {TRANSPORT_ID})
                    assert snap["peerId"] == "carol"
                    refused = await browser.new_page(
                        serve.url + "?" + _encode(query("intruder", "VP9"))
                    )
                    error = await refused.wait_for(
                        "window.meshrtc.snapshot()", lambda s: s["state"] == "error"
                    )
                    assert "refused the token" in error["error"]
            except BaseException:
                await _fail_with([browser])
                raise
