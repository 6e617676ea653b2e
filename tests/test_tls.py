"""TLS on the signaling port: ``wss://`` and ``https://`` with a CA made in the test (trustme).

Before issue 13 neither server spoke TLS (a ``wss://`` client timed out), and a client whose TLS
handshake failed sat out ``connect_timeout`` inside trio-websocket and then retried a certificate
it would never trust. Here: a client with the CA joins; one without it is refused at once with the
reason; the page comes over https with its security headers; junk, plain HTTP and clients that
never finish a handshake are closed within the handshake bound without holding up an honest
client, and count against the connection caps before any handshake work; the CLI options; and
``meshrtc serve --certfile --keyfile`` in a child process.
"""

from __future__ import annotations

import logging
import resource
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from meshrtc.__main__ import SERVE_PEER_ID, main
from meshrtc.config import TransportConfig
from meshrtc.errors import ConfigError
from meshrtc.signaling import server as server_module
from meshrtc.signaling.auth import FailedTokenThrottle, TokenAuthority
from meshrtc.signaling.client import Backoff, SignalingClient, SignalingConnectionError
from meshrtc.signaling.limits import connection_budget
from meshrtc.signaling.server import SignalingServer
from meshrtc.signaling.tls import client_context, server_context
from meshrtc.web import static_handler

#: The handshake bound: short, so the tests that wait it out stay short (a real server: 10 s).
BOUND = 1.0


@attrs.frozen
class Pki:
    ca: trustme.CA
    cafile: Path
    certfile: Path
    keyfile: Path

    def client(self) -> ssl.SSLContext:
        return client_context(str(self.cafile))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cafile, certfile, keyfile = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(cafile))
    cert.private_key_pem.write_to_path(str(keyfile))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    return Pki(ca, cafile, certfile, keyfile)


@asynccontextmanager
async def tls_server(pki: Pki, **kwargs: Any) -> AsyncIterator[SignalingServer]:
    context = server_context(str(pki.certfile), str(pki.keyfile))
    async with trio.open_nursery() as nursery:
        server = SignalingServer(port=0, ssl_context=context, **kwargs)
        yield await nursery.start(server.run)
        nursery.cancel_scope.cancel()


