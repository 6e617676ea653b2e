"""What ``/metrics`` shows: a plain snapshot of the transport's figures, and its Prometheus rendering.

Two halves, so that the figures can cross a process boundary before they are rendered (issue 15:
workers will send their snapshots to the supervisor over the control channel, and the supervisor
renders them all on one page):

- :func:`snapshot` reads a running :class:`~meshrtc.transport.WebRtcTransport` into a frozen
  :class:`MetricsSnapshot` (attrs; picklable, and :meth:`MetricsSnapshot.to_json` /
  :meth:`MetricsSnapshot.from_json` for the control channel). It only *reads* figures that already
  exist (``PeerStats``, ``ConnectionQualityMetrics``, the jitter buffers' delay, the router's
  ``RouterStatistics`` and its added-latency samples): nothing is added to the per-packet paths,
  and a snapshot of ten members costs about a millisecond (docs/host.md, "Metrics").
- :class:`SnapshotCollector` is a ``prometheus_client`` custom collector that renders whatever
  snapshots its source returns; :func:`metrics_registry` adds prometheus_client's own
  ``ProcessCollector`` (CPU seconds, RSS, open files of this process) and :func:`render` produces the
  text exposition format 0.0.4.

Labels are bounded: ``session`` and ``peer`` values are ids the signaling server validated
(``PEER_ID_PATTERN``: 1-64 of ``[A-Za-z0-9_-]``) for members it admitted, a session holds at most
``MAX_PEERS_LIMIT`` (10) members, and ``state``/``kind``/``reason`` come from enums in this module or
the statecharts. Nothing a client sends unvalidated becomes a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self

import attrs
import numpy as np
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from meshrtc.rtc.peer import PeerConnection
    from meshrtc.session.router import RouterStatistics
    from meshrtc.signaling.server import SignalingHub
    from meshrtc.transport import WebRtcTransport

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "LatencyHistogram",
    "MemberMetrics",
    "MetricsSnapshot",
    "ProcessFigures",
    "SessionMetrics",
    "SnapshotCollector",
    "metrics_registry",
    "process_figures",
    "render",
    "snapshot",
]

#: The Prometheus text exposition format (``text/plain; version=0.0.4; charset=utf-8``).
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

#: Upper bounds (seconds) of the added-latency buckets: around the jitter target (40-80 ms) finely,
#: then coarsely up to the router's staleness limit (0.25 s) and beyond.
LATENCY_BUCKETS: Final = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

#: Why a member's frames were dropped (the ``reason`` label): where each count comes from.
DROP_REASONS: Final = (
    "stale",  # router: presented more than MAX_INPUT_AGE ago (RouterStatistics.stale_dropped)
    "grid",  # router: re-anchoring a timeline that jumped back (RouterStatistics.grid_dropped)
    "shed_video",  # router: pictures dropped while load shedding turned video off
    "receive_overflow",  # peer: nobody read ``received`` in time (PeerStats.received_dropped)
    "video_backlog",  # peer: video decoding fell behind (PeerStats.video_frames_dropped)
)

# The statecharts' states, imported lazily by name so this module needs neither trio nor aiortc to
# render a snapshot that came from elsewhere (a supervisor renders its workers' snapshots).
_SESSION_STATES: Final = ("Initializing", "Active", "Paused", "Closed")
_PEER_STATES: Final = (
    "New",
    "GatheringIce",
    "Connecting",
    "Connected",
    "Reconnecting",
    "Failed",
    "Closed",
)


@attrs.frozen
class LatencyHistogram:
    """The router's recent added-latency samples, bucketed (cumulative counts, Prometheus style).

    A window, not a running total: the router keeps its latest samples (a bounded deque), so this
    is rendered as a *gauge histogram* (values may go down) rather than a counter histogram.
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    #: Samples ≤ each bound, then the count of all samples (the ``+Inf`` bucket).
    cumulative: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    total: float = 0.0

    @property
    def count(self) -> int:
        return self.cumulative[-1]

    @classmethod
    def of(cls, samples: Sequence[float], bounds: Sequence[float] = LATENCY_BUCKETS) -> Self:
        edges = np.asarray(bounds, dtype=np.float64)
        values = np.sort(np.asarray(samples, dtype=np.float64))
        below = np.searchsorted(values, edges, side="right")
        cumulative = (*(int(n) for n in below), len(values))
        return cls(tuple(float(b) for b in bounds), cumulative, float(values.sum()))


