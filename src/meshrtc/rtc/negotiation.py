"""Negotiation: every decision of a PeerConnection's lifecycle, sans-IO (events in, actions out).

The shape of wsproto's ``connection.py`` and h11's ``_state.py``: no aiortc, no trio, no asyncio;
time is passed in (``now``, monotonic seconds). The trio shell (:class:`meshrtc.rtc.peer.PeerConnection`)
feeds what happened (the app wants to offer, the remote sent an offer/answer/candidate/``peer.error``,
a link came up or went down, a timer expired) and carries out what comes back (build a link, send
an offer or answer, apply an answer, drop the link, back off, give up).

Decided here and nowhere else:

- **Glare.** An offer arriving while our own offer is unanswered: the lower id (impolite) ignores it,
  the higher id (polite) rolls its own back and answers (docs/signaling.md).
- **Rebuild and backoff.** aiortc has no ICE restart, so a lost path is repaired with a fresh link.
  A Connected link that fails is rebuilt at once; a failed attempt waits ``backoff_delay(n)``; the
  polite side waits ``polite_wait`` longer, so the lower id's offer normally arrives first.
- **Give up.** After ``tries`` failed attempts (the guarded ``retry`` transition says no), on a
  refusal, on ``peer.error``, or when an offer cannot be answered.
- **Timers.** The attempt deadline (connect/reconnect timeout), the retry time, and media silence
  while Connected (aioice's consent check takes ~30 s to notice a dead path).

The machine below is the real transition table: ``connected`` is guarded by ``has_remote_sdp`` and
``retry`` by ``attempts_left``, and the code fires them and takes the machine's no.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TypeAlias

import attrs

from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = [
    "PEER_CONNECTION_MACHINE",
    "Action",
    "AddCandidate",
    "ApplyAnswer",
    "BackOff",
    "BuildLink",
    "DropLink",
    "FlushCandidates",
    "GiveUp",
    "Negotiation",
    "NegotiationStatistics",
    "PeerState",
    "QueueCandidate",
    "ResetMedia",
    "SendAnswer",
    "SendError",
    "SendOffer",
]

log = logging.getLogger(__name__)


class PeerState(enum.StrEnum):
    """A PeerConnection's states; str-valued so diagrams, logs and ``== "Connected"`` keep working."""

    New = "New"
    GatheringIce = "GatheringIce"
    Connecting = "Connecting"
    Connected = "Connected"
    Reconnecting = "Reconnecting"
    Failed = "Failed"
    Closed = "Closed"


_LIVE = (
    PeerState.New,
    PeerState.GatheringIce,
    PeerState.Connecting,
    PeerState.Connected,
    PeerState.Reconnecting,
)

PEER_CONNECTION_MACHINE = register(
    MachineSpec(
        name="PeerConnection",
        doc="New → Gathering ICE → Connecting → Connected → Failed | Closed; a lost path from "
        "Connecting or Connected goes to Reconnecting (the RTCPeerConnection is rebuilt and "
        "renegotiated, with backoff: `retry` while `attempts_left`) and back to Connected, or to "
        "Failed when the machine refuses `retry`. Connected needs a remote SDP (`has_remote_sdp`). "
        "The table is `Negotiation`'s (rtc/negotiation.py), which decides every transition.",
        states=tuple(PeerState),
        initial=PeerState.New,
        labels={"GatheringIce": "Gathering ICE"},
        transitions=(
            ("start_gathering", PeerState.New, PeerState.GatheringIce),
            ("gathering_complete", PeerState.GatheringIce, PeerState.Connecting),
            (
                "connected",
                (PeerState.Connecting, PeerState.Reconnecting),
                PeerState.Connected,
                "has_remote_sdp",
            ),
            (
                "connection_lost",
                (PeerState.Connecting, PeerState.Connected),
                PeerState.Reconnecting,
            ),
            ("retry", PeerState.Reconnecting, PeerState.Reconnecting, "attempts_left"),
            ("fail", _LIVE, PeerState.Failed),
            ("close", (*_LIVE, PeerState.Failed), PeerState.Closed),
        ),
    )
)


# --- actions ----------------------------------------------------------------------------------


@attrs.frozen
class BuildLink:
    """Drop the current link and build link ``generation``; then create the offer (``offerer``)
    and report :meth:`Negotiation.offer_ready`, or answer the remote's offer and report
    :meth:`Negotiation.answer_ready` (:meth:`~Negotiation.link_built` once it exists)."""

    generation: int
    offerer: bool


