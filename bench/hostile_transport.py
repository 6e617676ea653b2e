"""Eight members flood the transport of ``meshrtc serve``: does it stay, and what does an honest member see?

Run: ``.venv/bin/python bench/hostile_transport.py`` (about 10 s). For the "before" figures run it
against a ``git worktree`` of the commit before issue 13 with
``PYTHONPATH=WORKTREE/src:. .venv/bin/python bench/hostile_transport.py`` (that tree's transport is
a WebSocket client of its own server; this one's uses the in-process link, ``hub=server``).

Everything runs in one process, wired like ``serve``: a SignalingServer, a StunServer, the transport
(``meshrtc-server``) running the default manifest, and one honest meshrtc member sending a tone.
Phases, each with the honest member's signaling round trip (``peer.list`` every 10 ms: median,
max) and the audio frames per second it receives from the transport's mix:

- ``idle`` (2 s): nobody attacks.
- ``junk`` (6 s, issue 13 item 3): four connections that never announce each send five 1 MiB
  offers of 261 000 empty ``a=`` lines to ``meshrtc-server``, one after the other's answer (the
  issue measured the mix a listener hears falling from 50 to 3-21 frames/s for 6 s).
- ``flood`` (3 s from the start of the flood): eight more members each write 200
  ``peer.ice_candidate`` notifications to ``meshrtc-server`` in one burst.

Also reported: whether the transport was dropped and when, how the flooders' connections ended,
and the load average.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import time
from functools import partial
from typing import Any

import attrs
import trio
from tests.peer_helpers import Node, feed_media, open_session
from tests.test_hostile_transport import TRANSPORT_ID, Flooder, _flood, _run_transport
from trio_websocket import open_websocket_url

from meshrtc.signaling.client import SignalingConnectionError, SignalingError
from meshrtc.transport import WebRtcTransport

#: A 1 MiB offer of empty lines (LF ends: JSON escapes each as two characters, so it fits).
JUNK_SDP = (
    "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\n"
    + "a=\n" * 261_000
)


async def _junk(url: str, answers: dict[str, int]) -> None:
    """Four strangers, five junk offers each, each sent once the previous one was answered."""

    async def one(n: int) -> None:
        async with open_websocket_url(url, message_queue_size=4) as ws:
            for i in range(5):
                params = {"from": f"junk-{n}", "to": TRANSPORT_ID, "sdp": JUNK_SDP}
                request = {"jsonrpc": "2.0", "id": i + 1, "method": "peer.offer", "params": params}
                await ws.send_message(json.dumps(request))
                reply = json.loads(await ws.get_message())
                key = str(reply.get("error", {}).get("code", "result"))
                answers[key] = answers.get(key, 0) + 1

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(one, n)


async def _phase(node: Node, seconds: float) -> dict[str, Any]:
    rtts: list[float] = []
    frames_before = len(node.audio(TRANSPORT_ID))
    end = trio.current_time() + seconds
    failures = 0
    #: (time, frames so far): the worst half second shows a dip the average hides.
    samples = [(trio.current_time(), frames_before)]
    while trio.current_time() < end:
        samples.append((trio.current_time(), len(node.audio(TRANSPORT_ID))))
        started = trio.current_time()
        try:
            with trio.fail_after(1.0):
                await node.client.list_peers()
            rtts.append(trio.current_time() - started)
        except (SignalingConnectionError, SignalingError, trio.TooSlowError):
            # The client is reconnecting (the transport was dropped): count it, keep measuring.
            failures += 1
            await trio.sleep(0.1)
        await trio.sleep(0.01)
    frames = len(node.audio(TRANSPORT_ID)) - frames_before
    worst = min(
        (
            (later[1] - first[1]) / (later[0] - first[0])
            for first, later in (
                (a, next(b for b in samples if b[0] >= a[0] + 0.5))
                for a in samples
                if a[0] + 0.5 <= samples[-1][0]
            )
        ),
        default=None,
    )
    return {
        "rtt_median_ms": round(1000 * statistics.median(rtts), 1) if rtts else None,
        "rtt_max_ms": round(1000 * max(rtts), 1) if rtts else None,
        "failed_requests": failures,
        "audio_frames_per_s": round(frames / seconds, 1),
        "audio_frames_per_s_worst_half_second": None if worst is None else round(worst, 1),
    }


async def main() -> None:
    privileged = "hub" in inspect.signature(WebRtcTransport).parameters
    async with open_session() as session:
        server = session.server
        config = attrs.evolve(session.config(TRANSPORT_ID), ice_host_addresses=("127.0.0.1",))
        transport = WebRtcTransport(config, hub=server) if privileged else WebRtcTransport(config)
        await session.nursery.start(_run_transport, transport)
        honest = await session.join("honest")
        await session.until(lambda: TRANSPORT_ID in honest.manager.list_connected(), 30)
        session.nursery.start_soon(partial(feed_media, honest, 60.0, freq=440.0, shade=90))
        await session.until(lambda: len(honest.audio(TRANSPORT_ID)) >= 5, 20)
        report: dict[str, Any] = {"transport_link": "in-process" if privileged else "websocket"}
        report["idle"] = await _phase(honest, 2.0)
        answers: dict[str, int] = {}
        async with trio.open_nursery() as attack:
            started = time.monotonic()

            async def junk() -> None:
                await _junk(server.url, answers)
                report["junk_answered_in_s"] = round(time.monotonic() - started, 2)

            attack.start_soon(junk)
            report["junk"] = await _phase(honest, 6.0)
            attack.cancel_scope.cancel()
        report["junk_answers"] = answers
        flooders = [Flooder(f"flood{i}") for i in range(8)]
        joined = trio.Event()
        dropped_at: list[float] = []

        async def watch(started: float) -> None:
            while True:
                if TRANSPORT_ID not in server.hub.sessions().get("default", ()):
                    dropped_at.append(time.monotonic() - started)
                    return
                await trio.sleep(0.005)

        async with trio.open_nursery() as attack:
            for f in flooders:
                attack.start_soon(_flood, server.url, f, TRANSPORT_ID, joined)
            for f in flooders:
                await f.announced.wait()
            started = time.monotonic()
            attack.start_soon(watch, started)
            joined.set()
            report["flood"] = await _phase(honest, 3.0)
            attack.cancel_scope.cancel()
        client = transport.signaling
        report["transport_dropped_after_s"] = round(dropped_at[0], 3) if dropped_at else None
        report["transport_state"] = None if client is None else str(client.state)
        report["transport_reconnects"] = None if client is None else client.reconnects
        report["flooders_closed"] = [
            None if f.close_code is None else int(f.close_code) for f in flooders
        ]
        report["load"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(report))
        session.nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    trio.run(main)
