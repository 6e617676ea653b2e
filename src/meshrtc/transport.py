"""WebRtcTransport: the object an application holds (docs/transport.md).

The statechart is declared here, next to where the transport class lives; the class itself, which owns
the root nursery and wires signaling, peers and sessions together, is built on the rtc and session
layers.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sys
import time
from types import TracebackType
from typing import Self

import trio

from meshrtc.config import TransportConfig
from meshrtc.errors import MeshRtcError
from meshrtc.pipeline.manifest import Manifest
from meshrtc.pipeline.runner import PipelineRunner
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.peer import REALTIME_SEND_QUEUE, PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerConnected, PeerManager, PeerRemoved
from meshrtc.session.listener import ListenerFeed
from meshrtc.session.load_monitor import LoadMonitor
from meshrtc.session.manager import RunningSession, SessionManager
from meshrtc.session.shedding import ShedPlan
from meshrtc.signaling.client import ClientState, SignalingClient
from meshrtc.signaling.server import SignalingServer
from meshrtc.signaling.tls import client_context
from meshrtc.statechart import MachineSpec, StatefulModel, register, trigger_stub

__all__ = ["TRANSPORT_MACHINE", "TransportError", "TransportState", "WebRtcTransport"]

log = logging.getLogger(__name__)


class TransportState(enum.StrEnum):
    Created = "Created"
    Connected = "Connected"
    Ready = "Ready"
    Shutdown = "Shutdown"


_T = TransportState

TRANSPORT_MACHINE = register(
    MachineSpec(
        name="WebRtcTransport",
        doc="Created → Connected (signaling) → Ready → Shutdown; shutdown is allowed from any "
        "live state so that cancelling the transport's scope always ends in Shutdown. Connected "
        "needs the signaling client announced (Ready); Ready needs the peer mesh started.",
        states=TransportState,
        initial=_T.Created,
        transitions=(
            ("signaling_connected", _T.Created, _T.Connected, "signaling_announced"),
            ("ready", _T.Connected, _T.Ready, "mesh_started"),
            ("shutdown", (_T.Created, _T.Connected, _T.Ready), _T.Shutdown),
        ),
    )
)


class TransportError(MeshRtcError):
    """The transport was used outside its lifecycle."""


class WebRtcTransport(StatefulModel):
    """What an application holds: signaling, the peer mesh and the sessions, in one root nursery.

    ::

        async with WebRtcTransport(config) as transport:
            await transport.run_session(meshrtc.pipeline.default_manifest())

    Leaving the block (normally, on error, or because an outer scope was cancelled) cancels the root
    nursery: sessions close, every PeerConnection closes (bounded), the signaling WebSocket closes and
    the asyncio bridge thread is joined. :attr:`teardown_seconds` records how long that took.

    By default the transport is a WebSocket client of ``config.signaling_url`` like any member.
    ``hub=server`` runs it instead over a privileged in-process link to a :class:`SignalingServer`
    in the same process (how ``meshrtc serve`` runs): it may take a reserved id such as
    ``meshrtc-server``, and members who flood it are refused and closed rather than getting it
    dropped as a slow consumer (docs/security.md).
    """

    state: TransportState
    signaling_connected = trigger_stub()
    ready = trigger_stub()
    shutdown = trigger_stub()

    def __init__(
        self,
        config: TransportConfig,
        *,
        options: PeerOptions | None = None,
        runner: PipelineRunner | None = None,
        hub: SignalingServer | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        #: The pipeline's output is real time: no send backlog (see ``PeerOptions.audio_send_queue``).
        self.options = options or PeerOptions(audio_send_queue=REALTIME_SEND_QUEUE)
        self.sessions = SessionManager(runner)
        self.signaling: SignalingClient | None = None
        self.peers: PeerManager | None = None
        #: Seconds from entering the block until Ready (signaling joined, mesh started).
        self.connect_seconds: float | None = None
        #: Seconds the teardown took on leaving the block.
        self.teardown_seconds: float | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        #: Lateness of the loop's 20 ms slot ticks and the load-shedding plan it leads to
        #: (meshrtc.session.shedding): sessions' routers follow it; video senders subscribe.
        self.load = LoadMonitor()
        TRANSPORT_MACHINE.build(self)

    @property
    def peer_id(self) -> str:
        if self.signaling is None:
            raise TransportError("the transport is not running")
        return self.signaling.peer_id

    @property
    def signaling_state(self) -> ClientState | None:
        """The signaling client's state: Reconnecting during an outage, which the links and the
        sessions ride out (docs/security.md, "Media outlives signaling"); None before it runs."""
        return None if self.signaling is None else self.signaling.state

    @property
    def signaling_outage(self) -> float:
        """Seconds the current signaling outage has lasted (0.0 while connected)."""
        since = None if self.signaling is None else self.signaling.down_since
        return 0.0 if since is None else trio.current_time() - since

    # --- guards ------------------------------------------------------------------------------

    def signaling_announced(self) -> bool:
        return self.signaling is not None and self.signaling.state is ClientState.Ready

    def mesh_started(self) -> bool:
        return self.peers is not None

    async def __aenter__(self) -> Self:
        if self.state is not _T.Created:
            raise TransportError(f"a transport runs once (state {self.state})")
        started = time.monotonic()
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            bridge = await stack.enter_async_context(open_bridge())
            inner = await stack.enter_async_context(trio.open_nursery())
            self._nursery = inner
            await inner.start(self.load.run)
            cafile = self.config.signaling_cafile
            client = SignalingClient(
                self.config.signaling_url,
                self.config.peer_id,
                session_id=self.config.session_id,
                ssl_context=None if cafile is None else client_context(cafile),
                token=self.config.auth_token,
                backoff=self.config.signaling_backoff,
                connector=None if self.hub is None else self.hub.connect_local,
            )
            # ``start`` returns once the client announced (or raises); the guard checks it did.
            await inner.start(client.run)
            self.signaling = client
            if not self.signaling_connected():
                raise TransportError(f"signaling is not announced ({client.state})")
            manager = PeerManager(self.config, client, bridge=bridge, options=self.options)
            self.peers = await inner.start(manager.run)
            self.ready()
        except BaseException:
            self.shutdown()
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        self.connect_seconds = time.monotonic() - started
        log.info("transport %s ready in %.0f ms", client.peer_id, 1000 * self.connect_seconds)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        started = time.monotonic()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        try:
            if stack is not None:
                return await stack.__aexit__(exc_type, exc, tb)
            return None
        finally:
            self.teardown_seconds = time.monotonic() - started
            self.fire_if_taken("shutdown")  # unless __aenter__ failed and shut it down already
            log.info("transport shut down in %.1f ms", 1000 * self.teardown_seconds)

    async def run_session(
        self,
        manifest: Manifest,
        *,
        session_id: str | None = None,
        task_status: trio.TaskStatus[RunningSession] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``manifest`` for every connected peer until cancelled (or the mesh ends).

        Peers join the session when their connection reaches Connected and leave when it ends. Use
        ``await nursery.start(transport.run_session, manifest)`` to get the :class:`RunningSession`.
        """
        manager = self.peers
        if manager is None or self.state is not _T.Ready:
            raise TransportError(f"run_session needs a Ready transport (state {self.state})")
        async with self.sessions.open_session(
            manifest, session_id=session_id or self.config.session_id
        ) as running:
            unsubscribe = self.load.subscribe(running.router.apply_plan)
            # The send side: every member's outgoing video follows the plan too (new ones in _join).
            unsubscribe_video = self.load.subscribe(self._shed_video)
            try:
                for pid in manager.list_connected():
                    self._join(running, pid)
                task_status.started(running)
                async for event in manager.events:
                    if isinstance(event, PeerConnected):
                        self._join(running, event.peer_id)
                    elif isinstance(event, PeerRemoved):
                        running.remove_peer(event.peer_id)
            finally:
                unsubscribe()
                unsubscribe_video()

    def _shed_video(self, plan: ShedPlan) -> None:
        """Apply ``plan`` to every connected member's outgoing video (load monitor listener: does
        not block)."""
        manager = self.peers
        if manager is None:
            return
        for peer_id in manager.list_connected():
            peer = manager.get_peer(peer_id)
            if peer is not None:
                _shed_peer_video(peer, plan)

    def _join(self, running: RunningSession, peer_id: str) -> None:
        assert self.peers is not None
        peer = self.peers.get_peer(peer_id)
        if peer is None or peer_id in running.session.peers:
            return
        _shed_peer_video(peer, self.load.shedder.plan)
        if peer.audio and peer.send_media and not peer.receive_media:
            # May listen, not publish: present in the pipeline as silence, so it gets its mix.
            running.add_peer(peer, ListenerFeed(peer_id, peer.received))
            return
        running.add_peer(peer, peer.received)


def _shed_peer_video(peer: PeerConnection, plan: ShedPlan) -> None:
    if peer.video and peer.receive_media:
        # Receive side: at VIDEO_OFF the router drops every picture, so none is decoded either.
        peer.set_video_decode(plan.video)
    if peer.video and peer.send_media:
        peer.set_video_plan(
            bitrate_scale=plan.video_bitrate_scale,
            framerate_scale=plan.video_framerate_scale,
            video=plan.video,
        )
