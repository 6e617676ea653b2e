"""The latency probe: tone onsets heard in decoded audio (pure, numpy only; the caller gives times).

Every member sends a gated tone at its own frequency (on ``GATE_ON`` of every ``GATE_PERIOD``), so
what a listener gets back from the transport (the mix of everyone else) holds each other member's
tone switching on once a period. :class:`OnsetProbe` measures, per 20 ms frame, the level at each
of those frequencies (one matrix product with precomputed references, not one DFT per frequency)
and calls a rising edge after at least ``min_off_frames`` quiet frames an onset; its latency is the
frame's arrival minus the sender's latest onset capture time (the same method as
:mod:`meshrtc.demo`), each capture matched at most once. An onset later than ``max_latency`` is
not counted (it cannot be told apart from the next period's), so a shortfall in the count is
latency the percentiles do not show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["OnsetProbe"]


class OnsetProbe:
    """Onsets of ``frequencies`` (sender id → Hz) in mono frames of ``frame_samples`` at ``rate``."""

    def __init__(
        self,
        frequencies: Mapping[str, float],
        captured: Callable[[str], float | None],
        *,
        own: str | None = None,
        rate: int = 48_000,
        frame_samples: int = 960,
        threshold: float = 0.03,
        min_off_frames: int = 10,
        max_latency: float = 0.5,
    ) -> None:
        self.senders = list(frequencies)
        #: The listener's own id: heard (a mix-minus that leaks it shows), never timed.
        self.own = own
        self.captured = captured
        self.threshold = threshold
        self.min_off_frames = min_off_frames
        self.max_latency = max_latency
        self.frame_samples = frame_samples
        t = np.arange(frame_samples, dtype=np.float64) / rate
        freqs = np.array([frequencies[s] for s in self.senders], dtype=np.float64)
        phase = 2 * np.pi * freqs[:, None] * t[None, :]
        # Real cos and sin rows (a real matrix-vector product; a complex one costs ~20x more).
        self._refs = np.vstack([np.cos(phase), np.sin(phase)]).astype(np.float32) * np.float32(
            2.0 / frame_samples
        )
        self._n = len(self.senders)
        self._off = np.zeros(len(self.senders), dtype=np.int64)
        #: Per sender, the capture time its last onset was matched with: a tone that drops out
        #: for 200 ms and comes back is not a second onset of the same capture.
        self._matched: dict[str, float] = {}
        #: Seconds per detected onset, and the senders heard at all (their loudest level).
        self.latencies: list[float] = []
        self.heard: dict[str, float] = {}

    def levels(self, mono: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Amplitude of each sender's frequency in ``mono`` (1.0: a full-scale sine on a bin)."""
        frame = np.asarray(mono[: self.frame_samples], dtype=np.float32)
        if frame.size < self.frame_samples:
            frame = np.pad(frame, (0, self.frame_samples - frame.size))
        parts = (self._refs @ frame).astype(np.float64)
        return np.hypot(parts[: self._n], parts[self._n :])

    def feed(self, mono: npt.NDArray[np.floating], arrived: float) -> None:
        if not self.senders:
            return
        levels = self.levels(mono)
        on = levels > self.threshold
        for i in np.flatnonzero(on):
            sender = self.senders[i]
            if sender != self.own and self._off[i] >= self.min_off_frames:
                captured = self.captured(sender)
                if (
                    captured is not None
                    and captured != self._matched.get(sender)
                    and 0 <= arrived - captured < self.max_latency
                ):
                    self.latencies.append(arrived - captured)
                    self._matched[sender] = captured
            self.heard[sender] = max(self.heard.get(sender, 0.0), float(levels[i]))
        self._off = np.where(on, 0, self._off + 1)
