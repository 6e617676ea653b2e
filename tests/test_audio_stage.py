"""DriftCompensationStage: decoded blocks + presentation times in, 20 ms frames on our clock out."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.typing import NDArray

from meshrtc.media.audio_stage import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    CompensatedFrame,
    DriftCompensationStage,
    applied_correction,
    stable_drift_ppm,
)
from meshrtc.media.compensator import CompensatorError
from meshrtc.media.drift import ClockDriftEstimator

FS = 48_000


def feed(
    stage: DriftCompensationStage,
    blocks: int,
    *,
    drift_ppm: float,
    factor: float | None,
    start: float = 100.0,
    channels: int = 1,
    first_index: int = 0,
) -> list[CompensatedFrame]:
    """``blocks`` 20 ms packets of a sender ``drift_ppm`` fast, presented as the SyncManager's
    timeline does once it knows the drift (``k·20 ms`` apart, ``k = 1/(1 + drift)``), or 20 ms of
    the sender apart at our clock's rate when ``factor`` is None (no estimate yet, factor 1)."""
    k = 1 / (1 + drift_ppm * 1e-6)
    out: list[CompensatedFrame] = []
    block = np.zeros((FRAME_SAMPLES, channels), np.float32)
    for n in range(first_index, first_index + blocks):
        out += stage.push(block, start + n * FRAME_SECONDS * k, 1.0 if factor is None else factor)
    return out


def stamps(frames: list[CompensatedFrame]) -> NDArray[np.float64]:
    return np.array([f.local_time for f in frames])


@pytest.mark.parametrize("drift_ppm", [500, -500, 5000, -5000])
def test_frames_follow_our_clock_not_the_senders(drift_ppm: float) -> None:
    """Two minutes of a drifting sender with a known factor: one 960-sample frame per 20 ms of our
    clock, stamps exactly 20 ms apart, the stamp lead at its target."""
    stage = DriftCompensationStage()
    k = 1 / (1 + drift_ppm * 1e-6)
    frames = feed(stage, 6000, drift_ppm=drift_ppm, factor=k)
    elapsed = 6000 * FRAME_SECONDS * k  # our seconds the sender's two minutes took
    # The sender sent 6000 frames; at our rate they are elapsed / 20 ms (less the resampler's
    # 5 ms and the part-filled frame): 3 fewer at +500 ppm, 30 fewer at +5000 ppm.
    assert abs(len(frames) - elapsed / FRAME_SECONDS) <= 1.5
    assert abs((6000 - len(frames)) - 6000 * (1 - k)) <= 1.5
    assert all(f.samples.shape == (FRAME_SAMPLES, 1) for f in frames)
    steps = np.diff(stamps(frames))
    np.testing.assert_allclose(steps, FRAME_SECONDS, atol=1e-9)
    assert stage.lead_ms is not None
    assert abs(stage.lead_ms) < 0.5
    assert (stage.skipped_slots, stage.dropped_frames, stage.resets) == (0, 0, 0)


@pytest.mark.parametrize("drift_ppm", [500, -500])
def test_level_trim_alone_holds_the_lead_before_an_estimate(drift_ppm: float) -> None:
    """Factor 1.0 (estimate not Stable) while the sender drifts 500 ppm: the lead stays within
    3 ms of the target (a proportional trim's steady error is 500 / 200 = 2.5 ms) and the output
    still follows our clock. Uncompensated, it would be 30 ms off after the same minute."""
    stage = DriftCompensationStage()
    leads = []
    k = 1 / (1 + drift_ppm * 1e-6)
    block = np.zeros((FRAME_SAMPLES, 1), np.float32)
    frames = 0
    for n in range(3000):
        frames += len(stage.push(block, 100.0 + n * FRAME_SECONDS * k, 1.0))
        assert stage.lead_ms is not None
        leads.append(stage.lead_ms)
    assert max(abs(v) for v in leads) <= 3.0
    assert abs(frames - 3000 * k) <= 2
    assert stage.compensator is not None
    assert abs(stage.compensator.trim_ppm - drift_ppm) < 100


