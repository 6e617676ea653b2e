"""The ``meshrtc`` command line: ``python -m meshrtc <command>``.

Each command is a small function; argparse gives every one ``--help`` and a one-line error with a
non-zero exit on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshrtc.errors import MeshRtcError

if TYPE_CHECKING:
    import ssl

    from meshrtc.media.drift import ClockDriftEstimator
    from meshrtc.signaling.auth import TokenAuthority

Command = Callable[[argparse.Namespace], int]

#: The peer id of ``meshrtc serve``'s own transport (reserved: it joins over the privileged
#: in-process link, which needs no token; no WebSocket client may announce it).
SERVE_PEER_ID = "meshrtc-server"


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


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authority(command: str, args: argparse.Namespace) -> TokenAuthority | None:
    """The server's token authority, or None after checking that going without one is safe.

    Without a secret anyone who can reach the port joins any session, so the server stays on
    loopback unless the operator says ``--insecure``.
    """
    import os

    from meshrtc.signaling.auth import TokenAuthority, load_secret

    secret = load_secret(args.auth_secret_file, env=os.environ)
    if secret is not None:
        return TokenAuthority(secret)
    if not _is_loopback(args.host) and not args.insecure:
        raise MeshRtcError(
            f"refusing to listen on {args.host} without --auth-secret-file (or"
            " MESHRTC_AUTH_SECRET): anyone who can reach it could join; pass --insecure to"
            " do it anyway"
        )
    where = "loopback only" if _is_loopback(args.host) else f"{args.host}, --insecure"
    print(
        f"meshrtc {command}: no auth secret: any client can join any session ({where})",
        file=sys.stderr,
        flush=True,
    )
    return None


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context from ``--certfile/--keyfile`` (loaded now: a bad file stops the
    start with its name, not every handshake later), or None for plain ``ws://``."""
    from meshrtc.signaling.tls import server_context

    if args.certfile is None:
        if args.keyfile is not None:
            raise MeshRtcError("--keyfile needs --certfile")
        return None
    return server_context(args.certfile, args.keyfile)


def _cmd_token(args: argparse.Namespace) -> int:
    import os

    from meshrtc.signaling.auth import ALL_GRANTS, TokenAuthority, load_secret

    secret = load_secret(args.secret_file, env=os.environ)
    if secret is None:
        raise MeshRtcError("no secret: pass --secret-file FILE or set MESHRTC_AUTH_SECRET")
    grants = args.grant or sorted(ALL_GRANTS)
    print(TokenAuthority(secret).issue(args.peer, args.session, ttl=args.ttl, grants=grants))
    return 0


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
        auth=_authority("signal", args),
        max_peers=args.max_peers,
        rate_limit=args.rate_limit,
        rate_burst=2 * args.rate_limit,
        ping_interval=args.ping_interval,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        ssl_context=_server_tls(args),
        allowed_origins=args.allow_origin,
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
    return _listen_outcome("signal", args, failure)


def _manifest(path: str | None) -> Any:
    """The manifest of ``--manifest`` (validated now, so a bad one fails before anything starts)."""
    from meshrtc.pipeline import Manifest, default_manifest

    if path is None:
        return default_manifest()
    try:
        return Manifest.load(path)
    except OSError as exc:
        raise MeshRtcError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def _peer_count(text: str) -> int:
    from meshrtc.config import MAX_PEERS_LIMIT

    if not text.isdigit() or not 1 <= int(text) <= MAX_PEERS_LIMIT - 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer from 1 to {MAX_PEERS_LIMIT - 1}"
        )
    return int(text)


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def drift_text(estimator: ClockDriftEstimator) -> str:
    """The demo's "drift ppm" cell: "-" until the estimate is Stable and precise enough to stand
    behind (:func:`~meshrtc.media.audio_stage.stable_drift_ppm`), then the figure."""
    from meshrtc.media.audio_stage import stable_drift_ppm

    return _fmt(stable_drift_ppm(estimator), ".1f")


