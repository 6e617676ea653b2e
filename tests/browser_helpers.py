"""Headless Chromium for the browser tests, driven over the DevTools protocol on trio.

Why not Playwright or Selenium: both are synchronous (Playwright's async API is asyncio, which
cannot run inside these trio tests), so every call would hop to a worker thread; Playwright also
ships a Node.js driver whose protocol version must match the browser, and Selenium needs Debian's
chromium-driver of exactly the installed Chromium's version. The DevTools protocol is one JSON
WebSocket that Chromium itself serves (``--remote-debugging-port=0``); trio-websocket, already a
dependency, speaks it, so the tests stay in one trio event loop where ``trio.fail_after`` bounds
every step, and there is nothing else to install or keep in step with Chromium.

Only what the tests need: start Chromium with the flags below, open a page, evaluate JavaScript
(awaiting promises), take a screenshot, and close everything (the process group is killed if
Chromium does not exit in time). Chromium's stderr and each page's console are kept for failure
messages.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from meshrtc.config import TransportConfig
from meshrtc.pipeline import default_manifest
from meshrtc.rtc.peer import PeerOptions
from meshrtc.rtc.stun import StunServer
from meshrtc.session.manager import RunningSession
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport
from meshrtc.web import static_handler

#: The flags that matter (docs/browser.md explains each).
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    # Camera and microphone: a synthetic pattern and a periodic beep, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Nothing leaves the machine: no update checks, field trials, sync, first-run fetches.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--disable-domain-reliability",
    # ICE on loopback: Chromium gathers no 127.0.0.1 candidates unless told to, and hides host
    # addresses behind mDNS names (which aioice cannot resolve here) unless the feature is off.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate",
    # Media starts without a click; pages in the background are not throttled.
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    # No sound card here: play remote audio into a null sink instead of failing ALSA opens.
    "--disable-audio-output",
    "--disable-dev-shm-usage",
    "--password-store=basic",
    "--window-size=1280,860",
)

_DEVTOOLS_LINE = re.compile(rb"DevTools listening on (ws://\S+)")


class CdpError(Exception):
    """Chromium answered a DevTools call with an error, or a page script threw."""


@attrs.define
class _Pending:
    done: trio.Event = attrs.Factory(trio.Event)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


EventHandler = Callable[[str, dict[str, Any], str | None], None]


class CdpConnection:
    """One DevTools WebSocket: calls with ids, and events handed to every handler."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.handlers: list[EventHandler] = []

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        pending = self._pending[call_id] = _Pending()
        try:
            await self._ws.send_message(json.dumps(message))
            await pending.done.wait()
        finally:
            self._pending.pop(call_id, None)
        if pending.error is not None:
            raise CdpError(
                f"{method}: {pending.error.get('message')} {pending.error.get('data', '')}"
            )
        return pending.result or {}

    async def read_loop(self) -> None:
        while True:
            try:
                text = await self._ws.get_message()
            except ConnectionClosed:
                for waiting in self._pending.values():
                    waiting.error = {"message": "the DevTools connection closed"}
                    waiting.done.set()
                return
            message = json.loads(text)
            if "id" in message:
                pending = self._pending.get(message["id"])
                if pending is not None:
                    pending.result = message.get("result")
                    pending.error = message.get("error")
                    pending.done.set()
            else:
                for handler in list(self.handlers):
                    handler(message["method"], message.get("params", {}), message.get("sessionId"))


class Page:
    """One tab, attached in flat mode (its calls carry the session id)."""

    def __init__(self, cdp: CdpConnection, session_id: str, target_id: str) -> None:
        self.cdp = cdp
        self.session_id = session_id
        self.target_id = target_id
        #: Console messages and uncaught exceptions, for failure messages.
        self.console: collections.deque[str] = collections.deque(maxlen=300)
        self._loaded = trio.Event()
        #: The last value :meth:`wait_for` saw (what a timed-out wait was looking at).
        self.last_waited: Any = None
        cdp.handlers.append(self._on_event)

    def _on_event(self, method: str, params: dict[str, Any], session_id: str | None) -> None:
        if session_id != self.session_id:
            return
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"[{params['type']}] {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description", details.get("text"))
            self.console.append(f"[exception] {description}")

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.cdp.call(method, params, self.session_id)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._loaded = trio.Event()
        result = await self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (a promise is awaited); a throw raises CdpError."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description", details.get("text"))
            raise CdpError(f"{expression}: {description}")
        return result["result"].get("value")

    async def wait_for(
        self, expression: str, predicate: Callable[[Any], bool], *, poll: float = 0.1
    ) -> Any:
        """Evaluate ``expression`` until ``predicate`` holds; returns that value.

        Unbounded on purpose: callers bound it with ``trio.fail_after``.
        """
        while True:
            value = self.last_waited = await self.evaluate(expression)
            if predicate(value):
                return value
            await trio.sleep(poll)

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        target = trio.Path(path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(base64.b64decode(result["data"]))
        return path

    def console_text(self) -> str:
        return "\n".join(self.console)


class Chromium:
    """A running headless Chromium and its DevTools connection."""

    def __init__(
        self, process: trio.Process, cdp: CdpConnection, stderr: collections.deque[str]
    ) -> None:
        self.process = process
        self.cdp = cdp
        self.stderr = stderr
        self.pages: list[Page] = []

    async def new_page(self, url: str) -> Page:
        """A new tab showing ``url`` (loaded, console recorded)."""
        created = await self.cdp.call("Target.createTarget", {"url": "about:blank"})
        target_id = created["targetId"]
        attached = await self.cdp.call(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}
        )
        page = Page(self.cdp, attached["sessionId"], target_id)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.goto(url)
        self.pages.append(page)
        return page

    def diagnostics(self) -> str:
        """Every page's console and the end of Chromium's stderr, for a failure message."""
        parts = [f"--- page {i} console ---\n{p.console_text()}" for i, p in enumerate(self.pages)]
        parts.append("--- chromium stderr (last lines) ---\n" + "\n".join(self.stderr))
        return "\n".join(parts)


