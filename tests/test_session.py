"""StreamSession + SessionRouter: lifecycle, routing, isolation (test doubles for peers)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshrtc.pipeline import Audio, Json, RunStats, Text, default_manifest
from meshrtc.pipeline.data import RuntimeData
from meshrtc.pipeline.runner import PipelineStream
from meshrtc.rtc.events import ReceivedAudio, ReceivedData
from meshrtc.session import SessionManager, SessionRouter, StreamSession
from meshrtc.session.router import GRID_SECONDS
from meshrtc.session.stream import SessionState


class FakePeer:
    """Records what the router sends it."""

    def __init__(self, peer_id: str) -> None:
        self._peer_id = peer_id
        self.audio: list[np.ndarray[Any, Any]] = []
        self.video: list[object] = []
        self.data: list[object] = []

    @property
    def peer_id(self) -> str:
        return self._peer_id

    async def send_audio(
        self, samples: np.ndarray[Any, Any], timestamp: float | None = None
    ) -> None:
        self.audio.append(samples)

    async def send_video(self, frame: Any, timestamp: float | None = None) -> None:
        self.video.append(frame)

    async def send_data(self, data: Any) -> None:
        self.data.append(data)


def _stream() -> tuple[PipelineStream, trio.MemoryReceiveChannel[RuntimeData]]:
    send_in, recv_in = trio.open_memory_channel[RuntimeData](math.inf)
    _send_out, recv_out = trio.open_memory_channel[RuntimeData](math.inf)
    stream = PipelineStream(
        inputs=send_in, outputs=recv_out, stats=RunStats(), manifest=default_manifest()
    )
    return stream, recv_in


def _audio(peer: str, t: float, n: int = 960) -> ReceivedAudio:
    return ReceivedAudio(
        peer_id=peer,
        samples=np.zeros((n, 1), np.float32),
        sample_rate=48_000,
        channels=1,
        sender_time=None,
        local_time=t,
    )


def test_close_waits_for_pending_outputs_then_times_out() -> None:
    now = [0.0]
    session = StreamSession(default_manifest(), drain_timeout=0.5, clock=lambda: now[0])
    session.activate()
    session.pending_outputs = 2
    assert session.close() is False
    assert session.state == "Active"
    now[0] = 0.4
    assert session.close() is False
    now[0] = 0.6
    assert session.close() is True
    assert session.state == "Closed"


def test_abort_closes_with_outputs_pending() -> None:
    session = StreamSession(default_manifest())
    session.activate()
    session.pending_outputs = 1
    assert session.close() is False
    assert session.may_abort()
    session.abort()
    assert session.closed
    assert not session.may_abort()


def test_last_member_leaving_pauses_and_a_joiner_resumes() -> None:
    session = StreamSession(default_manifest())
    session.activate()
    session.add_peer(FakePeer("a"))
    session.add_peer(FakePeer("b"))
    session.remove_peer("a")
    assert session.accepts_inputs
    session.remove_peer("b")
    assert session.state is SessionState.Paused
    assert not session.accepts_inputs
    session.add_peer(FakePeer("c"))
    assert session.state is SessionState.Active


def test_session_ids_unique() -> None:
    ids = {StreamSession(default_manifest()).session_id for _ in range(50)}
    assert len(ids) == 50


def test_grid_aligns_peers_and_is_strictly_increasing() -> None:
    stream, _ = _stream()
    router = SessionRouter(StreamSession(default_manifest()), stream)
    a = [router.grid_timestamp("a", 10.0 + i * GRID_SECONDS + 0.003) for i in range(5)]
    b = [router.grid_timestamp("b", 10.0 + i * GRID_SECONDS - 0.004) for i in range(5)]
    assert a == b
    # Two frames presented within the same slot still get distinct, increasing timestamps.
    c1 = router.grid_timestamp("c", 20.0)
    c2 = router.grid_timestamp("c", 20.001)
    assert c2 > c1


async def test_audio_is_converted_without_copy() -> None:
    stream, recv_in = _stream()
    session = StreamSession(default_manifest())
    session.activate()
    session.add_peer(FakePeer("a"))
    router = SessionRouter(session, stream)
    item = _audio("a", 1.0)
    assert await router.accept(item, stream.inputs)
    data = recv_in.receive_nowait()
    assert isinstance(data, Audio)
    assert np.shares_memory(data.samples, item.samples)
    assert data.samples.shape == (960,)


async def test_manager_runs_mixminus_and_data_echo() -> None:
    manager = SessionManager()
    peers = {p: FakePeer(p) for p in ("a", "b")}
    feeds = {p: trio.open_memory_channel[Any](100) for p in peers}
    with trio.fail_after(10):
        async with manager.open_session(default_manifest(), session_id="s1") as running:
            assert manager.get_session("s1") is running
            assert [s.session_id for s in manager.list_active()] == ["s1"]
            for p, peer in peers.items():
                running.add_peer(peer, feeds[p][1])
            base = time.monotonic()  # presented now: the session manager drops stale media
            for i in range(10):
                for p in peers:
                    await feeds[p][0].send(_audio(p, base + i * GRID_SECONDS))
            await feeds["a"][0].send(ReceivedData(peer_id="a", data="hello", local_time=5.0))
            # Polling bounded by fail_after: outputs arrive asynchronously through the pipeline.
            while not (peers["a"].data and all(len(x.audio) >= 5 for x in peers.values())):  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert running.session.state == "Closed"
    assert manager.list_active() == []
    assert "hello" in peers["a"].data
    assert running.session.input_seq == 21
    assert running.session.output_seq >= 10


class SessionsMachine(RuleBasedStateMachine):
    """Random join/leave/close across two sessions with separate streams; membership pauses and
    resumes a session (the last member leaving pauses it, a member joining resumes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.sessions: dict[str, StreamSession] = {}
        self.routers: dict[str, SessionRouter] = {}
        self.recv: dict[str, trio.MemoryReceiveChannel[RuntimeData]] = {}
        self.peers: dict[str, FakePeer] = {}
        self.member: dict[str, str] = {}  # peer -> session
        for sid in ("s1", "s2"):
            stream, recv_in = _stream()
            session = StreamSession(default_manifest(), session_id=sid, clock=lambda: self.t)
            session.activate()
            self.sessions[sid] = session
            # The router's clock is the items' clock: it places late items by their arrival.
            self.routers[sid] = SessionRouter(session, stream, clock=lambda: self.t)
            self.recv[sid] = recv_in
        self.expected_inputs = {"s1": 0, "s2": 0}

    @rule(sid=st.sampled_from(["s1", "s2"]), n=st.integers(0, 5))
    def join(self, sid: str, n: int) -> None:
        pid = f"p{n}"
        if pid in self.member or self.sessions[sid].state == "Closed":
            return
        peer = self.peers.setdefault(pid, FakePeer(pid))
        self.sessions[sid].add_peer(peer)
        self.member[pid] = sid

    @rule(n=st.integers(0, 5))
    def leave(self, n: int) -> None:
        pid = f"p{n}"
        sid = self.member.pop(pid, None)
        if sid is not None:
            assert self.sessions[sid].remove_peer(pid) is not None

    @rule(sid=st.sampled_from(["s1", "s2"]))
    def close(self, sid: str) -> None:
        session = self.sessions[sid]
        if session.state != "Closed":
            assert session.close() is True  # nothing pending between rules
            for pid in [p for p, s in self.member.items() if s == sid]:
                del self.member[pid]

    @rule(n=st.integers(0, 5))
    def feed(self, n: int) -> None:
        pid = f"p{n}"
        self.t += GRID_SECONDS
        sid = self.member.get(pid)
        if sid is None:
            return
        router = self.routers[sid]
        ok = trio.run(router.accept, _audio(pid, self.t), router.stream.inputs)
        assert ok == (self.sessions[sid].state == "Active")
        if ok:
            self.expected_inputs[sid] += 1

    @precondition(lambda self: any(s.state == "Active" for s in self.sessions.values()))
    @rule(data=st.data(), broadcast=st.booleans())
    def output(self, data: st.DataObject, broadcast: bool) -> None:
        sid = data.draw(
            st.sampled_from([s for s, x in self.sessions.items() if x.state == "Active"])
        )
        members = [p for p, s in self.member.items() if s == sid]
        if not members:
            return
        target = None if broadcast else data.draw(st.sampled_from(members))
        before = {p: len(self.peers[p].data) for p in self.peers}
        trio.run(self.routers[sid].deliver, Json(value={"n": 1}, to_peer=target))
        for p, peer in self.peers.items():
            got = len(peer.data) - before[p]
            should = p in members and (target is None or target == p)
            assert got == (1 if should else 0), (p, sid, target)

    @invariant()
    def isolated_inputs(self) -> None:
        for sid, recv in self.recv.items():
            while True:
                try:
                    item = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                assert item.peer_id is not None
                self.expected_inputs[sid] -= 1
            assert self.expected_inputs[sid] == 0
            assert self.sessions[sid].pending_outputs == 0

    @invariant()
    def members_match(self) -> None:
        for sid, session in self.sessions.items():
            assert set(session.peers) == {p for p, s in self.member.items() if s == sid}

    @invariant()
    def membership_decides_pause(self) -> None:
        for session in self.sessions.values():
            if session.peers:
                assert session.state is SessionState.Active
            if session.state is SessionState.Paused:
                assert not session.peers


TestSessionsMachine = SessionsMachine.TestCase
TestSessionsMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


async def test_stale_media_is_dropped_data_never() -> None:
    """After a stall, media presented longer ago than max_input_age is dropped (real time), not fed
    late; data messages always go through."""
    stream, recv_in = _stream()
    session = StreamSession(default_manifest())
    session.activate()
    session.add_peer(FakePeer("a"))
    now = [10.0]
    router = SessionRouter(session, stream, max_input_age=0.25, clock=lambda: now[0])
    assert await router.accept(_audio("a", 9.8), stream.inputs)  # 200 ms old: fed
    assert not await router.accept(_audio("a", 9.7), stream.inputs)  # 300 ms old: stale
    assert await router.accept(ReceivedData(peer_id="a", data="hi", local_time=1.0), stream.inputs)
    assert router.statistics().stale_dropped == {"a": 1}
    assert router.statistics().frames_in == {"a": 2}
    fed = [recv_in.receive_nowait() for _ in range(2)]
    assert [type(x).__name__ for x in fed] == ["Audio", "Text"]


class StuckPeer(FakePeer):
    """A peer whose data channel is reopening: ``send_data`` waits until ``reopen`` is set."""

    def __init__(self, peer_id: str) -> None:
        super().__init__(peer_id)
        self.reopen = trio.Event()

    async def send_data(self, data: Any) -> None:
        await self.reopen.wait()
        await super().send_data(data)


async def test_a_peer_waiting_for_its_data_channel_holds_back_nobody() -> None:
    send_out, recv_out = trio.open_memory_channel[RuntimeData](math.inf)
    send_in, _recv_in = trio.open_memory_channel[RuntimeData](math.inf)
    stream = PipelineStream(
        inputs=send_in, outputs=recv_out, stats=RunStats(), manifest=default_manifest()
    )
    session = StreamSession(default_manifest())
    session.activate()
    stuck, fine = StuckPeer("stuck"), FakePeer("fine")
    session.add_peer(stuck)
    session.add_peer(fine)
    router = SessionRouter(session, stream)
    samples = np.zeros(960, np.float32)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.route_to_peers)
            for i in range(3):
                await send_out.send(Text(text=f"m{i}", to_peer="stuck"))
            await send_out.send(Text(text="hello", to_peer="fine"))
            await send_out.send(Audio(samples=samples, to_peer=None, timestamp=0.0))
            # Everything but the stuck peer's messages arrives while they wait.
            while not (fine.data and len(fine.audio) == 1 and len(stuck.audio) == 1):  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert fine.data == ["hello"]
            assert stuck.data == []
            assert session.pending_outputs == 3
            stuck.reopen.set()
            send_out.close()
        # The channel reopened: its messages went out, in order, and nothing is pending.
    assert stuck.data == ["m0", "m1", "m2"]
    assert session.pending_outputs == 0
    assert router.statistics().frames_out == {"stuck": 4, "fine": 2}