def test_a_forward_jump_skips_whole_slots_then_goes_on_20ms_apart() -> None:
    stage = DriftCompensationStage()
    frames = feed(stage, 50, drift_ppm=0, factor=1.0)
    # The timeline moved 100 ms ahead (the SyncManager raised its offset, DTX silence ...).
    frames += feed(stage, 50, drift_ppm=0, factor=1.0, start=100.1, first_index=50)
    assert stage.skipped_slots == 5
    steps = np.round(np.diff(stamps(frames)) / FRAME_SECONDS).astype(int)
    assert sorted(set(steps.tolist())) == [1, 6]
    assert stage.lead_ms is not None
    assert abs(stage.lead_ms) < 1.0


def test_a_presentation_that_stalls_drops_whole_frames_of_audio() -> None:
    """Blocks presented at the same instant (the timeline held back) would stamp the audio ever
    later; past ``resync_ms`` the stage drops frames of audio instead."""
    stage = DriftCompensationStage()
    block = np.zeros((FRAME_SAMPLES, 1), np.float32)
    frames: list[CompensatedFrame] = []
    for n in range(50):
        frames += stage.push(block, 100.0 + n * FRAME_SECONDS)
    for _ in range(4):
        frames += stage.push(block, 100.0 + 50 * FRAME_SECONDS)
    for n in range(51, 80):
        frames += stage.push(block, 100.0 + n * FRAME_SECONDS)
    assert stage.dropped_frames >= 2
    np.testing.assert_allclose(np.diff(stamps(frames)), FRAME_SECONDS, atol=1e-9)
    assert stage.lead_ms is not None
    assert abs(stage.lead_ms) <= stage.resync_ms


def test_a_big_jump_starts_afresh_and_stamps_never_go_back() -> None:
    stage = DriftCompensationStage()
    frames = feed(stage, 20, drift_ppm=0, factor=1.0)
    frames += feed(stage, 20, drift_ppm=0, factor=1.0, start=50.0)  # a rebuilt timeline, earlier
    frames += feed(stage, 20, drift_ppm=0, factor=1.0, start=300.0)  # and one much later
    assert stage.resets == 2
    assert all(b > a for a, b in itertools.pairwise(stamps(frames)))
    assert stamps(frames)[-1] >= 300.0


def test_reset_keeps_stamps_after_the_last_one() -> None:
    """A restarted stream presented from an earlier time again: stamps never go back (a peer's
    local times never do), so the stage drops the audio it would stamp twice, then goes on."""
    stage = DriftCompensationStage()
    first = feed(stage, 10, drift_ppm=0, factor=1.0)
    stage.reset()
    assert stage.next_stamp is None
    assert stage.buffered_samples == 0
    again = feed(stage, 30, drift_ppm=0, factor=1.0)  # the same times again, and on
    assert again[0].local_time >= first[-1].local_time + FRAME_SECONDS - 1e-9
    assert 7 <= stage.dropped_frames <= 10
    assert stage.lead_ms is not None
    assert abs(stage.lead_ms) < 1.0


def test_frame_metadata_describes_its_first_sample() -> None:
    stage = DriftCompensationStage()
    block = np.zeros((FRAME_SAMPLES, 2), np.float32)
    frames: list[CompensatedFrame] = []
    for n in range(20):
        frames += stage.push(
            block,
            100.0 + n * FRAME_SECONDS,
            sender_time=1_000.0 + n * FRAME_SECONDS,
            rtp_timestamp=(0xFFFFFFFF - 5 * FRAME_SAMPLES + n * FRAME_SAMPLES) & 0xFFFFFFFF,
            received_at=99.95 + n * FRAME_SECONDS,
            concealed=n == 10,
        )
    assert all(f.samples.shape == (FRAME_SAMPLES, 2) for f in frames)
    for f in frames:
        assert f.sender_time is not None
        assert f.rtp_timestamp is not None
        # Sender time, RTP timestamp and presentation time of the first sample agree.
        assert f.sender_time - 1_000.0 == pytest.approx(f.local_time - 100.0, abs=1e-4)
        offset = round((f.local_time - 100.0) * FS)
        assert f.rtp_timestamp == (0xFFFFFFFF - 5 * FRAME_SAMPLES + offset) & 0xFFFFFFFF
        # Arrival: of the packet holding most of the frame (the block its middle falls in).
        middle_block = math.floor((f.local_time - 100.0 + FRAME_SECONDS / 2) / FRAME_SECONDS + 1e-9)
        assert f.received_at == pytest.approx(99.95 + middle_block * FRAME_SECONDS)
    # One concealed packet: one frame (mostly made of it) says so, not the two it overlaps.
    assert sum(f.concealed for f in frames) == 1