async def tls_exchange(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """Send ``request`` over TLS and read the reply until the server closes."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


async def closed_within(stream: trio.SocketStream, seconds: float) -> float:
    """Read and drop what the server sends until it closes; the time that took."""
    started = trio.current_time()
    with trio.fail_after(seconds):
        while await stream.receive_some(65536):
            pass
    return trio.current_time() - started


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), to start a handshake and stall."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- Clients ------------------------------------------------------------------------------------


async def test_a_client_with_the_ca_joins_over_wss_and_gets_the_peer_list(pki: Pki) -> None:
    async with tls_server(pki) as server, trio.open_nursery() as nursery:
        assert server.url.startswith("wss://127.0.0.1:")
        assert server.http_url.startswith("https://127.0.0.1:")
        alice = SignalingClient(server.url, "alice", ssl_context=pki.client())
        bob = SignalingClient(server.url, "bob", ssl_context=pki.client())
        with trio.fail_after(5):
            await nursery.start(alice.run)
            joined = await nursery.start(bob.run)
            assert [p.peer_id for p in joined.peers] == ["alice"]
            assert [p.peer_id for p in await alice.list_peers()] == ["bob"]
            await alice.aclose()
            await bob.aclose()


async def test_a_client_without_the_ca_is_refused_at_once_with_the_reason(pki: Pki) -> None:
    # Before: trio-websocket waited out connect_timeout (10 s) on the broken stream, then the
    # client retried a certificate it could never trust.
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await trio.lowlevel.checkpoint()

    async with tls_server(pki) as server, trio.open_nursery() as nursery:
        stranger = SignalingClient(server.url, "eve", sleep=sleep, backoff=Backoff(tries=3))
        with trio.fail_after(5), pytest.raises(SignalingConnectionError) as refused:
            await nursery.start(stranger.run)
        assert "certificate verify failed" in str(refused.value)
        assert "cafile" in str(refused.value)
        assert slept == []  # not retried
        assert server.hub.connections == 0
        nursery.cancel_scope.cancel()


async def test_a_plain_ws_client_at_the_tls_port_is_told_to_use_tls(pki: Pki) -> None:
    async with tls_server(pki) as server, trio.open_nursery() as nursery:
        plain = SignalingClient(server.url.replace("wss://", "ws://"), "bob")
        with trio.fail_after(5), pytest.raises(SignalingConnectionError) as refused:
            await nursery.start(plain.run)
        assert "HTTP 400: this port speaks TLS: use https:// or wss://" in str(refused.value)
        nursery.cancel_scope.cancel()


async def test_a_wss_client_at_a_plain_port_is_not_kept_waiting(pki: Pki) -> None:
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(SignalingServer(port=0).run)
        url = server.url.replace("ws://", "wss://")
        client = SignalingClient(url, "bob", ssl_context=pki.client(), backoff=Backoff(tries=0))
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(SignalingConnectionError, match="TLS handshake"):
            await nursery.start(client.run)
        assert trio.current_time() - started < 2.0  # the server closed at once, not after 10 s
        nursery.cancel_scope.cancel()


# --- The page -----------------------------------------------------------------------------------


async def test_the_page_is_served_over_https_with_its_security_headers(pki: Pki) -> None:
    async with tls_server(pki, http_handler=static_handler()) as server:
        reply = await tls_exchange(
            server.port, pki.client(), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"X-Frame-Options: DENY" in head
        assert b"Content-Security-Policy: " in head
        assert b"<html" in body.lower()
        upgrade = await tls_exchange(
            server.port, pki.client(), b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert upgrade.startswith(b"HTTP/1.1 426")
        assert b"connect with wss://" in upgrade


# --- Hostile clients ----------------------------------------------------------------------------


async def test_junk_and_stalled_handshakes_are_closed_within_the_bound(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshrtc.signaling.server")
    async with tls_server(pki, handshake_timeout=BOUND) as server:
        silent = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(10)]
        stalled = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(3)]
        for stream in stalled:
            await stream.send_all(client_hello())  # then never answers the server's flight
        # Meanwhile an honest client is not held up by any of them: it is in while they all
        # still hold their slots (they are closed at the bound, not before).
        async with trio.open_nursery() as nursery:
            honest = SignalingClient(server.url, "honest", ssl_context=pki.client())
            await nursery.start(honest.run)
            assert server.connections.total == 14
            await honest.aclose()
        junk = await trio.open_tcp_stream("127.0.0.1", server.port)
        await junk.send_all(b"\x16\x03\x01\x00\x08garbage!" * 4)  # a record header, then nonsense
        plain = await trio.open_tcp_stream("127.0.0.1", server.port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed_within(junk, BOUND) < BOUND / 2  # a failed handshake: at once
        assert await closed_within(plain, BOUND) < BOUND / 2
        for stream in silent + stalled:
            await closed_within(stream, 3 * BOUND)  # the bound, plus scheduling slack
        with trio.fail_after(2):
            while server.connections.total:  # noqa: ASYNC110 (nothing to wait on but this)
                await trio.sleep(0.01)
        for stream in [*silent, *stalled, junk, plain]:
            await stream.aclose()
    records = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    failed = [r for r in records if "handshake failed" in r.getMessage()]
    timed_out = [r for r in records if "no TLS handshake within" in r.getMessage()]
    assert len(failed) == 1  # the junk, one line, with the address and no traceback
    assert len(timed_out) == 13
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in records)
    assert all("(127.0.0.1)" in r.getMessage() for r in records)


async def test_the_caps_count_a_connection_before_its_handshake(pki: Pki) -> None:
    async with tls_server(pki, handshake_timeout=BOUND, max_connections_per_address=3) as server:
        idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(3)]
        with trio.fail_after(2):
            while server.connections.total < 3:  # noqa: ASYNC110
                await trio.sleep(0.005)
        # The fourth is closed at accept: no handshake, no plain reply a TLS client cannot read.
        fourth = await trio.open_tcp_stream("127.0.0.1", server.port)
        await fourth.send_all(client_hello())
        assert await closed_within(fourth, BOUND) < BOUND / 2
        await fourth.aclose()
        # Once the bound closed the idle ones, an honest client gets in.
        for stream in idle:
            await closed_within(stream, 3 * BOUND)
            await stream.aclose()
        async with trio.open_nursery() as nursery:
            honest = SignalingClient(server.url, "honest", ssl_context=pki.client())
            with trio.fail_after(2):
                await nursery.start(honest.run)
            await honest.aclose()


async def test_an_address_locked_out_for_bad_tokens_gets_no_tls_handshake(pki: Pki) -> None:
    auth = TokenAuthority(b"s" * 64)
    throttle = FailedTokenThrottle(max_failures=1)
    async with tls_server(pki, auth=auth, token_throttle=throttle) as server:
        reply = await tls_exchange(
            server.port,
            pki.client(),
            b"GET /ws?token=forged HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 401")
        # Locked out now: closed before the server does any TLS work for it.
        locked = await trio.open_tcp_stream("127.0.0.1", server.port)
        await locked.send_all(client_hello())
        with trio.fail_after(2):
            assert await locked.receive_some(65536) == b""  # no ServerHello
        await locked.aclose()


# --- Configuration ------------------------------------------------------------------------------


def test_bad_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certfile"):
        server_context(str(tmp_path / "missing.pem"))
    other = trustme.CA().issue_cert("127.0.0.1")
    stranger_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(stranger_key))
    with pytest.raises(ConfigError, match="private key"):
        server_context(str(pki.certfile), str(stranger_key))  # a key that is not the cert's
    with pytest.raises(ConfigError, match="cafile"):
        client_context(str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="signaling_cafile"):
        TransportConfig(signaling_cafile=str(tmp_path / "missing.pem"))
    assert TransportConfig(signaling_cafile=str(pki.cafile)).signaling_cafile == str(pki.cafile)


async def test_a_transport_verifies_with_its_configured_cafile(pki: Pki) -> None:
    from meshrtc.rtc.stun import StunServer
    from meshrtc.transport import WebRtcTransport

    async with tls_server(pki) as server, trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(
            signaling_url=server.url,
            stun_servers=[stun.url],
            peer_id="t1",
            ice_host_addresses=("127.0.0.1",),
            signaling_cafile=str(pki.cafile),
        )
        with trio.fail_after(20):
            async with WebRtcTransport(config) as transport:
                assert transport.state == "Ready"
                assert server.hub.sessions() == {"default": ("t1",)}
            untrusted = pytest.RaisesExc(SignalingConnectionError, match="certificate verify")
            with pytest.RaisesGroup(untrusted, flatten_subgroups=True, allow_unwrapped=True):
                async with WebRtcTransport(attrs.evolve(config, signaling_cafile=None)):
                    pass
        nursery.cancel_scope.cancel()


class _BuiltError(Exception):
    """Raised by a stand-in server: how the command configured it."""


@pytest.mark.parametrize("command", ["signal", "serve"])
def test_the_cli_passes_tls_and_the_caps(
    command: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    def record(*_args: object, **kwargs: object) -> None:
        raise _BuiltError(kwargs)

    monkeypatch.setattr(server_module, "SignalingServer", record)
    argv = [
        command,
        *("--certfile", str(pki.certfile), "--keyfile", str(pki.keyfile)),
        *("--max-connections", "300", "--max-connections-per-address", "5"),
    ]
    with pytest.raises(_BuiltError) as built:
        main(argv)
    kwargs = built.value.args[0]
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert (kwargs["max_connections"], kwargs["max_connections_per_address"]) == (300, 5)
    with pytest.raises(_BuiltError) as built:
        main([command])
    assert built.value.args[0]["ssl_context"] is None


@pytest.mark.parametrize("command", ["signal", "serve"])
def test_the_cli_refuses_bad_tls_and_cap_options(
    command: str, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--keyfile", str(pki.keyfile)]) == 2
    assert "--keyfile needs --certfile" in capsys.readouterr().err
    assert main([command, "--certfile", str(tmp_path / "missing.pem")]) == 2
    assert "existing PEM file" in capsys.readouterr().err
    # Past the budget under the open-file limit: refused, with the figure and the way out.
    budget = connection_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    assert main([command, "--max-connections", str(budget + 1)]) == 2
    assert f"at most {budget}" in capsys.readouterr().err
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            main([command, "--max-connections-per-address", bad])
        with pytest.raises(SystemExit):
            main([command, "--max-connections", bad])


def test_a_server_refuses_a_cap_past_its_fd_budget() -> None:
    budget = connection_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    with pytest.raises(ConfigError, match="ulimit -n"):
        SignalingServer(max_connections=budget + 1)
    assert SignalingServer(max_connections=budget).connections.max_total == budget


# --- meshrtc serve over TLS, in a child process -------------------------------------------------


async def test_serve_with_a_cert_answers_wss_with_a_token_and_holds_its_caps(
    pki: Pki, tmp_path: Path
) -> None:
    """The real command: a member with the CA and a token joins over wss:// and sees the
    transport; without a token it is refused; past ``--max-connections-per-address`` it is
    closed at accept."""
    from .browser_helpers import meshrtc_serve

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 64)
    auth = TokenAuthority(b"s" * 64)
    tls = ("--certfile", str(pki.certfile), "--keyfile", str(pki.keyfile))
    caps = ("--max-connections-per-address", "2")
    async with (
        meshrtc_serve(*tls, *caps, "--auth-secret-file", str(secret)) as serve,
        trio.open_nursery() as nursery,
    ):
        assert serve.url.startswith("https://127.0.0.1:")
        ws = serve.url.replace("https://", "wss://", 1).rstrip("/") + "/ws"
        with trio.fail_after(10):
            with pytest.raises(SignalingConnectionError, match="HTTP 401: missing token"):
                await nursery.start(SignalingClient(ws, "intruder", ssl_context=pki.client()).run)
            member = SignalingClient(
                ws, "alice", ssl_context=pki.client(), token=auth.issue("alice", "default")
            )
            joined = await nursery.start(member.run)
            assert [p.peer_id for p in joined.peers] == [SERVE_PEER_ID]
            # The member holds one of the two slots; a finished handshake shows a second is held.
            port = int(serve.url.rsplit(":", 1)[1].strip("/"))
            held = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=pki.client())
            await held.do_handshake()
            third = await trio.open_tcp_stream("127.0.0.1", port)
            await third.send_all(client_hello())
            assert await closed_within(third, 2.0) < 1.0  # closed at accept, not at the 10 s bound
            await third.aclose()
            await held.aclose()
            await member.aclose()
        nursery.cancel_scope.cancel()


def spki_hash(pki: Pki) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the server certificate: what Chromium's
    ``--ignore-certificate-errors-spki-list`` pins (only this key, not any certificate)."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pki.certfile.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.slow
async def test_chromium_opens_the_page_over_https_and_joins_over_wss(pki: Pki) -> None:
    """``meshrtc serve --certfile --keyfile``: Chromium, trusting only this certificate's key
    (``--ignore-certificate-errors-spki-list``), loads the page over https, which connects to
    ``wss://`` on its own and gets a media link to the transport."""
    from tests.browser_helpers import TRANSPORT_ID, meshrtc_serve, open_chromium
    from tests.test_browser import _encode, _fail_with, chromium, query, wait_connected

    binary = chromium()
    tls = ("--certfile", str(pki.certfile), "--keyfile", str(pki.keyfile))
    pin = f"--ignore-certificate-errors-spki-list={spki_hash(pki)}"
    with trio.fail_after(60):
        async with (
            meshrtc_serve(*tls) as serve,
            open_chromium(binary, extra_flags=[pin]) as browser,
        ):
            assert serve.url.startswith("https://")
            try:
                with trio.fail_after(40):
                    page = await browser.new_page(serve.url + "?" + _encode(query("dora", "VP9")))
                    snap = await wait_connected(page, {TRANSPORT_ID})
                    assert snap["peerId"] == "dora"
                    assert await page.evaluate("location.protocol") == "https:"
            except BaseException:
                await _fail_with([browser])
                raise
