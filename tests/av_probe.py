"""Wire A/V skew probe: one side sends a beep and a white frame at the same capture instant, the
other maps both events through the sender's Sender Reports (the wire definition of lip sync).

Used by ``tests/test_av_timing.py`` and ``bench/av_skew.py``. The sender feeds 20 ms of audio every
20 ms (silence, or a 1 kHz beep starting exactly at an event) and one picture per video interval
(black, or white at an event), both handed over at the same instant; with ``timestamps`` it also
passes that instant as the capture time. The receiver records every decoded audio frame and
picture with its RTP timestamp and every Sender Report it gets; :func:`analyse` finds each beep
onset in the decoded audio and each black→white picture, maps both RTP timestamps to the sender's
NTP time through the SR of the same stream nearest in RTP time, and pairs them: ``skew = audio −
video`` (positive: audio later than video).

A receiver's lip sync works on exactly this mapping, so a skew here is what a receiver shows.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from meshrtc.media.frame import FrameType
from meshrtc.media.rtcp import SenderReport
from meshrtc.rtc.events import ReceivedAudio, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection

RATE = 48_000
CHUNK = 960  # 20 ms
VIDEO_RATE = 90_000
BEEP_SECONDS = 0.06
BEEP_LEVEL = 0.5
#: Decoded |sample| above this is the beep (the rest is digital silence through Opus).
ONSET_THRESHOLD = 0.1
WIDTH, HEIGHT = 160, 120


def _picture(level: int) -> npt.NDArray[np.uint8]:
    return np.full((HEIGHT, WIDTH, 3), level, dtype=np.uint8)


def supports_timestamps(peer: PeerConnection) -> bool:
    """Whether this meshrtc's ``send_audio`` takes a capture timestamp (older meshrtc did not)."""
    return "timestamp" in inspect.signature(peer.send_audio).parameters


async def send_events(
    peer: PeerConnection,
    seconds: float,
    *,
    period: float = 0.5,
    fps: float = 10.0,
    timestamps: bool = True,
) -> int:
    """Feed ``seconds`` of real-time audio and video with an event every ``period``; returns events.

    ``period`` must be a whole number of 20 ms chunks and of video intervals.
    """
    chunks_per_event = round(period / 0.02)
    chunks_per_picture = round(1 / fps / 0.02)
    assert chunks_per_event % chunks_per_picture == 0
    beep_samples = round(BEEP_SECONDS * RATE)
    t = np.arange(beep_samples, dtype=np.float32) / RATE
    beep = (BEEP_LEVEL * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    silence = np.zeros(CHUNK, dtype=np.float32)
    white, black = _picture(255), _picture(0)
    kwargs: dict[str, Any] = {}
    start = time.monotonic() + 0.05
    events = 0
    total = round(seconds / 0.02)
    for k in range(total):
        at = start + k * 0.02
        delay = at - time.monotonic()
        if delay > 0:
            await trio.sleep(delay)
        into_event = k % chunks_per_event
        offset = into_event * CHUNK
        if offset < beep_samples and k >= chunks_per_event:  # skip the very first (warm-up)
            chunk = np.zeros(CHUNK, dtype=np.float32)
            piece = beep[offset : offset + CHUNK]
            chunk[: len(piece)] = piece
        else:
            chunk = silence
        if timestamps:
            kwargs = {"timestamp": at}
        if k % chunks_per_picture == 0:
            event = into_event == 0 and k >= chunks_per_event
            events += event
            await peer.send_video(white if event else black, **kwargs)
        await peer.send_audio(chunk, **kwargs)
    return events


@attrs.define
class Received:
    """What the receiving side saw of one sender."""

    audio: list[tuple[int, npt.NDArray[np.float32]]] = attrs.Factory(list)
    video: list[tuple[int, float]] = attrs.Factory(list)
    reports: dict[FrameType, list[SenderReport]] = attrs.Factory(
        lambda: {FrameType.AUDIO: [], FrameType.VIDEO: []}
    )


async def receive(peer: PeerConnection, into: Received) -> None:
    """Until cancelled: record ``peer``'s decoded media (RTP timestamps) and its Sender Reports."""

    async def reports() -> None:
        while True:
            for kind, sr in list(peer.sender_reports.items()):
                seen = into.reports[kind]
                if seen and seen[-1].ssrc != sr.ssrc:
                    seen.clear()  # a rebuilt link: a new SSRC, a new RTP origin, a new line
                if not seen or seen[-1] is not sr:
                    seen.append(sr)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reports)
        async for item in peer.received:
            if isinstance(item, ReceivedAudio):
                if not item.concealed and item.rtp_timestamp is not None:
                    into.audio.append((item.rtp_timestamp, item.samples[:, 0].copy()))
            elif isinstance(item, ReceivedVideo) and item.rtp_timestamp is not None:
                luma = item.frame.to_ndarray(format="gray")
                into.video.append((item.rtp_timestamp, float(luma.mean())))


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


