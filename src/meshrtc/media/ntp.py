"""NTP↔RTP mapping per stream, fitted through the last few RTCP Sender Reports.

Each SR pairs one instant on the sender's RTP clock with the same instant on its NTP wall clock.
Both readings are taken by the sender, so the pair carries no network jitter: the only noise is the
sender's own timestamping. Like libwebrtc's ``RtpToNtpEstimator`` we fit a straight line through the
last few pairs instead of trusting only the newest one, so a single odd SR (a sender that stamps RTP
from its capture clock and NTP from its system clock, which may disagree by hundreds of ppm) cannot
move the mapping by itself, and the fitted slope absorbs a steady disagreement between the two clocks.

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
#: Spec invariant 5: an NTP/RTP mapping must be refreshed at least every 5 s.
DEFAULT_STALE_AFTER = 5.0
#: A new SR whose implied RTP rate (against the previous SR) is off the nominal clock rate by more than
#: this fraction is not a clock that drifts but one that jumped.
MAX_RATE_DEVIATION = 0.05
#: After this many consecutive SRs that disagree with the mapping, the sender has restarted its
#: clocks: start over from the newest SR (libwebrtc uses the same count).
MAX_CONSECUTIVE_INVALID = 3


class NtpMappingError(MeshRtcError):
    """The mapping was asked for before any Sender Report arrived, or given a bad clock rate."""


class SrUpdate(enum.Enum):
    """What :meth:`RtpToNtpEstimator.update` did with a Sender Report."""

    #: Added to the fit.
    ACCEPTED = "accepted"
    #: Same NTP or RTP timestamp as a report already held (RTCP compound retransmitted): ignored.
    DUPLICATE = "duplicate"
    #: Disagrees with the current mapping (went backwards or jumped): ignored for now.
    INVALID = "invalid"
    #: The mapping was discarded and restarted from this report (a sender clock jump or an RTP
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


class RtpToNtpEstimator:
    """The sender-wall-clock time of any RTP timestamp of one stream.

    Fit ``ntp = ntp0 + slope * (rtp - rtp0)`` by least squares over the last ``max_reports`` SRs; with
    a single SR the slope is ``1 / clock_rate``. RTP timestamps are placed on the extended timeline
    nearest to the newest SR, so any timestamp within ±2^31 ticks of it (6.6 h of video, 12 h of
    audio) maps correctly across 32-bit wraparound.
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
        self._invalid_in_a_row = 0
        # Fitted line, relative to the newest point: ntp = _ntp_ref + _slope * (ext - _rtp_ref).
        self._rtp_ref = 0
        self._ntp_ref = 0.0
        self._slope = 1.0 / clock_rate

    # --- input ---------------------------------------------------------------------------------

    def update(self, sr: SenderReport) -> SrUpdate:
        """Add one Sender Report of this stream; see :class:`SrUpdate` for the outcomes."""
        ntp = sr.ntp_seconds
        if not self._points:
            self._points.append(_Point(sr.rtp_timestamp, ntp, sr.received_at))
            self._refit()
            return SrUpdate.ACCEPTED
        last = self._points[-1]
        ext = last.rtp + ts_diff(sr.rtp_timestamp, last.rtp & 0xFFFFFFFF)
        if any(p.ntp == ntp or p.rtp == ext for p in self._points):
            return SrUpdate.DUPLICATE
        if self._consistent(last, ext, ntp):
            self._invalid_in_a_row = 0
            self._points.append(_Point(ext, ntp, sr.received_at))
            self._refit()
            return SrUpdate.ACCEPTED
        self._invalid_in_a_row += 1
        if self._invalid_in_a_row < MAX_CONSECUTIVE_INVALID:
            log.debug("ignoring SR that disagrees with the mapping (ssrc=%d)", sr.ssrc)
            return SrUpdate.INVALID
        log.info("RTP/NTP mapping of ssrc=%d restarted: sender clock jumped", sr.ssrc)
        self.reset()
        self._points.append(_Point(sr.rtp_timestamp, ntp, sr.received_at))
        self._refit()
        return SrUpdate.RESET

    def reset(self) -> None:
        """Forget every report (reconnection, new SSRC)."""
        self._points.clear()
        self._invalid_in_a_row = 0
        self._slope = 1.0 / self.clock_rate

    def _consistent(self, last: _Point, ext: int, ntp: float) -> bool:
        d_ntp = ntp - last.ntp
        d_rtp = ext - last.rtp
        if d_ntp <= 0 or d_rtp <= 0:
            return False
        implied = d_rtp / d_ntp
        return abs(implied / self.clock_rate - 1.0) <= MAX_RATE_DEVIATION

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
        slope = sxy / sxx
        if abs(slope * self.clock_rate - 1.0) > MAX_RATE_DEVIATION:
            # Points that each passed the pairwise check can still fit badly in pathological
            # sequences; fall back to the nominal rate through the newest point.
            slope = 1.0 / self.clock_rate
            self._ntp_ref = newest.ntp
        else:
            # Evaluate the fitted line at the newest RTP timestamp, so the reference is on the line.
            self._ntp_ref = newest.ntp + (my + slope * (0.0 - mx))
        self._slope = slope

    # --- queries -------------------------------------------------------------------------------

    @property
    def has_mapping(self) -> bool:
        return bool(self._points)

    @property
    def report_count(self) -> int:
        return len(self._points)

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