@attrs.frozen
class SendOffer:
    """Send the link's offer, tagged with ``tag`` (answers echo it; a stale answer is known)."""

    tag: str


@attrs.frozen
class SendAnswer:
    """Send the answer just created (echoing the offer's tag)."""


@attrs.frozen
class SendError:
    """Tell the remote we cannot answer its offer (``peer.error``)."""

    message: str


@attrs.frozen
class ApplyAnswer:
    """Apply the remote's answer to our link; report :meth:`Negotiation.answer_applied`."""


@attrs.frozen
class AddCandidate:
    """Give the remote candidate to the link (its remote description is set)."""


@attrs.frozen
class QueueCandidate:
    """Keep the remote candidate until the link has the remote description."""


@attrs.frozen
class FlushCandidates:
    """The remote description is set: add the queued candidates."""


@attrs.frozen
class DropLink:
    """Close the current link (its tasks and RTCPeerConnection)."""

    reason: str


@attrs.frozen
class ResetMedia:
    """The old path's media state (jitter buffers, drift, sync) is void."""


@attrs.frozen
class BackOff:
    """Nothing to do until ``until`` (the timer then asks for a rebuilt link)."""

    until: float
    attempt: int


@attrs.frozen
class GiveUp:
    """Failed for good: drop the link; ``refused``: the remote refused us (mesh full)."""

    reason: str
    refused: bool = False


Action: TypeAlias = (
    BuildLink
    | SendOffer
    | SendAnswer
    | SendError
    | ApplyAnswer
    | AddCandidate
    | QueueCandidate
    | FlushCandidates
    | DropLink
    | ResetMedia
    | BackOff
    | GiveUp
)


@attrs.frozen
class NegotiationStatistics:
    """Counters over the connection's life (a snapshot)."""

    #: Colliding offers ignored (we are the impolite, lower id) and answers to abandoned attempts.
    ignored_offers: int
    stale_answers: int
    #: Offers we could not answer at all (the offerer got a ``peer.error``).
    refused_offers: int
    #: Reconnections that reached Connected again.
    reconnects: int


@attrs.define(eq=False)
class _Link:
    """What the negotiation knows of one link."""

    generation: int
    offerer: bool
    started_at: float | None = None
    #: Our offer was sent (as offerer) and not yet answered: glare is possible.
    offer_sent: bool = False
    remote_set: bool = False
    #: The accepted negotiation carries audio or video (silence then means a lost path).
    media: bool = False
    up: bool = False