def _cmd_demo(args: argparse.Namespace) -> int:
    import json
    import logging
    import os

    import trio
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from meshrtc.demo import SyntheticPeer, run_demo
    from meshrtc.session.manager import RunningSession
    from meshrtc.transport import WebRtcTransport

    manifest = _manifest(args.manifest)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=args.json)
    live = Live(console=console, auto_refresh=False, transient=False)

    def table(
        transport: WebRtcTransport,
        running: RunningSession,
        peers: list[SyntheticPeer],
        connect_ms: float,
    ) -> None:
        t = Table(title=f"meshrtc demo: {len(peers)} peers, connected in {connect_ms:.0f} ms")
        for col in (
            "peer", "state", "RTT ms", "loss %", "jitter ms", "JB delay ms", "A/V ms",
            "drift ppm", "frames in", "frames out",
        ):  # fmt: skip
            t.add_column(col, justify="right")
        assert transport.peers is not None
        routed = running.router.statistics()
        for s in peers:
            pid = s.figures.peer_id
            pc = transport.peers.get_peer(pid)
            if pc is None:
                t.add_row(pid, "gone", *["-"] * 8)
                continue
            m = pc.get_metrics()
            sm = pc.sync_manager
            t.add_row(
                pid,
                pc.state,
                _fmt(m.latency_ms),
                _fmt(100 * m.packet_loss_rate, ".1f"),
                _fmt(m.jitter_ms, ".1f"),
                _fmt(sm.presentation_delay_ms),
                _fmt(sm.sync_offset_ms),
                drift_text(sm.clock_drift_estimator),
                str(routed.frames_in.get(pid, 0)),
                str(routed.frames_out.get(pid, 0)),
            )
        live.update(t, refresh=True)

    with live:
        result = trio.run(
            lambda: run_demo(
                peers=args.peers,
                seconds=args.seconds,
                manifest=manifest,
                on_tick=table,
                split=not args.in_process,
                generator="mesh" if args.mesh else "star",
            )
        )
    p50, p95 = result.latency(50), result.latency(95)
    console.print(
        f"connect {result.connect_ms:.0f} ms, audio latency p50 {_fmt(p50)} ms / p95 {_fmt(p95)} ms"
        f" (transport adds p50 {_fmt(result.added_latency(50))} ms / p95"
        f" {_fmt(result.added_latency(95))} ms), teardown {result.teardown_ms:.1f} ms"
    )
    cores = os.cpu_count() or 1
    if result.transport_cpu_pct is not None:
        generator = "in this process too" if args.in_process else "in a child process"
        console.print(
            f"CPU (% of one core): transport {result.transport_cpu_pct * cores:.0f}"
            + (
                ""
                if result.peers_cpu_pct is None
                else f", synthetic peers {result.peers_cpu_pct * cores:.0f}"
            )
            + f" ({'mesh' if args.in_process or args.mesh else 'star'} peers {generator})"
        )
    for pid, f in result.peers.items():
        console.print(
            f"{pid} ({f.frequency:.0f} Hz): heard {sorted(f.heard)}; audio {f.audio_sent} sent /"
            f" {f.audio_received} back; video {f.video_received} back; data {f.data_sent} sent /"
            f" {f.data_echoed} echoed"
        )
    if args.json:
        print(json.dumps(result.to_json()), flush=True)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    import trio

    from meshrtc.config import TransportConfig
    from meshrtc.host.metrics import CONTENT_TYPE, metrics_registry, render, snapshot
    from meshrtc.rtc.stun import StunServer
    from meshrtc.signaling.server import SignalingServer
    from meshrtc.transport import WebRtcTransport
    from meshrtc.web import static_handler

    manifest = _manifest(args.manifest)
    # /metrics reads the transport while it runs (docs/host.md, "Metrics").
    hosted: list[WebRtcTransport] = []
    registry = metrics_registry(lambda: [snapshot(t, hub=signaling.hub) for t in hosted])
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    auth = _authority("serve", args)
    signaling = SignalingServer(
        args.host,
        args.port,
        auth=auth,
        http_handler=static_handler(),
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        ssl_context=_server_tls(args),
        allowed_origins=args.allow_origin,
        metrics=lambda: (render(registry), CONTENT_TYPE),
    )
    failure: list[OSError] = []

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    server = await nursery.start(signaling.run)
                    stun = await nursery.start(StunServer(host=args.host).run)
                except OSError as exc:
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
                    return
                config = TransportConfig(
                    signaling_url=server.url,
                    stun_servers=[stun.url],
                    peer_id=SERVE_PEER_ID,
                    session_id=args.session,
                    video_codec=args.video_codec,
                    ice_host_addresses=(args.host,),
                )
                # The transport reaches the hub in-process, not as a WebSocket member: no member
                # can flood it off the server or take its id (docs/security.md).
                async with WebRtcTransport(config, hub=server) as transport:
                    nursery.start_soon(transport.run_session, manifest)
                    hosted.append(transport)
                    print(
                        f"meshrtc serve: signaling on {server.url}, STUN {stun.url}, "
                        f"session {args.session!r}",
                        flush=True,
                    )
                    print(f"meshrtc serve: browser page at {server.http_url}", flush=True)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()

    trio.run(serve)
    return _listen_outcome("serve", args, failure)


