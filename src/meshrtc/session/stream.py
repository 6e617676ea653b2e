"""StreamSession: one pipeline run shared by the peers of a session (spec/data-model.md).

The statechart is declared here, where the StreamSession class lives. A session only becomes
Active with a validated manifest, and only closes once its pending outputs drained or timed out.
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from meshrtc.errors import MeshRtcError
from meshrtc.pipeline.manifest import Manifest
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub


class SessionState(enum.StrEnum):
    Initializing = "Initializing"
    Active = "Active"
    Paused = "Paused"
    Closed = "Closed"


_S = SessionState

STREAM_SESSION_MACHINE = register(
    MachineSpec(
        name="StreamSession",
        doc="Initializing → Active → [Paused ⇄ Active] → Closed (spec/data-model.md). A session "
        "pauses when its last member leaves and resumes when a member joins; `abort` is the "
        "teardown that closes without waiting any longer for outputs.",
        states=SessionState,
        initial=_S.Initializing,
        transitions=(
            ("activate", _S.Initializing, _S.Active),
            ("pause", _S.Active, _S.Paused),
            ("resume", _S.Paused, _S.Active),
            # Spec: "cannot close session with pending outputs". The guard is the session's own
            # judgement: outputs drained, or the bounded drain timeout passed.
            ("close", (_S.Initializing, _S.Active, _S.Paused), _S.Closed, "outputs_drained"),
            ("abort", (_S.Initializing, _S.Active, _S.Paused), _S.Closed),
        ),
    )
)


class SessionError(MeshRtcError):
    """A session was used outside its lifecycle (a peer added to a closed session, ...)."""


@runtime_checkable
class SessionPeer(Protocol):
    """The few PeerConnection methods a session calls, so unit tests can use doubles."""

    @property
    def peer_id(self) -> str: ...

    async def send_audio(
        self, samples: npt.NDArray[np.float32], timestamp: float | None = None
    ) -> None: ...

    async def send_video(self, frame: Any, timestamp: float | None = None) -> None: ...

    async def send_data(self, data: Any) -> None: ...


_session_ids = itertools.count(1)


class StreamSession(StatefulModel):
    """One pipeline run and the peers it serves.

    The session holds bookkeeping only (peers, sequence counters, pending outputs); the router moves
    the data. Closing is guarded: while outputs taken from the pipeline are still on their way to
    peers, ``close()`` returns False until they drained or ``drain_timeout`` passed since the first
    attempt, so a user never loses the tail of a reply by closing early, and never hangs on a dead peer.
    Membership drives pause/resume: the last member leaving pauses the session (inputs are refused),
    a member joining a paused session resumes it.
    """

    state: SessionState
    activate = trigger_stub()
    pause = trigger_stub()
    resume = trigger_stub()
    close = trigger_stub()
    abort = trigger_stub()
    may_abort = trigger_stub()

    def __init__(
        self,
        manifest: Manifest,
        *,
        session_id: str | None = None,
        drain_timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id or f"session-{next(_session_ids)}-{uuid.uuid4().hex[:8]}"
        self.manifest = manifest
        self.drain_timeout = drain_timeout
        self._clock = clock
        self.peers: dict[str, SessionPeer] = {}
        self.input_seq = 0
        self.output_seq = 0
        self.pending_outputs = 0
        self._close_requested_at: float | None = None
        STREAM_SESSION_MACHINE.build(self)

    # -- guard ------------------------------------------------------------------------------------
    def outputs_drained(self) -> bool:
        if self.pending_outputs == 0:
            return True
        now = self._clock()
        if self._close_requested_at is None:
            self._close_requested_at = now
        return now - self._close_requested_at >= self.drain_timeout

    def on_enter_Closed(self) -> None:  # noqa: N802  (transitions' callback naming)
        # A closed session holds no peers: the transport may reuse them elsewhere.
        self.peers.clear()

    # -- peers ------------------------------------------------------------------------------------
    def add_peer(self, peer: SessionPeer) -> None:
        if self.closed:
            raise SessionError(f"session {self.session_id} is closed; cannot add {peer.peer_id}")
        self.peers[peer.peer_id] = peer
        if self.state is _S.Paused:
            self.resume()

    def remove_peer(self, peer_id: str) -> SessionPeer | None:
        peer = self.peers.pop(peer_id, None)
        if peer is not None and not self.peers and self.state is _S.Active:
            self.pause()
        return peer

    @property
    def accepts_inputs(self) -> bool:
        return self.state is _S.Active

    @property
    def closed(self) -> bool:
        return self.state is _S.Closed

    def __repr__(self) -> str:
        return (
            f"<StreamSession {self.session_id} {self.state} peers={len(self.peers)} "
            f"in={self.input_seq} out={self.output_seq} pending={self.pending_outputs}>"
        )
