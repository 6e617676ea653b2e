"""The RTP jitter buffer (docs/jitter-buffer.md): reorder, time, conceal, recover, never stall.

One :class:`JitterBuffer` per received stream. It is sans-IO: the caller passes packets in with
:meth:`JitterBuffer.insert` and the monotonic clock with :meth:`JitterBuffer.pop`, and arms a timer
for :meth:`JitterBuffer.next_due`. docs/jitter-buffer.md explains the model; in short:

* **Timing.** A packet plays at ``rtp_timestamp / clock_rate + offset``. ``offset`` is the *base
  transit* (the smallest ``arrival - rtp_time`` seen recently, i.e. the fastest path through the
  network) plus the *playout delay*. So playout is driven by the clock, not by arrivals, and a packet
  that is lost changes nothing about when the others play: a single loss leaves no extra delay (the
  aiortc 1.16 buffer is the counter-example: it releases frames only when later packets arrive).
* **Adaptation.** RFC 3550 interarrival jitter ``J`` sets the target delay,
  ``clamp(min, 4·J, max)``; the playout delay then moves towards the target by at most one frame per
  adjustment (every 100 ms), so audio never jumps. The base follows a windowed minimum (clock drift)
  and is re-anchored when a packet arrives after its own playout time while the buffer waits for it.
* **Loss.** A missing packet is declared lost when its (estimated) playout time passes and a later
  packet is already here. Audio emits a :class:`Gap` (for concealment) and moves on; when the packet
  after the gap was already here at the gap's playout time, the Gap carries it as ``recovery``, so the
  decoder can rebuild the last lost frame from its Opus in-band FEC (never waited for: no delay).
  Video reports the loss with one :class:`KeyframeRequest` per loss episode and drops frames until
  the next complete keyframe.
* **Late, duplicate, overrun.** Packets behind the playout point, or delayed more than
  ``late_after_ms`` beyond the base transit, are discarded and counted late; a second copy of a packet
  already accepted is a duplicate. When the buffered media spans more than ``max_delay_ms`` (the
  consumer stopped popping, or the path suddenly got faster) the oldest packets are dropped down to
  the target delay and counted.

Performance: the hot path (one accepted packet in, one due packet out) touches a dict keyed by
extended sequence number and a handful of plain attributes, allocates only the output item, and
fires no statechart trigger; triggers fire only when the state really changes.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import TypeAlias

import attrs

from meshrtc.errors import ConfigError
from meshrtc.media.frame import CLOCK_RATES, FrameType, MediaFrame
from meshrtc.media.seq import seq_diff, ts_diff
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = [
    "JITTER_BUFFER_MACHINE",
    "AudioPacket",
    "Gap",
    "InsertResult",
    "JitterBuffer",
    "JitterState",
    "KeyframeReason",
    "KeyframeRequest",
    "PlayoutItem",
    "VideoFrame",
]

log = logging.getLogger(__name__)


class JitterState(enum.StrEnum):
    Empty = "Empty"
    Buffering = "Buffering"
    Stable = "Stable"
    Underrun = "Underrun"
    Overrun = "Overrun"
    Adjusting = "Adjusting"


EMPTY = JitterState.Empty
BUFFERING = JitterState.Buffering
STABLE = JitterState.Stable
UNDERRUN = JitterState.Underrun
OVERRUN = JitterState.Overrun
ADJUSTING = JitterState.Adjusting
_FILLED = (BUFFERING, STABLE, UNDERRUN, OVERRUN, ADJUSTING)

JITTER_BUFFER_MACHINE = register(
    MachineSpec(
        name="JitterBuffer",
        doc=(
            "Empty → Buffering → Stable → [Underrun | Overrun] → Adjusting → Stable "
            "(spec/data-model.md). "
            "Underrun: something was due and nothing playable could be emitted (the buffer ran dry, "
            "or video waits for a keyframe). Overrun: the buffered media spanned more than the "
            "maximum delay; the oldest packets are dropped at once, so it is left for Adjusting in "
            "the same call. `retarget`: the measured jitter (or the base transit) moved the target "
            "away from the current delay. `flush`: `reset()` (reconnection, SSRC change)."
        ),
        states=JitterState,
        initial=EMPTY,
        transitions=(
            ("first_packet", EMPTY, BUFFERING),
            ("target_reached", BUFFERING, STABLE),
            ("underrun", (STABLE, ADJUSTING), UNDERRUN),
            ("overrun", (BUFFERING, STABLE, ADJUSTING, UNDERRUN), OVERRUN),
            ("adjust", (UNDERRUN, OVERRUN), ADJUSTING),
            ("retarget", STABLE, ADJUSTING),
            ("settled", ADJUSTING, STABLE),
            ("flush", _FILLED, EMPTY),
        ),
    )
)

# The state checks below are enum identity tests inside the buffer's own methods, on the
# per-packet path: ``may_<trigger>()`` costs about 7.5 µs in transitions 0.9.3 (measured with
# timeit on this machine), several times a whole insert, so the path tests the member directly.

#: target ≈ K · J: J (RFC 3550) is a mean absolute difference; 4·J covers a uniform jitter of width
#: 3·J and about 4.5 standard deviations of a Gaussian one.
_JITTER_MULTIPLIER = 4.0
#: While Adjusting, the playout delay moves one step this often (local seconds).
_ADJUST_INTERVAL = 0.1
#: Otherwise the target and the delay are re-evaluated this often.
_STABLE_CHECK_INTERVAL = 0.25
#: The base transit is the minimum over the current and the previous window of this length, so a
#: slowly drifting sender clock moves it within two windows.
_BASE_WINDOW = 2.0
#: A new target is adopted only when it differs by this much (no churn from tiny jitter changes).
_RETARGET_HYSTERESIS = 0.005
#: Stable tolerates this much difference between the playout delay and the target.
_STABLE_TOLERANCE = 0.005
#: Lost sequence numbers are remembered this far behind the head, to tell late from duplicate.
_LOST_MEMORY = 4096
#: Arrival times kept for packets that came after a hole, before those behind the head are pruned.
_ARRIVAL_MEMORY = 256
#: Before anything played, an earlier packet (reordered at the very start) may lower the head this far.
_MAX_START_REORDER = 1024
_M16 = 0xFFFF
_M32 = 0xFFFFFFFF
#: Extended sequence numbers start one cycle up so that early reordering never goes negative.
_SEQ_CYCLE = 0x10000
#: Default packet (audio: 20 ms) and frame (video: 30 fps) durations until measured.
_DEFAULT_STEP_S = {FrameType.AUDIO: 0.020, FrameType.VIDEO: 1 / 30}
#: A timestamp step longer than this is a pause (DTX, muted video), not a frame duration.
_MAX_STEP_S = {FrameType.AUDIO: 0.120, FrameType.VIDEO: 0.5}


class InsertResult(enum.Enum):
    """What :meth:`JitterBuffer.insert` did with a packet."""

    ACCEPTED = "accepted"
    #: A copy of a packet already accepted (buffered, played or dropped).
    DUPLICATE = "duplicate"
    #: Discarded: behind the playout point (including after being declared lost), or older than
    #: ``late_after_ms``.
    LATE = "late"


class KeyframeReason(enum.StrEnum):
    #: The first frames of the stream were not a keyframe (joined mid-stream, first keyframe lost).
    STARTUP = "startup"
    #: Packets were lost; the decoder's references are broken.
    LOSS = "loss"
    #: Frames were dropped to recover from an overrun.
    OVERRUN = "overrun"


@attrs.frozen(slots=True)
class AudioPacket:
    """One audio packet, due at ``playout_time`` (monotonic seconds; earlier than the ``now`` it was
    popped at when the caller popped late or the packet arrived late)."""

    frame: MediaFrame
    playout_time: float

    @property
    def sequence_number(self) -> int:
        return self.frame.sequence_number

    @property
    def rtp_timestamp(self) -> int:
        return self.frame.rtp_timestamp


@attrs.frozen(slots=True)
class VideoFrame:
    """One complete video frame: its packets in sequence order, payloads not joined (the rtc layer
    depayloads per packet)."""

    packets: tuple[MediaFrame, ...]
    rtp_timestamp: int
    keyframe: bool
    playout_time: float

    @property
    def first_sequence(self) -> int:
        return self.packets[0].sequence_number

    @property
    def last_sequence(self) -> int:
        return self.packets[-1].sequence_number


@attrs.frozen(slots=True)
class Gap:
    """``count`` packets from ``first_sequence`` (16-bit, may wrap) were lost: conceal them.

    ``rtp_timestamp`` and ``playout_time`` are the first missing packet's, estimated from its
    neighbours; consecutive missing packets follow at the stream's packet duration.

    ``recovery`` (audio only) is the packet right after the gap's *last* missing packet when it was
    already in the buffer at that packet's playout time: Opus in-band FEC (LBRR) in it may carry the
    last lost frame, so the decoder can recover that one instead of concealing it (the others are
    concealed; FEC covers one frame). The buffer never waits for it, so it costs no delay, and it is
    still emitted afterwards as an ordinary :class:`AudioPacket`.
    """

    frame_type: FrameType
    first_sequence: int
    count: int
    rtp_timestamp: int
    playout_time: float
    recovery: MediaFrame | None = None


@attrs.frozen(slots=True)
class KeyframeRequest:
    """Ask the sender for a keyframe (RTCP PLI); emitted once per loss episode on video."""

    reason: KeyframeReason


_ACCEPTED = InsertResult.ACCEPTED
_DUPLICATE = InsertResult.DUPLICATE
_LATE = InsertResult.LATE

PlayoutItem: TypeAlias = AudioPacket | VideoFrame | Gap | KeyframeRequest

# attrs' frozen __init__ goes through object.__setattr__ once per field, which costs more than the
# rest of the hot path; writing the slots through their descriptors builds the identical object
# (tests/test_jitter_buffer.py checks equality with the regular constructor).
_new = object.__new__
_set_audio_frame = AudioPacket.__dict__["frame"].__set__
_set_audio_time = AudioPacket.__dict__["playout_time"].__set__


_set_video_packets = VideoFrame.__dict__["packets"].__set__
_set_video_ts = VideoFrame.__dict__["rtp_timestamp"].__set__
_set_video_key = VideoFrame.__dict__["keyframe"].__set__
_set_video_time = VideoFrame.__dict__["playout_time"].__set__


def _audio_packet(frame: MediaFrame, playout_time: float) -> AudioPacket:
    item: AudioPacket = _new(AudioPacket)
    _set_audio_frame(item, frame)
    _set_audio_time(item, playout_time)
    return item


_set_gap_type = Gap.__dict__["frame_type"].__set__
_set_gap_first = Gap.__dict__["first_sequence"].__set__
_set_gap_count = Gap.__dict__["count"].__set__
_set_gap_ts = Gap.__dict__["rtp_timestamp"].__set__
_set_gap_time = Gap.__dict__["playout_time"].__set__
_set_gap_recovery = Gap.__dict__["recovery"].__set__
_AUDIO = FrameType.AUDIO


def _gap(
    frame_type: FrameType,
    first_sequence: int,
    count: int,
    rtp_timestamp: int,
    playout_time: float,
    recovery: MediaFrame | None = None,
) -> Gap:
    item: Gap = _new(Gap)
    _set_gap_type(item, frame_type)
    _set_gap_first(item, first_sequence)
    _set_gap_count(item, count)
    _set_gap_ts(item, rtp_timestamp)
    _set_gap_time(item, playout_time)
    _set_gap_recovery(item, recovery)
    return item


def _video_frame(
    packets: tuple[MediaFrame, ...], rtp_timestamp: int, keyframe: bool, playout_time: float
) -> VideoFrame:
    item: VideoFrame = _new(VideoFrame)
    _set_video_packets(item, packets)
    _set_video_ts(item, rtp_timestamp)
    _set_video_key(item, keyframe)
    _set_video_time(item, playout_time)
    return item


_ms = 0.001


class JitterBuffer(StatefulModel):
    """Reorders, times and repairs one RTP stream (audio at 48 kHz or video at 90 kHz).

    ``target_delay_ms`` is the starting target (TransportConfig.jitter_buffer_size_ms); the target then
    adapts within ``[min_delay_ms, max_delay_ms]`` (both within 50-200 ms, the configurable range).
    ``is_keyframe`` (video) is asked about the first packet of a frame; see
    :func:`meshrtc.media.keyframe.is_keyframe_for`. Without it video cannot tell keyframes: after a
    loss it resumes at the next complete frame and every frame reports ``keyframe=False``.

    Counters are cumulative over the buffer's life (``reset()`` keeps them).
    """

    state: JitterState
    first_packet = trigger_stub()
    target_reached = trigger_stub()
    underrun = trigger_stub()
    overrun = trigger_stub()
    adjust = trigger_stub()
    retarget = trigger_stub()
    settled = trigger_stub()
    flush = trigger_stub()

    def __init__(
        self,
        kind: FrameType,
        *,
        target_delay_ms: float = 50.0,
        min_delay_ms: float = 50.0,
        max_delay_ms: float = 200.0,
        late_after_ms: float = 200.0,
        is_keyframe: Callable[[MediaFrame], bool] | None = None,
    ) -> None:
        if not isinstance(kind, FrameType):
            raise ConfigError("kind", kind, "FrameType.AUDIO or FrameType.VIDEO")
        if not 50.0 <= min_delay_ms <= max_delay_ms <= 200.0:
            raise ConfigError(
                "min_delay_ms/max_delay_ms",
                (min_delay_ms, max_delay_ms),
                "50 <= min_delay_ms <= max_delay_ms <= 200",
            )
        if not min_delay_ms <= target_delay_ms <= max_delay_ms:
            raise ConfigError(
                "target_delay_ms", target_delay_ms, f"{min_delay_ms}-{max_delay_ms} (min-max)"
            )
        if not late_after_ms > 0:
            raise ConfigError("late_after_ms", late_after_ms, "> 0")
        self.kind = kind
        self._video = kind is FrameType.VIDEO
        self._rate = CLOCK_RATES[kind]
        self._inv_rate = 1.0 / self._rate
        self._min = min_delay_ms * _ms
        self._max = max_delay_ms * _ms
        self._initial_target = target_delay_ms * _ms
        self._late_after = late_after_ms * _ms
        self._is_keyframe = is_keyframe
        self._default_step = round(_DEFAULT_STEP_S[kind] * self._rate)
        self._max_step = round(_MAX_STEP_S[kind] * self._rate)
        # Ticks of media the buffer may hold before the precise overrun check runs.
        self._span_limit = math.ceil(self._max * self._rate)

        self._packets: dict[int, MediaFrame] = {}
        self._lost: set[int] = set()
        self._loss_count = 0
        self._recovery_count = 0
        self._late_count = 0
        self._duplicate_count = 0
        self._discarded_count = 0
        self._overrun_drop_count = 0
        self._dropped_frame_count = 0
        self._keyframe_requests = 0
        self._clear()
        JITTER_BUFFER_MACHINE.build(self)

    def _clear(self) -> None:
        """Forget the stream (not the counters): the state a new stream starts from."""
        self._packets.clear()
        self._lost.clear()
        # Audio: arrival time of each packet whose predecessor was missing when it came (the only
        # packets that can be a Gap's recovery), to tell whether it was here at the gap's playout.
        self._arrivals: dict[int, float] = {}
        self._highest: int | None = None  # highest extended sequence accepted; None: Empty
        self._head = 0  # extended sequence of the next packet to play
        self._start = 0  # extended sequence of the first packet (nothing before it is expected)
        self._ts_hi = 0  # highest extended RTP timestamp accepted
        self._last_ts = 0  # extended timestamp of the packet (video: frame) just before the head
        self._step = self._default_step  # measured packet (video: frame) duration, in ticks
        self._step_candidate = 0
        self._target = self._initial_target
        self._base = 0.0  # base transit: min(arrival - ts/rate) over the last one or two windows
        self._win_min = math.inf  # minimum transit in the current window
        self._win_end = 0.0
        self._offset = 0.0  # playout time = ts/rate + offset; offset - base = playout delay
        self._prev_transit = 0.0
        self._jitter = 0.0  # RFC 3550 interarrival jitter, seconds
        self._next_adjust = 0.0
        self._due: float | None = None  # cached next_due(); valid while _due_valid
        self._due_valid = False
        self._stop_seq = 0  # an accepted packet below this can change next_due()
        self._blocked = False  # video: the due head frame is incomplete and nothing follows it
        self._start_known = True  # video: the head packet is known to start a frame
        self._dropped_ts = -1  # video: RTP timestamp of the last frame dropped
        self._await_key = self._video and self._is_keyframe is not None
        self._await_reason = KeyframeReason.STARTUP
        self._key_requested = False
        self._request_pending = False  # video: a keyframe request to emit at the next pop

    # --- read-only view ----------------------------------------------------------------------

    @property
    def keyframe_outstanding(self) -> bool:
        """Video: a :class:`KeyframeRequest` went out and no keyframe has come since; every frame
        until one is dropped. The request is handed out once per episode, so whoever sends the
        PLIs keeps asking while this holds (rtc/receiver.py): a keyframe that was itself lost or
        refused as late would otherwise leave video frozen."""
        return self._await_key and self._key_requested

    @property
    def head_sequence(self) -> int | None:
        """The 16-bit sequence number of the next packet to play (None before any packet)."""
        return None if self._highest is None else self._head & _M16

    @property
    def last_received_sequence(self) -> int | None:
        """The highest 16-bit sequence number accepted."""
        return None if self._highest is None else self._highest & _M16

    @property
    def packet_loss_count(self) -> int:
        """Sequence numbers the playout point passed without ever receiving them."""
        return self._loss_count

    @property
    def recovery_offered_count(self) -> int:
        """Lost audio packets handed out with a recovery packet (``Gap.recovery``): the decoder can
        rebuild them from the next packet's in-band FEC (when the sender put FEC data in it)."""
        return self._recovery_count

    @property
    def unrecoverable_loss_count(self) -> int:
        """Lost packets with no recovery possible: concealed (audio Gaps without ``recovery``, or
        not the last of their Gap), dropped by an overrun, or video.
        ``packet_loss_count == recovery_offered_count + unrecoverable_loss_count``."""
        return self._loss_count - self._recovery_count

    @property
    def late_arrival_count(self) -> int:
        """Packets discarded on arrival: behind the playout point, or older than late_after_ms."""
        return self._late_count

    @property
    def duplicate_count(self) -> int:
        return self._duplicate_count

    @property
    def discarded_count(self) -> int:
        """Packets accepted but never played: overrun drops and video frames that could not be
        decoded (incomplete, or not a keyframe while waiting for one)."""
        return self._discarded_count

    @property
    def overrun_drop_count(self) -> int:
        """Packets dropped to recover from overruns (part of ``discarded_count``)."""
        return self._overrun_drop_count

    @property
    def dropped_frame_count(self) -> int:
        """Video frames discarded (incomplete, or not a keyframe while waiting for one)."""
        return self._dropped_frame_count

    @property
    def keyframe_requests(self) -> int:
        return self._keyframe_requests

    @property
    def playout_delay_ms(self) -> float:
        """The delay currently applied over the fastest observed path: a packet that arrives with the
        base transit plays this long after it arrived. Converges to ``target_delay_ms``."""
        if self._highest is None:
            return 0.0
        return (self._offset - self._base) * 1000.0

    @property
    def target_delay_ms(self) -> float:
        """The current adaptive target, within [min_delay_ms, max_delay_ms]."""
        return self._target * 1000.0

    @property
    def min_delay_ms(self) -> float:
        return self._min * 1000.0

    @property
    def max_delay_ms(self) -> float:
        return self._max * 1000.0

    @property
    def jitter_ms(self) -> float:
        """RFC 3550 interarrival jitter of the accepted and late packets, in milliseconds."""
        return self._jitter * 1000.0

    @property
    def buffered_packets(self) -> int:
        return len(self._packets)

    @property
    def buffer_size_ms(self) -> float:
        """The target delay under the name TransportConfig uses (``jitter_buffer_size_ms``)."""
        return self._target * 1000.0

    @property
    def frames(self) -> list[MediaFrame]:
        """The buffered packets in sequence order (a copy; for inspection, not the hot path)."""
        return [frame for _, frame in sorted(self._packets.items())]

    def expected_playout(self, sequence_number: int) -> float | None:
        """When the packet ``sequence_number`` (16-bit) would play if it arrived now (monotonic
        seconds, an estimate: the newest timestamp minus the packets between at the measured packet
        duration), or None when the buffer has no stream yet or that packet is behind the head
        (played or declared lost): whether a retransmission can still make it (media/nack.py)."""
        highest = self._highest
        if highest is None:
            return None
        ext = highest + seq_diff(sequence_number, highest)
        if ext < self._head:
            return None
        return (self._ts_hi - (highest - ext) * self._step) * self._inv_rate + self._offset

    # --- input -------------------------------------------------------------------------------

    def insert(self, frame: MediaFrame, now: float) -> InsertResult:
        """Take one received packet (``now``: its arrival, monotonic seconds)."""
        highest = self._highest
        if highest is None:
            return self._first(frame, now)
        ext = highest + seq_diff(frame.sequence_number, highest)
        if ext < self._head:
            return self._behind(ext, frame, now)
        packets = self._packets
        if ext in packets:
            self._duplicate_count += 1
            return _DUPLICATE
        ts_hi = self._ts_hi
        ets = ts_hi + ts_diff(frame.rtp_timestamp, ts_hi)
        transit = now - ets * self._inv_rate
        d = transit - self._prev_transit
        self._prev_transit = transit
        if d < 0.0:
            d = -d
        if d > self._late_after:  # a path change or a sender discontinuity, not jitter
            d = self._late_after
        self._jitter += (d - self._jitter) * 0.0625
        base = self._base
        if transit < base:
            self._base = self._win_min = transit
            if self.state is BUFFERING:
                self._offset = transit + self._target
                self._due_valid = False
        else:
            if transit - base > self._late_after:
                # Refused, but still a sample of the path: if every packet is this slow now (the
                # path got much slower), the next window makes it the base and they fit again.
                if transit < self._win_min:
                    self._win_min = transit
                if now >= self._win_end:  # nothing may be popping while everything is refused
                    self._roll_window(now)
                self._late_count += 1
                return _LATE
            if transit < self._win_min:
                self._win_min = transit
            if transit > self._offset:
                self._reanchor(transit)
        packets[ext] = frame
        if ext != highest + 1 and not self._video and ext - 1 not in packets:
            # After a hole (loss, reordering): this packet may become a Gap's recovery.
            arrivals = self._arrivals
            arrivals[ext] = now
            if len(arrivals) > _ARRIVAL_MEMORY:
                self._prune_arrivals()
        if ext > highest:
            self._highest = ext
        if ext < self._stop_seq:
            # It may be the next thing due (or unblock an incomplete video frame).
            self._due_valid = self._blocked = False
        if ets > ts_hi:
            self._ts_hi = ets
            if ets - self._last_ts > self._span_limit:
                self._check_overrun(now)
        return _ACCEPTED

    def _first(self, frame: MediaFrame, now: float) -> InsertResult:
        ext = frame.sequence_number + _SEQ_CYCLE
        ets = frame.rtp_timestamp
        self._highest = self._head = self._start = ext
        self._ts_hi = ets
        self._last_ts = ets - self._step
        transit = now - ets * self._inv_rate
        self._base = self._win_min = self._prev_transit = transit
        self._win_end = now + _BASE_WINDOW
        self._offset = transit + self._target
        self._next_adjust = now + _ADJUST_INTERVAL
        self._packets[ext] = frame
        if not self._video:
            self._arrivals[ext] = now  # an earlier packet may still come first (_behind)
        self._due_valid = False
        self.first_packet()
        log.debug("%s jitter buffer: first packet seq=%d", self.kind.value, frame.sequence_number)
        return InsertResult.ACCEPTED

    def _behind(self, ext: int, frame: MediaFrame, now: float) -> InsertResult:
        """A packet below the head: an early packet reordered at the very start, or late/duplicate."""
        if self.state is BUFFERING and self._head - ext <= _MAX_START_REORDER:
            # Nothing has played yet: start from this earlier packet instead (unless it is too old).
            ets = self._ts_hi + ts_diff(frame.rtp_timestamp, self._ts_hi)
            if now - ets * self._inv_rate - self._base > self._late_after:
                self._late_count += 1
                return InsertResult.LATE
            self._head = self._start = ext
            self._last_ts = ets - self._step
            self._due_valid = False
            return self.insert(frame, now)
        if ext in self._lost or ext < self._start or ext < self._head - _LOST_MEMORY:
            self._late_count += 1
            return InsertResult.LATE
        self._duplicate_count += 1
        return InsertResult.DUPLICATE

    def _prune_arrivals(self) -> None:
        """Forget the arrivals of packets the playout point has passed (they can no longer be a
        recovery)."""
        head = self._head
        self._arrivals = {s: t for s, t in self._arrivals.items() if s >= head}

    def _reanchor(self, transit: float) -> None:
        """A packet arrived after its own playout time while the head still waited for it: the path
        got slower (or this is a jitter spike). Take its transit as the new base; the playout delay
        then climbs back to the target one step at a time (or drops back if later packets are
        faster again)."""
        self._base = self._win_min = transit
        if self.state is BUFFERING:
            self._offset = transit + self._target
        self._due_valid = False
        self._next_adjust = 0.0  # start moving the delay at the next pop

    def _check_overrun(self, now: float) -> None:
        """The newest packet is far ahead of the playout point: overrun if the buffered media spans
        more than the maximum delay, or if the newest packet would wait longer than that (its
        timestamp jumped ahead of real time: a sender discontinuity)."""
        packets = self._packets
        if not packets:
            return
        last_ts = self._last_ts
        oldest = packets.get(self._head) or packets[min(packets)]
        oldest_ts = last_ts + ts_diff(oldest.rtp_timestamp, last_ts)
        limit = self._max + 0.001
        span = (self._ts_hi - oldest_ts) * self._inv_rate
        wait = self._ts_hi * self._inv_rate + self._offset - now
        if span > limit or wait > limit:
            self._handle_overrun(now)

    def _handle_overrun(self, now: float) -> None:
        """Drop the oldest media down to the target delay, keep the rest on time."""
        self.overrun()
        packets = self._packets
        lost = self._lost
        cutoff = self._ts_hi - self._target * self._rate
        head = self._head
        last_ts = self._last_ts
        highest = self._highest
        assert highest is not None
        prev: MediaFrame | None = None
        dropped = lost_now = 0
        while head <= highest:
            p = packets.get(head)
            if p is None:
                lost.add(head)
                lost_now += 1
                prev = None
                head += 1
                continue
            ets = last_ts + ts_diff(p.rtp_timestamp, last_ts)
            if ets >= cutoff and (
                not self._video or prev is None or prev.rtp_timestamp != p.rtp_timestamp
            ):
                break
            del packets[head]
            dropped += 1
            last_ts = ets
            prev = p
            head += 1
        self._head = head
        self._last_ts = last_ts
        self._loss_count += lost_now
        self._discarded_count += dropped
        self._overrun_drop_count += dropped
        first = packets.get(head)
        if first is None:
            # Nothing buffered is on the new timeline: the sender's RTP timestamps jumped (a
            # restart), so no packet can be kept on time. Start over from the next packet; the
            # counters (including what was just dropped) are kept.
            log.debug("%s jitter buffer: sender timeline jumped, restarting", self.kind.value)
            self.reset()
            return
        first_ts = last_ts + ts_diff(first.rtp_timestamp, last_ts)
        # The oldest packet kept plays now at the latest (a stalled consumer finds it overdue).
        self._offset = min(self._offset, now - first_ts * self._inv_rate)
        self._due_valid = False
        if self._video:
            self._start_known = prev is not None and prev.rtp_timestamp != first.rtp_timestamp
            self._begin_episode(KeyframeReason.OVERRUN, None)
        log.debug(
            "%s jitter buffer overrun: dropped %d packets (%d never arrived)",
            self.kind.value,
            dropped,
            lost_now,
        )
        self._recovered(now)

    # --- output ------------------------------------------------------------------------------

    def pop(self, now: float) -> list[PlayoutItem]:
        """Everything due at ``now``, in sequence order (call at :meth:`next_due`, or any time).

        Afterwards :meth:`next_due` is None or later than ``now`` until the next insert.
        """
        state = self.state
        if state is EMPTY or state is BUFFERING:
            return self._pop_slow(now)
        # Adjust first, so that what is emitted below already uses the new delay.
        if now >= self._next_adjust:
            self._adjust(now)
        out: list[PlayoutItem] = []
        if self._video:
            self._pop_video(now, out)
            return out
        # The hot path: audio packets present at the head, played in order.
        packets = self._packets
        head = self._head
        last_ts = self._last_ts
        offset = self._offset
        inv = self._inv_rate
        played = False
        p = packets.get(head)
        while p is not None:
            ets = last_ts + ts_diff(p.rtp_timestamp, last_ts)
            due = ets * inv + offset
            if due > now:
                break
            del packets[head]
            item = _new(AudioPacket)
            _set_audio_frame(item, p)
            _set_audio_time(item, due)
            out.append(item)
            head += 1
            last_ts = ets
            played = True
            p = packets.get(head)
        else:
            # The head is missing: loss, or the buffer ran dry.
            self._head = head
            self._last_ts = last_ts
            self._pop_audio(now, out, played)
            return out
        # Stopped at a packet that is not due yet; it also measures the packet duration.
        step = ets - last_ts
        if step != self._step:
            self._measure_step(step)
        self._head = head
        self._last_ts = last_ts
        self._stop_seq = head
        self._due = due
        self._due_valid = True
        if played and state is UNDERRUN:
            self._recovered(now)
        return out

    def _pop_slow(self, now: float) -> list[PlayoutItem]:
        out: list[PlayoutItem] = []
        if self.state is EMPTY:
            return out
        due = self._compute_due()  # Buffering: when the first packet plays
        if due is None or due > now:
            return out
        self.target_reached()
        return self.pop(now)

    def _pop_audio(self, now: float, out: list[PlayoutItem], played: bool) -> None:
        """The general audio loop: packets, gaps, and the dry buffer."""
        packets = self._packets
        head = self._head
        last_ts = self._last_ts
        offset = self._offset
        inv = self._inv_rate
        due: float | None = None
        while True:
            p = packets.get(head)
            if p is not None:
                ets = last_ts + ts_diff(p.rtp_timestamp, last_ts)
                due = ets * inv + offset
                step = ets - last_ts
                if step != self._step:
                    self._measure_step(step)
                if due > now:
                    self._stop_seq = head
                    break
                del packets[head]
                out.append(_audio_packet(p, due))
                head += 1
                last_ts = ets
                played = True
                continue
            if not packets:
                due = None
                self._stop_seq = 1 << 62
                break
            # The head is missing and later packets are here (all buffered keys are above the
            # head): declare lost what is due.
            n = head + 1
            nxt = packets.get(n)
            if nxt is None:
                n = min(packets)
                nxt = packets[n]
            missing = n - head
            n_ts = last_ts + ts_diff(nxt.rtp_timestamp, last_ts)
            # The missing packets sit just before the next one at the usual packet duration (so a
            # talk spurt whose first packets were lost after a silence is placed right); when that
            # would overlap the packet before the gap, spread them evenly instead.
            gap_step: float = self._step
            first_ts: float = n_ts - missing * gap_step
            if first_ts <= last_ts:
                gap_step = (n_ts - last_ts) / (missing + 1)
                first_ts = last_ts + gap_step
            due = first_ts * inv + offset
            if due > now:
                self._stop_seq = n
                break
            count = missing
            if gap_step > 0:
                count = min(missing, int((now - due) / (gap_step * inv)) + 1)
            recovery: MediaFrame | None = None
            if count == missing:
                # The gap ends right before the packet here: it can carry the last lost frame's FEC
                # if it was here when that frame was due (a late pop must not wait for it later).
                last_due = (first_ts + (count - 1) * gap_step) * inv + offset
                if self._arrivals.get(n, math.inf) <= last_due:
                    recovery = nxt
                    self._recovery_count += 1
            out.append(_gap(_AUDIO, head & _M16, count, round(first_ts) & _M32, due, recovery))
            self._declare_lost(head, head + count)
            head += count
            last_ts = round(first_ts + (count - 1) * gap_step)
        self._head = head
        self._last_ts = last_ts
        state = self.state
        if played and state is UNDERRUN:
            self._recovered(now)
            state = self.state
        if due is None and (state is STABLE or state is ADJUSTING):
            # Dry: the next packet is expected one packet duration after the last one.
            expected = (last_ts + self._step) * inv + offset
            if now >= expected:
                self.underrun()
            else:
                due = expected
        self._due = due
        self._due_valid = True

    def _measure_step(self, step: int) -> None:
        """Adopt a new packet (frame) duration once two consecutive steps agree, so a single
        timestamp jump (a pause, DTX) is not mistaken for one."""
        if step == self._step_candidate and 0 < step <= self._max_step:
            self._step = step
        self._step_candidate = step

    def _next_present(self, head: int) -> int:
        """The lowest buffered extended sequence (the head is missing, the buffer holds some)."""
        packets = self._packets
        return head + 1 if head + 1 in packets else min(packets)

    def _declare_lost(self, first: int, end: int) -> None:
        lost = self._lost
        if end - first == 1:
            lost.add(first)
        else:
            lost.update(range(first, end))
        self._loss_count += end - first
        if len(lost) > 2 * _LOST_MEMORY:
            floor = end - _LOST_MEMORY
            self._lost = {s for s in lost if s >= floor}

    def _pop_video(self, now: float, out: list[PlayoutItem]) -> None:
        packets = self._packets
        inv = self._inv_rate
        offset = self._offset
        played = starved = False
        due: float | None = None
        if self._request_pending:
            self._request_pending = False
            self._emit_request(out)
        while True:
            head = self._head
            last_ts = self._last_ts
            p = packets.get(head)
            if p is None:
                if not packets:
                    due = None
                    self._stop_seq = 1 << 62
                    break
                n = self._next_present(head)
                nxt = packets[n]
                n_ts = last_ts + ts_diff(nxt.rtp_timestamp, last_ts)
                due = n_ts * inv + offset
                if due > now:
                    self._stop_seq = n
                    break
                # Whole frames (or the start of one) never arrived.
                self._declare_lost(head, n)
                self._head = n
                self._start_known = False
                self._begin_episode(KeyframeReason.LOSS, out)
                starved = True
                continue
            ets = last_ts + ts_diff(p.rtp_timestamp, last_ts)
            due = ets * inv + offset
            if due > now:
                self._stop_seq = head
                break
            ts = p.rtp_timestamp
            s = head
            complete = False
            while True:
                q = packets.get(s)
                if q is None:
                    break
                if q.rtp_timestamp != ts:
                    complete = True
                    break
                s += 1
                if q.marker_bit:
                    complete = True
                    break
            if not complete:
                highest = self._highest
                assert highest is not None
                if highest < s:
                    # Due but incomplete, and nothing after it yet: the missing packets may still
                    # come; nothing to do until something arrives.
                    self._blocked = starved = True
                    self._stop_seq = 1 << 62
                    due = None
                    break
                # The frame can never complete: drop what we have, declare the hole lost.
                self._drop(head, s, ts)
                n = self._next_present(s)
                self._declare_lost(s, n)
                self._head = n
                self._last_ts = ets
                self._start_known = False
                self._begin_episode(KeyframeReason.LOSS, out)
                starved = True
                continue
            detector = self._is_keyframe
            key = detector is not None and detector(p)
            step = ets - last_ts
            if step != self._step:
                self._measure_step(step)
            self._head = s
            self._last_ts = ets
            if self._await_key and not (key or (detector is None and self._start_known)):
                # Waiting for a keyframe: this frame cannot be decoded.
                self._drop(head, s, ts)
                self._start_known = starved = True
                if not self._key_requested:
                    self._emit_request(out)
                continue
            if not self._start_known and not key:
                # A complete tail of a frame whose start was lost (no detector to vouch for it).
                self._drop(head, s, ts)
                self._start_known = starved = True
                continue
            self._await_key = self._key_requested = False
            self._start_known = True
            out.append(_video_frame(tuple(map(packets.pop, range(head, s))), ts, key, due))
            played = True
            starved = False
        state = self.state
        if played and not starved and state is UNDERRUN:
            self._recovered(now)
            state = self.state
        if state is STABLE or state is ADJUSTING:
            if starved:
                # Something was due and nothing playable came out of it.
                self.underrun()
            elif due is None:
                expected = (self._last_ts + self._step) * inv + offset
                if now >= expected:
                    self.underrun()
                else:
                    due = expected
        self._due = due
        self._due_valid = True

    def _drop(self, first: int, end: int, ts: int) -> None:
        """Discard packets [first, end) of the frame with timestamp ``ts``."""
        packets = self._packets
        for s in range(first, end):
            del packets[s]
        self._discarded_count += end - first
        if ts != self._dropped_ts:  # the tail of a frame already dropped is not another frame
            self._dropped_frame_count += 1
            self._dropped_ts = ts

    def _begin_episode(self, reason: KeyframeReason, out: list[PlayoutItem] | None) -> None:
        """Video lost its references: wait for a keyframe and ask for one (once per episode)."""
        self._await_key = True
        if self._key_requested:
            return
        self._await_reason = reason
        if out is None:
            self._request_pending = True
        else:
            self._emit_request(out)

    def _emit_request(self, out: list[PlayoutItem]) -> None:
        self._key_requested = True
        self._request_pending = False
        self._keyframe_requests += 1
        out.append(KeyframeRequest(self._await_reason))
        log.debug("video jitter buffer: keyframe request (%s)", self._await_reason.value)

    def _recovered(self, now: float) -> None:
        """Underrun or Overrun is over: Adjusting, and Stable at once if the delay is on target."""
        self.adjust()
        if abs(self._target - (self._offset - self._base)) <= _STABLE_TOLERANCE:
            self.settled()
        else:
            self._next_adjust = now + _ADJUST_INTERVAL

    def _adjust(self, now: float) -> None:
        """Every _ADJUST_INTERVAL: follow the base window, retarget from jitter, move the delay."""
        state = self.state
        self._next_adjust = now + (
            _ADJUST_INTERVAL if state is ADJUSTING else _STABLE_CHECK_INTERVAL
        )
        if now >= self._win_end:
            self._roll_window(now)
        desired = _JITTER_MULTIPLIER * self._jitter
        if desired < self._min:
            desired = self._min
        elif desired > self._max:
            desired = self._max
        target = self._target
        if not -_RETARGET_HYSTERESIS < desired - target < _RETARGET_HYSTERESIS:
            self._target = target = desired
        error = target - (self._offset - self._base)
        if state is STABLE or state is UNDERRUN:
            if -_STABLE_TOLERANCE <= error <= _STABLE_TOLERANCE:
                return
            # Off target. In Underrun too: more delay is what ends an underrun after the path got
            # slower, so the delay keeps moving while the buffer waits.
            if state is STABLE:
                self.retarget()
            self._next_adjust = now + _ADJUST_INTERVAL
        elif state is not ADJUSTING:
            return
        # At most one packet (frame) duration per move: audio is never cut or stretched by more.
        limit = min(self._step, self._default_step) * self._inv_rate
        move = min(max(error, -limit), limit)
        self._offset += move
        self._due_valid = False
        if abs(error - move) < 1e-6 and state is ADJUSTING:
            self.settled()

    def _roll_window(self, now: float) -> None:
        self._win_end = now + _BASE_WINDOW
        if self._win_min != math.inf:
            # The base rises to the last window's minimum (clock drift, a slower path); until the
            # next roll, a faster packet lowers it at once (insert).
            self._base = self._win_min
            self._win_min = math.inf
            self._due_valid = False

    def next_due(self) -> float | None:
        """When :meth:`pop` can next produce something (or notice an underrun); None: nothing can
        happen before the next insert. May be in the past (pop now)."""
        if self._due_valid:
            return self._due
        return self._compute_due()

    def _compute_due(self) -> float | None:
        if self._highest is None:
            return None
        packets = self._packets
        last_ts = self._last_ts
        inv = self._inv_rate
        p = packets.get(self._head)
        if p is not None:
            if self._blocked:
                return None
            ets = last_ts + ts_diff(p.rtp_timestamp, last_ts)
            return ets * inv + self._offset
        if packets:
            n = self._next_present(self._head)
            nxt = packets[n]
            n_ts = last_ts + ts_diff(nxt.rtp_timestamp, last_ts)
            if self._video:
                return n_ts * inv + self._offset
            missing = n - self._head
            first_ts: float = n_ts - missing * self._step
            if first_ts <= last_ts:
                first_ts = last_ts + (n_ts - last_ts) / (missing + 1)
            return first_ts * inv + self._offset
        state = self.state
        if state is STABLE or state is ADJUSTING:
            return (last_ts + self._step) * inv + self._offset
        return None

    # --- control -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to Empty: the stream restarts (reconnection, SSRC change). Counters are kept."""
        self.fire_if_taken("flush")  # from every state but Empty
        self._clear()

    def __repr__(self) -> str:
        return (
            f"<JitterBuffer {self.kind.value} {self.state} head={self.head_sequence} "
            f"buffered={len(self._packets)} delay={self.playout_delay_ms:.1f}ms "
            f"target={self.target_delay_ms:.1f}ms lost={self._loss_count}>"
        )
