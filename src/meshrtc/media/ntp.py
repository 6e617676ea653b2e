"""NTP↔RTP mapping per stream, fitted through the last few consistent RTCP Sender Reports.

Each SR pairs one instant on the sender's RTP clock with the same instant on its NTP wall clock.
Both readings are taken by the sender, so the pair carries no network jitter: the only noise is the
sender's own timestamping. Like libwebrtc's ``RtpToNtpEstimator`` we fit a straight line through the
last few pairs instead of trusting only the newest one, and the fitted slope absorbs a steady
disagreement between the sender's RTP and NTP clocks (a few hundred ppm at most; the slope is kept
within ±0.5 % of nominal, so two noisy SRs a second apart cannot tilt the line).

Outliers. Real senders are not that tidy: GStreamer's first SR is often 0.2-0.7 s off the line its
later SRs agree on, an SR can be odd on its own, and a sender can step its clocks (a restart, a new
RTP origin). So an SR joins the fit only if it lies within ``OUTLIER_THRESHOLD`` (100 ms, plus the
slope's uncertainty over the distance) of the current line and after its newest point; otherwise it
is ``INVALID`` and held as a *suspect*. The mapping is never moved by a suspect alone. The majority
of the recent consistent SRs wins: when the suspects that agree with the newest one (one line, in
order) outnumber the SRs in the fit, or ``MAX_CONSECUTIVE_INVALID`` = 3 of them arrived in a row
(since the fit's newest SR: a stepped clock), the mapping restarts from those suspects (``RESET``).
A suspect stays held while it competes with the fit, i.e. until the fit's oldest SR is newer than
it; an SR that fits does *not* clear it. (It used to: then a first SR 0.5 s off plus one odd SR
0.5 s off in the same direction, with a good SR between them, made a two-SR fit of the wrong line
that cleared the good SR, and the true line needed three more SRs to win back, though it held the
majority from the fourth SR on.) So a first SR off the line is replaced once the good SRs that
agree with each other outnumber it and any odd SR on its line; a single odd SR never moves a
mapping; a stepped clock is followed after three SRs. With two disagreeing SRs nobody can tell
which is wrong, so the mapping is *confirmed* (:attr:`confirmed`) only once it holds two consistent
SRs; the SyncManager aligns nothing on an unconfirmed mapping.

A mapping is *stale* once its newest SR arrived more than ``stale_after`` seconds ago (spec invariant
5: mappings must be refreshed at least every 5 s). A stale mapping still extrapolates; the state of
the owner (``SyncManager``) says it is stale so nobody mistakes it for a fresh one.
"""

from __future__ import annotations

import enum
import logging
from collections import deque

import attrs

from meshrtc.errors import MeshRtcError
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET, SenderReport
from meshrtc.media.seq import ts_diff

__all__ = [
    "DEFAULT_MAX_REPORTS",
    "DEFAULT_STALE_AFTER",
    "NtpMappingError",
    "RtpToNtpEstimator",
    "SrUpdate",
    "ntp_seconds_to_unix",
]

log = logging.getLogger(__name__)

#: How many SRs the fit goes through. libwebrtc uses 20 at its ~1 s RTCP interval; at meshrtc's 5 s
#: default interval 8 reports span 35-40 s, long enough to average timestamping noise and short enough
#: that a real rate change shows up within a minute.
DEFAULT_MAX_REPORTS = 8
#: The rule: an NTP/RTP mapping must be refreshed at least every 5 s.
DEFAULT_STALE_AFTER = 5.0
#: The fitted slope stays within this fraction of the nominal clock rate: real RTP/NTP clock
#: disagreements are hundreds of ppm; more is timestamping noise over a short span.
MAX_RATE_DEVIATION = 0.005
#: An SR further than this (seconds) off the current line is an outlier: senders' timestamping noise
#: is a frame or two (tens of ms); the first-SR errors seen in the field are 0.2-0.7 s.
OUTLIER_THRESHOLD = 0.1
#: This many consistent suspects in a row (no SR fitted between them) replace a mapping of any
#: length: the sender stepped its clocks (libwebrtc uses the same count). Fewer replace a mapping
#: they outnumber.
MAX_CONSECUTIVE_INVALID = 3


class NtpMappingError(MeshRtcError):
    """The mapping was asked for before any Sender Report arrived, or given a bad clock rate."""


class SrUpdate(enum.Enum):
    """What :meth:`RtpToNtpEstimator.update` did with a Sender Report."""

    #: Added to the fit.
    ACCEPTED = "accepted"
    #: Same NTP or RTP timestamp as a report already held (RTCP compound retransmitted): ignored.
    DUPLICATE = "duplicate"
    #: Disagrees with the current mapping (an outlier, out of order, or a jump not yet confirmed):
    #: not used; held as a suspect until later SRs confirm or clear it.
    INVALID = "invalid"
    #: The mapping was discarded and restarted from the newest suspects, which agree with each other
    #: and outnumber the SRs they contradict (a first SR off the line, a sender clock step, an RTP
    #: timestamp discontinuity). Whoever derives state from the old mapping must reset too.
    RESET = "reset"


