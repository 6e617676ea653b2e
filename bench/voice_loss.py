"""Speech through packet loss: meshrtc before issue 17, meshrtc now, plain aiortc 1.16 (PESQ-WB, STOI).

Run: ``.venv/bin/python bench/voice_loss.py`` (about 6 min: 27 cells of ~13 s, one after the
other; needs espeak-ng, ``pesq`` and ``pystoi``: ``apt-get install espeak-ng``, ``pip install -e
'.[test]'``). Options: ``--loss 0,2,5,10,20`` (percent), ``--pattern random,bursty``,
``--variants before,now,aiortc``, ``--seconds`` (the clip cut or repeated to that length),
``--seed``, ``--preroll`` (seconds of the same speech sent under the same loss before the scored
clip: a call already in progress, whose sender has had time to react to the loss; default 0),
``--delay-ms`` (added to every datagram reaching the receiver: loopback's round trip is under a
millisecond, so any NACK answer is in time; a real path's is not; default 0),
``--before-commit`` (default 32ba4ef, the tree before issue 17), ``--now-tree`` (default: this
checkout).

What is measured (issue 17): espeak-ng speaks four Harvard sentences (~10 s, resampled to 48 kHz:
bench/support/voice_clip.py); the clip plus 1 s of silence is sent between two peers on
127.0.0.1 at real-time pace, one process per cell (bench/support/voice_cell.py); the receiver's
ICE sockets lose the RTP datagrams of a seeded mask (bench/support/voice_patterns.py: ``random``,
or ``bursty`` Gilbert-Elliott with a mean burst of 2.5 packets; the same mask for every variant)
below aiortc, so the loss shows in the RTCP receiver reports the sender gets, as on a real path.
What the receiver plays is scored against the clip: meshrtc's items back to back (it plays one
per 20 ms slot, concealed ones included), plain aiortc's frames at their RTP timestamps (it
skips what it lost; the gap stays silent instead of pulling the rest early, which favours it);
aligned by cross-correlation; wideband PESQ (ITU-T P.862.2, at 16 kHz) and STOI
(bench/support/voice_score.py).

* ``before``: meshrtc at ``--before-commit`` (``git archive`` into a temporary directory): our
  jitter buffer, FFmpeg's Opus decoder, the fade concealment, no FEC anywhere.
* ``now``: meshrtc as in ``--now-tree``: whatever it decodes, conceals, recovers and sends.
* ``aiortc``: two plain aiortc RTCPeerConnections, aiortc's receiver, jitter buffer and decoder.

Per cell: PESQ-WB, STOI, packets lost (clip and tail), those the jitter buffer offered with the
next packet for FEC, frames recovered (in-band FEC) and concealed as the receiver counted them
over the same span, retransmissions (NACK answers) that arrived and how many of them were lost
(the mask judges a packet's first copy; every later copy is lost independently with the same
probability, as a new datagram would be) (``-``: that tree or stack does not
count it), frames that never came out (plain aiortc skips what it cannot decode), the playout
delay (output time minus capture time: median and max over the frames), the alignment lag (and
how much it grew from the clip's first second to its last: a receiver that resamples or changes
its delay stretches what it plays), when the sender's loss-driven FEC came on (seconds from the
clip's start; ``-``: never, or not in that tree) and the lowest audio bitrate its quality loop
set, the load average (the machine is shared). Then the table per
variant and the goals of issue 17, met or the gap. Last line: ``pesq_wb_10pct=<PESQ-WB of "now"
at 10 % random loss>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "bench" / "support"
sys.path.insert(0, str(SUPPORT))

from voice_clip import RATE, speak  # noqa: E402
from voice_score import align, aligned, pesq_wb, place, stoi  # noqa: E402

FRAME = 960
BEFORE_COMMIT = "32ba4ef"
VARIANTS = ("before", "now", "aiortc")
#: A cell that takes longer than this is stuck (the clip, connecting and draining take ~15 s).
CELL_TIMEOUT = 120.0
#: Issue 17's goals.
GOAL_10 = 3.8
GOAL_20 = 3.0
GOAL_CLEAN_MARGIN = 0.05
#: "Delay unchanged": the median playout delay may move by this much (one 20 ms packet).
GOAL_DELAY_MARGIN_MS = 20.0


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@attrs.frozen
class Cell:
    variant: str
    pattern: str
    loss: int  # percent


@attrs.frozen
class Result:
    cell: Cell
    pesq: float
    stoi: float
    lost: int
    recovered: int | None
    concealed: int | None
    #: Of the lost packets, those the jitter buffer offered with the next packet (None: no such
    #: counter in that tree); ``offered - recovered`` had no FEC data in that next packet.
    offered: int | None
    #: Retransmissions (answers to NACKs) that reached the receiver's sockets, and of those lost
    #: (each independently, with the cell's loss probability).
    resent: int
    resent_lost: int
    missing: int
    delay_ms: float
    delay_max_ms: float
    lag_ms: float
    #: Seconds from the clip's start until the sender's loss-driven FEC came on (None: never or
    #: not in that tree), and the lowest audio bitrate its quality loop set (None: left alone).
    fec_on_s: float | None
    min_bitrate: int | None
    #: Lag in the last second of the clip minus lag in the first: a receiver that resamples (a
    #: drift stage steering on a drift-free path) stretches the clip.
    stretch_ms: float
    load: str


def before_tree(commit: str) -> Path:
    """``commit``'s tree extracted once (git archive) into the temporary directory."""
    target = Path(tempfile.gettempdir()) / f"meshrtc-voice-before-{commit}"
    if not (target / "src" / "meshrtc").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def run_cell(
    cell: Cell, tree: Path, clip_path: Path, seed: int, preroll: int, delay_ms: float, workdir: Path
) -> dict[str, Any]:
    out = workdir / f"{cell.variant}-{cell.pattern}-{cell.loss}.npz"
    stack = "aiortc" if cell.variant == "aiortc" else "meshrtc"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            str(SUPPORT / "voice_cell.py"),
            "--stack", stack,
            "--tree", str(tree),
            "--clip", str(clip_path),
            "--pattern", cell.pattern,
            "--loss", str(cell.loss / 100),
            "--seed", str(seed),
            "--preroll", str(preroll),
            "--delay-ms", str(delay_ms),
            "--out", str(out),
        ],
        check=True,
        timeout=CELL_TIMEOUT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def score(cell: Cell, clip: npt.NDArray[np.float32], preroll: int, data: dict[str, Any]) -> Result:
    info = json.loads(str(data["info"]))
    offsets: list[int] = data["offsets"].tolist()
    frames = np.split(data["samples"], np.cumsum(data["lengths"])[:-1])
    stream = place(zip(offsets, frames, strict=True), preroll + len(clip) + RATE)
    received = stream[preroll:]  # the clip's part (the preroll is not scored)
    offsets = [o - preroll for o in offsets]
    lag = align(clip, received)
    degraded = aligned(clip, received, lag)
    in_clip = {o for o in offsets if 0 <= o < len(clip) - FRAME + 1}
    delays = data["delays"] * 1000
    fec_on = info.get("fec_on_after_s")  # from the stream's start
    return Result(
        cell,
        pesq=pesq_wb(clip, degraded),
        stoi=stoi(clip, degraded),
        lost=int(info["dropped"]),
        recovered=info.get("recovered_frames"),
        concealed=info.get("concealed_frames"),
        offered=info.get("recovery_offered"),
        resent=int(info.get("resent", 0)),
        resent_lost=int(info.get("resent_lost", 0)),
        missing=max(0, len(clip) // FRAME - len(in_clip)),
        delay_ms=float(np.median(delays)) if len(delays) else math.nan,
        delay_max_ms=float(np.max(delays)) if len(delays) else math.nan,
        lag_ms=lag / RATE * 1000,
        fec_on_s=None if fec_on is None else fec_on - preroll / RATE,
        min_bitrate=min((r for r in info.get("audio_bitrates") or [] if r), default=None),
        stretch_ms=(
            _local_lag(clip, received, len(clip) - 2 * RATE) - _local_lag(clip, received, 0)
        )
        / RATE
        * 1000,
        load=_load(),
    )


def _local_lag(clip: npt.NDArray[np.float32], received: npt.NDArray[np.float32], at: int) -> int:
    """The lag of the clip's second starting at ``at`` (searched 100 ms either side)."""
    margin = RATE // 10
    start = max(0, at - margin)
    return align(
        clip[at : at + RATE], received[start : at + RATE + 2 * margin], max_lag=3 * margin
    ) - (at - start)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def row(r: Result) -> str:
    c = r.cell
    return (
        f"{c.variant:6} {c.pattern:6} {c.loss:3d}%  PESQ-WB {r.pesq:4.2f}  STOI {r.stoi:5.3f}  "
        f"lost {r.lost:3d}  offered {_count(r.offered):>3}  recovered {_count(r.recovered):>3}  "
        f"concealed {_count(r.concealed):>3}  resent {r.resent:3d} (lost {r.resent_lost:2d})  "
        f"missing {r.missing:3d}  delay {r.delay_ms:5.1f} ms (max {r.delay_max_ms:5.1f})  "
        f"lag {r.lag_ms:4.1f} ms (stretch {r.stretch_ms:+4.1f})  "
        f"FEC on {'-' if r.fec_on_s is None else f'{r.fec_on_s:+.1f} s'}  "
        f"audio rate {'-' if r.min_bitrate is None else f'>= {r.min_bitrate // 1000} kb/s'}  "
        f"{r.load}"
    )


def table(results: dict[Cell, Result], losses: list[int], patterns: list[str]) -> list[str]:
    lines = ["| variant | pattern | " + " | ".join(f"{x}%" for x in losses) + " |"]
    lines.append("|---|---|" + "---|" * len(losses))
    variants = [v for v in VARIANTS if any(c.variant == v for c in results)]
    for variant in variants:
        for pattern in patterns:
            cells = []
            for loss in losses:
                r = results.get(Cell(variant, pattern if loss else "random", loss))
                cells.append("" if r is None else f"{r.pesq:.2f} / {r.stoi:.2f}")
            lines.append(f"| {variant} | {pattern} | " + " | ".join(cells) + " |")
    return lines


def goals(results: dict[Cell, Result]) -> list[str]:
    out: list[str] = []

    def pesq(variant: str, loss: int) -> float | None:
        r = results.get(Cell(variant, "random", loss))
        return None if r is None else r.pesq

    for loss, goal in ((10, GOAL_10), (20, GOAL_20)):
        now = pesq("now", loss)
        if now is not None:
            verdict = "met" if now >= goal else f"NOT met ({now:.3f}: gap {goal - now:.3f})"
            out.append(f"goal: PESQ-WB at {loss}% random >= {goal}: {now:.2f}, {verdict}")
    now0, before0 = pesq("now", 0), pesq("before", 0)
    if now0 is not None and before0 is not None:
        ok = now0 >= before0 - GOAL_CLEAN_MARGIN
        verdict = "met" if ok else f"NOT met (gap {before0 - GOAL_CLEAN_MARGIN - now0:.3f})"
        out.append(
            f"goal: PESQ-WB at 0% within {GOAL_CLEAN_MARGIN} of before: "
            f"{now0:.2f} vs {before0:.2f}, {verdict}"
        )
    worst: tuple[float, Cell] | None = None
    for cell, r in results.items():
        if cell.variant != "now":
            continue
        base = results.get(attrs.evolve(cell, variant="before"))
        if base is not None:
            change = r.delay_ms - base.delay_ms
            if worst is None or change > worst[0]:
                worst = (change, cell)
    if worst is not None:
        change, cell = worst
        verdict = "met" if change <= GOAL_DELAY_MARGIN_MS else "NOT met"
        out.append(
            f"goal: median delay unchanged (within {GOAL_DELAY_MARGIN_MS:.0f} ms): largest "
            f"increase now vs before {change:+.1f} ms ({cell.pattern} {cell.loss}%), {verdict}"
        )
    return out


def _describe(tree: Path) -> str:
    """The commit a checkout is at, and whether its src/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "src"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return head + (" + uncommitted changes in src/" if dirty else "")


def _percents(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", type=_percents, default=[0, 2, 5, 10, 20], help="percent list")
    parser.add_argument("--pattern", default="random,bursty")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default ~10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--preroll",
        type=float,
        default=0.0,
        help="seconds of speech sent (under the same loss) before the scored clip",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="one-way delay added to everything reaching the receiver (a NACK's round trip)",
    )
    parser.add_argument("--before-commit", default=BEFORE_COMMIT)
    parser.add_argument("--now-tree", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    patterns = [p for p in args.pattern.split(",") if p]
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    clip = speak()
    if args.seconds is not None:
        clip = np.resize(clip, int(args.seconds * RATE)).astype(np.float32)
    preroll = round(args.preroll * RATE / FRAME) * FRAME
    trees = {"now": args.now_tree.resolve(), "aiortc": ROOT}
    if "before" in variants:
        trees["before"] = before_tree(args.before_commit)
    print(
        f"clip {len(clip) / RATE:.2f} s after {preroll / RATE:.2f} s of preroll; "
        f"{args.delay_ms:g} ms added to arrivals; seed {args.seed}; "
        "trees: "
        + ", ".join(f"{v}={trees[v]}" for v in variants)
        + f"; now at {_describe(trees['now'])}"
    )
    cells = [
        Cell(v, p if loss else "random", loss)
        for v in variants
        for loss in args.loss
        for p in (patterns if loss else patterns[:1])
    ]
    results: dict[Cell, Result] = {}
    with tempfile.TemporaryDirectory(prefix="meshrtc-voice-") as tmp:
        workdir = Path(tmp)
        clip_path = workdir / "clip.npy"
        np.save(clip_path, clip)
        for cell in cells:
            data = run_cell(
                cell, trees[cell.variant], clip_path, args.seed, preroll, args.delay_ms, workdir
            )
            result = results[cell] = score(cell, clip, preroll, data)
            print(row(result), flush=True)
    print()
    print("PESQ-WB / STOI (0% loss: one run, shown on every pattern's line):")
    for line in table(results, args.loss, patterns):
        print(line)
    print()
    for line in goals(results):
        print(line)
    headline = results.get(Cell("now", "random", 10))
    print(f"pesq_wb_10pct={headline.pesq if headline else math.nan:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
