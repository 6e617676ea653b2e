"""MixMinus: every peer hears the mix of everyone else (the conference case).

The inputs are each peer's audio, aligned in time by the session router: frames of different peers
that belong to the same instant carry the same ``timestamp``. The mixer groups them into *windows*
by timestamp and, for each window, sends every peer the sum of the *other* peers' frames, addressed
to it (``to_peer``). A peer never receives its own signal.

When is a window complete? When every peer that was *active* when it opened has contributed, where
active means it sent a frame within the last ``peer_timeout_ms`` of media time; the steady state
therefore adds no waiting. Several windows stay open at once, so a peer whose frames reach the mixer
a window or two behind the others' (its jitter buffer releases later, its feeding task ran later) is
still mixed in: a newer window's frames never close an older window. A peer whose frame is missing
(loss, a peer that just left) does not stall the others: its window is mixed without it
``window_timeout_ms`` after it opened, or when more than ``max_windows`` are open. Such a peer still
receives the others' mix, so its output stays continuous. Windows are mixed oldest first, so every
peer's output stays in time order. The very first window has no known peers: it is mixed when a newer
one opens, on its timeout, or at the end of the input. A peer that joins later may see its first
frame arrive after its window was already mixed: that frame is dropped (counted as late), and from
then on the peer is waited for.

Re-anchoring: a peer whose frames all come too late for their windows for
``reanchor_after`` (100 ms of ``now``) is not dropped for good. Its timestamps run behind the
session's (its timeline jumped back, or the others' jumped ahead), so from then on they are shifted
by a constant that puts its next frame into the newest window still open (or the one after the
newest mixed), and it is mixed again: ``reanchors`` counts it. Likewise a peer whose frames arrive
in time but keep every window waiting more than ``max_lag`` (20 ms) for 500 ms: every
mix would leave that much older (the outgoing audio track drops frames 40 ms past their timestamp,
so everybody heard silence). Its timestamps are shifted forward by the least the others' were ahead
of its own (whole slots), and its frames open windows the others then complete. A shift stays with
its peer (one that no longer fits makes the peer late again, or the others wait for nobody).

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

    One slot for every member at once: the frames are stacked into one float64 matrix (zero-padded
    to the longest), summed once, and each sender's row is subtracted from the total in one
    vectorised step; the limiter and the float32 conversion then run once over the whole
    receivers × samples block. A per-receiver loop did the copy, the subtraction, the limiter and
    the conversion once per member, each a handful of numpy calls on 960-sample rows, where the
    interpreter overhead, not the arithmetic, is the cost. ``total − own`` leaves no audible trace
    of the receiver's own signal (error ~1e-16 of the total, far below float32's resolution; exact
    for samples that came from 16-bit PCM).

    The outputs are rows of one array: each is a read-only view, so keeping one mix keeps the slot's
    block (receivers × samples float32) alive, which is what the pipeline's outputs cost anyway.
    """
    names = list(receivers)
    if not names:
        return {}
    row_of = {peer: row for row, peer in enumerate(frames)}
    sizes = {f.size for f in frames.values()}
    length = max(sizes, default=0)
    if len(sizes) == 1:
        stacked = np.array(list(frames.values()), np.float64)  # the usual slot: one call
    else:
        stacked = np.zeros((len(frames), length), np.float64)
        for row, samples in enumerate(frames.values()):
            stacked[row, : samples.size] = samples
    total = stacked.sum(axis=0)
    # Row r: everyone but sender r. Receivers that sent nothing (listeners, a lost frame) all hear
    # the same thing, the whole total: one extra row they share.
    listening = any(p not in row_of for p in names)
    out = np.empty((len(frames) + listening, length), np.float64)
    np.subtract(total, stacked, out=out[: len(frames)])
    if listening:
        out[-1] = total
    limited = limit(out, limiter)
    limited.flags.writeable = False
    return {peer: limited[row_of.get(peer, -1)] for peer in names}


@attrs.define
class _Window:
    """One instant being collected: its frames by peer, format, and when it must be mixed by."""

    ts: float
    rate_channels: tuple[int, int]
    deadline: float
    #: Peers active when the window opened: once all of them contributed, it need not wait.
    expected: frozenset[str]
    frames: dict[str, Audio] = attrs.Factory(dict)

    @property
    def complete(self) -> bool:
        return bool(self.expected) and self.expected <= self.frames.keys()


