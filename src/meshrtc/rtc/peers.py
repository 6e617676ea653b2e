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

Media outlives signaling (docs/security.md): peer-to-peer links need the server only to be built.
After our own re-announce (:class:`Reconnected`) a link that is Connected or Reconnecting is kept,
whether or not its peer is back yet (after a server restart the others re-announce one by one);
``peer.joined`` keeps such a link when the announce names the same client instance
(``incarnation``) and replaces it for a restarted one; ``peer.left`` for a dropped connection (not
a ``peer.disconnect``) drops a Connected link only if the peer is not back within ``settle``
seconds (the hub's resume grace), or as soon as its media stops. While some peer's media flows
the client does not give up reconnecting; the outage shows as :class:`SignalingLost` /
:class:`SignalingRestored`.
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
    DEFAULT_RESUME_GRACE,
    AnnounceResult,
    Answer,
    IceCandidate,
    LeaveReason,
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
    "SignalingLost",
    "SignalingRestored",
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


@attrs.frozen
class SignalingLost:
    """Our signaling connection dropped; the client is retrying. Links that are up stay up, and
    the client does not give up while ``media_flows`` (some peer is Connected)."""

    reason: str
    media_flows: bool


@attrs.frozen
class SignalingRestored:
    """We announced again after ``outage`` seconds; ``kept``: the links that survived it."""

    outage: float
    kept: tuple[str, ...]


PeerEvent: TypeAlias = (
    PeerAdded
    | PeerConnected
    | PeerReconnecting
    | PeerRemoved
    | PeerRefused
    | SignalingLost
    | SignalingRestored
)


class PeerManager:
    """One peer's mesh. Run it with ``manager = await nursery.start(PeerManager(...).run)``.

    ``signaling`` must already be running (``await nursery.start(client.run)``): the manager reads
    its announce result and is the one consumer of its notifications. The manager owns the asyncio
    bridge unless one is given. ``impairments`` (tests only) maps a remote peer id to the adapter
    impairment of the packets received from it. ``settle``: seconds a live link outlives a
    ``peer.left`` that reports a dropped connection (the peer may resume within them).
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
        settle: float = DEFAULT_RESUME_GRACE,
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
        #: The remote client instance each link was built with (None: it announced none).
        self._incarnations: dict[str, str | None] = {}
        #: Peers reported gone by a dropped connection, by the link we hold for them meanwhile.
        self._leaving: dict[str, PeerConnection] = {}
        self.settle = settle
        self._removal_reasons: dict[int, str] = {}
        #: Peers a stray signal came from, logged once each (bounded: cleared when full).
        self._strays: set[str] = set()
        self._events_send, self.events = trio.open_memory_channel[PeerEvent](event_buffer)
        #: Events dropped because nobody read :attr:`events`.
        self.dropped_events = 0
        self._nursery: trio.Nursery | None = None
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._started = False
        # Media that flows needs no signaling: the client must not give up on us meanwhile.
        signaling.keep_trying = self.media_flows

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

    def media_flows(self) -> bool:
        """Some link is Connected (its media has not been silent for ``media_timeout``)."""
        return any(peer.is_connected for peer in self._peers.values())

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
            if peer is not None and not peer.is_live:
                # It gave up (say on an offer it could not answer) and is still closing: a new
                # offer starts a new connection instead of vanishing into the old one.
                self._replace(event.from_peer, "a new offer after it ended")
                peer = None
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
            else:
                self._stray(event.from_peer, "an answer")
        elif isinstance(event, PeerErrorNotice):
            peer = self._peers.get(event.from_peer)
            if peer is not None:
                await peer.handle_signal("error", {"code": event.code, "message": event.message})
            else:
                self._stray(event.from_peer, f"peer.error {event.message[:200]!r}")
        elif isinstance(event, IceCandidate):
            peer = self._peers.get(event.from_peer)
            if peer is not None:
                params = {
                    "candidate": event.candidate,
                    "sdpMid": event.sdp_mid,
                    "sdpMLineIndex": event.sdp_m_line_index,
                }
                await peer.handle_signal("candidate", params)
            else:
                self._stray(event.from_peer, "a candidate")
        elif isinstance(event, PeerJoined):
            info = event.peer
            self._leaving.pop(info.peer_id, None)
            if self._keeps(info):
                log.info("%s: %s announced again; its link is kept", self.local_id, info.peer_id)
                return
            self._replace(info.peer_id, "the peer joined again")
            if self._has_room():
                self._add(info.peer_id, initiator=False, info=info)
            else:
                # Its offers will get the refusal; nothing to hold for it meanwhile.
                self._emit(PeerRefused(info.peer_id, self._full_reason(), by_remote=False))
        elif isinstance(event, PeerLeft):
            self._on_left(event)
        elif isinstance(event, Reconnected):
            await self._rejoin(event.result)
        elif isinstance(event, Disconnected):
            flows = self.media_flows()
            log.info(
                "%s: signaling lost (%s); %s",
                self.local_id,
                event.reason,
                "media continues" if flows else "no media flows",
            )
            self._emit(SignalingLost(event.reason, flows))

    def _keeps(self, info: PeerInfo) -> bool:
        """Whether the link to ``info.peer_id`` survives its announce: alive, and the same client
        instance (a restarted process lost its DTLS state, so its old link cannot carry on)."""
        peer = self._peers.get(info.peer_id)
        if peer is None or not peer.has_link:
            return False
        known = self._incarnations.get(info.peer_id)
        return known is not None and known == info.incarnation

    def _on_left(self, event: PeerLeft) -> None:
        peer = self._peers.get(event.peer_id)
        if (
            peer is None
            or not peer.is_connected  # a link that needs signaling to repair itself is lost
            or event.reason == LeaveReason.DISCONNECT
            or self.settle <= 0
        ):
            self._replace(event.peer_id, f"left the session ({event.reason})")
            return
        # Its signaling dropped, not necessarily its media: it may resume within the grace.
        log.info(
            "%s: %s's signaling dropped (%s); keeping its live link for %.0f s",
            self.local_id,
            event.peer_id,
            event.reason,
            self.settle,
        )
        self._leaving[event.peer_id] = peer
        assert self._nursery is not None
        self._nursery.start_soon(self._settle, peer, event.reason)

    async def _settle(self, peer: PeerConnection, reason: str) -> None:
        await trio.sleep(self.settle)
        if self._leaving.get(peer.peer_id) is peer:
            del self._leaving[peer.peer_id]
            self._replace(
                peer.peer_id, f"left the session ({reason}) and did not come back in time"
            )

    async def _rejoin(self, result: AnnounceResult) -> None:
        """After our re-announce: keep every live link, rebuild the rest, offer to newcomers.

        A peer missing from ``result`` may still be on its way back (a restarted server hears
        from its old members one by one), so its live link stays; a peer listed with another
        incarnation restarted, so it gets a fresh link (we are the newcomer: we offer).
        """
        listed = {info.peer_id: info for info in result.peers}
        kept = []
        for peer_id, peer in list(self._peers.items()):
            info = listed.get(peer_id)
            if peer.has_link and (info is None or self._keeps(info)):
                kept.append(peer_id)
                if info is not None:
                    self._leaving.pop(peer_id, None)  # it is back: no longer on its way out
            else:
                self._replace(peer_id, "our signaling connection was re-established")
        outage = self.signaling.last_outage
        log.info(
            "%s: signaling back after %.1f s; kept %d live links %s",
            self.local_id,
            outage,
            len(kept),
            kept,
        )
        self._emit(SignalingRestored(outage, tuple(kept)))
        await self._join(result)

    async def _join(self, result: AnnounceResult) -> None:
        """Offer to the peers already in the session (in join order), as far as there is room."""
        for info in result.peers:
            if info.peer_id == self.local_id or info.peer_id in self._peers:
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
        self._incarnations[peer_id] = None if info is None else info.incarnation
        self._emit(PeerAdded(peer_id, initiator))
        self._nursery.start_soon(self._run_peer, peer, initiator)
        return peer

    def _replace(self, peer_id: str, reason: str) -> None:
        """Close the connection to ``peer_id`` in the background (a new one may take its place)."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        self._incarnations.pop(peer_id, None)
        self._leaving.pop(peer_id, None)
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
                self._incarnations.pop(peer.peer_id, None)
            if self._leaving.get(peer.peer_id) is peer:
                del self._leaving[peer.peer_id]
            reason = self._removal_reasons.pop(id(peer), None) or peer.failure_reason or "closed"
            if peer.refused:
                self._emit(PeerRefused(peer.peer_id, reason, by_remote=True))
            self._emit(PeerRemoved(peer.peer_id, reason))

    def _on_peer_state(self, peer: PeerConnection, state: str) -> None:
        if self._peers.get(peer.peer_id) is not peer:
            return
        if self._leaving.get(peer.peer_id) is peer and not peer.is_connected:
            # Gone from the session and now from the media path too: nothing left to keep.
            self._replace(peer.peer_id, "left the session and its media stopped")
            return
        if state == "Connected":
            self._emit(PeerConnected(peer.peer_id, peer.stats.reconnects > 0))
        elif state == "Reconnecting":
            self._emit(PeerReconnecting(peer.peer_id, peer.last_loss_reason))

    def _sender(self, peer_id: str) -> Any:
        client = self.signaling
        leaving = self._leaving

        async def send(method: str, params: dict[str, Any]) -> None:
            if peer_id in leaving:
                # The server says the peer is gone: a rebuild offer from its held link would
                # reach whoever announces the id next, a restarted process included.
                raise PeerError(f"{peer_id} left the session; its held link does not signal")
            if method == "offer":
                await client.offer(peer_id, params["sdp"])
            elif method == "answer":
                await client.answer(peer_id, params["sdp"])
            elif method == "error":
                await client.report_error(peer_id, params["code"], params["message"])
            else:
                raise PeerError(f"cannot signal {method!r}")

        return send

    def _stray(self, peer_id: str, what: str) -> None:
        """A signal from a peer we have no connection with: logged once per peer, at debug.

        Harmless (a late message for a connection already closed, or a hostile member's noise),
        so it fails nothing and never floods the log; the signaling server names the sender's
        address in its own stray line.
        """
        if peer_id in self._strays:
            return
        if len(self._strays) >= 256:
            self._strays.clear()
        self._strays.add(peer_id)
        log.debug(
            "%s: %s from %s, with which we have no connection: ignored (not logged again for it)",
            self.local_id,
            what,
            peer_id,
        )

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
