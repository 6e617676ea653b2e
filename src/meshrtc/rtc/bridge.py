"""The asyncio bridge: aiortc's event loop in its own thread, driven from trio.

aiortc is asyncio-only. Running its loop in a dedicated thread and crossing with the trio token cost
1.08x the CPU of plain asyncio on the reference workload; trio-asyncio cost 1.52x and no longer imports
on Python 3.14 (docs/rtc-bridge.md). So:

* trio → asyncio: :meth:`Bridge.run` schedules a coroutine on the loop and parks the calling trio task
  on a :class:`trio.Event` that the asyncio task's done-callback sets through the trio token. No worker
  thread is blocked per call. A trio cancellation cancels the asyncio task and waits (bounded, shielded)
  until it has really finished, so nothing keeps running behind the caller's back.
* asyncio → trio: :class:`ToTrio` queues items from the asyncio thread and flushes them into a trio
  memory channel with one ``run_sync_soon`` per batch, so packet-rate producers cost one cross-thread
  wake-up per batch rather than per item, and the asyncio thread never waits on trio. The pipes of
  one bridge (every member's media and control pipe) share that wake-up (:class:`TrioFlusher`):
  each ``run_sync_soon`` is a socket write that releases the GIL, so per-pipe wake-ups were one
  hand-off to the trio thread per member's packet (10 audio members: about a quarter of them came
  while another member's flush was still pending).
* :func:`open_bridge` installs meshrtc's aiortc patches (once), starts the thread and stops it:
  registered aiortc objects are closed, leftover tasks cancelled, the default executor (aiortc
  encodes in it) shut down, and the thread joined, each step bounded in time.
* The GIL: while a bridge is open the interpreter's switch interval is lowered (default 5 ms to
  :data:`SWITCH_INTERVAL`). Trio's thread releases the GIL on every I/O poll and then waits for it
  behind the encoder and asyncio threads; with the default interval each wait can cost 5 ms, and an
  item crossing a pipeline takes several such steps. Measured on the 3-peer demo: the pipeline's
  per-item wait went from ~18 ms to ~1 ms, and it kept up with the ~150 items/s offered (about 50/s
  before; docs/rtc-bridge.md). The previous value comes back when the last bridge closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar, TypeVarTuple

import trio

from meshrtc.errors import MeshRtcError
from meshrtc.rtc.aiortc_adapter import install_aiortc_patches

__all__ = [
    "Bridge",
    "BridgeCancelledError",
    "BridgeClosedError",
    "Closable",
    "ToTrio",
    "TrioFlusher",
    "open_bridge",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: How long a cancelled :meth:`Bridge.run` waits for the asyncio side to acknowledge the cancellation.
CANCEL_TIMEOUT = 2.0
#: Bound on each closing step of the bridge (closing aiortc objects, then stopping the loop).
CLOSE_TIMEOUT = 5.0


class BridgeClosedError(MeshRtcError):
    """The bridge is not running (not started yet, closing or closed)."""


class BridgeCancelledError(MeshRtcError):
    """The asyncio side cancelled a coroutine that a trio task was awaiting.

    ``asyncio.CancelledError`` is a BaseException that trio code has no reason to expect; it is turned
    into this ordinary error so the trio caller can handle it like any other failure.
    """


class Closable(Protocol):
    """What the bridge can close on exit: aiortc's RTCPeerConnection (and anything shaped like it)."""

    def close(self) -> Coroutine[Any, Any, None]: ...


