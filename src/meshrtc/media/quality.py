"""Connection quality figures of one peer and a sans-IO bitrate controller (docs/media-sync.md).

Everything is computed from what the receive path already sees: every RTP packet (extended sequence
numbers for loss, sizes for bandwidth, video timestamps for frame rate) and RTCP reception reports
about the streams we send (RTT from LSR/DLSR, the remote's loss of our media). Reading a snapshot
has no side effects; aiortc's ``fraction_lost`` resets its interval when read, which is why meshrtc
keeps its own counters.

Jitter is not estimated here: the jitter buffers (media/jitter.py) already compute RFC 3550
interarrival jitter once per packet, and it is their figure that sets the playout delay, so the
snapshot reports it (the ``jitter_ms`` source given to :class:`ConnectionQuality`) instead of a
second estimate with other clipping. Loss keeps its own per-SSRC sequence unwrapping: RFC 3550
A.3 counts every packet that arrived, including those the buffer refuses (late, duplicate), over
the peer's whole life, while a buffer's extended numbers restart with its stream.

The controller only decides: loss above 5% cuts the target multiplicatively, loss below 1% with a
sane RTT for a while probes upwards, both bounded by the configured minimum and maximum. The caller
applies the decision (the rtc adapter owns the encoders). While Opus sends in-band FEC
(media/opus_fec.py decides when), the audio controller's floor is :data:`OPUS_FEC_MIN_KBPS`: the FEC
copy comes out of the same bitrate, and below that floor it costs more than it recovers.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable

import attrs

from meshrtc.errors import MeshRtcError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.rtcp import ReceptionReport
from meshrtc.media.seq import SequenceUnwrapper, TimestampUnwrapper

__all__ = [
    "OPUS_FEC_MIN_KBPS",
    "BitrateAction",
    "BitrateController",
    "BitrateDecision",
    "ConnectionQuality",
    "ConnectionQualityMetrics",
    "QualityError",
    "rtt_from_report",
]

log = logging.getLogger(__name__)

#: RTP fixed header: counted in bandwidth figures unless the caller passes the real packet size.
RTP_HEADER_BYTES = 12
#: Reception reports kept per stream of ours (about one a second; read every few seconds).
LOSS_REPORTS_KEPT = 32
#: The Opus target's floor while in-band FEC is on (kb/s). libopus pays for the FEC copy out of
#: the same bitrate, so at low rates the primary frames get worse and the copy thin (none at all
#: at 16 kb/s stereo). Measured offline on the espeak clip (C2, issue 17; PESQ-WB, 10% random
#: loss, FEC on and recovered; the no-loss score without FEC in brackets): 24 kb/s 2.47 (3.73),
#: 32 kb/s 2.81 (4.02), 48 kb/s 3.41 (4.09), 64 kb/s 3.82 (3.78), 96 kb/s 4.03 (4.35). Below 64 kb/s
#: FEC does not reach the issue's 3.8, so loss may cut the audio bitrate only down to here.
OPUS_FEC_MIN_KBPS = 64.0


class QualityError(MeshRtcError):
    """A quality or controller parameter is out of range."""


@attrs.frozen(slots=True)
class ConnectionQualityMetrics:
    """One snapshot of a peer's connection quality (docs/media-sync.md).

    ``packet_loss_rate`` (0-100) is the loss of the media we *receive* over the loss window;
    ``outbound_loss_rate`` is what the peer reports about the media we *send* (RTCP fraction lost),
    the figure a sender's bitrate decision should use. ``latency_ms`` is the smoothed RTT.
    """

    peer_id: str
    latency_ms: float | None
    packet_loss_rate: float
    jitter_ms: float
    bandwidth_kbps: float
    video_resolution: str | None
    video_framerate: float | None
    audio_bitrate_kbps: float
    video_bitrate_kbps: float
    updated_at: float
    outbound_loss_rate: float | None = None
    video_width: int | None = None
    video_height: int | None = None


def rtt_from_report(rr: ReceptionReport, arrival_ntp: int) -> float | None:
    """RFC 3550 section 6.4.1: RTT = A - LSR - DLSR in seconds, None if not computable.

    ``arrival_ntp`` is our 64-bit NTP wall clock when the report arrived. A report that has not seen
    an SR from us yet carries LSR 0; a negative result means the clocks involved disagree.
    """
    if rr.last_sr == 0:
        return None
    arrival_middle = (arrival_ntp >> 16) & 0xFFFFFFFF
    units = (arrival_middle - rr.last_sr - rr.delay_since_last_sr) & 0xFFFFFFFF
    if units >= 0x80000000:
        return None
    return units / 65536.0


@attrs.define
class _Progress:
    at: float
    max_ext: int
    received: int


class _StreamStats:
    """Per-SSRC counters: RFC 3550 appendix A.3 (loss)."""

    def __init__(self, kind: FrameType, clock_rate: int) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.seq = SequenceUnwrapper()
        self.ts = TimestampUnwrapper()
        self.base_ext: int | None = None
        self.max_ext = -1
        self.received = 0
        # (arrival, max_ext, received) after each packet, for loss over a sliding window.
        self.progress: deque[_Progress] = deque()

    def add(self, frame: MediaFrame) -> int:
        """Count one packet; return its extended RTP timestamp."""
        ext = self.seq.unwrap(frame.sequence_number)
        if self.base_ext is None:
            self.base_ext = ext
            self.max_ext = ext - 1
            self.progress.append(_Progress(frame.received_at, ext - 1, 0))
        self.max_ext = max(self.max_ext, ext)
        self.received += 1
        rtp_ext = self.ts.unwrap(frame.rtp_timestamp)
        self.progress.append(_Progress(frame.received_at, self.max_ext, self.received))
        return rtp_ext

    def prune(self, before: float) -> None:
        """Keep one record at or before ``before`` as the window's baseline."""
        while len(self.progress) > 1 and self.progress[1].at <= before:
            self.progress.popleft()

    def window_loss(self, since: float) -> tuple[int, int]:
        """(expected, lost) for packets after ``since``."""
        base = self.progress[0]
        for record in self.progress:
            if record.at > since:
                break
            base = record
        expected = self.max_ext - base.max_ext
        received = self.received - base.received
        return expected, max(0, expected - received)

    @property
    def cumulative(self) -> tuple[int, int]:
        if self.base_ext is None:
            return 0, 0
        expected = self.max_ext - self.base_ext + 1
        return expected, max(0, expected - self.received)


