"""Supervised worker processes (meshrtc.host.worker, worker_main): real processes on this machine.

Each test starts one or two ``python -m meshrtc.host.worker_main`` children (about 0.5 s each to
import). Bounds are ``trio.fail_after`` limits far above the expected time, so a loaded machine
cannot fail them, while a missing mechanism (no wait on the process, no ping timeout, no
escalation) still would: each test sets the other detection paths' timeouts beyond its bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import trio

from meshrtc.host.channel import ControlChannel
from meshrtc.host.control import WORKER_TO_SUPERVISOR, Hello
from meshrtc.host.worker import (
    FailureReason,
    StopStep,
    WorkerConfig,
    WorkerProcess,
    WorkerStartError,
    WorkerState,
)

#: Generous start (two shared cores, six engineers); everything else short unless a test says.
BASE = WorkerConfig(
    hello_timeout=30.0,
    ping_interval=0.05,
    ping_timeout=30.0,
    drain_timeout=5.0,
    term_timeout=5.0,
    kill_timeout=5.0,
    exit_grace=30.0,
)
#: No detection path in these tests may take longer than this.
BOUND = 5.0


def config(**changes: object) -> WorkerConfig:
    import attrs

    return attrs.evolve(BASE, **changes)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor an unreaped zombie of ours."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def pongs(worker: WorkerProcess, count: int) -> None:
    with trio.fail_after(BOUND):
        for _ in range(count):
            await worker.next_pong()


async def test_start_hello_ping_then_stop_by_asking() -> None:
    worker = WorkerProcess("w1", BASE)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(worker.run) is worker
        assert worker.state is WorkerState.Ready
        assert worker.pid is not None
        assert not gone(worker.pid)
        await pongs(worker, 3)
        assert worker.pongs >= 3
        assert worker.last_rtt is not None
        assert 0 <= worker.last_rtt < BOUND
        with trio.fail_after(BOUND):
            await worker.stop()
    assert worker.state is WorkerState.Stopped
    assert worker.stop_step is StopStep.ASKED
    assert worker.bye_reason == "shutdown"
    assert worker.returncode == 0
    assert worker.failure is None
    assert gone(worker.pid)


async def test_kill_9_is_seen_at_once_and_costs_only_that_worker() -> None:
    # Ping timeout and exit grace are 30 s: only waiting on the process can see the death in BOUND.
    victim, other = WorkerProcess("victim", BASE), WorkerProcess("other", BASE)
    async with trio.open_nursery() as nursery:
        await nursery.start(victim.run)
        await nursery.start(other.run)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        with trio.fail_after(BOUND):
            await victim.finished.wait()
        assert victim.state is WorkerState.Failed
        assert victim.failure is FailureReason.DIED
        assert victim.exit_signal is signal.SIGKILL
        assert gone(victim.pid)
        # The nursery and the other worker carry on.
        assert other.state is WorkerState.Ready
        await pongs(other, 3)
        await other.stop()
    assert other.state is WorkerState.Stopped


async def test_a_worker_that_stops_answering_pings_is_killed() -> None:
    worker = WorkerProcess("mute", config(ping_timeout=0.5, worker_args=("--test-ignore-pings",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(BOUND):
            await worker.finished.wait()
    assert worker.state is WorkerState.Failed
    assert worker.failure is FailureReason.UNRESPONSIVE
    assert worker.pongs == 0
    assert worker.stop_step is StopStep.SIGKILL
    assert worker.exit_signal is signal.SIGKILL
    assert worker.pid is not None
    assert gone(worker.pid)


@pytest.mark.parametrize(
    ("flags", "term_timeout", "step"),
    [
        # SIGTERM ends it at once: a long term_timeout costs nothing and only a broken SIGTERM
        # step would run it out.
        (("--test-ignore-shutdown",), 3.0, StopStep.SIGTERM),
        (("--test-ignore-shutdown", "--test-ignore-sigterm"), 0.3, StopStep.SIGKILL),
    ],
    ids=["ignores-shutdown", "ignores-sigterm-too"],
)
async def test_stop_escalates(flags: tuple[str, ...], term_timeout: float, step: StopStep) -> None:
    worker = WorkerProcess(
        "stubborn", config(drain_timeout=0.3, term_timeout=term_timeout, worker_args=flags)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(BOUND):
            await worker.stop()
    assert worker.state is WorkerState.Stopped
    assert worker.stop_step is step
    assert worker.exit_signal is signal.Signals[step.value]
    assert worker.bye_reason is None
    assert worker.pid is not None
    assert gone(worker.pid)


@pytest.mark.parametrize(
    "flags",
    [(), ("--test-ignore-shutdown", "--test-ignore-sigterm")],
    ids=["obedient", "stubborn"],
)
async def test_cancelling_the_owner_leaves_no_child(flags: tuple[str, ...]) -> None:
    worker = WorkerProcess("scoped", config(drain_timeout=0.3, term_timeout=0.3, worker_args=flags))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            nursery.cancel_scope.cancel()
    assert worker.state is WorkerState.Stopped
    assert worker.pid is not None
    assert gone(worker.pid)
    assert worker.returncode is not None


async def test_a_corrupt_channel_fails_and_kills_the_worker() -> None:
    worker = WorkerProcess("garbled", config(worker_args=("--test-corrupt-after-hello",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(BOUND):
            await worker.finished.wait()
    assert worker.state is WorkerState.Failed
    assert worker.failure is FailureReason.PROTOCOL_ERROR
    assert "bad_json" in worker.failure_detail
    assert worker.exit_signal is signal.SIGKILL


async def test_a_worker_that_closes_its_channel_but_lives_is_killed() -> None:
    worker = WorkerProcess("hermit", config(exit_grace=0.3, worker_args=("--test-close-channel",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(BOUND):
            await worker.finished.wait()
    assert worker.state is WorkerState.Failed
    assert worker.failure is FailureReason.CHANNEL_CLOSED
    assert worker.exit_signal is signal.SIGKILL


async def test_a_worker_that_dies_before_hello_fails_the_start() -> None:
    worker = WorkerProcess("typo", config(worker_args=("--no-such-flag",)))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WorkerStartError) as caught:
                await nursery.start(worker.run)
    assert caught.value.reason is FailureReason.DIED
    assert worker.state is WorkerState.Failed
    assert worker.returncode == 2  # argparse's usage error


async def test_no_hello_in_time_fails_the_start_and_kills_the_worker() -> None:
    worker = WorkerProcess("silent", config(hello_timeout=0.5, worker_args=("--test-no-hello",)))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WorkerStartError) as caught:
                await nursery.start(worker.run)
    assert caught.value.reason is FailureReason.HELLO_TIMEOUT
    assert worker.state is WorkerState.Failed
    assert worker.exit_signal is signal.SIGKILL
    assert worker.pid is not None
    assert gone(worker.pid)


async def test_the_worker_exits_when_the_supervisor_is_gone() -> None:
    """No orphan the other way round: closing the supervisor's end ends the worker."""
    ours, theirs = socket.socketpair()
    try:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "meshrtc.host.worker_main",
                "--fd",
                str(theirs.fileno()),
                "--worker-id",
                "orphan",
            ],
            pass_fds=(theirs.fileno(),),
        )
    finally:
        theirs.close()
    channel = ControlChannel(ours, accept=WORKER_TO_SUPERVISOR)
    try:
        with trio.fail_after(BOUND * 2):
            hello = await channel.receive()
            assert hello == Hello(worker_id="orphan", pid=process.pid)
            await channel.aclose()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


SUPERVISOR = """
import sys, trio
from meshrtc.host.worker import WorkerProcess

async def main():
    worker = WorkerProcess("child")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        print(worker.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_killing_the_supervisor_with_9_ends_its_worker() -> None:
    """The real orphan case: nothing runs the supervisor's teardown, the channel's EOF must."""
    supervisor = await trio.lowlevel.open_process(
        [sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE
    )
    try:
        assert supervisor.stdout is not None
        line = b""
        with trio.fail_after(BOUND * 2):
            while not line.endswith(b"\n"):
                chunk = await supervisor.stdout.receive_some(64)
                assert chunk, "the supervisor ended before it printed its worker's pid"
                line += chunk
        pid = int(line)
        # Not our child: watch it through a pidfd, readable once it has exited.
        pidfd = os.pidfd_open(pid)
        try:
            supervisor.kill()
            await supervisor.wait()
            with trio.fail_after(BOUND):
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        if supervisor.stdout is not None:
            await supervisor.stdout.aclose()
