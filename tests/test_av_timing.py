"""A/V timing of what meshrtc sends (docs/media-sync.md): one media clock per connection, SRs on it, levels.

Unit tests drive the outgoing tracks with an injected clock that is always past the release time
(or the deadline) of the frame asked for, so ``recv()`` never waits and each test is exact. The
loopback test wires two real PeerConnections: alice sends a beep and a white frame stamped with
the same capture time every 0.5 s; bob maps both through alice's Sender Reports
(``tests/av_probe.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import av
import numpy as np
import pytest
import trio

from meshrtc.config import TransportConfig
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET, ntp_to_seconds
from meshrtc.pipeline.data import Audio, Video
from meshrtc.rtc.aiortc_adapter import (
    SENDER_NTP_TIMESTAMP,
    SENDER_RTP_TIMESTAMP,
    SenderControl,
)
from meshrtc.rtc.peer import PeerOptions
from meshrtc.rtc.tracks import AudioOutputTrack, MediaClock, VideoOutputTrack
from meshrtc.session.router import _send as router_send
from meshrtc.session.stream import SessionPeer

from .av_probe import Received, analyse, receive, send_events
from .peer_helpers import wired_pair

START = 1000.0
WALL = 1_700_000_000.0
LATENCY = 0.04


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now + 1e-6  # just past what a test sets, whatever the float rounding


def _clock(fake: FakeClock) -> MediaClock:
    return MediaClock(latency=LATENCY, clock=fake, wall=lambda: WALL + (fake.now - START))


def _pull(track: AudioOutputTrack | VideoOutputTrack) -> Any:
    return asyncio.run(track.recv())


def _chunk(value: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.full(960, value, dtype=np.int16)


def _level(frame: av.AudioFrame) -> int:
    return int(frame.to_ndarray()[0, 0])


# --- the media clock ------------------------------------------------------------------------------


def test_audio_and_video_share_one_epoch_and_map_to_the_same_ntp() -> None:
    fake = FakeClock()
    clock = _clock(fake)
    audio = AudioOutputTrack(clock=clock)
    video = VideoOutputTrack(clock=clock)
    video.put(np.zeros((4, 4, 3), np.uint8), timestamp=START - 0.01)  # video first: the epoch
    audio.put(_chunk(1), timestamp=START + 0.5)
    fake.now = START + 0.5 + LATENCY
    frame = _pull(audio)
    assert frame.pts == round((0.51 + LATENCY) * 48_000)
    fake.now = START + 0.6  # video's due time is long past: it goes at once, with its own pts
    picture = _pull(video)
    assert picture.pts == round(LATENCY * 90_000)
    # One line for both: the NTP of a pts is the epoch's wall time + pts / rate.
    assert audio.ntp_time(frame.pts) - video.ntp_time(picture.pts) == pytest.approx(
        0.51 * 2**32, abs=2**32 * 1e-5
    )
    # ... and it is the capture time on the wall clock (the picture was captured 10 ms before START).
    captured = ntp_to_seconds(video.ntp_time(picture.pts))
    assert captured == pytest.approx(WALL - 0.01 + NTP_EPOCH_OFFSET, abs=1e-5)


def test_a_timestamp_on_another_clock_counts_as_handed_over_now() -> None:
    fake = FakeClock()
    clock = _clock(fake)
    audio = AudioOutputTrack(clock=clock)
    audio.put(_chunk(1), timestamp=0.0)  # a node that left RuntimeData.timestamp at 0
    assert audio.untimed == 1
    fake.now += LATENCY
    assert _pull(audio).pts == round(LATENCY * 48_000)


# --- audio: levels, not drift ---------------------------------------------------------------------


def test_audio_pts_follow_timestamps_and_an_underrun_does_not_shift_later_frames() -> None:
    fake = FakeClock()
    audio = AudioOutputTrack(clock=_clock(fake))
    base = round(LATENCY * 48_000)
    for k in range(2):
        audio.put(_chunk(k + 1), timestamp=START + 0.02 * k)
    sent = []
    for k in range(3):  # slot 2 has nothing yet: silence
        fake.now = START + LATENCY + 0.02 * k
        sent.append(_pull(audio))
    assert [(f.pts - base, _level(f)) for f in sent] == [(0, 1), (960, 2), (1920, 0)]
    assert audio.silent == 1
    # Slot 2's frame arrives after its slot went out as silence, with slot 3's on time.
    audio.put(_chunk(3), timestamp=START + 0.04)
    audio.put(_chunk(4), timestamp=START + 0.06)
    fake.now = START + LATENCY + 0.06
    frame = _pull(audio)
    # The late frame is dropped and counted; slot 3 carries slot 3's samples (not shifted by 20 ms).
    assert (frame.pts - base, _level(frame)) == (2880, 4)
    assert (audio.late, audio.dropped) == (1, 1)


def test_audio_without_timestamps_continues_the_queue_or_restarts_at_now() -> None:
    fake = FakeClock()
    audio = AudioOutputTrack(clock=_clock(fake))
    base = round(LATENCY * 48_000)
    audio.put(np.ones(1440, np.int16))  # 1.5 frames: the half waits for more
    fake.now += 0.01
    audio.put(np.full(480, 2, np.int16))  # continues the half frame, not "now"
    fake.now = START + LATENCY + 0.02
    assert [(_pull(audio).pts - base) for _ in range(2)] == [0, 960]
    # The queue ran dry long ago: new samples start now (the silence before them is a gap).
    fake.now = START + 1.0
    audio.put(_chunk(5))
    fake.now += LATENCY
    frame = _pull(audio)
    assert (frame.pts, _level(frame)) == (round((1.0 + LATENCY) * 48_000), 5)
    assert audio.skipped > 0  # the slots the idle second would have held were skipped, not sent


def test_a_clip_longer_than_the_queue_plays_its_end_from_now() -> None:
    fake = FakeClock()
    audio = AudioOutputTrack(clock=_clock(fake), max_queued=0.1)  # 5 frames
    audio.put(np.repeat(np.arange(1, 11, dtype=np.int16), 960))  # 10 frames, no timestamp
    assert (audio.queued, audio.dropped) == (5, 5)
    fake.now += 0.02  # released one smoothing interval after it was handed over
    frame = _pull(audio)
    assert (frame.pts, _level(frame)) == (round(LATENCY * 48_000), 6)  # not 100 ms of silence


def test_audio_frames_queued_before_the_sender_started_are_late_not_sent_late() -> None:
    fake = FakeClock()
    audio = AudioOutputTrack(clock=_clock(fake))
    for k in range(10):
        audio.put(_chunk(k + 1), timestamp=START + 0.02 * k)
    fake.now = START + LATENCY + 0.15  # the link connected 150 ms after the first frame was due
    frame = _pull(audio)
    assert frame.pts == round((0.02 * 7 + LATENCY) * 48_000)  # the slot of now: on time
    assert _level(frame) == 8
    assert audio.late == 7


# --- video ----------------------------------------------------------------------------------------


def test_video_sends_the_newest_due_picture_and_repeats_on_its_own_timeline() -> None:
    fake = FakeClock()
    video = VideoOutputTrack(fps=10, clock=_clock(fake), max_queued=4)
    pictures = [np.full((4, 4, 3), 10 * k, np.uint8) for k in range(3)]
    for k, picture in enumerate(pictures):
        video.put(picture, timestamp=START + 0.01 * k)
    fake.now = START + LATENCY + 0.025  # pictures 0, 1 and 2 are all due
    frame = _pull(video)
    assert frame.pts == round((0.02 + LATENCY) * 90_000)
    assert int(frame.to_ndarray(format="rgb24")[0, 0, 0]) == 20
    assert (video.late, video.dropped) == (2, 2)
    first = frame.pts
    fake.now += 0.1 + LATENCY  # nothing new by the next one's deadline: the last picture again
    assert _pull(video).pts == first + 9000
    assert video.repeated == 1


# --- Sender Reports on the media clock ------------------------------------------------------------


class _Encoded:
    def __init__(self, timestamp: int) -> None:
        self.timestamp = timestamp


def test_sender_report_pair_is_restamped_from_the_track_clock() -> None:
    """A stand-in of aiortc's RTP loop: the pair after each frame is (send time, origin + pts)."""
    fake = FakeClock()
    track = AudioOutputTrack(clock=_clock(fake))
    track.put(_chunk(1), timestamp=START)  # sets the epoch
    origin = 0xFFFFFF00  # wraps: the mapping must not care

    class FakeSender:
        kind = "audio"
        _ssrc = 1

        def __init__(self) -> None:
            self.track = track
            self.pts = iter(range(1920, 100_000, 960))
            self.sent: int | None = None
            setattr(self, SENDER_NTP_TIMESTAMP, 0)
            setattr(self, SENDER_RTP_TIMESTAMP, 0)

        async def _handle_rtcp_packet(self, packet: object) -> None:
            pass

        async def _next_encoded_frame(self, codec: object) -> _Encoded:
            return _Encoded(next(self.pts))

    sender = FakeSender()
    control = SenderControl(sender)  # type: ignore[arg-type]
    control.install()

    async def run_rtp(frames: int) -> list[tuple[int, int]]:
        pairs = []
        for _ in range(frames):
            encoded = await sender._next_encoded_frame(None)
            # What _run_rtp does after sending: NTP of *now* (here: 7 ms of encode and queue).
            setattr(sender, SENDER_NTP_TIMESTAMP, track.ntp_time(encoded.timestamp) + 30_064_771)
            setattr(sender, SENDER_RTP_TIMESTAMP, (origin + encoded.timestamp) & 0xFFFFFFFF)
            pairs.append(
                (getattr(sender, SENDER_NTP_TIMESTAMP), getattr(sender, SENDER_RTP_TIMESTAMP))
            )
        await sender._next_encoded_frame(None)  # the next frame's fetch re-stamps the last pair
        return pairs

    asyncio.run(run_rtp(3))
    ntp, rtp = getattr(sender, SENDER_NTP_TIMESTAMP), getattr(sender, SENDER_RTP_TIMESTAMP)
    pts = (rtp - origin) & 0xFFFFFFFF
    assert pts == 1920 + 2 * 960
    assert ntp == track.ntp_time(pts)  # capture time of that RTP timestamp, not send time
    assert (control.reports_stamped, control.reports_unmatched, control.errors) == (3, 0, 0)


