"""The ``meshrtc`` command line: ``python -m meshrtc <command>``.

Each command is a small function; argparse gives every one ``--help`` and a one-line error with a
non-zero exit on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from meshrtc.errors import MeshRtcError

Command = Callable[[argparse.Namespace], int]


def _cmd_statecharts(args: argparse.Namespace) -> int:
    from meshrtc import statechart

    formats = list(statechart.FORMATS) if args.format == "all" else [args.format]
    if args.format == "all" and statechart.dot_binary() is None:
        formats = ["mermaid"]
        print("note: Graphviz 'dot' not found; rendering Mermaid only", file=sys.stderr)
    written = statechart.render(Path(args.out), formats)
    if args.docs:
        docs = Path(args.docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(statechart.docs_page(), encoding="utf-8")
        written.append(docs)
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshrtc", description="WebRTC mesh transport for media pipelines."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    charts = sub.add_parser(
        "statecharts", help="render every lifecycle state machine (Mermaid, DOT, SVG)"
    )
    charts.add_argument("--out", default="statecharts", help="output folder (default: %(default)s)")
    charts.add_argument(
        "--format",
        choices=("mermaid", "svg", "dot", "all"),
        default="mermaid",
        help="mermaid always works; svg and dot need Graphviz 'dot' (default: %(default)s)",
    )
    charts.add_argument(
        "--docs", metavar="FILE", help="also write the Markdown page embedding them"
    )
    charts.set_defaults(handler=_cmd_statecharts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except MeshRtcError as exc:
        print(f"meshrtc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
