"""WorkerProcess: one supervised worker process, owned by the caller's nursery (docs/host.md).

The supervisor starts ``python -m meshrtc.host.worker_main`` with one end of a socketpair passed as
an inherited fd, waits (bounded) for its hello, pings it, and ends it on request by asking over the
channel, then SIGTERM, then SIGKILL, each step bounded: the contract of LiveKit agents'
``ipc/supervised_proc.py`` and of ``trio.run_process``'s custom ``deliver_cancel``, with trio
structured concurrency doing the "no orphan" part: the process lives inside :meth:`run`, so
cancelling the scope that runs it tears the process down the same bounded way, and the process is
always reaped before :meth:`run` returns.

One task owns the machine: :meth:`run`'s loop. Helper tasks (the channel reader, the process
waiter, timers, :meth:`stop`'s request) only post events to it, so every transition happens in one
place, in order, and the reader of this file never has to reason about two tasks racing on the state.

A worker that fails after it was ready (died, unresponsive, corrupt channel) does not raise out of
:meth:`run`: one worker's crash must not tear down the supervisor's nursery and its other workers
(crash isolation). The owner watches :attr:`finished`, :attr:`state` and :attr:`failure` instead. A
worker that fails before it was ready raises :class:`WorkerStartError` from ``nursery.start``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import signal
import socket
import sys
import time
from collections.abc import Callable

import attrs
import trio

from meshrtc.errors import MeshRtcError
from meshrtc.host.channel import ControlChannel
from meshrtc.host.control import (
    DEFAULT_MAX_FRAME,
    WORKER_TO_SUPERVISOR,
    Bye,
    ControlProtocolError,
    Hello,
    Message,
    Ping,
    Pong,
    Shutdown,
)
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = [
    "WORKER_PROCESS_MACHINE",
    "FailureReason",
    "StopStep",
    "WorkerConfig",
    "WorkerProcess",
    "WorkerStartError",
    "WorkerState",
]

log = logging.getLogger(__name__)


class WorkerState(enum.StrEnum):
    Starting = "Starting"
    Ready = "Ready"
    Draining = "Draining"
    Stopped = "Stopped"
    Failed = "Failed"


_W = WorkerState

WORKER_PROCESS_MACHINE = register(
    MachineSpec(
        name="WorkerProcess",
        doc="A supervised worker process (docs/host.md): Starting → Ready on its hello; `drain` is "
        "`stop()` (ask, then SIGTERM, then SIGKILL, each bounded) and `exited` its end; `fail` is a "
        "death, missed pongs, a corrupt channel, no hello in time or a process that outlived "
        "SIGKILL; `abort` is the owner's scope cancelled (the process is ended the same bounded way).",
        states=WorkerState,
        initial=_W.Starting,
        transitions=(
            ("hello", _W.Starting, _W.Ready),
            ("drain", (_W.Starting, _W.Ready), _W.Draining),
            ("exited", _W.Draining, _W.Stopped),
            ("fail", (_W.Starting, _W.Ready, _W.Draining), _W.Failed),
            ("abort", (_W.Starting, _W.Ready, _W.Draining), _W.Stopped),
        ),
    )
)


class FailureReason(enum.StrEnum):
    SPAWN_FAILED = "spawn_failed"
    HELLO_TIMEOUT = "hello_timeout"
    DIED = "died"
    UNRESPONSIVE = "unresponsive"
    PROTOCOL_ERROR = "protocol_error"
    CHANNEL_CLOSED = "channel_closed"
    UNKILLABLE = "unkillable"


class StopStep(enum.StrEnum):
    """The last step an ending needed: the worker obeyed shutdown, or SIGTERM, or SIGKILL."""

    ASKED = "asked"
    SIGTERM = "SIGTERM"
    SIGKILL = "SIGKILL"


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.frozen
class WorkerConfig:
    """Timeouts (seconds) of one worker's supervision; every wait the supervisor does is bounded."""

    #: Start to hello. A worker imports meshrtc (and, next, aiortc) first: seconds on a busy box.
    hello_timeout: float = attrs.field(default=10.0, validator=_positive)
    ping_interval: float = attrs.field(default=1.0, validator=_positive)
    #: No pong for this long → failed (unresponsive) and killed. Checked at each ping, so detection
    #: takes at most ping_timeout + ping_interval.
    ping_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: After asking (shutdown over the channel), how long the worker has to drain and exit; it is
    #: also the deadline the shutdown message carries.
    drain_timeout: float = attrs.field(default=5.0, validator=_positive)
    term_timeout: float = attrs.field(default=2.0, validator=_positive)
    kill_timeout: float = attrs.field(default=2.0, validator=_positive)
    #: After the channel closed, how long to wait for the process's exit status before calling the
    #: worker failed (channel_closed). A dying process closes its fds a moment before it can be
    #: reaped; this keeps the real cause (died, with its signal) instead of the symptom.
    exit_grace: float = attrs.field(default=1.0, validator=_positive)
    max_frame: int = DEFAULT_MAX_FRAME
    python: str = sys.executable
    #: Extra ``worker_main`` arguments (tests pass its hidden ``--test-*`` flags).
    worker_args: tuple[str, ...] = ()


