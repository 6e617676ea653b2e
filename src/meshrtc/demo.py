"""The demo workload: one WebRtcTransport and N synthetic meshrtc peers in one process.

Shared by ``meshrtc demo``, the end-to-end test and ``bench/transport.py``. Everything runs on
loopback: an embedded signaling server and STUN responder, the transport running a manifest, and N
peers each sending a gated tone at its own frequency, a moving test pattern and data messages.

Latency method (``latency_*_ms``): every tone is gated, on for ``GATE_ON`` seconds out of every
``GATE_PERIOD``. A peer records the monotonic time at which it queued the first 20 ms chunk of each
on-period (capture). Each receiving peer runs a Goertzel detector per 20 ms frame for every other
peer's frequency over what comes back from the transport (the MixMinus mix); a rising edge after at
least ``MIN_OFF_FRAMES`` silent frames is an onset (a dropout inside a tone is not) and its latency is
the receive time minus that peer's latest capture onset. This spans capture
pacing, Opus encode, the network, the transport's jitter buffer and decode, the pipeline, re-encode,
the peer's jitter buffer and decode.

``added_*_ms`` is the transport's share alone: from a packet's arrival at the transport to the mix
of its 20 ms slot leaving for a peer (jitter buffer, decode, pipeline, routing; see
``meshrtc.session.router``).

Split mode (``run_demo(split=True)``): the synthetic peers run in one child process
(:mod:`meshrtc.demo_peers`), the signaling server, STUN responder and transport in this one. With the
GIL, in-process peers compete with the transport for one interpreter; split, this process's CPU time
is the transport's own (``transport_cpu_pct``) and the peers' is reported apart (``peers_cpu_pct``).
Onsets are still captured and detected in one process (the child), so latency uses one clock.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from meshrtc.config import TransportConfig
from meshrtc.errors import MeshRtcError
from meshrtc.media.audio_stage import stable_drift_ppm
from meshrtc.pipeline.manifest import Manifest, default_manifest
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedVideo
from meshrtc.rtc.peer import REALTIME_SEND_QUEUE, PeerConnection, PeerOptions
from meshrtc.rtc.peers import PeerManager
from meshrtc.rtc.stun import StunServer
from meshrtc.session.manager import RunningSession
from meshrtc.signaling.client import SignalingClient
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import WebRtcTransport

__all__ = [
    "DemoChildError",
    "DemoResult",
    "PeerFigures",
    "RemotePeer",
    "run_demo",
    "tone_frequency",
]

log = logging.getLogger(__name__)

RATE = 48_000
CHUNK = 960  # 20 ms
GATE_PERIOD = 1.0
GATE_ON = 0.5
#: Silent frames that must precede a rising edge for it to count as an onset (200 ms).
MIN_OFF_FRAMES = 10
AMPLITUDE = 0.1
TRANSPORT_ID = "transport"
#: How long the synthetic peers' process gets to exit on its own before it is killed.
CHILD_EXIT_TIMEOUT = 10.0
#: Bound on the child's start (interpreter, aiortc import, bridge) before it reports ready.
CHILD_READY_TIMEOUT = 30.0


#: The child process of each generator (``run_demo(split=True, generator=...)``): ``star``, members
#: connected to the transport alone replaying pre-encoded media (:mod:`meshrtc.loadgen`); ``mesh``,
#: full meshrtc peers that also connect to each other (:mod:`meshrtc.demo_peers`).
GENERATORS = {"star": "meshrtc.loadgen", "mesh": "meshrtc.demo_peers"}

#: Where ``meshrtc`` is imported from, so the child imports the same code.
_SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DemoChildError(MeshRtcError):
    """The synthetic peers' process (split mode) ended early or broke the protocol."""


def tone_frequency(index: int) -> float:
    """Peer ``index``'s tone: on an exact 50 Hz bin of a 20 ms frame, 200 Hz apart."""
    return 500.0 + 200.0 * index


def goertzel(frame: npt.NDArray[np.float32], freq: float) -> float:
    """Amplitude of ``freq`` in ``frame`` (1.0 for a full-scale sine on a bin)."""
    n = frame.size
    t = np.arange(n, dtype=np.float64) / RATE
    ref = np.exp(-2j * np.pi * freq * t)
    return float(2.0 * abs(np.dot(frame.astype(np.float64), ref)) / n)


