"""``bench/interop_runs.py --diag``: per-peer counters in ``meshrtc serve``'s log, every 0.5 s.

Python imports ``sitecustomize`` at start-up from the path; ``--diag`` puts this folder on the
server's ``PYTHONPATH``, so the serve process wraps four methods (nothing in src/ changes):

- ``SessionRouter.accept``: audio items per peer, their age at the router (``now - local_time``:
  how long after its presentation time an item reaches the pipeline), stale and grid drops;
- ``MixMinusMixer.push`` / ``expire``: frames late for their window and re-anchors per peer; per
  receiver, outputs with sound or silent, and their age when emitted (``now - timestamp``);
- ``AudioOutputTrack.recv`` / ``put``: per outgoing audio track, frames sent, late (dropped),
  silent; timestamped puts that leave a gap after the queued audio or overlap it (and by how much).

Lines look like ``INFO meshrtc.diag: age:bob {'n': 25, 'max_ms': 60, 'over40': 25}``. A method that
no longer exists is reported once and left alone (this follows the code, it is not part of it).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

log = logging.getLogger("meshrtc.diag")
_counts: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)
_last = [time.monotonic()]


def _flush() -> None:
    if time.monotonic() - _last[0] < 0.5:
        return
    _last[0] = time.monotonic()
    for key, counter in sorted(_counts.items()):
        log.info("%s %s", key, dict(counter))
    _counts.clear()


def _outputs(outs: list[Any]) -> None:
    now = time.monotonic()
    for o in outs:
        loud = bool(o.samples.size) and float(abs(o.samples).max()) > 1e-4
        age = round((now - o.timestamp) * 1000)
        c = _counts[f"out:{o.to_peer}"]
        c["loud" if loud else "silent"] += 1
        c["max_age_ms"] = max(c["max_age_ms"], age)
        c["over_40ms"] += int(age > 40)


def _install() -> None:
    from meshrtc.pipeline.nodes import mixminus
    from meshrtc.rtc import tracks
    from meshrtc.rtc.events import ReceivedAudio
    from meshrtc.session import router

    accept = router.SessionRouter.accept

    async def diag_accept(self: Any, item: Any, inputs: Any) -> bool:
        audio = isinstance(item, ReceivedAudio)
        if audio:
            peer = item.peer_id
            c = _counts[f"in:{peer}"]
            age = round((self._clock() - item.local_time) * 1000)
            c["items"] += 1
            c["max_age_ms"] = max(c["max_age_ms"], age)
            c["min_age_ms"] = min(c.get("min_age_ms", age), age)
            stale, grid = self.stale_dropped.get(peer, 0), self.grid_dropped.get(peer, 0)
        accepted: bool = await accept(self, item, inputs)
        if audio:
            c["stale"] += self.stale_dropped.get(peer, 0) - stale
            c["grid"] += self.grid_dropped.get(peer, 0) - grid
        _flush()
        return accepted

    router.SessionRouter.accept = diag_accept  # type: ignore[method-assign]

    push, expire = mixminus.MixMinusMixer.push, mixminus.MixMinusMixer.expire

    def diag_push(self: Any, frame: Any, now: float) -> Any:
        late, reanchors = self.late, self.reanchors
        out = push(self, frame, now)
        c = _counts[f"mix:{frame.peer_id}"]
        c["late"] += self.late - late
        c["reanchors"] += self.reanchors - reanchors
        _outputs(out)
        return out

    def diag_expire(self: Any, now: float) -> Any:
        out = expire(self, now)
        _counts["mix"]["expired_windows"] += int(bool(out))
        _outputs(out)
        return out

    mixminus.MixMinusMixer.push = diag_push  # type: ignore[method-assign]
    mixminus.MixMinusMixer.expire = diag_expire  # type: ignore[method-assign]

    recv = tracks.AudioOutputTrack.recv

    async def diag_recv(self: Any) -> Any:
        late, silent = self.late, self.silent
        frame = await recv(self)
        c = _counts[f"track:{id(self) & 0xFFFF:04x}"]
        c["sent"] += 1
        c["late"] += self.late - late
        c["silent"] += self.silent - silent
        return frame

    tracks.AudioOutputTrack.recv = diag_recv  # type: ignore[method-assign]

    put = tracks.AudioOutputTrack.put

    def diag_put(self: Any, samples: Any, timestamp: float | None = None) -> None:
        tail = getattr(self, "_tail", None)
        if timestamp is not None and tail is not None:
            clock = self.media_clock
            if clock.plausible(timestamp) is not None:
                start = clock.pts(timestamp, tracks.AUDIO_SAMPLE_RATE)
                jump = round((start - tail) / tracks.AUDIO_SAMPLE_RATE * 1000)
                c = _counts[f"track:{id(self) & 0xFFFF:04x}"]
                if jump > 2:
                    c["puts_gap"] += 1
                    c["gap_ms"] += jump
                elif jump < -2:
                    c["puts_overlap"] += 1
                    c["overlap_ms"] -= jump
        put(self, samples, timestamp)

    tracks.AudioOutputTrack.put = diag_put  # type: ignore[method-assign]


try:
    _install()
except (ImportError, AttributeError) as exc:
    print(f"interop diag not installed: {exc!r}", flush=True)
