"""CPU per 20 ms audio frame of one member's receive-side media steps (docs/benchmarks.md,
"Per-member cost"): the drift compensation stage (libsoxr resampling, or pass-through when there is
no drift to compensate) and the SyncManager's per-pop state refresh.

Run: ``.venv/bin/python bench/media_costs.py [--frames 3000] [--rounds 5]`` (a few seconds). For a
before/after, run the same file against an older tree: ``git archive <commit> | tar -x -C
/tmp/old`` then ``PYTHONPATH=/tmp/old/src .venv/bin/python bench/media_costs.py``.

- ``stage_0ppm``: one stream with no drift (factor 1, presentation times 20 ms apart), the case
  of every member on one machine or one clock.
- ``stage_500ppm``: a sender 500 ppm fast with its factor applied (always resampled).
- ``sync_pop``: a SyncManager in Synced (audio only, one SR a second): ``insert`` of one packet
  plus ``pop_next_aligned`` at its due time, per packet.
- ``sync_refresh``: ``SyncManager._refresh`` alone in Synced, the part of each pop that asks the
  state machine what it may do.

Process CPU time, median over rounds; the transport pays each once per member per 20 ms. The load
average is printed: the machine may be shared. Seeded noise. Last line:
``stage_0ppm_us_per_frame=<float>``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from meshrtc.media.audio_stage import FRAME_SAMPLES, FRAME_SECONDS, DriftCompensationStage
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET, SenderReport
from meshrtc.media.sync import SyncManager

SSRC = 0xA


def _blocks(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-0.5, 0.5, (FRAME_SAMPLES, 1)).astype(np.float32) for _ in range(count)]


def stage_cost(frames: int, drift_ppm: float) -> float:
    blocks = _blocks(frames)
    k = 1 / (1 + drift_ppm * 1e-6)
    stage = DriftCompensationStage()
    start = time.process_time()
    for n, block in enumerate(blocks):
        stage.push(block, 100.0 + n * FRAME_SECONDS * k, k)
    return 1e6 * (time.process_time() - start) / frames


def _ntp64(seconds: float) -> int:
    whole = math.floor(seconds)
    return (whole << 32) | min(0xFFFFFFFF, round((seconds - whole) * 2**32))


def _synced(frames: int) -> tuple[SyncManager, list[tuple[float, MediaFrame | SenderReport]]]:
    """A SyncManager past its first SRs, and the steady audio (+ one SR a second) that follows."""
    events: list[tuple[float, MediaFrame | SenderReport]] = []
    delay = 0.03
    total = frames + 500
    for n in range(total):
        arrival = 10.0 + 0.02 * n + delay
        frame = MediaFrame(
            FrameType.AUDIO, (1000 + 960 * n) & 0xFFFFFFFF, n & 0xFFFF, b"a", arrival, True, SSRC
        )
        events.append((arrival, frame))
    for k in range(int(total * 0.02)):
        at = 10.0 + k + 0.3
        sender = k + 0.3 - delay
        sr = SenderReport(
            SSRC,
            _ntp64(NTP_EPOCH_OFFSET + 1e6 + sender),
            (1000 + round(sender * 48_000)) & 0xFFFFFFFF,
            0,
            0,
            at,
        )
        events.append((at, sr))
    events.sort(key=lambda e: e[0])
    sm = SyncManager("p")
    warm = [e for e in events if e[0] < 20.0]
    _run(sm, warm)
    assert sm.state == "Synced", sm.state
    return sm, [e for e in events if e[0] >= 20.0]


def _run(sm: SyncManager, events: list[tuple[float, MediaFrame | SenderReport]]) -> int:
    pops = 0
    for at, obj in events:
        while (due := sm.next_due()) is not None and due <= at:
            sm.pop_next_aligned(due)
            pops += 1
        if isinstance(obj, MediaFrame):
            sm.insert(obj, at)
        else:
            sm.on_sender_report(FrameType.AUDIO, obj)
    return pops


def sync_pop_cost(frames: int) -> float:
    sm, events = _synced(frames)
    start = time.process_time()
    _run(sm, events)
    spent = time.process_time() - start
    packets = sum(isinstance(obj, MediaFrame) for _, obj in events)
    return 1e6 * spent / packets


def sync_refresh_cost(frames: int) -> float:
    sm, events = _synced(frames)
    now = events[0][0]
    refresh: Callable[[float], None] = sm._refresh  # the step being measured
    start = time.process_time()
    for i in range(frames):
        refresh(now + i * 1e-6)
    return 1e6 * (time.process_time() - start) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="20 ms frames per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases: dict[str, Callable[[], float]] = {
        "stage_0ppm": lambda: stage_cost(args.frames, 0.0),
        "stage_500ppm": lambda: stage_cost(args.frames, 500.0),
        "sync_pop": lambda: sync_pop_cost(args.frames),
        "sync_refresh": lambda: sync_refresh_cost(args.frames),
    }
    results: dict[str, float] = {}
    for name, case in cases.items():
        runs = [case() for _ in range(args.rounds)]
        results[name] = statistics.median(runs)
        load = os.getloadavg()
        print(
            f"{name:14s} {results[name]:8.1f} µs/frame  (rounds {', '.join(f'{r:.1f}' for r in runs)};"
            f" load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
        )
    print(f"stage_0ppm_us_per_frame={results['stage_0ppm']:.2f}")


if __name__ == "__main__":
    main()
