"""SyncManager: one peer's audio and video on one timeline (docs/media-sync.md, "A/V alignment").

Each stream's :class:`~meshrtc.media.jitter.JitterBuffer` reorders and times its packets on its own:
it releases an RTP timestamp at ``ts / rate + offset`` with an offset of its own (its stream's random
RTP origin, its own base transit, its own adaptive delay). Those two clocks say nothing about each
other. What ties them is the sender: its RTCP Sender Reports map each stream's RTP clock to the one
sender wall clock (:class:`~meshrtc.media.ntp.RtpToNtpEstimator`), so every released item gets a
*sender time* ``s``, the instant it was captured.

The common timeline places sender time on our clock: ``T(s) = b + k·(s - s0) + C``. ``k`` is the drift
estimator's correction factor (our seconds per sender second, the same factor the audio compensator
resamples by, so played audio and the timeline advance together), re-anchored at ``(s0, b)`` whenever
it moves so the timeline stays continuous. ``C`` is the presentation offset: just above the larger of
the two streams' lags ``release - (b + k·(s - s0))`` over the last couple of seconds, so the stream
that comes out of its jitter buffer earlier waits for the other one ("delay the earlier stream"). An
item that would be late anyway raises ``C`` at once; spare headroom is given back slowly. Both streams
go through the same ``T``, so what they show together was captured together: once Synced, presented
A/V skew stays within ±10 ms (tests/test_sync.py and bench/sync.py measure it).

Only confirmed mappings (two consistent SRs, see :mod:`meshrtc.media.ntp`) place items on the
timeline: a sender's first SR is often 0.2-0.7 s off its later line, and a timeline formed on it
would move with it. Rebuilding the timeline (after a confirmed mapping restart, or items more than
``max_hold`` off it) re-anchors what the router and the mixer rely on, so it happens at most once per
``min_rebuild_interval`` (2 s, doubling to 30 s while rebuilds keep being asked for); a stream the
sender restarted (new SSRC, or RTP timestamps that jump) starts over and drops the timeline. The
drift estimator is fed by the audio stream's SRs only: one estimator per sender clock and stream,
never two streams' SRs mixed (they interleave tens of ms apart and looked like a clock going back).

A mapping older than 5 s is stale (SRs refresh it) and the state leaves Synced for Syncing; alignment
carries on with the extrapolated mapping until fresh SRs arrive, because over seconds the sender's
clocks do not move measurably. Before the first Synced, items pass through at their jitter-buffer
time (there is nothing to align them with).

:func:`collect_aligned_frames` is the multi-peer half ("Multi-Peer Synchronization" in the data
model): a pure function that groups already-presented items of several peers by sender wall-clock
window, for the SessionRouter.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs

from meshrtc.errors import MeshRtcError
from meshrtc.media.drift import ClockDriftEstimator, DriftState
from meshrtc.media.frame import CLOCK_RATES, FrameType, MediaFrame
from meshrtc.media.jitter import (
    AudioPacket,
    Gap,
    InsertResult,
    JitterBuffer,
    KeyframeRequest,
    PlayoutItem,
    VideoFrame,
)
from meshrtc.media.ntp import DEFAULT_STALE_AFTER, RtpToNtpEstimator, SrUpdate, ntp_seconds_to_unix
from meshrtc.media.rtcp import SenderReport
from meshrtc.media.seq import seq_diff, ts_diff
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = [
    "SYNC_MANAGER_MACHINE",
    "AlignedItem",
    "AlignedWindow",
    "SyncError",
    "SyncManager",
    "SyncState",
    "collect_aligned_frames",
]

log = logging.getLogger(__name__)


class SyncState(enum.StrEnum):
    Unsynced = "Unsynced"
    Syncing = "Syncing"
    Synced = "Synced"
    DriftDetected = "DriftDetected"
    Resyncing = "Resyncing"


_S = SyncState
#: The states that have (or are building) an A/V timeline.
_ALIGNED = (_S.Synced, _S.DriftDetected, _S.Resyncing)

SYNC_MANAGER_MACHINE = register(
    MachineSpec(
        name="SyncManager",
        doc=(
            "Unsynced → Syncing → Synced → [Drift Detected] → Resyncing → Synced (spec/data-model.md). "
            "Syncing: a Sender Report arrived, but not every active stream has a fresh (≤ 5 s) "
            "and confirmed (two consistent SRs) NTP↔RTP mapping; a mapping going stale returns "
            "here. Drift Detected: the drift estimator suspects a new drift, or a stream's "
            "timestamps jumped; it is dismissed or "
            "confirmed. Resyncing: the timeline is re-anchored (new slope, or rebuilt after a jump; "
            "at most one rebuild per 2 s, backing off to 30 s while rebuilds keep being asked for)."
        ),
        states=SyncState,
        initial=_S.Unsynced,
        labels={"DriftDetected": "Drift Detected"},
        transitions=(
            ("begin", _S.Unsynced, _S.Syncing, "heard_sender_report"),
            ("synced", _S.Syncing, _S.Synced, "mappings_fresh"),
            ("drift_detected", _S.Synced, _S.DriftDetected, "drift_or_rebuild"),
            ("drift_dismissed", _S.DriftDetected, _S.Synced, "drift_gone"),
            ("resync", _S.DriftDetected, _S.Resyncing, "resync_wanted"),
            ("resynced", _S.Resyncing, _S.Synced, "estimator_settled"),
            ("mapping_stale", _ALIGNED, _S.Syncing, "mappings_not_fresh"),
            ("reset", tuple(SyncState), _S.Unsynced),
        ),
    )
)

#: Per state, each trigger the machine takes from it and the guard of each such arrow (None: none).
#: ``_refresh`` runs on every pop (50 times a second per member) and offers up to seven triggers;
#: asking ``transitions`` (``may_<trigger>``) lists every trigger of the machine each time, about
#: 14 µs a question and 6 % of the transport's active time at ten members (docs/benchmarks.md,
#: "Per-member cost"). The spec is the machine's own table, so a state's arrows never change.
_ARROWS: dict[str, dict[str, tuple[str | None, ...]]] = {}
for _t in SYNC_MANAGER_MACHINE.transitions:
    for _source in _t.source:
        _ARROWS.setdefault(_source, {}).setdefault(_t.trigger, ())
        _ARROWS[_source][_t.trigger] += (_t.condition,)
del _t, _source

#: Sequence numbers remembered per stream (more than a 200 ms buffer of 1080p video holds).
_ACCEPTED_MEMORY = 2048
#: Audio packet duration until measured, and the longest step that still counts as one (DTX gaps
#: are longer).
_DEFAULT_AUDIO_STEP = 0.020
_MAX_AUDIO_STEP = 0.120
#: A stream whose sequence numbers jump by more than this, or whose RTP time moves this many
#: seconds away from the time that passed here, was restarted by its sender (same SSRC).
_MAX_SEQ_JUMP = 3000
_MAX_RTP_JUMP = 5.0
#: Capture instants closer than this are the same instant (RTP/NTP rounding).
_SAME_INSTANT = 1e-4
#: The presentation offset sits this far above the larger stream lag.
_MARGIN = 0.005
#: Lags are remembered this long (local seconds) when choosing the presentation offset: a peak hold,
#: so the headroom covers the swings a jitter buffer's delay made recently (measured in bench/sync.py:
#: with 2 s instead of 30 s, a few frames per 10 minutes came out 10-20 ms after their audio).
_LAG_WINDOW = 30.0
#: The longest wait between two timeline rebuilds (the interval doubles from ``min_rebuild_interval``
#: while rebuilds follow each other within four intervals).
_MAX_REBUILD_INTERVAL = 30.0
#: Spare headroom above the margin is given back at this rate (seconds per second): slow enough that
#: nobody hears the timeline catch up, fast enough to undo a jitter-buffer spike within a minute.
_DECAY_PER_S = 0.0005


class SyncError(MeshRtcError):
    """A clock rate other than 48 kHz (audio) or 90 kHz (video), or another unusable setting."""


@attrs.frozen(slots=True)
class AlignedItem:
    """One item on the peer's common timeline.

    ``item`` is what the jitter buffer released (:class:`AudioPacket`, :class:`VideoFrame`,
    :class:`Gap`, or :class:`KeyframeRequest`, which is not media and is handed out at once).
    ``sender_time`` is the sender's wall clock at capture (NTP seconds since 1900), None when the
    stream has no mapping yet. ``presentation_time`` is when it is due on our monotonic clock;
    ``playout_time`` is when its jitter buffer released it (the difference is the alignment delay).
    """

    kind: FrameType
    item: PlayoutItem
    sender_time: float | None
    presentation_time: float
    playout_time: float
    #: Video only: how much later than the audio already played for the same capture instant this
    #: frame is presented (seconds; None when that audio has not played yet, so the two go out
    #: together on the timeline, or for audio items).
    skew: float | None = None
    #: False for a video frame whose ``skew`` exceeds the sync tolerance (10 ms): its jitter buffer
    #: released it too late. Decode it (later frames reference it); showing it is the consumer's call.
    in_sync: bool = True

    @property
    def sender_unix_time(self) -> float | None:
        return None if self.sender_time is None else ntp_seconds_to_unix(self.sender_time)

    @property
    def rtp_timestamp(self) -> int | None:
        return _rtp_timestamp(self.item)


def _rtp_timestamp(item: PlayoutItem) -> int | None:
    if isinstance(item, AudioPacket):
        return item.frame.rtp_timestamp
    if isinstance(item, VideoFrame | Gap):
        return item.rtp_timestamp
    return None


@attrs.define
class _Pending:
    kind: FrameType
    item: PlayoutItem
    sender_time: float | None
    playout_time: float
    seq: int
    held: bool = False


class _Timeline:
    """``T(s) = base + k·(s - anchor) + offset(s)``.

    ``k`` changes are re-anchored, so the line stays continuous. ``offset`` is piecewise constant in
    sender time: a raise applies *from* a sender instant on, so items captured before it (some may be
    on screen already) keep their place and a pair captured together is never split across it.
    """

    def __init__(self, anchor: float, base: float, k: float, offset: float) -> None:
        self.anchor = anchor
        self.base = base
        self.k = k
        self.offset = offset  # before the first pending change
        self.changes: list[tuple[float, float]] = []  # (from sender time, offset), ascending

    def local_base(self, sender_time: float) -> float:
        return self.base + self.k * (sender_time - self.anchor)

    def offset_at(self, sender_time: float) -> float:
        offset = self.offset
        for start, value in self.changes:
            if sender_time < start:
                break
            offset = value
        return offset

    @property
    def latest_offset(self) -> float:
        return self.changes[-1][1] if self.changes else self.offset

    def at(self, sender_time: float) -> float:
        return self.local_base(sender_time) + self.offset_at(sender_time)

    def raise_from(self, start: float, value: float) -> None:
        """Offsets of sender times ``>= start`` become at least ``value``."""
        if self.offset_at(start) >= value and all(v >= value for s, v in self.changes if s > start):
            return
        before = [(s, v) for s, v in self.changes if s < start]
        after = [(s, max(v, value)) for s, v in self.changes if s > start]
        self.changes = [*before, (start, max(value, self.offset_at(start))), *after]

    def lower(self, delta: float) -> None:
        self.offset -= delta
        self.changes = [(s, v - delta) for s, v in self.changes]

    def settle(self, presented_up_to: float) -> None:
        """Changes whose start everything presented has passed become the base offset."""
        while self.changes and self.changes[0][0] <= presented_up_to:
            self.offset = self.changes.pop(0)[1]

    def set_rate(self, k: float, sender_time: float) -> None:
        if k == self.k:
            return
        self.base = self.local_base(sender_time)
        self.anchor = sender_time
        self.k = k

    def sender_time_at(self, local: float) -> float:
        return self.anchor + (local - self.latest_offset - self.base) / self.k


class SyncManager(StatefulModel):
    """Audio/video synchronisation of one peer (docs/media-sync.md).

    Feed it media with :meth:`insert`, Sender Reports with :meth:`on_sender_report`, and call
    :meth:`pop_next_aligned` at :meth:`next_due` (or any time). ``is_keyframe`` goes to the video
    jitter buffer (see :func:`meshrtc.media.keyframe.is_keyframe_for`).
    """

    state: SyncState
    begin = trigger_stub()
    synced = trigger_stub()
    drift_detected = trigger_stub()
    drift_dismissed = trigger_stub()
    resync = trigger_stub()
    resynced = trigger_stub()
    mapping_stale = trigger_stub()
    reset = trigger_stub()

    def __init__(
        self,
        peer_id: str = "",
        *,
        audio_clock_rate: int = CLOCK_RATES[FrameType.AUDIO],
        video_clock_rate: int = CLOCK_RATES[FrameType.VIDEO],
        jitter_buffer_size_ms: float = 50.0,
        max_jitter_buffer_ms: float = 200.0,
        is_keyframe: Callable[[MediaFrame], bool] | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        max_hold: float = 0.5,
        max_wait: float = 0.1,
        sync_tolerance: float = 0.010,
        min_rebuild_interval: float = 2.0,
    ) -> None:
        for kind, rate in (
            (FrameType.AUDIO, audio_clock_rate),
            (FrameType.VIDEO, video_clock_rate),
        ):
            if rate != CLOCK_RATES[kind]:
                raise SyncError(
                    f"{kind.value} clock rate {rate} Hz is not supported: "
                    f"meshrtc requires {CLOCK_RATES[kind]} Hz"
                )
        if max_hold <= 0:
            raise SyncError(f"max_hold must be > 0, got {max_hold}")
        self.peer_id = peer_id
        self.audio_clock_rate = audio_clock_rate
        self.video_clock_rate = video_clock_rate
        self.max_hold = max_hold
        self.max_wait = max_wait
        self.sync_tolerance = sync_tolerance
        self.min_rebuild_interval = min_rebuild_interval
        #: Timeline rebuilds so far (after a confirmed mapping restart, a stream restart, or items
        #: off the timeline by more than ``max_hold``), at most one per ``min_rebuild_interval``.
        self.timeline_rebuilds = 0
        self._rebuild_interval = min_rebuild_interval
        self._last_rebuild_at: float | None = None
        self._next_rebuild_at: float | None = None
        self.audio_jitter_buffer = JitterBuffer(
            FrameType.AUDIO,
            target_delay_ms=jitter_buffer_size_ms,
            max_delay_ms=max_jitter_buffer_ms,
        )
        self.video_jitter_buffer = JitterBuffer(
            FrameType.VIDEO,
            target_delay_ms=jitter_buffer_size_ms,
            max_delay_ms=max_jitter_buffer_ms,
            is_keyframe=is_keyframe,
        )
        self.clock_drift_estimator = ClockDriftEstimator(peer_id, clock_rate=audio_clock_rate)
        self.ntp_mapping: dict[FrameType, RtpToNtpEstimator] = {
            kind: RtpToNtpEstimator(CLOCK_RATES[kind], stale_after=stale_after)
            for kind in FrameType
        }
        self._ssrc: dict[FrameType, int] = {}
        #: (sequence number, RTP timestamp, arrival) of each stream's newest accepted packet.
        self._last_packet: dict[FrameType, tuple[int, int, float]] = {}
        # seq -> RTP timestamp of recently accepted packets: with the buffer's head_sequence and
        # next_due() it tells when the buffer will release which capture instant.
        self._accepted: dict[FrameType, dict[int, int]] = {k: {} for k in FrameType}
        self._lags: dict[FrameType, deque[tuple[float, float]]] = {k: deque() for k in FrameType}
        self._lag_ema: dict[FrameType, float | None] = dict.fromkeys(FrameType)
        self._pending: list[_Pending] = []
        self._seq = 0
        self._timeline: _Timeline | None = None
        self._decayed_at: float | None = None
        self._presented_up_to: float | None = None
        self._audio_step = _DEFAULT_AUDIO_STEP
        self._last_audio_sender: float | None = None
        # Newest (sender time, local time) each stream released from its buffer, and audio that
        # was presented: (capture instant, presentation time), to measure a video frame's skew.
        self._released: dict[FrameType, tuple[float, float] | None] = dict.fromkeys(FrameType)
        self._played_audio: deque[tuple[float, float]] = deque(maxlen=64)
        self.late_frames = 0
        self._resync_needed = False
        # What the drift estimator reported since the last refresh (it can enter and leave Drift
        # Detected within one SR), and what the guards judge by during a refresh.
        self._drift_entered: set[DriftState] = set()
        self.clock_drift_estimator.on_transition = self._drift_entered.add
        self._mappings_fresh = False
        self._drift_suspected = False
        self._drift_adjusting = False
        self._rebuild_due = False
        self.last_rtcp_time: float | None = None
        self.sync_failures = 0
        self.history: deque[SyncState] = deque([_S.Unsynced], maxlen=64)
        SYNC_MANAGER_MACHINE.build(self, after_state_change=self._record_state)

    def _record_state(self) -> None:
        self.history.append(self.state)

    def on_enter_Unsynced(self) -> None:  # noqa: N802 - transitions' callback naming
        """Reconnection: every stream starts over, and nothing learnt about the sender still holds."""
        self.audio_jitter_buffer.reset()
        self.video_jitter_buffer.reset()
        for mapping in self.ntp_mapping.values():
            mapping.reset()
        self.clock_drift_estimator.reset()
        self._ssrc.clear()
        self._last_packet.clear()
        self._rebuild_interval = self.min_rebuild_interval
        self._last_rebuild_at = None
        self._next_rebuild_at = None
        for accepted in self._accepted.values():
            accepted.clear()
        for lags in self._lags.values():
            lags.clear()
        self._lag_ema = dict.fromkeys(FrameType)
        self._pending.clear()
        self._timeline = None
        self._decayed_at = None
        self._presented_up_to = None
        self._last_audio_sender = None
        self._released = dict.fromkeys(FrameType)
        self._played_audio.clear()
        self._resync_needed = False
        self._drift_entered.clear()
        self.last_rtcp_time = None

    # --- input ---------------------------------------------------------------------------------

    def insert(self, frame: MediaFrame, now: float) -> InsertResult:
        """One received RTP packet (``now``: its arrival on our monotonic clock)."""
        kind = frame.frame_type
        known = self._ssrc.get(kind)
        if known is not None and known != frame.ssrc:
            log.info("peer %r: %s SSRC changed; restarting that stream", self.peer_id, kind.value)
            self._restart_stream(kind)
        elif self._discontinuous(kind, frame, now):
            log.info(
                "peer %r: %s RTP timestamps or sequence numbers jumped (a sender restart with the "
                "same SSRC); restarting that stream",
                self.peer_id,
                kind.value,
            )
            self._restart_stream(kind)
        self._ssrc[kind] = frame.ssrc
        result = self._buffer(kind).insert(frame, now)
        if result is InsertResult.ACCEPTED:
            self._last_packet[kind] = (frame.sequence_number, frame.rtp_timestamp, now)
            accepted = self._accepted[kind]
            accepted[frame.sequence_number] = frame.rtp_timestamp
            if len(accepted) > _ACCEPTED_MEMORY:
                del accepted[next(iter(accepted))]
            if self._timeline is not None:
                # A late packet can make the buffer re-anchor (release everything later).
                self._probe_head(kind, now)
        return result

    def on_sender_report(self, kind: FrameType, sr: SenderReport) -> SrUpdate:
        """An RTCP SR for the ``kind`` stream of this peer (SRs with NTP 0 must be dropped upstream)."""
        known = self._ssrc.get(kind)
        if known is not None and sr.ssrc != known:
            return SrUpdate.INVALID  # for a stream we no longer (or do not yet) receive
        self.last_rtcp_time = sr.received_at
        outcome = self.ntp_mapping[kind].update(sr)
        if outcome is SrUpdate.RESET:
            # The sender's clocks jumped (or a first SR off the line was replaced): the timeline is
            # void, and so is the drift history if it was built on this stream.
            if kind is FrameType.AUDIO:
                self.clock_drift_estimator.reset()
            self._resync_needed = True
        if kind is FrameType.AUDIO and outcome in (SrUpdate.ACCEPTED, SrUpdate.RESET):
            # Audio SRs only: the estimator fits one sender clock through one stream's reports
            # (audio and video SRs interleaved tens of ms apart looked like a clock going
            # backwards), and audio is what drift compensation resamples.
            self.clock_drift_estimator.observe_sender_report(sr)
        self._refresh(sr.received_at)
        return outcome

    def _discontinuous(self, kind: FrameType, frame: MediaFrame, now: float) -> bool:
        """Did the sender restart this stream under the same SSRC (new random RTP origin and
        sequence numbers)? Judged against the newest accepted packet: a sequence jump no loss burst
        explains, or RTP time that moved seconds away from the time that passed here (a pause
        moves both together; reordering and retransmissions move them by far less)."""
        last = self._last_packet.get(kind)
        if last is None:
            return False
        seq, rtp, at = last
        rate = self.audio_clock_rate if kind is FrameType.AUDIO else self.video_clock_rate
        rtp_elapsed = ts_diff(frame.rtp_timestamp, rtp) / rate
        return (
            abs(seq_diff(frame.sequence_number, seq)) > _MAX_SEQ_JUMP
            or abs(rtp_elapsed - (now - at)) > _MAX_RTP_JUMP
        )

    def _restart_stream(self, kind: FrameType) -> None:
        self._last_packet.pop(kind, None)
        self._buffer(kind).reset()
        self._accepted[kind].clear()
        self.ntp_mapping[kind].reset()
        self._lags[kind].clear()
        self._lag_ema[kind] = None
        self._pending = [p for p in self._pending if p.kind is not kind]
        # Nothing of the old timeline applies to the new stream (its mapping starts over): items
        # pass at their jitter-buffer time until both mappings are confirmed, then a new timeline
        # starts. Not rate-limited: a restart is the sender's doing, and says so by its SSRC or its
        # RTP timestamps.
        if self._timeline is not None:
            self.timeline_rebuilds += 1
            log.info(
                "peer %r: rebuilding the A/V timeline (%s restarted)", self.peer_id, kind.value
            )
        self._timeline = None
        self._resync_needed = False

    def _buffer(self, kind: FrameType) -> JitterBuffer:
        return self.audio_jitter_buffer if kind is FrameType.AUDIO else self.video_jitter_buffer

    # --- state ---------------------------------------------------------------------------------

    def _active(self) -> list[FrameType]:
        """Streams that carry media or have sent an SR."""
        return [k for k in FrameType if k in self._ssrc or self.ntp_mapping[k].has_mapping]

    def mapping_is_stale(self, now: float) -> bool:
        """Some active stream has no mapping, or one older than ``stale_after`` (5 s: SRs refresh it)."""
        active = self._active()
        return not active or any(self.ntp_mapping[k].is_stale(now) for k in active)

    def mappings_ready(self, now: float) -> bool:
        """Every active stream's mapping is fresh and confirmed (two consistent SRs): the
        condition for Synced. A single SR may be the sender's first, often 0.2-0.7 s off."""
        return not self.mapping_is_stale(now) and all(
            self.ntp_mapping[k].confirmed for k in self._active()
        )

    def _rebuild_allowed(self, now: float) -> bool:
        return self._next_rebuild_at is None or now >= self._next_rebuild_at

    # --- guards (the machine's conditions; _refresh sets what they judge by) ----------------

    def heard_sender_report(self) -> bool:
        return self.last_rtcp_time is not None

    def mappings_fresh(self) -> bool:
        return self._mappings_fresh

    def mappings_not_fresh(self) -> bool:
        return not self._mappings_fresh

    def resync_wanted(self) -> bool:
        """The estimator is slewing to a confirmed drift, or a timeline rebuild is due."""
        return self._drift_adjusting or self._rebuild_due

    def drift_or_rebuild(self) -> bool:
        return self._drift_suspected or self.resync_wanted()

    def drift_gone(self) -> bool:
        return not self._drift_suspected and not self.resync_wanted()

    def estimator_settled(self) -> bool:
        est = self.clock_drift_estimator
        return not est.adjusting and not est.suspects_drift

    @property
    def aligned(self) -> bool:
        """Synced, or moving between drift figures: the states that keep an A/V timeline."""
        return self.state in _ALIGNED

    def _may(self, trigger: str) -> bool:
        """``may_<trigger>()`` read off the spec: an arrow from this state whose guard holds."""
        guards = _ARROWS[self.state].get(trigger)
        return guards is not None and any(g is None or getattr(self, g)() for g in guards)

    def _offer(self, trigger: str) -> bool:
        """:meth:`fire_if_taken` without asking ``transitions`` for a trigger it cannot take here;
        one it can take is still fired through the machine, which judges the guard again."""
        return self._may(trigger) and bool(self.trigger(trigger))

    def _refresh(self, now: float) -> None:
        """Offer the machine what changed (an SR, time passing) and let its guards decide."""
        if not self.heard_sender_report():
            return  # Unsynced: nothing to sync to before a Sender Report
        self._offer("begin")
        est = self.clock_drift_estimator
        # The estimator may pass Drift Detected → Adjusting → Stable within one SR: it reported
        # every state it entered.
        entered = set(self._drift_entered)
        self._drift_entered.clear()
        self._drift_suspected = est.suspects_drift or DriftState.DriftDetected in entered
        self._drift_adjusting = est.adjusting or DriftState.Adjusting in entered
        self._mappings_fresh = self.mappings_ready(now)
        self._rebuild_due = False
        self._offer("mapping_stale")
        if self._offer("synced"):
            if self._timeline is None:
                self._resync_needed = False
            if not self._resync_needed:
                return
        # A rebuild re-anchors what the router and the mixer rely on: at most one per
        # ``_rebuild_interval`` (which doubles while rebuilds keep being asked for), so a mapping
        # that keeps disagreeing cannot make the timeline thrash.
        rebuild = self._resync_needed and self._rebuild_allowed(now)
        self._rebuild_due = rebuild
        self._offer("drift_detected")
        self._offer("resync") or self._offer("drift_dismissed")
        if self._may("resynced"):
            if rebuild:
                self._rebuild(now)
            self.resynced()

    def _rebuild(self, now: float) -> None:
        last = self._last_rebuild_at
        if last is not None and now - last < 4 * self._rebuild_interval:
            self._rebuild_interval = min(_MAX_REBUILD_INTERVAL, 2 * self._rebuild_interval)
        elif last is not None:
            self._rebuild_interval = self.min_rebuild_interval
        self._last_rebuild_at = now
        self._next_rebuild_at = now + self._rebuild_interval
        self.timeline_rebuilds += 1
        log.info(
            "peer %r: rebuilding the A/V timeline (next rebuild %.0f s from now at the earliest)",
            self.peer_id,
            self._rebuild_interval,
        )
        self._timeline = None
        self._resync_needed = False

    # --- output --------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When :meth:`pop_next_aligned` can next return something (None: not before an insert)."""
        candidates = [
            t
            for t in (self.audio_jitter_buffer.next_due(), self.video_jitter_buffer.next_due())
            if t is not None
        ]
        for when, _, p in self._stream_ordered():
            if p.held and not self._audio_left(p):
                when += self.max_wait  # nothing to do before the audio leaves or the wait ends
            candidates.append(when)
        return min(candidates, default=None)

    def _stream_ordered(self) -> list[tuple[float, int, _Pending]]:
        """Pending items with presentation times made non-decreasing per stream, in the order
        their jitter buffer released them.

        A Sender Report can move a stream's NTP mapping between two of its items (the sender's
        RTP/NTP pairs are noisy when its encoder lags): an item admitted after the report may then
        map to an earlier instant than one admitted before it and still pending. The earlier item
        is brought forward to the later one's time rather than the later one held back, so the
        stream keeps its order and nothing is held longer than ``max_hold``.
        """
        items = sorted(self._pending, key=lambda p: p.seq)
        out: list[tuple[float, int, _Pending]] = []
        earliest: dict[FrameType, float] = {}
        for p in reversed(items):
            when = self._presentation_time(p)
            later = earliest.get(p.kind)
            if later is not None and when > later:
                when = later
            earliest[p.kind] = when
            out.append((when, p.seq, p))
        out.reverse()
        return out

    def pop_next_aligned(self, now: float) -> list[AlignedItem]:
        """Everything due at ``now`` on the common timeline, in presentation order."""
        self._refresh(now)
        out: list[AlignedItem] = []
        for kind in FrameType:
            for item in self._buffer(kind).pop(now):
                if isinstance(item, KeyframeRequest):
                    out.append(AlignedItem(kind, item, None, now, now))
                    continue
                self._admit(kind, item, now)
        if self._timeline is not None:
            for kind in FrameType:
                self._probe_head(kind, now)
            self._decay(now)
        due = self._stream_ordered()
        due.sort(key=lambda entry: (entry[0], entry[1]))
        keep: list[_Pending] = []
        video_waiting = False
        latest = -math.inf
        for when, _, p in due:
            if when > now:
                keep.append(p)
                continue
            if p.kind is FrameType.VIDEO and (
                video_waiting or (not self._audio_left(p) and now < when + self.max_wait)
            ):
                # The audio captured with this frame is still inside its jitter buffer (which is
                # releasing it late): show the frame with it, not before. Video only: a picture
                # held a little longer is invisible, a stalled sound is not.
                p.held = video_waiting = True
                keep.append(p)
                continue
            # A held frame goes out now, so what follows it cannot be earlier.
            latest = max(latest, now if p.held else when)
            out.append(self._present(p, latest))
        self._pending = keep
        if self._timeline is not None and self._presented_up_to is not None:
            self._timeline.settle(self._presented_up_to)
        return out

    def _present(self, p: _Pending, when: float) -> AlignedItem:
        s = p.sender_time
        skew: float | None = None
        if s is not None:
            if self._presented_up_to is None or s > self._presented_up_to:
                self._presented_up_to = s
            if p.kind is FrameType.AUDIO and isinstance(p.item, AudioPacket | Gap):
                self._played_audio.append((s, when))
            elif p.kind is FrameType.VIDEO and self._timeline is not None:
                skew = self._skew(s, when)
        in_sync = skew is None or abs(skew) <= self.sync_tolerance
        if not in_sync:
            self.late_frames += 1
        return AlignedItem(p.kind, p.item, s, when, p.playout_time, skew, in_sync)

    def _skew(self, sender: float, when: float) -> float | None:
        """``when`` minus the moment the audio already played reached capture instant ``sender``."""
        assert self._timeline is not None
        for s_audio, played_at in reversed(self._played_audio):
            if s_audio <= sender + _SAME_INSTANT:
                if sender - s_audio >= self._audio_step - _SAME_INSTANT:
                    return None  # the audio covering this instant has not played yet
                return when - (played_at + self._timeline.k * (sender - s_audio))
        return None

    def _audio_left(self, p: _Pending) -> bool:
        """Has the audio captured up to this video frame left its jitter buffer (or is there no
        audio to wait for)?"""
        s = p.sender_time
        released = self._released[FrameType.AUDIO]
        if s is None or released is None or not self.ntp_mapping[FrameType.AUDIO].has_mapping:
            return True
        if released[0] > s - self._audio_step + _SAME_INSTANT:
            return True  # the packet covering this instant (or a later one) is out
        upcoming = self._next_sender_time(FrameType.AUDIO)
        return upcoming is None or upcoming > s + _SAME_INSTANT

    def _admit(self, kind: FrameType, item: PlayoutItem, now: float) -> None:
        release = _playout_time(item)
        rtp = _rtp_timestamp(item)
        mapping = self.ntp_mapping[kind]
        # Only a confirmed mapping places items on the timeline: a single SR may be the sender's
        # first, off by most of a second, and would move the whole timeline with it.
        sender = None if rtp is None or not mapping.confirmed else mapping.to_ntp(rtp)
        self._seq += 1
        pending = _Pending(kind, item, sender, release, self._seq)
        if sender is not None:
            if self._timeline is None and self.aligned:
                self._start_timeline(sender, release)
            timeline = self._timeline
            if timeline is not None:
                timeline.set_rate(self.clock_drift_estimator.correction_factor, sender)
                lag = release - timeline.local_base(sender)
                if abs(lag - timeline.offset_at(sender)) > self.max_hold:
                    # Seconds off the other stream: its mapping is wrong (a jump not yet confirmed
                    # by three SRs). Do not hold anything for it, and rebuild the timeline.
                    self.sync_failures += 1
                    self._resync_needed = True
                    pending.sender_time = None
                else:
                    self._note_lag(kind, lag, now)
                    # Late anyway: move the timeline (both streams) from here on rather than let
                    # this stream fall behind the other.
                    self._raise(kind, sender, lag)
                if kind is FrameType.AUDIO:
                    self._note_audio(sender)
            previous = self._released[kind]
            if previous is None or sender > previous[0]:
                self._released[kind] = (sender, now)
        self._pending.append(pending)

    def _probe_head(self, kind: FrameType, now: float) -> None:
        """Learn a stream's lag before its next item comes out, from when its buffer will release it.

        A jitter buffer raises its delay in steps (up to a frame at a time, or at once when it
        re-anchors on a late packet). Seen only when the delayed item is released, the other stream
        would already have shown what was captured with it; seen here, the whole timeline moves
        first and the pair stays together.
        """
        timeline = self._timeline
        buffer = self._buffer(kind)
        mapping = self.ntp_mapping[kind]
        head = buffer.head_sequence
        if timeline is None or head is None or not mapping.has_mapping:
            return
        rtp = self._head_rtp(kind, head)
        due = buffer.next_due()
        if rtp is None or due is None:
            return  # a missing audio head (its due time is an estimate), or nothing buffered
        sender = mapping.to_ntp(rtp)
        lag = due - timeline.local_base(sender)
        if abs(lag - timeline.offset_at(sender)) > self.max_hold:
            return
        self._note_lag(kind, lag, now)
        self._raise(kind, sender, lag)

    def _head_rtp(self, kind: FrameType, head: int) -> int | None:
        """RTP timestamp of the next packet the buffer will release, when we know it."""
        accepted = self._accepted[kind]
        rtp = accepted.get(head)
        if rtp is None and kind is FrameType.VIDEO:
            # A missing video head is skipped: the buffer goes on with the next packet it holds.
            rtp = next(
                (accepted[q] for q in ((head + i) & 0xFFFF for i in range(1, 64)) if q in accepted),
                None,
            )
        return rtp

    def _next_sender_time(self, kind: FrameType) -> float | None:
        """Capture instant of the next item ``kind``'s buffer will release (None: unknown)."""
        head = self._buffer(kind).head_sequence
        mapping = self.ntp_mapping[kind]
        if head is None or not mapping.has_mapping:
            return None
        rtp = self._head_rtp(kind, head)
        if rtp is not None:
            return mapping.to_ntp(rtp)
        released = self._released[kind]
        if kind is FrameType.AUDIO and released is not None:
            return released[0] + self._audio_step  # a missing packet becomes a Gap in turn
        return None

    def _raise(self, kind: FrameType, sender: float, lag: float) -> None:
        """Make room for an item of ``kind`` captured at ``sender`` that leaves its buffer ``lag``
        after the timeline's base.

        The raise starts at the item itself for audio; for video it starts at the audio packet that
        covers the frame's capture instant, so that packet moves with the frame.
        """
        timeline = self._timeline
        assert timeline is not None
        if lag <= timeline.offset_at(sender):
            return
        start = sender
        if kind is FrameType.VIDEO:
            start = self._audio_packet_start(sender)
        timeline.raise_from(start, lag + _MARGIN)

    def _audio_packet_start(self, sender: float) -> float:
        """Capture instant of the audio packet that covers ``sender`` (one packet earlier if the
        audio grid is not known yet)."""
        ref = self._last_audio_sender
        step = self._audio_step
        if ref is None:
            return sender - step
        return ref + math.floor((sender - ref) / step + 1e-9) * step

    def _note_audio(self, sender: float) -> None:
        """Measure the audio packet duration from consecutive capture instants."""
        last = self._last_audio_sender
        if last is not None and 0.0 < sender - last <= _MAX_AUDIO_STEP:
            self._audio_step = sender - last
        self._last_audio_sender = sender

    def _start_timeline(self, sender: float, release: float) -> None:
        k = self.clock_drift_estimator.correction_factor
        self._timeline = _Timeline(anchor=sender, base=release, k=k, offset=_MARGIN)
        self._presented_up_to = None
        self._decayed_at = None
        for lags in self._lags.values():
            lags.clear()

    def _note_lag(self, kind: FrameType, lag: float, now: float) -> None:
        # A monotonic deque: lags decrease from left to right, so the window's maximum is the
        # leftmost entry once the expired ones are dropped (constant time per lag on average).
        lags = self._lags[kind]
        while lags and lags[-1][1] <= lag:
            lags.pop()
        lags.append((now, lag))
        ema = self._lag_ema[kind]
        self._lag_ema[kind] = lag if ema is None else ema + 0.05 * (lag - ema)

    def _decay(self, now: float) -> None:
        """Give back headroom the streams no longer need, slowly."""
        timeline = self._timeline
        assert timeline is not None
        elapsed = 0.0 if self._decayed_at is None else now - self._decayed_at
        self._decayed_at = now
        needed = -math.inf
        for lags in self._lags.values():
            while lags and lags[0][0] < now - _LAG_WINDOW:
                lags.popleft()
            if lags:
                needed = max(needed, lags[0][1])
        if needed == -math.inf or elapsed <= 0:
            return
        spare = timeline.latest_offset - (needed + _MARGIN)
        if spare > 0:
            timeline.lower(min(spare, _DECAY_PER_S * elapsed))

    def _presentation_time(self, p: _Pending) -> float:
        if self._timeline is None:
            # Until the timeline starts (a confirmed SR mapping) items go at their playout time
            # plus the margin the timeline starts with, so that its start is no step: a 5 ms step
            # set every member's drift stage resampling for ~14 s to trim it away
            # (docs/benchmarks.md, "Where the per-member cost is now").
            return p.playout_time + _MARGIN
        if p.sender_time is None:
            return p.playout_time
        return max(p.playout_time, self._timeline.at(p.sender_time))

    # --- queries -------------------------------------------------------------------------------

    def to_sender_time(self, kind: FrameType, rtp_timestamp: int) -> float | None:
        """Sender wall clock (NTP seconds) at which ``rtp_timestamp`` of ``kind`` was captured."""
        mapping = self.ntp_mapping[kind]
        return mapping.to_ntp(rtp_timestamp) if mapping.has_mapping else None

    def sender_time_at(self, now: float) -> float | None:
        """The sender instant being presented at ``now`` (None before the timeline exists)."""
        return None if self._timeline is None else self._timeline.sender_time_at(now)

    @property
    def sync_offset_ms(self) -> float | None:
        """How much later video leaves its jitter buffer than audio captured at the same instant,
        smoothed (ms). Positive: audio is the stream being delayed. None until both streams lag."""
        a, v = self._lag_ema[FrameType.AUDIO], self._lag_ema[FrameType.VIDEO]
        return None if a is None or v is None else (v - a) * 1000.0

    @property
    def presentation_delay_ms(self) -> float | None:
        """The timeline's current offset over its anchor (ms), None before it exists."""
        return None if self._timeline is None else self._timeline.latest_offset * 1000.0

    @property
    def pending_count(self) -> int:
        return len(self._pending)


