"""A worker process's main: ``python -m meshrtc.host.worker_main --fd N --worker-id ID``.

The supervisor starts this with one end of a socketpair as fd ``N`` (``pass_fds``). The worker says
hello, answers pings, and on shutdown drains (ends what it hosts within the deadline), says bye and
exits 0. When the channel closes without a shutdown the supervisor is gone (killed, crashed): the
worker exits at once, so a dead supervisor never leaves orphans serving nobody. SIGINT is ignored:
Ctrl-C reaches the whole process group, and the supervisor, not the terminal, decides how its
workers end.

This session's worker hosts nothing yet (sessions in workers are next, docs/host.md); draining is
therefore immediate.

Hidden test-only flags (not in ``--help``; tests/test_host_worker.py uses them to misbehave on
purpose): ``--test-ignore-pings`` (never answer a ping: the unresponsive path),
``--test-ignore-shutdown`` (read shutdown and carry on: the SIGTERM step),
``--test-ignore-sigterm`` (SIG_IGN for SIGTERM: the SIGKILL step), ``--test-corrupt-after-hello``
(write one malformed frame after hello: the protocol-error path), ``--test-no-hello`` (say
nothing, only wait for the channel to close: the hello-timeout path), ``--test-close-channel``
(close the channel after hello and live on: the channel-closed path).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

import trio

from meshrtc.host.channel import ControlChannel
from meshrtc.host.control import (
    DEFAULT_MAX_FRAME,
    SUPERVISOR_TO_WORKER,
    Bye,
    ControlProtocolError,
    Hello,
    Ping,
    Pong,
    Shutdown,
)

__all__ = ["EXIT_OK", "EXIT_PROTOCOL_ERROR", "main", "serve"]

log = logging.getLogger(__name__)

EXIT_OK = 0
#: The supervisor sent something no correct supervisor sends; the channel is unusable.
EXIT_PROTOCOL_ERROR = 3
#: A frame header announcing 2 bytes of body that are not JSON.
_CORRUPT_FRAME = b"\x00\x00\x00\x02{]"


async def serve(
    sock: socket.socket,
    worker_id: str,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    answer_pings: bool = True,
    obey_shutdown: bool = True,
    corrupt_after_hello: bool = False,
    say_hello: bool = True,
    close_channel: bool = False,
) -> int:
    """Run the worker's side of the channel until shutdown or the channel closes; the exit code."""
    channel = ControlChannel(sock, accept=SUPERVISOR_TO_WORKER, max_frame=max_frame)
    try:
        if say_hello:
            await channel.send(Hello(worker_id=worker_id, pid=os.getpid()))
        if corrupt_after_hello:
            await channel.send_raw(_CORRUPT_FRAME)
        if close_channel:
            await channel.aclose()
            await trio.sleep_forever()
        while True:
            try:
                message = await channel.receive()
            except ControlProtocolError:
                log.exception("worker %s: corrupt control channel", worker_id)
                return EXIT_PROTOCOL_ERROR
            except trio.BrokenResourceError:
                message = None  # the supervisor's end reset: as good as closed
            if message is None:
                log.info("worker %s: control channel closed; the supervisor is gone", worker_id)
                return EXIT_OK
            if isinstance(message, Ping):
                if answer_pings:
                    await channel.send(Pong(seq=message.seq, clock=time.monotonic()))
            elif isinstance(message, Shutdown):
                if not obey_shutdown:
                    continue
                # Nothing hosted yet; sessions will be ended here within message.drain_deadline.
                await channel.send(Bye(reason="shutdown"))
                return EXIT_OK
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("worker %s: control channel broke; the supervisor is gone", worker_id)
        return EXIT_OK
    finally:
        await channel.aclose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meshrtc.host.worker_main",
        description="A meshrtc worker process (started by the supervisor, not by hand).",
    )
    parser.add_argument("--fd", type=int, required=True, help="control socket file descriptor")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME)
    for flag in (
        "ignore-pings",
        "ignore-shutdown",
        "ignore-sigterm",
        "corrupt-after-hello",
        "no-hello",
        "close-channel",
    ):
        parser.add_argument(f"--test-{flag}", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"worker {args.worker_id} %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.test_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    return trio.run(
        lambda: serve(
            sock,
            args.worker_id,
            max_frame=args.max_frame,
            answer_pings=not args.test_ignore_pings,
            obey_shutdown=not args.test_ignore_shutdown,
            corrupt_after_hello=args.test_corrupt_after_hello,
            say_hello=not args.test_no_hello,
            close_channel=args.test_close_channel,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