class WorkerStartError(MeshRtcError):
    """The worker failed before it said hello; nothing was started (the process is reaped)."""

    def __init__(self, worker_id: str, reason: FailureReason, detail: str) -> None:
        self.worker_id = worker_id
        self.reason = reason
        super().__init__(f"worker {worker_id} did not start ({reason}): {detail}")


# -- events posted to the owning task ------------------------------------------------------------
@attrs.frozen
class _Received:
    message: Message


@attrs.frozen
class _ChannelFailed:
    error: ControlProtocolError


@attrs.frozen
class _ChannelClosed:
    pass


@attrs.frozen
class _Exited:
    returncode: int


@attrs.frozen
class _Timer:
    name: str  # "hello" | "ping" | "exit_grace"


@attrs.frozen
class _StopRequested:
    pass


_Event = _Received | _ChannelFailed | _ChannelClosed | _Exited | _Timer | _StopRequested
#: Sent pings remembered for their round trip; older ones are forgotten (their pong only refreshes
#: liveness).
_MAX_OUTSTANDING_PINGS = 16


class WorkerProcess(StatefulModel):
    """One worker process and its supervision. Run it with ``await nursery.start(worker.run)``."""

    state: WorkerState
    hello = trigger_stub()
    drain = trigger_stub()
    exited = trigger_stub()
    fail = trigger_stub()
    abort = trigger_stub()

    def __init__(
        self,
        worker_id: str,
        config: WorkerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id = worker_id
        self.config = config or WorkerConfig()
        self._clock = clock
        self.pid: int | None = None
        self.failure: FailureReason | None = None
        self.failure_detail = ""
        #: The process's exit status once reaped: >= 0 an exit code, < 0 minus the signal.
        self.returncode: int | None = None
        self.stop_step: StopStep | None = None
        self.bye_reason: str | None = None
        self.last_rtt: float | None = None
        self.pongs = 0
        self.finished = trio.Event()
        self._pong_lot = trio.lowlevel.ParkingLot()
        self._ran = False
        self._started = False
        self._events: trio.MemorySendChannel[_Event] | None = None
        self._ping_seq = 0
        self._outstanding: dict[int, float] = {}
        self._last_pong = 0.0
        WORKER_PROCESS_MACHINE.build(self)

    @property
    def exit_signal(self) -> signal.Signals | None:
        """The signal that ended the process, if one did."""
        if self.returncode is None or self.returncode >= 0:
            return None
        return signal.Signals(-self.returncode)

    @property
    def final(self) -> bool:
        return self.state in (_W.Stopped, _W.Failed)

    def __repr__(self) -> str:
        return (
            f"<WorkerProcess {self.worker_id} pid={self.pid} {self.state}"
            f" failure={self.failure} returncode={self.returncode}>"
        )

    # -- the public side ---------------------------------------------------------------------------
    async def stop(self) -> None:
        """End the worker (ask, SIGTERM, SIGKILL, each bounded) and wait until it is reaped."""
        if self._events is not None and not self.final:
            # A closed queue means the owner already ended: nothing left to stop.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._events.send(_StopRequested())
        if self._ran:
            await self.finished.wait()

    async def next_pong(self) -> None:
        """Return at the worker's next pong: proof of life now, for an owner's health check."""
        await self._pong_lot.park()

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerProcess] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the process and supervise it until it ends; ``task_status`` fires on its hello."""
        if self._ran:
            raise RuntimeError(f"worker {self.worker_id} already ran; make a new WorkerProcess")
        self._ran = True
        try:
            await self._run(task_status)
        finally:
            self.finished.set()

    # -- the owning task ---------------------------------------------------------------------------
    async def _run(self, task_status: trio.TaskStatus[WorkerProcess]) -> None:
        ours, theirs = socket.socketpair()
        try:
            try:
                process = await trio.lowlevel.open_process(
                    [
                        self.config.python,
                        "-m",
                        "meshrtc.host.worker_main",
                        "--fd",
                        str(theirs.fileno()),
                        "--worker-id",
                        self.worker_id,
                        "--max-frame",
                        str(self.config.max_frame),
                        *self.config.worker_args,
                    ],
                    pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()  # the child has its copy; ours must not keep its end open
        except OSError as exc:
            ours.close()
            self._fail(FailureReason.SPAWN_FAILED, str(exc))
            raise WorkerStartError(self.worker_id, FailureReason.SPAWN_FAILED, str(exc)) from exc
        self.pid = process.pid
        channel = ControlChannel(ours, accept=WORKER_TO_SUPERVISOR, max_frame=self.config.max_frame)
        send, receive = trio.open_memory_channel[_Event](64)
        self._events = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, channel, send.clone())
                nursery.start_soon(self._wait_exit, process, send.clone())
                nursery.start_soon(self._after, self.config.hello_timeout, "hello", send.clone())
                async for event in receive:
                    await self._handle(event, process, channel, nursery, task_status)
                    if self.final:
                        break
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if not self.final:
                    # The owner's scope was cancelled (or an unexpected error): end it the same
                    # bounded way stop() does, so no process outlives its scope.
                    await self._shut_down(process, channel, ask=True)
                    self.abort()
                await self._reap(process)
                await channel.aclose()
                send.close()
        if self.state is _W.Failed and not self._started:
            raise WorkerStartError(
                self.worker_id, self.failure or FailureReason.DIED, self.failure_detail
            )

    async def _handle(
        self,
        event: _Event,
        process: trio.Process,
        channel: ControlChannel,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[WorkerProcess],
    ) -> None:
        match event:
            case _Received(Hello() as hello):
                await self._on_hello(hello, process, channel, nursery, task_status)
            case _Received(Pong() as pong):
                self._on_pong(pong)
            case _Received(Bye(reason=reason)):
                self.bye_reason = reason
            case _Received(message):  # not reachable: the decoder accepts worker messages only
                await self._kill_failed(process, FailureReason.PROTOCOL_ERROR, repr(message))
            case _ChannelFailed(error):
                await self._kill_failed(process, FailureReason.PROTOCOL_ERROR, str(error))
            case _ChannelClosed() if self.state is not _W.Draining:
                # Draining has its own bounded escalation; elsewhere give the exit status a moment.
                nursery.start_soon(self._after, self.config.exit_grace, "exit_grace", self._events)
            case _Exited(returncode):
                self.returncode = returncode
                if self.state is _W.Draining:
                    self.exited()
                else:
                    self._fail(FailureReason.DIED, f"exited with {returncode} while {self.state}")
            case _Timer("hello") if self.state is _W.Starting:
                await self._kill_failed(
                    process, FailureReason.HELLO_TIMEOUT, f"{self.config.hello_timeout} s"
                )
            case _Timer("exit_grace") if process.poll() is None:
                await self._kill_failed(
                    process, FailureReason.CHANNEL_CLOSED, "the channel closed, the process lives"
                )
            case _Timer("ping"):
                await self._on_ping_tick(process, channel)
            case _StopRequested() if self.state in (_W.Starting, _W.Ready):
                # Ask (from a helper task: a worker that does not read must not block the owner),
                # then escalate on timers; the process's exit, whenever it comes, ends Draining.
                self.drain()
                self.stop_step = StopStep.ASKED
                nursery.start_soon(self._ask, channel)
                nursery.start_soon(self._after, self.config.drain_timeout, "term", self._events)
            case _Timer("term") if self.state is _W.Draining and process.poll() is None:
                self.stop_step = StopStep.SIGTERM
                process.terminate()
                nursery.start_soon(self._after, self.config.term_timeout, "kill", self._events)
            case _Timer("kill") if self.state is _W.Draining and process.poll() is None:
                self.stop_step = StopStep.SIGKILL
                process.kill()
                nursery.start_soon(
                    self._after, self.config.kill_timeout, "unkillable", self._events
                )
            case _Timer("unkillable") if self.state is _W.Draining:
                self._fail(FailureReason.UNKILLABLE, "alive after SIGKILL")
            case _:
                pass  # a timer, a close or a request that no longer applies

    async def _on_hello(
        self,
        hello: Hello,
        process: trio.Process,
        channel: ControlChannel,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[WorkerProcess],
    ) -> None:
        if self.state is not _W.Starting:
            await self._kill_failed(process, FailureReason.PROTOCOL_ERROR, "a second hello")
            return
        if hello.pid != process.pid or hello.worker_id != self.worker_id:
            await self._kill_failed(
                process,
                FailureReason.PROTOCOL_ERROR,
                f"hello from {hello.worker_id} pid {hello.pid}, expected "
                f"{self.worker_id} pid {process.pid}",
            )
            return
        self.hello()
        self._last_pong = self._clock()
        nursery.start_soon(self._ping_timer, self._events)
        log.info("worker %s ready (pid %d)", self.worker_id, process.pid)
        self._started = True
        task_status.started(self)

    def _on_pong(self, pong: Pong) -> None:
        now = self._clock()
        self._last_pong = now
        self.pongs += 1
        sent = self._outstanding.pop(pong.seq, None)
        if sent is not None:
            self.last_rtt = now - sent
        self._pong_lot.unpark_all()
        for seq in [s for s in self._outstanding if s < pong.seq]:
            del self._outstanding[seq]

    async def _on_ping_tick(self, process: trio.Process, channel: ControlChannel) -> None:
        if self.state is not _W.Ready:
            return
        now = self._clock()
        silent = now - self._last_pong
        if silent > self.config.ping_timeout:
            await self._kill_failed(
                process, FailureReason.UNRESPONSIVE, f"no pong for {silent:.3f} s"
            )
            return
        self._ping_seq += 1
        self._outstanding[self._ping_seq] = now
        while len(self._outstanding) > _MAX_OUTSTANDING_PINGS:
            del self._outstanding[min(self._outstanding)]
        sent = False
        with trio.move_on_after(self.config.ping_timeout):
            try:
                await channel.send(Ping(seq=self._ping_seq, clock=now))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the channel is gone: the reader and the waiter report why
            sent = True
        if not sent:
            await self._kill_failed(
                process, FailureReason.UNRESPONSIVE, "the worker does not read its channel"
            )

    # -- helpers that only post events (or send) --------------------------------------------------
    async def _ask(self, channel: ControlChannel) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await channel.send(Shutdown(drain_deadline=self.config.drain_timeout))

    async def _read(self, channel: ControlChannel, events: trio.MemorySendChannel[_Event]) -> None:
        async with events:
            while True:
                try:
                    message = await channel.receive()
                except ControlProtocolError as exc:
                    await events.send(_ChannelFailed(exc))
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    message = None
                if message is None:
                    await events.send(_ChannelClosed())
                    return
                await events.send(_Received(message))

    async def _wait_exit(
        self, process: trio.Process, events: trio.MemorySendChannel[_Event]
    ) -> None:
        async with events:
            returncode = await process.wait()
            await events.send(_Exited(returncode))

    async def _after(
        self, delay: float, name: str, events: trio.MemorySendChannel[_Event] | None
    ) -> None:
        await trio.sleep(delay)
        if events is not None:
            await events.send(_Timer(name))

    async def _ping_timer(self, events: trio.MemorySendChannel[_Event] | None) -> None:
        assert events is not None
        while True:
            await trio.sleep(self.config.ping_interval)
            await events.send(_Timer("ping"))

    # -- ending the process ------------------------------------------------------------------------
    def _fail(self, reason: FailureReason, detail: str) -> None:
        if self.final:
            return
        self.failure = reason
        self.failure_detail = detail
        self.fail()
        log.warning("worker %s failed (%s): %s", self.worker_id, reason, detail)

    async def _kill_failed(self, process: trio.Process, reason: FailureReason, detail: str) -> None:
        """A failed worker is not asked: its channel or its liveness is already in doubt."""
        self._fail(reason, detail)
        if process.returncode is None:
            self.stop_step = StopStep.SIGKILL
            process.kill()
        await self._reap(process)

    async def _shut_down(
        self, process: trio.Process, channel: ControlChannel, *, ask: bool
    ) -> None:
        """Ask, then SIGTERM, then SIGKILL; each step waits a bounded time for the exit."""
        if process.returncode is None and ask:
            self.stop_step = StopStep.ASKED
            with trio.move_on_after(self.config.drain_timeout) as scope:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await channel.send(Shutdown(drain_deadline=self.config.drain_timeout))
                await process.wait()
            if not scope.cancelled_caught:
                return
        for step, send_signal, timeout in (
            (StopStep.SIGTERM, process.terminate, self.config.term_timeout),
            (StopStep.SIGKILL, process.kill, self.config.kill_timeout),
        ):
            if process.returncode is not None:
                return
            self.stop_step = step
            send_signal()
            with trio.move_on_after(timeout):
                await process.wait()

    async def _reap(self, process: trio.Process) -> None:
        if process.returncode is None:
            with trio.move_on_after(self.config.kill_timeout):
                await process.wait()
        if process.returncode is not None:
            self.returncode = process.returncode
        else:
            log.error("worker %s (pid %s) outlived SIGKILL", self.worker_id, process.pid)
