"""Hostile clients against ``meshrtc signal``: what a flood and junk offers cost an honest client.

Run: ``.venv/bin/python bench/hostile.py`` (about 30 s). ``--src DIR`` runs the server from another
source tree (e.g. a ``git worktree`` of the commit before issue 13) for the "before" figures.

The server runs in its own process (``python -m meshrtc signal --port 0``); the attackers run in
another (this script, ``--attack``), so neither the attackers' CPU nor the honest client's shares
the server's event loop. An honest pair (``honest-a``, ``honest-b``) is announced; ``honest-a``
sends a ``peer.offer`` (a 1 kB SDP) to ``honest-b`` every 20 ms and times the request/response
round trip. Three phases, each reported with the honest round trip (median, p99, max), the
server's CPU share (from /proc) and the load average:

- ``idle``: no attacker (3 s).
- ``flood``: one announced client sends ``peer.list`` notifications at 2000 messages/s (20 every
  10 ms) for at most 8 s; reports when (if) the server closed it and with which code.
- ``junk``: 4 connections that never announce each send 10 offers of 261 000 empty ``a=`` lines
  (1 MiB), as fast as the server answers; reports server CPU per junk offer.
- ``sockets`` (a fresh server limited to 1024 open files): 1015 idle WebSockets from 127.0.0.2,
  held; once all are open, an honest client on 127.0.0.1 tries to join (5 s timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from support.signal_process import signal_process

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    + "a=x-pad:"
    + "p" * 800
    + "\r\n"
)
#: LF line ends (JSON escapes each as two characters): 261k lines fit the 1 MiB message limit.
JUNK_SDP = SDP.replace("\r\n", "\n") + "a=\n" * 261_000
FLOOD_RATE = 2000
FLOOD_SECONDS = 8.0


def rpc(method: str, params: dict[str, Any], request_id: int | None = None) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message)


def announce(peer_id: str, request_id: int = 1) -> str:
    return rpc("peer.announce", {"peer_id": peer_id, "capabilities": ["audio"]}, request_id)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def expect_result(ws: WebSocketConnection, request_id: int) -> None:
    while True:
        reply = json.loads(await ws.get_message())
        if reply.get("id") == request_id:
            if "result" not in reply:
                raise SystemExit(f"honest request refused: {reply}")
            return


async def drain(ws: WebSocketConnection) -> None:
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def honest_round_trips(
    url: str, seconds: float, *, ssl_context: ssl.SSLContext | None = None, tag: str = "honest"
) -> list[float]:
    """``{tag}-a`` offers to ``{tag}-b`` every 20 ms; the request/response round trips (s)."""
    trips: list[float] = []
    async with (
        open_websocket_url(url, ssl_context=ssl_context) as a,
        open_websocket_url(url, ssl_context=ssl_context) as b,
        trio.open_nursery() as nursery,
    ):
        await b.send_message(announce(f"{tag}-b"))
        await expect_result(b, 1)
        nursery.start_soon(drain, b)
        await a.send_message(announce(f"{tag}-a"))
        await expect_result(a, 1)
        offer = {"from": f"{tag}-a", "to": f"{tag}-b", "sdp": SDP}
        deadline = trio.current_time() + seconds
        request_id = 1
        while trio.current_time() < deadline:
            request_id += 1
            start = time.perf_counter()
            await a.send_message(rpc("peer.offer", offer, request_id))
            with trio.fail_after(30):
                await expect_result(a, request_id)
            trips.append(time.perf_counter() - start)
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return trips


async def attack_flood(url: str) -> None:
    """Announce, then 2000 notifications/s; print when (if) the server closed us."""
    async with open_websocket_url(url) as ws:
        await ws.send_message(announce("flooder"))
        await expect_result(ws, 1)
        note = rpc("peer.list", {})
        start = trio.current_time()
        sent = 0
        code = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, ws)
            try:
                while trio.current_time() - start < FLOOD_SECONDS:
                    for _ in range(FLOOD_RATE // 100):
                        await ws.send_message(note)
                        sent += 1
                    await trio.sleep(0.01)
            except ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else None
            nursery.cancel_scope.cancel()
        if code is None and ws.closed is not None:
            code = ws.closed.code
        elapsed = trio.current_time() - start
        closed = f"closed with {code} after {elapsed:.2f} s" if code else "never closed"
        print(f"flooder: sent {sent} messages, {closed}", flush=True)


IDLE_SOCKETS = 1015
HOLD_SECONDS = 30.0  # longer than the honest client's 5 s attempt, made once all are open
ATTACKER_ADDRESS = "127.0.0.2"  # another loopback address, so a per-address cap can tell


async def attack_sockets(url: str) -> None:
    """Open 1015 WebSockets from 127.0.0.2, say so, and hold them (idle, answering pings)."""
    held = 0
    refused = 0
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

    async def one(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal held, refused
        started = False
        try:
            async with trio.open_nursery() as own:
                with trio.fail_after(5):
                    stream = await trio.open_tcp_stream(
                        "127.0.0.1", port, local_address=ATTACKER_ADDRESS
                    )
                    await wrap_client_stream(own, stream, "127.0.0.1", "/ws")
                held += 1
                started = True
                task_status.started()
                await trio.sleep(HOLD_SECONDS)
                own.cancel_scope.cancel()
        except* (OSError, HandshakeError, ConnectionRejected, ConnectionClosed, trio.TooSlowError):
            refused += 1
        if not started:
            task_status.started()

    async with trio.open_nursery() as nursery:
        for _ in range(IDLE_SOCKETS):
            await nursery.start(one)
        print(
            f"sockets: {held} WebSockets held from {ATTACKER_ADDRESS}, {refused} refused",
            flush=True,
        )


async def honest_join(url: str) -> None:
    start = time.perf_counter()
    try:
        with trio.fail_after(5):
            async with open_websocket_url(url) as ws:
                await ws.send_message(announce("honest-c"))
                await expect_result(ws, 1)
    except (
        OSError,
        HandshakeError,
        ConnectionRejected,
        ConnectionClosed,
        trio.TooSlowError,
    ) as exc:
        print(
            f"sockets: honest client locked out ({type(exc).__name__}) after "
            f"{time.perf_counter() - start:.1f} s; load average {load()}",
            flush=True,
        )
        return
    print(
        f"sockets: honest client joined in {1000 * (time.perf_counter() - start):.1f} ms; "
        f"load average {load()}",
        flush=True,
    )


async def sockets_phase(url: str) -> None:
    command = [sys.executable, __file__, "--attack", "sockets", "--url", url]
    attacker = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert attacker.stdout is not None
    try:
        line = b""
        with trio.fail_after(120):  # the attacker says when all its sockets are open
            while not line.endswith(b"\n"):
                chunk = await attacker.stdout.receive_some(1)
                if not chunk:
                    raise SystemExit("the attacker exited early")
                line += chunk
        print(line.decode().strip(), flush=True)
        await honest_join(url)
    finally:
        attacker.kill()
        await attacker.wait()
        await attacker.stdout.aclose()


async def attack_junk(url: str) -> None:
    """Four strangers each send ten 1 MiB junk offers, waiting for each answer."""
    answers: dict[str, int] = {}

    async def one(n: int) -> None:
        async with open_websocket_url(url, message_queue_size=4) as ws:
            for i in range(10):
                params = {"from": f"junk-{n}", "to": "honest-b", "sdp": JUNK_SDP}
                await ws.send_message(rpc("peer.offer", params, i + 1))
                reply = json.loads(await ws.get_message())
                key = str(reply.get("error", {}).get("code", "result"))
                answers[key] = answers.get(key, 0) + 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(one, n)
    print(f"junk: 40 offers answered in {time.perf_counter() - start:.2f} s: {answers}", flush=True)


def summary(trips: list[float]) -> str:
    ms = sorted(t * 1000 for t in trips)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"honest round trip median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms[-1]:.1f} ms (n={len(ms)})"
    )


async def run_attacker(command: list[str]) -> None:
    await trio.run_process(command)


async def phase(name: str, url: str, pid: int, attack: str | None, seconds: float) -> float:
    """Run one phase; return the server's CPU share (CPU seconds per second)."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    async with trio.open_nursery() as nursery:
        if attack is not None:
            command = [sys.executable, __file__, "--attack", attack, "--url", url]
            nursery.start_soon(run_attacker, command)
            await trio.sleep(0.3)  # the attacker's interpreter starts
        trips = await honest_round_trips(url, seconds)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    print(
        f"{name}: {summary(trips)}; server CPU {cpu:.2f} s in {wall:.1f} s "
        f"({100 * cpu / wall:.0f}% of a core); load average {load()}",
        flush=True,
    )
    return cpu / wall


