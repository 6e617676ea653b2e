"""DriftCompensationStage: one peer's decoded audio out as 20 ms frames on *our* clock.

Why: the session router snaps every audio frame's ``local_time`` onto one 20 ms grid, strictly
increasing per peer. A sender whose clock runs 500 ppm fast delivers 20 ms of its audio every
19.99 ms of ours: two frames land in one slot every 40 s, the later one is pushed to the next slot,
and that peer's audio drifts ahead of the mix by 30 ms a minute; a slow sender leaves a hole every
40 s instead. So each peer's audio must come out as exactly 960 samples per 20 ms of our clock.

What: every decoded block (any length, a whole packet or a concealed one) arrives with its
presentation time ``local_time`` (the SyncManager's timeline, our monotonic seconds). It goes through
a :class:`~meshrtc.media.compensator.DriftCompensator`, resampled by the drift estimator's
correction factor ``k``; out of the FIFO behind it come 960-sample frames stamped ``t0``,
``t0 + 20 ms``, ``t0 + 40 ms`` ... exactly, one per grid slot. The SyncManager's timeline already
advances presentation times by ``k·20 ms`` per 20 ms packet, so ``k·960`` samples of ours span exactly
the presentation time the packet occupies: the compensated audio and the presentation times agree.

The level: ``lead = stamp of the next frame − presentation time of its first sample`` (the FIFO
head, placed on the newest block's presentation time; libsoxr's output is content-aligned, its
~5 ms delay only holds samples back). It measures everything the factor gets wrong: residual
estimator error, the time before an estimate exists, the timeline's own headroom changes. The
compensator's slow level trim (at most ±2000 ppm, 200 ppm per ms of error, on the level low-passed
over 1 s) keeps it at ``target_lead_ms`` (0: a frame carries the presentation time of its first
sample, as before this stage existed, so audio and video stamps stay comparable).

Before the estimate is Stable: factor 1.0, the level trim alone. The level is a direct measurement
of what matters here, bounded and noise-filtered; the first drift estimates (45 s of SRs) are
typically 50 ppm and sometimes thousands of ppm off, which would push the level the wrong way that
the trim then has to undo. At ±500 ppm the trim alone holds the level within 2.5 ms of the target
(the steady error of a proportional trim: 500 / 200 ppm per ms); once the estimate is Stable its
factor takes the drift over and the trim only mops up the rest.

Discontinuities: a presentation time more than ``resync_ms`` off the level (the SyncManager raised
its offset, the jitter buffer re-anchored, DTX silence) is not trimmed away over tens of seconds:
a jump forward skips whole slots (a hole, as the timeline meant), a jump back drops whole frames of
audio. A jump beyond ``reset_after_s`` (a new stream, a rebuilt timeline) starts the stage afresh,
still stamping after its last frame. The owner calls :meth:`reset` when the link or stream restarts.

Sans-IO: no clock of its own. The only time it knows is the presentation time passed in with each
block (the caller's monotonic clock, through the SyncManager), so a test drives it in simulated time.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from meshrtc.media.compensator import CompensatorError, DriftCompensator
from meshrtc.media.drift import ClockDriftEstimator

__all__ = [
    "DISPLAY_MAX_STDERR_PPM",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "SAMPLE_RATE",
    "CompensatedFrame",
    "DriftCompensationStage",
    "applied_correction",
    "stable_drift_ppm",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
#: One Opus frame, one grid slot of the session router.
FRAME_SAMPLES = 960
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
#: A drift figure is shown only once its standard error is this small: "Stable" is reached after 10
#: SRs, which with aiortc's ~1 s RTCP interval is 10 s of data and can be thousands of ppm off.
DISPLAY_MAX_STDERR_PPM = 20.0


def applied_correction(estimator: ClockDriftEstimator) -> float:
    """The factor the stage resamples by: the estimator's once it is Stable, else 1.0."""
    # has_estimate holds from Stable on (Drift Detected and Adjusting only ever follow Stable).
    return estimator.correction_factor if estimator.has_estimate else 1.0


