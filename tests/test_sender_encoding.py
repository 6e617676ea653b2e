"""The adapter's ``next_encoded_frame`` against aiortc's own ``RTCRtpSender._next_encoded_frame``.

meshrtc replaces aiortc's per-frame encode step to cut two per-member costs (audio encoded on the
loop thread, no thread-pool hand-off; the RFC 6464 audio level only when negotiated, and with
numpy). These tests hold it to aiortc's output: the same payloads, timestamps and levels for the
same frames, so ``_run_rtp`` builds the same RTP stream. No network: senders come from a
transceiver, their track is replaced, their header extensions configured as ``send()`` does.
About 1 s.
"""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable, Coroutine
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, rtp
from aiortc.codecs import opus
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)

from meshrtc.rtc import aiortc_adapter as adapter

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
FRAMES = 25  # half a second of 20 ms frames: past the encoder's priming, a few seeded levels


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    adapter.install_aiortc_patches()  # both paths build BitrateOpusEncoder via get_encoder


def _frames(layout: str, seed: int) -> list[av.AudioFrame]:
    """Seeded tone + noise at a different loudness per frame, including silence and full scale."""
    rng = np.random.default_rng(seed)
    channels = 2 if layout == "stereo" else 1
    frames = []
    for i in range(FRAMES):
        amplitude = [0, 1, 30, 1000, 32767][i % 5] if i < 5 else int(rng.integers(0, 32768))
        t = (np.arange(960) + 960 * i) / 48000
        wave = amplitude * np.sin(2 * np.pi * 440 * t) + rng.normal(0, amplitude / 20 + 1e-9, 960)
        pcm = np.clip(wave, -32768, 32767).astype(np.int16)
        data = np.repeat(pcm, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
        frame.sample_rate = 48000
        frame.pts = 960 * i
        frame.time_base = fractions.Fraction(1, 48000)
        frames.append(frame)
    return frames


class _Frames(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: list[Any]) -> None:
        super().__init__()
        self._frames = list(frames)

    async def recv(self) -> Any:
        return self._frames.pop(0)


def _run(body: Callable[[RTCRtpSender, RTCRtpSender], Coroutine[Any, Any, Any]]) -> Any:
    """``body`` with two fresh audio senders on one asyncio loop (closed afterwards)."""

    async def main() -> Any:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            first = pc.addTransceiver("audio").sender
            second = pc.addTransceiver("audio").sender
            return await body(first, second)
        finally:
            await pc.close()

    return asyncio.run(main())


def _prepare(sender: RTCRtpSender, frames: list[Any], *, audio_level: bool) -> None:
    setattr(sender, adapter.SENDER_TRACK, _Frames(frames))
    extensions = [RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]
    if audio_level:
        extensions.append(RTCRtpHeaderExtensionParameters(id=2, uri=AUDIO_LEVEL_URI))
    parameters = RTCRtpSendParameters(codecs=[OPUS], headerExtensions=extensions)
    getattr(sender, adapter.SENDER_HEADER_EXTENSIONS_MAP).configure(parameters)


async def _encode_all(
    encode: Callable[[RTCRtpSender, RTCRtpCodecParameters], Coroutine[Any, Any, Any]],
    sender: RTCRtpSender,
) -> list[tuple[list[bytes], int, int | None] | None]:
    out = []
    for _ in range(FRAMES):
        encoded = await encode(sender, OPUS)
        out.append(
            None if encoded is None else (encoded.payloads, encoded.timestamp, encoded.audio_level)
        )
    return out


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_audio_level_is_aiortcs_for_every_frame(layout: str) -> None:
    for seed in range(4):
        for frame in _frames(layout, seed):
            assert adapter.audio_level_dbov(frame) == rtp.compute_audio_level_dbov(frame)


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_same_payloads_timestamps_and_levels_as_aiortc_when_negotiated(layout: str) -> None:
    async def body(theirs: RTCRtpSender, ours: RTCRtpSender) -> None:
        _prepare(theirs, _frames(layout, 7), audio_level=True)
        _prepare(ours, _frames(layout, 7), audio_level=True)
        expected = await _encode_all(RTCRtpSender._next_encoded_frame, theirs)
        got = await _encode_all(adapter.next_encoded_frame, ours)
        assert got == expected
        assert sum(e is not None and e[2] is not None for e in got) >= FRAMES - 2
        assert isinstance(getattr(ours, adapter.SENDER_ENCODER), adapter.BitrateOpusEncoder)

    _run(body)


def test_no_audio_level_computed_when_not_negotiated(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[int] = []
    real = adapter.audio_level_dbov

    def counting(frame: av.AudioFrame) -> int:
        computed.append(1)
        return real(frame)

    monkeypatch.setattr(adapter, "audio_level_dbov", counting)

    async def body(negotiated: RTCRtpSender, plain: RTCRtpSender) -> None:
        _prepare(plain, _frames("stereo", 3), audio_level=False)
        assert not adapter.audio_level_negotiated(plain)
        frames = await _encode_all(adapter.next_encoded_frame, plain)
        assert all(f is None or f[2] is None for f in frames)
        assert any(f is not None for f in frames)
        assert computed == []
        _prepare(negotiated, _frames("stereo", 3), audio_level=True)
        assert adapter.audio_level_negotiated(negotiated)
        await _encode_all(adapter.next_encoded_frame, negotiated)
        assert len(computed) == FRAMES

    _run(body)


def test_audio_is_encoded_without_the_executor_and_video_with_it() -> None:
    async def body(audio: RTCRtpSender, _unused: RTCRtpSender) -> None:
        loop = asyncio.get_running_loop()
        handed: list[object] = []
        real = loop.run_in_executor

        def counting(executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
            handed.append(fn)
            return real(executor, fn, *args)

        loop.run_in_executor = counting  # type: ignore[method-assign]
        _prepare(audio, _frames("stereo", 1), audio_level=True)
        await _encode_all(adapter.next_encoded_frame, audio)
        assert handed == []

        class _Picture(MediaStreamTrack):
            kind = "video"

            async def recv(self) -> Any:
                frame = av.VideoFrame.from_ndarray(
                    np.zeros((120, 160, 3), np.uint8), format="rgb24"
                )
                frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
                return frame

        vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        video = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            sender = video.addTransceiver("video").sender
            setattr(sender, adapter.SENDER_TRACK, _Picture())
            setattr(sender, adapter.SENDER_FORCE_KEYFRAME, True)
            encoded = await adapter.next_encoded_frame(sender, vp8)
            assert encoded is not None
            assert encoded.payloads
            assert encoded.audio_level is None
            assert len(handed) == 1
            assert getattr(sender, adapter.SENDER_FORCE_KEYFRAME) is False  # request consumed
        finally:
            await video.close()

    _run(body)


def test_a_disabled_sender_reads_and_drops_frames() -> None:
    async def body(sender: RTCRtpSender, _unused: RTCRtpSender) -> None:
        frames = _frames("stereo", 2)
        _prepare(sender, frames, audio_level=True)
        setattr(sender, adapter.SENDER_ENABLED, False)
        assert await adapter.next_encoded_frame(sender, OPUS) is None
        assert getattr(sender, adapter.SENDER_ENCODER) is None  # nothing encoded
        assert len(getattr(sender, adapter.SENDER_TRACK)._frames) == FRAMES - 1  # but read

    _run(body)


@pytest.mark.parametrize("layout", ["stereo", "mono"])
def test_bitrate_opus_encoder_matches_aiortcs_with_or_without_the_resampler(layout: str) -> None:
    """Stereo s16 48 kHz 960-sample frames (what the tracks make) skip the resampler; others use
    it. Either way: a packet where aiortc's encoder gives one, with aiortc's timestamp plus the
    first packet's pts. The bytes are libopus's own (another build than FFmpeg's: they differ;
    tests/test_opus_encoder.py checks what they decode to)."""
    theirs = opus.OpusEncoder()
    ours = adapter.BitrateOpusEncoder()
    expected = [theirs.encode(f) for f in _frames(layout, 5)]
    got = [ours.encode(f) for f in _frames(layout, 5)]
    assert ours.first_packet_pts == theirs.first_packet_pts
    offset = ours.first_packet_pts
    assert offset is not None
    assert [(len(p), None if t is None else t - offset) for p, t in got] == [
        (len(p), t) for p, t in expected
    ]
    assert all(len(b) > 0 for p, _ in got for b in p)
    assert ours.direct == (FRAMES if layout == "stereo" else 0)


def test_one_frame_the_resampler_must_take_switches_to_it_for_good() -> None:
    ours = adapter.BitrateOpusEncoder()
    stereo = _frames("stereo", 6)
    for frame in stereo[:3]:
        ours.encode(frame)
    half = av.AudioFrame.from_ndarray(
        stereo[3].to_ndarray()[:, :960], format="s16", layout="stereo"
    )  # 480 samples: not Opus's frame size
    half.sample_rate, half.pts, half.time_base = 48000, stereo[3].pts, stereo[3].time_base
    ours.encode(half)
    for frame in stereo[4:8]:
        ours.encode(frame)
    assert ours.direct == 3  # the full frames after the short one went through the resampler too
