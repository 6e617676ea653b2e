"""SessionGrid: every peer's audio frames onto one shared 20 ms grid of slots (sans-IO).

MixMinus windows frames by ``timestamp``, so frames of different peers presented at the same
instant must carry the same timestamp: the router snaps each frame's ``local_time`` (the instant its
SyncManager presented it) to the nearest slot of a grid shared by the session.

A peer's slots must also increase: two of its frames in one slot would be one duplicate too many
for the mixer. A frame presented a little early (a burst after a stall, rounding) is therefore
pushed to the slot after its predecessor. The old rule did only that, forever, and that is what
failed with real clients (docs/interop.md): when a peer's timeline jumped back (its SyncManager rebuilt
the timeline, or released a burst), every later frame stayed pushed ahead of its own time, by as
much as the jump, and MixMinus then found the other peers' frames late for every window: seconds
of silence. Now a frame takes its peer's next slot when it is within 0.8 slot (16 ms) of it
(hysteresis, so presentation times on a slot boundary do not flap between a hole and a collision),
and a peer may run ahead of its natural slots (its *lead*) by at most ``max_lead``
(2 slots), and for at most ``reanchor_after`` (200 ms). A frame that would need more, or that
arrives after the lead has lasted that long, is dropped (counted in :attr:`dropped`) until the
peer's own time has caught up with its last slot: the peer is *re-anchored* on its own timeline,
within the jump's size (a jump back by D drops D of that peer's audio, which its timeline presents
twice, and no slot goes without it). A jump forward leaves the skipped slots empty; nothing else is
to be done about audio that was never presented.

Late arrivals: a mix leaves MixMinus no earlier than its newest input reaches it, and the outgoing
audio track sends a frame at its timestamp + 40 ms or drops it as late. The GStreamer runs
(docs/interop.md) saw every member's frames reach the router 40-280 ms after their presentation
time on a loaded machine: every mix was then stamped with slots already past, and everybody heard
silence. So a frame that reaches the router more than ``max_arrival_lag`` (20 ms) after its
presentation time is placed as if presented 20 ms before it arrived: the mix is stamped with the
time it can still be sent at. On-time frames keep their presentation time (less jitter than
arrival times).

Pure: no clock, no I/O (the router passes the arrival time). ``local_time`` values are the peers'
(one monotonic clock per process).
"""

from __future__ import annotations

import logging

import attrs

__all__ = [
    "DEFAULT_MAX_ARRIVAL_LAG",
    "DEFAULT_MAX_LEAD",
    "DEFAULT_REANCHOR_AFTER",
    "GRID_SECONDS",
    "SessionGrid",
]

log = logging.getLogger(__name__)

#: The session's audio grid: one Opus frame.
GRID_SECONDS = 0.020
#: How far (seconds) a peer's slots may run ahead of its own presentation times: MixMinus waits up to
#: 60 ms for a window, so two slots ahead still meet the other peers' frames.
DEFAULT_MAX_LEAD = 0.040
#: How long (seconds of the peer's local time) a lead may last before the peer is re-anchored.
DEFAULT_REANCHOR_AFTER = 0.200
#: A frame reaching the router later than this after its presentation time counts as presented this
#: long before it arrived: the outgoing audio track sends a mix 40 ms after its timestamp or drops it.
DEFAULT_MAX_ARRIVAL_LAG = 0.020


#: A frame within this many slots of its peer's next slot takes that slot (hysteresis: 0.8 slot,
#: 16 ms, on either side).
_BAND = 0.8


@attrs.define
class _Slots:
    last: int
    #: Local time at which the peer's current lead began (None: on its natural slots).
    lead_since: float | None = None
    #: True while frames are being dropped to re-anchor (one re-anchor per episode).
    dropping: bool = False


class SessionGrid:
    """Snap each peer's presentation times onto the session's slots (module docstring)."""

    def __init__(
        self,
        step: float = GRID_SECONDS,
        *,
        max_lead: float = DEFAULT_MAX_LEAD,
        reanchor_after: float = DEFAULT_REANCHOR_AFTER,
        max_arrival_lag: float = DEFAULT_MAX_ARRIVAL_LAG,
    ) -> None:
        if step <= 0 or min(max_lead, reanchor_after, max_arrival_lag) < 0:
            raise ValueError(
                "step must be > 0; max_lead, reanchor_after and max_arrival_lag must be >= 0"
            )
        self.max_arrival_lag = max_arrival_lag
        self.step = step
        self.max_lead_slots = round(max_lead / step)
        self.reanchor_after = reanchor_after
        #: Local time of slot 0 (the first frame the grid saw), None before.
        self.origin: float | None = None
        self._peers: dict[str, _Slots] = {}
        #: Frames dropped per peer to re-anchor it, and how many re-anchors that took.
        self.dropped: dict[str, int] = {}
        self.reanchors: dict[str, int] = {}

    def timestamp(
        self, peer: str, local_time: float, arrived_at: float | None = None
    ) -> float | None:
        """The grid timestamp of a frame ``peer`` presented at ``local_time``; None: drop it.

        ``arrived_at`` (same clock): when the frame reached the router. A frame that arrives more
        than ``max_arrival_lag`` after its presentation time is placed as if presented that long
        before it arrived (module docstring).
        """
        if arrived_at is not None:
            local_time = max(local_time, arrived_at - self.max_arrival_lag)
        if self.origin is None:
            self.origin = local_time
        x = (local_time - self.origin) / self.step
        slots = self._peers.get(peer)
        if slots is None:
            slot = round(x)
            self._peers[peer] = _Slots(slot)
            return self.origin + slot * self.step
        expected = slots.last + 1
        if x - expected > _BAND:
            # Later than its next slot by most of a slot: the peer's timeline moved forward (or
            # its audio paused); the slots in between stay empty.
            slot = round(x)
            slots.lead_since = None
            slots.dropping = False
        elif expected - x <= _BAND:
            # On time. The band is wider than half a slot, so presentation times that sit on a
            # slot boundary do not flap between neighbouring slots (a hole, then a collision).
            slot = expected
            slots.lead_since = None
            slots.dropping = False
        else:
            ahead = expected - round(x)
            overdue = (
                slots.lead_since is not None
                and local_time - slots.lead_since >= self.reanchor_after
            )
            if ahead > self.max_lead_slots or overdue:
                self._drop(peer, slots, ahead)
                return None
            slot = expected
            if slots.lead_since is None:
                slots.lead_since = local_time
        slots.last = slot
        return self.origin + slot * self.step

    def _drop(self, peer: str, slots: _Slots, ahead: int) -> None:
        self.dropped[peer] = self.dropped.get(peer, 0) + 1
        if not slots.dropping:
            slots.dropping = True
            self.reanchors[peer] = self.reanchors.get(peer, 0) + 1
            log.info(
                "peer %r runs %d ms ahead of its grid slots: re-anchoring it (dropping frames "
                "until its time reaches its last slot)",
                peer,
                round(ahead * self.step * 1000),
            )

    def forget(self, peer: str) -> None:
        """A peer left: its next frame starts on its natural slot."""
        self._peers.pop(peer, None)

    def lead(self, peer: str, local_time: float) -> float:
        """Seconds the peer's last slot is ahead of ``local_time``'s natural slot (0 if not)."""
        slots = self._peers.get(peer)
        if slots is None or self.origin is None:
            return 0.0
        natural = round((local_time - self.origin) / self.step)
        return max(0, slots.last - natural) * self.step
