"""Share of a process's active time per component, from a py-spy profile in collapsed-stack form.

Run: ``.venv/bin/python bench/support/profile_attribution.py FILE`` on what ``bench/members.py --profile
FILE`` recorded (py-spy ``--format raw``: one ``frame;frame;...;leaf COUNT`` line per stack; the
same file opens in https://www.speedscope.app or ``flamegraph.pl``). py-spy leaves idle threads
out by default, so the samples are the process's *active* time, all its threads together.

Each active stack is charged to the deepest frame that names a component (:data:`RULES`, first match
from the leaf up), so SRTP called from aiortc's send loop counts as SRTP, not as aiortc, and a
numpy call made by the mixer counts as meshrtc. A C extension's time shows under the Python frame
that called it (py-spy without ``--native``), which is why the codecs are matched by their
Python wrappers. What nothing matches is "asyncio/trio/other plumbing".
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterable
from pathlib import Path

#: (component, pattern on one frame "Class.function (path/file.py:line)"), tried leaf-first.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("audio level (RFC 6464)", r"compute_audio_level_dbov|audio_level_dbov"),
        ("Opus encode", r"OpusEncoder\.(encode|_encode_direct) \("),
        ("VP9 encode", r"Vp9Encoder\.\w+ \("),
        ("VP8/H.264 encode", r"(Vp8|H264)Encoder\.\w+ \("),
        # Any OpusDecoder method (decode, conceal, recover, the ctypes call they share).
        ("Opus decode", r"OpusDecoder\.\w+ \(|AudioDecoder\.decode"),
        ("video decode", r"(Vp9|Vp8|H264)Decoder\.\w+ \(|VideoDecoder\.decode"),
        ("SRTP", r"\(pylibsrtp/"),
        ("UDP sendto", r"DatagramTransport\.sendto \(|StunProtocol\.send_data \("),
        (
            "thread-pool hand-off",
            r"\(concurrent/futures/|run_in_executor \(|call_soon_threadsafe \(|_write_to_self \(",
        ),
        ("trio <-> asyncio crossings", r"run_sync_soon \(|wakeup_thread_and_signal_safe \("),
        ("RTP/RTCP parse+serialize", r"\(aiortc/rtp\.py"),
        ("aiortc receive path", r"\(aiortc/(rtcrtpreceiver|jitterbuffer|rate)\.py"),
        ("aiortc send path", r"\(aiortc/rtcrtpsender\.py"),
        ("DTLS/ICE/SCTP", r"\((aioice/|aiortc/(rtcdtlstransport|rtcicetransport|rtcsctp))"),
        ("meshrtc mix/pipeline", r"\(meshrtc/(pipeline|session)/"),
        ("meshrtc media (sync, jitter, play)", r"\(meshrtc/media/"),
        ("meshrtc rtc (taps, tracks, bridge)", r"\(meshrtc/rtc/"),
        ("meshrtc other", r"\(meshrtc/"),
    )
)
OTHER = "asyncio/trio/other plumbing"
IDLE = "(waiting: not active)"
#: A stack whose leaf is one of these is a thread waiting (epoll, an executor's queue, a lock):
#: py-spy's ``--nonblocking`` mode cannot always tell such a thread is idle, so they are counted
#: apart and left out of the shares.
WAITING = re.compile(
    r"^(\w+Selector\.select|EpollIOManager\.get_events|_worker|Condition\.wait|Event\.wait"
    r"|SimpleQueue\.get|Queue\.get) \("
)


def attribute(lines: Iterable[str]) -> collections.Counter[str]:
    """Samples per component from collapsed-stack lines (root first, leaf last)."""
    totals: collections.Counter[str] = collections.Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if WAITING.search(frames[-1]):
            totals[IDLE] += int(count)
            continue
        component = OTHER
        for frame in reversed(frames):
            match = next((name for name, rule in RULES if rule.search(frame)), None)
            if match is not None:
                component = match
                break
        totals[component] += int(count)
    return totals


def report(path: Path) -> str:
    """One line per component: share of active samples, largest first."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        totals = attribute(lines)
    idle = totals.pop(IDLE, 0)
    total = sum(totals.values()) or 1
    rows = [f"{'component':<38} {'share':>6} {'samples':>8}"]
    rows += [f"{name:<38} {100.0 * n / total:>5.1f}% {n:>8}" for name, n in totals.most_common()]
    rows.append(f"{'active samples (shares of these)':<38} {'':>6} {total:>8}")
    rows.append(f"{'waiting samples (left out)':<38} {'':>6} {idle:>8}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    args = parser.parse_args(argv)
    print(report(args.profile))


if __name__ == "__main__":
    main()
