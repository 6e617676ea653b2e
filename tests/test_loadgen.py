"""The star load generator: replay timing, the onset probe, and aiortc sending our packets as they are."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import trio
from aiortc import RTCPeerConnection

from meshrtc.loadgen.onsets import OnsetProbe
from meshrtc.loadgen.replay import (
    RTP_TIMESTAMP_MODULUS,
    EncodedClip,
    Handoff,
    Replay,
    wire_timestamp,
)
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.rtc.aiortc_adapter import TapEvent, codec_preferences, tap_peer_connection
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.star_member import ReplayTrack, encode_tone_clip, encode_video_clip

CLIP = EncodedClip((b"a", b"b", b"c"), step=960, clock_rate=48_000, onsets=frozenset({0}))


def test_replay_keeps_time_running_across_loops() -> None:
    replay = Replay(CLIP, origin=1000)
    packets = [replay.next() for _ in range(8)]
    assert [p.data for p in packets] == [b"a", b"b", b"c"] * 2 + [b"a", b"b"]
    assert [p.pts for p in packets] == [1000 + 960 * n for n in range(8)]
    assert [p.onset for p in packets] == [True, False, False] * 2 + [True, False]
    assert replay.loops == 2
    assert replay.due(packets[-1].count) == pytest.approx(7 * 0.020)


def test_replay_timestamps_wrap_like_a_live_streams() -> None:
    # A sender whose random origin puts the 32-bit RTP timestamp just below the wrap.
    origin = RTP_TIMESTAMP_MODULUS - 2 * 960 - 5
    replay = Replay(CLIP)
    wire = [wire_timestamp(origin, replay.next().pts) for _ in range(7)]
    steps = [(b - a) % RTP_TIMESTAMP_MODULUS for a, b in itertools.pairwise(wire)]
    assert steps == [960] * 6
    assert wire[3] < wire[2]  # it wrapped, at the start of the second loop
    assert all(0 <= w < RTP_TIMESTAMP_MODULUS for w in wire)


def test_skipping_moves_time_and_keyframe_skipping_does_not() -> None:
    replay = Replay(CLIP)
    replay.next()
    replay.skip(4)  # fell 4 packets behind: they are lost, time jumps
    p = replay.next()
    assert (p.data, p.pts, replay.skipped) == (b"c", 5 * 960, 4)
    video = EncodedClip(
        tuple(bytes([i]) for i in range(6)), 3000, 90_000, keyframes=frozenset({0, 3})
    )
    replay = Replay(video)
    assert replay.next().keyframe
    replay.next()
    replay.skip_to_keyframe()
    p = replay.next()
    assert (p.data, p.pts, p.keyframe) == (b"\x03", 2 * 3000, True)
    replay.skip_to_keyframe()  # index 4 -> wraps to 0
    assert replay.next().data == b"\x00"


def test_a_clip_needs_packets_and_valid_indices() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EncodedClip((), 960, 48_000)
    with pytest.raises(ValueError, match="indices"):
        EncodedClip((b"a",), 960, 48_000, keyframes=frozenset({1}))


def test_a_handoff_keeps_idle_and_live_packets_on_one_pacing_line() -> None:
    """Idle -> live -> idle, with a skip: pts is ``count * 960`` for every place on the line, so
    the RTP timestamps and the Sender Reports' line (pts over the pacing's t0) never step."""
    idle = EncodedClip((b"idle",), 960, 48_000)
    handoff = Handoff(CLIP, idle)
    got = [handoff.next() for _ in range(2)]
    handoff.start(4)
    handoff.start(9)  # already live: no change
    got += [handoff.next() for _ in range(2)]
    handoff.skip(1)
    got += [handoff.next() for _ in range(4)]
    places = [0, 1, 2, 3, 5, 6, 7, 8]
    assert [p.pts for p in got] == [960 * n for n in places]
    assert [(p.data, p.live) for p in got] == [(b"idle", False)] * 2 + [
        (b"a", True),
        (b"b", True),
        (b"a", True),  # the skipped place took "c"
        (b"b", True),
        (b"idle", False),
        (b"idle", False),
    ]
    assert (handoff.count, handoff.sent_live, handoff.live) == (9, 4, False)
    with pytest.raises(ValueError, match="step"):
        Handoff(CLIP, EncodedClip((b"x",), 480, 48_000))
    nothing = Handoff(CLIP)
    assert not nothing.sending
    with pytest.raises(RuntimeError):
        nothing.next()


def test_a_start_while_the_track_paces_an_idle_packet_keeps_the_clip_on_time() -> None:
    """The cue arrives while recv() sleeps towards its next due time (as start_traffic's
    call_soon does, from trio): the clip begins on that place. The first version handed out the
    idle packet it held and began the clip with that packet's pts again: a 960-tick (20 ms) step
    against the pacing that the transport's jitter buffer followed."""
    idle = EncodedClip((b"idle",), 960, 48_000)
    track = ReplayTrack("audio", CLIP, idle=idle)

    async def run() -> list[tuple[bytes, int]]:
        out = []
        for n in range(8):
            task = asyncio.ensure_future(track.recv())
            await asyncio.sleep(0)  # the task now sleeps towards its due time
            if n == 2:
                track.start(0.06)
            packet = await task
            out.append((bytes(packet), packet.pts))
        return out

    got = asyncio.run(run())
    assert [pts for _, pts in got] == [960 * n for n in range(8)]
    assert [data for data, _ in got] == [b"idle"] * 2 + [b"a", b"b", b"c"] + [b"idle"] * 3
    assert track.sent_live == 3