class TrioFlusher:
    """One ``run_sync_soon`` for every :class:`ToTrio` that has items queued (a bridge's pipes).

    A pipe with a first item queued calls :meth:`mark` (any thread); the first mark of a batch
    schedules one flush on the trio thread, which flushes every marked pipe, in marking order.
    The lock-free ordering argument is :class:`ToTrio`'s, one level up: :meth:`mark` appends
    before it reads ``_scheduled``; the flush clears it before it drains.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._marked: collections.deque[ToTrio[Any]] = collections.deque()
        self._scheduled = False
        self._finished = False
        #: Cross-thread wake-ups made (each one ``run_sync_soon``) and pipe flushes they ran.
        self.wakeups = 0
        self.flushes = 0

    def mark(self, pipe: ToTrio[Any]) -> bool:
        """Queue ``pipe`` for the next flush; False once trio has finished (nothing will run)."""
        if self._finished:
            return False
        self._marked.append(pipe)
        if not self._scheduled:
            self._scheduled = True
            self.wakeups += 1
            try:
                self._token.run_sync_soon(self._flush)
            except trio.RunFinishedError:
                self._finished = True
                return False
        return True

    def _flush(self) -> None:
        self._scheduled = False
        marked = self._marked
        while marked:
            self.flushes += 1
            marked.popleft()._flush()


class ToTrio(Generic[T]):
    """A one-way, batched hand-over from the asyncio thread into a trio memory channel.

    :meth:`send` may be called from any thread (in practice aiortc's callbacks on the asyncio thread)
    and never blocks. Items wait in a deque; the first item of a batch schedules one flush on the trio
    thread, which moves everything queued by then into the channel with ``send_nowait``. A full channel
    drops the item and counts it in :attr:`dropped` (logged once): at packet rates, waiting would stall
    aiortc's receive loop, and the jitter buffer downstream already treats a gap as loss.

    The ordering argument for the lock-free flag: the producer appends before it reads
    ``_scheduled``; the flush clears ``_scheduled`` before it drains. Either the producer sees the
    cleared flag and schedules another flush, or its item was appended before the drain began.
    """

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        channel: trio.MemorySendChannel[T],
        *,
        flusher: TrioFlusher | None = None,
    ) -> None:
        self._token = token
        self._channel = channel
        #: Shared with the other pipes of a bridge (one wake-up for all); None: a wake-up of its own.
        self._flusher = flusher
        self._pending: collections.deque[T] = collections.deque()
        self._scheduled = False
        self._closed = False
        #: Items delivered into the channel.
        self.delivered = 0
        #: Items dropped because the channel was full, closed, or trio had finished.
        self.dropped = 0
        #: Flushes run on the trio side (each costs one cross-thread wake-up).
        self.flushes = 0
        #: Exceptions raised by ``make_item`` in :meth:`handler` listeners (each logged).
        self.handler_errors = 0
        self._warned = False

    def send(self, item: T) -> None:
        if self._closed:
            self.dropped += 1
            return
        self._pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            try:
                if self._flusher is None:
                    self._token.run_sync_soon(self._flush)
                elif not self._flusher.mark(self):
                    raise trio.RunFinishedError
            except trio.RunFinishedError:
                self._closed = True
                self.dropped += len(self._pending)
                self._pending.clear()

    def handler(self, make_item: Callable[..., T]) -> Callable[..., None]:
        """A pyee listener that sends ``make_item(*event_args)`` across and never raises.

        pyee re-raises a listener's exception inside the ``emit`` call, i.e. inside aiortc's code
        (``setRemoteDescription``, the SCTP receive loop ...). This wrapper logs and counts instead::

            pc.on("connectionstatechange", pipe.handler(lambda: ("state", pc.connectionState)))
        """

        def listener(*args: object) -> None:
            try:
                item = make_item(*args)
            except Exception:
                self.handler_errors += 1
                log.exception("event listener failed building its item (dropped)")
                return
            self.send(item)

        return listener

    def _flush(self) -> None:
        self._scheduled = False
        self.flushes += 1
        pending = self._pending
        channel = self._channel
        while pending:
            item = pending.popleft()
            try:
                channel.send_nowait(item)
            except trio.WouldBlock:
                self._drop("receiver is not keeping up (channel full)")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._closed = True
                self._drop("channel closed")
            else:
                self.delivered += 1

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if not self._warned:
            self._warned = True
            log.warning("ToTrio dropping items: %s (counted in .dropped, logged once)", why)

    def close(self) -> None:
        """Stop accepting items (later ones are counted as dropped); queued ones are still flushed."""
        self._closed = True


class _Call(Generic[T]):
    """One :meth:`Bridge.run` in flight: the asyncio task and the trio event that mirrors it."""

    __slots__ = ("done", "task", "token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.done = trio.Event()
        self.task: asyncio.Task[T] | None = None

    def on_done(self, _task: asyncio.Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self.done.set)


class Bridge:
    """Handle on the running asyncio loop; get one from :func:`open_bridge`.

    Objects created on the loop (``RTCPeerConnection`` must be: aiortc binds to the running loop) are
    handed to :meth:`register` so that closing the bridge closes them even when their owner forgot.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self.loop = loop
        self.trio_token = token
        #: The one trio wake-up the pipes made by :meth:`to_trio` / :meth:`open_channel` share.
        self.flusher = TrioFlusher(token)
        self._registered: dict[int, Closable] = {}
        self._running = True
        #: Exceptions reported by the loop's exception handler (also logged at ERROR).
        self.errors: list[BaseException | str] = []
        #: Tasks still pending when the loop stopped, which the bridge had to cancel (repr each).
        #: Empty after a clean shutdown: every owner closed what it started.
        self.leftover_tasks: list[str] = []

    @property
    def running(self) -> bool:
        return self._running

    # trio → asyncio

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``fn(*args)`` as a task on the asyncio loop and await its result from trio.

        The coroutine is created on the loop thread (aiortc's constructors look up the running loop).
        Cancelling the trio caller cancels the task and waits up to :data:`CANCEL_TIMEOUT` for it to
        finish; a task cancelled from the asyncio side raises :class:`BridgeCancelledError` here.
        """
        if not self._running:
            raise BridgeClosedError("the asyncio bridge is not running")
        call: _Call[T] = _Call(self.trio_token)
        loop = self.loop

        async def _as_coroutine() -> T:
            return await fn(*args)

        def _start() -> None:
            task = loop.create_task(_as_coroutine())
            call.task = task
            task.add_done_callback(call.on_done)

        def _cancel() -> None:
            # Scheduled after _start (call_soon_threadsafe is FIFO), so the task exists.
            if call.task is not None:
                call.task.cancel()

        try:
            loop.call_soon_threadsafe(_start)
        except RuntimeError as exc:  # loop closed between the check and the call
            raise BridgeClosedError("the asyncio bridge is not running") from exc
        try:
            await call.done.wait()
        except BaseException:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel)
            with trio.move_on_after(CANCEL_TIMEOUT) as scope:
                scope.shield = True
                await call.done.wait()
            if scope.cancelled_caught:
                log.warning(
                    "asyncio task %r did not finish within %.1f s of cancel", fn, CANCEL_TIMEOUT
                )
            raise
        task = call.task
        assert task is not None
        if task.cancelled():
            raise BridgeCancelledError(f"{fn!r} was cancelled on the asyncio side")
        return task.result()

    async def call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a plain function on the loop thread (e.g. ``RTCPeerConnection(config)``) and return it."""

        async def _call() -> T:
            return fn(*args)

        return await self.run(_call)

    def call_soon(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Fire-and-forget ``fn(*args)`` on the loop thread; usable from any thread, never blocks."""
        if not self._running:
            raise BridgeClosedError("the asyncio bridge is not running")
        self.loop.call_soon_threadsafe(fn, *args)

    # asyncio → trio

    def to_trio(self, channel: trio.MemorySendChannel[T]) -> ToTrio[T]:
        """A :class:`ToTrio` for ``channel``: hand it to aiortc callbacks on the asyncio thread."""
        return ToTrio(self.trio_token, channel, flusher=self.flusher)

    def open_channel(
        self, max_buffer_size: float = math.inf
    ) -> tuple[ToTrio[T], trio.MemoryReceiveChannel[T]]:
        """A fresh memory channel whose sending side is a :class:`ToTrio`."""
        send, receive = trio.open_memory_channel[T](max_buffer_size)
        return ToTrio(self.trio_token, send, flusher=self.flusher), receive

    # ownership

    def register(self, obj: Closable) -> None:
        """Close ``obj`` when the bridge closes (unless :meth:`unregister`-ed first)."""
        self._registered[id(obj)] = obj

    def unregister(self, obj: Closable) -> None:
        self._registered.pop(id(obj), None)

    @property
    def registered(self) -> list[Closable]:
        return list(self._registered.values())

    async def _close_registered(self) -> None:
        objs = list(self._registered.values())
        self._registered.clear()
        if not objs:
            return
        results = await asyncio.gather(*(obj.close() for obj in objs), return_exceptions=True)
        for obj, result in zip(objs, results, strict=True):
            if isinstance(result, BaseException):
                log.error("closing %r failed: %r", obj, result)
                self.errors.append(result)

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = context.get("message", "unhandled error in the asyncio loop")
        log.error("asyncio bridge: %s", message, exc_info=exc)
        self.errors.append(exc if isinstance(exc, BaseException) else str(message))


def _loop_thread(
    bridge: Bridge,
    token: trio.lowlevel.TrioToken,
    started: trio.Event,
    finished: trio.Event,
    close_timeout: float,
) -> None:
    loop = bridge.loop
    asyncio.set_event_loop(loop)
    try:
        token.run_sync_soon(started.set)
        loop.run_forever()
        # Cancel whatever is left (aiortc tasks of objects nobody closed, stray callbacks' tasks).
        tasks = asyncio.all_tasks(loop)
        bridge.leftover_tasks = [repr(task) for task in tasks]
        if tasks:
            log.debug("asyncio bridge: cancelling %d leftover task(s): %s", len(tasks), tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=close_timeout))
            if pending:
                log.error(
                    "asyncio bridge: %d task(s) ignored cancellation: %r", len(pending), pending
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
        # aiortc encodes in the default executor; joining it here means no worker thread outlives us.
        loop.run_until_complete(loop.shutdown_default_executor())
    except BaseException:
        log.exception("asyncio bridge thread crashed")
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(finished.set)


#: The interpreter switch interval (seconds) while any bridge is open; see the module docstring.
SWITCH_INTERVAL = 0.001
_switch_lock = threading.Lock()
_open_bridges = 0
_saved_switch_interval: float | None = None


def _lower_switch_interval() -> None:
    global _open_bridges, _saved_switch_interval
    with _switch_lock:
        _open_bridges += 1
        if _open_bridges == 1:
            _saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_switch_interval, SWITCH_INTERVAL))


def _restore_switch_interval() -> None:
    global _open_bridges, _saved_switch_interval
    with _switch_lock:
        _open_bridges -= 1
        if _open_bridges == 0 and _saved_switch_interval is not None:
            sys.setswitchinterval(_saved_switch_interval)
            _saved_switch_interval = None


@contextlib.asynccontextmanager
async def open_bridge(
    *, close_timeout: float = CLOSE_TIMEOUT, name: str = "meshrtc-asyncio"
) -> AsyncIterator[Bridge]:
    """Run an asyncio loop in a dedicated thread for the duration of the block.

    First installs meshrtc's aiortc/aioice patches (idempotent;
    :func:`~meshrtc.rtc.aiortc_adapter.install_aiortc_patches`): importing meshrtc changes no
    aiortc global, opening a bridge is what makes VP9, the RSA DTLS suites and per-connection
    ICE host addresses available.

    On exit (normal, error or cancellation) registered objects are closed, remaining tasks cancelled
    and the thread joined; each step is bounded by ``close_timeout`` seconds and a step that overruns
    is logged, never waited on forever.
    """
    install_aiortc_patches()
    token = trio.lowlevel.current_trio_token()
    loop = asyncio.new_event_loop()
    started = trio.Event()
    finished = trio.Event()
    bridge = Bridge(loop, token)
    thread = threading.Thread(
        target=_loop_thread,
        args=(bridge, token, started, finished, close_timeout),
        name=name,
        daemon=True,
    )
    loop.set_exception_handler(bridge._exception_handler)
    _lower_switch_interval()
    thread.start()
    try:
        with trio.CancelScope(shield=True), trio.fail_after(close_timeout):
            await started.wait()
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            try:
                await _close(bridge, thread, finished, close_timeout)
            finally:
                _restore_switch_interval()


async def _close(
    bridge: Bridge, thread: threading.Thread, finished: trio.Event, close_timeout: float
) -> None:
    with trio.move_on_after(close_timeout) as scope:
        try:
            await bridge.run(bridge._close_registered)
        except MeshRtcError as exc:  # _close_registered itself reports per-object failures
            log.error("asyncio bridge: closing registered objects failed: %r", exc)
            bridge.errors.append(exc)
    if scope.cancelled_caught:
        log.error("asyncio bridge: closing registered objects took over %.1f s", close_timeout)
    bridge._running = False
    with contextlib.suppress(RuntimeError):  # the loop already closed (its thread crashed)
        bridge.loop.call_soon_threadsafe(bridge.loop.stop)
    # The thread's cleanup is itself bounded by close_timeout per step; allow for both steps.
    with trio.move_on_after(3 * close_timeout + 1) as scope:
        await finished.wait()
    if scope.cancelled_caught:
        log.error("asyncio bridge thread did not stop in time; leaving it (daemon) behind")
        return
    thread.join(timeout=1.0)
    if thread.is_alive():
        log.error("asyncio bridge thread still alive after signalling it finished")
