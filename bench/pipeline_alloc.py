"""Allocations of the passthrough path against a naive copying pipeline (media moves by reference).

Both pipelines are a chain of ``HOPS`` nodes fed the same pre-built 20 ms mono frames (960 float32
samples, 3840 bytes). ``passthrough`` uses the built-in PassThrough node, which forwards each frame by
reference; ``copying`` uses a node that copies the samples at every hop, as a pipeline passing values
instead of references would. tracemalloc measures, in the same process, after a warm-up run:

* ``retained``: bytes still allocated after the run when the consumer keeps every output
  (a recorder): what the outputs cost on top of the inputs.
* ``peak``: the peak of traced memory above the start while the consumer drops each output at once
  (a live session): the per-frame garbage in flight in the channels.

Run: ``.venv/bin/python bench/pipeline_alloc.py``. The last line is ``pipeline_alloc_ratio=<float>``,
the copying/passthrough ratio of retained bytes. tests/test_pipeline_runner.py asserts the same ratio.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import trio

from meshrtc.pipeline import Audio, Manifest, Node, NodeOutput, PipelineRunner, RuntimeData, Video
from meshrtc.pipeline.node import NODE_TYPES, register_node

FRAMES = 500
HOPS = 3
SAMPLES = 960
VIDEO_FRAMES = 60
VIDEO_SHAPE = (240, 320, 3)


class BenchCopy(Node):
    """Copies the samples (or the pixels) at every hop: the naive baseline."""

    node_type = "BenchCopy"
    accepts = (Audio, Video)
    emits = (Audio, Video)

    async def process(self, data: RuntimeData) -> NodeOutput:
        if isinstance(data, Video):
            assert isinstance(data.frame, np.ndarray)
            return attrs.evolve(data, frame=data.frame.copy())
        assert isinstance(data, Audio)
        return attrs.evolve(data, samples=data.samples.copy())


if "BenchCopy" not in NODE_TYPES:
    register_node(BenchCopy)


def chain(node_type: str, hops: int) -> Manifest:
    nodes = [{"id": f"n{i}", "node_type": node_type, "params": {}} for i in range(hops)]
    connections = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(hops - 1)]
    return Manifest.from_dict(
        {"version": "v1", "metadata": {}, "nodes": nodes, "connections": connections}
    )


def make_video(frames: int) -> list[RuntimeData]:
    rng = np.random.default_rng(2)
    return [
        Video(
            frame=rng.integers(0, 256, VIDEO_SHAPE, dtype=np.uint8),
            peer_id=f"peer{i % 3}",
            timestamp=i / 30,
        )
        for i in range(frames)
    ]


def make_inputs(frames: int, samples: int) -> list[RuntimeData]:
    rng = np.random.default_rng(1)
    return [
        Audio(
            samples=rng.uniform(-0.5, 0.5, samples).astype(np.float32),
            peer_id=f"peer{i % 3}",
            timestamp=i * samples / 48_000,
        )
        for i in range(frames)
    ]


async def _run(
    runner: PipelineRunner, manifest: Manifest, inputs: list[RuntimeData], keep: bool
) -> list[RuntimeData]:
    async with runner.execute_streaming(manifest, inputs) as stream:
        if keep:
            return [out async for out in stream.outputs]
        async for _ in stream.outputs:
            pass
    return []


async def _measure_one(
    runner: PipelineRunner, manifest: Manifest, inputs: list[RuntimeData], keep: bool
) -> tuple[int, int, int]:
    """(retained bytes, peak bytes above start, outputs identical to their input)."""
    await _run(runner, manifest, inputs[:20], keep)  # warm-up: lazy imports and caches
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        outputs = await _run(runner, manifest, inputs, keep)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    same = sum(1 for a, b in zip(inputs, outputs, strict=False) if a is b)
    del outputs
    return current - start, peak - start, same


async def measure(
    frames: int = FRAMES, hops: int = HOPS, samples: int = SAMPLES, video_frames: int = VIDEO_FRAMES
) -> dict[str, dict[str, Any]]:
    """Figures per ``<kind>/<mode>``: audio and (if ``video_frames``) 320x240 RGB video."""
    runner = PipelineRunner()
    cases: list[tuple[str, str, list[RuntimeData]]] = [
        ("audio", "PassThrough", make_inputs(frames, samples))
    ]
    if video_frames:
        cases.append(("video", "VideoPassThrough", make_video(video_frames)))
    figures: dict[str, dict[str, Any]] = {}
    for kind, passthrough, inputs in cases:
        for mode, node_type in (("passthrough", passthrough), ("copying", "BenchCopy")):
            manifest = chain(node_type, hops)
            retained, _, same = await _measure_one(runner, manifest, inputs, keep=True)
            _, peak, _ = await _measure_one(runner, manifest, inputs, keep=False)
            figures[f"{kind}/{mode}"] = {
                "frames": len(inputs),
                "retained": retained,
                "retained_per_frame": retained / len(inputs),
                "peak": peak,
                "identical_outputs": same,
            }
    return figures


def ratios(figures: Mapping[str, Mapping[str, Any]], kind: str = "audio") -> tuple[float, float]:
    """Copying / passthrough for (retained bytes, peak bytes)."""
    p, c = figures[f"{kind}/passthrough"], figures[f"{kind}/copying"]
    return c["retained"] / max(1, p["retained"]), c["peak"] / max(1, p["peak"])


def main() -> int:
    figures = trio.run(measure)
    print(
        f"chain of {HOPS} nodes; audio: {FRAMES} frames x {SAMPLES} float32 samples; "
        f"video: {VIDEO_FRAMES} frames of {VIDEO_SHAPE[1]}x{VIDEO_SHAPE[0]} RGB"
    )
    print(f"{'case':<18} {'retained B':>11} {'B/frame':>9} {'peak B':>10} {'same obj':>9}")
    for case, f in figures.items():
        print(
            f"{case:<18} {f['retained']:>11} {f['retained_per_frame']:>9.1f} {f['peak']:>10} "
            f"{f['identical_outputs']:>6}/{f['frames']}"
        )
    audio_retained, audio_peak = ratios(figures, "audio")
    video_retained, video_peak = ratios(figures, "video")
    print(f"copying/passthrough audio: retained x{audio_retained:.0f}, peak x{audio_peak:.1f}")
    print(f"copying/passthrough video: retained x{video_retained:.0f}, peak x{video_peak:.1f}")
    print(f"pipeline_alloc_ratio={audio_retained:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