def ntp_seconds_to_unix(ntp_seconds: float) -> float:
    """NTP-epoch seconds (1900) -> Unix-epoch seconds (1970)."""
    return ntp_seconds - NTP_EPOCH_OFFSET


@attrs.frozen(slots=True)
class _Point:
    rtp: int  # extended (unwrapped) RTP timestamp
    ntp: float  # sender wall clock, seconds since 1900
    received_at: float  # local monotonic seconds
    index: int  # arrival order among this estimator's SRs (which suspects still compete)


class RtpToNtpEstimator:
    """The sender-wall-clock time of any RTP timestamp of one stream.

    Fit ``ntp = ntp0 + slope * (rtp - rtp0)`` by least squares over the last ``max_reports``
    consistent SRs; with a single SR the slope is ``1 / clock_rate``. RTP timestamps are placed on
    the extended timeline nearest to the newest SR, so any timestamp within ±2^31 ticks of it (6.6 h
    of video, 12 h of audio) maps correctly across 32-bit wraparound. Outliers: module docstring.
    """

    def __init__(
        self,
        clock_rate: int,
        *,
        max_reports: int = DEFAULT_MAX_REPORTS,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        if clock_rate <= 0:
            raise NtpMappingError(f"clock_rate must be positive, got {clock_rate}")
        if max_reports < 2:
            raise NtpMappingError(f"max_reports must be at least 2, got {max_reports}")
        self.clock_rate = clock_rate
        self.max_reports = max_reports
        self.stale_after = stale_after
        self._points: deque[_Point] = deque(maxlen=max_reports)
        #: SRs that disagreed with the mapping and arrived after the fit's oldest SR, oldest first
        #: (at most ``max_reports``).
        self._suspects: list[_Point] = []
        self._arrivals = 0
        #: Outcome counts since construction (for logs and tests).
        self.outliers = 0
        self.resets = 0
        # Fitted line, relative to the newest point: ntp = _ntp_ref + _slope * (ext - _rtp_ref).
        self._rtp_ref = 0
        self._ntp_ref = 0.0
        self._slope = 1.0 / clock_rate

    # --- input ---------------------------------------------------------------------------------

    def update(self, sr: SenderReport) -> SrUpdate:
        """Add one Sender Report of this stream; see :class:`SrUpdate` for the outcomes."""
        ntp = sr.ntp_seconds
        if not self._points:
            self._points.append(_Point(sr.rtp_timestamp, ntp, sr.received_at, self._arrivals))
            self._arrivals += 1
            self._refit()
            return SrUpdate.ACCEPTED
        last = self._points[-1]
        ext = last.rtp + ts_diff(sr.rtp_timestamp, last.rtp & 0xFFFFFFFF)
        # A repeat of an SR held (RTCP compound retransmitted) carries both of its readings. One that
        # shares only one of them contradicts it: it goes through the outlier rules below.
        if any(p.ntp == ntp and p.rtp == ext for p in (*self._points, *self._suspects)):
            return SrUpdate.DUPLICATE
        point = _Point(ext, ntp, sr.received_at, self._arrivals)
        self._arrivals += 1
        if self._fits(point):
            self._points.append(point)
            self._refit()
            # Suspects from before the fit's oldest SR no longer compete with it; the others stay.
            oldest = self._points[0].index
            self._suspects = [p for p in self._suspects if p.index > oldest]
            return SrUpdate.ACCEPTED
        self.outliers += 1
        self._suspects.append(point)
        del self._suspects[: -self.max_reports]
        # The suspects that agree with the newest one (an odd SR in between does not count).
        agreeing = [p for p in self._suspects[:-1] if _agree(p, point, self.clock_rate)]
        agreeing.append(point)
        in_a_row = sum(p.index > last.index for p in agreeing)
        if len(agreeing) <= len(self._points) and in_a_row < MAX_CONSECUTIVE_INVALID:
            log.debug(
                "ignoring SR %.3f s off the mapping (ssrc=%d)", self._residual(point), sr.ssrc
            )
            return SrUpdate.INVALID
        log.info(
            "RTP/NTP mapping of ssrc=%d restarted from %d consistent SRs %.3f s off the old line",
            sr.ssrc,
            len(agreeing),
            self._residual(point),
        )
        self.reset()
        self.resets += 1
        # Re-extend them on their own timeline (they may lie on the far side of a wrap).
        self._points.extend(
            _Point(
                point.rtp + ts_diff(p.rtp & 0xFFFFFFFF, point.rtp & 0xFFFFFFFF),
                p.ntp,
                p.received_at,
                p.index,
            )
            for p in agreeing
        )
        self._refit()
        return SrUpdate.RESET

    def reset(self) -> None:
        """Forget every report (reconnection, new SSRC)."""
        self._points.clear()
        self._suspects = []
        self._slope = 1.0 / self.clock_rate

    def _residual(self, point: _Point) -> float:
        """How far (seconds) ``point`` lies off the current line."""
        return point.ntp - (self._ntp_ref + self._slope * (point.rtp - self._rtp_ref))

    def _fits(self, point: _Point) -> bool:
        """After the newest SR, within the outlier threshold of the line through the others, and
        consistent with most of them one by one.

        The last condition matters for a fit of a few SRs off the true line: two SRs 0.2 s off,
        8 s apart, tilt the line to the slope clamp, and the tilted line passes within the threshold
        of later true SRs, which would then join it and blend both lines into the mapping.
        """
        last = self._points[-1]
        if point.ntp <= last.ntp or point.rtp <= last.rtp:
            return False
        tolerance = OUTLIER_THRESHOLD + MAX_RATE_DEVIATION * (point.ntp - last.ntp)
        if abs(self._residual(point)) > tolerance:
            return False
        agreeing = sum(_agree(p, point, self.clock_rate) for p in self._points)
        return 2 * agreeing > len(self._points)

    def _refit(self) -> None:
        newest = self._points[-1]
        self._rtp_ref = newest.rtp
        self._ntp_ref = newest.ntp
        n = len(self._points)
        if n < 2:
            self._slope = 1.0 / self.clock_rate
            return
        xs = [float(p.rtp - newest.rtp) for p in self._points]
        ys = [p.ntp - newest.ntp for p in self._points]
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        nominal = 1.0 / self.clock_rate
        # Clamp the slope (two noisy SRs a second apart must not tilt the line by percents), then
        # put the line through the centroid, evaluated at the newest RTP timestamp.
        slope = min(
            nominal * (1 + MAX_RATE_DEVIATION), max(nominal * (1 - MAX_RATE_DEVIATION), sxy / sxx)
        )
        self._ntp_ref = newest.ntp + (my + slope * (0.0 - mx))
        self._slope = slope

    # --- queries -------------------------------------------------------------------------------

    @property
    def has_mapping(self) -> bool:
        return bool(self._points)

    @property
    def report_count(self) -> int:
        """SRs in the fit (suspects not included)."""
        return len(self._points)

    @property
    def confirmed(self) -> bool:
        """Two or more consistent SRs: one alone could be the first-SR outlier (module docstring)."""
        return len(self._points) >= 2

    @property
    def suspect_count(self) -> int:
        """SRs held back that still compete with the fit (newer than its oldest SR)."""
        return len(self._suspects)

    @property
    def last_report_at(self) -> float | None:
        """Local monotonic arrival time of the newest SR in the fit."""
        return self._points[-1].received_at if self._points else None

    @property
    def rtp_rate(self) -> float:
        """Fitted RTP ticks per sender-wall-clock second (nominal until two SRs arrived)."""
        return 1.0 / self._slope

    def age(self, now: float) -> float | None:
        """Seconds since the newest SR arrived, or None without a mapping."""
        last = self.last_report_at
        return None if last is None else now - last

    def is_stale(self, now: float) -> bool:
        """No mapping, or the newest SR is older than ``stale_after`` seconds."""
        age = self.age(now)
        return age is None or age > self.stale_after

    def extend(self, rtp_timestamp: int) -> int:
        """The extended RTP timestamp nearest to the newest SR."""
        if not self._points:
            raise NtpMappingError("no Sender Report yet: RTP timestamps cannot be mapped")
        return self._rtp_ref + ts_diff(rtp_timestamp, self._rtp_ref & 0xFFFFFFFF)

    def to_ntp(self, rtp_timestamp: int) -> float:
        """Sender wall-clock time (NTP seconds since 1900) at which ``rtp_timestamp`` was sampled."""
        ext = self.extend(rtp_timestamp)
        return self._ntp_ref + self._slope * (ext - self._rtp_ref)

    def to_rtp(self, ntp_seconds: float) -> int:
        """The 32-bit RTP timestamp this stream had at sender wall-clock ``ntp_seconds``."""
        if not self._points:
            raise NtpMappingError("no Sender Report yet: RTP timestamps cannot be mapped")
        ext = self._rtp_ref + round((ntp_seconds - self._ntp_ref) / self._slope)
        return ext & 0xFFFFFFFF


def _agree(earlier: _Point, later: _Point, clock_rate: int) -> bool:
    """Two SRs on one line at (about) the nominal rate, in order."""
    d_ntp = later.ntp - earlier.ntp
    d_rtp = later.rtp - earlier.rtp
    if d_ntp <= 0 or d_rtp <= 0:
        return False
    tolerance = OUTLIER_THRESHOLD + MAX_RATE_DEVIATION * d_ntp
    return abs(d_ntp - d_rtp / clock_rate) <= tolerance
