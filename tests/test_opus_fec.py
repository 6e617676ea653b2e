"""The sans-IO FEC policy (media/opus_fec.py): receiver reports about our audio → FEC setting."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.media.opus_fec import FecPolicy, FecPolicyError, FecSetting
from meshrtc.media.quality import (
    LOSS_REPORTS_KEPT,
    OPUS_FEC_MIN_KBPS,
    BitrateAction,
    BitrateController,
    ConnectionQuality,
)
from meshrtc.media.rtcp import ReceptionReport

#: Runs of equal reports (seconds since the previous report, reported loss %, how many):
#: aiortc reports every 0.5-1.5 s; runs make clean periods and bursts likely.
reports = st.lists(
    st.tuples(
        st.floats(min_value=0.2, max_value=3.0),
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=100.0)),
        st.integers(min_value=1, max_value=25),
    ),
    max_size=12,
).map(lambda runs: [(gap, loss) for gap, loss, n in runs for _ in range(n)])


def run(
    policy: FecPolicy, series: list[tuple[float, float]], start: float = 0.0
) -> list[tuple[float, FecSetting]]:
    at, out = start, []
    for gap, loss in series:
        at += gap
        out.append((at, policy.on_report(at, loss).setting))
    return out


def test_clean_path_keeps_fec_off() -> None:
    policy = FecPolicy()
    assert all(s == FecSetting() for _, s in run(policy, [(1.0, 0.0)] * 100))


def test_ten_percent_loss_turns_fec_on_at_the_first_report_and_expects_the_smoothed_loss() -> None:
    policy = FecPolicy()
    decision = policy.on_report(1.0, 10.0)
    assert decision.toggled
    assert decision.setting == FecSetting(True, 3)  # 0.3 x 10%
    settings = run(policy, [(1.0, 10.0)] * 15, start=1.0)
    assert settings[-1][1] == FecSetting(True, 10)  # converges on what is reported


def test_one_lost_packet_is_not_enough_but_two_intervals_are() -> None:
    policy = FecPolicy()
    assert not policy.on_report(1.0, 2.0).setting.inband_fec  # 1 of 50 packets: 0.6%
    assert policy.on_report(2.0, 2.0).setting.inband_fec  # 1.02%


def test_fec_goes_off_after_a_clean_period_and_not_before() -> None:
    policy = FecPolicy(clean_s=10.0)
    run(policy, [(1.0, 10.0)] * 5)  # on, smoothed ~8.3%
    settings = run(policy, [(1.0, 0.0)] * 40, start=5.0)
    # Decays under 0.5% after 8 clean reports (t=13), then 10 s clean: off at t=23.
    first_off = next(at for at, s in settings if not s.inband_fec)
    assert first_off == pytest.approx(5.0 + 8 + 10)
    assert all(s.inband_fec and s.packet_loss_percent >= 1 for at, s in settings if at < first_off)


def test_expected_loss_is_capped() -> None:
    policy = FecPolicy(max_percent=25)
    settings = run(policy, [(1.0, 100.0)] * 20)
    assert settings[-1][1] == FecSetting(True, 25)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(FecPolicyError):
        FecPolicy(on_percent=0.5, off_percent=1.0)
    with pytest.raises(FecPolicyError):
        FecPolicy(smoothing=1.5)
    with pytest.raises(FecPolicyError):
        FecPolicy(hold_s=0)


@given(st.lists(st.floats(min_value=0.2, max_value=3.0), max_size=120))
def test_all_zero_loss_never_turns_fec_on(gaps: list[float]) -> None:
    policy = FecPolicy()
    assert all(s == FecSetting() for _, s in run(policy, [(g, 0.0) for g in gaps]))


@given(reports, st.floats(min_value=0.5, max_value=10.0))
def test_never_switches_faster_than_its_hold_time(
    series: list[tuple[float, float]], hold: float
) -> None:
    policy = FecPolicy(hold_s=hold, clean_s=hold)
    switches, previous = [], False
    for at, setting in run(policy, series):
        if setting.inband_fec != previous:
            switches.append(at)
            previous = setting.inband_fec
    assert all(b - a >= hold for a, b in itertools.pairwise(switches))


@given(reports)
def test_setting_is_consistent(series: list[tuple[float, float]]) -> None:
    policy = FecPolicy()
    for _, setting in run(policy, series):
        if setting.inband_fec:
            assert 1 <= setting.packet_loss_percent <= policy.max_percent
        else:
            assert setting.packet_loss_percent == 0


@given(reports, st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=120))
def test_more_loss_never_means_less_protection(
    series: list[tuple[float, float]], extra: list[float]
) -> None:
    """Pointwise more loss at the same report times: FEC comes on no later, and while both have it
    on, the expected loss is no lower."""
    more = [
        (gap, loss + (extra[i] if i < len(extra) else 0.0)) for i, (gap, loss) in enumerate(series)
    ]
    low, high = run(FecPolicy(), series), run(FecPolicy(), more)
    first_low = next((at for at, s in low if s.inband_fec), None)
    first_high = next((at for at, s in high if s.inband_fec), None)
    if first_low is not None:
        assert first_high is not None
        assert first_high <= first_low
    for (_, a), (_, b) in zip(low, high, strict=True):
        if a.inband_fec and b.inband_fec:
            assert b.packet_loss_percent >= a.packet_loss_percent


@given(st.floats(min_value=0.0, max_value=100.0), st.floats(min_value=0.0, max_value=100.0))
def test_steady_loss_settles_monotonically(a: float, b: float) -> None:
    low, high = sorted((a, b))
    settled_low = run(FecPolicy(), [(1.0, low)] * 60)[-1][1]
    settled_high = run(FecPolicy(), [(1.0, high)] * 60)[-1][1]
    assert settled_high.packet_loss_percent >= settled_low.packet_loss_percent
    assert settled_high.inband_fec >= settled_low.inband_fec


# --- what quality.py keeps for the policy, and the bitrate floor while FEC is on ---------------


def report(ssrc: int, fraction_lost: int, at: float) -> ReceptionReport:
    return ReceptionReport(
        ssrc=ssrc,
        fraction_lost=fraction_lost,
        packets_lost=0,
        highest_sequence=0,
        jitter=0,
        last_sr=0,
        delay_since_last_sr=0,
        received_at=at,
    )


def test_quality_keeps_each_report_per_stream_for_the_policy() -> None:
    quality = ConnectionQuality("p")
    for i in range(5):
        quality.on_reception_report(report(1, 26, float(i)), arrival_ntp=0)  # ~10%
        quality.on_reception_report(report(2, 0, float(i) + 0.5), arrival_ntp=0)
    assert [at for at, _ in quality.loss_reports(1)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert quality.loss_reports(1, after=2.0) == [(3.0, 26 / 2.56), (4.0, 26 / 2.56)]
    assert {loss for _, loss in quality.loss_reports(2)} == {0.0}
    assert quality.loss_reports(3) == []
    for i in range(LOSS_REPORTS_KEPT + 5):
        quality.on_reception_report(report(1, 0, 10.0 + i), arrival_ntp=0)
    assert len(quality.loss_reports(1)) == LOSS_REPORTS_KEPT


def test_fec_floor_stops_loss_cuts_and_lifts_a_lower_target() -> None:
    controller = BitrateController(min_kbps=16, max_kbps=96, start_kbps=96, decrease_hold_s=0.1)
    for i in range(30):
        controller.update(float(i), loss_percent=10.0, rtt_ms=None)
    assert controller.target_kbps == 16  # no FEC: loss cuts down to the minimum
    raised = controller.set_floor(OPUS_FEC_MIN_KBPS)
    assert (raised.action, raised.target_kbps) == (BitrateAction.INCREASE, OPUS_FEC_MIN_KBPS)
    for i in range(30, 60):
        controller.update(float(i), loss_percent=10.0, rtt_ms=None)
    assert controller.target_kbps == OPUS_FEC_MIN_KBPS
    assert controller.set_floor(None).action is BitrateAction.HOLD  # lowering lifts nothing
    assert controller.floor_kbps == 16
    controller.update(61.0, loss_percent=10.0, rtt_ms=None)
    assert controller.target_kbps < OPUS_FEC_MIN_KBPS
    assert controller.set_floor(500).target_kbps == 96  # never above the maximum
