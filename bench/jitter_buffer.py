"""Jitter buffer benchmark: meshrtc's JitterBuffer against aiortc 1.16's, on the same seeded traces.

Run: ``.venv/bin/python bench/jitter_buffer.py`` (about 30-60 s; ``--quick`` for a smoke run).

Traces (audio: 20 ms Opus-sized packets; video: 30 fps VP8 frames of several packets, a keyframe
every 2 s), each replayed in arrival order:

* ``in-order``: constant network delay;
* ``loss5``: 5% of packets lost at random;
* ``reorder``: every packet delayed by a uniform 0-20 ms, so packets overtake each other;
* ``single-loss``: in order, one packet lost in the middle.

Both buffers get prebuilt inputs (aiortc ``RtpPacket`` objects with ``_data`` set as its receiver
does; meshrtc ``MediaFrame`` objects), so construction is excluded for both. aiortc is driven the way
its receiver drives it (``add()`` per packet, frames come out of ``add``); meshrtc the way a playout
timer drives it (``insert()`` per packet, then ``pop()`` at every ``next_due()`` that has passed). The
repetitions of the two are interleaved and the fastest repetition of each counts, which keeps the
ratio meaningful on a busy machine.

The playout delay after the single loss is measured without timing, in a second replay: for each
emitted packet (audio) or frame (video, its last packet), output time minus arrival time, averaged
over what arrived 1-6 s after the loss. aiortc's output time is the arrival of the packet whose
``add()`` released it; meshrtc's is the ``pop()`` time. Frames that never came out are counted too.

Last line: ``ratio_vs_aiortc=<meshrtc per-packet time / aiortc per-packet time>`` over all traces.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.rtp import RtpPacket

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, JitterBuffer, VideoFrame
from meshrtc.media.keyframe import is_keyframe_for

SEED = 20251107
NETWORK_DELAY = 0.030
AUDIO_PT, VIDEO_PT = 111, 96


class Packet:
    """One packet of a trace: what the sender sent and when it arrives (None: lost)."""

    __slots__ = ("arrival", "marker", "payload", "seq", "ts")

    def __init__(self, seq: int, ts: int, marker: bool, payload: bytes, arrival: float) -> None:
        self.seq = seq
        self.ts = ts
        self.marker = marker
        self.payload = payload
        self.arrival = arrival


def audio_stream(rng: random.Random, seconds: float, t0: float) -> list[Packet]:
    seq0 = 65536 - 500  # wraps early in the trace
    ts0 = rng.randrange(1 << 32)
    count = int(seconds / 0.020)
    return [
        Packet(
            (seq0 + i) & 0xFFFF,
            (ts0 + 960 * i) & 0xFFFFFFFF,
            i == 0,
            bytes(rng.randrange(60, 120)),
            t0 + 0.020 * i,
        )
        for i in range(count)
    ]


def video_stream(rng: random.Random, seconds: float, t0: float) -> list[Packet]:
    seq = 65536 - 2000
    ts0 = rng.randrange(1 << 32)
    out: list[Packet] = []
    for f in range(int(seconds * 30)):
        key = f % 60 == 0
        n = rng.randrange(20, 30) if key else rng.randrange(3, 9)
        send = t0 + f / 30
        # VP8: the first packet's descriptor has S=1 PID=0, then the VP8 header's P bit (0: key).
        first = bytes((0x10, 0x00 if key else 0x01)) + bytes(1000)
        for k in range(n):
            payload = first if k == 0 else b"\x00" + bytes(1000)
            out.append(
                Packet(
                    seq & 0xFFFF,
                    (ts0 + 3000 * f) & 0xFFFFFFFF,
                    k == n - 1,
                    payload,
                    send + k * 0.0005,  # paced over half a millisecond per packet
                )
            )
            seq += 1
    return out


def make_trace(kind: str, name: str, rng: random.Random, seconds: float) -> list[Packet]:
    t0 = 1000.0
    stream = (audio_stream if kind == "audio" else video_stream)(rng, seconds, t0)
    for p in stream:
        p.arrival += NETWORK_DELAY
    if name == "loss5":
        stream = [p for p in stream if rng.random() >= 0.05]
    elif name == "reorder":
        for p in stream:
            p.arrival += rng.uniform(0.0, 0.020)
        stream.sort(key=lambda p: p.arrival)
    elif name == "single-loss":
        del stream[len(stream) // 2]
    return stream


def single_loss_time(kind: str, rng_seed: int, seconds: float) -> float:
    """Arrival time the single-loss trace's missing packet would have had."""
    rng = random.Random(rng_seed)
    stream = (audio_stream if kind == "audio" else video_stream)(rng, seconds, 1000.0)
    return stream[len(stream) // 2].arrival + NETWORK_DELAY


def aiortc_inputs(trace: Sequence[Packet], kind: str) -> list[Any]:
    out = []
    for p in trace:
        pkt = RtpPacket(
            payload_type=AUDIO_PT if kind == "audio" else VIDEO_PT,
            marker=int(p.marker),
            sequence_number=p.seq,
            timestamp=p.ts,
            payload=p.payload,
        )
        pkt._data = p.payload  # what RTCRtpReceiver sets (the depayloaded bytes) before add()
        out.append(pkt)
    return out


def meshrtc_inputs(trace: Sequence[Packet], kind: str) -> list[MediaFrame]:
    frame_type = FrameType.AUDIO if kind == "audio" else FrameType.VIDEO
    return [
        MediaFrame(frame_type, p.ts, p.seq, p.payload, p.arrival, p.marker, 0x1234) for p in trace
    ]


def new_aiortc(kind: str) -> AiortcJitterBuffer:
    # The parameters aiortc 1.16's RTCRtpReceiver uses.
    if kind == "audio":
        return AiortcJitterBuffer(capacity=16, prefetch=4)
    return AiortcJitterBuffer(capacity=512, is_video=True)


def new_meshrtc(kind: str) -> JitterBuffer:
    if kind == "audio":
        return JitterBuffer(FrameType.AUDIO)
    return JitterBuffer(FrameType.VIDEO, is_keyframe=is_keyframe_for("VP8"))


def run_aiortc(jb: AiortcJitterBuffer, packets: Sequence[Any]) -> None:
    add = jb.add
    for p in packets:
        add(p)


def run_meshrtc(jb: JitterBuffer, frames: Sequence[MediaFrame]) -> None:
    insert = jb.insert
    pop = jb.pop
    next_due = jb.next_due
    for f in frames:
        t = f.received_at
        due = next_due()
        while due is not None and due <= t:
            pop(due)
            due = next_due()
        insert(f, t)


def timed(run: Callable[[Any, Any], None], make: Callable[[], Any], data: Any) -> float:
    jb = make()
    gc.disable()
    try:
        start = time.perf_counter()
        run(jb, data)
        return time.perf_counter() - start
    finally:
        gc.enable()


# --- playout delay after the single loss (untimed replay) ----------------------------------------


def aiortc_delays(packets: Sequence[Any], trace: Sequence[Packet], kind: str) -> dict[int, float]:
    """Per emitted unit (keyed by the arrival index of its last packet): output time - arrival."""
    jb = new_aiortc(kind)
    arrival_of_ts: dict[int, tuple[int, float]] = {}
    delays: dict[int, float] = {}
    for i, (pkt, p) in enumerate(zip(packets, trace, strict=True)):
        arrival_of_ts[p.ts] = (i, p.arrival)  # the frame's latest packet so far
        _, frame = jb.add(pkt)
        if frame is not None:
            idx, arrived = arrival_of_ts[frame.timestamp]
            delays[idx] = p.arrival - arrived
    return delays


def meshrtc_delays(frames: Sequence[MediaFrame], kind: str) -> dict[int, float]:
    jb = new_meshrtc(kind)
    index = {id(f): i for i, f in enumerate(frames)}
    delays: dict[int, float] = {}

    def collect(items: list[Any], now: float) -> None:
        for item in items:
            if isinstance(item, AudioPacket):
                last = item.frame
            elif isinstance(item, VideoFrame):
                last = max(item.packets, key=lambda f: f.received_at)
            else:
                continue
            delays[index[id(last)]] = now - last.received_at

    for f in frames:
        t = f.received_at
        due = jb.next_due()
        while due is not None and due <= t:
            collect(jb.pop(due), due)
            due = jb.next_due()
        jb.insert(f, t)
    due = jb.next_due()
    while due is not None:
        collect(jb.pop(due), due)
        due = jb.next_due()
    return delays


def delay_summary(delays: dict[int, float], trace: Sequence[Packet], lo: float, hi: float) -> str:
    units = [i for i, p in enumerate(trace) if lo <= p.arrival < hi]
    out = [delays[i] for i in units if i in delays]
    return f"{statistics.fmean(out) * 1000:6.1f} ms" if out else "   n/a   "


def unit_ends(trace: Sequence[Packet], kind: str) -> list[int]:
    """Indices of the packets that complete a unit (audio: every packet; video: marker packets)."""
    if kind == "audio":
        return list(range(len(trace)))
    return [i for i, p in enumerate(trace) if p.marker]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short traces, few repetitions")
    args = parser.parse_args(argv)
    seconds = {"audio": 20.0 if args.quick else 120.0, "video": 6.0 if args.quick else 40.0}
    reps = 3 if args.quick else 7

    names = ("in-order", "loss5", "reorder", "single-loss")
    total_mesh = total_aio = 0.0
    total_packets = 0
    print(f"python {sys.version.split()[0]}, {reps} interleaved repetitions, best of each")
    print(f"{'trace':<20}{'packets':>8}{'meshrtc us/pkt':>16}{'aiortc us/pkt':>15}{'ratio':>8}")
    results: list[tuple[str, str, list[Packet], list[Any], list[MediaFrame]]] = []
    for kind in ("audio", "video"):
        for i, name in enumerate(names):
            seed = SEED + 17 * i + (0 if kind == "audio" else 1000)
            trace = make_trace(kind, name, random.Random(seed), seconds[kind])
            aio_in = aiortc_inputs(trace, kind)
            mesh_in = meshrtc_inputs(trace, kind)
            results.append((kind, name, trace, aio_in, mesh_in))
            best_mesh = best_aio = float("inf")
            for _ in range(reps):
                best_aio = min(best_aio, timed(run_aiortc, lambda k=kind: new_aiortc(k), aio_in))
                best_mesh = min(
                    best_mesh, timed(run_meshrtc, lambda k=kind: new_meshrtc(k), mesh_in)
                )
            n = len(trace)
            total_mesh += best_mesh
            total_aio += best_aio
            total_packets += n
            print(
                f"{kind + ' ' + name:<20}{n:>8}{best_mesh / n * 1e6:>16.2f}"
                f"{best_aio / n * 1e6:>15.2f}{best_mesh / best_aio:>8.2f}"
            )

    print()
    print("playout delay (output time - arrival), mean over units arriving in the window:")
    for kind, name, trace, aio_in, mesh_in in results:
        if name != "single-loss":
            continue
        seed = SEED + 17 * names.index(name) + (0 if kind == "audio" else 1000)
        lost_at = single_loss_time(kind, seed, seconds[kind])
        ends = set(unit_ends(trace, kind))
        aio = {i: d for i, d in aiortc_delays(aio_in, trace, kind).items() if i in ends}
        mesh = {i: d for i, d in meshrtc_delays(mesh_in, kind).items() if i in ends}
        before = (lost_at - 6.0, lost_at - 1.0)
        after = (lost_at + 1.0, lost_at + 6.0)
        units_after = [i for i in ends if after[0] <= trace[i].arrival < after[1]]
        for label, delays in (("meshrtc", mesh), ("aiortc", aio)):
            out_after = sum(1 for i in units_after if i in delays)
            print(
                f"  {kind} {label:<8} before loss {delay_summary(delays, trace, *before)}"
                f"   1-6 s after loss {delay_summary(delays, trace, *after)}"
                f"   units out after loss {out_after}/{len(units_after)}"
            )
    ratio = total_mesh / total_aio
    print()
    print(
        f"overall: meshrtc {total_mesh / total_packets * 1e6:.2f} us/packet, "
        f"aiortc {total_aio / total_packets * 1e6:.2f} us/packet over {total_packets} packets"
    )
    print(f"ratio_vs_aiortc={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