class Negotiation(StatefulModel):
    """The lifecycle of one connection to ``peer_id``: events in, :data:`Action` lists out.

    ``tries`` failed attempts are tried before Failed; ``backoff_delay(n)`` is the wait before
    attempt ``n + 2`` after a failed one (the first attempt after a loss starts at once).
    ``on_state_change`` is called after each change of state (not on the reflexive ``retry``).
    """

    state: PeerState
    start_gathering = trigger_stub()
    gathering_complete = trigger_stub()
    connected = trigger_stub()
    connection_lost = trigger_stub()
    retry = trigger_stub()
    fail = trigger_stub()
    close = trigger_stub()
    may_start_gathering = trigger_stub()
    may_gathering_complete = trigger_stub()
    may_connected = trigger_stub()
    may_connection_lost = trigger_stub()
    may_retry = trigger_stub()
    may_fail = trigger_stub()
    may_close = trigger_stub()
    is_Connected = trigger_stub()  # noqa: N815 - transitions' name for the state query
    is_Reconnecting = trigger_stub()  # noqa: N815

    def __init__(
        self,
        *,
        peer_id: str,
        connection_id: str,
        polite: bool,
        connect_timeout: float,
        reconnect_timeout: float,
        media_timeout: float,
        polite_wait: float,
        tries: int,
        backoff_delay: Callable[[int], float],
        on_state_change: Callable[[PeerState], None] | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.connection_id = connection_id
        self.polite = polite
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.media_timeout = media_timeout
        self.polite_wait = polite_wait
        self.tries = tries
        self.backoff_delay = backoff_delay
        self.generation = 0
        self.connected_at: float | None = None
        self.failure_reason: str | None = None
        #: True when the remote refused us (its mesh is full): Failed for good, do not retry.
        self.refused = False
        #: Why the last connected link was given up (media silent, aiortc failed, re-offered).
        self.last_loss_reason: str | None = None
        self._on_state_change = on_state_change
        self._link: _Link | None = None
        self._failures = 0
        self._ever_connected = False
        self._lost_at: float | None = None
        self._retry_at: float | None = None
        self._attempt_deadline: float | None = None
        self._ignored_offers = 0
        self._stale_answers = 0
        self._refused_offers = 0
        #: peer.error notices with no offer of ours outstanding (logged once).
        self._stray_errors = 0
        #: Candidates with no link to add them to (before any offer, or after the end).
        self._stray_candidates = 0
        self._reconnects = 0
        self._last_state = PeerState.New
        #: The decision made once the shell has dropped the link (:meth:`link_dropped`).
        self._after_drop: Callable[[float], list[Action]] | None = None
        PEER_CONNECTION_MACHINE.build(self, after_state_change=self._after_state_change)

    # --- the machine's guards and callback ------------------------------------------------------

    def has_remote_sdp(self) -> bool:
        """Guard of ``connected``: the current link has the remote's description applied."""
        return self._link is not None and self._link.remote_set

    def attempts_left(self) -> bool:
        """Guard of ``retry``: fewer than ``tries`` attempts have failed."""
        return self._failures < self.tries

    def _after_state_change(self) -> None:
        if self.state is self._last_state:
            return  # the reflexive ``retry``
        self._last_state = self.state
        if self._on_state_change is not None:
            self._on_state_change(self.state)

    # --- queries --------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Not Failed or Closed (exactly the states ``fail`` leaves)."""
        return bool(self.may_fail())

    @property
    def closed(self) -> bool:
        return not self.may_close()

    @property
    def is_connected(self) -> bool:
        return bool(self.is_Connected())

    @property
    def has_link(self) -> bool:
        """Up, or repairing its own link (ICE restart): worth keeping across a re-announce."""
        return bool(self.is_Connected() or self.is_Reconnecting())

    @property
    def link_generation(self) -> int | None:
        return None if self._link is None else self._link.generation

    @property
    def retry_at(self) -> float | None:
        return self._retry_at

    @property
    def attempt_deadline(self) -> float | None:
        return self._attempt_deadline

    @property
    def offer_outstanding(self) -> bool:
        """Our offer was sent on the current link and is not answered yet."""
        link = self._link
        return link is not None and link.offer_sent and not link.remote_set

    def statistics(self) -> NegotiationStatistics:
        return NegotiationStatistics(
            self._ignored_offers, self._stale_answers, self._refused_offers, self._reconnects
        )

    def next_deadline(self, activity: float | None = None) -> float | None:
        """When :meth:`timer` has something to do; ``activity``: the link's last media activity."""
        candidates = [t for t in (self._retry_at, self._attempt_deadline) if t is not None]
        silent_since = self._silent_since(activity)
        if silent_since is not None:
            candidates.append(silent_since + self.media_timeout)
        return min(candidates, default=None)

    def _silent_since(self, activity: float | None) -> float | None:
        link = self._link
        if self.connected_at is None or link is None or not link.up or not link.media:
            return None
        return self.connected_at if activity is None else max(activity, self.connected_at)

    # --- events: the local side -----------------------------------------------------------------

    def want_offer(self) -> list[Action]:
        """The app makes this side the offerer of the first negotiation (only from New)."""
        if not self.may_start_gathering():
            return []
        return self._start_link(offerer=True)

    def link_built(self, generation: int, now: float) -> list[Action]:
        """Link ``generation`` exists (its attempt deadline counts from now)."""
        link = self._link
        if link is not None and link.generation == generation:
            link.started_at = now
        return []

    def build_failed(self, reason: str) -> list[Action]:
        """No link could be built (the bridge is closing)."""
        return self._give_up(f"cannot build a connection: {reason}")

    def offer_ready(self, now: float) -> list[Action]:
        """Our offer for the current link is created: send it and arm the attempt."""
        link = self._link
        if link is None or not link.offerer or link.offer_sent:
            return []
        if self.may_gathering_complete():
            self.gathering_complete()
        link.offer_sent = True
        self._arm_attempt(link, now)
        return [SendOffer(f"{self.connection_id}.{link.generation}")]

    def answer_ready(self, now: float, *, media: bool) -> list[Action]:
        """Our answer to the remote's offer is created (``media``: audio or video accepted)."""
        link = self._link
        if link is None or link.offerer or link.remote_set:
            return []
        link.media = media
        if self.may_gathering_complete():
            self.gathering_complete()
        link.remote_set = True
        self._arm_attempt(link, now)
        return [FlushCandidates(), SendAnswer()]

    def offer_unanswerable(self, reason: str) -> list[Action]:
        """The remote's offer cannot be answered at all: fail (a retry would too), then tell it.

        Failed first: the remote may offer again the moment it hears why, and that offer must
        find this connection already given up (the PeerManager then starts a new one), not
        still closing, where it would be dropped unanswered.
        """
        log.warning("peer %s: cannot answer its offer: %s", self.peer_id, reason)
        self._refused_offers += 1
        return [
            *self._give_up(f"cannot answer the offer of {self.peer_id}: {reason}"),
            SendError(reason[:1000]),
        ]

    def answer_applied(self, *, media: bool) -> list[Action]:
        link = self._link
        if link is None or not link.offer_sent or link.remote_set:
            return []
        link.media = media
        link.remote_set = True
        return [FlushCandidates()]

    # --- events: the remote ---------------------------------------------------------------------

    def remote_offer(self, now: float) -> list[Action]:
        """The remote offers: glare is decided here, then the link is replaced by an answering one."""
        if not self.live:
            return []
        if self.offer_outstanding:
            if not self.polite:
                # Glare: we are the lower id; the remote rolls back and answers ours.
                self._ignored_offers += 1
                log.info("peer %s: ignoring a colliding offer (we offer)", self.peer_id)
                return []
            log.info("peer %s: colliding offer; rolling back ours and answering", self.peer_id)
        self._retry_at = None
        link = self._link
        if link is not None and link.up and self.may_connection_lost():
            # As for a failed link: drop it first, then (:meth:`link_dropped`) enter Reconnecting,
            # so nobody sees Reconnecting (and the PeerReconnecting event) while it is still held.
            reason = "the remote renegotiated"
            self._link = None
            self._attempt_deadline = None
            self._after_drop = lambda now: [
                *self._lose(now, reason),
                *self._start_link(offerer=False),
            ]
            return [DropLink(reason)]
        return self._start_link(offerer=False)

    def remote_answer(self, tag: str | None, refusal: str | None = None) -> list[Action]:
        """The remote answers (``tag``: the attempt it echoes; ``refusal``: it refuses us)."""
        if not self.live:
            return []
        if refusal is not None:
            return self._give_up(f"refused by {self.peer_id}: {refusal}", refused=True)
        link = self._link
        if (
            link is None
            or not self.offer_outstanding
            or (tag is not None and tag != f"{self.connection_id}.{link.generation}")
        ):
            self._stale_answers += 1
            if self._stale_answers == 1:  # once: a hostile peer's stream of them floods nothing
                log.debug(
                    "peer %s: ignoring an answer to no outstanding offer (counted in "
                    "stale_answers, not logged again)",
                    self.peer_id,
                )
            return []
        return [ApplyAnswer()]

    def remote_candidate(self) -> list[Action]:
        link = self._link
        if link is None or not self.live:
            self._stray_candidates += 1
            if self._stray_candidates == 1:
                log.debug(
                    "peer %s: ignoring a candidate with no link to add it to (not logged again)",
                    self.peer_id,
                )
            return []
        return [AddCandidate()] if link.remote_set else [QueueCandidate()]

    def remote_error(self, message: str) -> list[Action]:
        """``peer.error``: the remote cannot answer our outstanding offer."""
        if not self.offer_outstanding or not self.live:
            self._stray_errors += 1
            if self._stray_errors == 1:
                log.debug(
                    "peer %s: peer.error with no offer outstanding (not logged again): %.200s",
                    self.peer_id,
                    message,
                )
            return []
        return self._give_up(f"{self.peer_id} cannot answer our offer: {message}")

    # --- events: the link and the clock ---------------------------------------------------------

    def link_up(self, generation: int, now: float) -> list[Action]:
        """aiortc reports link ``generation`` connected."""
        link = self._link
        if link is None or link.generation != generation or not self.may_connected():
            return []  # a dropped link, or the machine says no (state, or no remote SDP)
        self._attempt_deadline = self._retry_at = None
        link.up = True
        self.connected_at = now
        if self._ever_connected:
            self._reconnects += 1
            if self._lost_at is not None:
                log.info(
                    "peer %s: reconnected %.2f s after the loss", self.peer_id, now - self._lost_at
                )
        self._ever_connected = True
        self._failures = 0
        self.connected()
        return []

    def link_down(self, generation: int, now: float, why: str) -> list[Action]:
        """aiortc reports link ``generation`` failed or closed."""
        if self._link is None or self._link.generation != generation:
            return []
        return self.link_failed(now, f"aiortc reports the connection {why}")

    def timer(self, now: float, activity: float | None = None) -> list[Action]:
        """Time passed: retry, an attempt that did not connect in time, or silent media."""
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            return self._start_link(offerer=True)
        link = self._link
        if self._attempt_deadline is not None and now >= self._attempt_deadline:
            started = link.started_at if link is not None and link.started_at is not None else now
            return self.link_failed(
                now, f"not connected within {self._attempt_deadline - started:.1f} s"
            )
        silent_since = self._silent_since(activity)
        if silent_since is not None and now - silent_since >= self.media_timeout:
            return self.link_failed(now, f"no RTP/RTCP for {now - silent_since:.1f} s")
        return []

    def link_failed(self, now: float, reason: str) -> list[Action]:
        """The current link cannot carry the connection: drop it; then (:meth:`link_dropped`)
        rebuild it, backing off, or give up."""
        link = self._link
        if not self.live:
            return []
        self._link = None
        self._attempt_deadline = None
        was_up = link is not None and link.up
        self._after_drop = lambda now: self._rebuild_or_give_up(now, reason, was_up=was_up)
        return [DropLink(reason)]

    def link_dropped(self, now: float) -> list[Action]:
        """The link of the last :class:`DropLink` is closed: the decision waiting for it is made.

        Decided after the drop, not before, so an observer that sees Reconnecting or Failed never
        sees the old link still open, and the backoff counts from when the link is gone.
        """
        after, self._after_drop = self._after_drop, None
        return [] if after is None else after(now)

    def _rebuild_or_give_up(self, now: float, reason: str, *, was_up: bool) -> list[Action]:
        actions: list[Action] = []
        if self.may_connection_lost():
            self._failures = 0 if was_up else 1
            actions += self._lose(now, reason)
        elif self.state is PeerState.Reconnecting:
            self._failures += 1
            log.info(
                "peer %s: reconnect attempt %d failed (%s)", self.peer_id, self._failures, reason
            )
        else:  # New or Gathering ICE: the first link could not even be offered
            return self._fail_now(reason, refused=False)
        if not self.retry():  # the guard said no: no attempts left
            return actions + self._fail_now(
                f"{reason}; gave up after {self._failures} reconnect attempts", refused=False
            )
        delay = 0.0 if self._failures == 0 else self.backoff_delay(self._failures - 1)
        if self.polite:
            delay += self.polite_wait
        self._retry_at = now + delay
        return [*actions, BackOff(self._retry_at, self._failures)]

    def shutdown(self) -> None:
        """The connection is closed by its owner (a Failed one stays Failed)."""
        self._link = self._after_drop = None
        self._retry_at = self._attempt_deadline = None
        if self.live:
            self.close()

    # --- decisions shared by the events ---------------------------------------------------------

    def _start_link(self, *, offerer: bool) -> list[Action]:
        if self.may_start_gathering():
            self.start_gathering()
        self.generation += 1
        self._link = _Link(self.generation, offerer)
        return [BuildLink(self.generation, offerer)]

    def _lose(self, now: float, reason: str) -> list[Action]:
        """Connected/Connecting → Reconnecting: the media state of the old path is void."""
        self.last_loss_reason = reason
        self._lost_at = now
        log.info("peer %s: connection lost (%s)", self.peer_id, reason)
        self.connection_lost()
        return [ResetMedia()]

    def _give_up(self, reason: str, *, refused: bool = False) -> list[Action]:
        """Drop the link, then (:meth:`link_dropped`) fail."""
        self._link = None
        self._retry_at = self._attempt_deadline = None
        self._after_drop = lambda _now: self._fail_now(reason, refused=refused)
        return [DropLink(reason)]

    def _fail_now(self, reason: str, *, refused: bool) -> list[Action]:
        self._retry_at = self._attempt_deadline = None
        self.failure_reason = reason
        self.refused = refused
        log.warning("peer %s: failed: %s", self.peer_id, reason)
        if self.live:
            self.fail()
        return [GiveUp(reason, refused)]

    def _arm_attempt(self, link: _Link, now: float) -> None:
        limit = self.reconnect_timeout if self._ever_connected else self.connect_timeout
        self._attempt_deadline = (now if link.started_at is None else link.started_at) + limit
