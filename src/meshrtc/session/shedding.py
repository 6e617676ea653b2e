"""LoadShedder: when the transport's loop falls behind, shed video work so audio keeps its budget.

Audio is real time with a small budget (a mix leaves MixMinus within its 60 ms window or goes out
late; the outgoing track drops it 40 ms past its timestamp), while a picture that is coarser, less
frequent or frozen for a while is tolerable. So when the process is short of CPU, video work goes
first, in this order (docs/transport.md, "Shedding load"):

1. :attr:`ShedLevel.VIDEO_BITRATE`: the video encoders' bitrate (``video_bitrate_kbps`` of the
   data model's ConnectionQualityMetrics) is halved: cheaper encodes and less SRTP and UDP work.
2. :attr:`ShedLevel.VIDEO_FRAMERATE`: the outgoing ``video_framerate`` is halved as well.
3. :attr:`ShedLevel.VIDEO_OFF`: no video goes into the pipeline (the router drops members' pictures
   on arrival, counted) and none is encoded: the last picture stays on screen.

Audio itself is never shed: what protects it from a backlog is that every queue on its path is
bounded and drops the oldest (stale) media with a counter (the router's ``stale_dropped``, the
peers' real-time send queues).

What is measured is the loop's lateness: a task that wants to run every 20 ms slot (the audio grid)
and notes how late it woke (``session/load_monitor.py``). Lateness is the interpreter's backlog as
the audio path sees it: every task that had to run first (decode, mix, the asyncio thread holding the
GIL) delays it.

The rule works on one-second windows of slots. A window is *overloaded* when at least
``overload_fraction`` (20 %) of its slots were more than ``late_after`` (10 ms, half a slot) late;
*calm* when no tick was more than ``calm_below`` (4 ms) late; otherwise neither. A tick that comes
``n`` whole slots late stands for the ``n`` slots the loop missed as well (the monitor skips them
rather than ticking in a burst), all of them late: so a 300 ms stall in a second (15 of 65 slots)
overloads its window, a lone 100 ms one (5 of 55) does not; one DTLS handshake's pause is not
sustained lateness. ``raise_after`` (1) overloaded windows in a row raise the level one step;
``lower_after`` (5) calm windows in a row lower it one step. Hysteresis is in both the thresholds
(late vs calm) and the times (1 s up, 5 s down), so a load near the edge does not make the picture
flap; a window that is neither resets both runs, so only *sustained* lateness or calm moves the
level.

Sans-IO: the caller passes each tick's time and lateness (seconds, its monotonic clock); nothing
here sleeps or reads a clock.
"""

from __future__ import annotations

import enum
import logging
import math

import attrs

__all__ = ["SHED_PLANS", "LoadShedder", "ShedLevel", "ShedPlan", "ShedStatistics"]

log = logging.getLogger(__name__)


class ShedLevel(enum.IntEnum):
    """How much work is shed, in the order it is shed (module docstring)."""

    NONE = 0
    VIDEO_BITRATE = 1
    VIDEO_FRAMERATE = 2
    VIDEO_OFF = 3


@attrs.frozen(slots=True)
class ShedPlan:
    """What a level asks of the video path: scales of the configured bitrate and frame rate, and
    whether video flows at all."""

    video_bitrate_scale: float
    video_framerate_scale: float
    video: bool


#: The plan of each level; a level keeps what the levels below it shed.
SHED_PLANS: dict[ShedLevel, ShedPlan] = {
    ShedLevel.NONE: ShedPlan(1.0, 1.0, True),
    ShedLevel.VIDEO_BITRATE: ShedPlan(0.5, 1.0, True),
    ShedLevel.VIDEO_FRAMERATE: ShedPlan(0.5, 0.5, True),
    ShedLevel.VIDEO_OFF: ShedPlan(0.5, 0.5, False),
}


@attrs.frozen(slots=True)
class ShedStatistics:
    """A snapshot of the shedder (the shedder alone changes its counters)."""

    level: ShedLevel
    #: Slots observed (a tick that came n whole slots late counts for the n it stands for too),
    #: and how many of them were more than ``late_after`` late.
    ticks: int
    late_ticks: int
    max_lateness: float
    raises: int
    lowers: int
    #: Seconds spent at each level so far (by the ticks' clock).
    seconds_at: dict[ShedLevel, float]


