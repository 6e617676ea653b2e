"""Signaling relay benchmark: N clients in S sessions relay offers through one server on loopback.

Run: ``.venv/bin/python bench/signaling.py`` (about 10 s of load; ``--quick`` for a smoke run).

The server runs in its own process (``python -m meshrtc signal --port 0``), as it would in
production, so the clients' CPU does not slow it down in the same event loop; ``--in-process`` runs
it inside the benchmark's trio loop instead. Every client is a :class:`SignalingClient`; all of them
announce (default: 100 clients, 10 sessions of 10, the most a session holds), then each loops for the
duration: pick another peer of its session at random, send ``peer.offer`` with a realistic ~1 kB SDP
carrying a sequence number, wait for the ``forwarded`` result, repeat (``--pace R`` sends R offers
per second per client instead, to see the latency below saturation). A task per client reads its
notifications and records when each offer arrived. Before the load, 200 offers between one pair of
clients give the unloaded relay latency.

Relay latency is the time from just before a client sends ``peer.offer`` to the target client
having the ``peer.offer`` notification in hand (both clocks are this process's monotonic clock).
Throughput counts offers relayed per second and WebSocket messages per second (each relay is three:
the request, its response, and the forwarded notification). Offers that fail (rate limit, timeout)
are counted and reported; the server runs with its default limits.

Last line: ``relay_p99_ms=<99th percentile relay latency in ms>``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshrtc.signaling.client import SignalingClient, SignalingConnectionError
from meshrtc.signaling.protocol import Offer, SignalingError
from meshrtc.signaling.server import SignalingServer
from support.signal_process import signal_process

SDP_TEMPLATE = (
    "v=0\r\n"
    "o=- {seq} 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1 2\r\n"
    "a=msid-semantic:WMS *\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:abcd\r\n"
    "a=ice-pwd:0123456789abcdef0123456789\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"
    "a=setup:actpass\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 98\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:1\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:98 VP9/90000\r\n"
    "a=rtcp-fb:98 nack\r\n"
    "a=rtcp-fb:98 nack pli\r\n"
    "a=rtcp-fb:98 goog-remb\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:2\r\n"
    "a=sctp-port:5000\r\n"
)


class Stats:
    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.counting = False
        self.server_pid: int | None = None
        self.arrived = trio.Event()


def process_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of another process (Linux /proc), to see how busy the server was."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def server_url(in_process: bool, stats: Stats) -> AsyncIterator[str]:
    if in_process:
        async with trio.open_nursery() as nursery:
            # Every client is on 127.0.0.1: lift the per-address connection cap (64).
            server: SignalingServer = await nursery.start(
                SignalingServer(port=0, max_connections_per_address=10_000).run
            )
            yield server.url
            nursery.cancel_scope.cancel()
        return
    # Every client is on 127.0.0.1: lift the per-address connection cap.
    async with signal_process(["--max-connections-per-address", "10000"]) as (url, process):
        stats.server_pid = process.pid
        yield url


async def receive_offers(client: SignalingClient, stats: Stats) -> None:
    async for event in client.notifications:
        if isinstance(event, Offer):
            seq = int(event.sdp.split("\r\n", 2)[1].split(" ")[1])
            sent = stats.sent_at.pop(seq, None)
            if sent is not None and stats.counting:
                stats.latencies.append(time.monotonic() - sent)
                stats.arrived.set()


async def offer_once(client: SignalingClient, to: str, stats: Stats, seqs: list[int]) -> None:
    seqs[0] += 1
    seq = seqs[0]
    stats.arrived = trio.Event()
    stats.sent_at[seq] = time.monotonic()
    await client.offer(to, SDP_TEMPLATE.format(seq=seq))
    with trio.fail_after(5):
        await stats.arrived.wait()


async def offer_loop(
    client: SignalingClient,
    session: list[str],
    stats: Stats,
    seqs: list[int],
    rng: random.Random,
    pace: float,
) -> None:
    others = [p for p in session if p != client.peer_id]
    if pace:
        await trio.sleep(rng.random() / pace)  # spread the clients over one period
    next_at = trio.current_time()
    while True:
        if pace:
            next_at += 1 / pace
            await trio.sleep_until(next_at)
        seqs[0] += 1
        seq = seqs[0]
        stats.sent_at[seq] = time.monotonic()
        try:
            await client.offer(rng.choice(others), SDP_TEMPLATE.format(seq=seq))
        except (SignalingError, SignalingConnectionError) as err:
            stats.sent_at.pop(seq, None)
            if not stats.counting:
                continue
            key = f"error {err.code}" if isinstance(err, SignalingError) else type(err).__name__
            stats.failures[key] = stats.failures.get(key, 0) + 1
            await trio.sleep(0.05)


async def bench(args: argparse.Namespace) -> float:
    stats = Stats()
    rng = random.Random(20251107)
    seqs = [0]
    per_session = -(-args.clients // args.sessions)
    async with server_url(args.in_process, stats) as url, trio.open_nursery() as nursery:
        clients: list[SignalingClient] = []
        sessions: dict[str, list[str]] = {}
        t0 = time.monotonic()
        for i in range(args.clients):
            session = f"s{i // per_session}"
            peer_id = f"c{i:03d}"
            client = SignalingClient(url, peer_id, session_id=session, request_timeout=30)
            await nursery.start(client.run)
            clients.append(client)
            sessions.setdefault(session, []).append(peer_id)
            nursery.start_soon(receive_offers, client, stats)
        connect_time = time.monotonic() - t0
        print(
            f"{args.clients} clients announced in {len(sessions)} sessions "
            f"in {connect_time:.2f} s ({url})"
        )
        # Unloaded: one sender, one receiver, one offer at a time.
        first = clients[0]
        stats.counting = True
        for _ in range(200):
            await offer_once(first, sessions[first.session_id][1], stats, seqs)
        stats.counting = False
        idle = sorted(x * 1000 for x in stats.latencies)
        stats.latencies.clear()
        print(f"unloaded relay:   p50 {statistics.median(idle):.2f} ms over {len(idle)} offers")

        load = trio.CancelScope()

        async def run_load() -> None:
            with load:
                async with trio.open_nursery() as senders:
                    for client in clients:
                        senders.start_soon(
                            offer_loop,
                            client,
                            sessions[client.session_id],
                            stats,
                            seqs,
                            rng,
                            args.pace,
                        )

        nursery.start_soon(run_load)
        await trio.sleep(args.warmup)
        stats.counting = True
        server_cpu_start = process_cpu_seconds(stats.server_pid)
        t_start, cpu_start = time.monotonic(), time.process_time()
        await trio.sleep(args.duration)
        elapsed, cpu = time.monotonic() - t_start, time.process_time() - cpu_start
        server_cpu_end = process_cpu_seconds(stats.server_pid)
        stats.counting = False
        relayed = len(stats.latencies)
        load.cancel()
        for client in clients:
            with trio.move_on_after(2):
                await client.aclose()
        nursery.cancel_scope.cancel()
    latencies_ms = sorted(x * 1000 for x in stats.latencies)
    if len(latencies_ms) < 2:
        raise SystemExit("no offers were relayed")
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    p50, p99 = cuts[49], cuts[98]
    print(f"offers relayed:   {relayed} in {elapsed:.1f} s = {relayed / elapsed:.0f} offers/s")
    print(f"messages:         {3 * relayed / elapsed:.0f} WebSocket messages/s (request, response,")
    print("                  forwarded notification per relay)")
    print(f"relay latency:    p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies_ms[-1]:.2f} ms")
    print(f"client-side CPU:  {cpu / elapsed:.2f} s per s (this process)")
    if server_cpu_start is not None and server_cpu_end is not None:
        print(f"server CPU:       {(server_cpu_end - server_cpu_start) / elapsed:.2f} s per s")
    print(f"failed offers:    {stats.failures or 'none'}")
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--in-process", action="store_true", help="run the server in this loop")
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="offers per second per client (default 0: each client sends the next offer as soon "
        "as the previous one is acknowledged, a closed loop that saturates the machine)",
    )
    parser.add_argument("--quick", action="store_true", help="20 clients, 2 s")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.sessions, args.duration, args.warmup = 20, 2, 2.0, 0.5
    if not 1 <= -(-args.clients // args.sessions) <= 10:
        parser.error("--clients/--sessions must put 1 to 10 clients in each session")
    p99 = trio.run(bench, args)
    print(f"relay_p99_ms={p99:.3f}")


if __name__ == "__main__":
    main()
