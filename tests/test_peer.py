"""Two PeerConnections in one process over loopback, wired to each other directly (no server)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.peer import PeerConnection
from meshrtc.rtc.stun import StunServer

WIDTH, HEIGHT = 160, 120


def tone(seconds: float, freq: float = 440.0) -> npt.NDArray[np.float32]:
    t = np.arange(int(48_000 * seconds), dtype=np.float32) / 48_000
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def picture(shade: int) -> npt.NDArray[np.uint8]:
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[..., 0] = shade
    rgb[..., 1] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    return rgb


def _decoder_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]


async def _collect(
    peer: PeerConnection, out: list[ReceivedMedia], done: Callable[[list[ReceivedMedia]], bool]
) -> None:
    with trio.fail_after(15):
        while not done(out):
            out.append(await peer.received.receive())


async def test_two_peers_exchange_audio_video_and_data() -> None:
    async with trio.open_nursery() as nursery:
        stun: StunServer = await nursery.start(StunServer().run)
        config = TransportConfig(stun_servers=[stun.url], video_codec="H264")
        async with open_bridge() as bridge:
            peers: dict[str, PeerConnection] = {}

            def wire(to: str) -> Callable[[str, dict[str, Any]], Any]:
                async def send(method: str, params: dict[str, Any]) -> None:
                    nursery.start_soon(peers[to].handle_signal, method, params)

                return send

            # peer_id names the remote peer: ``a`` is alice's connection to bob.
            a = PeerConnection("bob", bridge, config, wire("b"))
            b = PeerConnection("alice", bridge, config, wire("a"))
            peers.update(a=a, b=b)
            assert a.state == "New"
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.offer()
            with trio.fail_after(15):
                await a.wait_state("Connected")
                await b.wait_state("Connected")

            for i, peer in enumerate((a, b)):
                peer.send_audio(tone(3.0, freq=440.0 * (i + 1)))
                peer.send_video(picture(60 * (i + 1)))
            await a.send_data("hello from a")
            await b.send_data(b"\x00bytes from b")

            def enough(items: list[ReceivedMedia]) -> bool:
                audio = [x for x in items if isinstance(x, ReceivedAudio) and not x.concealed]
                video = [x for x in items if isinstance(x, ReceivedVideo)]
                data = [x for x in items if isinstance(x, ReceivedData)]
                return len(audio) >= 50 and len(video) >= 10 and len(data) >= 1

            got_a: list[ReceivedMedia] = []
            got_b: list[ReceivedMedia] = []
            async with trio.open_nursery() as inner:
                inner.start_soon(_collect, a, got_a, enough)
                inner.start_soon(_collect, b, got_b, enough)

            for got, other, data, freq in (
                (got_b, "alice", "hello from a", 440.0),
                (got_a, "bob", b"\x00bytes from b", 880.0),
            ):
                assert {x.peer_id for x in got} == {other}
                assert [x.data for x in got if isinstance(x, ReceivedData)] == [data]
                audio = [x for x in got if isinstance(x, ReceivedAudio)]
                assert all(x.sample_rate == 48_000 and x.samples.dtype == np.float32 for x in audio)
                assert all(b.local_time >= a.local_time for a, b in itertools.pairwise(audio))
                # The tone comes through: its dominant frequency is the one sent.
                pcm = np.concatenate([x.samples[:, 0] for x in audio if not x.concealed][-25:])
                spectrum = np.abs(np.fft.rfft(pcm))
                peak = float(np.fft.rfftfreq(len(pcm), 1 / 48_000)[int(np.argmax(spectrum))])
                assert abs(peak - freq) < 10, peak
                video = [x for x in got if isinstance(x, ReceivedVideo)]
                assert [(v.frame.width, v.frame.height) for v in video] == [(WIDTH, HEIGHT)] * len(
                    video
                )
                stamps = [v.frame.pts for v in video if v.frame.pts is not None]
                assert len(stamps) == len(video)
                assert all(y > x for x, y in itertools.pairwise(stamps)), stamps
                assert all(y.local_time >= x.local_time for x, y in itertools.pairwise(video))

            for peer in (a, b):
                assert peer.codecs == {
                    FrameType.AUDIO: "audio/opus",
                    FrameType.VIDEO: "video/H264",
                }
                assert peer.received_dropped == 0
            assert _decoder_threads() == []
            await a.aclose()
            await b.aclose()
            assert a.state == "Closed"
            assert b.state == "Closed"
            assert bridge.registered == []
        nursery.cancel_scope.cancel()
    assert _decoder_threads() == []
    assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]