@attrs.define
class LoadShedder:
    """Raise the shed level under sustained lateness, lower it after sustained calm (module
    docstring)."""

    window: float = 1.0
    late_after: float = 0.010
    calm_below: float = 0.004
    #: The slot the ticks are meant to come at (the monitor's period).
    period: float = 0.020
    overload_fraction: float = 0.2
    raise_after: int = 1
    lower_after: int = 5
    max_level: ShedLevel = ShedLevel.VIDEO_OFF

    level: ShedLevel = attrs.field(default=ShedLevel.NONE, init=False)
    _window_end: float | None = attrs.field(default=None, init=False)
    _window_ticks: int = attrs.field(default=0, init=False)
    _window_late: int = attrs.field(default=0, init=False)
    _window_max: float = attrs.field(default=0.0, init=False)
    _overloaded_run: int = attrs.field(default=0, init=False)
    _calm_run: int = attrs.field(default=0, init=False)
    _since: float | None = attrs.field(default=None, init=False)
    _ticks: int = attrs.field(default=0, init=False)
    _late_ticks: int = attrs.field(default=0, init=False)
    _max_lateness: float = attrs.field(default=0.0, init=False)
    _raises: int = attrs.field(default=0, init=False)
    _lowers: int = attrs.field(default=0, init=False)
    _seconds_at: dict[ShedLevel, float] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if not (self.window > 0 and self.period > 0 and 0 <= self.calm_below <= self.late_after):
            raise ValueError("window and period must be > 0 and 0 <= calm_below <= late_after")
        if not (
            0 < self.overload_fraction <= 1 and self.raise_after >= 1 and self.lower_after >= 1
        ):
            raise ValueError("overload_fraction in (0, 1], raise_after and lower_after >= 1")

    @property
    def plan(self) -> ShedPlan:
        return SHED_PLANS[self.level]

    def observe(self, now: float, lateness: float) -> ShedLevel | None:
        """One tick that was due ``lateness`` seconds before ``now``; returns the new level when this
        tick closed a window that changed it, else None."""
        if not math.isfinite(lateness) or lateness < 0:
            lateness = 0.0
        changed: ShedLevel | None = None
        if self._window_end is None:
            self._window_end = now + self.window
            self._since = now
        elif now >= self._window_end:
            changed = self._close_window(now)
        # This slot and the whole slots the loop missed before it (module docstring), and how many
        # of them were more than ``late_after`` late.
        slots = 1 + int(lateness // self.period)
        late = min(slots, max(0, math.ceil((lateness - self.late_after) / self.period)))
        self._ticks += slots
        self._window_ticks += slots
        self._late_ticks += late
        self._window_late += late
        self._window_max = max(self._window_max, lateness)
        self._max_lateness = max(self._max_lateness, lateness)
        return changed

    def _close_window(self, now: float) -> ShedLevel | None:
        assert self._window_end is not None
        ticks, late, worst = self._window_ticks, self._window_late, self._window_max
        # A stall longer than a window leaves no ticks in the windows it spans: the next window
        # starts at this tick (no run of empty windows counted as calm).
        self._window_end = max(self._window_end + self.window, now + self.window / 2)
        self._window_ticks = self._window_late = 0
        self._window_max = 0.0
        self._account(now)
        if ticks and late >= self.overload_fraction * ticks:
            self._overloaded_run += 1
            self._calm_run = 0
            if self._overloaded_run >= self.raise_after and self.level < self.max_level:
                self._overloaded_run = 0
                return self._set(ShedLevel(self.level + 1), worst, late, ticks)
        elif ticks and worst <= self.calm_below:
            self._calm_run += 1
            self._overloaded_run = 0
            if self._calm_run >= self.lower_after and self.level > ShedLevel.NONE:
                self._calm_run = 0
                return self._set(ShedLevel(self.level - 1), worst, late, ticks)
        else:
            self._overloaded_run = self._calm_run = 0
        return None

    def _set(self, level: ShedLevel, worst: float, late: int, ticks: int) -> ShedLevel:
        if level > self.level:
            self._raises += 1
        else:
            self._lowers += 1
        log.info(
            "load shedding %s -> %s (last window: %d of %d ticks over %.0f ms late, worst %.0f ms)",
            self.level.name,
            level.name,
            late,
            ticks,
            self.late_after * 1000,
            worst * 1000,
        )
        self.level = level
        return level

    def _account(self, now: float) -> None:
        if self._since is not None:
            self._seconds_at[self.level] = self._seconds_at.get(self.level, 0.0) + now - self._since
        self._since = now

    def statistics(self) -> ShedStatistics:
        return ShedStatistics(
            level=self.level,
            ticks=self._ticks,
            late_ticks=self._late_ticks,
            max_lateness=self._max_lateness,
            raises=self._raises,
            lowers=self._lowers,
            seconds_at=dict(self._seconds_at),
        )
