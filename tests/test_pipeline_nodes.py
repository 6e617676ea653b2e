"""Built-in nodes against hand-computed numpy results."""

from __future__ import annotations

import math
from typing import Any

import av
import numpy as np
import pytest

from meshrtc.pipeline import (
    Audio,
    Binary,
    Json,
    Manifest,
    Node,
    PipelineRunner,
    RuntimeData,
    Text,
    Video,
)
from meshrtc.pipeline.nodes.audio import DBFS_FLOOR

RATE = 48_000
FRAME = 960  # 20 ms


def node(node_type: str, **params: Any) -> Node:
    spec = Manifest.from_dict(
        {"version": "v1", "nodes": [{"id": "n", "node_type": node_type, "params": params}]}
    ).nodes[0]
    return spec.instantiate()


def single(node_type: str, **params: Any) -> Manifest:
    return Manifest.from_dict(
        {"version": "v1", "nodes": [{"id": "n", "node_type": node_type, "params": params}]}
    )


def audio(samples: Any, peer: str | None = "a", ts: float = 0.0, **kw: Any) -> Audio:
    return Audio(samples=np.asarray(samples, np.float32), peer_id=peer, timestamp=ts, **kw)


def sine(freq: float, n: int, amp: float = 1.0, rate: int = RATE, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- RuntimeData ---------------------------------------------------------------------------------


def test_audio_is_readonly_view_without_copy() -> None:
    raw = np.zeros(8, np.float32)
    a = audio(raw, channels=2)
    assert np.shares_memory(a.samples, raw)
    assert not a.samples.flags.writeable
    assert raw.flags.writeable  # the caller's array keeps its flags
    assert (a.frames, a.frames_view().shape) == (4, (4, 2))
    assert np.shares_memory(a.frames_view(), raw)
    assert a.duration == pytest.approx(4 / RATE)


@pytest.mark.parametrize(
    ("samples", "kw", "error"),
    [
        (np.zeros(4, np.float64), {}, TypeError),
        (np.zeros((2, 2), np.float32), {}, ValueError),
        (np.zeros(3, np.float32), {"channels": 2}, ValueError),
        (np.zeros(4, np.float32), {"sample_rate": 0}, ValueError),
        ([0.0, 1.0], {}, TypeError),
    ],
)
def test_audio_validation(samples: Any, kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Audio(samples=samples, **kw)


def test_video_frame_kinds() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    v = Video(frame=rgb, peer_id="a")
    assert (v.width, v.height) == (6, 4)
    assert np.shares_memory(v.to_rgb(), rgb)
    gray = Video(frame=np.full((4, 6), 7, np.uint8))
    assert gray.to_rgb().shape == (4, 6, 3)
    frame = av.VideoFrame.from_ndarray(np.zeros((4, 6, 3), np.uint8), format="rgb24")
    assert Video(frame=frame).width == 6
    with pytest.raises(TypeError):
        Video(frame=np.zeros((4, 6, 3), np.float32))
    with pytest.raises(TypeError):
        Video(frame="frame")


# -- Gain ----------------------------------------------------------------------------------------


async def test_gain_db_and_linear() -> None:
    x = sine(440, FRAME, 0.5)
    out = await node("Gain", gain_db=-6.0).process(audio(x))
    assert isinstance(out, Audio)
    np.testing.assert_allclose(out.samples, x * 10 ** (-6 / 20), rtol=1e-6)
    assert out.samples.dtype == np.float32
    out = await node("Gain", gain=2.0).process(audio(x))
    assert isinstance(out, Audio)
    np.testing.assert_allclose(out.samples, x * 2.0, rtol=1e-6)
    assert (out.peer_id, out.sample_rate) == ("a", RATE)


async def test_unity_gain_forwards_the_same_object() -> None:
    a = audio(np.ones(4))
    assert await node("Gain", gain_db=0.0).process(a) is a


# -- AudioLevel ----------------------------------------------------------------------------------


async def test_audio_level_figures() -> None:
    n = node("AudioLevel", interval_ms=0)
    out = await n.process(audio(sine(1000, FRAME), ts=1.5))
    assert isinstance(out, Json)
    assert isinstance(out.value, dict)
    # 20 whole cycles of a full-scale sine: RMS = 1/sqrt(2) -> -3.0103 dBFS, peak 1.0 -> 0 dBFS.
    assert out.value["rms_dbfs"] == pytest.approx(-3.0103, abs=1e-3)
    assert out.value["peak_dbfs"] == pytest.approx(0.0, abs=1e-6)
    assert (out.value["peer_id"], out.value["timestamp"], out.to_peer) == ("a", 1.5, None)
    out = await n.process(audio(np.full(FRAME, -0.5)))
    assert isinstance(out, Json)
    assert isinstance(out.value, dict)
    assert out.value["rms_dbfs"] == pytest.approx(20 * math.log10(0.5))
    assert out.value["peak_dbfs"] == pytest.approx(20 * math.log10(0.5))
    out = await n.process(audio(np.zeros(FRAME)))
    assert isinstance(out, Json)
    assert isinstance(out.value, dict)
    assert out.value["rms_dbfs"] == out.value["peak_dbfs"] == DBFS_FLOOR


async def test_audio_level_aggregates_per_peer_over_interval() -> None:
    n = node("AudioLevel", interval_ms=100, target="sender")
    amps = [0.1, 0.2, 0.3, 0.4, 0.5]
    outs: list[Any] = []
    for i, amp in enumerate(amps):
        outs.append(await n.process(audio(np.full(FRAME, amp), peer="a", ts=i * 0.02)))
        outs.append(await n.process(audio(np.full(FRAME, 0.9), peer="b", ts=i * 0.02)))
    reports = [o for o in outs if o is not None]
    assert [r.peer_id for r in reports] == ["a", "b"]
    a, b = (r.value for r in reports if isinstance(r, Json))
    assert isinstance(a, dict)
    assert isinstance(b, dict)
    assert a["rms_dbfs"] == pytest.approx(20 * math.log10(math.sqrt(np.mean(np.square(amps)))))
    assert a["peak_dbfs"] == pytest.approx(20 * math.log10(0.5))
    assert a["duration_ms"] == pytest.approx(100.0)
    assert a["timestamp"] == 0.0
    assert b["rms_dbfs"] == pytest.approx(20 * math.log10(0.9))
    assert reports[0].to_peer == "a"


# -- EnergyVAD -----------------------------------------------------------------------------------


def frames_of(signal: np.ndarray, peer: str = "a") -> list[Audio]:
    return [
        audio(signal[i : i + FRAME], peer=peer, ts=i / RATE) for i in range(0, signal.size, FRAME)
    ]


async def run_vad(signal: np.ndarray, **params: Any) -> list[dict[str, Any]]:
    n = node("EnergyVAD", **params)
    events = []
    for f in frames_of(signal):
        out = await n.process(f)
        if out is not None:
            assert isinstance(out, Json)
            assert isinstance(out.value, dict)
            events.append(out.value)
    return events


async def test_vad_tone_between_silences() -> None:
    # 0.5 s silence, 1 s tone at amplitude 0.5 (RMS -9 dBFS), 1 s silence; 20 ms frames.
    signal = np.concatenate(
        [np.zeros(24_000), sine(300, 48_000, 0.5, start=24_000), np.zeros(48_000)]
    ).astype(np.float32)
    events = await run_vad(signal, threshold_db=-40, hangover_ms=200)
    assert [(e["event"], e["timestamp"]) for e in events] == [
        ("speech_start", pytest.approx(0.5)),  # frame 25, the first loud one
        ("speech_stop", pytest.approx(1.5)),  # decided at frame 84 (10 quiet frames = 200 ms)
    ]
    assert events[0]["level_dbfs"] == pytest.approx(-9.03, abs=0.05)
    assert events[1]["level_dbfs"] == DBFS_FLOOR


async def test_vad_hangover_bridges_pauses_and_attack_delays_start() -> None:
    # tone 0.2 s, pause 0.1 s (< hangover), tone 0.2 s, then silence 0.4 s.
    tone = sine(300, 9_600, 0.5)
    signal = np.concatenate([tone, np.zeros(4_800), tone, np.zeros(19_200)]).astype(np.float32)
    events = await run_vad(signal, threshold_db=-40, hangover_ms=150, attack_ms=60)
    assert [(e["event"], e["timestamp"]) for e in events] == [
        ("speech_start", pytest.approx(0.0)),  # onset time, decided after 3 loud frames
        ("speech_stop", pytest.approx(0.5)),  # the 0.1 s pause did not stop it
    ]
    # A 40 ms blip is shorter than the 60 ms attack: no speech at all.
    blip = np.concatenate([np.zeros(9_600), sine(300, 1_920, 0.5), np.zeros(9_600)])
    assert await run_vad(blip.astype(np.float32), attack_ms=60) == []


# -- Resample ------------------------------------------------------------------------------------


async def test_resample_streams_a_sine_to_16k() -> None:
    x = sine(1000, 48_000, 0.5)
    outs = await PipelineRunner().execute(single("Resample", sample_rate=16_000), frames_of(x))
    assert all(isinstance(o, Audio) and o.sample_rate == 16_000 for o in outs)
    y = np.concatenate([o.samples for o in outs if isinstance(o, Audio)])
    assert abs(y.size - 16_000) <= 1
    expected = sine(1000, y.size, 0.5, rate=16_000)
    # soxr's streaming output is time-aligned; away from the edges it is the same sine.
    np.testing.assert_allclose(y[1000:-1000], expected[1000:-1000], atol=2e-3)


async def test_resample_same_rate_is_the_same_object() -> None:
    a = audio(np.zeros(FRAME))
    assert await node("Resample", sample_rate=RATE).process(a) is a


# -- forwarding nodes ----------------------------------------------------------------------------


async def test_passthrough_forwards_by_reference() -> None:
    a = audio(np.ones(4))
    assert await node("PassThrough").process(a) is a
    back = await node("PassThrough", target="sender").process(a)
    assert isinstance(back, Audio)
    assert back.to_peer == "a"
    assert back.samples is a.samples


async def test_video_passthrough_forwards_by_reference() -> None:
    v = Video(frame=np.zeros((2, 2, 3), np.uint8), peer_id="a")
    assert await node("VideoPassThrough").process(v) is v
    out = await node("VideoPassThrough", target="sender").process(v)
    assert isinstance(out, Video)
    assert (out.to_peer, out.frame is v.frame) == ("a", True)


@pytest.mark.parametrize(
    "item",
    [
        Text(text="hello", peer_id="b"),
        Binary(data=b"\x00\x01", peer_id="b"),
        Json(value={"k": [1, 2]}, peer_id="b"),
    ],
)
async def test_data_echo_returns_to_sender(item: RuntimeData) -> None:
    out = await PipelineRunner().execute(single("DataEcho"), item)
    assert len(out) == 1
    assert out[0].to_peer == "b"
    assert out[0].peer_id == "b"
    assert type(out[0]) is type(item)
    for field in ("text", "data", "value"):
        assert getattr(out[0], field, None) == getattr(item, field, None)


# -- video ---------------------------------------------------------------------------------------


RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("horizontal", RGB[:, ::-1]), ("vertical", RGB[::-1]), ("both", RGB[::-1, ::-1])],
)
async def test_flip_array_is_a_view(direction: str, expected: np.ndarray) -> None:
    out = await node("VideoFlip", direction=direction).process(Video(frame=RGB, peer_id="a"))
    assert isinstance(out, Video)
    assert isinstance(out.frame, np.ndarray)
    np.testing.assert_array_equal(out.frame, expected)
    assert np.shares_memory(out.frame, RGB)
    assert out.peer_id == "a"


