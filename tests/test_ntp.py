from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.media.ntp import (
    NtpMappingError,
    RtpToNtpEstimator,
    SrUpdate,
    ntp_seconds_to_unix,
)
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET, SenderReport

NTP_BASE = 3_900_000_000.0  # seconds since 1900, in 2023


def to_ntp64(seconds: float) -> int:
    whole = int(seconds)
    return (whole << 32) | round((seconds - whole) * 2**32)


def sr(ntp_seconds: float, rtp: int, received_at: float, ssrc: int = 1) -> SenderReport:
    return SenderReport(ssrc, to_ntp64(ntp_seconds), rtp & 0xFFFFFFFF, 0, 0, received_at)


def test_single_report_maps_at_the_nominal_rate() -> None:
    est = RtpToNtpEstimator(90_000)
    assert not est.has_mapping
    with pytest.raises(NtpMappingError):
        est.to_ntp(0)
    assert est.update(sr(NTP_BASE, 1_000, received_at=10.0)) is SrUpdate.ACCEPTED
    assert est.to_ntp(1_000 + 90_000) == pytest.approx(NTP_BASE + 1.0, abs=1e-6)
    assert est.to_ntp(1_000 - 45_000) == pytest.approx(NTP_BASE - 0.5, abs=1e-6)
    assert est.to_rtp(NTP_BASE + 2.0) == 1_000 + 180_000


def test_fit_recovers_a_sender_rtp_clock_that_disagrees_with_its_ntp_clock() -> None:
    # The sender's RTP clock runs 300 ppm fast against its own NTP clock.
    rate = 48_000 * (1 + 300e-6)
    est = RtpToNtpEstimator(48_000)
    for i in range(8):
        est.update(sr(NTP_BASE + 5 * i, round(7 + rate * 5 * i), received_at=5.0 * i))
    assert est.rtp_rate == pytest.approx(rate, rel=1e-7)
    # 40 s past the newest SR, a nominal-rate mapping would be 12 ms off; the fit is not.
    rtp = round(7 + rate * 75)
    assert est.to_ntp(rtp) == pytest.approx(NTP_BASE + 75, abs=1e-4)


def test_fit_averages_sender_timestamping_noise() -> None:
    """Alternating ±1 ms in the SR's NTP field: the newest SR alone would be 1 ms off, the fit is not."""
    est = RtpToNtpEstimator(90_000)
    for i in range(8):
        noise = 0.001 if i % 2 else -0.001
        est.update(sr(NTP_BASE + 5 * i + noise, 90_000 * 5 * i, received_at=5.0 * i))
    newest_rtp = 90_000 * 5 * 7
    assert abs(est.to_ntp(newest_rtp) - (NTP_BASE + 35)) < 0.0005  # least squares: 1/3 ms
    assert est.report_count == 8
    est.update(sr(NTP_BASE + 40, 90_000 * 40, received_at=40.0))
    assert est.report_count == 8, "the fit holds at most max_reports SRs"


def test_maps_across_32_bit_wraparound() -> None:
    est = RtpToNtpEstimator(90_000)
    start = 0xFFFFFFFF - 2 * 90_000  # wraps two seconds after the first SR
    for i in range(4):
        est.update(sr(NTP_BASE + i, start + 90_000 * i, received_at=float(i)))
    assert est.report_count == 4
    assert est.to_ntp((start + 90_000 * 3 + 45_000) & 0xFFFFFFFF) == pytest.approx(
        NTP_BASE + 3.5, abs=1e-6
    )
    # A packet from before the wrap, sent before the newest SR, still maps to the past.
    assert est.to_ntp(start + 45_000) == pytest.approx(NTP_BASE + 0.5, abs=1e-6)


def test_duplicates_and_backward_reports_are_refused() -> None:
    est = RtpToNtpEstimator(48_000)
    assert est.update(sr(NTP_BASE, 0, 0.0)) is SrUpdate.ACCEPTED
    assert est.update(sr(NTP_BASE, 0, 0.1)) is SrUpdate.DUPLICATE
    assert est.update(sr(NTP_BASE + 1, 48_000, 1.0)) is SrUpdate.ACCEPTED
    assert est.update(sr(NTP_BASE + 0.5, 24_000, 1.5)) is SrUpdate.INVALID
    assert est.update(sr(NTP_BASE - 3, 48_000 * 5, 2.0)) is SrUpdate.INVALID
    assert est.report_count == 2


def test_three_disagreeing_reports_restart_the_mapping() -> None:
    """An RTP discontinuity (new random origin) is accepted after three confirming SRs."""
    est = RtpToNtpEstimator(48_000)
    for i in range(3):
        est.update(sr(NTP_BASE + i, 48_000 * i, float(i)))
    new_origin = 123_456_789
    outcomes = [
        est.update(sr(NTP_BASE + 3 + i, new_origin + 48_000 * i, 3.0 + i)) for i in range(3)
    ]
    assert outcomes == [SrUpdate.INVALID, SrUpdate.INVALID, SrUpdate.RESET]
    assert est.report_count == 1
    assert est.to_ntp(new_origin + 2 * 48_000 + 48_000) == pytest.approx(NTP_BASE + 6, abs=1e-6)


def test_staleness_is_strictly_more_than_five_seconds() -> None:
    est = RtpToNtpEstimator(48_000)
    assert est.is_stale(0.0)
    assert est.age(0.0) is None
    est.update(sr(NTP_BASE, 0, received_at=100.0))
    assert not est.is_stale(105.0)
    assert est.is_stale(105.001)
    assert est.age(103.0) == pytest.approx(3.0)
    est.reset()
    assert est.is_stale(100.0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(NtpMappingError):
        RtpToNtpEstimator(0)
    with pytest.raises(NtpMappingError):
        RtpToNtpEstimator(48_000, max_reports=1)


def test_unix_conversion() -> None:
    assert ntp_seconds_to_unix(NTP_EPOCH_OFFSET + 1.5) == 1.5


@given(
    origin=st.integers(0, 0xFFFFFFFF),
    ppm=st.floats(-1000, 1000),
    gaps=st.lists(st.floats(0.5, 10.0), min_size=1, max_size=25),
    probe=st.floats(-30.0, 30.0),
    clock_rate=st.sampled_from([48_000, 90_000]),
)
def test_noise_free_reports_map_exactly(
    origin: int, ppm: float, gaps: list[float], probe: float, clock_rate: int
) -> None:
    """Whatever the origin (wraps included), rate and SR spacing, the mapping is the true line."""
    rate = clock_rate * (1 + ppm * 1e-6)
    est = RtpToNtpEstimator(clock_rate)
    t = 0.0
    for gap in [0.0, *gaps]:
        t += gap
        assert est.update(sr(NTP_BASE + t, origin + round(rate * t), t)) is SrUpdate.ACCEPTED
    when = t + probe
    rtp = (origin + round(rate * when)) & 0xFFFFFFFF
    # Tolerance: RTP rounding (half a tick per SR) tilts the fitted slope by up to a tick over the SR
    # span; extrapolating ``probe`` seconds past the newest SR scales that error.
    tolerance = (2.0 + (abs(probe) + t) / t) / clock_rate + 1e-6
    assert est.to_ntp(rtp) - NTP_BASE == pytest.approx(when, abs=tolerance)
    back = est.to_rtp(NTP_BASE + when)
    assert abs(((back - rtp + 2**31) % 2**32) - 2**31) <= tolerance * clock_rate + 1