@attrs.frozen
class MemberMetrics:
    """One member of a session, as the transport sees it."""

    peer_id: str
    #: The PeerConnection statechart's state (``PeerState``).
    state: str
    #: Smoothed RTT (RTCP); None before a reception report gave one.
    rtt_seconds: float | None
    #: Loss of the media we receive from it, 0-1, over the quality window.
    loss_ratio: float
    #: RFC 3550 interarrival jitter (the worse of its audio and video jitter buffers).
    jitter_seconds: float
    #: The playout delay each jitter buffer applies now, by kind (``audio``, ``video``).
    jitter_buffer_delay_seconds: Mapping[str, float]
    #: Items from it that reached the pipeline / outputs the router sent to it.
    frames_in: int
    frames_out: int
    #: Frames dropped, by reason (:data:`DROP_REASONS`).
    frames_dropped: Mapping[str, int]
    #: Media links rebuilt after the first (``PeerStats.links - 1``).
    link_rebuilds: int


@attrs.frozen
class SessionMetrics:
    session_id: str
    #: The StreamSession statechart's state (``SessionState``).
    state: str
    #: Members in the session's pipeline now (they reached Connected).
    members: int
    #: Every member the transport has a connection to (any state).
    peers: tuple[MemberMetrics, ...]
    #: The router's added latency (packet arrival → its mix leaving), over the session's members.
    added_latency: LatencyHistogram


@attrs.frozen
class ProcessFigures:
    """CPU and memory of one process (a worker's, for the supervisor to render)."""

    cpu_seconds: float
    rss_bytes: float


@attrs.frozen
class MetricsSnapshot:
    """Everything ``/metrics`` shows of one transport (one process), at one instant."""

    sessions: tuple[SessionMetrics, ...] = ()
    #: Members per session as the signaling hub knows them (every session, hosted or not).
    signaling: Mapping[str, int] = attrs.field(factory=dict)
    #: The worker this snapshot comes from, with its process figures; None for this process (whose
    #: figures prometheus_client's ProcessCollector exports itself).
    worker: str | None = None
    process: ProcessFigures | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (for the control channel; :meth:`from_json` reads it back)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricsSnapshot:
        """The snapshot :meth:`to_json` wrote; TypeError/KeyError/ValueError on anything else."""
        sessions = tuple(
            SessionMetrics(
                session_id=_str(s["session_id"]),
                state=_str(s["state"]),
                members=_int(s["members"]),
                peers=tuple(_member(p) for p in s["peers"]),
                added_latency=LatencyHistogram(
                    tuple(_float(b) for b in s["added_latency"]["bounds"]),
                    tuple(_int(n) for n in s["added_latency"]["cumulative"]),
                    _float(s["added_latency"]["total"]),
                ),
            )
            for s in data["sessions"]
        )
        process = data.get("process")
        worker = data.get("worker")
        return cls(
            sessions=sessions,
            signaling={_str(k): _int(v) for k, v in data.get("signaling", {}).items()},
            worker=None if worker is None else _str(worker),
            process=None
            if process is None
            else ProcessFigures(_float(process["cpu_seconds"]), _float(process["rss_bytes"])),
        )