@attrs.define
class MixMinusMixer:
    """Windows aligned frames across peers and mixes each window (sans-IO; ``now`` in seconds)."""

    window_timeout: float = 0.06
    peer_timeout: float = 0.2
    tolerance: float = 0.001
    limiter: str = "clip"
    #: Windows that may be open at once; opening one more mixes the oldest.
    max_windows: int = 5
    #: A peer late for this long (seconds of ``now``) is re-anchored (module docstring).
    reanchor_after: float = 0.1
    #: A peer that keeps every window waiting longer than ``max_lag`` (seconds) for
    #: ``lag_reanchor_after`` is re-anchored too. Longer than the router grid's 200 ms bound on a
    #: peer's lead, so a peer briefly ahead never makes the others look like laggards.
    max_lag: float = 0.02
    lag_reanchor_after: float = 0.5

    #: Open windows, oldest first.
    _open: list[_Window] = attrs.field(factory=list, init=False)
    #: Media time each peer was last heard at, and the newest window already mixed.
    _last_seen: dict[str, float] = attrs.field(factory=dict, init=False)
    _last_mixed: float = attrs.field(default=-math.inf, init=False)
    #: Per peer: the shift added to its timestamps, and since when its frames have all been late.
    _shift: dict[str, float] = attrs.field(factory=dict, init=False)
    _late_since: dict[str, float] = attrs.field(factory=dict, init=False)
    #: Per peer: since when every frame of it kept its window waiting over ``max_lag``, and the
    #: least wait since then.
    _lag_since: dict[str, float] = attrs.field(factory=dict, init=False)
    _lag_min: dict[str, float] = attrs.field(factory=dict, init=False)
    #: The newest timestamp any peer pushed, and the slot length (the least gap seen between two
    #: windows mixed one after the other; one Opus frame until then).
    _newest: float = attrs.field(default=-math.inf, init=False)
    _step: float = attrs.field(default=0.02, init=False)

    late: int = attrs.field(default=0, init=False)
    duplicates: int = attrs.field(default=0, init=False)
    mismatched: int = attrs.field(default=0, init=False)
    anonymous: int = attrs.field(default=0, init=False)
    windows: int = attrs.field(default=0, init=False)
    reanchors: int = attrs.field(default=0, init=False)

    @property
    def deadline(self) -> float | None:
        """When :meth:`expire` should be called if nothing arrives (``None``: no open window)."""
        return self._open[0].deadline if self._open else None

    def active_peers(self, at: float) -> set[str]:
        return {p for p, seen in self._last_seen.items() if seen >= at - self.peer_timeout}

    def push(self, frame: Audio, now: float) -> list[Audio]:
        """Add one peer's frame; returns the mixes of any windows this completed, oldest first."""
        peer = frame.peer_id
        if peer is None:
            self.anonymous += 1
            return []
        ts = frame.timestamp + self._shift.get(peer, 0.0)
        if ts <= self._last_mixed + self.tolerance:
            since = self._late_since.setdefault(peer, now)
            if now - since < self.reanchor_after:
                # Too late for its window, but the peer is alive: it is waited for from the next
                # one on.
                self._last_seen[peer] = max(ts, self._last_seen.get(peer, -math.inf))
                self.late += 1
                return []
            ts = self._reanchor(peer, ts)
        self._late_since.pop(peer, None)
        seen = max(ts, self._last_seen.get(peer, -math.inf))
        newest = self._newest
        self._newest = max(self._newest, ts)
        out: list[Audio] = []
        window = self._window_for(ts, frame, now, out)
        self._last_seen[peer] = seen  # after: a window never waits for the peer that opened it
        if (frame.sample_rate, frame.channels) != window.rate_channels:
            if self.mismatched == 0:
                logger.warning(
                    "MixMinus: peer %r sends %d Hz x%d, the window is %d Hz x%d: dropping "
                    "(put a Resample node in front)",
                    peer,
                    frame.sample_rate,
                    frame.channels,
                    *window.rate_channels,
                )
            self.mismatched += 1
        elif peer in window.frames:
            self.duplicates += 1
        else:
            window.frames[peer] = frame
            self._note_wait(peer, window, newest, now)
        out.extend(self._close_ready(now))
        return out

    def _note_wait(self, peer: str, window: _Window, newest: float, now: float) -> None:
        """A peer that keeps every window waiting more than ``max_lag`` for ``lag_reanchor_after``
        is shifted forward by what it lags by at least (module docstring)."""
        waited = now - (window.deadline - self.window_timeout)
        if waited <= self.max_lag:
            self._lag_since.pop(peer, None)
            self._lag_min.pop(peer, None)
            return
        since = self._lag_since.setdefault(peer, now)
        # How far the others' timestamps are ahead of this frame's: a whole number of slots.
        behind = max(0.0, newest - window.ts)
        least = self._lag_min[peer] = min(self._lag_min.get(peer, math.inf), behind)
        if now - since < self.lag_reanchor_after:
            return
        # By what it lagged at least: never past its fastest frame, so the others do not end up
        # waiting for it the other way round.
        self._shift[peer] = self._shift.get(peer, 0.0) + (
            least if least > self.tolerance else self._step
        )
        del self._lag_since[peer], self._lag_min[peer]
        self.reanchors += 1
        logger.info(
            "MixMinus: peer %r kept every window waiting %.0f ms or more for %.0f ms: "
            "re-anchored (its timestamps now shifted by %+.0f ms)",
            peer,
            least * 1000,
            self.lag_reanchor_after * 1000,
            self._shift[peer] * 1000,
        )

    def _reanchor(self, peer: str, ts: float) -> float:
        """Shift ``peer``'s timestamps so this frame lands in the newest open window it is not in
        yet (or just after the newest window mixed, or after the newest open one)."""
        # The newest open window it is not in: the one the others are filling now.
        target = next((w.ts for w in reversed(self._open) if peer not in w.frames), None)
        if target is None:
            newest = self._open[-1].ts if self._open else self._last_mixed
            target = newest + self._step
        self._shift[peer] = self._shift.get(peer, 0.0) + (target - ts)
        del self._late_since[peer]
        self.reanchors += 1
        logger.info(
            "MixMinus: peer %r was late for every window for %.0f ms: re-anchored (its timestamps "
            "now shifted by %+.0f ms)",
            peer,
            self.reanchor_after * 1000,
            self._shift[peer] * 1000,
        )
        return target

    def _window_for(self, ts: float, frame: Audio, now: float, out: list[Audio]) -> _Window:
        """The open window at ``ts``, or a new one (in order; the oldest mixed if too many)."""
        index = 0
        for index, window in enumerate(self._open):  # noqa: B007 - the insertion point is used
            if abs(ts - window.ts) <= self.tolerance:
                return window
            if ts < window.ts:
                break
        else:
            index = len(self._open)
        # Nobody known yet: a window with nothing to wait for closes once a newer one opens.
        if index == len(self._open) and self._open and not self._open[-1].expected:
            out.extend(self.flush())
            index = 0
        window = _Window(
            ts,
            (frame.sample_rate, frame.channels),
            now + self.window_timeout,
            frozenset(self.active_peers(ts)),
        )
        self._open.insert(min(index, len(self._open)), window)
        while len(self._open) > self.max_windows:
            out.extend(self._mix(self._open.pop(0)))
        return window

    def _close_ready(self, now: float) -> list[Audio]:
        """Mix from the oldest on while windows are complete or due: outputs stay in time order."""
        out: list[Audio] = []
        while self._open and (self._open[0].complete or now >= self._open[0].deadline):
            out.extend(self._mix(self._open.pop(0)))
        return out

    def expire(self, now: float) -> list[Audio]:
        """Mix every window whose deadline passed (and the complete ones behind it)."""
        return self._close_ready(now)

    def flush(self) -> list[Audio]:
        """Mix every open window now (also at the end of the input)."""
        out: list[Audio] = []
        while self._open:
            out.extend(self._mix(self._open.pop(0)))
        return out

    def _mix(self, window: _Window) -> list[Audio]:
        ts = window.ts
        frames = {peer: f.samples for peer, f in window.frames.items()}
        receivers = sorted(self.active_peers(ts) | frames.keys())
        rate, channels = window.rate_channels
        gap = ts - self._last_mixed
        if self.tolerance < gap < self._step:
            self._step = gap
        self._last_mixed = max(self._last_mixed, ts)
        self.windows += 1
        for peer in [p for p, seen in self._last_seen.items() if seen < ts - self.peer_timeout]:
            del self._last_seen[peer]
        mixes = mix_minus(frames, receivers, self.limiter)
        arrivals = {p: f.arrived_at for p, f in window.frames.items() if f.arrived_at is not None}
        return [
            Audio(
                samples=mix,
                sample_rate=rate,
                channels=channels,
                peer_id=None,
                timestamp=ts,
                to_peer=peer,
                # The newest packet in this peer's mix (its own frame is not in it).
                arrived_at=max((t for p, t in arrivals.items() if p != peer), default=None),
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
        window = p.number("window_timeout_ms", 60.0, minimum=0.0, maximum=1_000.0)
        peer = p.number("peer_timeout_ms", 200.0, minimum=0.0, maximum=60_000.0)
        tolerance = p.number("align_tolerance_ms", 1.0, minimum=0.0, maximum=100.0)
        limiter = p.choice("limiter", LIMITERS, "clip")
        max_windows = p.integer("max_windows", 5, minimum=1, maximum=50)
        reanchor = p.number("reanchor_after_ms", 100.0, minimum=0.0, maximum=60_000.0)
        p.finish()
        return {
            "max_windows": max_windows,
            "reanchor_after_ms": reanchor,
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
            max_windows=params["max_windows"],
            reanchor_after=params["reanchor_after_ms"] / 1000.0,
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
