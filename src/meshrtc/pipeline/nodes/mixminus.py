"""MixMinus: every peer hears the mix of everyone else (the conference case).

The inputs are each peer's audio, aligned in time by the session router: frames of different peers
that belong to the same instant carry the same ``timestamp``. The mixer groups them into *windows*
by timestamp and, for each window, sends every peer the sum of the *other* peers' frames, addressed
to it (``to_peer``). A peer never receives its own signal.

When is a window complete? When every peer that was *active* when it opened has contributed, where
active means it sent a frame within the last ``peer_timeout_ms`` of media time; the steady state
therefore adds no waiting. A peer whose frame is missing (loss, a late packet, a peer that just left)
does not stall the others: the window is mixed without it when a frame of a newer window arrives, or
``window_timeout_ms`` after the window opened, whichever is first. Such a peer still receives the
others' mix, so its output stays continuous. The very first window has no known peers and so waits for
one of those two events (or the end of the input). A peer that joins later may see its first frame
arrive after its window was already complete: that frame is dropped (counted as late), and from then
on the peer is waited for.

Frames of one window may differ in length: shorter ones are zero-padded to the longest. A frame whose
sample rate or channel count differs from the window's is dropped and counted (put a Resample node in
front of MixMinus when peers differ). The sum is limited per ``limiter``: ``clip`` (hard clip to
[-1, 1]), ``soft`` (linear up to 0.8, then a tanh knee that never reaches 1) or ``none``.

:class:`MixMinusMixer` is the sans-IO core (time passed in as ``now``); :class:`MixMinus` is the
thin trio node around it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from meshrtc.pipeline.data import Audio, FloatArray, RuntimeData
from meshrtc.pipeline.node import Emit, Node, Params, register_node

__all__ = ["LIMITERS", "MixMinus", "MixMinusMixer", "limit", "mix_minus"]

logger = logging.getLogger(__name__)

LIMITERS = ("clip", "soft", "none")
_SOFT_KNEE = 0.8


def limit(x: npt.NDArray[np.float64], limiter: str) -> FloatArray:
    """Apply ``limiter`` to a float64 mix and return float32 samples."""
    if limiter == "clip":
        np.clip(x, -1.0, 1.0, out=x)
    elif limiter == "soft":
        over = np.abs(x) > _SOFT_KNEE
        if over.any():
            head = 1.0 - _SOFT_KNEE
            x[over] = np.sign(x[over]) * (
                _SOFT_KNEE + head * np.tanh((np.abs(x[over]) - _SOFT_KNEE) / head)
            )
    return x.astype(np.float32)


def mix_minus(
    frames: Mapping[str, FloatArray], receivers: Iterable[str], limiter: str = "clip"
) -> dict[str, FloatArray]:
    """For each receiver, the limited sum of every frame in ``frames`` except its own.

    Sums run in float64 and each receiver's output is ``total − own``: O(peers) instead of O(peers²),
    and the subtraction leaves no audible trace of the receiver's own signal (error ~1e-16 of the
    total, far below float32's resolution).
    """
    length = max((f.size for f in frames.values()), default=0)
    total = np.zeros(length, np.float64)
    for samples in frames.values():
        total[: samples.size] += samples
    mixes: dict[str, FloatArray] = {}
    for peer in receivers:
        mix = total.copy()
        own = frames.get(peer)
        if own is not None:
            mix[: own.size] -= own
        mixes[peer] = limit(mix, limiter)
    return mixes


@attrs.define
class MixMinusMixer:
    """Windows aligned frames across peers and mixes each window (sans-IO; ``now`` in seconds)."""

    window_timeout: float = 0.02
    peer_timeout: float = 0.2
    tolerance: float = 0.001
    limiter: str = "clip"

    #: The open window: its timestamp, format, frames by peer and the ``now`` it must close by.
    _window_ts: float | None = attrs.field(default=None, init=False)
    _format: tuple[int, int] = attrs.field(default=(0, 0), init=False)
    _frames: dict[str, Audio] = attrs.field(factory=dict, init=False)
    _deadline: float | None = attrs.field(default=None, init=False)
    #: Peers active when the window opened: once all of them contributed, it need not wait.
    _expected: frozenset[str] = attrs.field(default=frozenset(), init=False)
    #: Media time each peer was last heard at, and the newest window already mixed.
    _last_seen: dict[str, float] = attrs.field(factory=dict, init=False)
    _last_mixed: float = attrs.field(default=-math.inf, init=False)

    late: int = attrs.field(default=0, init=False)
    duplicates: int = attrs.field(default=0, init=False)
    mismatched: int = attrs.field(default=0, init=False)
    anonymous: int = attrs.field(default=0, init=False)
    windows: int = attrs.field(default=0, init=False)

    @property
    def deadline(self) -> float | None:
        """When :meth:`expire` should be called if nothing arrives (``None``: no open window)."""
        return self._deadline

    def active_peers(self, at: float) -> set[str]:
        return {p for p, seen in self._last_seen.items() if seen >= at - self.peer_timeout}

    def push(self, frame: Audio, now: float) -> list[Audio]:
        """Add one peer's frame; returns the mixes of any window this closed."""
        peer = frame.peer_id
        if peer is None:
            self.anonymous += 1
            return []
        ts = frame.timestamp
        if ts <= self._last_mixed + self.tolerance:
            # Too late for its window, but the peer is alive: wait for it from the next one on.
            self.late += 1
            self._last_seen[peer] = max(ts, self._last_seen.get(peer, -math.inf))
            return []
        out: list[Audio] = []
        if self._window_ts is not None:
            if ts < self._window_ts - self.tolerance:
                self.late += 1
                return out
            if ts > self._window_ts + self.tolerance:
                out.extend(self.flush())
            elif peer in self._frames:
                self.duplicates += 1
                return out
        if self._window_ts is None:
            self._window_ts = ts
            self._format = (frame.sample_rate, frame.channels)
            self._deadline = now + self.window_timeout
            self._expected = frozenset(self.active_peers(ts))
        if (frame.sample_rate, frame.channels) != self._format:
            if self.mismatched == 0:
                logger.warning(
                    "MixMinus: peer %r sends %d Hz x%d, the window is %d Hz x%d: dropping "
                    "(put a Resample node in front)",
                    peer,
                    frame.sample_rate,
                    frame.channels,
                    *self._format,
                )
            self.mismatched += 1
            return out
        self._frames[peer] = frame
        self._last_seen[peer] = max(ts, self._last_seen.get(peer, -math.inf))
        if self._expected and self._expected <= self._frames.keys():
            out.extend(self.flush())
        return out

    def expire(self, now: float) -> list[Audio]:
        """Mix the open window if its deadline passed."""
        if self._deadline is not None and now >= self._deadline:
            return self.flush()
        return []

    def flush(self) -> list[Audio]:
        """Mix the open window now (also at the end of the input)."""
        ts = self._window_ts
        if ts is None:
            return []
        frames = {peer: f.samples for peer, f in self._frames.items()}
        receivers = sorted(self.active_peers(ts) | frames.keys())
        rate, channels = self._format
        self._window_ts, self._deadline, self._frames = None, None, {}
        self._last_mixed = ts
        self.windows += 1
        for peer in [p for p, seen in self._last_seen.items() if seen < ts - self.peer_timeout]:
            del self._last_seen[peer]
        mixes = mix_minus(frames, receivers, self.limiter)
        return [
            Audio(
                samples=mix,
                sample_rate=rate,
                channels=channels,
                peer_id=None,
                timestamp=ts,
                to_peer=peer,
            )
            for peer, mix in mixes.items()
        ]


