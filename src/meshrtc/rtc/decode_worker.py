"""A dedicated thread that runs jobs in order for a trio task, without blocking trio or parking a
trio worker thread.

Why: decoding video on the trio thread blocked it for ~20% of its time in the 3-peer demo, and every
blocked millisecond delays the other peers' audio and inflates their jitter buffers (they time
packets by when the trio task can have them). FFmpeg's decoders release the GIL, so a thread of its
own lets the decode run beside trio.

Why not ``trio.to_thread.run_sync``: it parks one trio task per call and its cached idle threads
outlive the connection, while teardown has to leave no thread behind. Here the thread belongs to the
worker, is started with it and joined (bounded) by :meth:`DecodeWorker.aclose`. Results cross back
through :class:`~meshrtc.rtc.bridge.ToTrio` (one ``run_sync_soon`` per batch) into a memory channel,
in submission order, so the consumer is an ordinary trio task.

The backlog is bounded on the trio side: :attr:`DecodeWorker.pending` counts jobs submitted and not
yet received back, and :meth:`DecodeWorker.submit` refuses a job beyond ``max_pending``; the caller
chooses what a refusal means (for video: drop, and ask for a keyframe), instead of the queue growing
into latency.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

from meshrtc.errors import MeshRtcError
from meshrtc.rtc.bridge import ToTrio

__all__ = ["DecodeWorker", "WorkResult", "WorkerClosedError"]

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


class WorkerClosedError(MeshRtcError):
    """A job was submitted to a :class:`DecodeWorker` that is closing or closed."""


@attrs.frozen(eq=False)
class WorkResult(Generic[J, R]):
    """What became of one job: its value, or the exception the function raised (not both)."""

    job: J
    value: R | None = None
    error: Exception | None = None

    def unwrap(self) -> R:
        """The value; the function's exception is raised here, in the consumer's trio task."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # R may itself admit None


class DecodeWorker(Generic[J, R]):
    """``fn(job)`` for every submitted job, one at a time and in order, on a thread of its own.

    Build it inside trio (it takes the current trio token); the thread starts at once. Submit with
    :meth:`submit` (never blocks), read results with ``async for result in worker`` or
    :meth:`receive` (one consumer), and end with :meth:`aclose`, which drops queued jobs, waits for
    the running one, and joins the thread. ``fn`` must only touch what the thread owns (the decoder);
    an exception it raises comes back in the :class:`WorkResult`.
    """

    def __init__(
        self, name: str, fn: Callable[[J], R], *, max_pending: int = 4, close_timeout: float = 2.0
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self.name = name
        self.max_pending = max_pending
        #: Bound on :meth:`aclose` waiting for the running job and the thread.
        self.close_timeout = close_timeout
        #: Jobs submitted and not yet received back by the consumer (trio side only).
        self.pending = 0
        #: Jobs accepted, and jobs refused because ``max_pending`` were pending.
        self.submitted = 0
        self.refused = 0
        #: Jobs the thread finished (written by the thread; for tests and diagnostics).
        self.completed = 0
        self._fn = fn
        self._token = trio.lowlevel.current_trio_token()
        self._send, self._results = trio.open_memory_channel[WorkResult[J, R]](math.inf)
        self._pipe: ToTrio[WorkResult[J, R]] = ToTrio(self._token, self._send)
        self._jobs: collections.deque[J] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._exited = trio.Event()
        # Daemon only as a last resort: aclose() joins it; a forgotten worker must not hang exit.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: J) -> bool:
        """Queue ``job``; False (and counted in :attr:`refused`) when ``max_pending`` are pending."""
        if self._closing:
            raise WorkerClosedError(f"{self.name} is closed")
        if self.pending >= self.max_pending:
            self.refused += 1
            return False
        self.pending += 1
        self.submitted += 1
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()
        return True

    async def receive(self) -> WorkResult[J, R]:
        """The next result in submission order (raises ``trio.EndOfChannel`` once closed)."""
        try:
            result = await self._results.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self.pending -= 1
        return result

    def __aiter__(self) -> DecodeWorker[J, R]:
        return self

    async def __anext__(self) -> WorkResult[J, R]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> bool:
        """Drop queued jobs, let the running one finish, join the thread; True once it is gone.

        No result is delivered after this is called (the running job's is discarded); a consumer's
        ``async for`` ends.

        Shielded and bounded by :attr:`close_timeout`, so a cancelled caller still does not leave the thread
        behind unless a single job outlasts the bound (then it is logged and left to end itself).
        """
        with self._wake:
            self._closing = True
            self._jobs.clear()
            self._wake.notify()
        self._pipe.close()
        timeout = self.close_timeout
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self._exited.wait()
        # The thread has signalled its last act; the join only waits for it to return.
        self._thread.join(timeout=0.1 if self._exited.is_set() else 0)
        self._results.close()
        if self._thread.is_alive():
            log.error("%s: the worker thread did not stop within %.1f s", self.name, timeout)
            return False
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._jobs and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        return
                    job = self._jobs.popleft()
                try:
                    result = WorkResult[J, R](job, value=self._fn(job))
                except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
                    result = WorkResult[J, R](job, error=exc)
                self.completed += 1
                self._pipe.send(result)
        finally:
            # After the flushes already scheduled (run_sync_soon is FIFO): the consumer gets every
            # result, then the end of the stream.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._finish)

    def _finish(self) -> None:
        self._send.close()
        self._exited.set()