def stable_drift_ppm(
    estimator: ClockDriftEstimator, *, max_stderr_ppm: float = DISPLAY_MAX_STDERR_PPM
) -> float | None:
    """The drift figure to show (demo table, metrics): None until it can be stood behind.

    That is: the estimator is Stable (or past it: Drift Detected, Adjusting) and the fit's standard
    error is at most ``max_stderr_ppm``. Before that a figure is noise (the demo once showed 2680 and
    174 ppm for two peers sharing one clock) and showing it only misleads.
    """
    ppm = estimator.drift_ppm
    if ppm is None or not estimator.has_estimate:
        return None
    if not estimator.stderr_ppm <= max_stderr_ppm:
        return None
    return ppm


@attrs.frozen(eq=False)
class CompensatedFrame:
    """One 20 ms frame on our clock: ``(960, channels)`` float32 samples at 48 kHz.

    ``local_time`` advances by exactly 20 ms from one frame to the next (more, by whole frames, after
    a skip). ``sender_time`` (NTP or Unix seconds, whatever the caller passed in) and
    ``rtp_timestamp`` are those of the frame's first sample; ``received_at`` is when the packet
    holding most of the frame arrived (what the router's added-latency figure compares with);
    ``concealed``: most of the frame stands in for lost packets.
    """

    samples: NDArray[np.float32]
    local_time: float
    sender_time: float | None
    rtp_timestamp: int | None
    received_at: float | None
    concealed: bool


@attrs.define(slots=True)
class _Block:
    """One input block placed on the compensator's output sample count (content-aligned)."""

    start: float  # expected output sample index of its first sample
    length: float  # its expected output length (input length x ratio)
    ratio: float
    local_time: float
    sender_time: float | None
    rtp_timestamp: int | None
    received_at: float | None
    concealed: bool


