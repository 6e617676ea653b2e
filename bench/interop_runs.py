"""Reused-server interop runs: N pairs of GStreamer ``webrtcbin`` clients against ONE ``meshrtc serve``.

Issue 11 reported that against one server reused across client runs, 5 of 12 runs failed (one
member's audio missing from the other's mix). This starts ``meshrtc serve --video-codec CODEC``
once, then runs ``--runs`` times: two clients (tests/gst_client.py under Debian's /usr/bin/python3)
join at the same time, send a tone each, video and data for ``--seconds`` once both are connected,
and leave. Each run passes or fails by tests/gst_interop.py's ``judge`` (the other member's tone in
>= 95% of the 20 ms windows from 1 s after both connected, never one's own, video decoded, data
echoed), and the reason is printed. Also counted per run from the server's log: A/V timeline
rebuilds and "went backwards" drift-estimator resets.

    .venv/bin/python bench/interop_runs.py --runs 12
    .venv/bin/python bench/interop_runs.py --runs 12 --cert default --codec H264
    # an older commit's server, for a before/after figure:
    git archive <commit> | tar -x -C /tmp/before && \\
        .venv/bin/python bench/interop_runs.py --runs 12 --src /tmp/before/src

Prints one line per run and a summary; ``--json`` adds one JSON object as the last line.
``--diag --verbose`` also logs, in the server, per-peer counters every 0.5 s (bench/interop_diag:
input ages at the router, MixMinus lateness, output ages, the send tracks' late/silent frames) and
prints them for failed runs.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

# The driver lives with the tests (tests/test_gstreamer.py uses it too); this is run as a script.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gst_interop import (  # noqa: E402
    CERTIFICATES,
    CODECS,
    certificates,
    gstreamer_missing,
    meshrtc_serve,
    run_pair,
)

#: Server log lines worth counting per run (substring → label).
MARKERS = {
    "rebuilding the A/V timeline": "timeline_rebuilds",
    "went backwards": "drift_resets",
    "Traceback": "tracebacks",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--codec", choices=CODECS, default="VP9")
    parser.add_argument(
        "--cert",
        choices=(*CERTIFICATES, "alternate"),
        default="ecdsa",
        help="the clients' DTLS certificate (alternate: ecdsa, default, ecdsa, ...)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="media per run, both connected")
    parser.add_argument("--src", type=Path, help="run the meshrtc package in this folder")
    parser.add_argument("--verbose", action="store_true", help="server log of failed runs")
    parser.add_argument(
        "--diag",
        action="store_true",
        help="per-peer counters in the server log every 0.5 s (bench/interop_diag; with --verbose)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="instead: every codec (one server each) x every certificate, --runs runs per cell",
    )
    args = parser.parse_args()

    missing = gstreamer_missing()
    if missing:
        print(f"GStreamer parts missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    where = f"--src {args.src}" if args.src else f"working tree at {commit}"
    if args.matrix:
        return matrix(args, where)
    print(f"meshrtc serve ({where}), {args.codec}, {args.runs} runs of {args.seconds:g} s")
    kinds = ["ecdsa", "default"] if args.cert == "alternate" else [args.cert]
    results = []
    started = time.monotonic()
    extra_path = [ROOT / "bench" / "interop_diag"] if args.diag else []
    with (
        certificates() as certs,
        meshrtc_serve(args.codec, src=args.src, extra_path=extra_path) as serve,
    ):
        for i in range(args.runs):
            result = run_pair(serve, certs[kinds[i % len(kinds)]], index=i, seconds=args.seconds)
            counts = {
                label: sum(marker in line for line in result.server_log)
                for marker, label in MARKERS.items()
            }
            counts.update(_diag_totals(result.server_log))
            extra = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            print(result.summary() + (f" [server: {extra}]" if extra else ""), flush=True)
            if args.verbose and not result.passed:
                for line in result.server_log:
                    if "transitions.core" not in line and "aioice" not in line:
                        print(f"    {line}")
            results.append((result, counts))
    failed = [r for r, _ in results if not r.passed]
    print(
        f"{len(failed)} of {len(results)} runs failed against one reused server "
        f"({time.monotonic() - started:.0f} s)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "codec": args.codec,
                    "commit": commit,
                    "src": str(args.src) if args.src else None,
                    "runs": [
                        {
                            "index": r.index,
                            "certificate": r.certificate,
                            "passed": r.passed,
                            "retried": r.retried,
                            "failures": r.failures,
                            "figures": r.figures,
                            "server": counts,
                        }
                        for r, counts in results
                    ],
                    "failed": len(failed),
                }
            )
        )
    return 0  # a measurement: the figures are the output (make bench runs every script)


_DIAG_TRACK = re.compile(r"meshrtc\.diag: track:\w+ (\{.*\})")


def _diag_totals(lines: list[str]) -> dict[str, int]:
    """With --diag: the send tracks' late and silent frames over the run (all tracks)."""
    totals = {"send_late": 0, "send_silent": 0}
    for line in lines:
        match = _DIAG_TRACK.search(line)
        if match:
            counters = ast.literal_eval(match.group(1))
            totals["send_late"] += counters.get("late", 0)
            totals["send_silent"] += counters.get("silent", 0)
    return totals


def matrix(args: argparse.Namespace, where: str) -> int:
    """codec x certificate, ``--runs`` runs per cell, one server per codec reused for its row."""
    print(f"meshrtc serve ({where}): {args.runs} run(s) per cell of {args.seconds:g} s")
    cells: dict[tuple[str, str], list[bool]] = {}
    with certificates() as certs:
        for codec in CODECS:
            with meshrtc_serve(codec, src=args.src) as serve:
                index = 0
                for _ in range(args.runs):
                    for kind in CERTIFICATES:
                        result = run_pair(serve, certs[kind], index=index, seconds=args.seconds)
                        index += 1
                        print(result.summary(), flush=True)
                        cells.setdefault((codec, kind), []).append(result.passed)
    print(f"\n| codec | {' | '.join(CERTIFICATES)} |\n|---|{'---|' * len(CERTIFICATES)}")
    for codec in CODECS:
        row = [f"{sum(cells[codec, k])}/{len(cells[codec, k])} pass" for k in CERTIFICATES]
        print(f"| {codec} | {' | '.join(row)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
