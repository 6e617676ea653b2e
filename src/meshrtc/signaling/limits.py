"""Per-connection flood control, sans-IO: what the server does with a message before it reads it.

The old rule ("close after 200 *consecutive* refusals") never fired: a flooder earns one token every
``1/rate`` seconds, and each allowed message reset the count, so a client sending 2000 messages/s was
refused forever, answered every time, and never closed. :class:`FloodGuard` counts refusals within a
sliding window instead, answers only the first few refusals of a window (after that a refusal costs
the server nothing but the token-bucket arithmetic), and tells the server to close (1008) once the
window holds ``max_refusals``. The guard runs before any parsing, so malformed messages spend
tokens like any other. ``now`` is monotonic seconds, handed in (docs/security.md).
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

from meshrtc.signaling.protocol import RateLimiter

__all__ = ["ConnectionCounter", "FloodGuard", "Verdict", "connection_budget"]


class Verdict(enum.Enum):
    """What to do with one incoming message."""

    ALLOW = "allow"  # handle it
    REFUSE = "refuse"  # answer it with -32008 (one of the first refusals of the window)
    DROP = "drop"  # refuse it without a word (the client was already told)
    CLOSE = "close"  # the client kept flooding: close it with 1008


@attrs.define
class FloodGuard:
    """A token bucket plus a count of recent refusals.

    ``rate`` messages/s on average with bursts of ``burst`` are allowed. A refusal is answered
    while fewer than ``replies`` refusals fall within the last ``window`` seconds; ``max_refusals``
    refusals within ``window`` seconds close the connection. An honest burst (a newcomer trickling
    candidates to nine peers) stays inside ``burst``; a client that only slightly exceeds the rate
    is slowed, not closed, because its refusals spread over many windows.
    """

    rate: float
    burst: float
    window: float = 2.0
    max_refusals: int = 200
    replies: int = 3
    _bucket: RateLimiter = attrs.field(init=False)
    _refusals: deque[float] = attrs.field(init=False, factory=deque)

    def __attrs_post_init__(self) -> None:
        if not (self.window > 0 and self.max_refusals >= 1 and self.replies >= 0):
            raise ValueError("window must be > 0, max_refusals >= 1 and replies >= 0")
        self._bucket = RateLimiter(self.rate, self.burst)

    @property
    def recent_refusals(self) -> int:
        return len(self._refusals)

    def check(self, now: float) -> Verdict:
        """Spend a token for one message that arrived at ``now``, or say why not."""
        if self._bucket.allow(now):
            return Verdict.ALLOW
        refusals = self._refusals
        while refusals and refusals[0] <= now - self.window:
            refusals.popleft()
        refusals.append(now)
        if len(refusals) >= self.max_refusals:
            return Verdict.CLOSE
        return Verdict.REFUSE if len(refusals) <= self.replies else Verdict.DROP


def connection_budget(fd_limit: int) -> int:
    """How many client connections a process allowed ``fd_limit`` open files may hold.

    Each connection is one socket; the rest of the process (listeners, logs, the transport's UDP
    sockets, aiortc's, a browser test's pipes) needs files too. Without headroom 1015 idle sockets
    locked honest clients out of a 1024-file server, and the server itself could no longer open a
    file. So a quarter of the limit (at least 64) stays free.
    """
    if fd_limit <= 0:
        raise ValueError("fd_limit must be > 0")
    return max(1, fd_limit - max(64, fd_limit // 4))


@attrs.define
class ConnectionCounter:
    """Counts open connections in total and per client address, and decides at accept time."""

    max_total: int
    max_per_address: int
    _by_address: dict[str, int] = attrs.field(init=False, factory=dict)
    _total: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.max_total < 1 or self.max_per_address < 1:
            raise ValueError("max_total and max_per_address must be >= 1")

    @property
    def total(self) -> int:
        return self._total

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; or say why it is refused (and count nothing)."""
        if self._total >= self.max_total:
            return f"server full ({self.max_total} connections)"
        if self._by_address.get(address, 0) >= self.max_per_address:
            return f"too many connections from {address} (at most {self.max_per_address})"
        self._total += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        left = self._by_address.get(address, 0) - 1
        if left < 0:
            raise ValueError(f"no connection from {address!r} to release")
        self._total -= 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]