async def junk_phase(url: str, pid: int, idle_share: float) -> None:
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    await phase("junk", url, pid, "junk", 5.0)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    net = max(0.0, cpu - idle_share * wall)
    print(
        f"junk: server CPU per junk offer {1000 * net / 40:.1f} ms (net of the honest pair's "
        f"idle-phase share; {1000 * cpu / 40:.1f} ms gross)",
        flush=True,
    )


async def main(src: str | None, sockets_only: bool) -> None:
    print(f"server from {src or 'this tree'}; load average {load()}", flush=True)
    if not sockets_only:
        async with signal_process(src=src) as (url, process):
            pid = process.pid
            idle_share = await phase("idle", url, pid, None, 3.0)
            await phase("flood", url, pid, "flood", FLOOD_SECONDS + 1)
            await junk_phase(url, pid, idle_share)
    print(f"sockets: a server limited to 1024 open files; load average {load()}", flush=True)
    async with signal_process(src=src, fd_limit=1024) as (url, _process):
        await sockets_phase(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="source tree (its src/) to run the server from")
    parser.add_argument("--sockets-only", action="store_true", help="only the idle-sockets phase")
    parser.add_argument("--attack", choices=["flood", "junk", "sockets"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack == "flood":
        trio.run(attack_flood, args.url)
    elif args.attack == "junk":
        trio.run(attack_junk, args.url)
    elif args.attack == "sockets":
        trio.run(attack_sockets, args.url)
    else:
        trio.run(main, args.src, args.sockets_only)
