"""The browser page served on the signaling port (meshrtc.web): what is served, what is not."""

from __future__ import annotations

import pytest
import trio

from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import HttpRequest
from meshrtc.web import page_files, static_handler
from tests.browser_helpers import meshrtc_serve
from tests.test_signaling_server import http_exchange, serving


def get(path: str, method: str = "GET") -> HttpRequest:
    return HttpRequest(method, path, (("host", "127.0.0.1"),))


def test_the_package_ships_the_page() -> None:
    files = page_files()
    assert {"/", "/index.html", "/app.js", "/style.css"} <= set(files)
    assert files["/"] == files["/index.html"]
    index = files["/"][0].decode()
    assert '<script src="app.js"></script>' in index
    assert 'href="style.css"' in index
    # Python modules are package files too, but never served.
    assert not [path for path in files if path.endswith(".py")]


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/?session=room-1&name=ann&autojoin=1", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/index.html", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/app.js", "text/javascript; charset=utf-8", b'"peer.announce"'),
        ("/style.css", "text/css; charset=utf-8", b"#tiles"),
    ],
)
async def test_static_handler_serves_the_page(path: str, content_type: str, marker: bytes) -> None:
    response = await static_handler()(get(path))
    assert response is not None
    assert response.status == 200
    assert response.content_type == content_type
    assert marker in response.body
    assert ("X-Content-Type-Options", "nosniff") in response.headers


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/__init__.py",
        "/web/app.js",
        "/../pyproject.toml",
        "/%2e%2e/__init__.py",
        "/..%2f..%2fpyproject.toml",
        "//etc/passwd",
        "/app.js/",
        "/APP.JS",
        "/index.html%00.js",
    ],
)
async def test_static_handler_serves_nothing_else(path: str) -> None:
    response = await static_handler()(get(path))
    assert response is not None
    assert response.status == 404


async def test_static_handler_leaves_the_websocket_path_to_the_server() -> None:
    assert await static_handler()(get("/ws")) is None


async def test_page_and_signaling_share_one_port() -> None:
    async with serving(http_handler=static_handler()) as server:
        reply = await http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Type: text/html; charset=utf-8" in head
        assert body == page_files()["/"][0]

        reply = await http_exchange(server.port, b"HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Type: text/javascript; charset=utf-8" in head
        assert f"Content-Length: {len(page_files()['/app.js'][0])}".encode() in head
        assert body == b""

        for request, status in [
            (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
            (b"GET /../pyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
        ]:
            reply = await http_exchange(server.port, request)
            assert reply.startswith(b"HTTP/1.1 " + status + b" "), (request, reply[:80])

        # The WebSocket still answers on the same port.
        client = SignalingClient(server.url, "ann")
        async with trio.open_nursery() as nursery:
            result = await nursery.start(client.run)
            assert result.peer_id == "ann"
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_meshrtc_serve_serves_the_page() -> None:
    """The real command: the page at ``/`` next to the signaling WebSocket, Ctrl-C stops it."""
    with trio.fail_after(30):
        async with meshrtc_serve() as serve:
            url = serve.url
            assert url.startswith("http://127.0.0.1:")
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            reply = await http_exchange(port, b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert reply.partition(b"\r\n\r\n")[2] == page_files()["/app.js"][0]
            reply = await http_exchange(port, b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 404 ")
    assert serve.process.returncode == 0