# --- the router hands each output's timestamp to the peer -----------------------------------------


async def test_router_sends_media_with_the_outputs_timestamp() -> None:
    got: list[tuple[str, float | None]] = []

    class Peer:
        peer_id = "p"

        async def send_audio(self, samples: Any, timestamp: float | None = None) -> None:
            got.append(("audio", timestamp))

        async def send_video(self, frame: Any, timestamp: float | None = None) -> None:
            got.append(("video", timestamp))

        async def send_data(self, data: Any) -> None:
            got.append(("data", None))

    peer = Peer()
    assert isinstance(peer, SessionPeer)
    await router_send(peer, Audio(samples=np.zeros(960, np.float32), timestamp=12.5))
    await router_send(peer, Video(frame=np.zeros((4, 4, 3), np.uint8), timestamp=12.52))
    assert got == [("audio", 12.5), ("video", 12.52)]


# --- loopback: wire skew through the Sender Reports ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["H264", "VP9"])
async def test_wire_av_skew_through_sender_reports(codec: str) -> None:
    """Beep and white frame stamped with one capture time land on one NTP instant at the receiver.

    The bug was a constant per-connection offset (two pacers, SRs from send time): the median is
    asserted tight. One event may be off only if the sender dropped a frame (late under load, or
    a full queue: it shifts that event's detected onset by a slot): outliers are bounded by that.
    """
    options = PeerOptions(video_fps=10.0, quality_interval=1.0)
    config = TransportConfig(video_codec=codec)
    async with wired_pair(config=config, media=("audio", "video"), options=options) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        got = Received()
        async with trio.open_nursery() as inner:
            inner.start_soon(receive, b, got)
            with trio.fail_after(20):
                events = await send_events(a, 5.0, period=0.5, fps=10.0)
                await trio.sleep(0.5)
            inner.cancel_scope.cancel()
        link = a._link
        assert link is not None
        assert link.audio_track is not None
        assert link.video_track is not None
        # Frames the sender dropped (late, or a full queue): each may shift one event's detection.
        late = link.audio_track.dropped + link.video_track.dropped
    skew = analyse(got)
    assert events == 9
    assert len(skew.skews) >= 7, (skew, late)
    assert abs(skew.median) <= 0.003, skew
    outliers = [s for s in skew.skews if abs(s) > 0.010]
    assert len(outliers) <= late, (outliers, late)
    # Each stream's SRs lie on one line (the media clock): consecutive SRs agree to the sample.
    for kind, rate in (("audio", 48_000), ("video", 90_000)):
        reports = [r for k, rs in got.reports.items() if k.value == kind for r in rs]
        assert len(reports) >= 2, kind
        for r0, r1 in itertools.pairwise(reports):
            rtp = ((r1.rtp_timestamp - r0.rtp_timestamp) & 0xFFFFFFFF) / rate
            assert r1.ntp_seconds - r0.ntp_seconds == pytest.approx(rtp, abs=2e-5), kind