@register_node
class MixMinus(Node):
    """Conference mix: each active peer gets the sum of the others (see the module docstring)."""

    node_type = "MixMinus"
    accepts = (Audio,)
    emits = (Audio,)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        window = p.number("window_timeout_ms", 20.0, minimum=0.0, maximum=1_000.0)
        peer = p.number("peer_timeout_ms", 200.0, minimum=0.0, maximum=60_000.0)
        tolerance = p.number("align_tolerance_ms", 1.0, minimum=0.0, maximum=100.0)
        limiter = p.choice("limiter", LIMITERS, "clip")
        p.finish()
        return {
            "window_timeout_ms": window,
            "peer_timeout_ms": peer,
            "align_tolerance_ms": tolerance,
            "limiter": limiter,
        }

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.mixer = MixMinusMixer(
            window_timeout=params["window_timeout_ms"] / 1000.0,
            peer_timeout=params["peer_timeout_ms"] / 1000.0,
            tolerance=params["align_tolerance_ms"] / 1000.0,
            limiter=params["limiter"],
        )

    async def run(self, inputs: trio.abc.ReceiveChannel[RuntimeData], emit: Emit) -> None:
        mixer = self.mixer
        while True:
            frame: RuntimeData | None = None
            deadline = mixer.deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                try:
                    frame = await inputs.receive()
                except trio.EndOfChannel:
                    break
            now = trio.current_time()
            if frame is None:
                outputs = mixer.expire(now)
            else:
                assert isinstance(frame, Audio)
                outputs = mixer.push(frame, now)
            for out in outputs:
                await emit(out)
        for out in mixer.flush():
            await emit(out)
