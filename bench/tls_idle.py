"""TLS on ``meshrtc signal``: what 200 connections that never start a TLS handshake cost an honest
``wss://`` client.

Run: ``.venv/bin/python bench/tls_idle.py`` (about 50 s). The server runs in a child process
(``meshrtc signal --certfile --keyfile``, a throwaway CA made with trustme, default caps); this
process runs the honest pair and the attacker, whose sockets cost it no CPU while idle. The honest
pair (``PHASE-a``, ``PHASE-b``) joins over ``wss://`` with the CA; ``PHASE-a`` sends a
``peer.offer`` (1 kB SDP) to ``PHASE-b`` every 20 ms and times the round trip. Phases:

- ``none``: no attacker (5 s).
- ``idle200``: 200 TCP connections (50 from each of 127.0.0.2-5, under the per-address cap of 64)
  that never send a byte; each one the server closes at the handshake bound (10 s) is opened
  again at once, so 200 stay open and the honest client lives through one re-open wave (15 s).
- ``hello200``: the same, but each connection sends a real ClientHello and then stalls, so the
  server does its part of every handshake (key share, signature) and waits out the bound (15 s).

Each phase reports the honest round trip (median, p99, max), the server's CPU share and the load
average; ``idle200`` also how long the server kept an idle connection (the bound) and how many
were open at the end.
"""

from __future__ import annotations

import contextlib
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trustme

from hostile import cpu_seconds, honest_round_trips, load, summary
from support.signal_process import signal_process

IDLE = 200
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def client_hello() -> bytes:
    """A real TLS client's first flight, to start a handshake and never finish it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's flight
        tls.do_handshake()
    return outgoing.read()


class Idle:
    """Keeps ``IDLE`` connections open (silent, or stalled after ``hello``), re-opening each one
    the server closes."""

    def __init__(self, hello: bytes = b"") -> None:
        self.hello = hello
        self.open = 0
        self.held: list[float] = []  # seconds the server kept each one before closing it

    async def slot(self, port: int, source: str, opened: trio.Semaphore) -> None:
        first = True
        while True:
            sock = trio.socket.socket()
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
            stream = trio.SocketStream(sock)
            if self.hello:
                await stream.send_all(self.hello)
            self.open += 1
            if first:
                opened.release()
                first = False
            started = trio.current_time()
            try:
                while await stream.receive_some(4096):
                    pass
                self.held.append(trio.current_time() - started)
            except trio.BrokenResourceError:
                self.held.append(trio.current_time() - started)
            finally:
                self.open -= 1
                await stream.aclose()


async def phase(
    name: str, url: str, pid: int, context: ssl.SSLContext, seconds: float, idle: Idle | None
) -> float:
    """Run one phase, print its figures; return the honest median round trip (ms)."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    # Fresh ids per phase: the previous phase's are held for their resume secret (30 s).
    trips = await honest_round_trips(url, seconds, ssl_context=context, tag=name)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    extra = ""
    if idle is not None:
        held = statistics.median(idle.held) if idle.held else float("nan")
        extra = f"; {idle.open} idle open at the end, the server held one {held:.1f} s (median)"
    print(
        f"{name}: {summary(trips)}; server CPU {cpu:.2f} s in {wall:.1f} s "
        f"({100 * cpu / wall:.0f}% of a core){extra}; load average {load()}",
        flush=True,
    )
    return 1000 * statistics.median(trips)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshrtc-tls-bench-") as folder:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        certfile, keyfile = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.private_key_pem.write_to_path(str(keyfile))
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(certfile), append=True)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        args = ("--certfile", str(certfile), "--keyfile", str(keyfile))
        print(f"load average {load()}", flush=True)
        async with signal_process(args) as (url, process):
            assert url.startswith("wss://"), url
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            figures = [await phase("none", url, process.pid, context, 5.0, None)]
            for name, hello in (("idle200", b""), ("hello200", client_hello())):
                idle = Idle(hello)
                async with trio.open_nursery() as nursery:
                    opened = trio.Semaphore(IDLE, max_value=IDLE)
                    for _ in range(IDLE):
                        await opened.acquire()
                    for index in range(IDLE):
                        source = SOURCES[index % len(SOURCES)]
                        nursery.start_soon(idle.slot, port, source, opened)
                    with trio.fail_after(10):
                        for _ in range(IDLE):  # every slot opened once
                            await opened.acquire()
                    figures.append(await phase(name, url, process.pid, context, 15.0, idle))
                    nursery.cancel_scope.cancel()
        none, idle200, hello200 = figures
        print(
            f"tls_idle_rtt_median_ms none={none:.1f} idle200={idle200:.1f} hello200={hello200:.1f}"
        )


if __name__ == "__main__":
    trio.run(main)
