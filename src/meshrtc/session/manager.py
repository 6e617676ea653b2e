"""SessionManager: the sessions a transport runs, by id.

Each session gets its own pipeline run and router inside ``open_session``; nothing is shared between
sessions except the stateless :class:`PipelineRunner`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshrtc.pipeline.manifest import Manifest
from meshrtc.pipeline.runner import PipelineRunner
from meshrtc.rtc.events import ReceivedMedia
from meshrtc.session.router import MAX_INPUT_AGE, SessionRouter
from meshrtc.session.stream import SessionError, SessionPeer, StreamSession

__all__ = ["RunningSession", "SessionManager"]

logger = logging.getLogger(__name__)


class RunningSession:
    """A live session: the StreamSession, its router, and the nursery that runs the peers' feeds."""

    def __init__(
        self, session: StreamSession, router: SessionRouter, nursery: trio.Nursery
    ) -> None:
        self.session = session
        self.router = router
        self._nursery = nursery
        self._peer_scopes: dict[str, trio.CancelScope] = {}

    def add_peer(
        self, peer: SessionPeer, received: trio.abc.ReceiveChannel[ReceivedMedia] | None = None
    ) -> None:
        """Join ``peer``; with ``received`` its media is fed into the pipeline."""
        self.session.add_peer(peer)
        if received is not None:
            scope = trio.CancelScope()
            self._peer_scopes[peer.peer_id] = scope

            async def feed() -> None:
                with scope:
                    await self.router.route_to_pipeline(received)

            self._nursery.start_soon(feed)

    def remove_peer(self, peer_id: str) -> None:
        self.session.remove_peer(peer_id)
        scope = self._peer_scopes.pop(peer_id, None)
        if scope is not None:
            scope.cancel()


class SessionManager:
    """Sessions by id; ``open_session`` runs one for the duration of an ``async with`` block."""

    def __init__(self, runner: PipelineRunner | None = None, *, drain_timeout: float = 0.5) -> None:
        self.runner = runner or PipelineRunner()
        self.drain_timeout = drain_timeout
        self._sessions: dict[str, RunningSession] = {}

    def get_session(self, session_id: str) -> RunningSession | None:
        return self._sessions.get(session_id)

    def list_active(self) -> list[StreamSession]:
        return [r.session for r in self._sessions.values() if not r.session.closed]

    @asynccontextmanager
    async def open_session(
        self, manifest: Manifest, *, session_id: str | None = None
    ) -> AsyncIterator[RunningSession]:
        session = StreamSession(manifest, session_id=session_id, drain_timeout=self.drain_timeout)
        if session.session_id in self._sessions:
            raise SessionError(f"session {session.session_id} already exists")
        try:
            async with self.runner.execute_streaming(manifest) as stream:
                router = SessionRouter(session, stream, max_input_age=MAX_INPUT_AGE)
                async with trio.open_nursery() as nursery:
                    running = RunningSession(session, router, nursery)
                    self._sessions[session.session_id] = running
                    nursery.start_soon(router.route_to_peers)
                    session.activate()
                    try:
                        yield running
                    finally:
                        # Give in-flight outputs their bounded drain, then close through the
                        # guard; if they did not drain in time, the teardown aborts.
                        with trio.move_on_after(session.drain_timeout) as drain:
                            drain.shield = True
                            await router.wait_drained()
                        if not session.close():
                            session.abort()
                        nursery.cancel_scope.cancel()
        finally:
            if session.may_abort():
                session.abort()
            self._sessions.pop(session.session_id, None)
            logger.debug("session %s closed: %r", session.session_id, session)
