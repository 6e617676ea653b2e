"""Audio NACK: which missing audio packets to ask the sender for again, and when (RFC 4585).

aiortc's sender keeps every packet it sent (audio too) and resends one on an RTCP NACK, but its
receiver asks only for video. meshrtc sees every audio packet in its own jitter buffer, so it can
ask itself, and it is worth it only where the answer comes back before the missing packet plays:
on a short round trip (loopback ~1 ms, a LAN a few ms) against a jitter target of 50 ms or more.

The policy is sans-IO (clock and RTT passed in) and knows nothing of the jitter buffer: the caller
says which packet arrived, the playout deadline of each packet found missing
(:meth:`JitterBuffer.expected_playout`), and the head of the buffer (everything before it was
played or declared lost). A missing packet is asked for

* only while ``now + rtt * rtt_factor + margin`` is before its playout time (the retransmission
  can still arrive in time);
* at once when its hole is seen, then again at most once per ``max(rtt, min_resend)`` up to
  ``max_tries`` times;
* never once it arrived, once the head passed it, or once it is too late to ask. A packet asked
  for is waited for (an answer counted ``retransmitted_in_time``) until its playout time or the
  head passes it; then it is forgotten and counted ``expired``.

The RTT comes from RTCP (:meth:`NackPolicy.set_rtt`: the remote's reception reports on *our*
streams), which a member that only listens never has: it sends no Sender Reports. Then the policy
measures it from its own requests: until it has an RTT it assumes ``assumed_rtt`` (a LAN), and a
packet asked for once that then arrives is a sample of the round trip (Karn: never from a packet
asked for twice). When ``max_unanswered`` requests in a row go unanswered, the remote does not
resend (or the path cannot carry it): the policy stops asking until an RTT comes from RTCP.

At most ``max_pending`` packets are tracked; a hole wider than that is an outage, not loss, and
only its newest ``max_pending`` packets are asked for. docs/jitter-buffer.md, "NACK".
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from meshrtc.errors import ConfigError
from meshrtc.media.seq import SEQ_MOD, seq_diff

__all__ = ["NackConfig", "NackPolicy", "NackStats"]

_M16 = SEQ_MOD - 1


@attrs.frozen(kw_only=True)
class NackConfig:
    """When audio NACK is worth it. ``max_rtt`` is the "short RTT" switch: above it (or with no RTT
    measured yet) nothing is asked for."""

    #: How far before its playout time a retransmission must be due, in RTTs (plus ``margin``).
    rtt_factor: float = 1.5
    #: Seconds of slack on top: the hand-over from the asyncio thread and the RTT's own wander.
    #: 5 ms lets the first of two losses in a row be asked for (its hole shows 40 ms after it was
    #: sent, ~10 ms before its playout at a 50 ms target); a resend that misses is merely LATE
    #: (bench/voice_nack.py at 20 %: 3.50-3.56 with 10 ms, 3.64-3.76 with 5 ms).
    margin: float = 0.005
    #: No NACK above this RTT (seconds): it would not fit in a 50 ms jitter target.
    max_rtt: float = 0.03
    #: Resend no more often than this, even on a sub-millisecond RTT (seconds): a 50 ms target
    #: leaves ~30 ms from seeing a hole to the packet's playout, room for a second request.
    min_resend: float = 0.01
    #: Requests per missing packet.
    max_tries: int = 3
    #: Missing packets tracked at once.
    max_pending: int = 32
    #: The RTT assumed before one is known (seconds), so a listener can measure it.
    assumed_rtt: float = 0.005
    #: Requests in a row given up on unanswered before the policy stops asking.
    max_unanswered: int = 8
    #: Smoothing of the RTT measured from answered requests (as RFC 6298's alpha).
    rtt_smoothing: float = 0.125

    def __attrs_post_init__(self) -> None:
        if not (self.rtt_factor >= 1.0 and self.margin >= 0.0 and self.max_rtt > 0.0):
            raise ConfigError("NackConfig", self, "rtt_factor >= 1, margin >= 0, max_rtt > 0")
        if not (
            self.assumed_rtt > 0.0 and self.max_unanswered >= 1 and 0 < self.rtt_smoothing <= 1
        ):
            raise ConfigError(
                "NackConfig", self, "assumed_rtt > 0, max_unanswered >= 1, 0 < rtt_smoothing <= 1"
            )
        if not (self.min_resend > 0.0 and self.max_tries >= 1 and self.max_pending >= 1):
            raise ConfigError(
                "NackConfig", self, "min_resend > 0, max_tries >= 1, max_pending >= 1"
            )


@attrs.define
class NackStats:
    """Cumulative counters over the policy's life."""

    #: Distinct packets asked for at least once.
    nacked: int = 0
    #: Sequence numbers sent in NACKs (resends included).
    requests: int = 0
    #: Asked-for packets that arrived while still pending (before their deadline).
    retransmitted_in_time: int = 0
    #: Asked-for packets given up on: deadline passed or the head went past them.
    expired: int = 0
    #: Holes too wide to track whole (their oldest packets were never asked for).
    overflows: int = 0
    #: RTT samples from answered requests.
    rtt_samples: int = 0


