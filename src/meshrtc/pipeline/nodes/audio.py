"""Per-peer audio nodes: Gain, Resample, AudioLevel and an energy-based VAD.

Levels are in dBFS computed as ``20·log10(x)`` of the float amplitude, with 1.0 = full scale: a
full-scale sine has a peak of 0 dBFS and an RMS of −3.01 dBFS. Silence reads :data:`DBFS_FLOOR`
rather than −∞ so that every figure stays valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import soxr
import trio

from meshrtc.pipeline.data import Audio, Json, RuntimeData
from meshrtc.pipeline.errors import ParamError
from meshrtc.pipeline.node import Emit, Node, NodeOutput, Params, register_node

__all__ = [
    "DBFS_FLOOR",
    "AudioLevel",
    "EnergyVAD",
    "Gain",
    "Resample",
    "dbfs",
    "peak_of",
    "rms_of",
]

DBFS_FLOOR = -120.0

_REPORT_TARGETS = ("broadcast", "sender")


def dbfs(amplitude: float) -> float:
    """``20·log10(amplitude)``, floored at :data:`DBFS_FLOOR`."""
    if amplitude <= 0.0:
        return DBFS_FLOOR
    return max(DBFS_FLOOR, 20.0 * math.log10(amplitude))


def rms_of(audio: Audio) -> float:
    """RMS over every sample of every channel (float64 accumulation)."""
    if audio.samples.size == 0:
        return 0.0
    x = audio.samples.astype(np.float64)
    return math.sqrt(float(np.dot(x, x)) / x.size)


def peak_of(audio: Audio) -> float:
    if audio.samples.size == 0:
        return 0.0
    return float(np.max(np.abs(audio.samples)))


def _report_to(target: str, peer_id: str | None) -> str | None:
    return peer_id if target == "sender" else None


@register_node
class Gain(Node):
    """Multiplies samples by a gain given in dB (``gain_db``) or linear (``gain``), exactly one.

    No clipping here: the float path has headroom, and MixMinus or the encoder limits later.
    """

    node_type = "Gain"
    accepts = (Audio,)
    emits = (Audio,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.gain = np.float32(params["gain"])

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        gain_db = p.optional_number("gain_db", minimum=-120.0, maximum=40.0)
        gain = p.optional_number("gain", minimum=0.0, maximum=100.0)
        p.finish()
        if gain is not None and gain_db is not None:
            raise ParamError("gain", "give either gain_db or gain, not both")
        if gain is not None:
            return {"gain": gain}
        if gain_db is not None:
            return {"gain": 10.0 ** (gain_db / 20.0)}
        raise ParamError("gain_db", "is required (or give a linear gain)")

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        if self.gain == 1.0:
            return data
        return attrs.evolve(data, samples=data.samples * self.gain)


@register_node
class Resample(Node):
    """Converts each peer's audio to ``sample_rate`` with soxr, keeping filter state per peer.

    Streaming resampling has a filter delay: the first output of a peer comes a few milliseconds of
    audio later, and the rest is flushed when the input ends. Audio already at the target rate is
    forwarded unchanged (same object).
    """

    node_type = "Resample"
    accepts = (Audio,)
    emits = (Audio,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.sample_rate: int = params["sample_rate"]
        self.quality: str = params["quality"]
        #: per peer: (input rate, channels, resampler, last input frame)
        self._streams: dict[str | None, tuple[int, int, soxr.ResampleStream, Audio]] = {}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        rate = p.integer("sample_rate", minimum=8_000, maximum=192_000)
        quality = p.choice("quality", ("QQ", "LQ", "MQ", "HQ", "VHQ"), "HQ")
        p.finish()
        return {"sample_rate": rate, "quality": quality}

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        if data.sample_rate == self.sample_rate:
            return data
        key = data.peer_id
        state = self._streams.get(key)
        if state is None or state[0] != data.sample_rate or state[1] != data.channels:
            stream = soxr.ResampleStream(
                data.sample_rate, self.sample_rate, data.channels, "float32", self.quality
            )
        else:
            stream = state[2]
        self._streams[key] = (data.sample_rate, data.channels, stream, data)
        out = stream.resample_chunk(data.frames_view())
        if out.size == 0:
            return None
        return attrs.evolve(data, samples=out.reshape(-1), sample_rate=self.sample_rate)

    async def run(self, inputs: trio.abc.ReceiveChannel[RuntimeData], emit: Emit) -> None:
        await super().run(inputs, emit)
        for _rate, _channels, stream, last in self._streams.values():
            tail = stream.resample_chunk(np.zeros((0, last.channels), np.float32), last=True)
            if tail.size:
                await emit(
                    attrs.evolve(
                        last,
                        samples=tail.reshape(-1),
                        sample_rate=self.sample_rate,
                        timestamp=last.timestamp + last.duration,
                    )
                )
        self._streams.clear()


@attrs.define
class _LevelWindow:
    start: float
    samples: int = 0
    frames: int = 0
    sum_squares: float = 0.0
    peak: float = 0.0


@register_node
class AudioLevel(Node):
    """Reports each peer's RMS and peak level as JSON, once per ``interval_ms`` of its audio.

    Emits ``{"type": "audio_level", "peer_id", "timestamp", "duration_ms", "rms_dbfs", "peak_dbfs"}``
    with ``timestamp`` the start of the measured span. ``interval_ms: 0`` reports every frame.
    """

    node_type = "AudioLevel"
    accepts = (Audio,)
    emits = (Json,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.interval: float = params["interval_ms"] / 1000.0
        self.target: str = params["target"]
        self._windows: dict[str | None, _LevelWindow] = {}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        interval = p.number("interval_ms", 100.0, minimum=0.0, maximum=60_000.0)
        target = p.choice("target", _REPORT_TARGETS, "broadcast")
        p.finish()
        return {"interval_ms": interval, "target": target}

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        window = self._windows.get(data.peer_id)
        if window is None:
            window = self._windows[data.peer_id] = _LevelWindow(start=data.timestamp)
        x = data.samples.astype(np.float64)
        window.sum_squares += float(np.dot(x, x))
        window.samples += x.size
        window.frames += data.frames
        if x.size:
            window.peak = max(window.peak, float(np.max(np.abs(x))))
        duration = window.frames / data.sample_rate
        if duration + 1e-9 < self.interval:
            return None
        del self._windows[data.peer_id]
        rms = math.sqrt(window.sum_squares / window.samples) if window.samples else 0.0
        return Json(
            value={
                "type": "audio_level",
                "peer_id": data.peer_id,
                "timestamp": window.start,
                "duration_ms": duration * 1000.0,
                "rms_dbfs": dbfs(rms),
                "peak_dbfs": dbfs(window.peak),
            },
            peer_id=data.peer_id,
            timestamp=window.start,
            to_peer=_report_to(self.target, data.peer_id),
        )


@attrs.define
class _VadState:
    speaking: bool = False
    #: Consecutive loud samples (per channel) while not speaking, and when that run began.
    loud_samples: int = 0
    onset: float = 0.0
    #: Consecutive quiet samples while speaking, and when that run began.
    quiet_samples: int = 0
    offset: float = 0.0


@register_node
class EnergyVAD(Node):
    """Voice activity from frame energy, per peer, with attack and hangover.

    A frame is *loud* when its RMS is at least ``threshold_db`` dBFS. Speech starts once loud frames
    have lasted ``attack_ms`` (0: the first loud frame) and stops once quiet frames have lasted
    ``hangover_ms``, so short pauses between words do not end it. Durations are counted in samples, not
    wall time, so the result depends only on the audio. Emits
    ``{"type": "vad", "event": "speech_start" | "speech_stop", "peer_id", "timestamp", "level_dbfs"}``
    where ``timestamp`` is the start of the first loud (or quiet) frame of the run that decided it.
    """

    node_type = "EnergyVAD"
    accepts = (Audio,)
    emits = (Json,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.threshold_db: float = params["threshold_db"]
        self.attack: float = params["attack_ms"] / 1000.0
        self.hangover: float = params["hangover_ms"] / 1000.0
        self.target: str = params["target"]
        self._states: dict[str | None, _VadState] = {}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        threshold = p.number("threshold_db", -40.0, minimum=-100.0, maximum=0.0)
        attack = p.number("attack_ms", 0.0, minimum=0.0, maximum=2_000.0)
        hangover = p.number("hangover_ms", 300.0, minimum=0.0, maximum=10_000.0)
        target = p.choice("target", _REPORT_TARGETS, "broadcast")
        p.finish()
        return {
            "threshold_db": threshold,
            "attack_ms": attack,
            "hangover_ms": hangover,
            "target": target,
        }

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        state = self._states.setdefault(data.peer_id, _VadState())
        level = dbfs(rms_of(data))
        loud = level >= self.threshold_db
        if not state.speaking:
            if not loud:
                state.loud_samples = 0
                return None
            if state.loud_samples == 0:
                state.onset = data.timestamp
            state.loud_samples += data.frames
            if state.loud_samples < round(self.attack * data.sample_rate):
                return None
            state.speaking, state.loud_samples, state.quiet_samples = True, 0, 0
            return self._event(data, "speech_start", state.onset, level)
        if loud:
            state.quiet_samples = 0
            return None
        if state.quiet_samples == 0:
            state.offset = data.timestamp
        state.quiet_samples += data.frames
        if state.quiet_samples < round(self.hangover * data.sample_rate):
            return None
        state.speaking, state.quiet_samples, state.loud_samples = False, 0, 0
        return self._event(data, "speech_stop", state.offset, level)

    def _event(self, data: Audio, event: str, timestamp: float, level: float) -> Json:
        return Json(
            value={
                "type": "vad",
                "event": event,
                "peer_id": data.peer_id,
                "timestamp": timestamp,
                "level_dbfs": level,
            },
            peer_id=data.peer_id,
            timestamp=timestamp,
            to_peer=_report_to(self.target, data.peer_id),
        )
