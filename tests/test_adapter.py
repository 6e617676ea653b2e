"""The aiortc adapter and outgoing tracks, over real loopback WebRTC (two RTCPeerConnections, one process).

SDP is exchanged directly (no signaling server) and the configuration has no ICE servers, so a pair
connects in milliseconds on 127.0.0.1 (conftest keeps host candidates on loopback).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import pytest
import trio
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs import vpx
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, pack_remb_fci

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.keyframe import is_keyframe_for
from meshrtc.media.rtcp import ReceptionReport, SenderReport
from meshrtc.media.seq import seq_diff, ts_diff
from meshrtc.rtc.aiortc_adapter import (
    OPUS_DEFAULT_BITRATE,
    AdapterError,
    BitrateOpusEncoder,
    Impairment,
    ImpairmentConfig,
    PeerTap,
    RembReport,
    SenderControl,
    TapEvent,
    VideoDecoder,
    tap_peer_connection,
)
from meshrtc.rtc.bridge import Bridge, ToTrio, open_bridge
from meshrtc.rtc.opus import OpusDecoder
from meshrtc.rtc.tracks import (
    DEFAULT_SEND_LATENCY,
    AudioOutputTrack,
    TrackInputError,
    VideoOutputTrack,
)

WIDTH, HEIGHT = 160, 120


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(int(48_000 * seconds), dtype=np.float32) / 48_000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def picture() -> npt.NDArray[np.uint8]:
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    rgb[..., 1] = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None]
    return rgb


async def _negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


@attrs.define
class Loopback:
    """``a`` sends (tracks fed from trio) to ``b``; both are tapped; events are recorded on the loop."""

    bridge: Bridge
    a: RTCPeerConnection
    b: RTCPeerConnection
    a_tap: PeerTap
    b_tap: PeerTap
    audio: AudioOutputTrack | None
    video: VideoOutputTrack | None
    #: Everything b's taps emitted, appended on the asyncio thread (read it with bridge.call).
    b_emitted: list[TapEvent]
    a_events: trio.MemoryReceiveChannel[TapEvent]
    b_events: trio.MemoryReceiveChannel[TapEvent]
    b_pipe: ToTrio[TapEvent]
    received: list[TapEvent] = attrs.Factory(list)

    async def wait_for(self, done: Callable[[list[TapEvent]], bool], within: float = 10.0) -> None:
        """Move b's events into ``received`` until ``done(received)``."""
        with trio.fail_after(within):
            while not done(self.received):
                self.received.append(await self.b_events.receive())

    def frames(self, kind: FrameType) -> list[MediaFrame]:
        return [e for e in self.received if isinstance(e, MediaFrame) and e.frame_type is kind]

    def reports(self) -> list[SenderReport]:
        return [e for e in self.received if isinstance(e, SenderReport)]


async def connect(
    bridge: Bridge,
    *,
    audio: bool = True,
    video: bool = True,
    impairments: dict[FrameType, ImpairmentConfig] | None = None,
    b_emit: Callable[[TapEvent], None] | None = None,
    b_trackless_sendrecv: bool = False,
) -> Loopback:
    config = RTCConfiguration(iceServers=[])
    a = await bridge.call(RTCPeerConnection, config)
    bridge.register(a)
    b = await bridge.call(RTCPeerConnection, config)
    bridge.register(b)
    audio_track = AudioOutputTrack(max_queued=10.0) if audio else None
    video_track = VideoOutputTrack(fps=30) if video else None
    for track in (audio_track, video_track):
        if track is not None:
            await bridge.call(a.addTrack, track)
    if b_trackless_sendrecv:
        # b offers to send audio but has no track: its RTCP SRs then carry NTP timestamp 0.
        await bridge.call(lambda: b.addTransceiver("audio", direction="sendrecv"))
    a_pipe: ToTrio[TapEvent]
    a_pipe, a_events = bridge.open_channel()
    b_pipe: ToTrio[TapEvent]
    b_pipe, b_events = bridge.open_channel()
    b_emitted: list[TapEvent] = []

    def record(event: TapEvent) -> None:
        b_emitted.append(event)
        b_pipe.send(event)

    a_tap = await bridge.call(tap_peer_connection, a, a_pipe.send)
    b_tap = await bridge.call(
        lambda: tap_peer_connection(b, b_emit or record, impairments=impairments)
    )
    await bridge.run(_negotiate, a, b)
    return Loopback(
        bridge, a, b, a_tap, b_tap, audio_track, video_track, b_emitted, a_events, b_events, b_pipe
    )


