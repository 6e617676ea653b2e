"""DriftCompensator: decoded audio at the sender's rate in, audio at our rate out.

A sender whose clock runs 1000 ppm fast delivers 48 048 samples per one of our seconds; played at
48 000 they pile up by 1 ms per second (a buffer fills by 0.6 s in ten minutes), and a slow sender
drains it into underruns. The compensator resamples every decoded block by the drift estimator's
``correction_factor`` (local/sender rate, within ±1%), so what leaves it is exactly as long in our
time as it was in the sender's.

Resampler: libsoxr through python-soxr's *variable-rate* stream (``ResampleStream(..., vr=True)`` and
``set_io_ratio``). libsoxr is a well-kept, widely used resampler, its variable-rate mode is made for a
ratio that moves slowly while audio flows, and each ratio change is slewed over one block so there is
no step in phase or pitch. Measured here: a 440 Hz tone at 1000 ppm comes out > 100 dB above the
resampling error (the test demands 40 dB), at ~20 M samples/s, with a constant ~240 samples (5 ms) of
algorithmic delay. python-soxr marks ``vr`` experimental; it is present in the 1.x series installed
here, and the constructor fails loudly (``CompensatorError``) on a binding without it rather than
silently doing nothing.

The drift estimate alone leaves whatever the buffer gained before the estimate existed (10 SRs, about
45 s at one SR per 5 s) and whatever its residual error adds up to. Give ``target_level_ms`` and pass
the buffer's level with each block, and a slow proportional trim (at most ``max_trim_ppm``, on a level
low-passed over ``level_smoothing_s``) pulls the level back to the target; the factor actually applied
still never leaves ±1% (the correction's bound, media/drift.py).

In the live path each peer's decoded audio goes through one of these inside
:class:`~meshrtc.media.audio_stage.DriftCompensationStage`, whose level is its frames' stamp lead.

Pass-through: most streams need no resampling at all (two peers on one clock, or the factor still 1
before a drift estimate while the level sits at its target), yet libsoxr cost about 14 % of the
transport's active time at ten members (docs/benchmarks.md, "Per-member cost"). While the ratio is
within ``passthrough_enter_ppm`` of 1 the blocks go out as they came in (bit-exact), and resampling
resumes once it leaves ``passthrough_leave_ppm`` (hysteresis, so a ratio hovering near the edge does
not flip modes every block). Pass-through holds back as many of the newest samples as libsoxr does
(242 at HQ, 5 ms), so the stage's frames end where the output ends in both modes: without that,
every switch to resampling made each frame wait for the next block (a frame left up to 25 ms after
its first sample instead of 5 ms; measured with bench/drift_live.py at 0 ppm). Neither switch
jumps the timeline: entering sends out, from a short history of the input, what the resampler
still owed; leaving primes a fresh resampler with that history and discards what it makes of the
samples already sent, so the next output sample is the next input sample. libsoxr's output lags
its input by a fraction of a sample (1.61 at HQ) that pass-through cannot copy, so a fresh
resampler is primed slightly fast (calibrated once per quality) to make its lag a whole 2 samples,
and pass-through is entered only once the resampler's phase sits within 0.02 of a whole sample
(steered there at 5 ppm at most, under 2 s). What is left: for the first ~270 samples after leaving,
sample positions wobble by up to 0.033 of a sample (the priming at another ratio).

The level trim has a dead band: it starts only once the low-passed level is more than
``level_deadband_ms`` (1 ms) off the target and stops once it is back within a quarter of that.
Without it the trim chased every sub-millisecond wander of the level (the SyncManager's timeline
moves by that much under load), so in a 30 s, 10-member run 80 % of the blocks were resampled at
a median of 150 ppm (``bench/members.py``, docs/benchmarks.md) and pass-through rarely held. A
millisecond is far below anything A/V sync can resolve (a picture lasts 33-100 ms).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from meshrtc.errors import MeshRtcError
from meshrtc.media.drift import MAX_CORRECTION

__all__ = ["CompensatorError", "DriftCompensator"]

log = logging.getLogger(__name__)

#: The variable-rate stream must be built with its largest input/output ratio (libsoxr's rule).
_MAX_IO_RATIO = 1.0 / (1.0 - 2.0 * MAX_CORRECTION)
#: Input kept to prime a fresh resampler when leaving pass-through: enough that its output after the
#: priming matches a resampler that ran all along (3.8e-5 apart at HQ; libsoxr holds 240 samples).
_PRIME_SAMPLES = 512
_HISTORY_SAMPLES = 2 * _PRIME_SAMPLES
#: Entering pass-through waits until the resampler's phase is this close to a whole sample, and
#: steers it there by at most ``_STEER`` (relative ratio).
_ALIGNED = 0.02
_STEER = 5e-6


class CompensatorError(MeshRtcError):
    """Bad input to the compensator, or a python-soxr without variable-rate support."""


def _soxr_has_variable_rate() -> bool:
    try:
        params = inspect.signature(soxr.ResampleStream).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-only binding without a signature
        return False
    return "vr" in params and hasattr(soxr.ResampleStream, "set_io_ratio")


def _variable_stream(channels: int, quality: str) -> Any:
    stream = soxr.ResampleStream(
        _MAX_IO_RATIO, 1.0, channels, dtype="float32", quality=quality, vr=True
    )
    stream.set_io_ratio(1.0, 1.0, 0)
    return stream


def _measured_lag(quality: str, prime_ratio: float) -> tuple[int, float]:
    """A fresh stream primed with ``_PRIME_SAMPLES`` at ``prime_ratio``, then run at ratio 1: how
    many samples it holds back, and how far (samples) its output lags its input besides."""
    rate = 48_000
    t = np.arange(rate // 5) / rate
    x = np.sin(2 * np.pi * 100.0 * t).astype(np.float32)
    stream = _variable_stream(1, quality)
    stream.set_io_ratio(1.0 / prime_ratio, 1.0, 0)
    primed = stream.resample_chunk(x[:_PRIME_SAMPLES])
    stream.set_io_ratio(1.0, 1.0, 0)
    y = np.concatenate((primed, stream.resample_chunk(x[_PRIME_SAMPLES:])))
    seg = slice(2_000, len(y))
    basis = np.stack([np.sin(2 * np.pi * 100.0 * t[seg]), np.cos(2 * np.pi * 100.0 * t[seg])], 1)

    def phase(v: NDArray[np.float32]) -> float:
        (a, b), *_ = np.linalg.lstsq(basis, v[seg].astype(np.float64), rcond=None)
        return float(np.arctan2(b, a))

    return len(x) - len(y), (phase(x) - phase(y)) / (2 * np.pi * 100.0) * rate


@functools.cache
def _soxr_lag(quality: str) -> tuple[int, int, float]:
    """What a variable-rate stream holds back (240 samples at HQ), its output's lag rounded to
    whole samples (2 at HQ: 1.61 measured), and the ratio to prime a fresh stream at so that the
    lag is exactly that whole number (1.00142 at HQ).

    Measured once per quality (a 100 Hz tone's phase, a few ms), not assumed. Pass-through can only
    shift by whole samples, so a fractional lag would be a step of a fraction of a sample at every
    switch; priming the stream slightly fast moves its phase onto the whole sample (linear in the
    priming ratio: two measurements solve it).
    """
    held, lag = _measured_lag(quality, 1.0)
    probe = 1e-3
    _, probed = _measured_lag(quality, 1.0 + probe)
    whole = round(lag)
    return held, whole, 1.0 + (whole - lag) / ((probed - lag) / probe)


class DriftCompensator:
    """Streaming resampler driven by a correction factor (and optionally a buffer level).

    Feed ``process`` consecutive decoded blocks of one stream (1-D mono or 2-D ``[frames, channels]``
    float samples at 48 kHz); it returns float32 blocks whose total length tracks
    ``sum(len(block) * ratio)``, where ``ratio`` is the factor applied to each block. Output blocks
    vary in length; that is the point.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 48_000,
        channels: int = 1,
        quality: str = "HQ",
        target_level_ms: float | None = None,
        level_gain_ppm_per_ms: float = 200.0,
        max_trim_ppm: float = 2000.0,
        level_smoothing_s: float = 1.0,
        level_deadband_ms: float = 1.0,
        passthrough_enter_ppm: float = 20.0,
        passthrough_leave_ppm: float = 50.0,
    ) -> None:
        if not _soxr_has_variable_rate():
            raise CompensatorError(
                "DriftCompensator needs python-soxr with variable-rate streams "
                "(ResampleStream(vr=True) and set_io_ratio; python-soxr >= 1.0)"
            )
        if channels < 1:
            raise CompensatorError(f"channels must be >= 1, got {channels}")
        if sample_rate <= 0:
            raise CompensatorError(f"sample_rate must be positive, got {sample_rate}")
        if not 0 <= passthrough_enter_ppm <= passthrough_leave_ppm:
            raise CompensatorError("need 0 <= passthrough_enter_ppm <= passthrough_leave_ppm")
        self.sample_rate = sample_rate
        self.channels = channels
        self.quality = quality
        self.target_level_ms = target_level_ms
        self.level_gain_ppm_per_ms = level_gain_ppm_per_ms
        self.max_trim_ppm = max_trim_ppm
        self.level_smoothing_s = level_smoothing_s
        if level_deadband_ms < 0:
            raise CompensatorError(f"level_deadband_ms must be >= 0, got {level_deadband_ms}")
        #: The trim starts beyond this level error (ms) and stops within a quarter of it.
        self.level_deadband_ms = level_deadband_ms
        self._trimming = False
        self.passthrough_enter = passthrough_enter_ppm * 1e-6
        self.passthrough_leave = passthrough_leave_ppm * 1e-6
        held, self._lag, self._prime_ratio = _soxr_lag(quality)
        #: Newest input samples pass-through keeps back: what libsoxr would (see the module doc).
        self._hold = held + self._lag
        #: None: passing blocks through (a fresh compensator starts so, with nothing held).
        self._stream: Any = None
        self._history = np.zeros((_HISTORY_SAMPLES, channels), np.float32)
        self._owed = 0  # newest input samples not yet sent out, while passing through
        self._carry: NDArray[np.float32] | None = None
        self._discard = 0
        # expected_out counts each block at its new ratio; libsoxr slews to it over the block, so
        # it made ``frames * (new - old) / 2`` fewer samples than counted: what the switch back
        # must not mistake for held samples.
        self._slew_excess = 0.0
        #: Switches into and out of pass-through so far.
        self.mode_switches = 0
        self._smoothed_level: float | None = None
        self.ratio = 1.0
        self.trim_ppm = 0.0
        self.samples_in = 0
        self.samples_out = 0
        #: sum(len(block) * ratio): what the output total tends to, less the resampler's delay.
        self.expected_out = 0.0

    @property
    def passthrough(self) -> bool:
        """Blocks currently go out as they came in (the ratio is within tolerance of 1)."""
        return self._stream is None

    @property
    def latency_samples(self) -> float:
        """Output samples owed but still inside the resampler (about 240, i.e. 5 ms, at HQ).

        Counted from what went in and came out rather than asked of libsoxr, whose ``delay()`` in
        variable-rate mode does not include the filter's priming.
        """
        return self.expected_out - self.samples_out

    def reset(self) -> None:
        """Drop buffered audio and the level filter (stream restart, reconnection)."""
        self._stream = None
        self._history[:] = 0.0
        self._owed = 0
        self._carry = None
        self._discard = 0
        self._smoothed_level = None
        self._trimming = False
        self.ratio = 1.0
        self.trim_ppm = 0.0
        self.samples_in = self.samples_out = 0
        self.expected_out = 0.0

    def reset_level(self) -> None:
        """Forget the low-passed level: the caller just moved the level by a step on purpose (a
        resync that skipped or dropped whole frames), which the filter must not average in."""
        self._smoothed_level = None

    def process(
        self,
        samples: NDArray[np.floating[Any]],
        correction_factor: float,
        *,
        level_ms: float | None = None,
    ) -> NDArray[np.float32]:
        """Resample one block by ``correction_factor`` (trimmed by the buffer level when given)."""
        if not 1 - MAX_CORRECTION - 1e-12 <= correction_factor <= 1 + MAX_CORRECTION + 1e-12:
            raise CompensatorError(
                f"correction_factor {correction_factor!r} is outside 1 ± {MAX_CORRECTION}"
            )
        block = np.ascontiguousarray(samples, dtype=np.float32)
        if block.ndim == 2 and block.shape[1] != self.channels:
            raise CompensatorError(f"expected {self.channels} channels, got {block.shape[1]}")
        if block.ndim == 1 and self.channels != 1:
            raise CompensatorError(f"expected [frames, {self.channels}] samples, got 1-D")
        if block.ndim not in (1, 2):
            raise CompensatorError(f"samples must be 1-D or 2-D, got {block.ndim}-D")
        frames = block.shape[0]
        if frames == 0:
            return block
        ratio = correction_factor * (1.0 - self._trim(level_ms, frames) * 1e-6)
        ratio = min(1 + MAX_CORRECTION, max(1 - MAX_CORRECTION, ratio))
        off = abs(ratio - 1.0)
        if self._stream is not None and off <= self.passthrough_enter and self._discard == 0:
            owed = self._owed_by_resampler()
            miss = owed - round(owed)
            if abs(miss) <= _ALIGNED:
                self._enter(round(owed))
            else:
                # Steer the resampler's phase onto a whole sample first (at most 5 ppm, inaudible;
                # under half a sample takes at most 2 s), so entering steps by no fraction.
                ratio = 1.0 - max(-_STEER, min(_STEER, miss / frames))
        if self._stream is None and off <= self.passthrough_leave:
            owed = self._owed
            src = block
            if owed:
                held = self._history[_HISTORY_SAMPLES - owed :]
                src = np.concatenate((held if block.ndim == 2 else held[:, 0], block))
            sent = max(0, owed + frames - self._hold)
            # A copy: the caller may reuse its buffer, and the stage's FIFO keeps slices of this.
            out = src[:sent].copy() if src is block else src[:sent]
            self._owed = owed + frames - sent
            ratio = 1.0
        else:
            if self._stream is None:
                self._leave()
            # The ratio moves over this block's input, not at its first sample: no phase step.
            self._stream.set_io_ratio(1.0 / ratio, 1.0, frames)
            self._slew_excess += frames * (ratio - self.ratio) / 2
            out = self._stream.resample_chunk(block)
            if self._carry is not None:
                carry = self._carry
                out = np.concatenate((carry if out.ndim == 2 else carry[:, 0], out))
                self._carry = None
            if self._discard:
                dropped = min(self._discard, out.shape[0])
                out = out[dropped:]
                self._discard -= dropped
        self._remember(block)
        self.ratio = ratio
        self.samples_in += frames
        self.samples_out += out.shape[0]
        self.expected_out += frames * ratio
        return out

    def _owed_by_resampler(self) -> float:
        """Input samples (newest) the resampler has not yet given back as output.

        ``expected_out`` counts each block at its new ratio while libsoxr slews to it over the
        block (``_slew_excess``); after :meth:`_leave` the stream's lag is a whole number of
        samples, so the fraction left is the phase the ratios since then accumulated.
        """
        return (self.expected_out - self._slew_excess - self.samples_out) / self.ratio

    def _enter(self, owed: int) -> None:
        """Resampling → pass-through: the ``owed`` newest input samples still go out (pass-through
        sends them on); drops the resampler."""
        self._owed = min(_HISTORY_SAMPLES, max(0, owed))
        self._stream = None
        self.mode_switches += 1
        log.debug(
            "compensator: ratio within %g ppm of 1: passing through", self.passthrough_enter * 1e6
        )

    def _leave(self) -> None:
        """Pass-through → resampling: prime a fresh resampler on the newest input and throw away
        what it makes of the part already sent out (and of the fraction-of-a-sample lag), so the
        next output sample is the next input sample."""
        stream = _variable_stream(self.channels, self.quality)
        stream.set_io_ratio(1.0 / self._prime_ratio, 1.0, 0)
        primed = stream.resample_chunk(self._history[-_PRIME_SAMPLES:])
        stream.set_io_ratio(1.0, 1.0, 0)
        start = _PRIME_SAMPLES - self._owed + self._lag
        if start < primed.shape[0]:
            self._carry = primed.reshape(-1, self.channels)[start:]
        self._discard = max(0, start - primed.shape[0])
        self._owed = 0
        self._stream = stream
        self._slew_excess = 0.0
        self.mode_switches += 1

    def _remember(self, block: NDArray[np.float32]) -> None:
        frames = block.shape[0]
        history = self._history
        if frames >= _HISTORY_SAMPLES:
            history[:] = block[-_HISTORY_SAMPLES:].reshape(history.shape)
        else:
            history[:-frames] = history[frames:]
            history[-frames:] = block.reshape(frames, -1)

    def _trim(self, level_ms: float | None, frames: int) -> float:
        if self.target_level_ms is None or level_ms is None:
            self.trim_ppm = 0.0
            return 0.0
        if self._smoothed_level is None:
            self._smoothed_level = level_ms
        else:
            alpha = min(1.0, frames / self.sample_rate / self.level_smoothing_s)
            self._smoothed_level += alpha * (level_ms - self._smoothed_level)
        error = self._smoothed_level - self.target_level_ms
        band = self.level_deadband_ms
        self._trimming = abs(error) > (band / 4 if self._trimming else band)
        if not self._trimming:
            self.trim_ppm = 0.0
            return 0.0
        trim = max(-self.max_trim_ppm, min(self.max_trim_ppm, self.level_gain_ppm_per_ms * error))
        self.trim_ppm = trim
        return trim