@attrs.frozen(slots=True)
class _Arrival:
    at: float
    size: int
    kind: FrameType
    rtp_ext: int


class ConnectionQuality:
    """Accumulates one peer's packets and reports; :meth:`snapshot` computes the figures.

    ``jitter_ms`` is where the interarrival jitter comes from (the peer passes its jitter buffers'
    worst figure); without one, jitter reads 0.
    """

    def __init__(
        self,
        peer_id: str = "",
        *,
        window_s: float = 10.0,
        loss_window_s: float = 5.0,
        rtt_smoothing: float = 0.125,
        jitter_ms: Callable[[], float] | None = None,
    ) -> None:
        if window_s <= 0 or loss_window_s <= 0:
            raise QualityError("window_s and loss_window_s must be > 0")
        if not 0 < rtt_smoothing <= 1:
            raise QualityError(f"rtt_smoothing must be in (0, 1], got {rtt_smoothing}")
        self.peer_id = peer_id
        self.window_s = window_s
        self.loss_window_s = loss_window_s
        self.rtt_smoothing = rtt_smoothing
        self._jitter_source = jitter_ms
        self._streams: dict[int, _StreamStats] = {}
        self._arrivals: deque[_Arrival] = deque()
        self._first_arrival: float | None = None
        self._srtt: float | None = None
        self.last_rtt: float | None = None
        self._remote_loss: dict[int, tuple[float, float]] = {}  # ssrc -> (at, percent)
        #: ssrc -> the newest reports' (at, percent): the FEC policy reads each one, not only
        #: the latest (media/opus_fec.py).
        self._loss_reports: dict[int, deque[tuple[float, float]]] = {}
        self._width: int | None = None
        self._height: int | None = None
        self._updated_at: float | None = None

    # --- input ---------------------------------------------------------------------------------

    def on_packet(self, frame: MediaFrame, *, size: int | None = None) -> None:
        """One received RTP packet; ``size`` defaults to payload plus the 12-byte RTP header."""
        stats = self._streams.get(frame.ssrc)
        if stats is None:
            stats = self._streams[frame.ssrc] = _StreamStats(frame.frame_type, frame.clock_rate)
        rtp_ext = stats.add(frame)
        nbytes = len(frame.payload) + RTP_HEADER_BYTES if size is None else size
        now = frame.received_at
        if self._first_arrival is None:
            self._first_arrival = now
        self._arrivals.append(_Arrival(now, nbytes, frame.frame_type, rtp_ext))
        self._updated_at = now
        self._prune(now)

    def on_reception_report(self, rr: ReceptionReport, *, arrival_ntp: int) -> float | None:
        """A report block about one of our streams; returns the RTT in seconds when it has one."""
        report = (rr.received_at, rr.fraction_lost / 256.0 * 100.0)
        self._remote_loss[rr.ssrc] = report
        history = self._loss_reports.get(rr.ssrc)
        if history is None:
            history = self._loss_reports[rr.ssrc] = deque(maxlen=LOSS_REPORTS_KEPT)
        history.append(report)
        self._updated_at = rr.received_at
        rtt = rtt_from_report(rr, arrival_ntp)
        if rtt is not None:
            self._add_rtt(rtt)
        return rtt

    def set_rtt(self, rtt_ms: float, now: float) -> None:
        """An RTT measured elsewhere (ICE consistency checks, aiortc stats)."""
        if rtt_ms < 0:
            raise QualityError(f"rtt_ms must be >= 0, got {rtt_ms}")
        self._add_rtt(rtt_ms / 1000.0)
        self._updated_at = now

    def set_video_resolution(self, width: int, height: int, now: float) -> None:
        """What the decoder produced last."""
        self._width, self._height = width, height
        self._updated_at = now

    def _add_rtt(self, rtt: float) -> None:
        self.last_rtt = rtt
        if self._srtt is None:
            self._srtt = rtt
        else:
            self._srtt += self.rtt_smoothing * (rtt - self._srtt)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._arrivals and self._arrivals[0].at <= horizon:
            self._arrivals.popleft()
        loss_horizon = now - self.loss_window_s
        for stats in self._streams.values():
            stats.prune(loss_horizon)

    # --- figures -------------------------------------------------------------------------------

    def packets_lost(self) -> int:
        """Cumulative loss over the session (RFC 3550 A.3: expected - received, floored at 0)."""
        return sum(s.cumulative[1] for s in self._streams.values())

    def loss_rate(self, now: float) -> float:
        """Percent of expected packets missing over the last ``loss_window_s`` seconds.

        ``now`` is the current time (not earlier than the newest packet): history older than the
        window is discarded as packets arrive.
        """
        expected = lost = 0
        for stats in self._streams.values():
            e, lo = stats.window_loss(now - self.loss_window_s)
            expected += e
            lost += lo
        return 100.0 * lost / expected if expected > 0 else 0.0

    def jitter_ms(self) -> float:
        """RFC 3550 interarrival jitter of the worst stream, in milliseconds (from the source)."""
        return 0.0 if self._jitter_source is None else self._jitter_source()

    def _span(self, now: float) -> float:
        if self._first_arrival is None:
            return 0.0
        return min(self.window_s, now - self._first_arrival)

    def bitrate_kbps(self, now: float, kind: FrameType | None = None) -> float:
        """Received kbit/s over the sliding window (all media, or one kind)."""
        span = self._span(now)
        if span <= 0:
            return 0.0
        horizon = now - self.window_s
        total = sum(
            a.size
            for a in self._arrivals
            if a.at > horizon and a.at <= now and (kind is None or a.kind is kind)
        )
        return total * 8 / span / 1000.0

    def video_framerate(self, now: float) -> float | None:
        """Distinct video RTP timestamps per second of RTP time over the window."""
        horizon = now - self.window_s
        stamps = {
            a.rtp_ext for a in self._arrivals if a.kind is FrameType.VIDEO and horizon < a.at <= now
        }
        if len(stamps) < 2:
            return None
        span = (max(stamps) - min(stamps)) / 90_000
        return (len(stamps) - 1) / span

    def outbound_loss_rate(self, now: float) -> float | None:
        """The worst loss the peer reported for our streams within the window (0-100)."""
        fresh = [pct for at, pct in self._remote_loss.values() if now - at <= self.window_s]
        return max(fresh) if fresh else None

    def loss_reports(self, ssrc: int, after: float | None = None) -> list[tuple[float, float]]:
        """The remote's reports about our stream ``ssrc`` as (arrival, percent lost), oldest
        first, those that arrived after ``after`` (the newest :data:`LOSS_REPORTS_KEPT`)."""
        history = self._loss_reports.get(ssrc, ())
        return [r for r in history if after is None or r[0] > after]

    @property
    def rtt_ms(self) -> float | None:
        return None if self._srtt is None else self._srtt * 1000.0

    def snapshot(self, now: float) -> ConnectionQualityMetrics:
        return ConnectionQualityMetrics(
            peer_id=self.peer_id,
            latency_ms=self.rtt_ms,
            packet_loss_rate=self.loss_rate(now),
            jitter_ms=self.jitter_ms(),
            bandwidth_kbps=self.bitrate_kbps(now),
            video_resolution=None if self._height is None else f"{self._height}p",
            video_framerate=self.video_framerate(now),
            audio_bitrate_kbps=self.bitrate_kbps(now, FrameType.AUDIO),
            video_bitrate_kbps=self.bitrate_kbps(now, FrameType.VIDEO),
            updated_at=now if self._updated_at is None else self._updated_at,
            outbound_loss_rate=self.outbound_loss_rate(now),
            video_width=self._width,
            video_height=self._height,
        )


