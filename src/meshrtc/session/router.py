"""SessionRouter: peers' received media into the pipeline, pipeline outputs back to peers.

Alignment: MixMinus windows frames by ``timestamp``, so frames of different peers presented at the
same instant must carry the same timestamp. Each PeerConnection's SyncManager already presents media
on the common monotonic timeline (``local_time``), so the router snaps every audio frame's
``local_time`` onto a 20 ms grid shared by the whole session (``meshrtc.session.grid.SessionGrid``):
each peer's slots strictly increase, a peer may run at most 40 ms (for at most 200 ms) ahead of its
own time, and a peer whose timeline jumped back is re-anchored by dropping the frames its timeline
presents twice (counted in ``grid_dropped``), instead of staying ahead for good. A frame that reaches
the router more than 20 ms after its presentation time is placed as if presented 20 ms before it
arrived, so the mix is stamped with a time it can still be sent at.
``meshrtc.media.sync.collect_aligned_frames`` groups *SyncManager items* by sender wall clock; here
the items come already presented and decoded from ``PeerConnection.received``, so the grid does the
same job on the timeline they carry without re-buffering them.

Added latency: every audio frame enters the pipeline with its packet's arrival (``Audio.arrived_at``)
and a mix leaves with the newest arrival among the frames it sums (MixMinus; the receiver's own
frame is not among them). When it leaves for its peer, ``now - arrived_at`` is what this process
added (jitter buffer, decode, pipeline, routing) to the audio that peer hears, at most what any
frame in that mix spent here, so never more than its end-to-end latency. (It used to be the
earliest arrival of any frame snapped onto the output's slot: the receiver's own included, and for a
mix MixMinus had moved to another slot, frames it did not carry; the demo showed "transport adds"
above the end-to-end figure.) The router keeps the recent values (seconds) for metrics and the
benchmark: ``statistics().added_latency``.

Counters: the router alone changes its counters; readers take a frozen snapshot with
:meth:`SessionRouter.statistics` (as trio's channels do), never the live fields.

Staleness: media is real time. After a stall (a busy process, a slow node) the peers' items queue
up in front of the pipeline, and since they keep arriving at the rate the pipeline can take, such a
backlog never drains: every later frame would carry the stall. With ``max_input_age`` set (the
session manager sets :data:`MAX_INPUT_AGE`), audio and video presented longer ago than that are
dropped and counted in ``stale_dropped`` instead; MixMinus then mixes without them and the session
is back to real time. Data messages are never dropped.

Load shedding: :meth:`SessionRouter.apply_plan` follows the transport's
:class:`~meshrtc.session.load_monitor.LoadMonitor`; while its plan turns video off, members'
pictures are dropped on arrival (``shed_video``) so the pipeline's video work stops first and the
audio keeps the CPU (``meshrtc.session.shedding``).

Isolation: a router belongs to exactly one session and one pipeline stream; it clones the stream's
input per peer and never shares a channel with another session.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import trio

from meshrtc.pipeline.data import Audio, Binary, Json, RuntimeData, Text, Video
from meshrtc.pipeline.runner import PipelineStream
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.session.grid import GRID_SECONDS, SessionGrid
from meshrtc.session.shedding import ShedPlan
from meshrtc.session.stream import SessionPeer, StreamSession

__all__ = ["GRID_SECONDS", "MAX_INPUT_AGE", "RouterStatistics", "SessionRouter", "to_runtime"]

logger = logging.getLogger(__name__)

#: Audio or video presented longer ago than this (seconds) is stale (module docstring).
MAX_INPUT_AGE = 0.25
#: Data messages that may wait for one peer (its channel reopening) before more are dropped.
DATA_QUEUE = 256
#: Added-latency samples kept.
_LATENCY_SAMPLES = 5000
#: A picture takes its peer's audio grid shift only if that audio is this close to it (seconds).
_AUDIO_SHIFT_SPAN = 0.5


def to_runtime(item: ReceivedMedia, timestamp: float) -> RuntimeData:
    """Convert one received item to pipeline data without copying samples."""
    if isinstance(item, ReceivedAudio):
        samples = item.samples
        if samples.dtype != np.float32:
            samples = samples.astype(np.float32)
        return Audio(
            samples=samples.reshape(-1),
            sample_rate=item.sample_rate,
            channels=item.channels,
            peer_id=item.peer_id,
            timestamp=timestamp,
            arrived_at=item.received_at,
        )
    if isinstance(item, ReceivedVideo):
        return Video(frame=item.frame, peer_id=item.peer_id, timestamp=timestamp)
    if isinstance(item, ReceivedData):
        if isinstance(item.data, str):
            return Text(text=item.data, peer_id=item.peer_id, timestamp=timestamp)
        return Binary(data=item.data, peer_id=item.peer_id, timestamp=timestamp)
    raise TypeError(f"unknown received item {type(item).__name__}")


@attrs.frozen
class RouterStatistics:
    """What a :class:`SessionRouter` counted, at one instant (:meth:`SessionRouter.statistics`).

    Per-peer mappings are keyed by peer id; ``added_latency`` holds the recent added-latency
    samples, in seconds, oldest first (module docstring).
    """

    frames_in: Mapping[str, int]
    frames_out: Mapping[str, int]
    stale_dropped: Mapping[str, int]
    grid_dropped: Mapping[str, int]
    send_errors: int
    inputs_dropped: int
    outputs_unroutable: int
    added_latency: tuple[float, ...]
    #: Pictures per peer dropped on arrival while load shedding turned video off.
    shed_video: Mapping[str, int] = attrs.field(factory=dict)


class SessionRouter:
    """Moves data between one session's peers and its pipeline stream."""

    def __init__(
        self,
        session: StreamSession,
        stream: PipelineStream,
        *,
        max_input_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.stream = stream
        self.max_input_age = max_input_age
        self._clock = clock
        #: Audio/video items per peer dropped as stale (see the module docstring).
        self._stale_dropped: dict[str, int] = {}
        #: The session's slots (sans-IO: see meshrtc.session.grid).
        self.grid = SessionGrid(GRID_SECONDS)
        #: Audio frames per peer the grid dropped to re-anchor a peer whose timeline jumped back.
        self._grid_dropped: dict[str, int] = {}
        #: Items per peer that reached the pipeline / that the router sent to the peer.
        self._frames_in: dict[str, int] = {}
        self._frames_out: dict[str, int] = {}
        #: Peers' sends that raised, and data messages dropped because the peer's queue was full.
        self._send_errors = 0
        #: Items refused because the session was not Active (paused, initializing, closed) or did
        #: not hold their peer.
        self._inputs_dropped = 0
        #: Outputs addressed to a peer the session does not hold (left before its reply).
        self._outputs_unroutable = 0
        self._drained: trio.Event | None = None
        #: Per peer: grid timestamp minus local time of its newest audio frame, and that local time.
        self._audio_shift: dict[str, tuple[float, float]] = {}
        #: Seconds from a packet's arrival to the output of its slot leaving (audio; see module doc).
        self._added_latency: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        #: False while load shedding turned video off (``apply_plan``): pictures are dropped on
        #: arrival, counted per peer, and the pipeline's video nodes idle.
        self.accept_video = True
        self._shed_video: dict[str, int] = {}

    def statistics(self) -> RouterStatistics:
        """A frozen snapshot of the router's counters (only the router changes them)."""
        return RouterStatistics(
            frames_in=dict(self._frames_in),
            frames_out=dict(self._frames_out),
            stale_dropped=dict(self._stale_dropped),
            grid_dropped=dict(self._grid_dropped),
            send_errors=self._send_errors,
            inputs_dropped=self._inputs_dropped,
            outputs_unroutable=self._outputs_unroutable,
            added_latency=tuple(self._added_latency),
            shed_video=dict(self._shed_video),
        )

    def apply_plan(self, plan: ShedPlan) -> None:
        """Follow the load shedder (a :class:`~meshrtc.session.load_monitor.LoadMonitor`
        listener): no video into the pipeline while the plan turns it off."""
        if self.accept_video != plan.video:
            logger.info(
                "session %s: %s members' video (load shedding)",
                self.session.session_id,
                "routing" if plan.video else "dropping",
            )
        self.accept_video = plan.video

    async def wait_drained(self) -> None:
        """Return once no output taken from the pipeline is still on its way to a peer."""
        while self.session.pending_outputs:
            self._drained = trio.Event()
            await self._drained.wait()

    def grid_timestamp(self, peer_id: str, local_time: float) -> float | None:
        """Snap ``local_time`` onto the session grid (None: the frame is dropped to re-anchor the
        peer; see :class:`~meshrtc.session.grid.SessionGrid`)."""
        return self.grid.timestamp(peer_id, local_time)

    def convert(self, item: ReceivedMedia) -> RuntimeData | None:
        """Pipeline data for ``item``; None for an audio frame the grid drops (counted)."""
        if isinstance(item, ReceivedAudio):
            ts = self.grid.timestamp(item.peer_id, item.local_time, self._clock())
            if ts is None:
                self._grid_dropped[item.peer_id] = self._grid_dropped.get(item.peer_id, 0) + 1
                return None
            self._audio_shift[item.peer_id] = (ts - item.local_time, item.local_time)
            return to_runtime(item, ts)
        if isinstance(item, ReceivedVideo):
            return to_runtime(item, self.video_timestamp(item.peer_id, item.local_time))
        return to_runtime(item, item.local_time)

    def video_timestamp(self, peer_id: str, local_time: float) -> float:
        """The timestamp of a picture ``peer_id`` presented at ``local_time``.

        The grid moves the peer's audio off its ``local_time``: the snap to the session's slots
        (up to half a slot for a peer whose frames fall between the first peer's slots), a
        re-anchor by whole slots, a late frame placed at its arrival. A picture keeping its bare
        ``local_time`` showed each of those moves as A/V skew on the wire; so it takes the move its
        peer's newest audio frame got, while that audio is within :data:`_AUDIO_SHIFT_SPAN` of it.
        """
        shift = self._audio_shift.get(peer_id)
        if shift is None or abs(local_time - shift[1]) > _AUDIO_SHIFT_SPAN:
            return local_time
        return local_time + shift[0]

    async def accept(
        self, item: ReceivedMedia, inputs: trio.MemorySendChannel[RuntimeData]
    ) -> bool:
        """Feed one item unless the session is not Active (then it is counted as dropped)."""
        session = self.session
        if not session.accepts_inputs or item.peer_id not in session.peers:
            self._inputs_dropped += 1
            return False
        if (
            self.max_input_age is not None
            and not isinstance(item, ReceivedData)
            and self._clock() - item.local_time > self.max_input_age
        ):
            self._stale_dropped[item.peer_id] = self._stale_dropped.get(item.peer_id, 0) + 1
            return False
        if not self.accept_video and isinstance(item, ReceivedVideo):
            self._shed_video[item.peer_id] = self._shed_video.get(item.peer_id, 0) + 1
            return False
        data = self.convert(item)
        if data is None:
            return False
        await inputs.send(data)
        session.input_seq += 1
        self._frames_in[item.peer_id] = self._frames_in.get(item.peer_id, 0) + 1
        return True

    async def route_to_pipeline(self, received: trio.abc.ReceiveChannel[ReceivedMedia]) -> None:
        """One task per peer: until ``received`` ends, feed its items into the pipeline."""
        inputs = self.stream.inputs.clone()
        async with inputs:
            async for item in received:
                try:
                    await self.accept(item, inputs)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def deliver(self, data: RuntimeData) -> None:
        """Send one pipeline output to its peer (``to_peer``) or to every peer (``None``)."""
        session = self.session
        session.output_seq += 1
        session.pending_outputs += 1
        try:
            targets = self._targets(data)
            for peer in targets:
                try:
                    await _send(peer, data)
                except Exception as exc:  # noqa: BLE001  (one peer's failure must not stop others)
                    self._send_errors += 1
                    logger.debug(
                        "session %s: send to %s failed: %r", session.session_id, peer.peer_id, exc
                    )
                    continue
                self._frames_out[peer.peer_id] = self._frames_out.get(peer.peer_id, 0) + 1
            if targets and isinstance(data, Audio) and data.arrived_at is not None:
                self._added_latency.append(self._clock() - data.arrived_at)
        finally:
            session.pending_outputs -= 1
            if session.pending_outputs == 0 and self._drained is not None:
                self._drained.set()

    async def route_to_peers(self) -> None:
        """Consume the pipeline's outputs until the pipeline ends.

        Media goes out at once (``send_audio``/``send_video`` only queue on the peer's track). A data
        message can wait: ``send_data`` waits for an open channel, up to ``data_open_timeout``
        (10 s), while its peer reconnects. So data goes through one ordered queue per peer, sent by
        that peer's own task, and one peer's wait never holds back anyone's media or data.
        """
        queues: dict[str, tuple[SessionPeer, trio.MemorySendChannel[RuntimeData]]] = {}
        async with trio.open_nursery() as nursery:
            async for data in self.stream.outputs:
                if isinstance(data, Audio | Video):
                    await self.deliver(data)
                else:
                    self._queue_data(nursery, queues, data)
            for _peer, queue in queues.values():
                queue.close()

    def _queue_data(
        self,
        nursery: trio.Nursery,
        queues: dict[str, tuple[SessionPeer, trio.MemorySendChannel[RuntimeData]]],
        data: RuntimeData,
    ) -> None:
        session = self.session
        session.output_seq += 1
        targets = self._targets(data)
        for peer in targets:
            entry = queues.get(peer.peer_id)
            if entry is None or entry[0] is not peer:  # first message, or the peer rejoined
                if entry is not None:
                    entry[1].close()
                send, receive = trio.open_memory_channel[RuntimeData](DATA_QUEUE)
                entry = queues[peer.peer_id] = (peer, send)
                nursery.start_soon(self._send_data_in_order, peer, receive)
            try:
                entry[1].send_nowait(data)
            except trio.WouldBlock:
                self._send_errors += 1
                logger.warning(
                    "session %s: %d data messages already wait for %s; dropping one",
                    session.session_id,
                    DATA_QUEUE,
                    peer.peer_id,
                )
                continue
            session.pending_outputs += 1

    async def _send_data_in_order(
        self, peer: SessionPeer, queue: trio.MemoryReceiveChannel[RuntimeData]
    ) -> None:
        session = self.session
        async with queue:
            async for data in queue:
                try:
                    await _send(peer, data)
                except Exception as exc:  # noqa: BLE001  (counted; the next message is tried)
                    self._send_errors += 1
                    logger.debug(
                        "session %s: send to %s failed: %r", session.session_id, peer.peer_id, exc
                    )
                else:
                    self._frames_out[peer.peer_id] = self._frames_out.get(peer.peer_id, 0) + 1
                finally:
                    session.pending_outputs -= 1
                    if session.pending_outputs == 0 and self._drained is not None:
                        self._drained.set()

    def _targets(self, data: RuntimeData) -> list[SessionPeer]:
        """``to_peer``'s peer, or every peer for a broadcast; an unknown peer is counted."""
        session = self.session
        if data.to_peer is None:
            return list(session.peers.values())
        peer = session.peers.get(data.to_peer)
        if peer is None:
            self._outputs_unroutable += 1
            return []
        return [peer]


async def _send(peer: SessionPeer, data: RuntimeData) -> None:
    # Media goes with its timestamp: the peer's tracks put audio and video derived from one source
    # on one media clock, so their capture-time relation survives onto the wire (rtc/tracks.py).
    if isinstance(data, Audio):
        await peer.send_audio(data.frames_view(), data.timestamp)
    elif isinstance(data, Video):
        frame: Any = data.frame
        await peer.send_video(frame, data.timestamp)
    elif isinstance(data, Text):
        await peer.send_data(data.text)
    elif isinstance(data, Binary):
        await peer.send_data(bytes(data.data))
    elif isinstance(data, Json):
        await peer.send_data(data.value)
