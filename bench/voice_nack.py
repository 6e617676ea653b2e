"""Audio NACK on and off, speech through random loss (issue 17's "if measured to help").

Run: ``.venv/bin/python bench/voice_nack.py`` (about 90 s: ``--loss 0,10,20`` x NACK off/on, cells
of ~15 s one after the other, off and on back to back so the load hits both alike; needs what
bench/voice_loss.py needs). ``--repeat`` runs each pair again; ``--delay-ms`` adds a one-way delay
to everything reaching the receiver (the round trip a NACK needs grows by as much); ``--tree`` a
clean checkout (``git archive``) to measure.

Each cell is bench/voice_loss.py's meshrtc "now" cell (bench/support/voice_cell.py: the espeak clip
between two peers on 127.0.0.1 at real-time pace, the same seeded loss mask for a packet's first
copy, a resend lost independently with the same probability; scored with PESQ-WB and STOI by
voice_loss.score). The one change, made in the cell's process: NACK off is
``PeerOptions(audio_nack=None)``; on is the default.

Per cell: PESQ-WB, STOI, the packets lost the first time, the receiver's NACK counters
(media/nack.py: packets asked for, come back in time, given up on; resends lost on the way), the
RTT its policy went by, FEC-recovered and concealed frames, the playout delay (median), when the
sender's FEC came on, and the load average (the machine is shared). The listener (bob) sends
nothing: its RTT is the one its policy measures from its own requests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "bench" / "support"
sys.path[:0] = [str(SUPPORT), str(ROOT / "bench")]

CELL_TIMEOUT = 120.0


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_cell_here(argv: list[str], nack: bool) -> int:
    """In the cell's process: NACK off when asked, the receivers' counters kept, voice_cell.main."""
    tree = Path(argv[argv.index("--tree") + 1]).resolve()
    sys.path[:0] = [str(tree / "src"), str(tree)]
    import voice_cell

    from meshrtc.rtc import peer as peer_module
    from meshrtc.rtc import receiver as receiver_module

    original_options = peer_module.PeerOptions

    def options(**kwargs: Any) -> Any:
        if not nack:
            kwargs.setdefault("audio_nack", None)
        return original_options(**kwargs)

    peer_module.PeerOptions = options  # type: ignore[assignment,misc]
    receivers: list[Any] = []
    original_init = receiver_module.MediaReceiver.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        receivers.append(self)

    receiver_module.MediaReceiver.__init__ = init  # type: ignore[method-assign]
    original_run = voice_cell.run_meshrtc

    async def run_meshrtc(stream: Any, drop: Any) -> Any:
        frames, info = await original_run(stream, drop)
        # bob's link (alice's receiver gets nothing): the one whose policy saw packets.
        policies = [r.nack for r in receivers if r.nack is not None and r.nack.stats.nacked]
        if policies:
            stats = policies[0].stats
            info["nack"] = {
                "nacked": stats.nacked,
                "in_time": stats.retransmitted_in_time,
                "expired": stats.expired,
                "requests": stats.requests,
                "rtt_ms": policies[0].rtt * 1000,
            }
        return frames, info

    voice_cell.run_meshrtc = run_meshrtc
    return int(voice_cell.main(argv))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="0,10,20", help="percent list")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--cell", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        nack, *cell_argv = args.cell
        return run_cell_here(cell_argv, nack == "on")

    from voice_clip import speak

    import voice_loss

    clip = speak()
    losses = [int(x) for x in args.loss.split(",")]
    with tempfile.TemporaryDirectory(prefix="voice-nack-") as tmp:
        work = Path(tmp)
        clip_path = work / "clip.npy"
        np.save(clip_path, clip)
        print(
            f"clip {len(clip) / 48_000:.2f} s; tree {args.tree}; delay {args.delay_ms} ms; "
            f"{_load()}",
            flush=True,
        )
        results: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.repeat):
            for loss in losses:
                for nack in ("off", "on"):
                    out = work / f"{nack}-{loss}.npz"
                    subprocess.run(
                        [
                            sys.executable, __file__, "--cell", nack,
                            "--stack", "meshrtc", "--tree", str(args.tree),
                            "--clip", str(clip_path), "--pattern", "random",
                            "--loss", str(loss / 100), "--seed", str(args.seed),
                            "--delay-ms", str(args.delay_ms),
                            "--out", str(out),
                        ],
                        check=True,
                        timeout=CELL_TIMEOUT,
                        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    with np.load(out) as data:
                        cell_data = {key: data[key] for key in data.files}
                    cell = voice_loss.Cell("now", "random", loss)
                    r = voice_loss.score(cell, clip, 0, cell_data)
                    info = json.loads(str(cell_data["info"]))
                    n = info.get("nack") or {}
                    results.setdefault((loss, nack), []).append(r.pesq)
                    print(
                        f"NACK {nack:3} {loss:3d}%  PESQ-WB {r.pesq:4.2f}  STOI {r.stoi:5.3f}  "
                        f"lost {r.lost:3d}  nacked {n.get('nacked', 0):3d}  "
                        f"in time {n.get('in_time', 0):3d}  given up {n.get('expired', 0):3d}  "
                        f"resends lost {info['resent_lost']:2d}/{info['resent']:3d}  "
                        f"rtt {n.get('rtt_ms', float('nan')):4.1f} ms  "
                        f"recovered {voice_loss._count(r.recovered):>3}  "
                        f"concealed {voice_loss._count(r.concealed):>3}  "
                        f"delay {r.delay_ms:5.1f} ms  "
                        f"FEC on {'-' if r.fec_on_s is None else f'{r.fec_on_s:+.1f} s'}  "
                        f"{r.load}",
                        flush=True,
                    )
        print("| NACK | " + " | ".join(f"{x}%" for x in losses) + " |")
        print("|---|" + "---|" * len(losses))
        for nack in ("off", "on"):
            cells = ["/".join(f"{p:.2f}" for p in results[(loss, nack)]) for loss in losses]
            print(f"| {nack} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
