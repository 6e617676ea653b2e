from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import assume, example, given

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
    assert est.report_count == 3, "the mapping restarts from the three SRs that confirmed it"
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


# --- outliers (a first SR off the line, odd SRs, stepped clocks) -------------------------------


@pytest.mark.parametrize("error", [-0.7, -0.2, 0.2, 0.7])
def test_a_first_report_off_the_line_is_replaced_by_the_next_two(error: float) -> None:
    est = RtpToNtpEstimator(48_000)
    assert est.update(sr(NTP_BASE + error, 0, 0.0)) is SrUpdate.ACCEPTED
    assert not est.confirmed, "one SR alone could be the outlier"
    assert est.update(sr(NTP_BASE + 1, 48_000, 1.0)) is SrUpdate.INVALID
    assert est.to_ntp(48_000) == pytest.approx(NTP_BASE + 1 + error, abs=1e-6), "not moved yet"
    assert est.update(sr(NTP_BASE + 2, 96_000, 2.0)) is SrUpdate.RESET
    assert est.confirmed
    assert est.report_count == 2
    assert est.to_ntp(48_000 * 10) == pytest.approx(NTP_BASE + 10, abs=1e-6)
    assert est.update(sr(NTP_BASE + 3, 48_000 * 3, 3.0)) is SrUpdate.ACCEPTED


def test_one_odd_report_never_moves_the_mapping() -> None:
    est = RtpToNtpEstimator(90_000)
    for i in range(4):
        assert est.update(sr(NTP_BASE + i, 90_000 * i, float(i))) is SrUpdate.ACCEPTED
    before = est.to_ntp(90_000 * 10)
    assert est.update(sr(NTP_BASE + 4 + 0.35, 90_000 * 4, 4.0)) is SrUpdate.INVALID
    assert est.to_ntp(90_000 * 10) == before
    assert est.suspect_count == 1
    # The next good SR does not clear the suspect (it competes until the fit moves past it), but
    # one odd SR is outnumbered by the fit and never moves it.
    assert est.update(sr(NTP_BASE + 5, 90_000 * 5, 5.0)) is SrUpdate.ACCEPTED
    assert est.suspect_count == 1
    assert est.update(sr(NTP_BASE + 6 - 0.4, 90_000 * 6, 6.0)) is SrUpdate.INVALID
    assert est.update(sr(NTP_BASE + 7, 90_000 * 7, 7.0)) is SrUpdate.ACCEPTED
    assert est.to_ntp(90_000 * 10) == pytest.approx(NTP_BASE + 10, abs=1e-6)
    assert est.outliers == 2
    assert est.resets == 0


def test_two_unrelated_outliers_in_a_row_are_not_a_step() -> None:
    est = RtpToNtpEstimator(48_000)
    for i in range(3):
        est.update(sr(NTP_BASE + i, 48_000 * i, float(i)))
    assert est.update(sr(NTP_BASE + 3 + 0.5, 48_000 * 3, 3.0)) is SrUpdate.INVALID
    assert est.update(sr(NTP_BASE + 4 - 0.4, 48_000 * 4, 4.0)) is SrUpdate.INVALID
    assert est.update(sr(NTP_BASE + 5 + 0.3, 48_000 * 5, 5.0)) is SrUpdate.INVALID
    assert est.resets == 0
    assert est.to_ntp(48_000 * 6) == pytest.approx(NTP_BASE + 6, abs=1e-6)


def test_a_stepped_sender_clock_is_followed_after_three_consistent_reports() -> None:
    est = RtpToNtpEstimator(48_000)
    for i in range(5):
        est.update(sr(NTP_BASE + i, 48_000 * i, float(i)))
    step = -1.5  # the sender's NTP clock stepped back (an NTP correction)
    outcomes = [est.update(sr(NTP_BASE + step + i, 48_000 * i, float(i))) for i in range(5, 8)]
    assert outcomes == [SrUpdate.INVALID, SrUpdate.INVALID, SrUpdate.RESET]
    assert est.to_ntp(48_000 * 9) == pytest.approx(NTP_BASE + step + 9, abs=1e-6)


@given(
    origin=st.integers(0, 0xFFFFFFFF),
    first_error=st.one_of(st.floats(-0.7, -0.2), st.floats(0.2, 0.7)),
    odd=st.lists(st.tuples(st.integers(2, 20), st.floats(0.15, 2.0), st.booleans()), max_size=6),
    interval=st.floats(0.5, 5.0),
    clock_rate=st.sampled_from([48_000, 90_000]),
)
# The failures at 478480b: a first SR 0.5 s late silenced the next good SR as a duplicate and an odd
# SR on its line cleared the good suspect; two SRs 0.16-0.22 s off tilted the fit to the clamp.
@example(origin=0, first_error=0.5, odd=[(2, 0.5, True)], interval=0.5, clock_rate=48_000)
@example(origin=0, first_error=0.21875, odd=[(2, 0.15625, True)], interval=4.0, clock_rate=48_000)
def test_outliers_never_survive_in_the_mapping(
    origin: int,
    first_error: float,
    odd: list[tuple[int, float, bool]],
    interval: float,
    clock_rate: int,
) -> None:
    """A first SR off by 0.2-0.7 s and isolated odd SRs (never two in a row): from the sixth SR on
    (three good ones among the first five), the mapping is the true line and stays there."""
    odd_at = {i: (size if positive else -size) for i, size, positive in odd}

    def error_at(i: int) -> float:
        return first_error if i == 0 else odd_at.get(i, 0.0) if (i - 1) not in odd_at else 0.0

    # The premise: three good SRs among the first five. Odd SRs at 2 and 4 on the first SR's line
    # would make SRs 0, 2, 4 one line and 1, 3, 5 another at the sixth SR: nobody can tell then.
    assume(sum(error_at(i) == 0.0 for i in range(5)) >= 3)
    est = RtpToNtpEstimator(clock_rate)
    truth_probe = 25 * interval
    for i in range(22):
        t = i * interval
        error = error_at(i)
        est.update(sr(NTP_BASE + t + error, origin + round(clock_rate * t), t))
        if i >= 5:
            probe = (origin + round(clock_rate * truth_probe)) & 0xFFFFFFFF
            assert est.to_ntp(probe) - NTP_BASE == pytest.approx(truth_probe, abs=1e-3)
    assert est.confirmed