@attrs.define
class PeerFigures:
    """What one synthetic peer sent and got back."""

    peer_id: str
    frequency: float
    audio_sent: int = 0
    audio_received: int = 0
    video_received: int = 0
    data_sent: int = 0
    data_echoed: int = 0
    heard: dict[str, float] = attrs.Factory(dict)
    latencies_ms: list[float] = attrs.Factory(list)
    #: From this peer being on the signaling server to its link with the transport Connected, as the
    #: peer sees it (5 ms resolution).
    connect_ms: float | None = None
    #: Transport-side figures for this peer's connection (filled by the live table / at the end).
    frames_in: int = 0
    frames_out: int = 0
    #: The transport's drift estimate for this peer, ppm; None until it can be stood behind
    #: (:func:`~meshrtc.media.audio_stage.stable_drift_ppm`: Stable, standard error <= 20 ppm).
    drift_ppm: float | None = None
    #: Audio packets from the transport never seen (sequence gaps; the star generator counts them).
    audio_lost: int = 0
    #: Packets the member's own sender skipped after falling behind (the star generator's).
    send_skipped: int = 0
    #: Star generator: the latest its audio packets left after their due time (ms), before the
    #: traffic (connecting) and during it; the generator's own pacing jitter.
    send_late_idle_ms: float | None = None
    send_late_ms: float | None = None
    #: This peer's audio frames the transport dropped before the pipeline (stale or re-anchoring).
    transport_dropped: int = 0


@attrs.define
class DemoResult:
    peers: dict[str, PeerFigures]
    connect_ms: float
    #: From cancelling the running session to the transport and its bridge closed; in-process, the
    #: synthetic peers close in that time too.
    teardown_ms: float
    seconds: float
    #: Per peer, the decoded audio it got back (only with ``keep_audio``).
    audio: dict[str, npt.NDArray[np.float32]] = attrs.Factory(dict)
    #: The transport's added latency samples (ms; see the module docstring).
    added_ms: list[float] = attrs.Factory(list)
    #: CPU time of the process running the transport over the traffic window, as a share of all
    #: cores (%). In-process mode it includes the synthetic peers; split, it is the transport's own.
    transport_cpu_pct: float | None = None
    #: Split mode: the synthetic peers' process's CPU over its traffic window (% of all cores).
    peers_cpu_pct: float | None = None
    #: Split mode: the peers' own teardown in their process (ms), after the transport's.
    peers_teardown_ms: float | None = None
    #: Star generator: how many members decoded everything back (the latency probe); None: all.
    listeners: int | None = None

    def onsets(self) -> tuple[int, int]:
        """Tone onsets detected, and expected (every peer hears every other's on-periods).

        Onsets later than ``GATE_ON`` after their capture are not counted, so a shortfall here is
        latency the percentiles do not show.
        """
        n = len(self.peers)
        listening = n if self.listeners is None else min(n, self.listeners)
        detected = sum(len(p.latencies_ms) for p in self.peers.values())
        return detected, listening * (n - 1) * int(np.ceil(self.seconds / GATE_PERIOD))

    def link_connect(self, q: float) -> float | None:
        values = [p.connect_ms for p in self.peers.values() if p.connect_ms is not None]
        return float(np.percentile(values, q)) if values else None

    def latency(self, q: float) -> float | None:
        values = [v for p in self.peers.values() for v in p.latencies_ms]
        return float(np.percentile(values, q)) if values else None

    def added_latency(self, q: float) -> float | None:
        return float(np.percentile(self.added_ms, q)) if self.added_ms else None

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": {
                pid: {
                    "frequency": p.frequency,
                    "audio_sent": p.audio_sent,
                    "audio_received": p.audio_received,
                    "video_received": p.video_received,
                    "data_sent": p.data_sent,
                    "data_echoed": p.data_echoed,
                    "frames_in": p.frames_in,
                    "frames_out": p.frames_out,
                    "drift_ppm": _round(p.drift_ppm),
                    "audio_lost": p.audio_lost,
                    "transport_dropped": p.transport_dropped,
                    "send_skipped": p.send_skipped,
                    "send_late_ms": _round(p.send_late_ms),
                    "heard": sorted(p.heard),
                    "latency_p50_ms": _pct(p.latencies_ms, 50),
                    "connect_ms": _round(p.connect_ms),
                }
                for pid, p in self.peers.items()
            },
            "connect_ms": round(self.connect_ms, 1),
            "link_connect_p50_ms": _round(self.link_connect(50)),
            "link_connect_max_ms": _round(self.link_connect(100)),
            "onsets": list(self.onsets()),
            "latency_p50_ms": _round(self.latency(50)),
            "latency_p95_ms": _round(self.latency(95)),
            "added_p50_ms": _round(self.added_latency(50)),
            "added_p95_ms": _round(self.added_latency(95)),
            "teardown_ms": round(self.teardown_ms, 1),
            "transport_cpu_pct": _round(self.transport_cpu_pct),
            "peers_cpu_pct": _round(self.peers_cpu_pct),
            "peers_teardown_ms": _round(self.peers_teardown_ms),
            "seconds": self.seconds,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _pct(values: list[float], q: float) -> float | None:
    return _round(float(np.percentile(values, q))) if values else None