def _playout_time(item: PlayoutItem) -> float:
    assert not isinstance(item, KeyframeRequest)
    return item.playout_time


# --- multi-peer --------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class AlignedWindow:
    """One sender wall-clock window ``[start, end)`` across peers (NTP seconds).

    ``frames``: per peer, the items captured in the window (plus untimed items such as keyframe
    requests, which belong to "now"). ``late``: items captured before the window (the router already
    moved on). ``pending``: items captured at or after ``end``, to offer to the next window.
    ``complete``: peers that have presented something at or after ``end``; since a SyncManager
    presents in sender-time order, nothing more for this window will come from them.
    """

    start: float
    end: float
    frames: Mapping[str, tuple[AlignedItem, ...]]
    late: Mapping[str, tuple[AlignedItem, ...]]
    pending: Mapping[str, tuple[AlignedItem, ...]]
    complete: frozenset[str]

    def is_complete(self, peers: Sequence[str]) -> bool:
        return all(p in self.complete for p in peers)


def collect_aligned_frames(
    ready: Mapping[str, Sequence[AlignedItem]], window_start: float, window_end: float
) -> AlignedWindow:
    """Group several peers' presented items by the sender wall-clock window they were captured in.

    ``ready`` maps a peer id to the items its SyncManager's :meth:`SyncManager.pop_next_aligned`
    returned and the router has not consumed yet (carry ``pending`` over to the next call). Pure:
    nothing is mutated, the same input gives the same output. Windows compare sender wall clocks of
    different peers, so peers' clocks are assumed NTP-disciplined (typically within a few ms).
    """
    if window_end <= window_start:
        raise SyncError(f"empty window [{window_start}, {window_end})")
    frames: dict[str, tuple[AlignedItem, ...]] = {}
    late: dict[str, tuple[AlignedItem, ...]] = {}
    pending: dict[str, tuple[AlignedItem, ...]] = {}
    complete: set[str] = set()
    for peer, items in ready.items():
        inside: list[AlignedItem] = []
        before: list[AlignedItem] = []
        after: list[AlignedItem] = []
        for item in items:
            s = item.sender_time
            if s is None or window_start <= s < window_end:
                inside.append(item)
            elif s < window_start:
                before.append(item)
            else:
                after.append(item)
        frames[peer] = tuple(inside)
        late[peer] = tuple(before)
        pending[peer] = tuple(after)
        if after:
            complete.add(peer)
    return AlignedWindow(
        start=window_start,
        end=window_end,
        frames=frames,
        late=late,
        pending=pending,
        complete=frozenset(complete),
    )
