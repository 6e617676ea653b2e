"""The video send side follows the load-shedding plan (docs/transport.md, "Shedding load").

Unit tests, one per level, on the outgoing track and the sender's bitrate control with a plan set
by hand: ``VIDEO_BITRATE`` halves the encoder's target (what the controller's cap and the REMB
allow), ``VIDEO_FRAMERATE`` skips pictures by timestamp to half the rate, ``VIDEO_OFF`` sends
nothing, not even the last picture again, until video is back. The tracks run on an injected
clock (as in tests/test_av_timing.py); a wait that the clock does not end is ended by a ``put``
or by the track's own timeout, so outcomes never depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import numpy as np
import pytest
import trio

from meshrtc.pipeline import default_manifest
from meshrtc.rtc.aiortc_adapter import SENDER_ENCODER, SENDER_TRACK, SenderControl
from meshrtc.rtc.peer import REALTIME_SEND_QUEUE, PeerOptions
from meshrtc.rtc.tracks import MediaClock, TrackInputError, VideoOutputTrack
from meshrtc.rtc.vp9_codec import Vp9Encoder
from meshrtc.session.load_monitor import LoadMonitor
from meshrtc.session.shedding import SHED_PLANS, LoadShedder, ShedLevel
from meshrtc.transport import WebRtcTransport

from .peer_helpers import open_session, picture

START = 1000.0
WALL = 1_700_000_000.0
LATENCY = 0.04
STEP = 9000  # 90 kHz ticks between pictures at 10 fps


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now + 1e-6


def _track(fake: FakeClock) -> VideoOutputTrack:
    clock = MediaClock(latency=LATENCY, clock=fake, wall=lambda: WALL + (fake.now - START))
    return VideoOutputTrack(fps=10, clock=clock, max_queued=8)


def _picture(value: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.full((4, 4, 3), value, np.uint8)


def _value(frame: Any) -> int:
    return int(frame.to_ndarray(format="rgb24")[0, 0, 0])


def _apply(track: VideoOutputTrack, level: ShedLevel) -> None:
    plan = SHED_PLANS[level]
    track.set_plan(
        bitrate_scale=plan.video_bitrate_scale,
        framerate_scale=plan.video_framerate_scale,
        video=plan.video,
    )


def test_video_framerate_level_sends_every_other_picture_by_timestamp() -> None:
    """The track's ``recv`` runs all along, as aiortc's sender runs it; each picture is handed over
    on time, one at a time (a put wakes the parked ``recv``)."""
    fake = FakeClock()
    track = _track(fake)
    _apply(track, ShedLevel.VIDEO_FRAMERATE)
    sent: list[tuple[int, int]] = []

    async def sender() -> None:
        while len(sent) < 3:
            frame = await track.recv()
            sent.append((frame.pts, _value(frame)))  # now: a repeat reuses the frame object

    async def scenario() -> None:
        task = asyncio.ensure_future(sender())
        for k in range(6):  # pictures at 10 fps
            fake.now = START + 0.1 * k + LATENCY
            track.put(_picture(10 * k + 10), timestamp=START + 0.1 * k)
            await asyncio.sleep(0.01)  # the loop runs what the put made ready
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    first = sent[0][0]
    # Pictures 0, 2, 4 on twice the step; 1, 3 skipped; nothing repeated, no burst.
    assert [(pts - first, value) for pts, value in sent] == [
        (0, 10),
        (2 * STEP, 30),
        (4 * STEP, 50),
    ]
    assert (track.shed, track.repeated, track.late) == (2, 0, 0)


def test_video_framerate_level_repeats_on_the_longer_step_and_sends_a_held_picture() -> None:
    fake = FakeClock()
    track = _track(fake)
    _apply(track, ShedLevel.VIDEO_FRAMERATE)

    async def scenario() -> list[tuple[int, int]]:
        track.put(_picture(1), timestamp=START)
        fake.now = START + LATENCY
        out = []
        frame = await asyncio.wait_for(track.recv(), 5)
        out.append((frame.pts, _value(frame)))  # now: a repeat reuses the frame object
        track.put(_picture(2), timestamp=START + 0.1)  # too soon: skipped, held as the newest
        fake.now = START + 0.2 + LATENCY  # nothing newer came: the held picture is sent
        frame = await asyncio.wait_for(track.recv(), 5)
        out.append((frame.pts, _value(frame)))
        fake.now = START + 0.4 + LATENCY  # still nothing: a repeat, one shed step later
        frame = await asyncio.wait_for(track.recv(), 5)
        out.append((frame.pts, _value(frame)))
        return [(pts - out[0][0], value) for pts, value in out]

    assert asyncio.run(scenario()) == [(0, 1), (2 * STEP, 2), (4 * STEP, 2)]
    assert (track.shed, track.repeated) == (1, 1)


def test_full_rate_sends_pictures_closer_than_its_step() -> None:
    """At level NONE nothing is skipped (the skip needs a shed frame rate)."""
    fake = FakeClock()
    track = _track(fake)
    _apply(track, ShedLevel.VIDEO_BITRATE)  # bitrate only: the frame rate is kept

    async def scenario() -> list[int]:
        values = []
        for k in range(3):
            track.put(_picture(k + 1), timestamp=START + 0.06 * k)
            fake.now = START + 0.06 * k + LATENCY
            values.append(_value(await asyncio.wait_for(track.recv(), 5)))
        return values

    assert asyncio.run(scenario()) == [1, 2, 3]
    assert track.shed == 0


def test_video_off_sends_nothing_until_video_is_back() -> None:
    fake = FakeClock()
    track = _track(fake)

    async def scenario() -> tuple[int, int, int]:
        track.put(_picture(1), timestamp=START)
        fake.now = START + LATENCY
        first = await asyncio.wait_for(track.recv(), 5)
        _apply(track, ShedLevel.VIDEO_OFF)
        fake.now = START + 5.0  # 50 repeats would be due; none is sent
        track.put(_picture(2), timestamp=START + 4.9)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(track.recv(), 0.3)
        sent_while_off = track.sent
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        _apply(track, ShedLevel.VIDEO_FRAMERATE)  # one level down: video is back
        back = await asyncio.wait_for(waiting, 5)
        return sent_while_off, _value(back), back.pts - first.pts

    sent_while_off, value, offset = asyncio.run(scenario())
    assert sent_while_off == 1
    assert track.repeated == 0
    assert value == 2  # the newest picture, on its own timestamp
    assert offset == 49 * STEP
    assert track.resumed == 1


def test_set_plan_rejects_scales_outside_zero_one() -> None:
    track = VideoOutputTrack()
    with pytest.raises(TrackInputError):
        track.set_plan(bitrate_scale=0.0)
    with pytest.raises(TrackInputError):
        track.set_plan(framerate_scale=1.5)


class _FakeSender:
    kind = "video"
    _ssrc = 1

    def __init__(self, track: VideoOutputTrack) -> None:
        setattr(self, SENDER_TRACK, track)
        setattr(self, SENDER_ENCODER, Vp9Encoder())

    async def _handle_rtcp_packet(self, packet: object) -> None:
        pass


def test_video_bitrate_level_halves_the_encoder_target_and_gives_it_back() -> None:
    track = VideoOutputTrack()
    sender = _FakeSender(track)
    control = SenderControl(sender)  # type: ignore[arg-type]
    targets = [control.refresh()]  # no cap, no REMB: the encoder's own start (500 kb/s)
    _apply(track, ShedLevel.VIDEO_BITRATE)
    targets.append(control.refresh())
    _apply(track, ShedLevel.NONE)
    targets.append(control.refresh())
    targets.append(control.set_bitrate(800_000))  # the controller's cap
    for level in (ShedLevel.VIDEO_BITRATE, ShedLevel.VIDEO_FRAMERATE, ShedLevel.VIDEO_OFF):
        _apply(track, level)
        targets.append(control.refresh())
    _apply(track, ShedLevel.NONE)
    targets.append(control.refresh())
    assert targets == [
        500_000,
        250_000,
        500_000,
        800_000,
        400_000,
        400_000,
        400_000,
        800_000,
    ]


# --- the transport: a forced plan reaches what a member receives ------------------------------


@pytest.mark.slow
async def test_a_forced_plan_cuts_the_frames_a_member_receives_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One member, the transport showing it one picture (its track repeats it at 20 fps). The
    plan is forced through the transport's own listener; the real monitor is capped at NONE, so a
    busy machine cannot move the level under the test. Counted: decoded pictures the member got
    from the transport in each 2 s window (after 0.5 s for what was in flight)."""
    keyframes: list[int] = []  # keyframe requests by the send side (a spy: it calls through)
    request_keyframe = SenderControl.request_keyframe

    def spy(control: SenderControl) -> None:
        keyframes.append(control.ssrc)
        request_keyframe(control)

    monkeypatch.setattr(SenderControl, "request_keyframe", spy)
    async with open_session() as session:
        config = attrs.evolve(session.config("hub"), ice_host_addresses=("127.0.0.1",))
        options = PeerOptions(video_fps=20.0, audio_send_queue=REALTIME_SEND_QUEUE)
        transport = WebRtcTransport(config, options=options)
        transport.load = LoadMonitor(LoadShedder(max_level=ShedLevel.NONE))
        await session.nursery.start(_run_transport, transport)
        member = await session.join("m1")
        await session.until(lambda: transport.peers is not None and "m1" in _connected(transport))
        assert transport.peers is not None
        hub_side = transport.peers.get_peer("m1")
        assert hub_side is not None
        assert hub_side.video
        await hub_side.send_video(picture(128))
        tally = member.tally("hub")
        await session.until(lambda: tally.video > 0, 20)

        async def window(level: ShedLevel) -> int:
            transport._shed_video(SHED_PLANS[level])  # what the monitor calls on a change
            await trio.sleep(0.5)
            before = tally.video
            await trio.sleep(2.0)
            return tally.video - before

        counts: dict[ShedLevel, int] = {}
        for level in (
            ShedLevel.NONE,
            ShedLevel.VIDEO_FRAMERATE,
            ShedLevel.VIDEO_OFF,
            ShedLevel.VIDEO_BITRATE,
        ):
            counts[level] = await window(level)
        track = hub_side._link.video_track if hub_side._link is not None else None
        print("decoded pictures per 2 s window:", {k.name: v for k, v in counts.items()})
    full = counts[ShedLevel.NONE]
    assert full >= 20  # 40 expected at 20 fps; a loaded machine may lose some
    assert 0.25 * full <= counts[ShedLevel.VIDEO_FRAMERATE] <= 0.7 * full
    assert counts[ShedLevel.VIDEO_OFF] == 0
    assert counts[ShedLevel.VIDEO_BITRATE] >= 0.75 * full  # back to the full frame rate
    assert track is not None
    assert track.resumed == 1
    assert track.shed == 0
    assert len(keyframes) == 1  # once, when video came back


def _connected(transport: WebRtcTransport) -> list[str]:
    return [] if transport.peers is None else transport.peers.list_connected()


async def _run_transport(
    transport: WebRtcTransport, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with transport, trio.open_nursery() as nursery:
        await nursery.start(transport.run_session, default_manifest())
        task_status.started()
        await trio.sleep_forever()