def _member(p: Mapping[str, Any]) -> MemberMetrics:
    rtt = p["rtt_seconds"]
    return MemberMetrics(
        peer_id=_str(p["peer_id"]),
        state=_str(p["state"]),
        rtt_seconds=None if rtt is None else _float(rtt),
        loss_ratio=_float(p["loss_ratio"]),
        jitter_seconds=_float(p["jitter_seconds"]),
        jitter_buffer_delay_seconds={
            _str(k): _float(v) for k, v in p["jitter_buffer_delay_seconds"].items()
        },
        frames_in=_int(p["frames_in"]),
        frames_out=_int(p["frames_out"]),
        frames_dropped={_str(k): _int(v) for k, v in p["frames_dropped"].items()},
        link_rebuilds=_int(p["link_rebuilds"]),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


# --- Reading a transport ------------------------------------------------------------------------


def snapshot(
    transport: WebRtcTransport, *, hub: SignalingHub | None = None, worker: str | None = None
) -> MetricsSnapshot:
    """Read ``transport`` (and the signaling ``hub``, if given) into a snapshot.

    Synchronous and cheap (reads counters; buckets at most the router's 5000 latency samples with
    numpy), so it runs on the event loop. With ``worker`` set it also reads this process's CPU and
    RSS (:func:`process_figures`), for a supervisor that renders it.
    """
    manager = transport.peers
    peers = {} if manager is None else manager.peers
    sessions = []
    for session in transport.sessions.list_active():
        running = transport.sessions.get_session(session.session_id)
        if running is None:
            continue
        stats = running.router.statistics()
        sessions.append(
            SessionMetrics(
                session_id=session.session_id,
                state=str(session.state),
                members=len(session.peers),
                peers=tuple(_member_of(peer, stats) for peer in peers.values()),
                added_latency=LatencyHistogram.of(stats.added_latency),
            )
        )
    signaling = {} if hub is None else {sid: len(ids) for sid, ids in hub.sessions().items()}
    return MetricsSnapshot(
        sessions=tuple(sessions),
        signaling=signaling,
        worker=worker,
        process=None if worker is None else process_figures(),
    )


def _member_of(peer: PeerConnection, stats: RouterStatistics) -> MemberMetrics:
    pid = peer.peer_id
    quality = peer.get_metrics()
    sync = peer.sync_manager
    counts = peer.stats
    return MemberMetrics(
        peer_id=pid,
        state=str(peer.state),
        rtt_seconds=None if quality.latency_ms is None else quality.latency_ms / 1000.0,
        loss_ratio=quality.packet_loss_rate / 100.0,
        jitter_seconds=quality.jitter_ms / 1000.0,
        jitter_buffer_delay_seconds={
            "audio": sync.audio_jitter_buffer.playout_delay_ms / 1000.0,
            "video": sync.video_jitter_buffer.playout_delay_ms / 1000.0,
        },
        frames_in=stats.frames_in.get(pid, 0),
        frames_out=stats.frames_out.get(pid, 0),
        frames_dropped={
            "stale": stats.stale_dropped.get(pid, 0),
            "grid": stats.grid_dropped.get(pid, 0),
            "shed_video": stats.shed_video.get(pid, 0),
            "receive_overflow": counts.received_dropped,
            "video_backlog": counts.video_frames_dropped,
        },
        link_rebuilds=max(0, counts.links - 1),
    )


def process_figures() -> ProcessFigures | None:
    """This process's CPU seconds and RSS, as prometheus_client's ProcessCollector reads them
    (``/proc/self``); None where it cannot (no ``/proc``)."""
    found: dict[str, float] = {}
    for metric in ProcessCollector(registry=None).collect():
        for sample in metric.samples:
            found[sample.name] = sample.value
    cpu = found.get("process_cpu_seconds_total")
    rss = found.get("process_resident_memory_bytes")
    if cpu is None or rss is None:
        return None
    return ProcessFigures(cpu, rss)


# --- Rendering ----------------------------------------------------------------------------------


class SnapshotCollector(Collector):
    """Renders the snapshots ``source`` returns at each scrape (one per transport or worker)."""

    def __init__(self, source: Callable[[], Iterable[MetricsSnapshot]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        return iter(families(list(self._source())))


def families(snapshots: Sequence[MetricsSnapshot]) -> list[Metric]:
    """The metric families of ``snapshots`` (session ids are unique across them: a session lives
    in one process)."""
    s_labels = ["session"]
    m_labels = ["session", "peer"]
    members_ = GaugeMetricFamily(
        "meshrtc_session_members", "Members in the session's pipeline.", labels=s_labels
    )
    session_state_ = GaugeMetricFamily(
        "meshrtc_session_state",
        "1 for the StreamSession statechart's current state, else 0.",
        labels=[*s_labels, "state"],
    )
    latency_ = GaugeHistogramMetricFamily(
        "meshrtc_session_added_latency_seconds",
        "Packet arrival to its mix leaving (jitter buffer, decode, pipeline, routing), over the "
        "router's recent samples (a window: gauge histogram).",
        labels=s_labels,
    )
    state_ = GaugeMetricFamily(
        "meshrtc_member_state",
        "1 for the PeerConnection statechart's current state, else 0.",
        labels=[*m_labels, "state"],
    )
    rtt_ = GaugeMetricFamily(
        "meshrtc_member_rtt_seconds", "Smoothed RTCP round-trip time.", labels=m_labels
    )
    loss_ = GaugeMetricFamily(
        "meshrtc_member_loss_ratio",
        "Loss of the media received from the member (0-1, quality window).",
        labels=m_labels,
    )
    jitter_ = GaugeMetricFamily(
        "meshrtc_member_jitter_seconds",
        "RFC 3550 interarrival jitter of the member's media.",
        labels=m_labels,
    )
    jb_delay_ = GaugeMetricFamily(
        "meshrtc_member_jitter_buffer_delay_seconds",
        "Playout delay the member's jitter buffer applies now.",
        labels=[*m_labels, "kind"],
    )
    frames_in_ = CounterMetricFamily(
        "meshrtc_member_frames_in",
        "Frames from the member that reached the pipeline.",
        labels=m_labels,
    )
    frames_out_ = CounterMetricFamily(
        "meshrtc_member_frames_out", "Pipeline outputs sent to the member.", labels=m_labels
    )
    dropped_ = CounterMetricFamily(
        "meshrtc_member_frames_dropped",
        "Frames from the member dropped, by reason.",
        labels=[*m_labels, "reason"],
    )
    rebuilds_ = CounterMetricFamily(
        "meshrtc_member_link_rebuilds",
        "Media links rebuilt after the first.",
        labels=m_labels,
    )
    signaling_ = GaugeMetricFamily(
        "meshrtc_signaling_members",
        "Members announced in each session of the signaling hub.",
        labels=s_labels,
    )
    cpu_ = CounterMetricFamily(
        "meshrtc_worker_cpu_seconds", "CPU time of the worker process.", labels=["worker"]
    )
    rss_ = GaugeMetricFamily(
        "meshrtc_worker_resident_memory_bytes",
        "Resident memory of the worker process.",
        labels=["worker"],
    )
    for snap in snapshots:
        if snap.worker is not None and snap.process is not None:
            cpu_.add_metric([snap.worker], snap.process.cpu_seconds)
            rss_.add_metric([snap.worker], snap.process.rss_bytes)
        for sid, count in sorted(snap.signaling.items()):
            signaling_.add_metric([sid], count)
        for session in snap.sessions:
            sid = session.session_id
            members_.add_metric([sid], session.members)
            for state in _SESSION_STATES:
                session_state_.add_metric([sid, state], float(state == session.state))
            hist = session.added_latency
            buckets = [
                (_bound(b), float(n))
                for b, n in zip(hist.bounds, hist.cumulative[:-1], strict=True)
            ]
            buckets.append(("+Inf", float(hist.count)))
            latency_.add_metric([sid], buckets, hist.total)
            for m in session.peers:
                labels = [sid, m.peer_id]
                for state in _PEER_STATES:
                    state_.add_metric([*labels, state], float(state == m.state))
                if m.rtt_seconds is not None:
                    rtt_.add_metric(labels, m.rtt_seconds)
                loss_.add_metric(labels, m.loss_ratio)
                jitter_.add_metric(labels, m.jitter_seconds)
                for kind, delay in sorted(m.jitter_buffer_delay_seconds.items()):
                    jb_delay_.add_metric([*labels, kind], delay)
                frames_in_.add_metric(labels, m.frames_in)
                frames_out_.add_metric(labels, m.frames_out)
                for reason, n in sorted(m.frames_dropped.items()):
                    dropped_.add_metric([*labels, reason], n)
                rebuilds_.add_metric(labels, m.link_rebuilds)
    return [
        members_,
        session_state_,
        latency_,
        state_,
        rtt_,
        loss_,
        jitter_,
        jb_delay_,
        frames_in_,
        frames_out_,
        dropped_,
        rebuilds_,
        signaling_,
        cpu_,
        rss_,
    ]


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def metrics_registry(source: Callable[[], Iterable[MetricsSnapshot]]) -> CollectorRegistry:
    """A registry with this process's figures (ProcessCollector) and ``source``'s snapshots."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(SnapshotCollector(source))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry)
