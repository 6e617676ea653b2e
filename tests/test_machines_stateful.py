"""The real machines, driven by hypothesis: every arrow taken is drawn, the machine says no exactly
when ``may_<trigger>()`` says no, and each entity's own invariants hold.

The drivers for the media machines are the behaviour tests of their modules (real packets, Sender
Reports, clock jumps, resets); :class:`MachineChecks` adds, to any of them, the checks that hold for
every machine in meshrtc. StreamSession and the SignalingClient's reconnect loop get their own
drivers here. (The WebRtcTransport needs a signaling server and the asyncio bridge; its lifecycle is
covered by tests/test_transport.py.)
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshrtc.pipeline import default_manifest
from meshrtc.session.stream import SessionError, SessionState, StreamSession
from meshrtc.signaling.client import (
    AnnounceResult,
    Backoff,
    ClientState,
    Disconnected,
    SignalingClient,
    SignalingConnectionError,
    _Attempt,
)
from meshrtc.statechart import MachineError, MachineSpec, machine_of, state_name

from .test_drift import DriftEstimatorBehaviour
from .test_jitter_buffer import JitterBufferModel
from .test_sync import SyncManagerBehaviour

SETTINGS = settings(max_examples=40, stateful_step_count=40, deadline=None)


class Arrows:
    """Every (source, dest) a model's machine takes, seen through the machine's own callbacks."""

    def __init__(self) -> None:
        self.taken: list[tuple[MachineSpec, str, str]] = []
        self._watched: set[int] = set()

    def watch(self, model: object) -> None:
        if id(model) in self._watched:
            return
        self._watched.add(id(model))
        spec, machine = machine_of(model)
        source: list[str] = []

        def before(*_args: object, **_kwargs: object) -> None:
            source.append(state_name(model.state))  # type: ignore[attr-defined]

        def after(*_args: object, **_kwargs: object) -> None:
            self.taken.append((spec, source.pop(), state_name(model.state)))  # type: ignore[attr-defined]

        machine.before_state_change.append(before)
        machine.after_state_change.append(after)

    def check(self) -> None:
        for spec, a, b in self.taken:
            assert (a, b) in {(s, d) for s, d, _ in spec.edges()}, f"{spec.name}: {a} -> {b}"
        self.taken.clear()


def check_trigger(model: Any, trigger: str) -> None:
    """``may_<trigger>()`` is the table plus the guard: no arrow → False and MachineError (state
    unchanged); an arrow → exactly what its guard says (the trigger is not fired: the driver owns
    the entity's real events)."""
    spec, _ = machine_of(model)
    state = model.state
    arrows = [t for t in spec.transitions if t.trigger == trigger and state_name(state) in t.source]
    allowed = model.may_trigger(trigger)
    if not arrows:
        assert allowed is False
        with pytest.raises(MachineError):
            model.trigger(trigger)
        assert model.state is state
        return
    guard = arrows[0].condition
    if guard is None:
        assert allowed is True
        return
    judged = getattr(model, guard)  # a method, or a property (transitions accepts both)
    assert allowed is bool(judged() if callable(judged) else judged)


class MachineChecks(RuleBasedStateMachine):
    """Mixed into a driver of real models; :meth:`models` lists the models it drives."""

    def models(self) -> list[Any]:
        raise NotImplementedError

    def probe_ok(self, model: Any, trigger: str) -> bool:
        """False for a probe whose guard has a side effect in the current situation."""
        return True

    def _arrows(self) -> Arrows:
        arrows: Arrows | None = getattr(self, "_arrows_seen", None)
        if arrows is None:
            arrows = self._arrows_seen = Arrows()
        for model in self.models():
            arrows.watch(model)
        return arrows

    @rule(data=st.data())
    def probe_a_trigger(self, data: st.DataObject) -> None:
        models = self.models()
        if not models:
            return
        model = data.draw(st.sampled_from(models))
        spec, _ = machine_of(model)
        trigger = data.draw(st.sampled_from(spec.triggers()))
        if self.probe_ok(model, trigger):
            check_trigger(model, trigger)

    @invariant()
    def every_arrow_taken_is_drawn(self) -> None:
        self._arrows().check()

    @invariant()
    def states_are_the_spec_enum(self) -> None:
        for model in self.models():
            spec, _ = machine_of(model)
            assert spec.state_enum is not None
            assert isinstance(model.state, spec.state_enum)


# --- the media machines, driven by their behaviour tests ---------------------------------------


class RealJitterBuffer(MachineChecks, JitterBufferModel):
    def models(self) -> list[Any]:
        jb = getattr(self, "jb", None)
        return [] if jb is None else [jb]


class RealClockDriftEstimator(MachineChecks, DriftEstimatorBehaviour):
    def models(self) -> list[Any]:
        return [self.est]

    @invariant()
    def history_ends_in_the_state(self) -> None:
        assert self.est.history[-1] is self.est.state


class RealSyncManager(MachineChecks, SyncManagerBehaviour):
    def models(self) -> list[Any]:
        sm = self.sm
        return [sm, sm.clock_drift_estimator, sm.audio_jitter_buffer, sm.video_jitter_buffer]

    @invariant()
    def the_estimator_reports_to_the_sync_manager(self) -> None:
        est = self.sm.clock_drift_estimator
        assert est.on_transition is not None
        before = set(self.sm._drift_entered)
        est.on_transition(est.state)
        assert est.state in self.sm._drift_entered
        self.sm._drift_entered.clear()
        self.sm._drift_entered.update(before)


TestRealJitterBuffer = RealJitterBuffer.TestCase
TestRealJitterBuffer.settings = SETTINGS
TestRealClockDriftEstimator = RealClockDriftEstimator.TestCase
TestRealClockDriftEstimator.settings = SETTINGS
TestRealSyncManager = RealSyncManager.TestCase
TestRealSyncManager.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)


