"""The receive side of video shedding: while the transport sheds video (``VIDEO_OFF``) a member's
incoming video is not decoded at all (before, every frame was decoded and the router dropped the
picture), and when video comes back the decoder starts at a keyframe, asked for once.

Real links on loopback (``wired_pair``): bob sends a tone and a picture his track repeats at 10 fps;
alice's side of the link is the one that stops and resumes decoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from meshrtc.media.keyframe import KeyframePolicy
from meshrtc.rtc import receiver as receiver_module
from meshrtc.rtc.events import ReceivedVideo
from meshrtc.rtc.peer import PeerConnection
from meshrtc.session.shedding import SHED_PLANS, ShedLevel
from meshrtc.transport import _shed_peer_video

from .peer_helpers import TEST_OPTIONS, picture, tone, wired_pair


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[PeerConnection, PeerConnection, trio.Nursery]]:
    async with wired_pair(options=TEST_OPTIONS) as pair:
        a, b = pair.a, pair.b
        await pair.nursery.start(a.run)
        await pair.nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        try:
            yield a, b, pair.nursery
        finally:
            await a.aclose()
            await b.aclose()


async def test_video_off_decodes_nothing_and_resumes_at_a_keyframe_asked_for_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded_jobs: list[bool] = []  # per job the decode thread ran: was it a keyframe
    real = receiver_module._decode_on_worker

    def recording(decoder: Any, job: Any) -> Any:
        decoded_jobs.append(job.keyframe)
        return real(decoder, job)

    monkeypatch.setattr(receiver_module, "_decode_on_worker", recording)
    async with _pair() as (a, b, nursery):
        await b.send_audio(tone(20.0))
        await b.send_video(picture(80))
        pictures = 0
        waiters: list[tuple[Callable[[], bool], trio.Event]] = []

        async def drain() -> None:
            """Everything alice receives (audio: 50 wake-ups a second) re-checks the waiters."""
            nonlocal pictures
            async for item in a.received:
                pictures += isinstance(item, ReceivedVideo)
                for waiter in [w for w in waiters if w[0]()]:
                    waiters.remove(waiter)
                    waiter[1].set()

        async def until(condition: Callable[[], bool]) -> None:
            with trio.fail_after(15):
                if not condition():
                    waiters.append((condition, done := trio.Event()))
                    await done.wait()

        nursery.start_soon(drain)
        await until(lambda: pictures >= 3)
        link = a._link
        assert link is not None
        receiver = link.receiver
        worker = receiver.video_worker
        assert worker is not None

        # The sender's keyframe comes 0.5 s after the request (≈5 frames at 10 fps): frames that
        # reference pictures the decoder never saw come first and must be skipped. No retries
        # within the test (the policy's retrying is test_keyframe.py's).
        receiver.keyframes = KeyframePolicy(min_interval=0.3, retry_interval=1000.0)
        asked: list[float] = []
        send_pli = receiver._send_pli_soon

        def delayed_pli() -> None:
            asked.append(trio.current_time())

            async def later() -> None:
                await trio.sleep(0.5)
                send_pli()

            nursery.start_soon(later)

        monkeypatch.setattr(receiver, "_send_pli_soon", delayed_pli)

        a.set_video_decode(False)
        submitted, requests = worker.submitted, a.stats.keyframe_requests
        shed_before, packets_before = a.stats.video_frames_shed, a.stats.video_packets
        await until(lambda: a.stats.video_frames_shed >= shed_before + 8)  # 0.8 s at 10 fps
        assert worker.submitted == submitted  # nothing went to the decoder
        assert a.stats.video_packets > packets_before  # while the packets kept coming
        assert asked == []  # and nobody asked for a keyframe
        pictures_off = pictures
        decoded_jobs.clear()

        a.set_video_decode(True)
        assert len(asked) == 1  # asked for at once
        await until(lambda: pictures >= pictures_off + 3)
        # The first frame decoded after the pause is a keyframe (the ones before it referenced
        # frames the decoder never saw), and it answered the request.
        assert decoded_jobs[0] is True
        assert receiver.keyframes.wanted_since is None
        assert len(asked) == 1  # and only once
        assert a.stats.keyframe_requests == requests + 1
        assert a.stats.video_decode_errors == 0
        nursery.cancel_scope.cancel()


class _Peer:
    """What ``_shed_peer_video`` reads and calls on a PeerConnection."""

    def __init__(self, *, video: bool, send_media: bool, receive_media: bool) -> None:
        self.video, self.send_media, self.receive_media = video, send_media, receive_media
        self.decode: list[bool] = []
        self.plans: list[bool] = []

    def set_video_decode(self, on: bool) -> None:
        self.decode.append(on)

    def set_video_plan(self, **plan: Any) -> None:
        self.plans.append(plan["video"])


def test_the_transport_turns_decoding_off_with_video_and_only_for_members_who_publish() -> None:
    publisher = _Peer(video=True, send_media=True, receive_media=True)
    listener = _Peer(video=True, send_media=True, receive_media=False)
    audio_only = _Peer(video=False, send_media=True, receive_media=True)
    for level in (ShedLevel.VIDEO_FRAMERATE, ShedLevel.VIDEO_OFF, ShedLevel.VIDEO_BITRATE):
        for peer in (publisher, listener, audio_only):
            fake: Any = peer
            _shed_peer_video(fake, SHED_PLANS[level])
    assert publisher.decode == [True, False, True]
    assert listener.decode == []  # its packets are dropped on arrival anyway
    assert audio_only.decode == []
    assert publisher.plans == listener.plans == [True, False, True]
