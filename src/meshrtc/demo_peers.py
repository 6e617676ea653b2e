"""The demo's synthetic peers in a process of their own (``run_demo(split=True)``).

With the GIL, N synthetic peers in the transport's process compete with it for one interpreter, so
a benchmark of the transport would measure the peers as much as the transport. Here the peers run in
a child process; the parent keeps the signaling server, STUN responder and transport. The peers'
latency onsets are all captured and detected in this process (one clock), exactly as in-process.

Protocol (one line each way; the child writes JSON lines on stdout, the parent writes words on stdin):

* child ``{"event": "ready"}`` (imports done, bridge open) — parent ``join``;
* child ``{"event": "connected", "t": <monotonic>}`` (every peer's link to the transport Connected) —
  parent ``go``;
* child ``{"event": "figures", ...}`` after ``seconds`` of traffic plus 0.5 s for the tail to
  arrive — parent ``stop`` (after tearing its transport down);
* child ``{"event": "closed", "teardown_ms": ...}`` and exit.

The child never outlives its parent: end of stdin (the parent closed it, or died) stops it at once,
and ``--deadline`` bounds its whole life. Run as ``python -m meshrtc.demo_peers --help``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from meshrtc.config import TransportConfig
from meshrtc.demo import SyntheticPeer, _join
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.peer import REALTIME_SEND_QUEUE, PeerOptions

__all__ = ["encode_options", "main", "run_peers"]

log = logging.getLogger(__name__)


def encode_options(options: PeerOptions) -> str:
    """``--options`` for the child: the parent's PeerOptions, exactly (it is the parent's own child)."""
    return base64.b64encode(pickle.dumps(options)).decode("ascii")


def _decode_options(text: str) -> PeerOptions:
    options = pickle.loads(base64.b64decode(text))  # our own parent wrote it
    if not isinstance(options, PeerOptions):
        raise argparse.ArgumentTypeError("--options is not a pickled PeerOptions")
    return options


def _video(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


class ParentChannel:
    """The parent's words, one per line; end of input cancels ``on_eof``."""

    def __init__(self, stream: trio.abc.ReceiveStream, on_eof: trio.CancelScope) -> None:
        self.stream = stream
        self.on_eof = on_eof
        self.send, self.words = trio.open_memory_channel[str](16)

    async def pump(self) -> None:
        buffer = b""
        async with self.send:
            while True:
                chunk = await self.stream.receive_some(4096)
                if not chunk:
                    log.info("parent closed stdin: stopping")
                    self.on_eof.cancel()
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    await self.send.send(line.decode().strip())

    async def expect(self, word: str) -> None:
        async for got in self.words:
            if got == word:
                return
            log.warning("unexpected word from the parent: %r (waiting for %r)", got, word)


async def run_peers(
    *,
    signaling_url: str,
    stun_url: str,
    peers: int,
    seconds: float,
    video: tuple[int, int] | None,
    options: PeerOptions,
    connect_timeout: float,
    stdin: trio.abc.ReceiveStream,
    stdout: trio.abc.SendStream,
) -> None:
    """The child's whole life, driven by the parent's words (module docstring)."""

    async def emit(message: dict[str, Any]) -> None:
        await stdout.send_all((json.dumps(message) + "\n").encode())

    def config(peer_id: str) -> TransportConfig:
        return TransportConfig(
            signaling_url=signaling_url,
            stun_servers=[stun_url],
            peer_id=peer_id,
            video_codec="VP9",
            ice_host_addresses=("127.0.0.1",),
        )

    async with trio.open_nursery() as outer:
        parent = ParentChannel(stdin, outer.cancel_scope)
        outer.start_soon(parent.pump)
        synthetic: list[SyntheticPeer] = []
        async with open_bridge(name="meshrtc-demo-child") as bridge:
            await emit({"event": "ready"})
            await parent.expect("join")
            async with trio.open_nursery() as nursery:
                for i in range(peers):
                    joined = await _join(nursery, config(f"peer{i + 1}"), bridge, options, i, video)
                    synthetic.append(joined)
                for s in synthetic:
                    s.others = {
                        o.figures.peer_id: o.figures.frequency for o in synthetic if o is not s
                    }

                def all_connected() -> bool:
                    noted = [s.note_connected() for s in synthetic]  # every link, no short cut
                    return all(noted)

                with trio.fail_after(connect_timeout):
                    while not all_connected():  # noqa: ASYNC110 - 5 ms: connect_ms's resolution
                        await trio.sleep(0.005)
                await emit({"event": "connected", "t": time.monotonic()})
                await parent.expect("go")
                cpu0, wall0 = time.process_time(), time.monotonic()

                def onset(pid: str) -> float | None:
                    for s in synthetic:
                        if s.figures.peer_id == pid:
                            return s.onsets.get(pid)
                    return None

                for s in synthetic:
                    nursery.start_soon(s.collect, onset)
                    nursery.start_soon(s.send, seconds, wall0)
                    nursery.start_soon(s.chat, seconds)
                await trio.sleep(seconds + 0.5)
                await emit(
                    {
                        "event": "figures",
                        "peers": {s.figures.peer_id: attrs.asdict(s.figures) for s in synthetic},
                        "cpu_s": time.process_time() - cpu0,
                        "wall_s": time.monotonic() - wall0,
                    }
                )
                await parent.expect("stop")
                nursery.cancel_scope.cancel()
            t_exit = time.monotonic()
        await emit({"event": "closed", "teardown_ms": 1000.0 * (time.monotonic() - t_exit)})
        outer.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshrtc.demo_peers",
        description="The demo's synthetic peers, driven by a parent over stdin/stdout "
        "(meshrtc.demo.run_demo(split=True) starts this; not meant to be run by hand).",
    )
    parser.add_argument("--signaling", required=True, help="signaling server URL (loopback)")
    parser.add_argument("--stun", required=True, help="STUN server URL (loopback)")
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--video", type=_video, default=None, metavar="WxH")
    parser.add_argument("--options", type=_decode_options, default=None)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument(
        "--deadline", type=float, required=True, help="the child exits after this many seconds"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="child %(levelname)s %(name)s: %(message)s")
    options = args.options or PeerOptions(
        video_fps=10.0, quality_interval=1.0, audio_send_queue=REALTIME_SEND_QUEUE
    )

    async def body(stdin: trio.lowlevel.FdStream, stdout: trio.lowlevel.FdStream) -> None:
        await run_peers(
            signaling_url=args.signaling,
            stun_url=args.stun,
            peers=args.peers,
            seconds=args.seconds,
            video=args.video,
            options=options,
            connect_timeout=args.connect_timeout,
            stdin=stdin,
            stdout=stdout,
        )

    return run_child(args.deadline, body)


def run_child(
    deadline: float,
    body: Callable[[trio.lowlevel.FdStream, trio.lowlevel.FdStream], Awaitable[None]],
) -> int:
    """Run a generator child's ``body`` on its parent's pipes, bounded by ``deadline`` seconds.

    The deadline is the child's own guard against a parent that died without closing its stdin:
    the child exits (status 3) instead of loading the machine forever.
    """

    async def run() -> bool:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        async with stdin, stdout:
            with trio.move_on_after(deadline) as scope:
                await body(stdin, stdout)
        return not scope.cancelled_caught

    ok = trio.run(run)
    if not ok:
        log.error("deadline (%.0f s) reached: exiting", deadline)
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
