"""Timelines that converge: members' audio through SyncManager → grid → MixMinus, simulated.

docs/media-sync.md explains the rule, docs/benchmarks.md has the figures.

Each member sends audio (20 ms Opus packets, 48 kHz RTP) and video (30 fps, one packet per frame,
90 kHz) with random RTP origins, and RTCP Sender Reports about once a second per stream, as aiortc
and GStreamer do. The trace can make those SRs misbehave the way real senders do: the first SR of a
stream off its later RTP↔NTP line (GStreamer: 0.2-0.7 s), audio and video first SRs that disagree,
isolated outlier SRs, gaps without SRs, and sender restarts (a new SSRC and RTP origin, or the same
SSRC with a jumped origin), whose first SR may be off again.

Receiving: one :class:`~meshrtc.media.sync.SyncManager` per member, popped at its ``next_due()`` (a
millisecond later when it released nothing, as the peer's media loop sleeps). Audio items become
frames on the member's local timeline the way ``PeerConnection._play`` makes them (local times never
go backwards; a Gap becomes ``count`` concealed frames). Each frame reaches the router a few ms
later (a per-member processing delay), is dropped if presented over 250 ms ago (the router's
``max_input_age``), snapped onto the session grid and pushed into one :class:`MixMinusMixer`, whose
deadlines are honoured. Every frame of member ``i`` carries the sample value ``2**i / 16``, so each
mix says exactly whose audio it holds.

The figure: for every receiver R and every other member S, the share of grid slots after the first
second in which R's mix holds S's audio, counting only slots where S's packets arrive (the second
after each restart of S is its own "first second" and is left out). The goal (docs/benchmarks.md) is
≥ 99 % for every pair. Also printed: the longest run of slots without S in R's mix, timeline rebuilds
per member, and what was dropped where.

    .venv/bin/python bench/timeline.py [--seed 1] [--seconds 20] [--scenario NAME|all]
    .venv/bin/python bench/timeline.py --jump     # re-anchor time after a ±150 ms timeline jump

tests/test_timeline_convergence.py runs the same simulation over seeded and hypothesis-drawn traces.
It also runs against an older tree (the grid falls back to ``SessionRouter.grid_timestamp``):
``PYTHONPATH=/tmp/base/src .venv/bin/python bench/timeline.py --scenario all``.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap
from meshrtc.media.rtcp import SenderReport
from meshrtc.media.sync import SyncManager
from meshrtc.pipeline.data import Audio
from meshrtc.pipeline.nodes.mixminus import MixMinusMixer

GRID = 0.020
NTP_START = 3_900_000_000.0
MAX_INPUT_AGE = 0.25
#: A mix emitted this long after its timestamp is too old for the outgoing track (rtc/tracks.py).
OLD_OUTPUT = 0.040
#: Slots after a member's (re)start that are its "first second".
SETTLE = 1.0


@dataclass(frozen=True)
class Member:
    """One sender's behaviour (times are the sender's seconds since the trace started)."""

    delay: float = 0.040
    jitter: float = 0.010
    #: Seconds the member's NTP wall clock is off the true time (members' clocks differ by ms).
    clock_offset: float = 0.0
    #: Added to the NTP time of the first audio / video SR of each (re)start.
    audio_first_sr_error: float = 0.0
    video_first_sr_error: float = 0.0
    #: (sender time, "audio" | "video", error in seconds): the first SR of that stream from then
    #: on is off by the error.
    outliers: tuple[tuple[float, str, float], ...] = ()
    #: No SRs at all (either stream) within these sender-time intervals.
    sr_gaps: tuple[tuple[float, float], ...] = ()
    #: (sender time, new SSRC?): from then on both streams have new random RTP origins and sequence
    #: numbers; with new_ssrc False the SSRCs stay (a jumped timestamp).
    restarts: tuple[tuple[float, bool], ...] = ()
    sr_interval: float = 1.0
    #: The SR's RTP timestamp is that of a packet up to this long before its NTP instant (aiortc
    #: stamps an SR with the last packet it sent).
    sr_noise: float = 0.015
    #: Seconds from a frame's presentation to its push into the mixer.
    processing: float = 0.002
    start: float = 0.0


@dataclass(frozen=True)
class Trace:
    members: tuple[Member, ...]
    seconds: float = 12.0
    seed: int = 1


@dataclass
class PairCoverage:
    receiver: str
    sender: str
    slots: int
    covered: int
    longest_gap_slots: int

    @property
    def ratio(self) -> float:
        return self.covered / self.slots if self.slots else 1.0


@dataclass
class Outcome:
    pairs: list[PairCoverage] = field(default_factory=list)
    rebuilds: dict[str, int] = field(default_factory=dict)
    late: int = 0
    grid_dropped: int = 0
    stale_dropped: int = 0
    sync_failures: dict[str, int] = field(default_factory=dict)
    #: Share of the mixes (after the first two seconds) emitted more than OLD_OUTPUT after their
    #: timestamp: the outgoing audio track sends a frame at its timestamp + 40 ms or drops it.
    old_outputs: float = 0.0
    states: dict[str, str] = field(default_factory=dict)
    #: (receiver, slot) -> members heard, for the slots after the start.
    heard: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict)

    @property
    def worst(self) -> PairCoverage:
        return min(self.pairs, key=lambda p: p.ratio)


# --- the grid: the router's, whatever this tree calls it ------------------------------------------


class _Grid:
    """``timestamp(peer, local_time, arrived_at) -> float | None`` (None: the frame is dropped;
    an old tree's grid knows no arrival time)."""

    def __init__(self) -> None:
        try:
            from meshrtc.session.grid import SessionGrid
        except ImportError:
            from meshrtc.session.router import SessionRouter

            router = SessionRouter.__new__(SessionRouter)
            router._origin = None
            router._last_slot = {}
            self._fn: Callable[[str, float, float], float | None] = lambda peer, local, _arrived: (
                router.grid_timestamp(peer, local)
            )
            self.origin: Callable[[], float | None] = lambda: router._origin
            self.dropped: Callable[[], int] = lambda: 0
            return
        grid = SessionGrid(GRID)
        self._fn = grid.timestamp
        self.origin = lambda: grid.origin
        self.dropped = lambda: sum(grid.dropped.values())

    def timestamp(self, peer: str, local_time: float, arrived_at: float) -> float | None:
        return self._fn(peer, local_time, arrived_at)


class _RebuildCounter(logging.Handler):
    """Counts "rebuilding the A/V timeline" log records per peer (works on old trees too)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "rebuilding the A/V timeline" in record.getMessage():
            peer = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
            self.counts[peer] = self.counts.get(peer, 0) + 1


# --- the trace -------------------------------------------------------------------------------------


def _ntp64(seconds: float) -> int:
    whole = math.floor(seconds)
    return (whole << 32) | min(0xFFFFFFFF, round((seconds - whole) * 2**32))


@dataclass
class _Stream:
    kind: FrameType
    clock: int
    ssrc: int
    origin: int
    seq: int
    since: float  # sender time of the stream's current (re)start


def _events(name: str, m: Member, seconds: float, rng: random.Random) -> list[tuple[float, object]]:
    """(arrival time, MediaFrame | (kind, SenderReport)) for one member, unsorted."""
    out: list[tuple[float, object]] = []

    def arrive(sent: float) -> float:
        return sent + m.delay + rng.uniform(-m.jitter, m.jitter)

    streams = {
        FrameType.AUDIO: _Stream(
            FrameType.AUDIO, 48_000, rng.randrange(1, 2**32), rng.randrange(2**32), 0, m.start
        ),
        FrameType.VIDEO: _Stream(
            FrameType.VIDEO, 90_000, rng.randrange(1, 2**32), rng.randrange(2**32), 0, m.start
        ),
    }
    for st in streams.values():
        st.seq = rng.randrange(2**16)
    restarts = sorted(m.restarts)
    steps = {FrameType.AUDIO: 0.020, FrameType.VIDEO: 1 / 30}
    for kind, st in streams.items():
        step = steps[kind]
        pending_restarts = list(restarts)
        n = 0
        t = m.start
        next_sr = m.start + rng.uniform(0.2, 1.0)
        first_sr = True
        outliers = sorted((at, err) for at, which, err in m.outliers if which == kind.value)
        while t < seconds:
            if pending_restarts and t >= pending_restarts[0][0]:
                _, new_ssrc = pending_restarts.pop(0)
                if new_ssrc:
                    st.ssrc = rng.randrange(1, 2**32)
                st.origin = rng.randrange(2**32)
                st.seq = rng.randrange(2**16)
                st.since = t
                first_sr = True
            rtp = (st.origin + round((t - st.since) * st.clock)) & 0xFFFFFFFF
            at = arrive(t)
            out.append((at, MediaFrame(kind, rtp, st.seq & 0xFFFF, b"x", at, True, st.ssrc)))
            st.seq += 1
            n += 1
            t = m.start + n * step
            # Sender Reports due before the next packet.
            while next_sr < t and next_sr < seconds:
                sr_t = next_sr
                next_sr += m.sr_interval * rng.uniform(0.8, 1.2)
                if any(a <= sr_t < b for a, b in m.sr_gaps) or sr_t < st.since:
                    continue
                error = 0.0
                if first_sr:
                    error = (
                        m.audio_first_sr_error
                        if kind is FrameType.AUDIO
                        else m.video_first_sr_error
                    )
                    first_sr = False
                while outliers and outliers[0][0] <= sr_t:
                    error += outliers.pop(0)[1]
                stamped = sr_t - rng.uniform(0.0, m.sr_noise)
                rtp_sr = (st.origin + round((stamped - st.since) * st.clock)) & 0xFFFFFFFF
                ntp = NTP_START + sr_t + m.clock_offset + error
                at = arrive(sr_t)
                out.append((at, (kind, SenderReport(st.ssrc, _ntp64(ntp), rtp_sr, n, n, at))))
    del name
    return out


# --- the simulation ----------------------------------------------------------------------------------


def simulate(trace: Trace) -> Outcome:
    rng = random.Random(trace.seed)
    names = [f"m{i}" for i in range(len(trace.members))]
    counter = _RebuildCounter()
    sync_log = logging.getLogger("meshrtc.media.sync")
    sync_log.addHandler(counter)
    old_level = sync_log.level
    sync_log.setLevel(logging.INFO)
    try:
        return _run(trace, names, rng, counter)
    finally:
        sync_log.removeHandler(counter)
        sync_log.setLevel(old_level)


def _run(trace: Trace, names: list[str], rng: random.Random, counter: _RebuildCounter) -> Outcome:
    seconds = trace.seconds
    heap: list[tuple[float, int, int, object]] = []
    seq = 0
    for idx, (name, member) in enumerate(zip(names, trace.members, strict=True)):
        for at, obj in _events(name, member, seconds, rng):
            heap.append((at, seq, idx, obj))
            seq += 1
    heapq.heapify(heap)
    syncs = [SyncManager(name) for name in names]
    last_presented = [-math.inf] * len(names)
    not_before = [-math.inf] * len(names)
    last_push = [-math.inf] * len(names)
    pushes: list[tuple[float, int, int, float]] = []  # (push time, seq, member, local time)
    grid = _Grid()
    mixer = MixMinusMixer(limiter="none")
    out = Outcome()
    mixes: list[Audio] = []
    ages: list[tuple[float, float]] = []  # (emitted at, emitted at - timestamp)
    markers = [np.full(1, 2.0**i / 16.0, np.float32) for i in range(len(names))]
    now = 0.0
    guard = 0
    while True:
        guard += 1
        if guard > 5_000_000:
            raise RuntimeError("simulation did not finish")
        t_event = heap[0][0] if heap else math.inf
        t_push = pushes[0][0] if pushes else math.inf
        t_mix = mixer.deadline if mixer.deadline is not None else math.inf
        t_due = math.inf
        due_idx = -1
        for i, sm in enumerate(syncs):
            due = sm.next_due()
            if due is not None:
                due = max(due, not_before[i])
                if due < t_due:
                    t_due, due_idx = due, i
        t = min(t_event, t_push, t_mix, t_due)
        if t > seconds or t == math.inf:
            break
        now = max(now, t)
        if t == t_event:
            _, _, idx, obj = heapq.heappop(heap)
            if isinstance(obj, MediaFrame):
                syncs[idx].insert(obj, now)
            else:
                kind, sr = obj  # type: ignore[misc]
                syncs[idx].on_sender_report(kind, sr)
        elif t == t_push:
            _, _, idx, local = heapq.heappop(pushes)
            if now - local > MAX_INPUT_AGE:
                out.stale_dropped += 1
                continue
            ts = grid.timestamp(names[idx], local, now)
            if ts is None:
                continue
            frame = Audio(samples=markers[idx], peer_id=names[idx], timestamp=ts)
            for mix in mixer.push(frame, now):
                mixes.append(mix)
                ages.append((now, now - mix.timestamp))
        elif t == t_mix:
            for mix in mixer.expire(now):
                mixes.append(mix)
                ages.append((now, now - mix.timestamp))
        else:
            idx = due_idx
            items = syncs[idx].pop_next_aligned(now)
            audio = [
                it
                for it in items
                if isinstance(it.item, AudioPacket)
                or (isinstance(it.item, Gap) and it.item.frame_type is FrameType.AUDIO)
            ]
            if not items:
                not_before[idx] = now + 0.001
            for it in audio:
                when = last_presented[idx] = max(last_presented[idx], it.presentation_time)
                count = it.item.count if isinstance(it.item, Gap) else 1
                for k in range(count):
                    at = last_presented[idx] = max(last_presented[idx], when + k * GRID)
                    # One channel per member into the router: its frames keep their order.
                    delay = trace.members[idx].processing * rng.uniform(0.5, 1.5)
                    push_at = last_push[idx] = max(last_push[idx], now + delay + (at - when))
                    heapq.heappush(pushes, (push_at, seq, idx, at))
                    seq += 1
    mixes.extend(mixer.flush())
    out.late = mixer.late
    judged = [age for at, age in ages if SETTLE + 1.0 <= at < seconds - 0.3]
    out.old_outputs = sum(1 for age in judged if age > OLD_OUTPUT) / max(1, len(judged))
    out.grid_dropped = grid.dropped()
    out.rebuilds = {name: counter.counts.get(name, 0) for name in names}
    out.sync_failures = {name: sm.sync_failures for name, sm in zip(names, syncs, strict=True)}
    out.states = {name: sm.state for name, sm in zip(names, syncs, strict=True)}
    origin = grid.origin()
    if origin is None:
        return out
    for mix in mixes:
        assert mix.to_peer is not None
        bits = round(float(mix.samples[0]) * 16.0)
        heard = frozenset(n for i, n in enumerate(names) if bits & (1 << i))
        slot = round((mix.timestamp - origin) / GRID)
        out.heard[(mix.to_peer, slot)] = heard
    _coverage(trace, names, origin, out)
    return out


def _excluded(member: Member, seconds: float) -> list[tuple[float, float]]:
    """Local-time spans (roughly) where a member's audio is not judged: its first second after each
    (re)start, and the end of the trace (still in flight)."""
    lead = member.delay + 0.3  # path + buffers + alignment, generously
    spans = [(-math.inf, member.start + lead + SETTLE), (seconds - 0.3, math.inf)]
    spans += [(at, at + lead + SETTLE) for at, _ in member.restarts]
    return spans


def _coverage(trace: Trace, names: list[str], origin: float, out: Outcome) -> None:
    first = math.ceil((max(m.start for m in trace.members) - origin) / GRID)
    last = math.floor((trace.seconds - origin) / GRID)
    for r, receiver in enumerate(names):
        for s, sender in enumerate(names):
            if r == s:
                continue
            skip = (
                _excluded(trace.members[s], trace.seconds)
                + _excluded(trace.members[r], trace.seconds)[:1]
            )
            slots = covered = gap = longest = 0
            for k in range(first, last + 1):
                ts = origin + k * GRID
                if any(a <= ts < b for a, b in skip):
                    continue
                slots += 1
                if sender in out.heard.get((receiver, k), frozenset()):
                    covered += 1
                    gap = 0
                else:
                    gap += 1
                    longest = max(longest, gap)
            out.pairs.append(PairCoverage(receiver, sender, slots, covered, longest))


# --- scenarios -------------------------------------------------------------------------------------


def scenarios(seconds: float = 20.0) -> dict[str, Trace]:
    """The issue's cases, three members each."""
    calm = Member()
    return {
        "clean": Trace((calm, Member(delay=0.06), Member(delay=0.03)), seconds),
        "first-sr-off": Trace(
            (
                Member(audio_first_sr_error=0.7, video_first_sr_error=0.7),
                Member(audio_first_sr_error=-0.7, video_first_sr_error=0.3),
                Member(audio_first_sr_error=0.2, video_first_sr_error=-0.5),
            ),
            seconds,
        ),
        "av-disagree": Trace(
            (
                Member(audio_first_sr_error=0.0, video_first_sr_error=0.5),
                Member(audio_first_sr_error=0.5, video_first_sr_error=0.0),
                Member(audio_first_sr_error=-0.5, video_first_sr_error=0.5),
            ),
            seconds,
        ),
        "outliers-gaps": Trace(
            (
                Member(outliers=((3.0, "audio", 0.4), (6.5, "video", -0.6), (9.0, "audio", -0.3))),
                Member(sr_gaps=((2.0, 8.0),), outliers=((10.0, "video", 0.5),)),
                Member(audio_first_sr_error=0.4, sr_interval=2.0),
            ),
            seconds,
        ),
        "slow-router-path": Trace(
            (Member(processing=0.05), Member(), Member(delay=0.06)),
            seconds,
        ),
        "loaded-router": Trace(
            (Member(processing=0.05), Member(processing=0.05), Member(processing=0.025)),
            seconds,
        ),
        "restarts": Trace(
            (
                Member(restarts=((6.0, True),), audio_first_sr_error=0.5),
                Member(restarts=((9.0, False),)),
                Member(restarts=((4.0, True), (13.0, False)), video_first_sr_error=-0.6),
            ),
            seconds,
        ),
    }


def random_member(rng: random.Random, seconds: float) -> Member:
    """A member drawn from the issue's space of misbehaviour (also used by the hypothesis test)."""

    def first() -> float:
        return rng.choice([0.0, rng.uniform(-0.7, 0.7)])

    restarts: tuple[tuple[float, bool], ...] = ()
    if rng.random() < 0.4:
        restarts = ((rng.uniform(3.0, seconds - 3.0), rng.random() < 0.5),)
    interval = rng.choice([0.5, 1.0, 1.0, 2.0])
    # An outlier right after a (re)start's first SR, off by about as much, makes two SRs that agree
    # with each other: to any estimator a consistent line (a stepped clock looks the same). Such a
    # pair is outvoted only by the SRs after it, and the timeline follows it meanwhile; the traces
    # keep outliers clear of (re)starts (docs/media-sync.md, "Known limits").
    starts = [0.0, *(at for at, _ in restarts)]
    outliers = tuple(
        (at, rng.choice(["audio", "video"]), rng.uniform(-0.7, 0.7))
        for at in (rng.uniform(1.0, seconds) for _ in range(rng.randrange(3)))
        if not any(start <= at < start + 4 * interval for start in starts)
    )
    gaps: tuple[tuple[float, float], ...] = ()
    if rng.random() < 0.3:
        a = rng.uniform(1.0, seconds - 2.0)
        gaps = ((a, a + rng.uniform(1.0, 6.0)),)
    return Member(
        delay=rng.uniform(0.02, 0.08),
        jitter=rng.uniform(0.0, 0.02),
        clock_offset=rng.uniform(-0.005, 0.005),
        audio_first_sr_error=first(),
        video_first_sr_error=first(),
        outliers=outliers,
        sr_gaps=gaps,
        restarts=restarts,
        sr_interval=interval,
        processing=rng.uniform(0.0, 0.004),
    )


# --- re-anchoring after a jump: router grid + MixMinus only ----------------------------------------


def reanchor_time(
    jump: float, *, members: int = 3, seconds: float = 6.0, offset_only: bool = False
) -> tuple[float, int]:
    """Members present a frame every 20 ms, each pushed into the mixer when presented, until
    member 0's timeline jumps by ``jump`` seconds 2 s in, as a SyncManager rebuild moves it.

    Forward: its frames are presented ``jump`` later from then on (a gap, then the same pace).
    Back: every frame whose new presentation time has passed comes out at once (a burst, at the
    local time of its predecessor, as ``PeerConnection._play`` never lets local times go back),
    then the rest at the earlier pace. Returns the time from the jump until member 0 is back in
    every other member's mix and every other member in member 0's, for good (the end of the last
    slot with one missing), and the number of slots with one missing.

    ``offset_only``: instead, member 0's local times run ``jump`` off the time it is pushed at, for
    good (not what a SyncManager does, whose items are pushed when due; it exercises MixMinus's own
    re-anchoring, for timestamps from elsewhere).
    """
    grid = _Grid()
    mixer = MixMinusMixer(limiter="none")
    names = [f"m{i}" for i in range(members)]
    markers = [np.full(1, 2.0**i / 16.0, np.float32) for i in range(members)]
    jump_at = 1.0 + 2.0
    pushes: list[tuple[float, int, float]] = []  # (push time, member, local time)
    last_local = -math.inf
    for k in range(round(seconds / GRID)):
        presented = 1.0 + k * GRID
        for i in range(members):
            local = presented + 0.0005 * i
            push = local + 0.001 * i
            if i == 0 and presented >= jump_at and offset_only:
                local = presented + jump
            elif i == 0 and presented >= jump_at:
                local = max(last_local, presented + jump)
                push = max(jump_at, presented + jump)
            if i == 0:
                last_local = local
            pushes.append((push, i, local))
    pushes.sort()
    mixes: list[Audio] = []
    for push, i, local in pushes:
        expire_due = mixer.deadline
        if expire_due is not None and expire_due <= push:
            mixes.extend(mixer.expire(push))
        ts = grid.timestamp(names[i], local, push)
        if ts is not None:
            frame = Audio(samples=markers[i], peer_id=names[i], timestamp=ts)
            mixes.extend(mixer.push(frame, push))
    mixes.extend(mixer.flush())
    jump_at -= 1.0
    origin = grid.origin()
    assert origin is not None
    start, end = origin + jump_at, origin + seconds - 0.6
    everyone = (1 << members) - 1
    missing: list[float] = []
    for mix in mixes:
        if not start <= mix.timestamp < end or mix.to_peer is None:
            continue
        receiver = names.index(mix.to_peer)
        # Member 0 in everybody's mix, and everybody in member 0's.
        wanted = everyone & ~(1 << receiver) if receiver == 0 else 1
        if round(float(mix.samples[0]) * 16.0) & wanted != wanted:
            missing.append(mix.timestamp)
    if not missing:
        return 0.0, 0
    return max(missing) + GRID - start, len(set(missing))


# --- main --------------------------------------------------------------------------------------------


def _report(name: str, out: Outcome, elapsed: float) -> None:
    worst = out.worst
    print(
        f"{name:14s} worst pair {worst.sender}->{worst.receiver}: {worst.ratio:7.2%} of "
        f"{worst.slots} slots (longest gap {worst.longest_gap_slots * GRID * 1000:.0f} ms); "
        f"rebuilds {sum(out.rebuilds.values())} {list(out.rebuilds.values())}; late {out.late}, "
        f"grid-dropped {out.grid_dropped}, stale {out.stale_dropped}; "
        f"mixes > 40 ms old {out.old_outputs:.1%}; {elapsed:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scenario", default="all")
    parser.add_argument("--random", type=int, default=0, help="also run N random traces")
    parser.add_argument("--jump", action="store_true")
    args = parser.parse_args(argv)
    if args.jump:
        for offset_only in (False, True):
            what = "timestamps off by" if offset_only else "timeline jump"
            for jump in (0.06, -0.06, 0.15, -0.15, 0.5, -0.5):
                took, missing = reanchor_time(jump, offset_only=offset_only)
                print(
                    f"{what} {jump * 1000:+5.0f} ms: every mix complete again {took * 1000:4.0f} "
                    f"ms after the jump ({missing} slots with a member missing)"
                )
        return 0
    all_scenarios = scenarios(args.seconds)
    chosen = (
        all_scenarios if args.scenario == "all" else {args.scenario: all_scenarios[args.scenario]}
    )
    worst = 1.0
    for name, trace in chosen.items():
        trace = Trace(trace.members, trace.seconds, args.seed)
        started = time.perf_counter()
        out = simulate(trace)
        _report(name, out, time.perf_counter() - started)
        worst = min(worst, out.worst.ratio)
    rng = random.Random(args.seed)
    for k in range(args.random):
        members = tuple(random_member(rng, args.seconds) for _ in range(3))
        started = time.perf_counter()
        out = simulate(Trace(members, args.seconds, args.seed * 1000 + k))
        _report(f"random-{k}", out, time.perf_counter() - started)
        worst = min(worst, out.worst.ratio)
    print(f"worst_pair_coverage={worst:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