@attrs.define(slots=True)
class _Pending:
    deadline: float
    tries: int = 0
    last_sent: float = float("-inf")


class NackPolicy:
    """Decides the audio NACKs of one received stream (one per link; see the module docstring)."""

    def __init__(self, config: NackConfig | None = None) -> None:
        self.config = config or NackConfig()
        self.stats = NackStats()
        #: From RTCP (:meth:`set_rtt`), else measured from answered requests, else None.
        self.reported_rtt: float | None = None
        self.measured_rtt: float | None = None
        self._unanswered = 0
        self._highest: int | None = None  # extended, newest sequence number seen
        self._pending: dict[int, _Pending] = {}  # extended sequence number -> state

    @property
    def pending(self) -> list[int]:
        """The 16-bit sequence numbers still tracked, oldest first (for inspection)."""
        return [ext & _M16 for ext in sorted(self._pending)]

    def set_rtt(self, rtt: float | None) -> None:
        """The newest smoothed round-trip time from RTCP, in seconds (None: not measured)."""
        self.reported_rtt = rtt
        if rtt is not None:
            self._unanswered = 0

    @property
    def rtt(self) -> float:
        """The RTT the policy goes by: RTCP's, else its own measurement, else ``assumed_rtt``."""
        if self.reported_rtt is not None:
            return self.reported_rtt
        if self.measured_rtt is not None:
            return self.measured_rtt
        return self.config.assumed_rtt

    @property
    def active(self) -> bool:
        """Whether to ask for anything: the RTT is short enough and requests get answered."""
        return self.rtt <= self.config.max_rtt and self._unanswered < self.config.max_unanswered

    def _extend(self, seq: int) -> int:
        highest = self._highest
        return seq if highest is None else highest + seq_diff(seq, highest & _M16)

    def on_packet(
        self, sequence_number: int, now: float, deadline_of: Callable[[int], float | None]
    ) -> bool:
        """A packet arrived. Returns True when it was one we asked for and still waited for.

        ``deadline_of(seq16)`` is the playout time of a packet found missing (None: too late
        already); it is asked only for the packets of a new hole, and only while :attr:`active`.
        """
        ext = self._extend(sequence_number)
        highest = self._highest
        came = self._pending.pop(ext, None)
        if came is not None and came.tries:
            self.stats.retransmitted_in_time += 1
            self._unanswered = 0
            if came.tries == 1:
                self._sample_rtt(now - came.last_sent)
        if highest is None:
            self._highest = ext
            return False
        if ext <= highest:
            return came is not None and came.tries > 0
        self._highest = ext
        if ext > highest + 1 and self.active:
            limit = self.config.max_pending
            first = highest + 1
            if ext - first > limit:
                self.stats.overflows += 1
                first = ext - limit
            for missing in range(first, ext):
                deadline = deadline_of(missing & _M16)
                if deadline is not None:
                    self._pending[missing] = _Pending(deadline)
            if len(self._pending) > limit:
                for old in sorted(self._pending)[: len(self._pending) - limit]:
                    self._drop(old)
        return False

    def poll(self, now: float, head_sequence: int | None) -> list[int]:
        """The 16-bit sequence numbers to NACK now (maybe none), oldest first.

        ``head_sequence`` is the jitter buffer's next packet to play: everything before it was
        played or declared lost and is forgotten.
        """
        pending = self._pending
        if not pending:
            return []
        if head_sequence is not None:
            head = self._extend(head_sequence)
            for ext in [e for e in pending if e < head]:
                self._drop(ext)
        if not self.active:
            for ext in list(pending):
                self._drop(ext)
            return []
        rtt = self.rtt
        config = self.config
        arrives = now + rtt * config.rtt_factor + config.margin
        resend = max(rtt, config.min_resend)
        out: list[int] = []
        for ext in sorted(pending):
            state = pending[ext]
            if arrives > state.deadline:
                # Too late to ask (again); one already asked for may still come until it plays.
                if not state.tries or now >= state.deadline:
                    self._drop(ext)
                continue
            if state.tries >= config.max_tries or now - state.last_sent < resend:
                continue
            if not state.tries:
                self.stats.nacked += 1
            state.tries += 1
            state.last_sent = now
            self.stats.requests += 1
            out.append(ext & _M16)
        return out

    def next_due(self) -> float | None:
        """The earliest time :meth:`poll` may have something to send (None: nothing pending)."""
        if not self._pending or not self.active:
            return None
        resend = max(self.rtt, self.config.min_resend)
        due = [
            s.last_sent + resend for s in self._pending.values() if s.tries < self.config.max_tries
        ]
        return min(due) if due else None

    def _sample_rtt(self, sample: float) -> None:
        self.stats.rtt_samples += 1
        if self.measured_rtt is None:
            self.measured_rtt = sample
        else:
            self.measured_rtt += self.config.rtt_smoothing * (sample - self.measured_rtt)

    def _drop(self, ext: int) -> None:
        state = self._pending.pop(ext)
        if state.tries:
            self.stats.expired += 1
            self._unanswered += 1

    def reset(self) -> None:
        """A new stream (SSRC change): forget what was pending (counters kept)."""
        self._pending.clear()
        self._highest = None