# --- bitrate controller ------------------------------------------------------------------------


class BitrateAction(enum.Enum):
    HOLD = "hold"
    DECREASE = "decrease"
    INCREASE = "increase"


@attrs.frozen(slots=True)
class BitrateDecision:
    action: BitrateAction
    target_kbps: float
    previous_kbps: float
    reason: str


class BitrateController:
    """Loss-based send-bitrate decisions (the rule: loss above 5% must lower the bitrate).

    Decreases are multiplicative and at most one per ``decrease_hold_s`` (the loss window still holds
    the losses that caused the previous cut). Increases need loss below ``low_loss_percent`` and an RTT
    at or under ``max_sane_rtt_ms`` (or none known) continuously for ``probe_after_s``; each increase
    restarts that wait. Between the two loss thresholds the target holds.
    """

    def __init__(
        self,
        *,
        min_kbps: float = 30.0,
        max_kbps: float = 2500.0,
        start_kbps: float | None = None,
        decrease_factor: float = 0.85,
        increase_factor: float = 1.08,
        high_loss_percent: float = 5.0,
        low_loss_percent: float = 1.0,
        max_sane_rtt_ms: float = 300.0,
        probe_after_s: float = 5.0,
        decrease_hold_s: float = 2.0,
    ) -> None:
        if not 0 < min_kbps <= max_kbps:
            raise QualityError(f"need 0 < min_kbps <= max_kbps, got {min_kbps}, {max_kbps}")
        if not 0 < decrease_factor < 1 or increase_factor <= 1:
            raise QualityError("decrease_factor must be in (0, 1) and increase_factor > 1")
        if not 0 <= low_loss_percent <= high_loss_percent <= 100:
            raise QualityError("need 0 <= low_loss_percent <= high_loss_percent <= 100")
        start = min(max_kbps, max(min_kbps, 300.0)) if start_kbps is None else start_kbps
        if not min_kbps <= start <= max_kbps:
            raise QualityError(f"start_kbps {start} is outside [{min_kbps}, {max_kbps}]")
        self.min_kbps = min_kbps
        self.max_kbps = max_kbps
        self.decrease_factor = decrease_factor
        self.increase_factor = increase_factor
        self.high_loss_percent = high_loss_percent
        self.low_loss_percent = low_loss_percent
        self.max_sane_rtt_ms = max_sane_rtt_ms
        self.probe_after_s = probe_after_s
        self.decrease_hold_s = decrease_hold_s
        self._target = start
        self._good_since: float | None = None
        self._last_decrease: float | None = None
        self._floor = min_kbps

    @property
    def target_kbps(self) -> float:
        return self._target

    @property
    def floor_kbps(self) -> float:
        """The lowest target loss can bring: ``min_kbps``, or what :meth:`set_floor` raised it to."""
        return self._floor

    def set_floor(self, kbps: float | None) -> BitrateDecision:
        """Raise the floor to ``kbps`` (capped at ``max_kbps``; None: back to ``min_kbps``) and
        the target with it: Opus with in-band FEC on (:data:`OPUS_FEC_MIN_KBPS`)."""
        previous = self._target
        self._floor = (
            self.min_kbps if kbps is None else min(self.max_kbps, max(self.min_kbps, kbps))
        )
        if previous >= self._floor:
            return self._hold(previous, f"floor {self._floor:.0f} kb/s")
        self._target = self._floor
        return BitrateDecision(
            BitrateAction.INCREASE,
            self._target,
            previous,
            f"floor raised to {self._floor:.0f} kb/s",
        )

    def update_from(self, metrics: ConnectionQualityMetrics) -> BitrateDecision:
        """Decide from a snapshot: the peer's report on our media if there is one, else inbound loss."""
        loss = metrics.outbound_loss_rate
        if loss is None:
            loss = metrics.packet_loss_rate
        return self.update(metrics.updated_at, loss_percent=loss, rtt_ms=metrics.latency_ms)

    def update(self, now: float, *, loss_percent: float, rtt_ms: float | None) -> BitrateDecision:
        previous = self._target
        if loss_percent > self.high_loss_percent:
            self._good_since = None
            if self._last_decrease is not None and now - self._last_decrease < self.decrease_hold_s:
                return self._hold(previous, "loss high; waiting for the last cut to show")
            target = max(self._floor, previous * self.decrease_factor)
            if target >= previous:
                return self._hold(previous, "loss high; already at the minimum")
            self._target = target
            self._last_decrease = now
            return BitrateDecision(
                BitrateAction.DECREASE, target, previous, f"loss {loss_percent:.1f}% > limit"
            )
        rtt_sane = rtt_ms is None or rtt_ms <= self.max_sane_rtt_ms
        if loss_percent < self.low_loss_percent and rtt_sane:
            if self._good_since is None:
                self._good_since = now
            if now - self._good_since < self.probe_after_s:
                return self._hold(previous, "link good; not for long enough to probe")
            self._good_since = now
            target = min(self.max_kbps, previous * self.increase_factor)
            if target <= previous:
                return self._hold(previous, "link good; already at the maximum")
            self._target = target
            return BitrateDecision(
                BitrateAction.INCREASE, target, previous, "loss and RTT low for long enough"
            )
        self._good_since = None
        return self._hold(previous, "loss or RTT between thresholds")

    def _hold(self, target: float, reason: str) -> BitrateDecision:
        return BitrateDecision(BitrateAction.HOLD, target, target, reason)
