"""The outgoing audio track under a real-time producer whose timestamps run ahead of its clock, and
after a stalled sender: it keeps (or returns to) sending the current frames (rtc/tracks.py, "Ahead
of the clock"; the soak's stuck members, docs/benchmarks.md "Soak").

The track and a producer run on an asyncio loop with virtual time: the loop's clock is the media
clock's fake clock, and a wait advances it instead of sleeping, so every run is exact and takes
milliseconds (the whole file well under a second).
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import numpy as np
import pytest

from meshrtc.rtc.peer import REALTIME_SEND_QUEUE
from meshrtc.rtc.tracks import AudioOutputTrack, MediaClock, VideoOutputTrack

START = 1000.0
SLOT = 0.02


class _Time:
    now = START


class _VirtualSelector(selectors.DefaultSelector):
    """``select(timeout)`` advances virtual time by ``timeout`` instead of waiting."""

    def __init__(self, time: _Time) -> None:
        super().__init__()
        self._time = time

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise AssertionError("the loop would wait for ever (nothing scheduled)")
        self._time.now += max(0.0, timeout)
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, time: _Time) -> None:
        super().__init__(_VirtualSelector(time))
        self._time = time

    def time(self) -> float:
        return self._time.now


def _run(time: _Time, main: Any) -> None:
    loop = _VirtualLoop(time)
    try:
        loop.run_until_complete(
            asyncio.wait_for(main, 60.0)
        )  # virtual seconds: a bound, not a wait
    finally:
        loop.close()


def _simulate(
    leads: list[tuple[float, float]],
    *,
    seconds: float,
    stall: tuple[float, float] | None = None,
    burst: int = 1,
) -> tuple[AudioOutputTrack, list[tuple[float, int, int]]]:
    """A producer hands frame ``k`` (every sample ``k``) over at ``START + 0.02 k`` stamped ``lead``
    ahead of then (``leads``: from which second on which lead); a sender pulls ``recv()`` as
    aiortc does (at once again), except during ``stall`` (start, length). ``burst``: frames come
    in groups that many at a time (a pipeline catching up), at the last one's time. Returns the
    track and what was sent: (virtual time, pts, level) per frame."""
    time = _Time()
    clock = MediaClock(clock=lambda: time.now)
    track = AudioOutputTrack(channels=2, max_queued=REALTIME_SEND_QUEUE, clock=clock)
    sent: list[tuple[float, int, int]] = []
    frames = round(seconds / SLOT)

    async def produce() -> None:
        for k in range(1, frames + 1):
            at = START + SLOT * (k + (-k) % burst)
            await asyncio.sleep(max(0.0, at - time.now))
            lead = [value for since, value in leads if k * SLOT >= since][-1]
            track.put(np.full((960, 2), k, np.int16), timestamp=START + SLOT * k + lead)

    async def send() -> None:
        end = START + seconds
        while time.now < end:
            if stall is not None and stall[0] <= time.now - START < stall[0] + stall[1]:
                await asyncio.sleep(START + stall[0] + stall[1] - time.now)
            frame = await track.recv()
            sent.append((time.now, int(frame.pts), int(frame.to_ndarray()[0, 0])))

    async def main() -> None:
        sender = asyncio.ensure_future(send())
        await produce()
        await sender

    _run(time, main())
    return track, sent


def _current(sent: list[tuple[float, int, int]], since: float) -> tuple[int, int, float]:
    """From ``since`` (s of the run) on: slots sent, of which mixes, and the oldest mix's age (s)
    when it went out (frame ``k`` was handed over at 0.02 k)."""
    tail = [(t - START, level) for t, _pts, level in sent if t - START >= since]
    mixes = [(t, level) for t, level in tail if level > 0]
    age = max((t - SLOT * level for t, level in mixes), default=float("inf"))
    return len(tail), len(mixes), age


@pytest.mark.parametrize("lead", [0.0, 0.15, 0.5])
def test_mixes_stamped_ahead_of_the_track_keep_going_out(lead: float) -> None:
    # The soak's stuck members: the mixes' timestamps drifted 100-150 ms ahead of the track (its
    # queue holds 100 ms). Here they jump from on time to ``lead`` ahead after one second.
    track, sent = _simulate([(0.0, 0.0), (1.0, lead)], seconds=3.0)
    slots, mixes, age = _current(sent, 1.2)
    assert slots >= 85  # about 90: the wire keeps its 20 ms pace
    assert mixes >= slots - 1  # every slot carries a mix (the old track: silence, for good)
    assert age <= REALTIME_SEND_QUEUE  # each one at most the queue's span after it was handed over
    # The wire stays continuous: every frame one slot after the one before.
    pts = [p for _t, p, _level in sent]
    assert all(b - a == 960 for a, b in zip(pts[-slots:], pts[-slots + 1 :], strict=False))
    assert track.dropped - track.late <= 1  # nothing piles up to be evicted
    assert (track.realigned > 0) == (lead > 0.05)


def test_a_lead_that_grows_a_slot_at_a_time_costs_one_hole_a_step() -> None:
    # As in the soak: MixMinus shifted its peers forward one slot at a time (0 -> 160 ms here),
    # and its mixes come two at a time.
    track, sent = _simulate([(0.5 * i, 0.02 * i) for i in range(9)], seconds=6.0, burst=2)
    slots, mixes, age = _current(sent, 0.1)
    assert slots >= 290
    assert slots - mixes <= 8  # one 20 ms hole per step forward (the old track: 120)
    assert age <= REALTIME_SEND_QUEUE
    assert track.realigned == 1  # once the queue could not hold the lead (from 100 ms on)
    assert track.dropped - track.late <= 5  # what was queued then, once


def test_a_lead_that_shrinks_lowers_the_offset_instead_of_dropping_frames_as_late() -> None:
    leads = [(0.0, 0.0), (1.0, 0.3), (2.0, 0.2), (3.0, 0.1), (4.0, 0.0)]
    track, sent = _simulate(leads, seconds=5.0)
    slots, mixes, age = _current(sent, 1.2)
    assert slots >= 185
    assert mixes >= slots - 1
    assert age <= REALTIME_SEND_QUEUE
    assert track.late == 0
    assert track.offset <= SLOT  # back on the producer's own timeline, within a slot


def test_after_a_stalled_sender_the_current_mixes_go_out_within_a_bounded_time() -> None:
    # The sender (aiortc's loop) does not pull for 1.5 s; the producer goes on, then runs ahead.
    track, sent = _simulate([(0.0, 0.0), (2.5, 0.3)], seconds=5.0, stall=(1.0, 1.5))
    slots, mixes, age = _current(sent, 2.5 + 0.2)  # 200 ms after it resumed and the lead jumped
    assert slots >= 110
    assert mixes >= slots - 1
    assert age <= REALTIME_SEND_QUEUE
    assert track.skipped > 0  # the stalled slots were skipped, not sent late in a burst


def test_pictures_stamped_ahead_of_the_track_are_sent_not_repeated_for_good() -> None:
    # The same for video: pictures 0.5 s ahead, a queue of two at 10 fps. The old track evicted
    # each before its release and never sent one.
    time = _Time()
    track = VideoOutputTrack(fps=10.0, clock=MediaClock(clock=lambda: time.now))
    sent: list[tuple[float, int]] = []
    seconds, step = 3.0, 0.1

    async def produce() -> None:
        for k in range(1, round(seconds / step) + 1):
            await asyncio.sleep(max(0.0, START + step * k - time.now))
            track.put(np.full((16, 16, 3), k, np.uint8), timestamp=time.now + 0.5)

    async def send() -> None:
        while (left := START + seconds - time.now) > 0:
            try:
                frame = await asyncio.wait_for(track.recv(), left)
            except TimeoutError:
                return
            sent.append((time.now - START, int(frame.to_ndarray(format="rgb24")[0, 0, 0])))

    async def main() -> None:
        sender = asyncio.ensure_future(send())
        await produce()
        await sender

    _run(time, main())
    tail = [(t, k) for t, k in sent if t >= 1.0]
    assert len({k for _t, k in tail}) >= 18  # about 20 pictures in those 2 s: each one sent
    assert max(t - step * k for t, k in tail) <= 2 * step  # each within two pictures of its put
