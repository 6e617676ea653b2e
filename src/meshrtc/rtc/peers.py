"""PeerManager: the mesh of one meshrtc peer, one PeerConnection per remote peer (docs/peers.md).

The manager follows the session through its SignalingClient: the announce result lists the peers to
offer to (the newcomer offers, docs/signaling.md), ``peer.joined`` announces a peer that will offer
to us, ``peer.left`` ends its connection, and forwarded offers, answers and candidates go to the
PeerConnection of their sender, which also applies the rebuild rule (lower id offers). Membership
changes come out on :attr:`PeerManager.events` so a session can follow them.

The mesh holds at most ``config.max_peers`` members, ourselves included (never more than 10), so at
most ``max_peers - 1`` PeerConnections. A peer beyond that is refused with an SDP answer that rejects
every section and says why (:func:`~meshrtc.rtc.peer.refusal_sdp`); its PeerConnection fails with
that reason, and no existing connection is touched. Each PeerConnection runs as one task in the
manager's nursery; cancelling the manager closes them all at once, each bounded in time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs
import trio

from meshrtc.config import TransportConfig
from meshrtc.errors import MeshRtcError
from meshrtc.media.frame import FrameType
from meshrtc.media.quality import ConnectionQualityMetrics
from meshrtc.rtc.aiortc_adapter import ImpairmentConfig
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.peer import PeerConnection, PeerError, PeerOptions, refusal_reason, refusal_sdp
from meshrtc.signaling.client import Disconnected, Reconnected, SignalingClient
from meshrtc.signaling.protocol import (
    AnnounceResult,
    Answer,
    IceCandidate,
    Offer,
    PeerErrorNotice,
    PeerInfo,
    PeerJoined,
    PeerLeft,
)

__all__ = [
    "PeerAdded",
    "PeerConnected",
    "PeerEvent",
    "PeerManager",
    "PeerReconnecting",
    "PeerRefused",
    "PeerRemoved",
]

log = logging.getLogger(__name__)


@attrs.frozen
class PeerAdded:
    """A PeerConnection exists for ``peer_id`` (``initiator``: we send the first offer)."""

    peer_id: str
    initiator: bool


@attrs.frozen
class PeerConnected:
    """``peer_id`` reached Connected (``reconnected``: again, after a lost path)."""

    peer_id: str
    reconnected: bool


@attrs.frozen
class PeerReconnecting:
    """``peer_id`` lost its path; its connection is being rebuilt."""

    peer_id: str
    reason: str | None


@attrs.frozen
class PeerRemoved:
    """The PeerConnection of ``peer_id`` ended (left, failed, refused, replaced or closed)."""

    peer_id: str
    reason: str


@attrs.frozen
class PeerRefused:
    """A connection with ``peer_id`` will not exist: a mesh was full (``by_remote``: theirs)."""

    peer_id: str
    reason: str
    by_remote: bool


PeerEvent: TypeAlias = PeerAdded | PeerConnected | PeerReconnecting | PeerRemoved | PeerRefused


class PeerManager:
    """One peer's mesh. Run it with ``manager = await nursery.start(PeerManager(...).run)``.

    ``signaling`` must already be running (``await nursery.start(client.run)``): the manager reads
    its announce result and is the one consumer of its notifications. The manager owns the asyncio
    bridge unless one is given. ``impairments`` (tests only) maps a remote peer id to the adapter
    impairment of the packets received from it.
    """

    def __init__(
        self,
        config: TransportConfig,
        signaling: SignalingClient,
        *,
        bridge: Bridge | None = None,
        options: PeerOptions | None = None,
        impairments: Mapping[str, dict[FrameType, ImpairmentConfig]] | None = None,
        event_buffer: int = 1024,
    ) -> None:
        self.config = config
        self.signaling = signaling
        self.local_id = signaling.peer_id
        self.options = options or PeerOptions()
        self.max_peers = config.max_peers
        self._given_bridge = bridge
        self.bridge: Bridge | None = bridge
        self._impairments = dict(impairments or {})
        self._peers: dict[str, PeerConnection] = {}
        self._removal_reasons: dict[int, str] = {}
        self._events_send, self.events = trio.open_memory_channel[PeerEvent](event_buffer)
        #: Events dropped because nobody read :attr:`events`.
        self.dropped_events = 0
        self._nursery: trio.Nursery | None = None
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._started = False

    # --- queries --------------------------------------------------------------------------------

    @property
    def peers(self) -> Mapping[str, PeerConnection]:
        """Every current PeerConnection by remote peer id (any state)."""
        return dict(self._peers)

    def get_peer(self, peer_id: str) -> PeerConnection | None:
        return self._peers.get(peer_id)

    def list_connected(self) -> list[str]:
        """Remote peer ids whose connection is Connected now, in the order they were added."""
        return [pid for pid, peer in self._peers.items() if peer.is_connected]

    def get_metrics(self, peer_id: str) -> ConnectionQualityMetrics | None:
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.get_metrics()

    @property
    def capacity(self) -> int:
        """How many remote peers the mesh has room for (``max_peers`` counts us too)."""
        return self.max_peers - 1

    def _has_room(self) -> bool:
        return len(self._peers) < self.capacity

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[PeerManager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the session until cancelled, :meth:`aclose`, or the signaling client closes."""
        if self._started:
            raise PeerError("PeerManager.run() starts once")
        self._started = True
        result = self.signaling.announce_result
        if result is None:
            raise PeerError("start the SignalingClient (nursery.start(client.run)) first")
        try:
            with self._cancel:
                async with contextlib.AsyncExitStack() as stack:
                    if self.bridge is None:
                        self.bridge = await stack.enter_async_context(open_bridge())
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        await self._join(result)
                        task_status.started(self)
                        await self._follow()
                        nursery.cancel_scope.cancel()
        finally:
            self._events_send.close()
            self._done.set()

    async def aclose(self) -> None:
        """Close every PeerConnection (concurrently) and the owned bridge; idempotent."""
        self._cancel.cancel()
        if self._started:
            await self._done.wait()

    async def _follow(self) -> None:
        async for event in self.signaling.notifications:
            try:
                await self._on_notification(event)
            except MeshRtcError as err:
                log.warning("%s: handling %r failed: %s", self.local_id, event, err)
        log.info("%s: signaling closed; closing the mesh", self.local_id)

    async def _on_notification(self, event: object) -> None:
        if isinstance(event, Offer):
            peer = self._peers.get(event.from_peer)
            if peer is None:
                if not self._has_room():
                    await self._refuse(event.from_peer)
                    return
                peer = self._add(event.from_peer, initiator=False)
            await peer.handle_signal("offer", {"sdp": event.sdp})
        elif isinstance(event, Answer):
            peer = self._peers.get(event.from_peer)
            if peer is not None:
                await peer.handle_signal("answer", {"sdp": event.sdp})
            elif (reason := refusal_reason(event.sdp)) is not None:
                self._emit(PeerRefused(event.from_peer, reason, by_remote=True))
        elif isinstance(event, PeerErrorNotice):
            peer = self._peers.get(event.from_peer)
            if peer is not None:
                await peer.handle_signal("error", {"code": event.code, "message": event.message})
            else:
                log.info(
                    "%s: peer.error from %s: %s", self.local_id, event.from_peer, event.message
                )
        elif isinstance(event, IceCandidate):
            peer = self._peers.get(event.from_peer)
            if peer is not None:
                params = {
                    "candidate": event.candidate,
                    "sdpMid": event.sdp_mid,
                    "sdpMLineIndex": event.sdp_m_line_index,
                }
                await peer.handle_signal("candidate", params)
        elif isinstance(event, PeerJoined):
            info = event.peer
            self._replace(info.peer_id, "the peer joined again")
            if self._has_room():
                self._add(info.peer_id, initiator=False, info=info)
            else:
                # Its offers will get the refusal; nothing to hold for it meanwhile.
                self._emit(PeerRefused(info.peer_id, self._full_reason(), by_remote=False))
        elif isinstance(event, PeerLeft):
            self._replace(event.peer_id, f"left the session ({event.reason})")
        elif isinstance(event, Reconnected):
            # The server saw us leave and come back: every remote closed its side. Start over as
            # the newcomer, offering to whoever is there now.
            log.info("%s: signaling reconnected; rebuilding the mesh", self.local_id)
            for peer_id in list(self._peers):
                self._replace(peer_id, "our signaling connection was re-established")
            await self._join(event.result)
        elif isinstance(event, Disconnected):
            log.info("%s: signaling lost (%s); media continues", self.local_id, event.reason)

    async def _join(self, result: AnnounceResult) -> None:
        """Offer to the peers already in the session (in join order), as far as there is room."""
        for info in result.peers:
            if info.peer_id == self.local_id:
                continue
            if self._has_room():
                self._add(info.peer_id, initiator=True, info=info)
            else:
                await self._refuse(info.peer_id)

    # --- peers ----------------------------------------------------------------------------------

    def _media(self, info: PeerInfo | None) -> list[str]:
        local = {str(c) for c in self.signaling.capabilities}
        # A peer we know nothing about (its offer came before any view of it): assume ours.
        remote = local if info is None else {str(c) for c in info.capabilities}
        return sorted(local & remote)

    def _add(
        self, peer_id: str, *, initiator: bool, info: PeerInfo | None = None
    ) -> PeerConnection:
        assert self._nursery is not None
        assert self.bridge is not None
        if info is None:
            info = self.signaling.peers.get(peer_id)
        peer = PeerConnection(
            peer_id,
            self.bridge,
            self.config,
            self._sender(peer_id),
            local_id=self.local_id,
            media=self._media(info),
            options=self.options,
            impairments=self._impairments.get(peer_id),
            on_state_change=self._on_peer_state,
            # Its token's grants, as the server tells them (docs/security.md): held on our side.
            send_media=info is None or info.may("subscribe"),
            receive_media=info is None or info.may("publish"),
        )
        self._peers[peer_id] = peer
        self._emit(PeerAdded(peer_id, initiator))
        self._nursery.start_soon(self._run_peer, peer, initiator)
        return peer

    def _replace(self, peer_id: str, reason: str) -> None:
        """Close the connection to ``peer_id`` in the background (a new one may take its place)."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        self._removal_reasons[id(peer)] = reason
        assert self._nursery is not None
        self._nursery.start_soon(peer.aclose)

    async def _run_peer(self, peer: PeerConnection, initiator: bool) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.run)
                if initiator:
                    await peer.offer()
        finally:
            if self._peers.get(peer.peer_id) is peer:
                del self._peers[peer.peer_id]
            reason = self._removal_reasons.pop(id(peer), None) or peer.failure_reason or "closed"
            if peer.refused:
                self._emit(PeerRefused(peer.peer_id, reason, by_remote=True))
            self._emit(PeerRemoved(peer.peer_id, reason))

    def _on_peer_state(self, peer: PeerConnection, state: str) -> None:
        if self._peers.get(peer.peer_id) is not peer:
            return
        if state == "Connected":
            self._emit(PeerConnected(peer.peer_id, peer.stats.reconnects > 0))
        elif state == "Reconnecting":
            self._emit(PeerReconnecting(peer.peer_id, peer.last_loss_reason))

    def _sender(self, peer_id: str) -> Any:
        client = self.signaling

        async def send(method: str, params: dict[str, Any]) -> None:
            if method == "offer":
                await client.offer(peer_id, params["sdp"])
            elif method == "answer":
                await client.answer(peer_id, params["sdp"])
            elif method == "error":
                await client.report_error(peer_id, params["code"], params["message"])
            else:
                raise PeerError(f"cannot signal {method!r}")

        return send

    def _full_reason(self) -> str:
        return f"mesh of {self.local_id} is full ({len(self._peers) + 1} of max_peers={self.max_peers})"

    async def _refuse(self, peer_id: str) -> None:
        reason = self._full_reason()
        log.warning("%s: refusing %s: %s", self.local_id, peer_id, reason)
        self._emit(PeerRefused(peer_id, reason, by_remote=False))
        try:
            await self.signaling.answer(peer_id, refusal_sdp(reason))
        except MeshRtcError as err:
            log.info("%s: could not send the refusal to %s: %s", self.local_id, peer_id, err)

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
            if self.dropped_events == 1:
                log.warning("%s: PeerManager events are not read; dropping", self.local_id)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