def _listen_outcome(command: str, args: argparse.Namespace, failure: list[OSError]) -> int:
    """Exit status of a server command: 2 with one line if it could not listen, else 0."""
    if failure:
        reason = failure[0].strerror or str(failure[0])
        print(
            f"meshrtc {command}: error: cannot listen on {args.host}:{args.port}: {reason}",
            file=sys.stderr,
        )
        return 2
    print(f"meshrtc {command}: stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from meshrtc.config import VideoCodec

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
    _auth_options(sig)
    _server_options(sig)
    sig.set_defaults(handler=_cmd_signal)

    tok = sub.add_parser(
        "token",
        help="print an access token for a server started with --auth-secret-file",
        description="Print an HS256 access token (JWT) binding a peer id to a session; clients "
        "pass it as the 'token' query parameter (docs/security.md).",
    )
    tok.add_argument(
        "--secret-file", metavar="FILE", help="the server's secret (or MESHRTC_AUTH_SECRET)"
    )
    tok.add_argument("--session", required=True, help="the session the token admits to")
    tok.add_argument("--peer", required=True, help="the peer id the token admits as ('sub')")
    tok.add_argument(
        "--ttl",
        type=_positive_float,
        default=3600.0,
        help="seconds until it expires (default: %(default)s)",
    )
    tok.add_argument(
        "--grant",
        action="append",
        choices=("publish", "subscribe", "data"),
        help="repeatable; default: all three",
    )
    tok.set_defaults(handler=_cmd_token)

    demo = sub.add_parser(
        "demo",
        help="run a transport and N synthetic peers on loopback, with a live table",
        description="This process: signaling server, STUN responder, one transport running the "
        "manifest; a child process: N synthetic peers (tone, moving pattern, data) that connect "
        "to the transport alone and replay media encoded once, so the figures are the "
        "transport's. docs/quickstart.md.",
    )
    demo.add_argument(
        "--peers", type=_peer_count, default=3, help="synthetic peers, 1-9 (default: %(default)s)"
    )
    demo.add_argument(
        "--seconds",
        type=_positive_float,
        default=10.0,
        help="how long the peers send (default: %(default)s)",
    )
    demo.add_argument("--manifest", metavar="FILE", help="pipeline manifest (JSON or YAML)")
    demo.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object, last line"
    )
    generator = demo.add_mutually_exclusive_group()
    generator.add_argument(
        "--in-process",
        action="store_true",
        help="run the synthetic peers in this process, as full mesh peers (the old demo: they "
        "share the interpreter with the transport, so its figures include theirs)",
    )
    generator.add_argument(
        "--mesh",
        action="store_true",
        help="synthetic peers in a child process as full meshrtc peers that also connect to each "
        "other (default: star members that connect to the transport alone and replay media "
        "encoded once; docs/benchmarks.md)",
    )
    demo.set_defaults(handler=_cmd_demo)

    serve = sub.add_parser(
        "serve",
        help="run a signaling server, a STUN responder and one transport in a session",
        description="Signaling (WebSocket at /ws), the browser page (at /) and one transport "
        "running the manifest for every peer of the session, until Ctrl-C. docs/browser.md.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port",
        type=_port,
        default=8765,
        help="TCP port of the signaling server (default: %(default)s)",
    )
    serve.add_argument("--manifest", metavar="FILE", help="pipeline manifest (default: the demo's)")
    serve.add_argument("--session", default="default", help="session id (default: %(default)s)")
    serve.add_argument(
        "--video-codec",
        # Exactly the config's codecs, so the CLI never offers one TransportConfig refuses.
        choices=tuple(c.value for c in VideoCodec),
        default=VideoCodec.VP9.value,
        help="the transport's video codec; browsers get it with the transport (default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
    )
    _auth_options(serve)
    _server_options(serve)
    serve.set_defaults(handler=_cmd_serve)
    return parser


def _auth_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-secret-file",
        metavar="FILE",
        help="require access tokens signed with this secret (at least 32 bytes; or set "
        "MESHRTC_AUTH_SECRET); `meshrtc token` issues them",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without an auth secret",
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    """TLS and the connection caps, the same on ``signal`` and ``serve`` (docs/security.md)."""
    parser.add_argument(
        "--certfile",
        metavar="FILE",
        help="serve TLS (wss:// and https://) with this PEM certificate chain",
    )
    parser.add_argument(
        "--keyfile",
        metavar="FILE",
        help="the PEM private key of --certfile (default: read it from --certfile)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=None,
        help="open connections in all, refused at accept beyond; at most the open-file limit "
        "less a quarter of it (at least 64), which is also the default (docs/security.md)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=_positive_int,
        default=64,
        help="open connections from one client address (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-origin",
        metavar="ORIGIN",
        action="append",
        default=[],
        help="a browser origin (e.g. https://app.example:8443, or *) whose pages may open a "
        "WebSocket here besides this server's own; repeatable (docs/security.md)",
    )


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