@pytest.fixture
def no_new_threads() -> Iterator[None]:
    """Whatever the test started (bridge thread, encoder workers, decoder threads) is gone after it."""
    before = {t.name for t in threading.enumerate()}
    yield
    assert {t.name for t in threading.enumerate()} == before


def _decoder_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]


def _contiguous(seqs: list[int]) -> bool:
    return all(seq_diff(b, a) == 1 for a, b in itertools.pairwise(seqs))


@pytest.mark.usefixtures("no_new_threads")
async def test_taps_deliver_opus_and_vp8_frames_and_sender_reports() -> None:
    async with open_bridge() as bridge:
        link = await connect(bridge, b_trackless_sendrecv=True)
        assert link.audio is not None
        assert link.video is not None
        link.audio.put(tone(4.0))
        link.video.put(picture())

        def enough(events: list[TapEvent]) -> bool:
            audio = sum(
                1 for e in events if isinstance(e, MediaFrame) and e.frame_type is FrameType.AUDIO
            )
            video = {
                e.rtp_timestamp
                for e in events
                if isinstance(e, MediaFrame) and e.frame_type is FrameType.VIDEO
            }
            sr = {e.ssrc for e in events if isinstance(e, SenderReport)}
            return audio >= 60 and len(video) >= 20 and len(sr) >= 2

        await link.wait_for(enough)
        audio = link.frames(FrameType.AUDIO)
        video = link.frames(FrameType.VIDEO)
        reports = link.reports()

        # Media is ours alone: aiortc's decoder threads never started.
        assert _decoder_threads() == []

        # Opus: one packet per 20 ms frame, contiguous, timestamps 960 apart, paced in real time (a
        # stall of the loop over 100 ms skips whole frames: their timestamps, never their packets).
        assert _contiguous([f.sequence_number for f in audio])
        steps = [ts_diff(b.rtp_timestamp, a.rtp_timestamp) for a, b in itertools.pairwise(audio)]
        assert all(step > 0 and step % 960 == 0 for step in steps), steps
        assert steps.count(960) >= 0.9 * len(steps), steps
        assert len({f.ssrc for f in audio}) == 1
        opus = link.b_tap.codec(audio[0])
        assert opus is not None
        assert opus.mimeType.lower() == "audio/opus"
        span = audio[50].received_at - audio[0].received_at
        assert span > 0.75, f"50 audio frames arrived within {span:.3f} s: the track did not pace"
        assert all(f.received_at <= time.monotonic() for f in audio)

        # VP8: contiguous packets, a marker on each frame's last packet, 90 kHz steps of 3000.
        assert _contiguous([f.sequence_number for f in video])
        vp8 = link.b_tap.codec(video[0])
        assert vp8 is not None
        assert vp8.mimeType.lower() == "video/vp8"
        by_ts: dict[int, list[MediaFrame]] = {}
        for f in video:
            by_ts.setdefault(f.rtp_timestamp, []).append(f)
        complete = list(by_ts.values())[:-1]
        assert all(group[-1].marker_bit for group in complete)
        stamps = list(by_ts)
        # aiortc's VP8 encoder rebases pts to 1/1000000 s and truncates: steps are 3000 ± 1.
        steps = [ts_diff(b, a) for a, b in itertools.pairwise(stamps)]
        assert all(abs(step - 3000 * round(step / 3000)) <= 1 for step in steps), steps
        assert all(step > 0 for step in steps)

        # Sender Reports for both streams, with a real NTP time.
        assert {r.ssrc for r in reports} >= {audio[0].ssrc, video[0].ssrc}
        assert all(r.ntp_timestamp != 0 for r in reports)
        # b's sendrecv audio transceiver has no track: its SRs carry NTP 0 and a's tap ignores them.
        with trio.fail_after(10):
            while sum(r.stats.zero_ntp_reports for r in link.a_tap.receivers) == 0:
                await link.a_events.receive()  # a's tap emits nothing for them; wake on anything
        assert all(r.stats.sender_reports == 0 for r in link.a_tap.receivers)

        # The decode helpers: the tone comes back as float32 stereo at 48 kHz, the picture at its size.
        decoder = OpusDecoder()
        pcm = np.concatenate([decoder.decode(f.payload) for f in audio[10:30]])
        assert pcm.dtype == np.float32
        assert pcm.shape == (20 * 960, 2)
        rms = float(np.sqrt(np.mean(pcm**2)))
        assert 0.2 < rms < 0.5, rms  # a 0.5-amplitude sine has RMS 0.354
        video_decoder = VideoDecoder(vp8)
        pictures = [p for group in complete[:5] for p in video_decoder.decode(group)]
        assert [(p.width, p.height) for p in pictures] == [(WIDTH, HEIGHT)] * 5
        assert video_decoder.errors == 0
        assert all(r.stats.errors == 0 for r in link.b_tap.receivers)
        assert all(r.stats.rtx_filtered == 0 for r in link.b_tap.receivers)
    # Closing the bridge closed both connections and ended every aiortc task; the fixture checks
    # that no thread (bridge, encoder workers, decoders) survived.
    assert not asyncio.all_tasks(bridge.loop)
    assert bridge.leftover_tasks == []  # closing the connections ended all their tasks
    assert link.a.connectionState == "closed"
    assert link.b.connectionState == "closed"


