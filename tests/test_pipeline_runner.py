"""PipelineRunner: wiring, zero-copy passing, back pressure, failures, cancellation, user nodes."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshrtc.errors import ConfigError
from meshrtc.pipeline import (
    Audio,
    Json,
    Manifest,
    PipelineError,
    PipelineRunner,
    RuntimeData,
    Text,
    Video,
    default_manifest,
)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "pipeline_alloc.py"


def manifest(
    nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]
) -> Manifest:
    return Manifest.from_dict(
        {
            "version": "v1",
            "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p in nodes],
            "connections": [{"from": a, "to": b} for a, b in edges],
        }
    )


def chain(*types: str) -> Manifest:
    nodes: list[tuple[str, str, dict[str, Any]]] = [(f"n{i}", t, {}) for i, t in enumerate(types)]
    return manifest(nodes, [(f"n{i}", f"n{i + 1}") for i in range(len(types) - 1)])


def audio(value: float = 0.1, peer: str = "a", ts: float = 0.0, n: int = 960) -> Audio:
    return Audio(samples=np.full(n, value, np.float32), peer_id=peer, timestamp=ts)


async def test_passthrough_chain_forwards_the_same_objects() -> None:
    inputs = [audio(i / 100, ts=i * 0.02) for i in range(50)]
    outputs = await PipelineRunner().execute(
        chain("PassThrough", "PassThrough", "PassThrough"), inputs
    )
    assert len(outputs) == len(inputs)
    assert all(o is i for o, i in zip(outputs, inputs, strict=True))


async def test_fan_out_and_fan_in() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}),
            ("double", "Gain", {"gain": 2.0}),
            ("triple", "Gain", {"gain": 3.0}),
            ("same", "PassThrough", {}),
            ("sink", "PassThrough", {}),
        ],
        [
            ("src", "double"),
            ("src", "triple"),
            ("src", "same"),
            ("double", "sink"),
            ("triple", "sink"),
            ("same", "sink"),
        ],
    )
    a = audio(0.1)
    outputs = await PipelineRunner().execute(m, a)
    firsts = sorted(round(float(o.samples[0]), 4) for o in outputs if isinstance(o, Audio))
    assert firsts == [0.1, 0.2, 0.3]
    assert sum(o is a for o in outputs) == 1  # the untouched branch delivered the input itself


async def test_inputs_reach_the_source_nodes_that_accept_them() -> None:
    frame = Video(frame=np.zeros((2, 2, 3), np.uint8), peer_id="b")
    items: list[RuntimeData] = [
        audio(0.1, "a"),
        audio(0.2, "b"),
        frame,
        Text(text="hi", peer_id="a"),
        Json(value={"n": 1}, peer_id="b"),
    ]
    async with PipelineRunner().execute_streaming(default_manifest(), items) as stream:
        outputs = [o async for o in stream.outputs]
    kinds = sorted(type(o).__name__ for o in outputs)
    assert kinds == ["Audio", "Audio", "Json", "Text", "Video"]
    video = next(o for o in outputs if isinstance(o, Video))
    assert (video.to_peer, video.frame is frame.frame) == ("b", True)
    mixes = {o.to_peer: float(o.samples[0]) for o in outputs if isinstance(o, Audio)}
    assert mixes == pytest.approx({"a": 0.2, "b": 0.1})
    assert {o.to_peer for o in outputs if isinstance(o, Text | Json)} == {"a", "b"}
    assert (stream.stats.inputs, stream.stats.outputs, stream.stats.unrouted) == (5, 5, 0)


async def test_unrouted_inputs_are_counted() -> None:
    gain = manifest([("g", "Gain", {"gain": 2.0})], [])
    async with PipelineRunner().execute_streaming(gain, [Text(text="x")]) as stream:
        assert [o async for o in stream.outputs] == []
    assert stream.stats.unrouted == 1


async def test_many_peers_feed_through_clones() -> None:
    runner = PipelineRunner(channel_capacity=2)
    got: list[RuntimeData] = []

    async def peer(name: str, send: trio.MemorySendChannel[RuntimeData]) -> None:
        async with send:
            for i in range(20):
                await send.send(Text(text=f"{name}{i}", peer_id=name))

    async with (
        runner.execute_streaming(chain("DataEcho")) as stream,
        trio.open_nursery() as nursery,
    ):
        for name in ("a", "b", "c"):
            nursery.start_soon(peer, name, stream.inputs.clone())
        stream.inputs.close()
        with trio.fail_after(5):
            got = [o async for o in stream.outputs]  # ends once every clone is closed
    assert len(got) == 60
    for o in got:
        assert isinstance(o, Text)
        assert o.to_peer == o.peer_id == o.text[0]


async def test_is_output_node_emits_intermediate_results() -> None:
    m = Manifest.from_dict(
        {
            "version": "v1",
            "nodes": [
                {"id": "gain", "node_type": "Gain", "params": {"gain": 2}, "is_output_node": True},
                {"id": "level", "node_type": "AudioLevel", "params": {"interval_ms": 0}},
            ],
            "connections": [{"from": "gain", "to": "level"}],
        }
    )
    outputs = await PipelineRunner().execute(m, audio(0.25))
    assert sorted(type(o).__name__ for o in outputs) == ["Audio", "Json"]


async def test_async_iterable_inputs() -> None:
    async def gen() -> AsyncIterator[RuntimeData]:
        for i in range(3):
            yield Text(text=str(i), peer_id="a")

    async with PipelineRunner().execute_streaming(chain("DataEcho"), gen()) as stream:
        texts = [o.text async for o in stream.outputs if isinstance(o, Text)]
    assert texts == ["0", "1", "2"]


async def test_back_pressure_makes_the_producer_wait() -> None:
    capacity = 2
    runner = PipelineRunner(channel_capacity=capacity)
    sent = 0

    async def produce(stream: Any) -> None:
        nonlocal sent
        for i in range(100):
            await stream.inputs.send(Text(text=str(i), peer_id="a"))
            sent += 1

    async with (
        runner.execute_streaming(chain("DataEcho")) as stream,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(produce, stream)
        await trio.testing.wait_all_tasks_blocked()
        # Nobody reads the outputs: the run holds at most one item per channel slot plus
        # one in the hands of each task (inputs fan-out, DataEcho), then the producer waits.
        bound = 3 * capacity + 2
        assert 0 < sent <= bound
        stuck = sent
        await trio.testing.wait_all_tasks_blocked()
        assert sent == stuck  # still waiting, not dropping
        first = await stream.outputs.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == stuck + 1  # one item out, one more accepted
        assert isinstance(first, Text)
        assert first.text == "0"
        nursery.cancel_scope.cancel()


async def test_send_nowait_refuses_when_full() -> None:
    async with PipelineRunner(channel_capacity=1).execute_streaming(chain("DataEcho")) as stream:
        accepted = 0
        with pytest.raises(trio.WouldBlock):  # noqa: PT012  (fill until it refuses)
            for i in range(100):
                stream.inputs.send_nowait(Text(text=str(i)))
                accepted += 1
                await trio.testing.wait_all_tasks_blocked()
        assert 1 <= accepted <= 5


async def test_failing_node_closes_the_run_with_its_error() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}),
            ("bad", "tests.pipeline_user_nodes:FailOnThird", {}),
            ("out", "PassThrough", {}),
        ],
        [("src", "bad"), ("bad", "out")],
    )
    received = 0

    async def consume() -> None:
        nonlocal received
        async with PipelineRunner().execute_streaming(m, [audio(i) for i in range(10)]) as stream:
            async for _ in stream.outputs:
                received += 1
            raise AssertionError("the body should have been cancelled")

    with trio.fail_after(5), pytest.raises(PipelineError) as info:
        await consume()
    err = info.value
    assert (err.node_id, err.node_type) == ("bad", "tests.pipeline_user_nodes:FailOnThird")
    assert isinstance(err.__cause__, ValueError)
    assert "bad" in str(err)
    assert "third item refused" in str(err)
    assert received <= 2  # only what passed before the failure came out


async def test_failure_interrupts_a_body_that_waits_on_something_else() -> None:
    async def body() -> None:
        m = chain("tests.pipeline_user_nodes:FailOnThird")
        async with PipelineRunner().execute_streaming(m) as stream:
            for i in range(3):
                await stream.send(Text(text=str(i)))
            await trio.sleep_forever()

    with trio.fail_after(5), pytest.raises(PipelineError):
        await body()


async def test_emitting_garbage_fails_the_node() -> None:
    with pytest.raises(PipelineError) as info:
        await PipelineRunner().execute(chain("tests.pipeline_user_nodes:Garbage"), Text(text="x"))
    assert info.value.node_id == "n0"
    assert isinstance(info.value.__cause__, TypeError)


async def test_bad_input_fails_the_inputs_stage() -> None:
    async def body() -> None:
        async with PipelineRunner().execute_streaming(chain("PassThrough")) as stream:
            await stream.inputs.send("not data")  # type: ignore[arg-type]
            await trio.sleep_forever()

    with trio.fail_after(5), pytest.raises(PipelineError) as info:
        await body()
    assert info.value.node_id == "<inputs>"


async def test_body_exception_propagates_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with PipelineRunner().execute_streaming(chain("PassThrough")):
            raise KeyError("mine")


async def test_cancellation_tears_down_promptly(autojump_clock: trio.testing.MockClock) -> None:
    m = chain("PassThrough", "tests.pipeline_user_nodes:Stall")
    start = trio.current_time()
    with trio.move_on_after(5) as scope:
        async with PipelineRunner().execute_streaming(m) as stream:
            for i in range(5):
                await stream.send(Text(text=str(i)))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    # Teardown took no (virtual) time: nothing waited on a timeout or a stuck task.
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_leaving_the_block_cancels_running_nodes() -> None:
    m = chain("tests.pipeline_user_nodes:Stall")
    with trio.fail_after(5):
        async with PipelineRunner().execute_streaming(m) as stream:
            await stream.send(Text(text="x"))
            await trio.testing.wait_all_tasks_blocked()
    # Reaching here means every node task ended (structured concurrency); nobody takes inputs.
    with pytest.raises(trio.BrokenResourceError):
        await stream.send(Text(text="y"))


async def test_user_node_by_import_path() -> None:
    m = manifest([("scale", "tests.pipeline_user_nodes:Scale", {"factor": 4})], [])
    (out,) = await PipelineRunner().execute(m, audio(0.1))
    assert isinstance(out, Audio)
    np.testing.assert_allclose(out.samples, 0.4, rtol=1e-6)


def test_runner_refuses_bad_capacity() -> None:
    with pytest.raises(ConfigError):
        PipelineRunner(channel_capacity=0)


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("meshrtc_bench_pipeline_alloc", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


async def test_passthrough_allocates_far_less_than_copying() -> None:
    bench = _load_bench()
    figures = await bench.measure(frames=200, hops=3, video_frames=0)
    retained_ratio, _ = bench.ratios(figures, "audio")
    assert figures["audio/passthrough"]["identical_outputs"] == 200
    assert figures["audio/copying"]["identical_outputs"] == 0
    # Copying retains ~4 KB per 960-sample frame; passthrough only the list slot for it.
    assert figures["audio/copying"]["retained_per_frame"] > 3840
    assert figures["audio/passthrough"]["retained_per_frame"] < 100
    assert retained_ratio > 50
