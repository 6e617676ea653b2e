"""bench/soak.py's bookkeeping and the generator's periodic counters (no network, no child).

The soak itself is a benchmark (docs/benchmarks.md, Soak); what is tested here is that it counts
right: a p95 from its fixed histogram, mix frames and rebuilds carried across a rebuilt link and a
replaced PeerConnection, new added-latency samples told from ones already seen, and the parent's
end of the child protocol handing ``counters`` lines to the soak instead of warning about them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import trio

from meshrtc.demo import _Child, run_demo
from meshrtc.loadgen.resources import rss_kib

REPO = Path(__file__).resolve().parent.parent


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshrtc_bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SOAK = _load_soak()


class FakePeer:
    """What the soak reads of a transport-side PeerConnection."""

    def __init__(self, generation: int = 1, sent: int = 0, silent: int = 0, late: int = 0) -> None:
        self.generation = generation
        self.audio_sent = (sent, silent, late, late)


def test_the_histogram_p95_is_numpys_within_a_bin() -> None:
    rng = np.random.default_rng(7)
    samples = rng.gamma(4.0, 10.0, 20_000)  # ms, a long tail as added latency has
    hist = SOAK.Histogram()
    for part in np.array_split(samples, 17):
        hist.add(part)
    for q in (50, 95, 99):
        assert abs(hist.percentile(q) - np.percentile(samples, q)) <= SOAK.BIN_MS
    hist.add(np.array([1e6]))  # beyond the last bin: counted there, not lost
    assert hist.total == samples.size + 1
    hist.clear()
    assert np.isnan(hist.percentile(95))


def test_a_member_keeps_its_mix_frames_and_rebuilds_across_links_and_replacements() -> None:
    member = SOAK.Member()
    first = FakePeer(sent=100, silent=10, late=3)
    member.sample(first)  # the traffic's start: 90 mix frames already sent are the baseline
    first.audio_sent = (150, 10, 4, 4 + 7)  # 7 evicted from a full queue
    member.sample(first)
    assert (member.delivered, member.late, member.evicted, member.rebuilds) == (50, 1, 7, 0)
    first.generation, first.audio_sent = 2, (20, 5, 2, 2)  # a rebuilt link: counts from 0
    member.sample(first)
    assert (member.delivered, member.late, member.rebuilds) == (50 + 15, 1 + 2, 1)
    second = FakePeer(sent=30, silent=0, late=1)  # the member's PeerConnection replaced
    member.sample(second)
    assert (member.delivered, member.late, member.rebuilds) == (50 + 15 + 30, 4, 2)
    member.sample(None)  # gone for a tick: nothing changes
    assert (member.delivered, member.late, member.rebuilds) == (95, 4, 2)


def test_only_new_added_latency_samples_are_counted() -> None:
    soak = SOAK.Soak(minutes=1, window_minutes=1)
    soak.t0 = 0.0
    old = [0.010 + i / 1e6 for i in range(5)]
    soak._last_sample = old[-1]
    new = [0.020 + i / 1e6 for i in range(3)]
    soak._take((*old, *new))
    assert soak.window_hist.total == 3
    newer = [0.030]
    soak._take((*old[2:], *new, *newer))  # the router's deque dropped its oldest
    assert soak.window_hist.total == 4
    assert soak.overflows == 0
    # Equal values that are not the sample seen last are new (identity, not value).
    soak._take((float("0.03"), float("0.03")))
    assert (soak.window_hist.total, soak.overflows) == (6, 1)


def test_windows_close_on_the_tick_nearest_their_end_and_a_sliver_is_dropped() -> None:
    soak = SOAK.Soak(minutes=3, window_minutes=1)
    soak.t0 = 0.0
    soak._take(tuple(0.010 + i / 1e6 for i in range(100)))
    soak._roll(59.4)
    assert soak.windows == []
    soak._roll(59.6)  # within half a tick of the minute: the minute's line saw this window
    assert len(soak.windows) == 1
    assert soak.windows[0][0] == pytest.approx(10.0, abs=SOAK.BIN_MS)
    soak._take((0.050,))
    soak._roll(119.7)
    soak._take((0.070,))
    soak.finish(123.0)  # 3 s of window 2: less than a tenth of it
    assert [p for p, _ in soak.windows] == [
        pytest.approx(10.0, abs=SOAK.BIN_MS),
        pytest.approx(50.0, abs=SOAK.BIN_MS),
    ]
    soak._take((0.090,))
    soak.finish(150.0)  # half a window: counted, with its length
    assert soak.windows[2] == (pytest.approx(90.0, abs=SOAK.BIN_MS), pytest.approx(30.0))


def test_members_back_reads_the_first_and_the_latest_report() -> None:
    soak = SOAK.Soak(minutes=1, window_minutes=1)

    def report(t: float, received: int, lost: int) -> dict[str, Any]:
        peers = {"peer1": {"audio_received": received, "audio_lost": lost}}
        return {"event": "counters", "t": t, "cpu_s": 0.0, "rss_kib": 2048, "peers": peers}

    assert soak.members_back() == (None, 0)
    soak.on_report(report(0.0, 40, 0))
    soak.on_report(report(5.0, 200, 1))
    soak.on_report(report(10.0, 40 + 495, 3))
    assert soak.members_back() == (pytest.approx(0.99), 3)
    assert len(soak.reports) == 2
    assert soak.gen_rss_mb == 2.0


async def test_the_parent_hands_counters_lines_to_on_report() -> None:
    got: list[dict[str, Any]] = []
    child = _Child(None, got.append)  # type: ignore[arg-type]  # expect() never reads it
    child._send.send_nowait({"event": "counters", "t": 1.0})
    child._send.send_nowait({"event": "figures", "peers": {}})
    with trio.fail_after(5):
        assert (await child.expect("figures"))["event"] == "figures"
    assert got == [{"event": "counters", "t": 1.0}]


def test_rss_of_this_process_and_of_none() -> None:
    rss = rss_kib()
    assert rss is not None
    assert rss > 1024  # an interpreter with numpy and aiortc loaded: well over 1 MiB
    assert rss_kib(os.getpid()) == pytest.approx(rss, rel=0.5)
    assert rss_kib(2**31 - 1) is None


@pytest.mark.slow
async def test_the_star_child_reports_its_members_counters_during_the_traffic() -> None:
    """``report_every``: a line at the traffic's start and one per period, each member's counts
    never going back, and the transport side readable per member (``audio_sent``) meanwhile."""
    reports: list[dict[str, Any]] = []
    sent: list[tuple[int, int, int, int]] = []

    def tick(transport: Any, _running: Any, _synthetic: Any, _connect_ms: float) -> None:
        peer = transport.peers.get_peer("peer1")
        if peer is not None:
            sent.append(peer.audio_sent)

    with trio.fail_after(60):
        await run_demo(
            peers=2,
            seconds=2.0,
            split=True,
            video=None,
            report_every=1.0,
            on_report=reports.append,
            on_tick=tick,
        )
    # One at the start and one a second after it, up to the traffic's 2 s (a busy machine may
    # deliver one late, never one early or one more).
    assert len(reports) == 3
    assert all(r["t"] >= n for n, r in enumerate(reports))
    assert all(r["rss_kib"] > 1024 and r["cpu_s"] >= 0 for r in reports)
    for pid in ("peer1", "peer2"):
        got = [r["peers"][pid]["audio_received"] for r in reports]
        assert got == sorted(got)
        assert got[-1] - got[0] > 0
        assert reports[-1]["peers"][pid]["audio_sent"] > 0
    assert sent
    assert sent[-1][0] > sent[0][0]
    assert all(s[1] <= s[0] and s[2] <= s[3] for s in sent)
