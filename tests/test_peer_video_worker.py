"""Video is decoded on the link's own thread (``meshrtc-video-<peer>``), started by the first frame
and joined when the connection closes; pictures still arrive in order with non-decreasing local
times across all of a peer's items; a decoder that falls behind drops frames and asks for a
keyframe instead of queueing latency."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from meshrtc.rtc import receiver as receiver_module
from meshrtc.rtc.events import ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection

from .peer_helpers import TEST_OPTIONS, picture, tone, wired_pair


def _video_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("meshrtc-video-")}


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[PeerConnection, PeerConnection]]:
    """Alice's connection to bob (``a``) and bob's to alice (``b``), connected, wired directly."""
    async with wired_pair(options=TEST_OPTIONS) as pair:
        a, b = pair.a, pair.b
        await pair.nursery.start(a.run)
        await pair.nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()


async def test_video_decodes_on_a_per_link_thread_that_closing_joins() -> None:
    assert _video_threads() == set()
    async with _pair() as (a, b):
        await a.send_audio(tone(2.0))
        assert _video_threads() == set()  # nothing decoded yet: no thread
        await b.send_video(picture(80))

        got: list[ReceivedMedia] = []
        with trio.fail_after(15):
            while sum(isinstance(x, ReceivedVideo) for x in got) < 8:
                got.append(await a.received.receive())
            # The pictures alice receives from bob were decoded on the thread named for bob.
            assert "meshrtc-video-bob" in _video_threads()
        video = [x for x in got if isinstance(x, ReceivedVideo)]
        assert all(y.frame.pts > x.frame.pts for x, y in itertools.pairwise(video))  # type: ignore[operator]
        # One timeline for the whole peer, although video is delivered from another task.
        assert all(y.local_time >= x.local_time for x, y in itertools.pairwise(got))
        assert a.stats.video_frames >= len(video)
        assert a.stats.video_frames_dropped == 0
        link = a._link
        assert link is not None
        worker = link.receiver.video_worker
        assert worker is not None
        assert worker.submitted >= len(video)

        await a.aclose()
        assert not worker.alive
        assert "meshrtc-video-bob" not in _video_threads()
    assert _video_threads() == set()


async def test_a_decoder_that_falls_behind_drops_frames_and_asks_for_a_keyframe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    real = receiver_module._decode_on_worker

    def stuck(decoder: Any, job: Any) -> Any:
        assert gate.wait(15), "the test never let the decoder go"
        return real(decoder, job)

    monkeypatch.setattr(receiver_module, "_decode_on_worker", stuck)
    monkeypatch.setattr(receiver_module, "_VIDEO_BACKLOG", 2)
    async with _pair() as (a, b):
        await b.send_audio(tone(4.0))  # audio keeps flowing: it is what wakes this test up
        await b.send_video(picture(80))
        got: list[ReceivedMedia] = []
        with trio.fail_after(15):
            while a.stats.video_frames_dropped < 3:
                got.append(await a.received.receive())
        assert not any(isinstance(x, ReceivedVideo) for x in got)  # all stuck in the decoder
        assert a.stats.keyframe_requests >= 1
        link = a._link
        assert link is not None
        worker = link.receiver.video_worker
        assert worker is not None
        assert worker.pending == 2  # the backlog never grew past its bound
        requests = a.stats.keyframe_requests

        gate.set()
        with trio.fail_after(15):
            # The two frames in hand, then pictures again from a keyframe on.
            while sum(isinstance(x, ReceivedVideo) for x in got) < 6:
                got.append(await a.received.receive())
        assert a.stats.keyframe_requests >= requests
        assert not link.receiver.keyframes.skipping
        video = [x for x in got if isinstance(x, ReceivedVideo)]
        assert all(y.frame.pts > x.frame.pts for x, y in itertools.pairwise(video))  # type: ignore[operator]
        assert all(y.local_time >= x.local_time for x, y in itertools.pairwise(got))
    assert _video_threads() == set()
