"""LoadMonitor: the lateness of the transport's 20 ms slot ticks, fed to a :class:`LoadShedder`.

A trio task that wants to run once per audio slot (``GRID_SECONDS``) and notes how late it woke:
on a process with CPU to spare that is well under a millisecond; when the interpreter falls behind
(decode, mixing, the asyncio thread holding the GIL) every task waits, this one too. After a stall
it does not catch up with a burst of ticks: the next slot is counted from when it woke, so the
monitor itself never builds a backlog.

Listeners (:meth:`LoadMonitor.subscribe`) get the new :class:`ShedPlan` when the level changes,
and at once on subscribing (a session or a sender that joins under load starts shed). They run
synchronously on the trio thread and must not block: set a flag, or queue a call.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import trio

from meshrtc.session.grid import GRID_SECONDS
from meshrtc.session.shedding import LoadShedder, ShedPlan

__all__ = ["LoadMonitor"]

log = logging.getLogger(__name__)

#: Lateness samples kept for the benchmark's percentiles (30 s of ticks).
_SAMPLES = 1500


class LoadMonitor:
    """Tick every slot, measure lateness, let the shedder decide, tell the listeners."""

    def __init__(self, shedder: LoadShedder | None = None, *, period: float = GRID_SECONDS) -> None:
        if period <= 0:
            raise ValueError("period must be > 0")
        self.shedder = shedder if shedder is not None else LoadShedder()
        self.period = period
        #: Recent tick lateness (seconds), oldest first.
        self.lateness: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        self._listeners: list[Callable[[ShedPlan], None]] = []

    def subscribe(self, listener: Callable[[ShedPlan], None]) -> Callable[[], None]:
        """Call ``listener`` with the current plan now and with each new one; returns the
        unsubscribe function."""
        self._listeners.append(listener)
        listener(self.shedder.plan)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def tick(self, now: float, lateness: float) -> None:
        """One tick (the loop's body; tests drive it directly)."""
        self.lateness.append(lateness)
        if self.shedder.observe(now, lateness) is not None:
            plan = self.shedder.plan
            for listener in list(self._listeners):
                try:
                    listener(plan)
                except Exception:  # one listener's bug must not stop the monitor or the others
                    log.exception("load shedding listener %r failed", listener)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled."""
        due = trio.current_time()
        task_status.started()
        while True:
            due += self.period
            await trio.sleep_until(due)
            now = trio.current_time()
            lateness = now - due
            if lateness > self.period:
                due = now  # missed slots are skipped, not made up in a burst
            self.tick(now, lateness)
