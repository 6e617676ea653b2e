from __future__ import annotations

import random

import numpy as np
import pytest
from numpy.typing import NDArray

from meshrtc.media import compensator as compensator_module
from meshrtc.media.compensator import CompensatorError, DriftCompensator
from meshrtc.media.drift import ClockDriftEstimator

FS = 48_000
BLOCK = 960  # one 20 ms Opus frame


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> NDArray[np.float32]:
    t = np.arange(round(seconds * FS)) / FS
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def window_snr_db(y: NDArray[np.float32], freq: float) -> float:
    """SNR of one short window against the best sinusoid near ``freq``.

    The model is a sinusoid at ``freq`` whose phase may move linearly (sin, cos, t·sin, t·cos), so a
    frequency a few ppm off does not count as noise; a click or a phase step does.
    """
    seg = y.astype(np.float64)
    t = np.arange(len(seg)) / FS
    tc = t - t.mean()
    w = 2 * np.pi * freq * t
    basis = np.stack([np.sin(w), np.cos(w), tc * np.sin(w), tc * np.cos(w)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    fit = basis @ coef
    return float(10 * np.log10(np.sum(fit**2) / np.sum((seg - fit) ** 2)))


def run_blocks(
    comp: DriftCompensator, x: NDArray[np.float32], factors: list[float]
) -> tuple[NDArray[np.float32], list[tuple[int, float]]]:
    """Process ``x`` in 20 ms blocks; returns the output and (output offset, factor) per block."""
    out: list[NDArray[np.float32]] = []
    marks = []
    pos = 0
    for i, start in enumerate(range(0, len(x), BLOCK)):
        y = comp.process(x[start : start + BLOCK], factors[i])
        marks.append((pos, factors[i]))
        out.append(y)
        pos += len(y)
    return np.concatenate(out), marks


def test_440hz_tone_at_1000ppm_keeps_40db_snr() -> None:
    """A sender 1000 ppm fast: the tone comes out 1000 ppm higher in our time, clean."""
    comp = DriftCompensator()
    x = tone(10.0)
    factor = 1 / (1 + 1000e-6)
    y, _ = run_blocks(comp, x, [factor] * (len(x) // BLOCK))
    windows = [
        window_snr_db(y[s : s + 4800], 440.0 / factor) for s in range(4800, len(y) - 9600, 4800)
    ]
    assert min(windows) >= 40.0, min(windows)
    # Length: the output tracks sum(len * ratio) up to the resampler's own constant delay (5 ms).
    assert 0 < comp.latency_samples < 300
    assert comp.samples_in == len(x)
    assert comp.ratio == pytest.approx(factor)


def test_slewing_factor_makes_no_clicks() -> None:
    """The factor moves like the estimator moves it (50 ppm/s to 1000 ppm): every 100 ms of output
    is still within 40 dB of a clean tone at the instantaneous frequency."""
    comp = DriftCompensator()
    x = tone(25.0)
    factors = []
    f = 1.0
    for _ in range(len(x) // BLOCK):
        f = max(1 / (1 + 1000e-6), f - 50e-6 * BLOCK / FS)
        factors.append(f)
    y, marks = run_blocks(comp, x, factors)
    starts = np.array([m[0] for m in marks])
    worst = np.inf
    for s in range(4800, len(y) - 9600, 4800):
        k = int(np.searchsorted(starts, s + 2400)) - 1
        worst = min(worst, window_snr_db(y[s : s + 4800], 440.0 / marks[k][1]))
    assert worst >= 40.0, worst


def test_stereo_blocks_keep_their_channels() -> None:
    comp = DriftCompensator(channels=2)
    left = tone(1.0)
    block = np.stack([left, -left], axis=1)
    out = np.concatenate([comp.process(block[i : i + BLOCK], 0.999) for i in range(0, FS, BLOCK)])
    assert out.shape[1] == 2
    np.testing.assert_allclose(out[:, 0], -out[:, 1], atol=1e-6)
    assert out.shape[0] == pytest.approx(FS * 0.999 - comp.latency_samples, abs=1e-6)
    assert 0 < comp.latency_samples < 300


def test_bad_input_is_refused() -> None:
    comp = DriftCompensator()
    with pytest.raises(CompensatorError, match="correction_factor"):
        comp.process(np.zeros(BLOCK, np.float32), 1.02)
    with pytest.raises(CompensatorError, match="channels"):
        comp.process(np.zeros((BLOCK, 2), np.float32), 1.0)
    with pytest.raises(CompensatorError, match="1-D or 2-D"):
        comp.process(np.zeros((2, 2, 2), np.float32), 1.0)
    with pytest.raises(CompensatorError, match="1-D"):
        DriftCompensator(channels=2).process(np.zeros(BLOCK, np.float32), 1.0)
    assert comp.process(np.zeros(0, np.float32), 1.0).shape == (0,)


def test_reset_starts_a_fresh_stream() -> None:
    comp = DriftCompensator()
    comp.process(tone(0.1), 0.995)
    comp.reset()
    assert (comp.samples_in, comp.samples_out, comp.expected_out) == (0, 0, 0.0)
    assert comp.ratio == 1.0


def test_missing_variable_rate_support_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compensator_module, "_soxr_has_variable_rate", lambda: False)
    with pytest.raises(CompensatorError, match="variable-rate"):
        DriftCompensator()


# --- A buffer fed by a drifting sender, ten simulated minutes ------------------------------------


def simulate_buffer_level(
    *, drift_ppm: float, target_ms: float | None, minutes: float = 10.0, seed: int = 3
) -> tuple[list[float], list[float]]:
    """Per-second mean level (ms) of the playout FIFO behind the compensator, and of the same FIFO
    without any compensation.

    The sender emits a 20 ms packet every 20 ms of *its* clock (``drift_ppm`` fast) and an SR every
    5 s; both arrive with ±5 ms jitter. Each packet passes through the compensator with the drift
    estimator's current correction factor into a FIFO that the audio device drains by 10 ms every
    10 ms of *our* clock. The level is sampled as each packet arrives.
    """
    rng = random.Random(seed)
    rate = 1 + drift_ppm * 1e-6
    est = ClockDriftEstimator()
    comp = DriftCompensator(target_level_ms=target_ms)
    silence = np.zeros(BLOCK, np.float32)
    duration = minutes * 60
    events: list[tuple[float, int, int]] = []
    n = 0
    while (t := n * 0.020 / rate + 0.03 + rng.uniform(-0.005, 0.005)) < duration:
        events.append((t, 1, n))
        n += 1
    n = 0
    while (t := 5.0 * n / rate + 0.03 + rng.uniform(-0.005, 0.005)) < duration:
        events.append((t, 0, n))
        n += 1
    first = min(t for t, kind, _ in events if kind == 1)
    n = 0
    while (t := first + n * 0.010 + 1e-9) < duration:
        events.append((t, 2, n))
        n += 1
    events.sort()
    start_ms = (target_ms or 50.0) + 10.0  # one packet above the level sampled at arrivals
    level = raw = start_ms * FS / 1000
    seconds: dict[int, list[tuple[float, float]]] = {}
    for t, kind, n in events:
        if kind == 0:
            est.observe(3_900_000_000.0 + 5.0 * n, t)
        elif kind == 1:
            seconds.setdefault(int(t), []).append((level / 48, raw / 48))
            out = comp.process(silence, est.correction_factor, level_ms=level / 48)
            level += len(out)
            raw += BLOCK
        else:
            level -= 480
            raw -= 480
    per_second = [seconds[s] for s in sorted(seconds)]
    return (
        [float(np.mean([a for a, _ in v])) for v in per_second],
        [float(np.mean([b for _, b in v])) for v in per_second],
    )


@pytest.mark.slow
def test_level_stays_at_target_for_ten_minutes_at_1000ppm() -> None:
    """Estimator feed-forward plus the level trim: within ±8 ms of target all the way, ±3 ms once the
    estimate exists; uncompensated, the same FIFO fills by more than half a second."""
    levels, raw = simulate_buffer_level(drift_ppm=1000, target_ms=50.0)
    assert len(levels) >= 599
    assert max(abs(v - 50.0) for v in levels) <= 8.0
    assert max(abs(v - 50.0) for v in levels[120:]) <= 3.0
    assert raw[-1] - raw[0] > 550.0, "the uncompensated control must fill"


@pytest.mark.slow
def test_feed_forward_alone_stops_the_filling() -> None:
    """Without a level target the buffer keeps what it gained before the first estimate (~45 s at
    1 ms/s) but stops filling: flat to within 6 ms over the last eight minutes."""
    levels, raw = simulate_buffer_level(drift_ppm=-1000, target_ms=None)
    tail = levels[120:]
    assert max(tail) - min(tail) <= 6.0
    assert raw[0] - raw[-1] > 550.0, "the uncompensated control must drain"


# --- pass-through ---------------------------------------------------------------------------------


def quadrature(seconds: float, freq: float = 300.0) -> NDArray[np.float32]:
    """sin on the left, cos on the right: the angle of each output sample is its position in the
    input (angle / ω), whatever the amplitude, so a dropped, repeated or shifted sample shows."""
    w = 2 * np.pi * freq / FS
    n = np.arange(round(seconds * FS))
    return (0.5 * np.stack([np.sin(w * n), np.cos(w * n)], axis=1)).astype(np.float32)


def positions(y: NDArray[np.float32], freq: float = 300.0) -> NDArray[np.float64]:
    angle = np.unwrap(np.arctan2(y[:, 0].astype(np.float64), y[:, 1].astype(np.float64)))
    return angle / (2 * np.pi * freq / FS)


def test_a_factor_of_one_passes_blocks_through_bit_exact() -> None:
    """No drift, no level error: nothing is resampled; as many samples are held back as libsoxr
    holds (so frames leave when they would have), the same every block."""
    rng = np.random.default_rng(7)
    comp = DriftCompensator()
    x = rng.uniform(-1, 1, 100 * BLOCK).astype(np.float32)
    y = np.concatenate([comp.process(x[s : s + BLOCK], 1.0) for s in range(0, len(x), BLOCK)])
    assert comp.passthrough
    assert comp.mode_switches == 0
    assert 200 < comp.latency_samples < 300
    assert len(y) == len(x) - comp.latency_samples
    np.testing.assert_array_equal(y, x[: len(y)])


def test_leaving_and_entering_pass_through_keeps_the_output_continuous() -> None:
    """1 s at factor 1 (passed through), 2 s at 300 ppm (resampled), 3 s at 1 again (passed
    through once the resampler's phase is steered onto a whole sample, under 2 s): every output
    sample is the input position after the one before it, give or take a tenth of a sample (a
    dropped or repeated sample is a step of 1; libsoxr's fractional lag uncorrected, 0.39), and the
    last second is the input again, bit-exact, no more of it held back than before."""
    x = quadrature(6.0)
    factors = [1.0] * 50 + [1.0003] * 100 + [1.0] * 150
    comp = DriftCompensator(channels=2)
    comp.process(x[:BLOCK], 1.0)
    held = round(comp.latency_samples)
    y = np.concatenate(
        [comp.process(x[i * BLOCK : (i + 1) * BLOCK], f) for i, f in enumerate(factors[1:], 1)]
    )
    assert comp.mode_switches == 2
    steps = np.diff(positions(y))
    assert steps.min() > 0.9, steps.min()  # no repeated sample, no fraction of one
    assert steps.max() < 1.1, steps.max()  # no dropped one
    # Between the switches the steps are those of the resampling (1/1.0003 per sample).
    assert np.median(steps[60 * BLOCK : 140 * BLOCK]) == pytest.approx(1 / 1.0003, abs=1e-5)
    # Back to pass-through: the input again, bit-exact, and the count is continuous.
    np.testing.assert_array_equal(y[-40 * BLOCK :], x[-40 * BLOCK - held : -held])
    assert abs(comp.latency_samples - held) < 1
    assert comp.expected_out == pytest.approx(len(x) + 100 * BLOCK * 300e-6, abs=1)


def test_a_ratio_hovering_at_the_edge_does_not_flip_modes_every_block() -> None:
    """Hysteresis: leave beyond 50 ppm, come back only within 20 ppm."""
    comp = DriftCompensator()
    x = tone(2.0)
    factors = [1.0 + (45e-6 if i % 2 else 55e-6) for i in range(len(x) // BLOCK)]
    run_blocks(comp, x, factors)
    assert comp.mode_switches == 1
    assert not comp.passthrough


def test_a_level_wandering_within_a_millisecond_is_not_trimmed() -> None:
    """The level's sub-millisecond wander (the timeline moving under load) is not worth a
    resampler: with the dead band the blocks keep passing through. Without it the trim chased the
    wander (up to 200 ppm per ms) and 80 % of a live 10-member run's blocks were resampled."""
    comp = DriftCompensator(channels=2, target_level_ms=0.0)
    rng = random.Random(14)
    block = np.zeros((960, 2), np.float32)
    level, passed = 0.0, 0
    for _ in range(1500):  # 30 s of 20 ms blocks
        level = max(-0.9, min(0.9, level + rng.uniform(-0.2, 0.2)))
        comp.process(block, 1.0, level_ms=level)
        passed += comp.passthrough
        assert comp.trim_ppm == 0.0
    assert passed == 1500
    assert comp.mode_switches == 0


def test_the_trim_starts_beyond_the_dead_band_and_stops_within_a_quarter_of_it() -> None:
    comp = DriftCompensator(channels=1, target_level_ms=0.0, level_smoothing_s=0.02)
    block = np.zeros(960, np.float32)

    def run(level: float, blocks: int = 150) -> None:
        for _ in range(blocks):
            comp.process(block, 1.0, level_ms=level)

    run(0.9)
    assert comp.trim_ppm == 0.0
    assert comp.passthrough
    run(3.0)  # a step: trimmed at 200 ppm per ms
    assert comp.trim_ppm == pytest.approx(600.0)
    assert not comp.passthrough
    run(0.5)  # inside the band but not within a quarter of it: still trimmed (hysteresis)
    assert comp.trim_ppm == pytest.approx(100.0)
    run(0.2)  # within a quarter: the trim stops and the blocks pass through again
    assert comp.trim_ppm == 0.0
    assert comp.passthrough
    with pytest.raises(CompensatorError):
        DriftCompensator(level_deadband_ms=-1.0)