async def test_outgoing_tracks_pace_and_stamp_pts() -> None:
    async with open_bridge() as bridge:
        audio = AudioOutputTrack()
        video = VideoOutputTrack(fps=50)

        async def pull_audio(n: int) -> tuple[float, list[Any]]:
            start = time.monotonic()
            frames = [await audio.recv() for _ in range(n)]
            return time.monotonic() - start, frames

        # Nothing fed yet: nothing is sent (an idle mesh link encodes no Opus). The bridge cancels
        # the asyncio side when the trio scope ends.
        with trio.move_on_after(0.1) as waited:
            await bridge.run(audio.recv)
        assert waited.cancelled_caught
        assert audio.sent == 0

        audio.put(tone(0.05))  # 2.5 frames: two whole frames go out, the half waits for more
        elapsed, frames = await bridge.run(pull_audio, 26)
        # pts on the media clock: the first sample is due one send latency after it was handed over.
        first = round(DEFAULT_SEND_LATENCY * 48_000)
        assert [f.pts for f in frames] == [first + i * 960 for i in range(26)]
        assert all(
            f.samples == 960 and f.sample_rate == 48_000 and f.format.name == "s16" for f in frames
        )
        assert frames[0].time_base == frames[0].time_base.__class__(1, 48_000)
        assert [bool(np.any(f.to_ndarray())) for f in frames[:3]] == [True, True, False]
        assert audio.silent == 24  # once started, gaps are silence, at the same pace
        assert elapsed >= 0.45, f"26 frames in {elapsed:.3f} s: not paced at 20 ms"

        video.put(picture())

        async def pull_video(n: int) -> tuple[float, list[Any]]:
            start = time.monotonic()
            stamps = [(await video.recv()).pts for _ in range(n)]  # the repeated frame is reused
            return time.monotonic() - start, stamps

        elapsed, stamps = await bridge.run(pull_video, 11)
        assert [b - a for a, b in itertools.pairwise(stamps)] == [1800] * 10  # 90 kHz / 50 fps
        assert video.repeated == 10  # one picture fed: repeated at the frame rate
        assert elapsed >= 0.18

        with pytest.raises(TrackInputError):
            audio.put(np.zeros((10, 3), dtype=np.float32))
        with pytest.raises(TrackInputError):
            video.put(np.zeros((4, 4), dtype=np.uint8))
        small = AudioOutputTrack(max_queued=0.1)  # 5 frames
        small.put(tone(0.2))  # 10 frames
        assert (small.queued, small.dropped) == (5, 5)


