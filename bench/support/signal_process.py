"""``meshrtc signal`` in a child process, for benches that load it from outside.

The server prints one line ending in its URL once it listens; the benches read that line, run their
load, then stop the child (terminate, then kill, each bounded). One copy of this, not one per bench.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

__all__ = ["signal_process"]


@asynccontextmanager
async def signal_process(
    args: Sequence[str] = (), *, src: str | None = None, fd_limit: int | None = None
) -> AsyncIterator[tuple[str, trio.Process]]:
    """Yield the listening server's URL and its process. ``src``: run that tree's meshrtc instead
    (a ``before`` figure); ``fd_limit``: the child's open-file limit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if src:
        env["PYTHONPATH"] = src
    command = [sys.executable, "-m", "meshrtc", "signal", "--port", "0", "--log-level", "error"]

    def limit_files() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    process = await trio.lowlevel.open_process(
        [*command, *args], stdout=subprocess.PIPE, env=env, preexec_fn=limit_files
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    raise SystemExit("the signaling server exited before listening")
                line += chunk
        yield line.decode().rsplit(" ", 1)[1].strip(), process
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
