"""DecodeWorker: jobs run in order on its own thread, results come back to trio in order, the
backlog is bounded, errors reach the consumer, and closing joins the thread (also when cancelled)."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing

from meshrtc.rtc.decode_worker import DecodeWorker, WorkerClosedError, WorkResult


def _thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


class Gate:
    """Holds the worker's job until trio opens it, and tells trio when a job has started."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.open = threading.Event()
        self.started = trio.Event()

    def hold(self, job: int) -> int:
        trio.from_thread.run_sync(self.started.set, trio_token=self.token)
        assert self.open.wait(10), "the test never opened the gate"
        return job


async def test_jobs_run_in_order_on_the_named_thread_and_the_thread_is_joined() -> None:
    seen: list[tuple[int, str]] = []

    def square(job: int) -> int:
        seen.append((job, threading.current_thread().name))
        return job * job

    worker = DecodeWorker("meshrtc-video-test-order", square, max_pending=100)
    assert "meshrtc-video-test-order" in _thread_names()
    for job in range(50):
        assert worker.submit(job)
    with trio.fail_after(10):
        results = [await worker.receive() for _ in range(50)]
    assert [r.job for r in results] == list(range(50))
    assert [r.unwrap() for r in results] == [j * j for j in range(50)]
    assert seen == [(j, "meshrtc-video-test-order") for j in range(50)]
    assert worker.pending == 0
    assert worker.submitted == worker.completed == 50
    assert await worker.aclose()
    assert not worker.alive
    assert "meshrtc-video-test-order" not in _thread_names()
    with pytest.raises(WorkerClosedError):
        worker.submit(1)


async def test_the_backlog_is_bounded_and_frees_up_as_results_are_read() -> None:
    gate = Gate()
    worker = DecodeWorker("meshrtc-video-test-bound", gate.hold, max_pending=3)
    try:
        assert all(worker.submit(j) for j in range(3))
        assert not worker.submit(3)  # refused, not queued
        assert worker.refused == 1
        assert worker.pending == 3
        gate.open.set()
        with trio.fail_after(10):
            first = await worker.receive()
        assert first.unwrap() == 0
        assert worker.pending == 2
        assert worker.submit(4)
        with trio.fail_after(10):
            rest = [(await worker.receive()).unwrap() for _ in range(3)]
        assert rest == [1, 2, 4]
        assert worker.pending == 0
    finally:
        gate.open.set()
        assert await worker.aclose()


async def test_an_exception_reaches_the_consumer_and_later_jobs_still_run() -> None:
    def fussy(job: int) -> int:
        if job == 1:
            raise ValueError("bad frame")
        return job

    worker = DecodeWorker("meshrtc-video-test-errors", fussy)
    for job in range(3):
        assert worker.submit(job)
    with trio.fail_after(10):
        results: list[WorkResult[int, int]] = [await worker.receive() for _ in range(3)]
    assert results[0].unwrap() == 0
    assert isinstance(results[1].error, ValueError)
    with pytest.raises(ValueError, match="bad frame"):
        results[1].unwrap()
    assert results[2].unwrap() == 2
    assert await worker.aclose()


async def test_close_drops_queued_jobs_waits_for_the_running_one_and_ends_iteration() -> None:
    gate = Gate()
    worker = DecodeWorker("meshrtc-video-test-close", gate.hold, max_pending=10)
    received: list[int] = []
    ended = trio.Event()

    async def consume() -> None:
        received.extend([result.unwrap() async for result in worker])
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for job in range(4):
            assert worker.submit(job)
        with trio.fail_after(10):
            await gate.started.wait()  # job 0 is running, 1-3 are queued
            closed: list[bool] = []

            async def close() -> None:
                closed.append(await worker.aclose())

            nursery.start_soon(close)
            await trio.testing.wait_all_tasks_blocked()
            assert not closed  # waiting for the running job
            gate.open.set()
            await ended.wait()
    assert closed == [True]
    assert worker.completed == 1
    # The running job finished, the queued ones never ran; nothing is delivered after close.
    assert received == []
    assert "meshrtc-video-test-close" not in _thread_names()


async def test_a_cancelled_caller_still_joins_the_thread() -> None:
    gate = Gate()
    worker = DecodeWorker("meshrtc-video-test-cancel", gate.hold)
    assert worker.submit(0)
    with trio.fail_after(10):
        await gate.started.wait()
    gate.open.set()
    with trio.CancelScope() as scope:
        scope.cancel()
        result = await worker.aclose()  # shielded inside
    assert result
    assert not worker.alive
    assert "meshrtc-video-test-cancel" not in _thread_names()


async def test_close_is_bounded_when_a_job_outlasts_it(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    worker = DecodeWorker("meshrtc-video-test-slow", gate.hold, close_timeout=0.05)
    assert worker.submit(0)
    with trio.fail_after(10):
        await gate.started.wait()
    with caplog.at_level(logging.ERROR, logger="meshrtc.rtc.decode_worker"):
        assert not await worker.aclose()
    assert "did not stop" in caplog.text
    assert worker.alive
    gate.open.set()
    worker.close_timeout = 10.0
    assert await worker.aclose()  # once the job ends, closing again joins it
    assert "meshrtc-video-test-slow" not in _thread_names()


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        DecodeWorker("never-started", lambda j: j, max_pending=0)
