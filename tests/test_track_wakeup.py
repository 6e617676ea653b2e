"""Tracks parked on one loop and notified in one go from another thread share one wake-up; a
queued picture is waited for, not spun on.

The router hands every member's mix to its track in one 20 ms slot from trio's thread; one
``call_soon_threadsafe`` per track was a self-pipe write and a GIL hand-off per member per slot
(rtc/tracks.py, ``_LoopWaker``). Under 1 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import trio
import trio.lowlevel

from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.tracks import VideoOutputTrack, _Wakeup, loop_waker

PARKED = 6


def test_one_cross_thread_call_wakes_every_track_notified_meanwhile() -> None:
    async def main() -> tuple[int, Any, Any]:
        loop = asyncio.get_running_loop()
        calls: list[object] = []
        real = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(callback)
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        wakeups = [_Wakeup() for _ in range(PARKED)]
        parked = [asyncio.create_task(w.wait(30.0, lambda: False)) for w in wakeups]
        await asyncio.sleep(0)  # each task is now parked on its event
        # The loop thread is blocked in join(): every notify lands before any flush can run.
        producer = threading.Thread(target=lambda: [w.notify() for w in wakeups])
        producer.start()
        producer.join(timeout=10)
        async with asyncio.timeout(10):  # woken by the flush, not by the 30 s timeout
            await asyncio.gather(*parked)
        waker = loop_waker(loop)
        return len(calls), waker.flushes, waker.notified

    calls, flushes, notified = asyncio.run(main())
    assert (calls, flushes, notified) == (1, 1, PARKED)


async def test_notifies_from_trio_cross_once_at_the_end_of_its_batch() -> None:
    """From trio (the router's thread) the crossing waits for the end of trio's batch of tasks:
    the loop thread, idle and free to run a flush between two notifies, still gets one."""
    async with open_bridge(name="test-track-wakeup") as bridge:
        loop = bridge.loop
        flushes: list[object] = []
        real = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(callback, "__name__", "") == "_flush":
                flushes.append(callback)
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        wakeups = [_Wakeup() for _ in range(PARKED)]

        async def park_all() -> None:
            await asyncio.gather(*(w.wait(30.0, lambda: False) for w in wakeups))

        with trio.fail_after(10):  # woken by the flush, not by the 30 s timeout
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run, park_all)
                while not all(w._event is not None for w in wakeups):  # noqa: ASYNC110
                    await trio.sleep(0.001)
                for w in wakeups:  # one trio batch: no checkpoint in between
                    w.notify()
                assert flushes == []  # nothing crossed yet: it waits for this batch to end
        assert len(flushes) == 1


def test_a_notify_after_the_flush_schedules_another() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            wakeup = _Wakeup()
            parked = asyncio.create_task(wakeup.wait(30.0, lambda: False))
            await asyncio.sleep(0)
            producer = threading.Thread(target=wakeup.notify)
            producer.start()
            producer.join(timeout=10)
            async with asyncio.timeout(10):
                await parked
        waker = loop_waker(loop)
        return waker.flushes, waker.notified

    assert asyncio.run(main()) == (3, 3)


def test_a_notify_with_nobody_parked_crosses_nothing() -> None:
    wakeup = _Wakeup()
    wakeup.notify()  # no loop, no event: nothing to wake, nothing raised


class _CountingWakeup(_Wakeup):
    """A _Wakeup that counts its waits (how often recv() went round its loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    async def wait(self, seconds: float, ready: Any) -> None:
        self.waits += 1
        await super().wait(seconds, ready)


def test_video_recv_waits_for_a_queued_pictures_release_without_spinning() -> None:
    """A picture is released ``smoothing`` (20 ms) after its capture; recv() used to wake at once
    while one was queued and go round until then (hundreds of turns per picture)."""
    track = VideoOutputTrack(fps=10)
    counting = _CountingWakeup()
    track._wakeup = counting
    picture = np.zeros((120, 160, 3), dtype=np.uint8)
    track.put(picture, timestamp=time.monotonic())  # released 20 ms from now
    frame = asyncio.run(asyncio.wait_for(track.recv(), 5))
    assert frame.pts is not None
    assert track.sent == 1
    assert counting.waits <= 3  # one timed wait (a second if the timer fired a hair early)
