"""The asyncio bridge: calls, cancellation both ways, batched hand-over to trio, bounded teardown."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import trio
from aiortc import RTCConfiguration, RTCPeerConnection

from meshrtc.rtc.bridge import (
    BridgeCancelledError,
    BridgeClosedError,
    ToTrio,
    open_bridge,
)


def _thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


async def test_run_returns_the_result_computed_on_the_loop_thread() -> None:
    async with open_bridge() as bridge:

        async def where(x: int) -> tuple[int, str, bool]:
            await asyncio.sleep(0)
            return x * 2, threading.current_thread().name, asyncio.get_running_loop() is bridge.loop

        doubled, thread_name, on_loop = await bridge.run(where, 21)
    assert doubled == 42
    assert thread_name == "meshrtc-asyncio"
    assert on_loop


async def test_exceptions_cross_into_trio() -> None:
    async with open_bridge() as bridge:

        async def boom() -> None:
            raise KeyError("from asyncio")

        with pytest.raises(KeyError, match="from asyncio"):
            await bridge.run(boom)
        assert bridge.running  # a failed call does not hurt the bridge
        assert await bridge.call(int, "7") == 7


async def test_calls_do_not_park_a_worker_thread_each() -> None:
    async with open_bridge() as bridge:
        baseline = threading.active_count()
        started = 0
        all_started = trio.Event()
        release = asyncio.Event()

        async def wait_for_release() -> None:
            nonlocal started
            started += 1
            if started == 50:
                bridge.trio_token.run_sync_soon(all_started.set)
            await release.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(bridge.run, wait_for_release)
            with trio.fail_after(5):
                await all_started.wait()
            # 50 calls in flight, no thread added for them.
            assert threading.active_count() == baseline
            bridge.call_soon(release.set)


async def test_trio_cancellation_cancels_the_asyncio_task_and_waits_for_it() -> None:
    events: list[str] = []
    async with open_bridge() as bridge:
        running = trio.Event()

        async def long_job() -> None:
            bridge.trio_token.run_sync_soon(running.set)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                events.append("cancelled")
                await asyncio.sleep(0.05)  # cleanup that takes a while; run() must wait for it
                events.append("cleaned up")
                raise

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run, long_job)
                with trio.fail_after(5):
                    await running.wait()
                scope.cancel()
        # By the time run() let the Cancelled through, the asyncio side had finished.
        assert events == ["cancelled", "cleaned up"]
        assert scope.cancelled_caught


async def test_asyncio_side_cancellation_surfaces_in_trio() -> None:
    async with open_bridge() as bridge:

        async def cancelled_by_asyncio() -> None:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)
            await asyncio.sleep(60)

        with pytest.raises(BridgeCancelledError):
            await bridge.run(cancelled_by_asyncio)


async def test_to_trio_batches_and_keeps_order() -> None:
    async with open_bridge() as bridge:
        pipe: ToTrio[int]
        receive: trio.MemoryReceiveChannel[int]
        pipe, receive = bridge.open_channel()

        def burst() -> None:  # one asyncio callback producing 5000 items
            for i in range(5000):
                pipe.send(i)

        bridge.call_soon(burst)
        got = []
        with trio.fail_after(5):
            async for item in receive:
                got.append(item)
                if len(got) == 5000:
                    break
        assert got == list(range(5000))
        assert pipe.delivered == 5000
        assert pipe.dropped == 0
        # Batched: far fewer cross-thread flushes than items.
        assert pipe.flushes < 100


async def test_a_bridges_pipes_share_one_wake_up_per_batch() -> None:
    """Ten members' pipes fed in one asyncio callback (packets of several members read in one
    loop iteration): one cross-thread wake-up for all of them, not one per pipe (each wake-up is
    a socket write that hands the GIL to trio), every item delivered in order per pipe."""
    async with open_bridge() as bridge:
        pipes: list[tuple[ToTrio[int], trio.MemoryReceiveChannel[int]]] = [
            bridge.open_channel() for _ in range(10)
        ]
        wakeups = bridge.flusher.wakeups

        def packets() -> None:
            for n in range(3):
                for pipe, _ in pipes:
                    pipe.send(n)

        bridge.call_soon(packets)
        with trio.fail_after(5):
            got = [[await receive.receive() for _ in range(3)] for _, receive in pipes]
        assert got == [[0, 1, 2]] * 10
        assert bridge.flusher.wakeups - wakeups == 1
        assert bridge.flusher.flushes == 10
        assert [pipe.flushes for pipe, _ in pipes] == [1] * 10


async def test_to_trio_drops_and_counts_when_the_channel_is_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_bridge() as bridge:
        pipe: ToTrio[int]
        receive: trio.MemoryReceiveChannel[int]
        pipe, receive = bridge.open_channel(max_buffer_size=10)
        flushed = trio.Event()

        def burst() -> None:
            for i in range(100):
                pipe.send(i)
            bridge.trio_token.run_sync_soon(flushed.set)  # runs after the flush it queued

        with caplog.at_level(logging.WARNING, logger="meshrtc.rtc.bridge"):
            bridge.call_soon(burst)
            with trio.fail_after(5):
                await flushed.wait()
        assert pipe.delivered == 10
        assert pipe.dropped == 90
        assert [receive.receive_nowait() for _ in range(10)] == list(range(10))
        warnings = [r for r in caplog.records if "dropping" in r.getMessage()]
        assert len(warnings) == 1  # logged once, counted always


async def test_to_trio_closed_receiver_counts_drops() -> None:
    async with open_bridge() as bridge:
        pipe: ToTrio[int]
        receive: trio.MemoryReceiveChannel[int]
        pipe, receive = bridge.open_channel()
        await receive.aclose()
        flushed = trio.Event()

        def send() -> None:
            pipe.send(1)
            bridge.trio_token.run_sync_soon(flushed.set)

        bridge.call_soon(send)
        with trio.fail_after(5):
            await flushed.wait()
        assert pipe.dropped == 1
        assert pipe.delivered == 0


async def test_errors_in_the_loop_are_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    async with open_bridge() as bridge:
        handled = trio.Event()

        def broken_callback() -> None:
            raise RuntimeError("callback failed on the loop")

        with caplog.at_level(logging.ERROR, logger="meshrtc.rtc.bridge"):
            bridge.call_soon(broken_callback)
            bridge.call_soon(bridge.trio_token.run_sync_soon, handled.set)
            with trio.fail_after(5):
                await handled.wait()
        assert any(isinstance(e, RuntimeError) for e in bridge.errors)
        assert any("callback failed on the loop" in str(r.exc_info) for r in caplog.records)


async def test_close_closes_registered_connections_and_leaves_no_thread_or_task() -> None:
    before = _thread_names()
    leftover_cancelled = threading.Event()
    state: list[str] = []
    async with open_bridge() as bridge:
        pc = await bridge.call(RTCPeerConnection, RTCConfiguration(iceServers=[]))
        bridge.register(pc)
        await bridge.call(pc.addTransceiver, "audio")

        async def forgotten() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                leftover_cancelled.set()
                raise

        bridge.call_soon(asyncio.ensure_future, forgotten())

        # a default-executor worker thread, like aiortc's encoders use
        async def use_executor() -> int:
            return await asyncio.get_running_loop().run_in_executor(None, int)

        await bridge.run(use_executor)
        assert "meshrtc-asyncio" in _thread_names()
    state.append(pc.connectionState)
    assert state == ["closed"]
    assert leftover_cancelled.is_set()
    assert bridge.loop.is_closed()
    assert not asyncio.all_tasks(bridge.loop)
    assert len(bridge.leftover_tasks) == 1
    assert "forgotten" in bridge.leftover_tasks[0]
    assert _thread_names() == before
    with pytest.raises(BridgeClosedError):
        await bridge.run(asyncio.sleep, 0)


async def test_bridge_closes_when_its_trio_scope_is_cancelled() -> None:
    before = _thread_names()
    with trio.move_on_after(0.2):
        async with open_bridge() as bridge:
            await bridge.run(asyncio.sleep, 3600)
    assert bridge.loop.is_closed()
    assert _thread_names() == before


async def test_pyee_handler_hands_events_across_and_never_raises_into_aiortc() -> None:
    async with open_bridge() as bridge:
        pipe: ToTrio[tuple[str, str]]
        receive: trio.MemoryReceiveChannel[tuple[str, str]]
        pipe, receive = bridge.open_channel()
        pc = await bridge.call(RTCPeerConnection, RTCConfiguration(iceServers=[]))
        bridge.register(pc)

        def broken() -> tuple[str, str]:
            raise ValueError("listener bug")

        def subscribe() -> None:
            pc.on("signalingstatechange", pipe.handler(broken))
            pc.on("signalingstatechange", pipe.handler(lambda: ("signaling", pc.signalingState)))

        await bridge.call(subscribe)
        await bridge.call(pc.addTransceiver, "audio")
        # setLocalDescription emits signalingstatechange on the asyncio thread; the broken
        # listener must not make it fail.
        await bridge.run(lambda: pc.setLocalDescription())
        with trio.fail_after(5):
            assert await receive.receive() == ("signaling", "have-local-offer")
        assert pipe.handler_errors == 1
