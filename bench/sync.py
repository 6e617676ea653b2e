"""A/V sync over a drifting, jittery, lossy path: the SyncManager end to end, simulated.

One sender captures audio (20 ms Opus packets, 48 kHz RTP clock) and video (30 fps, two packets per
frame, 90 kHz) with independent random RTP origins and sequence numbers, on a clock that runs
``--drift-ppm`` fast against ours. Every packet crosses a path with a fixed delay plus uniform
±``--jitter-ms`` jitter and ``--loss`` random loss; each stream sends a Sender Report every 5 s of
the sender's time. The receiver is one :class:`~meshrtc.media.sync.SyncManager`, popped exactly at
its ``next_due()``. Nothing sleeps: ten simulated minutes take seconds.

For every presented video frame whose audio (the packet captured over the frame's capture instant)
was presented too, the A/V skew is the difference between how far apart they were shown and how far
apart they were captured, on our clock. Printed: p50/p95/max of |skew| after convergence, the drift
estimate's error, and a last line ``av_skew_p95_ms=<float>`` (goal: <= 10).

    .venv/bin/python bench/sync.py [--seconds 600] [--drift-ppm 500] [--seed 1]

tests/test_sync.py runs the same simulation (shorter) and asserts every pair is within ±10 ms.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, VideoFrame
from meshrtc.media.rtcp import SenderReport
from meshrtc.media.sync import SyncManager

AUDIO_STEP = 960  # 20 ms at 48 kHz
VIDEO_STEP = 3000  # 1/30 s at 90 kHz
NTP_START = 3_900_000_000.0


@dataclass
class Scenario:
    seconds: float = 600.0
    drift_ppm: float = 500.0
    jitter_s: float = 0.020
    base_delay_s: float = 0.040
    loss: float = 0.02
    sr_interval_s: float = 5.0
    video_packets_per_frame: int = 2
    seed: int = 1
    converged_after_s: float = 30.0


@dataclass
class Outcome:
    #: (local presentation time of the video frame, skew in seconds, flagged in sync)
    skews: list[tuple[float, float, bool]] = field(default_factory=list)
    #: audio presentation time minus capture time (our clock), seconds
    audio_latency: list[float] = field(default_factory=list)
    #: (local time, estimate - truth in ppm) after each SR once there is an estimate
    drift_errors: list[tuple[float, float]] = field(default_factory=list)
    audio_presented: int = 0
    video_presented: int = 0
    states: list[str] = field(default_factory=list)
    final_state: str = ""
    sync_failures: int = 0

    def converged_skews_ms(self, after: float, *, in_sync_only: bool = False) -> list[float]:
        return [
            abs(s) * 1000.0 for t, s, ok in self.skews if t >= after and (ok or not in_sync_only)
        ]

    def late_frames(self, after: float) -> int:
        return sum(1 for t, _, ok in self.skews if t >= after and not ok)


def _ntp64(seconds: float) -> int:
    whole = math.floor(seconds)
    return (whole << 32) | min(0xFFFFFFFF, round((seconds - whole) * 2**32))


def simulate(sc: Scenario) -> Outcome:
    rng = random.Random(sc.seed)
    rate = 1.0 + sc.drift_ppm * 1e-6  # sender seconds per local second

    def local(sender_seconds: float) -> float:
        """Our clock when the sender's clock read NTP_START + sender_seconds."""
        return 10.0 + sender_seconds / rate

    a_origin, v_origin = rng.randrange(2**32), rng.randrange(2**32)
    a_seq0, v_seq0 = rng.randrange(2**16), rng.randrange(2**16)
    a_ssrc, v_ssrc = 0xA0D10, 0x1DE0
    v_phase = rng.uniform(0.0, 0.02)  # video capture instants are not aligned to audio packets

    def arrival(sent_local: float) -> float | None:
        if rng.random() < sc.loss:
            return None
        return sent_local + sc.base_delay_s + rng.uniform(-sc.jitter_s, sc.jitter_s)

    events: list[tuple[float, int, object]] = []
    n_audio = int(sc.seconds / 0.020)
    for i in range(n_audio):
        s = i * 0.020
        at = arrival(local(s))
        if at is not None:
            ts = (a_origin + AUDIO_STEP * i) & 0xFFFFFFFF
            frame = MediaFrame(
                FrameType.AUDIO, ts, (a_seq0 + i) & 0xFFFF, b"\0" * 80, at, True, a_ssrc
            )
            events.append((at, 0, frame))
    n_video = int(sc.seconds * 30)
    seq = v_seq0
    per = sc.video_packets_per_frame
    for j in range(n_video):
        s = v_phase + j / 30
        ts = (v_origin + VIDEO_STEP * j) & 0xFFFFFFFF
        for p in range(per):
            at = arrival(local(s) + p * 0.001)
            if at is not None:
                frame = MediaFrame(
                    FrameType.VIDEO, ts, seq & 0xFFFF, b"\0" * 900, at, p == per - 1, v_ssrc
                )
                events.append((at, 0, frame))
            seq += 1
    for kind, ssrc, origin, clock, start, phase in (
        (FrameType.AUDIO, a_ssrc, a_origin, 48_000, 0.0, 1.0),
        (FrameType.VIDEO, v_ssrc, v_origin, 90_000, v_phase, 3.5),
    ):
        s = phase
        while s < sc.seconds:
            at = arrival(local(s))
            if at is not None:
                rtp = (origin + round((s - start) * clock)) & 0xFFFFFFFF
                sr = SenderReport(ssrc, _ntp64(NTP_START + s), rtp, 0, 0, at)
                events.append((at, 1, (kind, sr)))
            s += sc.sr_interval_s
    events.sort(key=lambda e: e[0])

    sm = SyncManager("sim-peer")
    out = Outcome()
    audio_shown: dict[int, float] = {}  # audio packet index -> presentation (call) time
    video_shown: list[tuple[float, int, bool]] = []  # (presentation time, frame index, in sync)
    last_state = sm.state
    out.states.append(last_state)

    def record(now: float) -> None:
        for aligned in sm.pop_next_aligned(now):
            item = aligned.item
            if isinstance(item, AudioPacket):
                idx = ((item.frame.rtp_timestamp - a_origin) & 0xFFFFFFFF) // AUDIO_STEP
                audio_shown[idx] = now
                out.audio_presented += 1
                out.audio_latency.append(now - local(idx * 0.020))
            elif isinstance(item, VideoFrame):
                idx = ((item.rtp_timestamp - v_origin) & 0xFFFFFFFF) // VIDEO_STEP
                video_shown.append((now, idx, aligned.in_sync))
                out.video_presented += 1

    now = 0.0
    i = 0
    stuck = 0
    while i < len(events) or sm.next_due() is not None:
        due = sm.next_due()
        upcoming = events[i][0] if i < len(events) else math.inf
        if due is not None and due <= upcoming and stuck < 3:
            before = (out.audio_presented, out.video_presented, sm.pending_count)
            now = max(now, due)
            record(now)
            after = (out.audio_presented, out.video_presented, sm.pending_count)
            stuck = stuck + 1 if after == before and sm.next_due() == due else 0
            if upcoming == math.inf and stuck >= 3:
                break
        else:
            stuck = 0
            if i >= len(events):
                break
            at, kind, obj = events[i]
            i += 1
            now = max(now, at)
            if kind == 0:
                assert isinstance(obj, MediaFrame)
                sm.insert(obj, at)
            else:
                stream, sr = obj  # type: ignore[misc]
                sm.on_sender_report(stream, sr)
                est = sm.clock_drift_estimator.drift_ppm
                if est is not None:
                    out.drift_errors.append((at, est - sc.drift_ppm))
        if sm.state != last_state:
            last_state = sm.state
            out.states.append(last_state)

    for shown_at, j, in_sync in video_shown:
        s_video = v_phase + j / 30
        a_idx = math.floor(s_video / 0.020)
        a_shown = audio_shown.get(a_idx)
        if a_shown is None:
            continue
        captured_apart = local(s_video) - local(a_idx * 0.020)
        skew = (shown_at - a_shown) - captured_apart
        out.skews.append((shown_at, skew, in_sync))
    out.final_state = sm.state
    out.sync_failures = sm.sync_failures
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--drift-ppm", type=float, default=500.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--loss", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sc = Scenario(
        seconds=args.seconds,
        drift_ppm=args.drift_ppm,
        jitter_s=args.jitter_ms / 1000.0,
        loss=args.loss,
        seed=args.seed,
    )
    started = time.perf_counter()
    out = simulate(sc)
    elapsed = time.perf_counter() - started
    after = 10.0 + sc.converged_after_s
    skews = out.converged_skews_ms(after)
    in_sync = out.converged_skews_ms(after, in_sync_only=True)
    late_drift = [abs(e) for t, e in out.drift_errors if t >= 10.0 + 300.0]
    print(
        f"simulated {sc.seconds:.0f} s in {elapsed:.1f} s: drift {sc.drift_ppm:+.0f} ppm, "
        f"jitter ±{args.jitter_ms:.0f} ms, loss {sc.loss:.0%}, SR every {sc.sr_interval_s:.0f} s"
    )
    print(
        f"presented: {out.audio_presented} audio packets, {out.video_presented} video frames; "
        f"final state {out.final_state}; sync failures {out.sync_failures}"
    )
    if not skews:
        print("no aligned A/V pairs after convergence", file=sys.stderr)
        return 1
    latency = sorted(out.audio_latency[len(out.audio_latency) // 10 :])
    print(
        f"audio capture-to-presentation: median {statistics.median(latency) * 1000:.1f} ms "
        f"(path {sc.base_delay_s * 1000:.0f} ms ± {args.jitter_ms:.0f} ms + buffers + alignment)"
    )
    print(
        f"|A/V skew| over {len(skews)} pairs after {sc.converged_after_s:.0f} s: "
        f"p50 {statistics.median(skews):.2f} ms, p95 {_pct(skews, 0.95):.2f} ms, "
        f"max {max(skews):.2f} ms"
    )
    late = out.late_frames(after)
    print(
        f"frames flagged late (video jitter buffer released them after their audio played): "
        f"{late} ({late / len(skews):.3%}); max |skew| of the in-sync pairs {max(in_sync):.2f} ms"
    )
    if late_drift:
        final = out.drift_errors[-1][1]
        print(
            f"drift estimate error from 5 min on: mean {statistics.fmean(late_drift):.1f} ppm, "
            f"max {max(late_drift):.1f} ppm, final {final:+.1f} ppm"
        )
    print(f"av_skew_p95_ms={_pct(skews, 0.95):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
