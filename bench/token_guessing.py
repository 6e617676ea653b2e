"""How fast can a local attacker guess a signaling server's token? (issue 13, docs/security.md)

Run: ``.venv/bin/python bench/token_guessing.py`` (about 10 s). ``--src DIR`` runs the server from
another source tree (an export of the commit before issue 13, whose ``signal --token`` compared a
shared string in ``peer.announce``) for the "before" figure.

The server runs in its own process (``python -m meshrtc signal --port 0``). Eight attacker tasks guess
for ``--seconds``: before, each opens a WebSocket and sends wrong-token announces one after the other
(a reply of -32007 is one evaluated guess), reconnecting every 50; after, each guess is one upgrade
request with ``?token=guess`` (401 is an evaluated guess, 429 a refusal at accept by the lockout).
The "after" run is repeated from 16 loopback source addresses (127.0.0.10-25), the way round a
per-address lockout. Prints evaluated guesses per second and the load average; the last line is
``guesses_per_s=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from support.signal_process import signal_process

WORKERS = 8


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def guess_in_announce(url: str, deadline: float, counts: Counter[str]) -> None:
    """The old server: wrong tokens in ``peer.announce``, 50 per connection."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    n = 0
    while trio.current_time() < deadline:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, parts.netloc, parts.path)
                for _ in range(50):
                    if trio.current_time() >= deadline:
                        break
                    n += 1
                    params = {"peer_id": f"x{n}", "capabilities": ["audio"], "token": f"g{n}"}
                    await ws.send_message(
                        json.dumps(
                            {"jsonrpc": "2.0", "id": n, "method": "peer.announce", "params": params}
                        )
                    )
                    reply = json.loads(await ws.get_message())
                    code = reply.get("error", {}).get("code")
                    counts["evaluated" if code == -32007 else f"other {code}"] += 1
                await ws.aclose()
                nursery.cancel_scope.cancel()
        except (ConnectionClosed, HandshakeError, OSError):
            counts["dropped"] += 1
        finally:
            await stream.aclose()


async def guess_in_url(url: str, deadline: float, counts: Counter[str], source: str) -> None:
    """The new server: one upgrade request per guess, ``?token=guess``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    n = 0
    while trio.current_time() < deadline:
        n += 1
        try:
            stream = await trio.open_tcp_stream(parts.hostname, parts.port, local_address=source)
        except OSError:
            counts["connect failed"] += 1
            continue
        async with stream:
            try:
                await stream.send_all(
                    f"GET /ws?token=guess{n} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
                )
                head = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                counts["reset"] += 1
                continue
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.1 ") else b"?"
        counts["evaluated" if status == b"401" else f"HTTP {status.decode()}"] += 1


async def run(src: str | None, seconds: float, sources: list[str]) -> float:
    with tempfile.NamedTemporaryFile("wb", suffix=".secret") as secret:
        secret.write(os.urandom(48).hex().encode())
        secret.flush()
        old = src is not None
        args = ["--token", "sesame"] if old else ["--auth-secret-file", secret.name]
        async with signal_process(args, src=src) as (url, _process):
            counts: Counter[str] = Counter()
            started = time.monotonic()
            deadline = trio.current_time() + seconds
            async with trio.open_nursery() as nursery:
                for i in range(WORKERS * max(1, len(sources) // WORKERS)):
                    if old:
                        nursery.start_soon(guess_in_announce, url, deadline, counts)
                    else:
                        source = sources[i % len(sources)]
                        nursery.start_soon(guess_in_url, url, deadline, counts, source)
            elapsed = time.monotonic() - started
    rate = counts["evaluated"] / elapsed
    where = f"{len(sources)} source address(es)" if not old else "one address"
    print(
        f"server from {src or 'this tree'}, {where}: {counts['evaluated']} guesses evaluated in"
        f" {elapsed:.1f} s = {rate:.1f}/s; all outcomes {dict(counts)}; load average {load()}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="source tree (its src/) of the old server, for 'before'")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.src:
        rate = trio.run(run, args.src, args.seconds, ["127.0.0.1"])
    else:
        rate = trio.run(run, None, args.seconds, ["127.0.0.1"])
        many = [f"127.0.0.{i}" for i in range(10, 26)]
        trio.run(run, None, args.seconds, many)
    print(f"guesses_per_s={rate:.1f}")


if __name__ == "__main__":
    main()