def pattern(width: int, height: int, step: int, shade: int) -> npt.NDArray[np.uint8]:
    """A moving test pattern: a bar that slides right, on a gradient tinted per peer."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = shade
    rgb[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)
    x = (step * 4) % width
    rgb[:, x : x + 8, 2] = 255
    return rgb


class SyntheticPeer:
    """A meshrtc peer that talks only to the transport (its other mesh links stay idle)."""

    def __init__(self, index: int, manager: PeerManager, video: tuple[int, int] | None) -> None:
        self.index = index
        self.manager = manager
        self.video = video
        self.figures = PeerFigures(manager.local_id, tone_frequency(index))
        self.onsets: dict[str, float] = {}
        self.others: dict[str, float] = {}
        self.keep_audio = False
        self.audio: list[npt.NDArray[np.float32]] = []
        self.joined_at = time.monotonic()

    def note_connected(self) -> bool:
        """Record the link's connect time once it is Connected; true once it is."""
        if self.figures.connect_ms is None:
            link = self.link()
            if link is None or not link.is_connected:
                return False
            self.figures.connect_ms = 1000.0 * (time.monotonic() - self.joined_at)
        return True

    def link(self) -> PeerConnection | None:
        return self.manager.get_peer(TRANSPORT_ID)

    async def send(self, seconds: float, clock_origin: float) -> None:
        """Paced 20 ms tone chunks (gated), a pattern every 100 ms, a message every 250 ms."""
        peer = self.link()
        assert peer is not None
        freq = self.figures.frequency
        n = 0
        t0 = trio.current_time()
        sample = 0
        while n * 0.020 < seconds:
            phase = (n * 0.020) % GATE_PERIOD
            on = phase < GATE_ON
            if on:
                idx = np.arange(sample, sample + CHUNK, dtype=np.float64)
                chunk = (AMPLITUDE * np.sin(2 * np.pi * freq * idx / RATE)).astype(np.float32)
                if phase < 0.020:
                    self.onsets[self.figures.peer_id] = time.monotonic()
            else:
                chunk = np.zeros(CHUNK, np.float32)
            sample += CHUNK
            await peer.send_audio(chunk)
            self.figures.audio_sent += 1
            if self.video is not None and n % 5 == 0:
                await peer.send_video(pattern(*self.video, n // 5, 40 * self.index % 256))
            n += 1
            await trio.sleep_until(t0 + n * 0.020)

    async def chat(self, seconds: float) -> None:
        """A text message every 250 ms (its own task: sending waits for an open channel)."""
        peer = self.link()
        assert peer is not None
        end = trio.current_time() + seconds
        n = 0
        while trio.current_time() < end:
            with trio.move_on_after(1.0):
                await peer.send_data(f"hello {self.figures.peer_id} {n}")
                self.figures.data_sent += 1
            n += 1
            await trio.sleep(0.25)

    async def collect(self, all_onsets: Callable[[str], float | None]) -> None:
        """Read everything the transport sends back; detect the other peers' tone onsets."""
        peer = self.link()
        assert peer is not None
        figures = self.figures
        off: dict[str, int] = {}
        async for item in peer.received:
            if isinstance(item, ReceivedAudio):
                figures.audio_received += 1
                if item.concealed:
                    continue
                mono = item.samples[:, 0] if item.samples.ndim == 2 else item.samples
                if self.keep_audio:
                    self.audio.append(np.array(mono, dtype=np.float32))
                now = time.monotonic()
                for pid, freq in self.others.items():
                    level = goertzel(mono, freq)
                    on = level > AMPLITUDE * 0.3
                    if on:
                        figures.heard[pid] = max(figures.heard.get(pid, 0.0), level)
                    if on and off.get(pid, 0) >= MIN_OFF_FRAMES:
                        captured = all_onsets(pid)
                        if captured is not None and 0 <= now - captured < GATE_ON:
                            figures.latencies_ms.append(1000.0 * (now - captured))
                    off[pid] = 0 if on else off.get(pid, 0) + 1
                own = goertzel(mono, figures.frequency)
                if own > AMPLITUDE * 0.3:
                    figures.heard[figures.peer_id] = max(figures.heard.get(figures.peer_id, 0), own)
            elif isinstance(item, ReceivedVideo):
                figures.video_received += 1
            elif (
                isinstance(item, ReceivedData)
                and isinstance(item.data, str)
                and item.data.startswith(f"hello {figures.peer_id} ")
            ):
                figures.data_echoed += 1


async def _drain_others(manager: PeerManager) -> None:
    """Keep reading the idle peer-to-peer links so their buffers never fill."""
    seen: set[str] = set()
    async with trio.open_nursery() as nursery:
        async for _event in manager.events:
            for pid, peer in manager.peers.items():
                if pid != TRANSPORT_ID and pid not in seen:
                    seen.add(pid)
                    nursery.start_soon(_discard, peer)


async def _discard(peer: PeerConnection) -> None:
    async for _item in peer.received:
        pass


class RemotePeer(SyntheticPeer):
    """Split mode: this process's view of a peer running in the child — its figures only.

    ``on_tick`` callbacks get these in place of live peers; the figures are filled from the child's
    report at the end of the traffic window, and there is no local link.
    """

    def __init__(self, index: int, figures: PeerFigures) -> None:
        self.index = index
        self.figures = figures
        self.onsets = {}
        self.others = {}
        self.keep_audio = False
        self.audio = []
        self.joined_at = 0.0

    def link(self) -> PeerConnection | None:
        return None


class _Child:
    """The parent's end of the synthetic peers' process: JSON events in, words out."""

    def __init__(
        self, process: trio.Process, on_report: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.process = process
        #: Gets the star child's periodic ``counters`` lines (``report_every``), whenever they come.
        self.on_report = on_report
        self._send, self._events = trio.open_memory_channel[dict[str, Any]](16)

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async with self._send:
            while chunk := await self.process.stdout.receive_some(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    try:
                        message = json.loads(line)
                    except ValueError:
                        log.warning("synthetic peers' process wrote %r", line[:200])
                        continue
                    await self._send.send(message)

    async def expect(self, event: str) -> dict[str, Any]:
        async for message in self._events:
            if message.get("event") == event:
                return message
            if message.get("event") == "counters" and self.on_report is not None:
                self.on_report(message)
                continue
            log.warning("unexpected event from the synthetic peers' process: %r", message)
        raise DemoChildError(
            f"the synthetic peers' process ended before {event!r} (exit code {self.process.poll()})"
        )

    async def tell(self, word: str) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(f"{word}\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise DemoChildError(f"the synthetic peers' process is gone ({word!r})") from exc


@contextlib.asynccontextmanager
async def _open_child(
    argv: list[str],
    nursery: trio.Nursery,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[_Child]:
    """Start the child; on every way out close its stdin, wait (bounded), kill if needed, reap."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    child = _Child(process, on_report)
    pump_scope = trio.CancelScope()

    async def pump() -> None:
        with pump_scope:
            await child.pump()

    nursery.start_soon(pump)
    try:
        yield child
    finally:
        with trio.CancelScope(shield=True):
            assert process.stdin is not None
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
            with trio.move_on_after(CHILD_EXIT_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                log.warning("the synthetic peers' process did not exit: killing it")
                process.kill()
                await process.wait()
            pump_scope.cancel()
            assert process.stdout is not None
            await process.stdout.aclose()


def _child_argv(
    signaling_url: str,
    stun_url: str,
    peers: int,
    seconds: float,
    video: tuple[int, int] | None,
    options: PeerOptions,
    connect_timeout: float,
    generator: str = "star",
    listeners: int | None = None,
    aligned: bool = False,
    report_every: float | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        GENERATORS[generator],
        "--signaling",
        signaling_url,
        "--stun",
        stun_url,
        "--peers",
        str(peers),
        "--seconds",
        repr(seconds),
        "--options",
        base64.b64encode(pickle.dumps(options)).decode("ascii"),
        "--connect-timeout",
        repr(connect_timeout),
        # Its whole life: start, connect, traffic, both teardowns, with a generous margin.
        "--deadline",
        repr(CHILD_READY_TIMEOUT + connect_timeout + seconds + 60.0),
    ]
    if video is not None:
        argv += ["--video", f"{video[0]}x{video[1]}"]
    if generator == "star":
        argv += ["--fps", repr(options.video_fps)]
        if listeners is not None:
            argv += ["--listeners", str(listeners)]
        if aligned:
            argv.append("--aligned")
        if report_every is not None:
            argv += ["--report-every", repr(report_every)]
    return argv


def _cpu_pct(cpu: float, wall: float) -> float:
    return 100.0 * cpu / max(wall, 1e-9) / (os.cpu_count() or 1)


Tick = Callable[[WebRtcTransport, RunningSession, list[SyntheticPeer], float], None]


async def run_demo(
    *,
    peers: int = 3,
    seconds: float = 10.0,
    manifest: Manifest | None = None,
    video: tuple[int, int] | None = (160, 120),
    options: PeerOptions | None = None,
    on_tick: Tick | None = None,
    tick: float = 0.5,
    connect_timeout: float = 30.0,
    keep_audio: bool = False,
    split: bool = False,
    generator: str = "star",
    listeners: int | None = None,
    aligned: bool = False,
    report_every: float | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run the demo workload; returns the figures after a complete teardown.

    ``split`` runs the synthetic peers in a child process (module docstring), made by
    ``generator`` (:data:`GENERATORS`; ``listeners``: how many star members decode everything
    back for the latency probe, default all; ``aligned``: every star member's packets on one
    phase instead of each on its own); ``on_tick`` then gets :class:`RemotePeer` views,
    and ``keep_audio`` is not available. In-process, the peers are always the mesh kind.
    ``report_every`` (star only): the child reports its members' running counters every that
    many seconds of traffic to ``on_report``, called on this trio loop (``bench/soak.py``).
    """
    if split and keep_audio:
        raise ValueError("keep_audio needs the in-process mode (split=False)")
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {sorted(GENERATORS)}, not {generator!r}")
    manifest = manifest or default_manifest()
    options = options or PeerOptions(
        video_fps=10.0, quality_interval=1.0, audio_send_queue=REALTIME_SEND_QUEUE
    )
    peers_cpu_pct: float | None = None
    peers_teardown_ms: float | None = None
    async with trio.open_nursery() as servers:
        stun: StunServer = await servers.start(StunServer().run)
        server: SignalingServer = await servers.start(SignalingServer(port=0).run)

        def config(peer_id: str) -> TransportConfig:
            return TransportConfig(
                signaling_url=server.url,
                stun_servers=[stun.url],
                peer_id=peer_id,
                video_codec="VP9",
                ice_host_addresses=("127.0.0.1",),
            )

        async with contextlib.AsyncExitStack() as stack:
            child: _Child | None = None
            if split:
                argv = _child_argv(
                    server.url,
                    stun.url,
                    peers,
                    seconds,
                    video,
                    options,
                    connect_timeout,
                    generator,
                    listeners,
                    aligned,
                    report_every,
                )
                child = await stack.enter_async_context(_open_child(argv, servers, on_report))
            synthetic: list[SyntheticPeer] = []
            transport = WebRtcTransport(config(TRANSPORT_ID), options=options)
            teardown = 0.0
            async with open_bridge(name="meshrtc-demo-peers") as bridge:
                async with transport, trio.open_nursery() as nursery:
                    running: RunningSession = await nursery.start(transport.run_session, manifest)

                    async def ticks(until: float) -> None:
                        while trio.current_time() < until:
                            if on_tick is not None:
                                on_tick(transport, running, synthetic, connect_ms)
                            await trio.sleep(min(tick, max(0.0, until - trio.current_time())))

                    if child is None:
                        started = time.monotonic()
                        for i in range(peers):
                            joined = await _join(
                                nursery, config(f"peer{i + 1}"), bridge, options, i, video
                            )
                            synthetic.append(joined)
                        for s in synthetic:
                            s.keep_audio = keep_audio
                            s.others = {
                                o.figures.peer_id: o.figures.frequency
                                for o in synthetic
                                if o is not s
                            }
                        names = {s.figures.peer_id for s in synthetic}

                        def all_connected() -> bool:
                            noted = [s.note_connected() for s in synthetic]  # no short cut
                            return set(running.session.peers) == names and all(noted)

                        # A 5 ms poll gives connect_ms its resolution; bounded by fail_after.
                        with trio.fail_after(connect_timeout):
                            while not all_connected():  # noqa: ASYNC110
                                await trio.sleep(0.005)
                        connect_ms = 1000.0 * (time.monotonic() - started)

                        def onset(pid: str) -> float | None:
                            for s in synthetic:
                                if s.figures.peer_id == pid:
                                    return s.onsets.get(pid)
                            return None

                        cpu0, wall0 = time.process_time(), time.monotonic()
                        for s in synthetic:
                            nursery.start_soon(s.collect, onset)
                            nursery.start_soon(s.send, seconds, started)
                            nursery.start_soon(s.chat, seconds)
                        await ticks(trio.current_time() + seconds + 0.5)
                    else:
                        synthetic = [
                            RemotePeer(i, PeerFigures(f"peer{i + 1}", tone_frequency(i)))
                            for i in range(peers)
                        ]
                        names = {s.figures.peer_id for s in synthetic}
                        assert transport.peers is not None
                        manager = transport.peers

                        def transport_connected() -> bool:
                            links = [manager.get_peer(pid) for pid in names]
                            return set(running.session.peers) == names and all(
                                link is not None and link.is_connected for link in links
                            )

                        with trio.fail_after(CHILD_READY_TIMEOUT):
                            await child.expect("ready")
                        started = time.monotonic()
                        await child.tell("join")
                        with trio.fail_after(connect_timeout):
                            child_t = float((await child.expect("connected"))["t"])
                            done = child_t
                            while not transport_connected():
                                await trio.sleep(0.005)
                                done = time.monotonic()
                        connect_ms = 1000.0 * (done - started)
                        cpu0, wall0 = time.process_time(), time.monotonic()
                        await child.tell("go")
                        async with trio.open_nursery() as ticking:
                            ticking.start_soon(ticks, float("inf"))
                            with trio.fail_after(seconds + CHILD_EXIT_TIMEOUT + 10.0):
                                report = await child.expect("figures")
                            ticking.cancel_scope.cancel()
                        for s in synthetic:
                            got = report["peers"][s.figures.peer_id]
                            s.figures = PeerFigures(**got)
                        peers_cpu_pct = _cpu_pct(report["cpu_s"], report["wall_s"])
                    transport_cpu_pct = _cpu_pct(
                        time.process_time() - cpu0, time.monotonic() - wall0
                    )
                    routed = running.router.statistics()
                    added_ms = [1000.0 * v for v in routed.added_latency]
                    for s in synthetic:
                        pid = s.figures.peer_id
                        s.figures.frames_in = routed.frames_in.get(pid, 0)
                        s.figures.frames_out = routed.frames_out.get(pid, 0)
                        s.figures.transport_dropped = routed.stale_dropped.get(
                            pid, 0
                        ) + routed.grid_dropped.get(pid, 0)
                        link = None if transport.peers is None else transport.peers.get_peer(pid)
                        if link is not None:
                            estimator = link.sync_manager.clock_drift_estimator
                            s.figures.drift_ppm = stable_drift_ppm(estimator)
                    if on_tick is not None:
                        on_tick(transport, running, synthetic, connect_ms)
                    t_cancel = time.monotonic()
                    nursery.cancel_scope.cancel()
                teardown = 1000.0 * (time.monotonic() - t_cancel)
            if child is not None:
                with trio.fail_after(CHILD_EXIT_TIMEOUT):
                    await child.tell("stop")
                    peers_teardown_ms = float((await child.expect("closed"))["teardown_ms"])
        servers.cancel_scope.cancel()
    audio = {
        s.figures.peer_id: np.concatenate(s.audio) if s.audio else np.zeros(0, np.float32)
        for s in synthetic
    }
    return DemoResult(
        peers={s.figures.peer_id: s.figures for s in synthetic},
        connect_ms=connect_ms,
        teardown_ms=teardown,
        seconds=seconds,
        audio=audio,
        added_ms=added_ms,
        transport_cpu_pct=transport_cpu_pct,
        peers_cpu_pct=peers_cpu_pct,
        peers_teardown_ms=peers_teardown_ms,
        listeners=listeners if split and generator == "star" else None,
    )


async def _join(
    nursery: trio.Nursery,
    config: TransportConfig,
    bridge: Bridge,
    options: PeerOptions,
    index: int,
    video: tuple[int, int] | None,
) -> SyntheticPeer:
    client = SignalingClient(config.signaling_url, config.peer_id, session_id=config.session_id)
    await nursery.start(client.run)
    manager = PeerManager(config, client, bridge=bridge, options=options)
    await nursery.start(manager.run)
    nursery.start_soon(_drain_others, manager)
    return SyntheticPeer(index, manager, video)