def _ntp_of(rtp: int, reports: list[SenderReport], rate: int) -> float | None:
    """``rtp`` in the sender's NTP seconds, through the SR nearest in RTP time."""
    usable = [sr for sr in reports if sr.ntp_timestamp != 0]
    if not usable:
        return None
    sr = min(usable, key=lambda s: abs(_signed32(rtp - s.rtp_timestamp)))
    return sr.ntp_seconds + _signed32(rtp - sr.rtp_timestamp) / rate


def audio_onsets(audio: list[tuple[int, npt.NDArray[np.float32]]]) -> list[int]:
    """RTP positions (48 kHz) of the first loud sample after at least 200 ms of quiet."""
    onsets: list[int] = []
    last_loud: int | None = None
    for rtp, samples in sorted(audio, key=lambda x: x[0]):
        loud = np.flatnonzero(np.abs(samples) > ONSET_THRESHOLD)
        if not len(loud):
            continue
        first = (rtp + int(loud[0])) & 0xFFFFFFFF
        if last_loud is None or _signed32(first - last_loud) > 0.2 * RATE:
            onsets.append(first)
        last_loud = (rtp + int(loud[-1])) & 0xFFFFFFFF
    return onsets


def white_frames(video: list[tuple[int, float]]) -> list[int]:
    """RTP timestamps (90 kHz) of each picture that turned white after a dark one."""
    out: list[int] = []
    previous = 0.0
    for rtp, luma in video:  # decode order is RTP order here (no B-frames)
        if luma > 128 and previous <= 128:
            out.append(rtp)
        previous = luma
    return out


@attrs.frozen
class Skew:
    """One connection's events: each pair's skew in seconds (audio minus video)."""

    skews: list[float]
    audio_events: int
    video_events: int

    @property
    def median(self) -> float:
        return statistics.median(self.skews) if self.skews else float("nan")

    @property
    def spread(self) -> float:
        """Largest distance of one event's skew from the connection's median (seconds)."""
        return max((abs(s - self.median) for s in self.skews), default=float("nan"))

    @property
    def worst(self) -> float:
        return max((abs(s) for s in self.skews), default=float("nan"))


def analyse(received: Received, *, period: float = 0.5) -> Skew:
    reports = received.reports
    audio = [
        t
        for r in audio_onsets(received.audio)
        if (t := _ntp_of(r, reports[FrameType.AUDIO], RATE)) is not None
    ]
    video = [
        t
        for r in white_frames(received.video)
        if (t := _ntp_of(r, reports[FrameType.VIDEO], VIDEO_RATE)) is not None
    ]
    skews = []
    for a in audio:
        nearest = min(video, key=lambda v: abs(a - v), default=None)
        if nearest is not None and abs(a - nearest) < period / 2:
            skews.append(a - nearest)
    return Skew(skews, len(audio), len(video))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))