class DriftCompensationStage:
    """Decoded blocks + presentation times in, 960-sample frames stamped 20 ms apart out.

    Feed :meth:`push` each decoded (or concealed) block of one stream in order, with the correction
    factor to apply (:func:`applied_correction` of the peer's drift estimator). See the module
    docstring for the level and the discontinuity rules.
    """

    def __init__(
        self,
        *,
        target_lead_ms: float = 0.0,
        resync_ms: float = 30.0,
        reset_after_s: float = 1.0,
        quality: str = "HQ",
        level_gain_ppm_per_ms: float = 200.0,
        max_trim_ppm: float = 2000.0,
        level_smoothing_s: float = 1.0,
    ) -> None:
        if resync_ms <= FRAME_SECONDS * 1000 / 2:
            raise CompensatorError(f"resync_ms must exceed half a frame (10 ms), got {resync_ms}")
        if reset_after_s * 1000 <= resync_ms:
            raise CompensatorError("reset_after_s must be longer than resync_ms")
        self.target_lead_ms = target_lead_ms
        self.resync_ms = resync_ms
        self.reset_after_s = reset_after_s
        self._compensator_args: dict[str, Any] = {
            "quality": quality,
            "target_level_ms": target_lead_ms,
            "level_gain_ppm_per_ms": level_gain_ppm_per_ms,
            "max_trim_ppm": max_trim_ppm,
            "level_smoothing_s": level_smoothing_s,
        }
        self.compensator: DriftCompensator | None = None
        self._blocks: deque[_Block] = deque()
        self._fifo: NDArray[np.float32] | None = None
        self._emitted = 0  # output samples gone (emitted or dropped): index of the FIFO head
        self._to_drop = 0  # samples still to drop from the FIFO head
        self._next_stamp: float | None = None
        self._last_stamp: float | None = None
        self._stream: int | None = None
        #: Frames emitted; whole slots skipped and frames of audio dropped to resync; fresh starts.
        self.frames_out = 0
        self.skipped_slots = 0
        self.dropped_frames = 0
        self.resets = 0
        #: The newest lead (ms): stamp of the next frame minus presentation time of its first sample.
        self.lead_ms: float | None = None

    # --- input ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything buffered (link or stream restart); stamps stay after the last one."""
        self.compensator = None
        self._blocks.clear()
        self._fifo = None
        self._emitted = self._to_drop = 0
        self._next_stamp = None
        self._stream = None
        self.lead_ms = None

    def push(
        self,
        samples: NDArray[np.floating[Any]],
        local_time: float,
        correction_factor: float = 1.0,
        *,
        sender_time: float | None = None,
        rtp_timestamp: int | None = None,
        received_at: float | None = None,
        concealed: bool = False,
        stream: int | None = None,
    ) -> list[CompensatedFrame]:
        """One decoded block presented at ``local_time``; returns the frames it completed.

        ``stream`` identifies the RTP stream (its SSRC; None: the same as before): a new one is a
        restarted sender, and the stage starts afresh for it.
        """
        block = np.asarray(samples, dtype=np.float32)
        if block.ndim == 1:
            block = block.reshape(-1, 1)
        if block.ndim != 2 or block.shape[1] < 1:
            raise CompensatorError(f"samples must be (frames, channels), got shape {block.shape}")
        if block.shape[0] == 0:
            return []
        if not math.isfinite(local_time):
            raise CompensatorError(f"local_time must be finite, got {local_time!r}")
        if stream is not None:
            if self._stream is not None and stream != self._stream and self._blocks:
                log.info("audio stage: stream %#x → %#x; starting afresh", self._stream, stream)
                self._restart()
            self._stream = stream
        comp = self.compensator
        if comp is not None and comp.channels != block.shape[1]:
            log.info(
                "audio stage: %d → %d channels; starting afresh", comp.channels, block.shape[1]
            )
            self._restart()
            comp = None
        if comp is None:
            comp = self.compensator = DriftCompensator(
                channels=block.shape[1], **self._compensator_args
            )
        start = comp.expected_out
        if self._blocks:
            newest = self._blocks[-1]
            predicted = newest.local_time + (start - newest.start) / SAMPLE_RATE
            if abs(local_time - predicted) > self.reset_after_s:
                log.info(
                    "audio stage: presentation jumped %.3f s; starting afresh",
                    local_time - predicted,
                )
                self._restart()
                return self.push(
                    block,
                    local_time,
                    correction_factor,
                    sender_time=sender_time,
                    rtp_timestamp=rtp_timestamp,
                    received_at=received_at,
                    concealed=concealed,
                )
        priming = self._next_stamp is None
        if priming:
            lead = self.target_lead_ms
        else:
            lead = self._lead(start, local_time)
            error = lead - self.target_lead_ms
            if abs(error) > self.resync_ms:
                self._resync(error)
                comp.reset_level()
                lead = self._lead(start, local_time)
        out = comp.process(block, correction_factor, level_ms=lead)
        if priming:
            out = self._prime(out, local_time, comp.latency_samples)
            lead = self._lead(start, local_time)
        self.lead_ms = lead
        self._blocks.append(
            _Block(
                start,
                comp.expected_out - start,
                comp.ratio,
                local_time,
                sender_time,
                rtp_timestamp,
                received_at,
                concealed,
            )
        )
        fifo = self._fifo
        self._fifo = out if fifo is None or not len(fifo) else np.concatenate((fifo, out))
        return self._emit()

    def _prime(
        self, out: NDArray[np.float32], local_time: float, held: float
    ) -> NDArray[np.float32]:
        """First block since a (re)start: the frames begin ``held`` samples (what the resampler
        keeps back, 5 ms at HQ) before it, on silence.

        Frames then end where the resampler's output ends: with both clocks at one rate each
        block completes a frame the moment it arrives, so a frame leaves 5 ms after its first
        sample's time instead of 20 ms (the block-long wait for the resampler's held samples).
        A drifting sender's frames slide across blocks anyway, one frame per 1/drift (40 s at
        500 ppm): then they leave 5-25 ms after their first sample.
        """
        prime = round(held)
        self._emitted = -prime
        first = local_time - prime / SAMPLE_RATE + self.target_lead_ms / 1000
        if self._last_stamp is not None:
            first = max(first, self._last_stamp + FRAME_SECONDS)
        self._next_stamp = first
        silence = np.zeros((prime, *out.shape[1:]), np.float32)
        return np.concatenate((silence, out))

    def _lead(self, start: float, local_time: float) -> float:
        """Lead (ms) with the FIFO head placed on a block starting at ``start``, ``local_time``."""
        assert self._next_stamp is not None
        head = self._emitted + self._to_drop
        head_time = local_time + (head - start) / SAMPLE_RATE
        return (self._next_stamp - head_time) * 1000

    def _resync(self, error_ms: float) -> None:
        assert self._next_stamp is not None
        frames = round(abs(error_ms) / (FRAME_SECONDS * 1000))
        if frames == 0:
            return
        if error_ms < 0:
            # Presentation jumped ahead of the stamps: leave the slots in between empty.
            self._next_stamp += frames * FRAME_SECONDS
            self.skipped_slots += frames
        else:
            # Stamps ahead of the audio: drop whole frames of it rather than stamp it ever later.
            self._to_drop += frames * FRAME_SAMPLES
            self.dropped_frames += frames
        log.debug("audio stage: lead %.1f ms off; resynced by %d frames", error_ms, frames)

    def _restart(self) -> None:
        self.resets += 1
        self.reset()

    # --- output -----------------------------------------------------------------------------------

    def _emit(self) -> list[CompensatedFrame]:
        fifo = self._fifo
        assert fifo is not None
        frames: list[CompensatedFrame] = []
        pos = 0
        if self._to_drop:
            dropped = min(self._to_drop, len(fifo))
            pos += dropped
            self._to_drop -= dropped
            self._emitted += dropped
        while len(fifo) - pos >= FRAME_SAMPLES:
            assert self._next_stamp is not None
            samples = np.array(fifo[pos : pos + FRAME_SAMPLES])
            frames.append(self._frame(samples, self._next_stamp))
            self._last_stamp = self._next_stamp
            self._next_stamp += FRAME_SECONDS
            self._emitted += FRAME_SAMPLES
            pos += FRAME_SAMPLES
            self.frames_out += 1
        self._fifo = fifo[pos:]
        blocks = self._blocks
        while len(blocks) > 1 and blocks[1].start <= self._emitted:
            blocks.popleft()
        return frames

    def _frame(self, samples: NDArray[np.float32], stamp: float) -> CompensatedFrame:
        head = self._emitted
        end = head + FRAME_SAMPLES
        first: _Block | None = None
        main: _Block | None = None
        concealed = most = 0.0
        for b in self._blocks:
            if b.start + b.length <= head:
                continue
            if b.start >= end:
                break
            if first is None:
                first = b
            overlap = min(end, b.start + b.length) - max(head, b.start)
            if overlap > most:
                main, most = b, overlap
            if b.concealed:
                concealed += overlap
        if first is None:  # pragma: no cover - the FIFO never holds samples of no block
            return CompensatedFrame(samples, stamp, None, None, None, False)
        offset = (head - first.start) / first.ratio  # input samples into it (< 0: the priming)
        sender = None if first.sender_time is None else first.sender_time + offset / SAMPLE_RATE
        rtp = (
            None
            if first.rtp_timestamp is None
            else (first.rtp_timestamp + round(offset)) & 0xFFFFFFFF
        )
        # Concealed when most of it stands in for lost packets: one lost packet, one such frame.
        hidden = concealed > FRAME_SAMPLES / 2
        arrived = None if main is None else main.received_at
        return CompensatedFrame(samples, stamp, sender, rtp, arrived, hidden)

    # --- queries ----------------------------------------------------------------------------------

    def stamp_of(self, presented: float) -> float:
        """The local time this stage's frames give audio presented at ``presented``.

        Audio leaves the stage ``lead`` later than the timeline presented it, and the lead moves
        away from its target whenever the timeline does (the SyncManager raising its delay, a
        step of the jitter buffer): the level trim takes it back over seconds, a resync only past
        ``resync_ms``. Whatever is presented with this audio (the peer's video) must take the same
        shift, or it shows the lead as A/V skew on the wire (docs/rtc-bridge.md, "A/V timing on
        the wire"). ``presented`` itself before the first block or after a reset.
        """
        lead = self.lead_ms
        return presented if lead is None else presented + lead / 1000

    @property
    def next_stamp(self) -> float | None:
        """The local time the next frame will carry (None before the first block or a restart)."""
        return self._next_stamp

    @property
    def buffered_samples(self) -> int:
        """Samples in the FIFO (not yet a whole frame) plus those inside the resampler."""
        inside = 0.0 if self.compensator is None else self.compensator.latency_samples
        return (0 if self._fifo is None else len(self._fifo)) + round(inside)
