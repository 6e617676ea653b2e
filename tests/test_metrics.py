"""``/metrics`` (meshrtc.host.metrics; docs/host.md, "Metrics"): the snapshot, its Prometheus
rendering parsed back with prometheus_client's own parser, the endpoint's operator-only access once
a secret is set, and a live transport with two members whose figures show up on the page.

The unit tests take well under a second; the live one about 3-4 s (two members joining a transport
on loopback, audio only).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from meshrtc.host.metrics import (
    CONTENT_TYPE,
    LatencyHistogram,
    MemberMetrics,
    MetricsSnapshot,
    ProcessFigures,
    SessionMetrics,
    metrics_registry,
    process_figures,
    render,
    snapshot,
)
from meshrtc.rtc.peers import PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.signaling.auth import TokenAuthority
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import OPERATOR_SESSION, SignalingServer
from meshrtc.transport import WebRtcTransport
from tests.peer_helpers import TEST_OPTIONS, Changes, Node, Session, run_transport, tick, tone
from tests.test_signaling_server import http_exchange, serving

log = logging.getLogger(__name__)

SECRET = b"m" * 48


def member(peer_id: str, **changes: object) -> MemberMetrics:
    base = MemberMetrics(
        peer_id=peer_id,
        state="Connected",
        rtt_seconds=0.012,
        loss_ratio=0.05,
        jitter_seconds=0.004,
        jitter_buffer_delay_seconds={"audio": 0.06, "video": 0.0},
        frames_in=500,
        frames_out=480,
        frames_dropped={"stale": 3, "grid": 1, "shed_video": 0},
        link_rebuilds=2,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


SNAPSHOT = MetricsSnapshot(
    sessions=(
        SessionMetrics(
            session_id="room-1",
            state="Active",
            members=2,
            peers=(member("alice"), member("bob", state="Reconnecting", rtt_seconds=None)),
            added_latency=LatencyHistogram.of([0.005, 0.015, 0.05, 0.05, 2.0]),
        ),
    ),
    signaling={"room-1": 3, "lobby": 1},
    worker="w1",
    process=ProcessFigures(cpu_seconds=12.5, rss_bytes=1.5e8),
)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels (parsed by prometheus_client)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_latency_histogram_counts_cumulatively() -> None:
    hist = LatencyHistogram.of([0.005, 0.015, 0.05, 0.05, 2.0])
    by_bound = dict(zip(hist.bounds, hist.cumulative, strict=False))
    assert (by_bound[0.01], by_bound[0.02], by_bound[0.04], by_bound[0.05], by_bound[1.0]) == (
        1,
        2,
        2,
        4,
        4,
    )
    assert hist.count == 5
    assert hist.total == pytest.approx(2.12)
    assert LatencyHistogram.of([]) == LatencyHistogram()


def test_a_snapshot_renders_and_parses_back() -> None:
    text = render(metrics_registry(lambda: [SNAPSHOT])).decode()
    got = samples(text)
    room = {"session": "room-1"}
    alice = {**room, "peer": "alice"}
    bob = {**room, "peer": "bob"}
    assert got[key("meshrtc_session_members", **room)] == 2
    assert got[key("meshrtc_session_state", **room, state="Active")] == 1
    assert got[key("meshrtc_session_state", **room, state="Paused")] == 0
    assert got[key("meshrtc_member_state", **alice, state="Connected")] == 1
    assert got[key("meshrtc_member_state", **bob, state="Reconnecting")] == 1
    assert got[key("meshrtc_member_state", **bob, state="Connected")] == 0
    assert got[key("meshrtc_member_rtt_seconds", **alice)] == pytest.approx(0.012)
    assert key("meshrtc_member_rtt_seconds", **bob) not in got  # no RTT yet: no sample, not 0
    assert got[key("meshrtc_member_loss_ratio", **alice)] == pytest.approx(0.05)
    assert got[key("meshrtc_member_jitter_seconds", **alice)] == pytest.approx(0.004)
    assert got[key("meshrtc_member_jitter_buffer_delay_seconds", **alice, kind="audio")] == 0.06
    assert got[key("meshrtc_member_frames_in_total", **alice)] == 500
    assert got[key("meshrtc_member_frames_out_total", **alice)] == 480
    assert got[key("meshrtc_member_frames_dropped_total", **alice, reason="stale")] == 3
    assert got[key("meshrtc_member_link_rebuilds_total", **alice)] == 2
    # The added latency: a histogram of the window (cumulative buckets, +Inf = count).
    assert got[key("meshrtc_session_added_latency_seconds_bucket", **room, le="0.01")] == 1
    assert got[key("meshrtc_session_added_latency_seconds_bucket", **room, le="0.05")] == 4
    assert got[key("meshrtc_session_added_latency_seconds_bucket", **room, le="+Inf")] == 5
    assert got[key("meshrtc_session_added_latency_seconds_gcount", **room)] == 5
    assert got[key("meshrtc_session_added_latency_seconds_gsum", **room)] == pytest.approx(2.12)
    assert got[key("meshrtc_signaling_members", session="lobby")] == 1
    assert got[key("meshrtc_worker_cpu_seconds_total", worker="w1")] == 12.5
    assert got[key("meshrtc_worker_resident_memory_bytes", worker="w1")] == 1.5e8
    # prometheus_client's ProcessCollector: this process's own figures.
    assert got[key("process_cpu_seconds_total")] > 0
    assert got[key("process_resident_memory_bytes")] > 0
    # Every label value is one of the snapshot's ids or an enum value: nothing else gets in.
    values = {v for (_, labels) in got for (_, v) in labels}
    assert values <= {
        "room-1",
        "lobby",
        "alice",
        "bob",
        "w1",
        "audio",
        "video",
        *(b for b in text.split('le="')[1:] for b in [b.split('"')[0]]),
        *("Initializing", "Active", "Paused", "Closed"),
        *("New", "GatheringIce", "Connecting", "Connected", "Reconnecting", "Failed", "Closed"),
        *("stale", "grid", "shed_video"),
    }


def test_a_snapshot_crosses_a_process_boundary() -> None:
    """What a worker will send the supervisor: JSON over the control channel (or a pickle)."""
    wire = json.dumps(SNAPSHOT.to_json())
    assert MetricsSnapshot.from_json(json.loads(wire)) == SNAPSHOT
    assert pickle.loads(pickle.dumps(SNAPSHOT)) == SNAPSHOT
    bad = SNAPSHOT.to_json()
    bad["sessions"][0]["members"] = True
    with pytest.raises(TypeError):
        MetricsSnapshot.from_json(bad)


def test_process_figures_come_from_the_process_collector() -> None:
    figures = process_figures()
    assert figures is not None
    assert figures.cpu_seconds > 0
    assert figures.rss_bytes > 10_000_000  # an interpreter with numpy loaded


def _metrics() -> tuple[bytes, str]:
    return render(metrics_registry(lambda: [SNAPSHOT])), CONTENT_TYPE


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def test_the_endpoint_serves_the_text_format_without_a_secret() -> None:
    async with serving(metrics=_metrics) as server:
        reply = await http_exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert _status(reply) == 200
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert key("meshrtc_session_members", session="room-1") in samples(body.decode())
        reply = await http_exchange(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(reply) == 200
        assert reply.endswith(b"\r\n\r\n")
        reply = await http_exchange(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(reply) == 405
    async with serving() as server:  # no metrics source: nothing there
        reply = await http_exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(reply) == 404


async def test_with_a_secret_only_an_operator_token_reads_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "meshrtc.signaling.server")
    authority = TokenAuthority(SECRET)
    operator = authority.issue("prometheus", OPERATOR_SESSION)
    member_token = authority.issue("alice", "room-1")

    def get(headers: str = "", query: str = "") -> bytes:
        return f"GET /metrics{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()

    async with serving(metrics=_metrics, auth=authority) as server:
        port = server.port
        assert (
            _status(await http_exchange(port, get(f"Authorization: Bearer {operator}\r\n"))) == 200
        )
        assert _status(await http_exchange(port, get(query=f"?token={operator}"))) == 200
        refused = await http_exchange(port, get())
        assert _status(refused) == 401
        assert b"missing token" in refused
        assert b"meshrtc_" not in refused
        forbidden = await http_exchange(port, get(f"Authorization: Bearer {member_token}\r\n"))
        assert _status(forbidden) == 403
        assert b"not an operator token" in forbidden
        assert b"meshrtc_" not in forbidden
        assert "a member token ('alice')" in caplog.text
        # Bad tokens count toward the address's lockout like bad WebSocket tokens do.
        for _ in range(4):
            assert _status(await http_exchange(port, get("Authorization: Bearer nope\r\n"))) == 401
        locked = await http_exchange(port, get(f"Authorization: Bearer {operator}\r\n"))
        assert _status(locked) == 429


# --- Live: a transport and two members ----------------------------------------------------------


async def _speak(node: Node, freq: float) -> None:
    for remote in node.manager.list_connected():
        await node.peer(remote).send_audio(tone(20.0, freq))


@asynccontextmanager
async def served_session() -> AsyncIterator[tuple[Session, SignalingServer, WebRtcTransport]]:
    """``meshrtc serve`` in process: a secret, /metrics over the transport, alice and bob."""
    authority = TokenAuthority(SECRET)
    hosted: list[WebRtcTransport] = []
    registry = metrics_registry(lambda: [snapshot(t, hub=signaling.hub) for t in hosted])
    signaling = SignalingServer(
        port=0, auth=authority, metrics=lambda: (render(registry), CONTENT_TYPE)
    )
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        server: SignalingServer = await nursery.start(signaling.run)
        session = Session(nursery, stun, server, Changes())
        nursery.start_soon(tick, session.changes)
        config = attrs.evolve(session.config("meshrtc-server"), ice_host_addresses=("127.0.0.1",))
        transport = WebRtcTransport(config, hub=server)
        await nursery.start(run_transport, transport)
        hosted.append(transport)
        for peer_id in ("alice", "bob"):
            token = authority.issue(peer_id, "default")
            client = SignalingClient(server.url, peer_id, capabilities=("audio",), token=token)
            await nursery.start(client.run)
            node_config = attrs.evolve(session.config(peer_id), ice_host_addresses=("127.0.0.1",))
            manager = PeerManager(node_config, client, options=TEST_OPTIONS)
            await nursery.start(manager.run)
            node = session.nodes[peer_id] = Node(peer_id, client, manager, session.changes)
            nursery.start_soon(node.follow, nursery)
        everyone = {"meshrtc-server", "alice", "bob"}
        await session.until(
            lambda: all(
                set(n.manager.list_connected()) == everyone - {pid}
                for pid, n in session.nodes.items()
            ),
            30,
        )
        for node, freq in ((session.nodes["alice"], 440.0), (session.nodes["bob"], 660.0)):
            nursery.start_soon(partial(_speak, node, freq))
        try:
            yield session, server, transport
        finally:
            nursery.cancel_scope.cancel()


async def test_metrics_of_a_live_transport_with_two_members() -> None:
    operator = TokenAuthority(SECRET).issue("prometheus", OPERATOR_SESSION)
    async with served_session() as (session, server, transport):

        def mixed() -> bool:
            snap = snapshot(transport)
            return bool(snap.sessions) and all(
                m.frames_in > 0 and m.frames_out > 0 for m in snap.sessions[0].peers
            )

        await session.until(mixed, 20)
        with trio.fail_after(10):
            started = trio.current_time()
            reply = await http_exchange(
                server.port,
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\r\n".encode(),
            )
            elapsed = trio.current_time() - started
        assert _status(reply) == 200, reply[:200]
        got = samples(reply.partition(b"\r\n\r\n")[2].decode())
        log.warning(
            "GET /metrics round trip %.1f ms, %d samples; load %s",
            1000 * elapsed,
            len(got),
            os.getloadavg(),
        )
        room = {"session": "default"}
        assert got[key("meshrtc_session_members", **room)] == 2
        assert got[key("meshrtc_session_state", **room, state="Active")] == 1
        assert got[key("meshrtc_signaling_members", **room)] == 3  # the transport is one
        for peer in ("alice", "bob"):
            labels = {**room, "peer": peer}
            assert got[key("meshrtc_member_state", **labels, state="Connected")] == 1
            assert got[key("meshrtc_member_frames_in_total", **labels)] > 0
            assert got[key("meshrtc_member_frames_out_total", **labels)] > 0
            assert (
                got[key("meshrtc_member_jitter_buffer_delay_seconds", **labels, kind="audio")] > 0
            )
            assert got[key("meshrtc_member_loss_ratio", **labels)] >= 0
        # Each member's mix carries the other's audio: the router timed those mixes.
        assert got[key("meshrtc_session_added_latency_seconds_bucket", **room, le="+Inf")] > 0
        # Without a token the same page is refused.
        refused = await http_exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(refused) == 401


@pytest.mark.slow
async def test_meshrtc_serve_serves_metrics() -> None:
    """The real command wires it (no secret: loopback only, no token needed). About 2 s."""
    from tests.browser_helpers import meshrtc_serve

    with trio.fail_after(30):
        async with meshrtc_serve() as serve:
            port = int(serve.url.rstrip("/").rsplit(":", 1)[1])
            reply = await http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status(reply) == 200
            got = samples(reply.partition(b"\r\n\r\n")[2].decode())
            assert got[key("meshrtc_session_members", session="default")] == 0
            assert got[key("meshrtc_signaling_members", session="default")] == 1  # the transport
            assert got[key("process_resident_memory_bytes")] > 0
    assert serve.process.returncode == 0