async def test_flip_av_frame_keeps_format_and_timing() -> None:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.tile(RGB, (4, 4, 1))), "rgb24")
    frame.pts = 1234
    out = await node("VideoFlip").process(Video(frame=frame))
    assert isinstance(out, Video)
    assert isinstance(out.frame, av.VideoFrame)
    assert (out.frame.format.name, out.frame.pts) == ("rgb24", 1234)
    np.testing.assert_array_equal(
        out.frame.to_ndarray(format="rgb24"), np.tile(RGB, (4, 4, 1))[:, ::-1]
    )
    yuv = frame.reformat(format="yuv420p")
    yuv.pts = 99
    out = await node("VideoFlip").process(Video(frame=yuv))
    assert isinstance(out, Video)
    assert isinstance(out.frame, av.VideoFrame)
    assert (out.frame.format.name, out.frame.pts, out.frame.width) == ("yuv420p", 99, 24)


async def test_grayscale_array_bt601() -> None:
    pixels = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]], np.uint8
    )
    out = await node("Grayscale").process(Video(frame=pixels))
    assert isinstance(out, Video)
    assert isinstance(out.frame, np.ndarray)
    # 0.299*255 = 76.2, 0.587*255 = 149.7, 0.114*255 = 29.1, 255, 0.299*10+0.587*20+0.114*30 = 18.15
    expected = np.array([76, 150, 29, 255, 18], np.uint8)
    np.testing.assert_array_equal(out.frame, np.repeat(expected[None, :, None], 3, axis=2))
    gray = Video(frame=np.zeros((2, 2), np.uint8))
    assert await node("Grayscale").process(gray) is gray


async def test_grayscale_yuv_frame_neutral_chroma_same_luma() -> None:
    rng = np.random.default_rng(0)
    frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "rgb24")
    yuv = frame.reformat(format="yuv420p")
    yuv.pts = 7
    out = await node("Grayscale").process(Video(frame=yuv))
    assert isinstance(out, Video)
    assert isinstance(out.frame, av.VideoFrame)
    planes = out.frame.to_ndarray()
    np.testing.assert_array_equal(planes[:8], yuv.to_ndarray()[:8])
    assert (planes[8:] == 128).all()
    assert (out.frame.format.name, out.frame.pts) == ("yuv420p", 7)
    rgb_out = await node("Grayscale").process(Video(frame=frame))
    assert isinstance(rgb_out, Video)
    assert isinstance(rgb_out.frame, av.VideoFrame)
    px = rgb_out.frame.to_ndarray(format="rgb24")
    assert (px[..., 0] == px[..., 1]).all()
    assert (px[..., 1] == px[..., 2]).all()
