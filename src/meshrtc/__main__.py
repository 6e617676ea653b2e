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


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def _max_peers(text: str) -> int:
    from meshrtc.config import MAX_PEERS_LIMIT

    if not text.isdigit() or not 1 <= int(text) <= MAX_PEERS_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer from 1 to {MAX_PEERS_LIMIT}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _cmd_signal(args: argparse.Namespace) -> int:
    import logging
    import signal

    import trio

    from meshrtc.signaling.server import SignalingServer

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = SignalingServer(
        args.host,
        args.port,
        token=args.token,
        max_peers=args.max_peers,
        rate_limit=args.rate_limit,
        rate_burst=2 * args.rate_limit,
        ping_interval=args.ping_interval,
    )
    failure: list[OSError] = []

    async def serve() -> None:
        # Signals are turned into a graceful stop: every peer gets a close frame before we exit.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(server.run)
                except OSError as exc:
                    failure.append(exc)
                    return
                print(f"meshrtc signal: listening on {server.url}", flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    trio.run(serve)
    if failure:
        reason = failure[0].strerror or str(failure[0])
        print(
            f"meshrtc signal: error: cannot listen on {args.host}:{args.port}: {reason}",
            file=sys.stderr,
        )
        return 2
    print("meshrtc signal: stopped", file=sys.stderr)
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

    sig = sub.add_parser(
        "signal",
        help="run the signaling server (JSON-RPC 2.0 over WebSocket, docs/signaling.md)",
        description="Run meshrtc's signaling server until Ctrl-C. WebSocket paths: /ws and /.",
    )
    sig.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sig.add_argument(
        "--port",
        type=_port,
        default=8765,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    sig.add_argument("--token", help="require this token in every peer.announce")
    sig.add_argument(
        "--max-peers",
        type=_max_peers,
        default=10,
        help="peers per session, 1-10 (default: %(default)s)",
    )
    sig.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=100.0,
        help="messages per second per connection, bursts of twice that (default: %(default)s)",
    )
    sig.add_argument(
        "--ping-interval",
        type=_positive_float,
        default=15.0,
        help="seconds between WebSocket pings; a missing pong drops the peer (default: %(default)s)",
    )
    sig.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
    )
    sig.set_defaults(handler=_cmd_signal)
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