async def test_bitrate_setters_take_effect() -> None:
    async with open_bridge() as bridge:
        link = await connect(bridge)
        assert link.audio is not None
        assert link.video is not None
        link.audio.put(tone(6.0))
        link.video.put(picture())
        audio_control = link.a_tap.sender(FrameType.AUDIO)
        video_control = link.a_tap.sender(FrameType.VIDEO)
        assert audio_control is not None
        assert video_control is not None

        def count(kind: FrameType) -> Callable[[list[TapEvent]], int]:
            return lambda events: sum(
                1 for e in events if isinstance(e, MediaFrame) and e.frame_type is kind
            )

        audio_count, video_count = count(FrameType.AUDIO), count(FrameType.VIDEO)
        await link.wait_for(lambda ev: audio_count(ev) >= 25 and video_count(ev) >= 10)
        encoder = await bridge.call(lambda: audio_control.encoder)
        assert isinstance(encoder, BitrateOpusEncoder)
        assert await bridge.call(lambda: audio_control.target_bitrate) == OPUS_DEFAULT_BITRATE

        # Opus 144 → 24 kb/s: libopus takes it between two frames (no new encoder) and the packets
        # shrink; timestamps stay continuous.
        assert await bridge.call(audio_control.set_bitrate, 24_000) == 24_000
        changed_at = audio_count(link.received)
        await link.wait_for(lambda ev: audio_count(ev) >= changed_at + 40)
        assert encoder.bitrate_changes == 1
        assert encoder.opus.bitrate == 24_000
        audio = link.frames(FrameType.AUDIO)
        before = np.mean([len(f.payload) for f in audio[changed_at - 20 : changed_at]])
        after = np.mean([len(f.payload) for f in audio[-20:]])
        assert after < before * 0.5, (before, after)
        assert {
            ts_diff(b.rtp_timestamp, a.rtp_timestamp) for a, b in itertools.pairwise(audio)
        } == {960}
        assert _contiguous([f.sequence_number for f in audio])
        assert (
            await bridge.call(audio_control.set_bitrate, 1_000) == 6_000
        )  # clamped to libopus' floor

        # VP8: the target moves (clamped to aiortc's range, capped by REMB) and the encoder follows.
        target = await bridge.call(video_control.set_bitrate, 300_000)
        remb = video_control.remb
        expected = max(vpx.MIN_BITRATE, min(300_000, remb if remb is not None else 300_000))
        assert target == expected
        seen = video_count(link.received)
        await link.wait_for(lambda ev: video_count(ev) >= seen + 10)
        video_encoder = await bridge.call(lambda: video_control.encoder)
        assert video_encoder.codec.bit_rate == video_control.target_bitrate
        high = await bridge.call(video_control.set_bitrate, 10**9)
        assert high is not None
        assert vpx.MIN_BITRATE <= high <= vpx.MAX_BITRATE
        with pytest.raises(AdapterError):
            await bridge.call(video_control.set_bitrate, 0)


async def test_keyframe_request_reaches_the_sender() -> None:
    async with open_bridge() as bridge:
        link = await connect(bridge, audio=False)
        assert link.video is not None
        link.video.put(picture())

        def video(events: list[TapEvent]) -> list[MediaFrame]:
            return [
                e for e in events if isinstance(e, MediaFrame) and e.frame_type is FrameType.VIDEO
            ]

        await link.wait_for(lambda ev: len(video(ev)) >= 30)
        vp8 = link.b_tap.codec(video(link.received)[0])
        assert vp8 is not None

        is_keyframe = is_keyframe_for(vp8.name)

        def keyframes(events: list[TapEvent]) -> int:
            return sum(1 for f in video(events) if is_keyframe(f))

        assert keyframes(link.received) == 1  # only the first frame (aiortc's GOP is 3000 frames)
        assert await bridge.run(link.b_tap.request_keyframe) is True
        await link.wait_for(lambda ev: keyframes(ev) >= 2, within=5)


