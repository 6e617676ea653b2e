"""A real TURN server for tests: Debian's coturn (``turnserver``) on loopback, one static user.

coturn runs with no configuration file (``-n``), no TLS/DTLS/TCP listeners, no CLI, its user
database and pid file in the test's temporary directory, and its log on stdout, which is kept
line by line so a test can check what the server did (allocations, permissions, relayed bytes).
It refuses loopback peers by default; ``--allow-loopback-peers`` lets two local peers relay to
each other. Readiness is its "UDP listener opened" log line followed by an answered STUN Binding
request; on exit the process is terminated (trio sends SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio

from meshrtc.config import TurnServer

HOST = "127.0.0.1"
REALM = "meshrtc"
_MAGIC_COOKIE = 0x2112A442
#: Lines of coturn's verbose log, per allocation ("session"): a peer it has a permission for, and
#: when the allocation is deleted, what it relayed to and from its peers.
_SESSION_PEER = re.compile(r"session (\d+): peer ([\d.]+):(\d+) lifetime updated")
_PEER_USAGE = re.compile(
    r"session (\d+): peer usage: realm=<[^>]*>, username=<([^>]*)>, "
    r"rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)"
)


class Lines:
    """coturn's log so far, with a way to wait for a line (every appended line wakes waiters)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._event = trio.Event()

    def append(self, line: str) -> None:
        self.lines.append(line)
        self._poke()

    def end(self) -> None:
        self.ended = True
        self._poke()

    def _poke(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def until(self, condition: Callable[[], bool], within: float) -> None:
        with trio.fail_after(within):
            while not condition():
                if self.ended:
                    raise RuntimeError("turnserver exited:\n" + "\n".join(self.lines[-30:]))
                await self._event.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


@attrs.frozen
class PeerUsage:
    """What one allocation relayed for its client, from coturn's ``peer usage`` line.

    ``received_*`` came in from the peers (and went on to our client), ``sent_*`` went out to them.
    """

    session: str
    username: str
    peers: frozenset[tuple[str, int]]
    received_packets: int
    received_bytes: int
    sent_packets: int
    sent_bytes: int


@attrs.define(eq=False)
class Coturn:
    """A running turnserver: where it listens, its user, its relay port range and its log."""

    port: int
    min_port: int
    max_port: int
    username: str
    password: str
    log: Lines
    command: list[str]

    @property
    def url(self) -> str:
        return f"turn:{HOST}:{self.port}"

    def turn_server(self, *, credential: str | None = None) -> TurnServer:
        """The meshrtc configuration of this server (``credential`` overrides the right one)."""
        return TurnServer(
            url=self.url,
            username=self.username,
            credential=self.password if credential is None else credential,
        )

    def is_relay_address(self, address: tuple[str, int]) -> bool:
        return address[0] == HOST and self.min_port <= address[1] <= self.max_port

    def peer_usage(self) -> list[PeerUsage]:
        """The usage of every deleted allocation, in the order coturn logged them."""
        peers: dict[str, set[tuple[str, int]]] = {}
        out = []
        for line in self.log.lines:
            if match := _SESSION_PEER.search(line):
                session, host, port = match.groups()
                peers.setdefault(session, set()).add((host, int(port)))
            elif match := _PEER_USAGE.search(line):
                session, user, *numbers = match.groups()
                rp, rb, sp, sb = (int(n) for n in numbers)
                out.append(
                    PeerUsage(session, user, frozenset(peers.get(session, ())), rp, rb, sp, sb)
                )
        return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _relay_range(size: int = 64) -> tuple[int, int]:
    """A relay port range of its own per test run (coturn skips ports that are taken)."""
    low = 49_152 + secrets.randbelow((65_000 - 49_152 - size) // size) * size
    return low, low + size - 1


async def _stun_binding(port: int, within: float) -> None:
    """A STUN Binding request answered by the server: it is accepting UDP on ``port``."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, _MAGIC_COOKIE) + transaction
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((HOST, 0))
        with trio.fail_after(within):
            while True:
                await sock.sendto(request, (HOST, port))
                # RFC 5389 retransmission: resend while no answer comes (loopback: the first does).
                with trio.move_on_after(0.2):
                    while True:
                        data = await sock.recv(2048)
                        if (
                            len(data) >= 20
                            and data[:2] == b"\x01\x01"
                            and data[8:20] == transaction
                        ):
                            return


async def _read_lines(stream: trio.abc.ReceiveStream, log: Lines) -> None:
    buffer = b""
    try:
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                log.append(raw.decode(errors="replace").rstrip())
    finally:
        if buffer:
            log.append(buffer.decode(errors="replace").rstrip())
        log.end()


@asynccontextmanager
async def run_coturn(
    binary: str, workdir: Path, *, username: str = "meshrtc", password: str = "s3cret"
) -> AsyncIterator[Coturn]:
    """Start turnserver, wait until it answers on UDP, yield it; terminate it on exit."""
    port = _free_udp_port()
    min_port, max_port = _relay_range()
    command = [
        binary,
        "-n",  # no configuration file (not /etc/turnserver.conf)
        "--listening-ip", HOST,
        "--relay-ip", HOST,
        "--listening-port", str(port),
        "--min-port", str(min_port),
        "--max-port", str(max_port),
        "--lt-cred-mech",
        "--user", f"{username}:{password}",
        "--realm", REALM,
        "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--no-rfc5780",
        "--allow-loopback-peers",  # both peers are on 127.0.0.1
        "--no-multicast-peers",
        "--userdb", str(workdir / "turndb"),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--log-file", "stdout",
        "--simple-log",
        "--verbose",
    ]  # fmt: skip
    log = Lines()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
            )
        )
        assert process.stdout is not None
        nursery.start_soon(_read_lines, process.stdout, log)
        try:
            listening = rf"UDP listener opened on\s*:\s*{re.escape(HOST)}:{port}\b"
            await log.until(lambda: bool(log.matching(listening)), within=10)
            await _stun_binding(port, within=5)
            yield Coturn(port, min_port, max_port, username, password, log, command)
        finally:
            nursery.cancel_scope.cancel()  # run_process terminates turnserver and reaps it
