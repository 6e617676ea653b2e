"""The browser client page, served by ``meshrtc serve`` on the signaling port (docs/browser.md).

The page is plain HTML, CSS and JavaScript shipped inside the package, so there is no build step
and a wheel carries it. :func:`static_handler` answers the signaling server's plain HTTP requests:
it reads the page's files once, when it is created, and serves only those by exact path, so no
request path (``..``, percent-escapes, absolute paths) can reach any other file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from typing import Final

from meshrtc.signaling.server import HttpHandler, HttpRequest, HttpResponse

__all__ = ["CONTENT_SECURITY_POLICY", "CONTENT_TYPES", "page_files", "static_handler"]

log = logging.getLogger(__name__)

#: What is served, by suffix; any other file of the package (its Python modules) is not.
CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS: Final = (
    # The page and the server change together; a cached app.js from an older server would speak
    # an older protocol.
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # The page holds a microphone and a camera: no other site may frame it (clickjacking). The
    # policy allows what the page uses and nothing else: its own files, WebSockets to any
    # signaling server (the ``ws`` query parameter may name another), camera/microphone streams.
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
)


def page_files() -> dict[str, tuple[bytes, str]]:
    """``{"/name": (content, content type)}`` for every servable file; ``/`` is index.html."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files(__name__).iterdir():
        suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
        content_type = CONTENT_TYPES.get(suffix)
        if content_type is None or not entry.is_file():
            continue
        files["/" + entry.name] = (entry.read_bytes(), content_type)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


def static_handler(files: Mapping[str, tuple[bytes, str]] | None = None) -> HttpHandler:
    """An :data:`~meshrtc.signaling.server.HttpHandler` serving the page (or ``files``).

    ``/ws`` is left to the server (its 426 tells a plain GET to upgrade); any other unknown path
    is 404. The query string is ignored: ``/?session=room-1&name=ann`` is the page.
    """
    table = dict(page_files() if files is None else files)

    async def handle(request: HttpRequest) -> HttpResponse | None:
        path = request.path
        found = table.get(path)
        if found is not None:
            body, content_type = found
            return HttpResponse(200, body, content_type=content_type, headers=_HEADERS)
        if path == "/ws":
            return None
        log.debug("HTTP %s %s: not found", request.method, request.target)
        return HttpResponse(404, b"not found\n", headers=_HEADERS)

    return handle