# --- StreamSession ------------------------------------------------------------------------------


class _Peer:
    def __init__(self, peer_id: str) -> None:
        self._peer_id = peer_id

    @property
    def peer_id(self) -> str:
        return self._peer_id

    async def send_audio(self, samples: Any, timestamp: float | None = None) -> None:
        pass

    async def send_video(self, frame: Any, timestamp: float | None = None) -> None:
        pass

    async def send_data(self, data: Any) -> None:
        pass


class RealStreamSession(MachineChecks):
    """Joins, leaves, outputs in flight, time, close and abort, as the manager and router do them."""

    DRAIN = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.session = StreamSession(
            default_manifest(), drain_timeout=self.DRAIN, clock=lambda: self.now
        )
        self.members: set[str] = set()
        self.first_close_attempt: float | None = None
        self.ever_active = False
        #: The last member left an Active session (and nobody joined since): it must be Paused.
        self.expect_paused = False

    def models(self) -> list[Any]:
        return [self.session]

    def probe_ok(self, model: Any, trigger: str) -> bool:
        # Asking whether a session with outputs in flight may close starts its drain clock.
        return not (trigger == "close" and self.session.pending_outputs)

    @rule()
    def activate(self) -> None:
        if self.session.state is SessionState.Initializing:
            self.session.activate()
            self.ever_active = True
        else:
            with pytest.raises(MachineError):
                self.session.activate()

    @rule(n=st.integers(0, 3))
    def join(self, n: int) -> None:
        pid = f"p{n}"
        if self.session.closed:
            with pytest.raises(SessionError):
                self.session.add_peer(_Peer(pid))
            return
        self.session.add_peer(_Peer(pid))
        self.members.add(pid)
        self.expect_paused = False

    @rule(n=st.integers(0, 3))
    def leave(self, n: int) -> None:
        pid = f"p{n}"
        was_active = self.session.state is SessionState.Active
        assert (self.session.remove_peer(pid) is not None) == (pid in self.members)
        if pid in self.members and len(self.members) == 1 and was_active:
            self.expect_paused = True
        self.members.discard(pid)

    @rule(k=st.integers(0, 3))
    def outputs_in_flight(self, k: int) -> None:
        self.session.pending_outputs = k

    @rule(dt=st.floats(0.0, 0.4))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def close(self) -> None:
        if self.session.closed:
            with pytest.raises(MachineError):
                self.session.close()
            return
        if self.session.pending_outputs and self.first_close_attempt is None:
            self.first_close_attempt = self.now
        expected = self.session.pending_outputs == 0 or (
            self.first_close_attempt is not None
            and self.now - self.first_close_attempt >= self.DRAIN
        )
        assert self.session.close() is expected
        if expected:
            self.members.clear()

    @rule()
    def abort(self) -> None:
        if self.session.may_abort():
            self.session.abort()
            self.members.clear()
        else:
            assert self.session.closed
            with pytest.raises(MachineError):
                self.session.abort()

    @invariant()
    def membership_decides_pause(self) -> None:
        s = self.session
        assert set(s.peers) == self.members
        if s.state is SessionState.Paused or s.closed:
            assert not s.peers
        if s.peers and self.ever_active:
            assert s.state is SessionState.Active
        assert s.accepts_inputs == (s.state is SessionState.Active)
        if not s.closed:
            assert (s.state is SessionState.Paused) == self.expect_paused


