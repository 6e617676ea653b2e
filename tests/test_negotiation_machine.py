"""The real :class:`~meshrtc.rtc.negotiation.Negotiation`, driven from both sides.

Two Negotiations (alice: lower id, impolite; bob: polite) exchange offers, answers, candidates and
``peer.error`` through a network that delivers in any order or loses messages; their links come up,
fail, or fall silent; the clock jumps. Each side's "shell" here carries out the actions at once,
as the trio shell does. The invariants are the lifecycle's promises (docs/peers.md): never two
offers in flight, a failed link is rebuilt or given up within the backoff bound, no action in a
state that forbids it, Connected only on a link that has the remote SDP and came up. A second
machine checks that the transition table answers for itself: ``MachineError`` exactly when
``may_<trigger>()`` is false.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshrtc.rtc.negotiation import (
    PEER_CONNECTION_MACHINE,
    Action,
    AddCandidate,
    ApplyAnswer,
    BackOff,
    BuildLink,
    DropLink,
    FlushCandidates,
    GiveUp,
    Negotiation,
    PeerState,
    QueueCandidate,
    ResetMedia,
    SendAnswer,
    SendError,
    SendOffer,
)
from meshrtc.statechart import MachineError

TRIES = 3
POLITE_WAIT = 1.0
#: Longest backoff the delay function below can return.
MAX_DELAY = 1.0 * 1.25
CONNECT_TIMEOUT = 10.0
RECONNECT_TIMEOUT = 2.5
MEDIA_TIMEOUT = 3.0

_SENDS_NEED = (PeerState.Connecting, PeerState.Reconnecting)


def _negotiation(
    peer_id: str,
    *,
    polite: bool,
    seed: int,
    on_state_change: Callable[[PeerState], None],
) -> Negotiation:
    rand = random.Random(seed)
    return Negotiation(
        peer_id=peer_id,
        connection_id=f"to-{peer_id}",
        polite=polite,
        connect_timeout=CONNECT_TIMEOUT,
        reconnect_timeout=RECONNECT_TIMEOUT,
        media_timeout=MEDIA_TIMEOUT,
        polite_wait=POLITE_WAIT,
        tries=TRIES,
        backoff_delay=lambda n: min(0.25 * 2.0**n, 1.0) * (1.0 + 0.25 * rand.random()),
        on_state_change=on_state_change,
    )


@attrs.define
class _Message:
    method: str
    #: The offer's tag, or the tag an answer echoes.
    tag: str | None = None


@attrs.define
class _Side:
    """One side: its Negotiation and what a shell would hold (link, outstanding offer, inbox)."""

    name: str
    negotiation: Negotiation
    states: list[Any]
    #: Messages on their way to this side.
    inbox: list[_Message] = attrs.Factory(list)
    link: int | None = None
    up: int | None = None
    #: The offer this side sent on its current link and has not had answered (as the shell sees).
    outstanding: str | None = None
    #: The tag of the remote offer the current (answering) link answers.
    answering: str | None = None
    activity: float | None = None
    failed_at: float | None = None
    queued_candidates: int = 0
    added_candidates: int = 0
    backoffs: list[BackOff] = attrs.Factory(list)


class TwoSides(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.sides: dict[str, _Side] = {}

    @rule(seed=st.integers(0, 2**16))
    @precondition(lambda self: not self.sides)
    def start(self, seed: int) -> None:
        for name, polite in (("alice", False), ("bob", True)):
            states: list[Any] = []
            self.sides[name] = _Side(
                name,
                _negotiation(
                    name, polite=polite, seed=seed, on_state_change=self._announced(name, states)
                ),
                states,
            )

    def _announced(self, name: str, states: list[Any]) -> Callable[[PeerState], None]:
        """The state-change callback, checked where the PeerManager turns it into events
        (PeerConnected, PeerReconnecting; PeerRemoved after Failed): an event announcing a state
        must not precede that state, and Reconnecting or Failed must not be seen while the old link
        is still held (the shell has not dropped it yet)."""

        def announce(state: PeerState) -> None:
            side = self.sides[name]
            assert state is side.negotiation.state, f"{state} announced in {side.negotiation.state}"
            if state in (PeerState.Reconnecting, PeerState.Failed):
                assert side.link is None, f"{state} announced while link {side.link} is held"
                assert side.negotiation.link_generation is None
            states.append(state)

        return announce

    def other(self, side: _Side) -> _Side:
        return self.sides["bob" if side.name == "alice" else "alice"]

    # --- the shell: carry out actions as PeerConnection does --------------------------------

    def carry_out(self, side: _Side, actions: list[Action], *, tag: str | None = None) -> None:
        negotiation = side.negotiation
        for action in actions:
            # No action in a state that forbids it.
            assert negotiation.state is not PeerState.Closed, action
            if isinstance(action, BuildLink):
                assert negotiation.live
                side.link, side.up, side.outstanding, side.answering = (
                    action.generation,
                    None,
                    None,
                    None,
                )
                side.activity = None
                self.carry_out(side, negotiation.link_built(action.generation, self.now))
                if action.offerer:
                    self.carry_out(side, negotiation.offer_ready(self.now))
                else:
                    side.answering = tag
                    self.carry_out(side, negotiation.answer_ready(self.now, media=True), tag=tag)
            elif isinstance(action, SendOffer):
                assert negotiation.state in _SENDS_NEED
                # Never two offers in flight from one side.
                assert side.outstanding is None, "a second offer while the first is unanswered"
                side.outstanding = action.tag
                self.other(side).inbox.append(_Message("offer", action.tag))
            elif isinstance(action, SendAnswer):
                assert negotiation.state in _SENDS_NEED
                self.other(side).inbox.append(_Message("answer", side.answering))
            elif isinstance(action, SendError):
                self.other(side).inbox.append(_Message("error"))
            elif isinstance(action, ApplyAnswer):
                assert side.outstanding is not None
                side.outstanding = None
                self.carry_out(side, negotiation.answer_applied(media=True))
            elif isinstance(action, QueueCandidate):
                assert not negotiation.has_remote_sdp()
                side.queued_candidates += 1
            elif isinstance(action, AddCandidate):
                assert negotiation.has_remote_sdp()
                side.added_candidates += 1
            elif isinstance(action, FlushCandidates):
                assert negotiation.has_remote_sdp()
                side.added_candidates += side.queued_candidates
                side.queued_candidates = 0
            elif isinstance(action, DropLink):
                side.link = side.up = side.outstanding = side.answering = None
                side.queued_candidates = 0
                side.failed_at = self.now
                self.carry_out(side, negotiation.link_dropped(self.now), tag=tag)
            elif isinstance(action, BackOff):
                assert negotiation.state is PeerState.Reconnecting
                # Rebuilt within the backoff bound.
                assert side.failed_at is not None
                assert action.until - side.failed_at <= MAX_DELAY + POLITE_WAIT + 1e-9
                side.backoffs.append(action)
            elif isinstance(action, GiveUp):
                assert negotiation.state is PeerState.Failed
            else:
                assert isinstance(action, ResetMedia)
                assert negotiation.state is PeerState.Reconnecting

    def feed(self, side: _Side, actions: list[Action], *, tag: str | None = None) -> None:
        """An event's actions; none at all once the side is Failed or Closed."""
        self.carry_out(side, actions, tag=tag)

    def event(self, side: _Side, make: Any, *, tag: str | None = None) -> None:
        was_live = side.negotiation.live
        actions = make()
        if not was_live:
            assert actions == [], f"{side.name} acted while {side.negotiation.state}: {actions}"
        self.feed(side, actions, tag=tag)

    # --- rules ------------------------------------------------------------------------------

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]))
    def want_offer(self, name: str) -> None:
        side = self.sides[name]
        self.event(side, side.negotiation.want_offer)

    @precondition(lambda self: any(s.inbox for s in self.sides.values()))
    @rule(data=st.data(), lose=st.booleans())
    def deliver(self, data: st.DataObject, lose: bool) -> None:
        """Any queued message, in any order; or lose it."""
        side = data.draw(st.sampled_from([s for s in self.sides.values() if s.inbox]))
        message = side.inbox.pop(data.draw(st.integers(0, len(side.inbox) - 1)))
        if lose:
            return
        negotiation = side.negotiation
        if message.method == "offer":
            self.event(side, lambda: negotiation.remote_offer(self.now), tag=message.tag)
        elif message.method == "answer":
            self.event(side, lambda: negotiation.remote_answer(message.tag))
        else:
            self.event(side, lambda: negotiation.remote_error("cannot answer"))

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]))
    def remote_candidate(self, name: str) -> None:
        side = self.sides[name]
        self.event(side, side.negotiation.remote_candidate)

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]), stale=st.booleans())
    def link_up(self, name: str, stale: bool) -> None:
        """aiortc reports connected (possibly for a link already replaced: ignored)."""
        side = self.sides[name]
        generation = (side.link or 0) - 1 if stale else side.link
        if generation is None:
            return
        before = side.negotiation.state
        self.event(side, lambda: side.negotiation.link_up(generation, self.now))
        if side.negotiation.state is PeerState.Connected and before is not PeerState.Connected:
            assert not stale
            side.up = generation
            side.activity = self.now

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]), why=st.sampled_from(["failed", "closed"]))
    def link_down(self, name: str, why: str) -> None:
        side = self.sides[name]
        if side.link is not None:
            link = side.link
            self.event(side, lambda: side.negotiation.link_down(link, self.now, why))

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]))
    def media_arrives(self, name: str) -> None:
        side = self.sides[name]
        if side.up is not None:
            side.activity = self.now

    @precondition(lambda self: self.sides)
    @rule(dt=st.floats(0.0, 4.0))
    def time_passes(self, dt: float) -> None:
        """The clock jumps; each side's timer runs once it is due (as the supervisor's wait ends)."""
        target = self.now + dt
        for _ in range(50):  # bounded: each round is one due deadline
            due = [
                (deadline, side)
                for side in self.sides.values()
                if (deadline := side.negotiation.next_deadline(side.activity)) is not None
                and deadline <= target
            ]
            if not due:
                break
            deadline, side = min(due, key=lambda d: d[0])
            self.now = max(self.now, deadline)
            retry_due = (
                side.negotiation.retry_at is not None and side.negotiation.retry_at <= self.now
            )
            generation = side.negotiation.generation
            self.event(side, lambda s=side: s.negotiation.timer(self.now, s.activity))
            if retry_due and side.negotiation.live:
                # A due retry builds a new link at once.
                assert side.negotiation.generation == generation + 1
        self.now = target

    @precondition(lambda self: self.sides)
    @rule()
    def good_network(self) -> None:
        """Everything in flight arrives in order and both links report connected."""
        _deliver_all(self)
        for name in ("alice", "bob"):
            self.link_up(name, stale=False)

    @precondition(lambda self: self.sides)
    @rule(name=st.sampled_from(["alice", "bob"]), dice=st.integers(0, 19))
    def close(self, name: str, dice: int) -> None:
        """The owner closes (rarely: a closed side ends the interesting part of a run)."""
        if dice:
            return
        side = self.sides[name]
        was_failed = side.negotiation.state is PeerState.Failed
        # As the shell's teardown: the link is dropped, then the negotiation shut down.
        side.link = side.up = side.outstanding = side.answering = None
        side.negotiation.shutdown()
        assert side.negotiation.state is (PeerState.Failed if was_failed else PeerState.Closed)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def one_offer_in_flight_and_the_shell_agrees(self) -> None:
        for side in self.sides.values():
            negotiation = side.negotiation
            assert negotiation.link_generation == side.link
            assert negotiation.offer_outstanding == (side.outstanding is not None)

    @invariant()
    def connected_only_on_a_link_that_came_up_with_the_remote_sdp(self) -> None:
        for side in self.sides.values():
            if side.negotiation.is_connected:
                assert side.link is not None
                assert side.up == side.link
                assert side.negotiation.has_remote_sdp()

    @invariant()
    def a_failed_link_is_rebuilt_or_given_up_within_the_backoff_bound(self) -> None:
        for side in self.sides.values():
            negotiation = side.negotiation
            if not negotiation.live or negotiation.state is PeerState.New:
                continue
            if side.link is None:
                # No link and not Failed: a retry is due within the bound.
                assert negotiation.retry_at is not None
                assert side.failed_at is not None
                assert negotiation.retry_at - side.failed_at <= MAX_DELAY + POLITE_WAIT + 1e-9
            else:
                # A link is either connected or has a deadline: nothing waits forever.
                assert negotiation.next_deadline(side.activity) is not None

    @invariant()
    def states_follow_the_table(self) -> None:
        arrows = {(a, b) for a, b, _ in PEER_CONNECTION_MACHINE.edges()}
        for side in self.sides.values():
            path = [PeerState.New, *side.states]
            for a, b in itertools.pairwise(path):
                assert (a, b) in arrows
                assert a != b
            assert path[-1] is side.negotiation.state