def test_channel_change_starts_afresh() -> None:
    stage = DriftCompensationStage()
    feed(stage, 5, drift_ppm=0, factor=1.0)
    frames = feed(stage, 5, drift_ppm=0, factor=1.0, channels=2, first_index=5)
    assert stage.resets == 1
    assert all(f.samples.shape[1] == 2 for f in frames)


def test_bad_input_is_refused() -> None:
    stage = DriftCompensationStage()
    with pytest.raises(CompensatorError, match="shape"):
        stage.push(np.zeros((2, 2, 2), np.float32), 1.0)
    with pytest.raises(CompensatorError, match="finite"):
        stage.push(np.zeros(960, np.float32), math.nan)
    assert stage.push(np.zeros(0, np.float32), 1.0) == []
    with pytest.raises(CompensatorError, match="resync_ms"):
        DriftCompensationStage(resync_ms=5.0)
    with pytest.raises(CompensatorError, match="reset_after_s"):
        DriftCompensationStage(resync_ms=50.0, reset_after_s=0.04)


def test_tone_through_the_stage_stays_clean() -> None:
    """A 750 Hz tone from a sender 500 ppm fast, factor applied: the output is the same tone at
    our rate, > 60 dB above the error in every 100 ms window (measured ~90 dB)."""
    stage = DriftCompensationStage()
    k = 1 / 1.0005
    t = np.arange(FRAME_SAMPLES) / FS
    block = (0.5 * np.sin(2 * np.pi * 750.0 * t)).astype(np.float32)  # whole periods per block
    out = []
    for n in range(500):
        out += [f.samples[:, 0] for f in stage.push(block, 100.0 + n * FRAME_SECONDS * k, k)]
    y = np.concatenate(out)[FS // 10 :]
    freq = 750.0 * 1.0005
    worst = math.inf
    for s in range(0, len(y) - 4800, 4800):
        seg = y[s : s + 4800].astype(np.float64)
        tt = np.arange(len(seg)) / FS
        tc = tt - tt.mean()
        w = 2 * np.pi * freq * tt
        basis = np.stack([np.sin(w), np.cos(w), tc * np.sin(w), tc * np.cos(w)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
        fit = basis @ coef
        worst = min(worst, 10 * math.log10(np.sum(fit**2) / np.sum((seg - fit) ** 2)))
    assert worst >= 60.0, worst


# --- the estimator gate ------------------------------------------------------------------------


def observe(est: ClockDriftEstimator, drift_ppm: float, count: int, interval: float = 5.0) -> None:
    """SRs from a sender ``drift_ppm`` fast, no jitter (a precise fit)."""
    rate = 1 + drift_ppm * 1e-6
    for n in range(count):
        est.observe(3_900_000_000.0 + interval * n, 100.0 + interval * n / rate)


def test_factor_and_figure_only_once_the_estimate_is_stable() -> None:
    est = ClockDriftEstimator()
    assert applied_correction(est) == 1.0
    assert stable_drift_ppm(est) is None
    observe(est, 500, 9)
    assert est.state == "CollectingSamples"
    assert applied_correction(est) == 1.0
    assert stable_drift_ppm(est) is None
    observe(est, 500, 60)
    assert est.state in ("Stable", "DriftDetected", "Adjusting")
    assert applied_correction(est) == est.correction_factor
    figure = stable_drift_ppm(est)
    assert figure is not None
    assert abs(figure - 500) < 1


def test_a_stable_but_imprecise_estimate_shows_no_figure() -> None:
    """Ten SRs one second apart with ±10 ms of arrival jitter: Stable, thousands of ppm of noise
    (what the demo showed as 2680 ppm for two peers sharing one clock). No figure."""
    est = ClockDriftEstimator()
    jitter = [0.01, -0.01] * 5
    for n in range(10):
        est.observe(3_900_000_000.0 + n, 100.0 + n + jitter[n])
    assert est.state in ("Stable", "DriftDetected")
    assert est.drift_ppm is not None
    assert abs(est.drift_ppm) > 100
    assert stable_drift_ppm(est) is None


def test_demo_table_shows_no_drift_until_it_can_stand_behind_it() -> None:
    from meshrtc.__main__ import drift_text

    est = ClockDriftEstimator()
    assert drift_text(est) == "-"
    observe(est, -250, 9)
    assert drift_text(est) == "-"  # collecting samples
    noisy = ClockDriftEstimator()
    for n in range(10):
        noisy.observe(3_900_000_000.0 + n, 100.0 + n + (0.01 if n % 2 else -0.01))
    assert noisy.drift_ppm is not None
    assert drift_text(noisy) == "-"
    observe(est, -250, 60)
    assert drift_text(est) == "-250.0"


def test_a_new_stream_starts_afresh() -> None:
    """A restarted sender (new SSRC) with a continuous timeline: the stage re-primes for it."""
    stage = DriftCompensationStage()
    block = np.zeros((FRAME_SAMPLES, 1), np.float32)
    frames: list[CompensatedFrame] = []
    for n in range(20):
        frames += stage.push(block, 100.0 + n * FRAME_SECONDS, stream=0x1111)
    assert stage.resets == 0
    for n in range(20, 40):
        frames += stage.push(block, 100.0 + n * FRAME_SECONDS, stream=0x2222)
    assert stage.resets == 1
    assert all(b > a for a, b in itertools.pairwise(stamps(frames)))


def test_demo_json_carries_the_drift_figure_only_when_it_stands() -> None:
    from meshrtc.demo import DemoResult, PeerFigures

    figures = {
        "peer1": PeerFigures("peer1", 500.0),
        "peer2": PeerFigures("peer2", 700.0, drift_ppm=-12.345),
    }
    peers = DemoResult(figures, connect_ms=1.0, teardown_ms=1.0, seconds=1.0).to_json()["peers"]
    assert peers["peer1"]["drift_ppm"] is None
    assert peers["peer2"]["drift_ppm"] == -12.3


def test_stamp_of_is_where_audio_presented_then_lands_after_a_timeline_step() -> None:
    """The timeline steps 6 ms later (the SyncManager raised its delay): the stage keeps its frames
    20 ms apart, so its audio now leaves 6 ms off the timeline until the trim takes that back.
    ``stamp_of`` must say where audio presented at an instant actually lands (what video presented
    at that instant must take, or the wire shows the 6 ms as A/V skew)."""
    stage = DriftCompensationStage()
    frames = feed(stage, 50, drift_ppm=0, factor=1.0)
    step = 0.006
    frames += feed(stage, 10, drift_ppm=0, factor=1.0, start=100.0 + step, first_index=50)
    marker = np.zeros((FRAME_SAMPLES, 1), np.float32)
    marker[0] = 1.0
    presented = 100.0 + 60 * FRAME_SECONDS + step
    frames += stage.push(marker, presented)
    expected = stage.stamp_of(presented)
    frames += feed(stage, 5, drift_ppm=0, factor=1.0, start=100.0 + step, first_index=61)
    landed = [
        f.local_time + int(np.argmax(np.abs(f.samples[:, 0]))) / FS
        for f in frames
        if np.max(np.abs(f.samples)) > 0.3
    ]
    assert len(landed) == 1
    assert abs(landed[0] - presented) > 0.004  # the plain presentation time is 6 ms off
    assert abs(landed[0] - expected) < 0.0003
    assert DriftCompensationStage().stamp_of(5.0) == 5.0  # nothing pushed: no shift


def test_a_drift_free_stream_comes_out_bit_exact() -> None:
    """Sender and receiver on one clock, factor 1: the compensator passes every block through, so
    the frames are the decoded samples themselves, after the same 5 ms of priming silence as
    resampled audio, and each block completes a frame as it arrives."""
    rng = np.random.default_rng(3)
    stage = DriftCompensationStage()
    blocks = rng.uniform(-1, 1, (200, FRAME_SAMPLES, 1)).astype(np.float32)
    frames: list[CompensatedFrame] = []
    for n, block in enumerate(blocks):
        out = stage.push(block, 100.0 + n * FRAME_SECONDS, 1.0)
        assert len(out) == 1
        frames += out
    assert stage.compensator is not None
    prime = round(stage.compensator.latency_samples)
    assert 200 < prime < 300
    expected = np.concatenate((np.zeros((prime, 1), np.float32), blocks.reshape(-1, 1)))
    np.testing.assert_array_equal(
        np.concatenate([f.samples for f in frames]), expected[: len(frames) * FRAME_SAMPLES]
    )
    first = 100.0 - prime / FS
    np.testing.assert_allclose(stamps(frames), first + np.arange(len(blocks)) * FRAME_SECONDS)
    assert stage.compensator is not None
    assert stage.compensator.passthrough
    assert stage.compensator.mode_switches == 0
