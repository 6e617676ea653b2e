"""MediaReceiver carries out its KeyframePolicy: loss reports become PLIs on the tap, never a storm.

No network and no aiortc: the receiver runs on a memory channel, with a stand-in tap (counts
``request_keyframe``) and a stand-in bridge (runs the call in trio), and is handed the items its
SyncManager would release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import Gap, KeyframeReason, KeyframeRequest
from meshrtc.media.keyframe import KeyframePolicy
from meshrtc.media.quality import ConnectionQuality
from meshrtc.media.sync import AlignedItem, SyncManager
from meshrtc.rtc.aiortc_adapter import RtcpActivity
from meshrtc.rtc.events import ReceivedMedia
from meshrtc.rtc.peer_stats import PeerStats
from meshrtc.rtc.receiver import MediaEvent, MediaReceiver


class FakeTap:
    def __init__(self) -> None:
        self.plis = 0

    def request_keyframe(self) -> None:
        self.plis += 1


class FakeBridge:
    async def run(self, fn: Callable[[], Any]) -> Any:
        return fn()


def _loss(at: float) -> AlignedItem:
    return AlignedItem(FrameType.VIDEO, KeyframeRequest(KeyframeReason.LOSS), None, at, at)


async def test_loss_reports_become_one_pli_and_an_unanswered_one_is_repeated() -> None:
    tap = FakeTap()
    stats = PeerStats()
    delivered: list[ReceivedMedia] = []
    fake_tap: Any = tap
    fake_bridge: Any = FakeBridge()
    receiver = MediaReceiver(
        "bob",
        tap=fake_tap,
        bridge=fake_bridge,
        sync=SyncManager("bob"),
        quality=ConnectionQuality("bob"),
        stats=stats,
        sender_reports={},
        deliver=delivered.append,
        close_timeout=1.0,
        started_at=0.0,
    )
    # Intervals far beyond the test's run time: the outcome does not depend on the machine's load.
    receiver.keyframes = KeyframePolicy(min_interval=1000.0, retry_interval=1000.0)
    send, media = trio.open_memory_channel[MediaEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver.run, media)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(5):  # a burst of loss reports (and nothing decoded)
            receiver.play(_loss(trio.current_time()))
        await trio.testing.wait_all_tasks_blocked()
        assert tap.plis == 1
        assert stats.keyframe_requests == 1
        assert receiver.keyframes.wanted_since is not None
        # Wake-ups of the receive loop (traffic) within the retry interval add nothing.
        await send.send(RtcpActivity(1, 0.0))
        await trio.testing.wait_all_tasks_blocked()
        assert tap.plis == 1
        # The loop carries out the policy's retry: with a policy whose interval has passed, the
        # next wake-up sends the repeated request.
        receiver.keyframes = KeyframePolicy(min_interval=1e-9, retry_interval=1e-9)
        receiver.keyframes.need(0.0)  # wanted; its own "send now" is not carried out here
        await send.send(RtcpActivity(1, 0.0))
        await trio.testing.wait_all_tasks_blocked()
        assert tap.plis == 2
        await send.aclose()
    assert stats.keyframe_requests == 2
    assert delivered == []
    assert receiver.last_activity == 0.0


def _video_packet(seq: int, frame: int, *, key: bool, at: float) -> MediaFrame:
    """One single-packet video frame at 30 fps; a keyframe's payload starts with b"K"."""
    return MediaFrame(
        FrameType.VIDEO, frame * 3000, seq, b"K" if key else b"D", at, marker_bit=True
    )


async def test_a_buffer_still_waiting_for_its_keyframe_rearms_a_satisfied_policy() -> None:
    """The jitter buffer asks for a keyframe once per loss. The SyncManager hands that request out
    at once but holds frames until their presentation time, so a keyframe released before the loss
    can reach the decoder after the request and satisfy the policy; if the keyframe the PLI brought
    is then lost too, the buffer drops every frame for good and nobody asks again (one pair of the
    five-peer mesh: video stuck at 2-4 pictures for 30 s). The receive loop asks again."""
    tap = FakeTap()
    fake_tap: Any = tap
    fake_bridge: Any = FakeBridge()
    sync = SyncManager("bob", is_keyframe=lambda f: bytes(f.payload[:1]) == b"K")
    receiver = MediaReceiver(
        "bob",
        tap=fake_tap,
        bridge=fake_bridge,
        sync=sync,
        quality=ConnectionQuality("bob"),
        stats=PeerStats(),
        sender_reports={},
        deliver=lambda _: None,
        close_timeout=1.0,
        started_at=0.0,
    )
    # Frame 0 (a keyframe) arrives, frame 1 never does, frame 2 does: the buffer declares frame 1
    # lost, asks once (the request this test does not hand to the receiver: the policy is as a
    # stale keyframe left it, satisfied) and drops what follows until a keyframe.
    buffer = sync.video_jitter_buffer
    for seq, frame, key in ((0, 0, True), (2, 2, False)):
        buffer.insert(_video_packet(seq, frame, key=key, at=frame / 30), frame / 30)
    popped = buffer.pop(1.0)
    assert KeyframeRequest(KeyframeReason.LOSS) in popped
    assert buffer.keyframe_outstanding
    assert receiver.keyframes.wanted_since is None
    send, media = trio.open_memory_channel[MediaEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver.run, media)
        await send.send(RtcpActivity(1, 0.0))  # any wake-up of the receive loop
        await trio.testing.wait_all_tasks_blocked()
        assert tap.plis == 1
        assert receiver.keyframes.wanted_since is not None  # and repeated until one comes
        await send.aclose()


def test_a_picture_takes_the_time_its_audio_leaves_the_drift_stage() -> None:
    """Audio leaves the drift stage on its own 20 ms frames; after a 6 ms step of the timeline it
    lands 6 ms off the presentation time until the stage's trim takes that back (seconds). A
    picture presented with that audio must take the same time, or the wire shows the step as A/V
    skew (it did: -5..+16 ms per connection through a transport)."""
    fake: Any = None
    receiver = MediaReceiver(
        "bob",
        tap=fake,
        bridge=fake,
        sync=SyncManager("bob"),
        quality=ConnectionQuality("bob"),
        stats=PeerStats(),
        sender_reports={},
        deliver=lambda _item: None,
        close_timeout=1.0,
        started_at=0.0,
    )

    def audio(n: int, presented: float) -> AlignedItem:
        gap = Gap(FrameType.AUDIO, n, 1, n * 960, presented)
        return AlignedItem(FrameType.AUDIO, gap, None, presented, presented)

    for n in range(50):
        receiver.play(audio(n, 100.0 + n * 0.02))
    for n in range(50, 60):  # the timeline steps 6 ms later
        receiver.play(audio(n, 100.006 + n * 0.02))
    presented = 100.006 + 59 * 0.02
    # A video item released at that instant (this one is not media, so no decoder is needed; a
    # VideoFrame passes the same way to the decode thread): its time is settled on delivery.
    receiver.play(_loss(presented))
    lead = receiver.audio_stage.lead_ms
    assert lead is not None
    assert abs(lead + 6.0) < 0.5
    when = receiver.video_local_time(presented)
    assert when == receiver.audio_stage.stamp_of(presented)
    assert abs(when - (presented - 0.006)) < 0.0005
    # No audio flowing near the picture: its presentation time, never before what was delivered.
    assert receiver.video_local_time(presented + 1.0) == presented + 1.0