async def test_tap_errors_are_counted_never_raised_into_aiortc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = 0
    delivered: list[TapEvent] = []

    async with open_bridge() as bridge:
        pipe: ToTrio[TapEvent]
        pipe, events = bridge.open_channel()

        def flaky(event: TapEvent) -> None:
            nonlocal failures
            if isinstance(event, MediaFrame) and failures < 5:
                failures += 1
                raise RuntimeError("consumer bug")
            delivered.append(event)
            pipe.send(event)

        with caplog.at_level(logging.ERROR, logger="meshrtc.rtc.aiortc_adapter"):
            link = await connect(bridge, video=False, b_emit=flaky)
            assert link.audio is not None
            link.audio.put(tone(2.0))
            with trio.fail_after(10):
                got = 0
                while got < 20:
                    if isinstance(await events.receive(), MediaFrame):
                        got += 1
        tap = link.b_tap.receiver(FrameType.AUDIO)
        assert tap is not None
        assert tap.stats.errors == 5
        assert tap.stats.packets >= 25  # aiortc's receive loop survived the five failures
        logged = [r for r in caplog.records if "receiver tap failed" in r.getMessage()]
        assert len(logged) == 1


def _frame(seq: int) -> MediaFrame:
    return MediaFrame(FrameType.AUDIO, seq * 960, seq & 0xFFFF, b"x", 0.0, False, 1, 96)


def test_impairment_is_seeded_and_accounts_for_every_packet() -> None:
    config = ImpairmentConfig(seed=11, drop=0.1, duplicate=0.05, reorder=0.05)
    first, second = Impairment(config), Impairment(config)
    plan_a = [[f.sequence_number for _, f in first.plan(_frame(s))] for s in range(2000)]
    plan_b = [[f.sequence_number for _, f in second.plan(_frame(s))] for s in range(2000)]
    assert plan_a == plan_b  # same seed, same impairment

    delivered = [s for batch in plan_a for s in batch]
    held = first.flush()
    if held is not None:
        delivered.append(held.sequence_number)
    dropped = {seq for _, seq in first.dropped_packets}
    assert len(dropped) == first.dropped
    assert 150 <= first.dropped <= 250  # ~10 % of 2000
    assert dropped.isdisjoint(delivered)
    assert set(delivered) | dropped == set(range(2000))
    assert len(delivered) == 2000 - first.dropped + first.duplicated
    assert first.duplicated > 0
    assert first.reordered > 0
    inversions = sum(1 for a, b in itertools.pairwise(delivered) if b < a)
    assert inversions >= first.reordered

    delayed = Impairment(ImpairmentConfig(seed=1, delay=0.03))
    delays = [d for s in range(200) for d, _ in delayed.plan(_frame(s))]
    assert all(0.0 <= d <= 0.03 for d in delays)
    assert delayed.delayed == sum(1 for d in delays if d > 0)


async def test_impairment_on_loopback_matches_what_was_dropped() -> None:
    impair = {FrameType.AUDIO: ImpairmentConfig(seed=7, drop=0.1, duplicate=0.05, reorder=0.05)}
    async with open_bridge() as bridge:
        link = await connect(bridge, video=False, impairments=impair)
        assert link.audio is not None
        link.audio.put(tone(5.0))
        await link.wait_for(lambda ev: sum(isinstance(e, MediaFrame) for e in ev) >= 120)
        tap = link.b_tap.receiver(FrameType.AUDIO)
        assert tap is not None
        impairment = tap.impairment
        assert impairment is not None

        def snapshot() -> tuple[list[int], set[int], int, int, int, bool]:
            # On the loop thread, so the counters and the emitted list are consistent.
            seqs = [e.sequence_number for e in link.b_emitted if isinstance(e, MediaFrame)]
            dropped = {seq for _, seq in impairment.dropped_packets}
            held = impairment._held is not None
            return seqs, dropped, impairment.seen, impairment.dropped, impairment.duplicated, held

        seqs, dropped, seen, n_dropped, n_duplicated, held = await bridge.call(snapshot)
    assert n_dropped > 0
    assert n_duplicated > 0
    assert len(seqs) == seen - n_dropped + n_duplicated - int(held)
    assert dropped.isdisjoint(seqs)
    # What was delivered plus what was dropped is exactly the contiguous stream the tap saw.
    universe = set(seqs) | dropped
    ref = min(universe, key=lambda s: seq_diff(s, seqs[0]))
    offsets = sorted(seq_diff(s, ref) for s in universe)
    assert offsets == list(range(len(offsets)))
    # A packet held back for reordering is the newest one seen: not delivered, not dropped, yet.
    assert len(offsets) == seen - int(held)