TwoSides.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_two_sides = TwoSides.TestCase


class TriggerTable(RuleBasedStateMachine):
    """Raw triggers and real events on one Negotiation: the machine says no exactly when its
    ``may_<trigger>()`` says so (wrong state: ``MachineError``; false guard: ``False``)."""

    def __init__(self) -> None:
        super().__init__()
        self.negotiation = _negotiation(
            "bob", polite=True, seed=1, on_state_change=lambda _state: None
        )
        self.now = 0.0

    @rule(trigger=st.sampled_from(PEER_CONNECTION_MACHINE.triggers()))
    def fire(self, trigger: str) -> None:
        negotiation = self.negotiation
        may = bool(getattr(negotiation, f"may_{trigger}")())
        in_source = any(
            negotiation.state in t.source
            for t in PEER_CONNECTION_MACHINE.transitions
            if t.trigger == trigger
        )
        if not in_source:
            assert not may
            with pytest.raises(MachineError):
                getattr(negotiation, trigger)()
        else:
            assert getattr(negotiation, trigger)() is may

    @rule()
    def want_offer(self) -> None:
        self.negotiation.want_offer()

    @rule()
    def offer_ready_and_answered(self) -> None:
        negotiation = self.negotiation
        negotiation.offer_ready(self.now)
        for action in negotiation.remote_answer(None):
            assert isinstance(action, ApplyAnswer)
            negotiation.answer_applied(media=True)

    @rule()
    def remote_offer(self) -> None:
        for action in self.negotiation.remote_offer(self.now):
            if isinstance(action, BuildLink):
                self.negotiation.answer_ready(self.now, media=True)

    @rule()
    def link_failed(self) -> None:
        self.negotiation.link_failed(self.now, "test")
        self.negotiation.link_dropped(self.now)

    @rule(dt=st.floats(0.0, 3.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.negotiation.timer(self.now)

    @invariant()
    def guards_are_the_machines(self) -> None:
        negotiation = self.negotiation
        if negotiation.state in (PeerState.Connecting, PeerState.Reconnecting):
            assert negotiation.may_connected() == negotiation.has_remote_sdp()
        if negotiation.state is PeerState.Reconnecting:
            assert negotiation.may_retry() == negotiation.attempts_left()


TriggerTable.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
test_trigger_table = TriggerTable.TestCase


# --- scenarios the random runs must also cover, spelled out ---------------------------------------


def _pair() -> tuple[TwoSides, _Side, _Side]:
    machine = TwoSides()
    machine.start(seed=7)
    return machine, machine.sides["alice"], machine.sides["bob"]


def _deliver_all(machine: TwoSides) -> None:
    for _ in range(20):
        pending = [s for s in machine.sides.values() if s.inbox]
        if not pending:
            return
        side = pending[0]
        message = side.inbox.pop(0)
        negotiation = side.negotiation
        if message.method == "offer":
            actions = negotiation.remote_offer(machine.now)
            machine.feed(side, actions, tag=message.tag)
        elif message.method == "answer":
            machine.feed(side, negotiation.remote_answer(message.tag))
        else:
            machine.feed(side, negotiation.remote_error("x"))


def _both_up(machine: TwoSides) -> None:
    for name in ("alice", "bob"):
        machine.link_up(name, stale=False)


def test_glare_the_lower_id_keeps_its_offer_and_the_polite_side_answers() -> None:
    machine, alice, bob = _pair()
    machine.want_offer("alice")
    machine.want_offer("bob")
    assert len(alice.inbox) == len(bob.inbox) == 1  # both offers in flight, one each way
    _deliver_all(machine)
    assert alice.negotiation.statistics().ignored_offers == 1
    assert bob.negotiation.statistics().ignored_offers == 0
    _both_up(machine)
    assert alice.negotiation.is_connected
    assert bob.negotiation.is_connected
    machine.one_offer_in_flight_and_the_shell_agrees()


def test_a_lost_offer_fails_the_attempt_at_its_deadline_and_is_retried() -> None:
    machine, alice, bob = _pair()
    machine.want_offer("alice")
    bob.inbox.clear()  # lost
    machine.time_passes(CONNECT_TIMEOUT)
    assert alice.negotiation.state is PeerState.Reconnecting
    assert alice.backoffs  # retried after a bounded wait
    machine.time_passes(MAX_DELAY)
    assert alice.negotiation.generation == 2
    assert len(bob.inbox) == 1
    _deliver_all(machine)
    _both_up(machine)
    assert alice.negotiation.is_connected
    assert bob.negotiation.is_connected
    assert alice.negotiation.statistics().reconnects == 0  # never connected before


def test_a_path_that_stays_down_gives_up_after_the_tries() -> None:
    machine, alice, bob = _pair()
    machine.want_offer("alice")
    _deliver_all(machine)
    _both_up(machine)
    for _ in range(TRIES + 1):
        machine.link_down("alice", "failed")
        machine.time_passes(MAX_DELAY + POLITE_WAIT)
        bob.inbox.clear()
        machine.time_passes(RECONNECT_TIMEOUT)
    assert alice.negotiation.state is PeerState.Failed
    assert alice.negotiation.failure_reason is not None
    assert f"gave up after {TRIES} reconnect attempts" in alice.negotiation.failure_reason


def test_silent_media_while_connected_loses_the_path() -> None:
    machine, alice, _bob = _pair()
    machine.want_offer("alice")
    _deliver_all(machine)
    _both_up(machine)
    machine.time_passes(MEDIA_TIMEOUT - 0.5)
    machine.media_arrives("alice")
    machine.time_passes(MEDIA_TIMEOUT - 0.5)
    assert alice.negotiation.is_connected
    machine.time_passes(1.0)
    assert alice.negotiation.state is PeerState.Reconnecting
    assert (alice.negotiation.last_loss_reason or "").startswith("no RTP/RTCP for")


def test_a_refusal_fails_for_good_and_a_stale_answer_is_ignored() -> None:
    machine, alice, _bob = _pair()
    assert alice.negotiation.remote_answer("to-alice.9") == []  # no offer outstanding
    assert alice.negotiation.statistics().stale_answers == 1
    machine.want_offer("alice")
    machine.feed(alice, alice.negotiation.remote_answer(None, refusal="mesh full"))
    assert alice.negotiation.state is PeerState.Failed
    assert alice.negotiation.refused
    assert alice.negotiation.want_offer() == []


def test_a_renegotiating_remote_is_announced_after_the_old_link_is_dropped() -> None:
    """The remote rebuilt its side and offers while we are Connected: we enter Reconnecting (the
    PeerManager's PeerReconnecting) only once our old link is dropped, then answer on a new one.
    The checks of the announcement are in ``TwoSides._announced``; at 478480b it saw Reconnecting
    with the old link still held."""
    machine, alice, _bob = _pair()
    machine.want_offer("alice")
    _deliver_all(machine)
    _both_up(machine)
    old_link = alice.link
    machine.link_down("bob", "failed")
    machine.time_passes(MAX_DELAY + POLITE_WAIT)
    assert [m.method for m in alice.inbox] == ["offer"]
    _deliver_all(machine)
    assert alice.states[-2:] == [PeerState.Connected, PeerState.Reconnecting]
    assert alice.negotiation.last_loss_reason == "the remote renegotiated"
    assert alice.link is not None
    assert alice.link != old_link
    assert alice.answering is not None, "the new link answers the remote's offer"
