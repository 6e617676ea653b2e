"""CPU cost of meshrtc's asyncio bridge against plain asyncio aiortc (docs/rtc-bridge.md).

The same workload runs twice, each in a fresh subprocess, back to back: N one-way Opus streams over
loopback WebRTC (N sender and N receiver RTCPeerConnections in the process, 440 Hz tone fed every
20 ms into a paced :class:`~meshrtc.rtc.tracks.AudioOutputTrack`).

* ``plain``: asyncio only. aiortc's own receive path (jitter buffer + decoder thread) decodes, and
  an asyncio task per stream consumes every decoded frame from ``track.recv()``.
* ``bridge``: trio owns the program; aiortc runs on the bridge's loop thread; meshrtc's taps turn
  every RTP packet into a MediaFrame, hand it to trio through ``ToTrio``, and a trio task per
  stream decodes it with :class:`~meshrtc.rtc.opus.OpusDecoder` (libopus, float32 48 kHz; until
  issue 17 aiortc's PyAV decoder, which the figures in docs/rtc-bridge.md were measured with).
  The tone is fed from trio.

Process CPU time (all threads: ``time.process_time``) is measured over the same steady-state window
once every stream has delivered frames, and split per thread where /proc allows. Each round runs
both variants back to back; the last line is ``bridge_cpu_ratio=<median over rounds of
bridge/plain>``; the goal is <= 1.10. Usage::

    .venv/bin/python bench/bridge.py [--duration 10] [--streams 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

WARMUP = 0.5  # seconds after the last stream's first frame, before the window opens


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (Linux /proc; empty elsewhere). Pool workers are summed."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(int(tid), "other")
        for prefix in ("asyncio_", "audio-decoder"):
            if name.startswith(prefix):
                name = prefix + "*"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _window(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 2) for k, v in after.items() if v - before.get(k, 0.0)}


def _tone_chunk() -> npt.NDArray[np.float32]:
    t = np.arange(960, dtype=np.float32) / 48_000
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


async def _negotiate(offerer: Any, answerer: Any) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


# --- plain asyncio ---------------------------------------------------------------------------------


async def _plain(duration: float, streams: int) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import MediaStreamError

    from meshrtc.rtc.tracks import AudioOutputTrack

    config = RTCConfiguration(iceServers=[])
    counts = [0] * streams
    flowing = [asyncio.Event() for _ in range(streams)]
    pcs: list[Any] = []
    tracks: list[AudioOutputTrack] = []
    consumers: list[asyncio.Task[None]] = []

    async def consume(i: int, track: Any) -> None:
        try:
            while True:
                await track.recv()
                counts[i] += 1
                flowing[i].set()
        except MediaStreamError:
            pass

    for i in range(streams):
        a, b = RTCPeerConnection(config), RTCPeerConnection(config)
        pcs += [a, b]
        track = AudioOutputTrack()
        tracks.append(track)
        a.addTrack(track)

        def on_track(remote: Any, i: int = i) -> None:
            consumers.append(asyncio.ensure_future(consume(i, remote)))

        b.on("track", on_track)
        await _negotiate(a, b)

    chunk = _tone_chunk()

    async def feed() -> None:
        while True:
            for track in tracks:
                track.put(chunk)
            await asyncio.sleep(0.02)

    feeder = asyncio.ensure_future(feed())
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in flowing)), timeout=30)
    await asyncio.sleep(WARMUP)
    threads0 = _thread_cpu()
    frames0, cpu0, wall0 = sum(counts), time.process_time(), time.monotonic()
    await asyncio.sleep(duration)
    frames1, cpu1, wall1 = sum(counts), time.process_time(), time.monotonic()
    threads = _window(threads0, _thread_cpu())
    feeder.cancel()
    for pc in pcs:
        await pc.close()
    for task in consumers:
        task.cancel()
    return {
        "cpu": cpu1 - cpu0,
        "wall": wall1 - wall0,
        "frames": frames1 - frames0,
        "threads": threads,
    }


# --- through meshrtc's bridge ----------------------------------------------------------------------


async def _bridge(duration: float, streams: int) -> dict[str, Any]:
    import trio
    from aiortc import RTCConfiguration, RTCPeerConnection

    from meshrtc.media.frame import MediaFrame
    from meshrtc.rtc.aiortc_adapter import PeerTap, TapEvent, tap_peer_connection
    from meshrtc.rtc.bridge import ToTrio, open_bridge
    from meshrtc.rtc.opus import OpusDecoder
    from meshrtc.rtc.tracks import AudioOutputTrack

    config = RTCConfiguration(iceServers=[])
    counts = [0] * streams
    flowing = [trio.Event() for _ in range(streams)]
    tracks: list[AudioOutputTrack] = []
    result: dict[str, Any] = {}

    async def consume(i: int, tap: PeerTap, events: trio.MemoryReceiveChannel[TapEvent]) -> None:
        decoder: OpusDecoder | None = None
        async for event in events:
            if isinstance(event, MediaFrame):
                if decoder is None:
                    codec = tap.codec(event)
                    assert codec is not None
                    decoder = OpusDecoder()
                decoder.decode(event.payload)
                counts[i] += 1
                flowing[i].set()

    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        for i in range(streams):
            a = await bridge.call(RTCPeerConnection, config)
            bridge.register(a)
            b = await bridge.call(RTCPeerConnection, config)
            bridge.register(b)
            track = AudioOutputTrack()
            tracks.append(track)
            await bridge.call(a.addTrack, track)
            pipe: ToTrio[TapEvent]
            pipe, events = bridge.open_channel()
            tap = await bridge.call(tap_peer_connection, b, pipe.send)
            await bridge.run(_negotiate, a, b)
            nursery.start_soon(consume, i, tap, events)

        chunk = _tone_chunk()

        async def feed() -> None:
            while True:
                for track in tracks:
                    track.put(chunk)
                await trio.sleep(0.02)

        nursery.start_soon(feed)
        with trio.fail_after(30):
            for event in flowing:
                await event.wait()
        await trio.sleep(WARMUP)
        threads0 = _thread_cpu()
        frames0, cpu0, wall0 = sum(counts), time.process_time(), time.monotonic()
        await trio.sleep(duration)
        frames1, cpu1, wall1 = sum(counts), time.process_time(), time.monotonic()
        threads = _window(threads0, _thread_cpu())
        result = {
            "cpu": cpu1 - cpu0,
            "wall": wall1 - wall0,
            "frames": frames1 - frames0,
            "threads": threads,
        }
        nursery.cancel_scope.cancel()
    return result


def _run_variant(variant: str, duration: float, streams: int) -> None:
    from meshrtc.rtc.host_candidates import LOOPBACK, set_host_addresses

    set_host_addresses(LOOPBACK)  # media stays on 127.0.0.1
    if variant == "plain":
        result = asyncio.run(_plain(duration, streams))
    else:
        import trio

        result = trio.run(_bridge, duration, streams)
    result["variant"] = variant
    print(json.dumps(result), flush=True)


def _spawn(variant: str, duration: float, streams: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--variant", variant, "--duration", str(duration)]
    command += ["--streams", str(streams)]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=duration + 120
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="plain/bridge pairs; median reported")
    parser.add_argument("--variant", choices=("plain", "bridge"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args.variant, args.duration, args.streams)
        return

    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "bridge": []}
    ratios: list[float] = []
    for round_index in range(args.rounds):
        # Alternate the order so a drifting machine load does not always favour one variant; the
        # ratio is taken per round (adjacent runs share the load) and the median of rounds reported.
        order = ("plain", "bridge") if round_index % 2 == 0 else ("bridge", "plain")
        for variant in order:
            result = _spawn(variant, args.duration, args.streams)
            runs[variant].append(result)
            rate = result["frames"] / result["wall"]
            threads = ", ".join(f"{k} {v:.2f}" for k, v in result["threads"].items())
            print(
                f"round {round_index + 1} {variant:6s}: cpu {result['cpu']:.2f} s over "
                f"{result['wall']:.2f} s wall, {result['frames']} frames decoded ({rate:.0f}/s)"
                f"  [{threads}]"
            )
        ratios.append(runs["bridge"][-1]["cpu"] / runs["plain"][-1]["cpu"])
        print(f"round {round_index + 1} ratio {ratios[-1]:.3f}")
    plain = statistics.median(r["cpu"] for r in runs["plain"])
    bridge = statistics.median(r["cpu"] for r in runs["bridge"])
    expected = args.streams * 50 * args.duration
    for variant, results in runs.items():
        frames = statistics.median(r["frames"] for r in results)
        if frames < 0.9 * expected:
            print(f"warning: {variant} decoded {frames:.0f} frames, expected ~{expected:.0f}")
    print(
        f"plain asyncio aiortc:   {plain:.3f} CPU s median ({args.streams} streams, {args.duration:g} s)"
    )
    print(f"through meshrtc bridge: {bridge:.3f} CPU s median")
    print(f"bridge_cpu_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
