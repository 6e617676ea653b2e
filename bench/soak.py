"""Ten members for a long while: memory, link rebuilds, audio delivery and latency drift, per minute.

Run: ``.venv/bin/python bench/soak.py [--minutes 3] [--window-minutes 5]`` (the issue's soak is
``--minutes 30``). One ``run_demo(split=True)`` as ``bench/members.py`` does it: this process runs
the signaling server, the STUN responder and the transport (default manifest); a child runs nine
star members (:mod:`meshrtc.loadgen`) sending audio and 320x240 video. Every minute of traffic one
line (docs/benchmarks.md, Soak):

* ``tr rss`` / ``gen rss``: resident memory (MiB) of this process and of the generator's.
* ``tr cpu`` / ``gen cpu``: their CPU over that minute, % of one core.
* ``rebuilds``: the transport's links rebuilt so far, all members (each PeerConnection's
  ``generation`` beyond its first link, plus a member's PeerConnection replaced by a new one).
* ``sent min/mean``: per member, the 20 ms audio slots the transport sent it a mix in (its
  outgoing track's frames that were not silence, ``PeerConnection.audio_sent``) over the slots
  elapsed since the traffic began, the lowest member's and the mean (%). ``late``: mix frames
  the tracks dropped, all members, because they came after their slot had gone out (as silence);
  ``evicted``: mix frames they dropped from a full queue (queued for later slots than the track
  was sending).
* ``back min``: per member, audio packets it got back over the slots elapsed (the generator's
  count, silence included: the wire, not the mix); ``lost``: packets missing on the way back.
* ``added p95``: the router's added latency (``statistics().added_latency``, as members.py reads
  it) over the current ``--window-minutes`` window so far (ms); ``win``: that window's number.

Sampling does no per-packet work: once a second this process reads counters the transport keeps
anyway (and the router's recent added-latency samples, new ones told apart by identity, into a
fixed histogram), and the generator reports its members' counters every 10 s. Memory for the
figures is allocated before the traffic, so the soak itself does not grow the RSS it measures.

At the end: RSS growth after minute 2, rebuilds, the lowest member's delivered fraction, first vs
last window p95, each against the issue's goal (met / gap). Last line
``soak_rss_growth_mb=<float>`` (nan when the run is shorter than 3 minutes).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from meshrtc.demo import DemoResult, SyntheticPeer, run_demo
from meshrtc.loadgen.resources import rss_kib
from meshrtc.session.manager import RunningSession
from meshrtc.transport import WebRtcTransport

MEMBERS = 10
VIDEO = (320, 240)
SLOT = 0.020
#: How often this process samples the transport (s); the router keeps its last 5000 added-latency
#: samples, about 11 s of them at ten members, so a second leaves a wide margin.
TICK = 1.0
#: The generator's report period (s of traffic).
REPORT_EVERY = 10.0
#: Bound on the run beyond its traffic (child start, clip encoding, connect, teardowns).
RUN_MARGIN = 120.0
#: Added latency histogram: 0.1 ms bins up to 5 s (the last bin takes everything above).
BIN_MS = 0.1
BINS = 50_000
#: Minutes of warm-up before RSS growth is counted (the issue's "after the first 2 minutes").
WARMUP_MINUTES = 2
GOAL_RSS_MB = 5.0
GOAL_DELIVERED = 0.995
GOAL_WINDOW_DRIFT = 0.10


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


class Histogram:
    """Added-latency samples (ms) counted in fixed bins: a p95 in constant memory."""

    def __init__(self) -> None:
        self.counts: npt.NDArray[np.int64] = np.empty(BINS, np.int64)
        self.clear()

    def clear(self) -> None:
        self.counts.fill(0)  # fill (not np.zeros) touches every page now, before the traffic
        self.total = 0

    def add(self, samples_ms: npt.NDArray[np.float64]) -> None:
        if samples_ms.size:
            bins = np.clip((samples_ms / BIN_MS).astype(np.int64), 0, BINS - 1)
            self.counts += np.bincount(bins, minlength=BINS)
            self.total += int(samples_ms.size)

    def percentile(self, q: float) -> float:
        if not self.total:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.total))
        return (index + 0.5) * BIN_MS


class Member:
    """The transport's view of one member over the soak: its PeerConnection may be replaced and
    its links rebuilt, so the counters are carried across both."""

    def __init__(self) -> None:
        self.peer: object | None = None
        #: Rebuilds of PeerConnections this member had before the current one (and the swaps).
        self.rebuilds_before = 0
        self.generation = 1
        #: Mix frames sent on links before the current one, and the current link's at the last tick.
        self.sent_before = 0
        self.sent_now = 0
        self.baseline: int | None = None
        #: The same for frames the track dropped because their slot had gone out (late), and for
        #: frames it evicted from a full queue.
        self.late_before = 0
        self.late_now = 0
        self.late_baseline: int | None = None
        self.evicted_before = 0
        self.evicted_now = 0
        self.evicted_baseline: int | None = None

    def sample(self, peer: Any) -> None:
        if peer is None:
            return
        replaced = self.peer is not None and peer is not self.peer
        if replaced:
            self.rebuilds_before += self.generation  # its rebuilds, and the replacement itself
        if replaced or peer.generation != self.generation:  # a new link: its track starts at 0
            self.sent_before += self.sent_now
            self.late_before += self.late_now
            self.evicted_before += self.evicted_now
            self.sent_now = self.late_now = self.evicted_now = 0
        self.peer = peer
        self.generation = peer.generation
        sent, silent, late, dropped = peer.audio_sent
        self.sent_now, self.late_now, self.evicted_now = sent - silent, late, dropped - late
        if self.baseline is None:
            self.baseline = self.sent_before + self.sent_now
            self.late_baseline = self.late_before + self.late_now
            self.evicted_baseline = self.evicted_before + self.evicted_now

    @property
    def rebuilds(self) -> int:
        return self.rebuilds_before + self.generation - 1

    @property
    def delivered(self) -> int:
        return self.sent_before + self.sent_now - (self.baseline or 0)

    @property
    def late(self) -> int:
        return self.late_before + self.late_now - (self.late_baseline or 0)

    @property
    def evicted(self) -> int:
        return self.evicted_before + self.evicted_now - (self.evicted_baseline or 0)


class Soak:
    """``run_demo``'s ``on_tick`` and ``on_report``: one line per minute, totals at the end."""

    def __init__(self, minutes: float, window_minutes: float) -> None:
        self.minutes = minutes
        self.window = 60.0 * window_minutes
        self.members: dict[str, Member] = {}
        self.window_hist = Histogram()
        self.window_index = 0
        #: p95 (ms) of each closed window, and its length (s).
        self.windows: list[tuple[float, float]] = []
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.cpu_last = 0.0
        self.t_last = 0.0
        self.minute = 0
        self._last_sample: object | None = None
        #: Ticks that found none of the previous tick's samples (more came than the router keeps).
        self.overflows = 0
        self.rss_mb: list[float] = []
        self.gen_rss_mb: float | None = None
        self.reports: list[dict[str, Any]] = []
        self.gen_cpu_last = (0.0, 0.0)
        self.gen_cpu_pct: float | None = None

    # --- the child's counters ---------------------------------------------------------------

    def on_report(self, message: dict[str, Any]) -> None:
        # Keep the first (the traffic's start, t ~ 0) and the latest: nothing grows per report.
        if len(self.reports) < 2:
            self.reports.append(message)
        else:
            self.reports[1] = message
        rss = message.get("rss_kib")
        self.gen_rss_mb = None if rss is None else rss / 1024.0

    def members_back(self) -> tuple[float | None, int]:
        """The lowest member's packets got back over the slots elapsed, and packets lost."""
        if len(self.reports) < 2:
            return None, 0
        first, last = self.reports[0], self.reports[-1]
        slots = (float(last["t"]) - float(first["t"])) / SLOT
        if slots <= 0:
            return None, 0
        fractions, lost = [], 0
        for pid, now in last["peers"].items():
            then = first["peers"].get(pid, now)
            fractions.append((now["audio_received"] - then["audio_received"]) / slots)
            lost += now["audio_lost"] - then["audio_lost"]
        return (min(fractions) if fractions else None), lost

    # --- the transport, once a second --------------------------------------------------------

    def on_tick(
        self,
        transport: WebRtcTransport,
        running: RunningSession,
        synthetic: list[SyntheticPeer],
        _connect_ms: float,
    ) -> None:
        now = time.monotonic()
        manager = transport.peers
        for s in synthetic:
            member = self.members.setdefault(s.figures.peer_id, Member())
            member.sample(None if manager is None else manager.get_peer(s.figures.peer_id))
        samples = running.router.statistics().added_latency
        if self.t0 is None:  # the traffic's first instant: everything before is connect/idle
            self.t0 = self.t_last = now
            self.cpu0 = self.cpu_last = time.process_time()
            self._last_sample = samples[-1] if samples else None
            return
        elapsed = now - self.t0
        if elapsed > 60.0 * self.minutes + TICK / 2:
            return  # after the traffic (its tail, run_demo's last call)
        self._take(samples)
        # A line is due on the tick nearest each minute; it shows the window that minute ends in.
        if elapsed >= 60.0 * (self.minute + 1) - TICK / 2:
            self.minute += 1
            self._line(now)
        self._roll(elapsed)

    def _take(self, samples: tuple[float, ...]) -> None:
        start = 0
        last = self._last_sample
        if last is not None:
            for i in range(len(samples) - 1, -1, -1):
                if samples[i] is last:
                    start = i + 1
                    break
            else:
                self.overflows += 1
        if samples:
            self._last_sample = samples[-1]
        self.window_hist.add(1000.0 * np.asarray(samples[start:], dtype=np.float64))

    def _roll(self, elapsed: float) -> None:
        """Close the window on the tick nearest its end (the same rule as the minute lines)."""
        index = int((elapsed + TICK / 2) // self.window)
        if index != self.window_index:
            self._close_window()
            self.window_index = index

    def _close_window(self, length: float | None = None) -> None:
        self.windows.append((self.window_hist.percentile(95), length or self.window))
        self.window_hist.clear()

    def _line(self, now: float) -> None:
        rss = rss_kib()
        tr_rss = None if rss is None else rss / 1024.0
        if tr_rss is not None:
            self.rss_mb.append(tr_rss)
        cpu = time.process_time()
        tr_cpu = 100.0 * (cpu - self.cpu_last) / max(now - self.t_last, 1e-9)
        self.cpu_last, self.t_last = cpu, now
        gen_cpu = None
        if self.reports:
            latest = self.reports[-1]
            t, c = float(latest["t"]), float(latest["cpu_s"])
            if t > self.gen_cpu_last[0]:
                gen_cpu = 100.0 * (c - self.gen_cpu_last[1]) / (t - self.gen_cpu_last[0])
                self.gen_cpu_last = (t, c)
        assert self.t0 is not None
        slots = (now - self.t0) / SLOT
        fractions = [m.delivered / slots for m in self.members.values()]
        back, lost = self.members_back()
        print(
            f"{self.minute:>4} {_f(tr_rss):>7} {_f(self.gen_rss_mb):>7} {_f(tr_cpu):>6} "
            f"{_f(gen_cpu):>7} {self.rebuilds:>8} "
            f"{_f(100 * min(fractions), '.2f'):>7}/{_f(100 * float(np.mean(fractions)), '.2f'):<6} "
            f"{_f(None if back is None else 100 * back, '.2f'):>8} {lost:>5} "
            f"{self.late:>6} {self.evicted:>7} "
            f"{_f(self.window_hist.percentile(95)):>9} {self.window_index + 1:>3}  {_load()}",
            flush=True,
        )

    @property
    def rebuilds(self) -> int:
        return sum(m.rebuilds for m in self.members.values())

    @property
    def late(self) -> int:
        return sum(m.late for m in self.members.values())

    @property
    def evicted(self) -> int:
        return sum(m.evicted for m in self.members.values())

    def finish(self, end: float) -> None:
        """Close the last window at the traffic's end: a partial one counts if it is at least a
        tenth of a window (a run that is not a whole number of windows), else it is dropped."""
        if self.t0 is None or not self.window_hist.total:
            return
        length = end - self.t0 - self.window_index * self.window
        if length >= self.window / 10:
            self._close_window(min(length, self.window))

    def min_delivered(self, end: float) -> float | None:
        if self.t0 is None or not self.members:
            return None
        slots = (end - self.t0) / SLOT
        return min(m.delivered / slots for m in self.members.values())


HEADER = (
    f"{'min':>4} {'tr rss':>7} {'gen rss':>7} {'tr cpu':>6} {'gen cpu':>7} {'rebuilds':>8} "
    f"{'sent min/mean %':>14} {'back min':>8} {'lost':>5} {'late':>6} {'evicted':>7} "
    f"{'added p95':>9} "
    f"{'win':>3}  load 1/5/15"
)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "gap"


def summary(soak: Soak, result: DemoResult, end: float) -> float:
    """Print the totals against the goals; returns the RSS growth after warm-up (MiB, or nan)."""
    growth = float("nan")
    if len(soak.rss_mb) > WARMUP_MINUTES:
        growth = soak.rss_mb[-1] - soak.rss_mb[WARMUP_MINUTES - 1]
    print(
        f"RSS growth after minute {WARMUP_MINUTES}: {_f(growth, '.2f')} MiB "
        f"(goal <= {GOAL_RSS_MB:g}): {_verdict(None if math.isnan(growth) else growth <= GOAL_RSS_MB)}"
    )
    print(f"link rebuilds: {soak.rebuilds} (goal 0): {_verdict(soak.rebuilds == 0)}")
    print(
        f"mix frames the transport's tracks dropped: late (their slot had gone out) {soak.late}, "
        f"evicted from a full queue {soak.evicted}"
    )
    low = soak.min_delivered(end)
    print(
        f"audio slots delivered, lowest member: {_f(None if low is None else 100 * low, '.2f')} % "
        f"(goal >= {100 * GOAL_DELIVERED:g} %): "
        f"{_verdict(None if low is None else low >= GOAL_DELIVERED)}"
    )
    back, lost = soak.members_back()
    print(
        f"audio packets members got back, lowest: {_f(None if back is None else 100 * back, '.2f')} "
        f"% ({lost} lost on the way back)"
    )
    windows = soak.windows
    if windows:
        (first, first_len), (last, last_len) = windows[0], windows[-1]
        drift = (last - first) / first if first > 0 else float("nan")
        met = None if len(windows) < 2 or math.isnan(drift) else abs(drift) <= GOAL_WINDOW_DRIFT
        print(
            f"added p95, first window ({first_len / 60:.1f} min) {_f(first)} ms, last "
            f"({last_len / 60:.1f} min) {_f(last)} ms: {_f(100 * drift, '+.1f')} % "
            f"(goal within {100 * GOAL_WINDOW_DRIFT:g} %; {len(windows)} windows): {_verdict(met)}"
        )
        print("window p95s (ms): " + " ".join(_f(p) for p, _ in windows))
    if soak.overflows:
        print(f"note: {soak.overflows} ticks missed added-latency samples (router kept too few)")
    print(
        f"teardown {result.teardown_ms:.0f} ms, generator skipped "
        f"{sum(p.send_skipped for p in result.peers.values())} packets, transport dropped "
        f"{sum(p.transport_dropped for p in result.peers.values())} audio frames"
    )
    return growth


async def _run(soak: Soak, seconds: float) -> tuple[DemoResult, float]:
    with trio.fail_after(seconds + RUN_MARGIN):
        result = await run_demo(
            peers=MEMBERS - 1,
            seconds=seconds,
            video=VIDEO,
            split=True,
            generator="star",
            listeners=2,
            on_tick=soak.on_tick,
            tick=TICK,
            report_every=REPORT_EVERY,
            on_report=soak.on_report,
        )
    assert soak.t0 is not None
    end = min(time.monotonic(), soak.t0 + seconds)
    return result, end


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic (default 3)")
    parser.add_argument(
        "--window-minutes", type=float, default=5.0, help="added-latency p95 window (default 5)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.window_minutes <= 0:
        parser.error("--minutes and --window-minutes must be > 0")
    soak = Soak(args.minutes, args.window_minutes)
    print(
        f"{os.cpu_count()} cores, load {_load()}, {MEMBERS} members (star generator in a child "
        f"process), audio + {VIDEO[0]}x{VIDEO[1]} video, {args.minutes:g} min, windows of "
        f"{args.window_minutes:g} min; goals: RSS growth <= {GOAL_RSS_MB:g} MiB after minute "
        f"{WARMUP_MINUTES}, 0 rebuilds, >= {100 * GOAL_DELIVERED:g} % of audio slots delivered "
        f"to every member, last window p95 within {100 * GOAL_WINDOW_DRIFT:g} % of the first",
        flush=True,
    )
    print(HEADER, flush=True)
    seconds = 60.0 * args.minutes
    result, end = trio.run(functools.partial(_run, soak, seconds))
    soak.finish(end)
    growth = summary(soak, result, end)
    print(f"load {_load()}")
    print(f"soak_rss_growth_mb={growth:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