def _tone(freq: float, n: int = 960, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / 48_000)).astype(np.float32)


def test_onset_probe_times_rising_edges_of_others_only() -> None:
    captured = {"a": 1.000, "me": 1.000}
    probe = OnsetProbe(
        {"a": 500.0, "b": 700.0, "me": 900.0}, captured.get, own="me", max_latency=1.0
    )
    silence = np.zeros(960, np.float32)
    t = 1.0
    for _ in range(12):
        probe.feed(silence, t)
        t += 0.02
    probe.feed(_tone(500) + _tone(900), 1.250)  # a's onset 250 ms after capture; ours too
    probe.feed(_tone(500), 1.270)  # still on: no second onset
    assert probe.latencies == [pytest.approx(0.250)]
    assert set(probe.heard) == {"a", "me"}
    assert probe.levels(_tone(700))[1] == pytest.approx(0.1, rel=1e-3)
    # b comes on without a capture time known: heard, not timed.
    probe.feed(_tone(700), 1.290)
    assert len(probe.latencies) == 1
    assert "b" in probe.heard
    # a's tone drops out for 200 ms and comes back: not a second onset of the same capture.
    t = 1.29
    for _ in range(10):
        t += 0.02
        probe.feed(silence, t)
    probe.feed(_tone(500), t + 0.02)
    assert len(probe.latencies) == 1
    captured["a"] = 1.8  # its next capture is timed again
    for _ in range(10):
        t += 0.02
        probe.feed(silence, t)
    probe.feed(_tone(500), 1.95)
    assert probe.latencies[1:] == [pytest.approx(0.15)]


def test_encoded_clips_are_what_the_generator_replays() -> None:
    tone = encode_tone_clip(500.0)
    assert len(tone.packets) == 50
    assert tone.onsets == frozenset({0})
    video = encode_video_clip(160, 120, fps=10.0, seconds=1.0, keyframe_every=5)
    assert len(video.packets) == 10
    assert video.keyframes == frozenset({0, 5})
    assert video.step == 9000


async def test_aiortc_sends_the_replayed_packets_as_they_are_with_running_numbers() -> None:
    """Packets replayed over a 3-packet clip arrive byte for byte, with RTP sequence numbers
    and timestamps that keep counting across the loops (aiortc packs, it does not re-encode)."""
    clip = EncodedClip(
        tuple(encode_tone_clip(700.0).packets[:3]), 960, 48_000, onsets=frozenset({0})
    )
    frames: list[MediaFrame] = []

    def on_event(event: TapEvent) -> None:
        if isinstance(event, MediaFrame) and event.frame_type is FrameType.AUDIO:
            frames.append(event)

    async def connect(track: ReplayTrack) -> tuple[RTCPeerConnection, RTCPeerConnection]:
        sender, receiver = RTCPeerConnection(), RTCPeerConnection()
        t = sender.addTransceiver(track, direction="sendonly")
        t.setCodecPreferences(codec_preferences("audio", "audio/opus"))
        receiver.addTransceiver("audio", direction="recvonly")
        tap_peer_connection(receiver, on_event)
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        return sender, receiver

    with trio.fail_after(20):
        async with open_bridge(name="test-loadgen") as bridge:
            track = ReplayTrack("audio", clip)
            sender, receiver = await bridge.run(connect, track)
            bridge.register(sender)
            bridge.register(receiver)
            bridge.call_soon(track.start)
            while len(frames) < 12:  # noqa: ASYNC110 - bounded by fail_after
                await trio.sleep(0.02)
            await bridge.run(_close, sender, receiver)
    got = frames[:12]
    # The tap sees the packets as sent: match the clip's bytes, in loop order.
    start = clip.packets.index(bytes(got[0].payload))
    assert [bytes(f.payload) for f in got] == [clip.packets[(start + i) % 3] for i in range(12)]
    seqs = [f.sequence_number for f in got]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [f.rtp_timestamp for f in got]
    assert all((b - a) % RTP_TIMESTAMP_MODULUS == 960 for a, b in itertools.pairwise(stamps))
    assert track.sent_live >= 12


async def _close(*pcs: RTCPeerConnection) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs))


def test_a_replay_track_goes_live_for_its_seconds_then_idles_with_time_running() -> None:
    idle = EncodedClip((b"idle",), 960, 48_000)
    onsets: list[float] = []
    track = ReplayTrack("audio", CLIP, idle=idle, on_onset=onsets.append)

    async def run() -> list[tuple[bytes, int]]:
        out = []
        for n in range(9):
            if n == 2:
                track.start(0.06)  # three 20 ms packets of the clip
            packet = await track.recv()
            out.append((bytes(packet), packet.pts))
        return out

    got = asyncio.run(run())
    assert [data for data, _ in got] == [b"idle"] * 2 + [b"a", b"b", b"c"] + [b"idle"] * 4
    assert [pts for _, pts in got] == [960 * n for n in range(9)]
    assert track.sent_live == 3
    assert len(onsets) == 1
    assert track.skipped == 0
    assert track.late_max[1] < 0.1