TestRealStreamSession = RealStreamSession.TestCase
TestRealStreamSession.settings = SETTINGS


# --- SignalingClient: the reconnect decisions, without sockets --------------------------------


class _ScriptedClient(SignalingClient):
    """Each connection attempt ends as the script says; the loop around it is the real one.

    ``"refused"``: no connection. ``"lost_announcing"``: the WebSocket opened, then closed before
    the announce result. ``"ready"``: announced, then the connection dropped.
    """

    def __init__(self, script: list[str], backoff: Backoff) -> None:
        self.delays: list[float] = []

        async def sleep(delay: float) -> None:
            self.delays.append(delay)
            await trio.lowlevel.checkpoint()

        super().__init__(
            "ws://127.0.0.1:9/", "alice", backoff=backoff, random=lambda: 0.5, sleep=sleep
        )
        self.script = list(script)
        self.attempts = 0
        self.arrows = Arrows()
        self.arrows.watch(self)

    async def _attempt(self, task_status: trio.TaskStatus[AnnounceResult]) -> _Attempt:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else "refused"
        attempt = _Attempt(reason=outcome)
        if outcome == "refused":
            return attempt
        self.opened()
        if outcome == "ready":
            self.announced()
            attempt.ready = True
        return attempt


@given(
    script=st.lists(st.sampled_from(["refused", "lost_announcing", "ready"]), max_size=12),
    tries=st.integers(0, 4),
)
@settings(max_examples=60, deadline=None)
def test_signaling_client_reconnects_then_gives_up_as_its_guard_says(
    script: list[str], tries: int
) -> None:
    backoff = Backoff(tries=tries, initial=0.1, factor=2.0, maximum=1.0, jitter=0.25)
    client = _ScriptedClient(script, backoff)

    async def main() -> None:
        with trio.fail_after(5), pytest.raises(SignalingConnectionError, match="gave up"):
            await client.run()

    trio.run(main)
    # The model of the loop: failures count attempts since the last announce; the client gives
    # up at the attempt that finds ``tries`` failures behind it.
    failures = attempts = readies = 0
    delays: list[float] = []
    for outcome in [*script, *["refused"] * (tries + 2)]:
        attempts += 1
        if outcome == "ready":
            failures = 0
            readies += 1
        if failures >= tries:
            break
        delays.append(backoff.delay(failures, 0.5))
        failures += 1
    assert client.attempts == attempts
    assert client.delays == pytest.approx(delays)
    assert client.state is ClientState.Closed
    assert not client.may_trigger("retry")
    client.arrows.check()
    events = []
    while True:
        try:
            events.append(client.notifications.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    assert sum(isinstance(e, Disconnected) for e in events) == readies
    assert math.isfinite(sum(client.delays))