async def _read_stderr(
    stream: trio.abc.ReceiveStream,
    lines: collections.deque[str],
    found: Callable[[str], None],
) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            match = _DEVTOOLS_LINE.search(line)
            if match:
                found(match.group(1).decode())
            # D-Bus is absent in containers; its complaints say nothing about the test.
            if b"dbus" not in line:
                lines.append(line.decode(errors="replace"))


@contextlib.asynccontextmanager
async def open_chromium(
    binary: str, *, extra_flags: Sequence[str] = (), start_timeout: float = 20.0
) -> AsyncIterator[Chromium]:
    """Start headless Chromium; on exit close it (Browser.close, then SIGKILL to its group)."""
    with tempfile.TemporaryDirectory(prefix="meshrtc-chromium-") as profile:
        args = [
            binary,
            *CHROMIUM_FLAGS,
            *extra_flags,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        stderr: collections.deque[str] = collections.deque(maxlen=200)
        url_box: list[str] = []
        ready = trio.Event()

        def found(url: str) -> None:
            url_box.append(url)
            ready.set()

        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                assert process.stderr is not None
                nursery.start_soon(_read_stderr, process.stderr, stderr, found)
                with trio.fail_after(start_timeout):
                    await ready.wait()
                # Leaving this block closes the DevTools WebSocket with a close handshake first
                # (if Chromium went first, trio-websocket would leave the TCP socket open).
                async with open_websocket_url(
                    url_box[0],
                    max_message_size=64 * 1024 * 1024,
                    connect_timeout=5,
                    disconnect_timeout=2,
                ) as ws:
                    cdp = CdpConnection(ws)
                    nursery.start_soon(cdp.read_loop)
                    yield Chromium(process, cdp, stderr)
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.terminate()  # Chromium's graceful exit
                        with trio.move_on_after(3):
                            await process.wait()
                    # The whole group: renderer, GPU and zygote processes too.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
                    nursery.cancel_scope.cancel()


@attrs.define
class Served:
    """What ``meshrtc serve`` runs, in this process: the page, signaling and one transport."""

    url: str
    server: SignalingServer
    transport: WebRtcTransport
    running: RunningSession

    def page_url(self, **query: str) -> str:
        return self.url + ("?" + urlencode(query) if query else "")


TRANSPORT_ID = "meshrtc-server"


@contextlib.asynccontextmanager
async def serve_page(
    *,
    video_codec: str = "H264",
    session: str = "default",
    options: PeerOptions | None = None,
) -> AsyncIterator[Served]:
    """``meshrtc serve`` in-process (as ``_cmd_serve`` wires it), with the video codec chosen."""
    async with trio.open_nursery() as nursery:
        server: SignalingServer = await nursery.start(
            SignalingServer("127.0.0.1", 0, http_handler=static_handler()).run
        )
        stun: StunServer = await nursery.start(StunServer(host="127.0.0.1").run)
        config = TransportConfig(
            signaling_url=server.url,
            stun_servers=[stun.url],
            peer_id=TRANSPORT_ID,
            session_id=session,
            video_codec=video_codec,
            ice_host_addresses=("127.0.0.1",),
        )
        async with WebRtcTransport(config, options=options, hub=server) as transport:
            running: RunningSession = await nursery.start(transport.run_session, default_manifest())
            yield Served(f"http://127.0.0.1:{server.port}/", server, transport, running)
            nursery.cancel_scope.cancel()


_PAGE_LINE = re.compile(rb"browser page at (https?://\S+)")


@attrs.define
class ServeProcess:
    url: str
    process: trio.Process


@contextlib.asynccontextmanager
async def meshrtc_serve(*args: str, start_timeout: float = 20.0) -> AsyncIterator[ServeProcess]:
    """``python -m meshrtc serve --port 0 ARGS`` as a subprocess, with the page URL it printed.

    On exit it gets SIGINT (the graceful stop) and, if it has not exited within 5 s, SIGKILL;
    ``process.returncode`` tells the caller how it ended.
    """
    command = [sys.executable, "-m", "meshrtc", "serve", "--port", "0", "--log-level", "warning"]
    process = await trio.lowlevel.open_process(
        [*command, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output: collections.deque[str] = collections.deque(maxlen=200)
    page: list[str] = []
    ready = trio.Event()

    async def read() -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                output.append(line.decode(errors="replace"))
                match = _PAGE_LINE.search(line)
                if match:
                    page.append(match.group(1).decode())
                    ready.set()
        ready.set()  # it exited before printing the page line: fail now, not at the timeout

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        try:
            with trio.fail_after(start_timeout):
                await ready.wait()
            if not page:
                raise RuntimeError("meshrtc serve exited before printing its page URL")
            yield ServeProcess(page[0], process)
        except BaseException:
            print("--- meshrtc serve output ---\n" + "\n".join(output))
            raise
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGINT)
                    with trio.move_on_after(5):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                nursery.cancel_scope.cancel()