async def test_sender_control_caps_remb_and_reports_reception() -> None:
    """SenderControl against a stand-in sender (no network): REMB capping and the 10 % rule."""
    passed_through: list[object] = []
    emitted: list[TapEvent] = []

    class FakeSender:
        kind = "video"
        _ssrc = 1234

        def __init__(self) -> None:
            self._RTCRtpSender__encoder = vpx.Vp8Encoder()
            self.keyframes = 0

        async def _handle_rtcp_packet(self, packet: object) -> None:
            passed_through.append(packet)

        def _send_keyframe(self) -> None:
            self.keyframes += 1

    sender = FakeSender()
    control = SenderControl(sender, emitted.append)  # type: ignore[arg-type]
    control.install()

    def remb(bitrate: int, ssrcs: list[int]) -> RtcpPsfbPacket:
        return RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs)
        )

    async def scenario() -> list[int | None]:
        handle = sender._handle_rtcp_packet
        out: list[int | None] = [control.target_bitrate]  # aiortc's default 500 kb/s
        await handle(remb(800_000, [1234]))
        out.append(control.target_bitrate)  # REMB applied by us
        out.append(control.set_bitrate(400_000))  # cap below REMB
        await handle(remb(2_000_000, [1234]))
        out.append(control.target_bitrate)  # REMB above the cap: cap holds
        out.append(control.set_bitrate(420_000))  # within 10 %: not written
        out.append(control.set_bitrate(None))  # cap lifted: REMB (2 Mb/s) clamped to aiortc's max
        await handle(remb(700_000, [999]))  # another stream's REMB: not ours, passed to aiortc
        report = RtcpReceiverInfo(
            ssrc=1234, fraction_lost=25, packets_lost=3, highest_sequence=9, jitter=4, lsr=5, dlsr=6
        )
        await handle(RtcpRrPacket(ssrc=1, reports=[report]))
        control.request_keyframe()
        return out

    assert await trio.to_thread.run_sync(asyncio.run, scenario()) == [
        500_000,
        800_000,
        400_000,
        400_000,
        400_000,
        vpx.MAX_BITRATE,
    ]
    assert [type(p).__name__ for p in passed_through] == ["RtcpPsfbPacket", "RtcpRrPacket"]
    rembs = [e for e in emitted if isinstance(e, RembReport)]
    assert [r.bitrate for r in rembs] == [800_000, 2_000_000]
    reports = [e for e in emitted if isinstance(e, ReceptionReport)]
    assert [(r.ssrc, r.fraction_lost, r.packets_lost) for r in reports] == [(1234, 25, 3)]
    assert sender.keyframes == 1


async def test_impairment_delay_reorders_and_restamps_arrival() -> None:
    impair = {FrameType.AUDIO: ImpairmentConfig(seed=2, delay=0.05)}
    async with open_bridge() as bridge:
        link = await connect(bridge, video=False, impairments=impair)
        assert link.audio is not None
        link.audio.put(tone(3.0))
        await link.wait_for(lambda ev: sum(isinstance(e, MediaFrame) for e in ev) >= 60)
        frames = link.frames(FrameType.AUDIO)
        tap = link.b_tap.receiver(FrameType.AUDIO)
        assert tap is not None
        assert tap.impairment is not None
        assert tap.impairment.delayed > 0
        # Up to 50 ms of delay on 20 ms spacing reorders some packets (about 18 % of pairs) ...
        assert any(
            seq_diff(b.sequence_number, a.sequence_number) < 0
            for a, b in itertools.pairwise(frames)
        )
        # ... and a delayed packet carries the time it was finally delivered, so arrival order holds.
        assert all(b.received_at >= a.received_at for a, b in itertools.pairwise(frames))

        def close() -> tuple[int, int]:
            link.b_tap.close()
            return len(link.b_emitted), tap.stats.packets

        emitted, packets = await bridge.call(close)
        with trio.fail_after(5):  # packets keep arriving and being counted ...
            while tap.stats.packets < packets + 10:  # noqa: ASYNC110 - a counter on the loop thread
                await trio.sleep(0.02)
        # ... but neither they nor the late deliveries pending at close are emitted any more.
        assert await bridge.call(lambda: len(link.b_emitted)) == emitted
