"""Chromium end to end: the page ``meshrtc serve`` ships joins a transport running the default
manifest (MixMinus audio, video back to its sender, DataEcho), and browsers mesh with each other.

Every assertion reads the browser's own ``getStats()`` and state through ``window.meshrtc``
(docs/browser.md), and, where the transport is in this process, the transport's side too.
Chromium runs headless with fake camera and microphone, on loopback only (tests/browser_helpers.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from meshrtc.media.frame import FrameType
from meshrtc.rtc.peer import PeerOptions
from tests.browser_helpers import (
    TRANSPORT_ID,
    Chromium,
    Page,
    meshrtc_serve,
    open_chromium,
    serve_page,
)
from tests.conftest import require_binary

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

#: Small camera frames and frame rates: two cores run Chromium, the transport's decoders and
#: encoders, and the test.
CAMERA = {"width": "320", "height": "240", "fps": "15"}
OPTIONS = PeerOptions(video_fps=15.0)
#: Between two looks at the counters, at least 0.25 s of audio and 3 decoded frames must arrive.
AUDIO_STEP = 12_000
VIDEO_STEP = 3


def chromium() -> str:
    return require_binary("chromium", "chromium")


def query(name: str, codec: str) -> dict[str, str]:
    return {
        "session": "default",
        "name": name,
        "codec": codec,
        "autojoin": "1",
        "ice": "loopback",
        **CAMERA,
    }


async def wait_connected(page: Page, peers: set[str]) -> dict[str, Any]:
    """Joined, and connected with an open data channel to exactly ``peers``."""

    def ready(snap: dict[str, Any]) -> bool:
        if snap["error"] is not None:
            raise AssertionError(f"the page failed: {snap['error']}")
        links = snap["peers"]
        return (
            snap["state"] == "joined"
            and set(links) == peers
            and all(
                links[p]["connectionState"] == "connected" and links[p]["dataChannel"] == "open"
                for p in peers
            )
        )

    snap: dict[str, Any] = await page.wait_for("window.meshrtc.snapshot()", ready)
    return snap


def _counters(stats: dict[str, Any], peer: str) -> tuple[int, int]:
    link = stats.get(peer) or {}
    audio = link.get("audioIn") or {}
    video = link.get("videoIn") or {}
    return audio.get("totalSamplesReceived", 0), video.get("framesDecoded", 0)


async def wait_media_flowing(page: Page, peers: list[str]) -> dict[str, Any]:
    """Audio samples and decoded frames from each of ``peers`` keep increasing (two steps)."""
    stats: dict[str, Any] = await page.evaluate("window.meshrtc.stats()")
    for _step in range(2):
        base = {p: _counters(stats, p) for p in peers}

        def grown(now: dict[str, Any], base: dict[str, tuple[int, int]] = base) -> bool:
            for p in peers:
                samples, frames = _counters(now, p)
                if samples < base[p][0] + AUDIO_STEP or frames < base[p][1] + VIDEO_STEP:
                    return False
            return True

        stats = await page.wait_for("window.meshrtc.stats()", grown)
    return stats


class Steps:
    """Prints how long each step took (shown with a failure, or with ``-s``)."""

    def __init__(self) -> None:
        self.start = self.last = trio.current_time()

    def __call__(self, label: str) -> None:
        now = trio.current_time()
        print(f"{now - self.start:6.2f} s (+{now - self.last:5.2f}) {label}")
        self.last = now


async def wait_heard_through_mix(pages: list[Page], *, gain: float) -> list[float]:
    """Energy gained by the transport's audio on each page, once every one of them gained ``gain``."""
    energy = "window.meshrtc.stats().then(s => s['meshrtc-server'].audioIn.totalAudioEnergy)"
    first = [float(await page.evaluate(energy)) for page in pages]
    while True:
        gained = [
            float(await page.evaluate(energy)) - f for page, f in zip(pages, first, strict=True)
        ]
        if min(gained) > gain:
            return gained
        await trio.sleep(0.1)


def _loopback(candidate: str) -> bool:
    address = candidate.removeprefix("a=").split()[4]
    return address.startswith("127.") or address == "::1"


async def _fail_with(browsers: list[Chromium]) -> None:
    """Print what the pages saw; shielded, as it usually runs because a deadline passed."""
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        for browser in browsers:
            print(browser.diagnostics())
            for page in browser.pages:
                print(f"--- last value waited on ---\n{json.dumps(page.last_waited)}")
                log = await page.evaluate("window.meshrtc.log")
                print("--- page log ---\n" + "\n".join(log))


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["H264", "VP9", "VP8"])
async def test_browser_media_and_data_through_the_pipeline(codec: str) -> None:
    binary = chromium()
    with trio.fail_after(60):
        async with (
            serve_page(video_codec=codec, options=OPTIONS) as served,
            open_chromium(binary) as browser,
        ):
            try:
                with trio.fail_after(40):
                    page = await browser.new_page(served.page_url(**query("alice", codec)))
                    snap = await wait_connected(page, {TRANSPORT_ID})
                    assert snap["peers"][TRANSPORT_ID]["pipeline"] is True
                    assert snap["media"] == {"audio": True, "video": True, "error": None}

                    stats = (await wait_media_flowing(page, [TRANSPORT_ID]))[TRANSPORT_ID]
                    assert stats["audioIn"]["codec"] == "audio/opus"
                    assert stats["videoIn"]["codec"] == f"video/{codec}"
                    assert stats["videoOut"]["codec"] == f"video/{codec}"
                    assert stats["videoIn"]["frameWidth"] == 320
                    assert stats["rttMs"] is not None
                    # Nobody else is in the session: the mix-minus of one peer is silence.
                    assert stats["audioIn"]["totalAudioEnergy"] < 1e-6

                    # The transport's side of the same link.
                    assert served.transport.peers is not None
                    peer = served.transport.peers.get_peer("alice")
                    assert peer is not None
                    assert peer.state == "Connected"
                    assert peer.codecs[FrameType.VIDEO].lower() == f"video/{codec}".lower()
                    assert peer.codecs[FrameType.AUDIO].lower() == "audio/opus"
                    assert served.running.router.statistics().frames_in.get("alice", 0) > 0
                    # The browser trickled its candidates, and only loopback ones (ice=loopback).
                    assert peer.remote_candidates
                    assert all(_loopback(c) for c in peer.remote_candidates), peer.remote_candidates

                    sent = await page.evaluate("window.meshrtc.send('ping from alice')")
                    assert sent == [TRANSPORT_ID]
                    echo = await page.wait_for(
                        "window.meshrtc.lastEcho", lambda e: e is not None and "ping" in e["text"]
                    )
                    assert echo["text"] == "ping from alice"
                    assert echo["from"] == TRANSPORT_ID
            except BaseException:
                await _fail_with([browser])
                raise


@pytest.mark.slow
async def test_two_browsers_mesh_with_meshrtc_serve() -> None:
    """The real ``meshrtc serve`` (H.264): two browsers each get the transport's output and the
    other browser's media, hear each other through the mix, chat, and get their echoes."""
    binary = chromium()
    with trio.fail_after(65):
        async with (
            meshrtc_serve() as serve,
            open_chromium(binary) as one,
            open_chromium(binary) as two,
        ):
            try:
                with trio.fail_after(45):
                    step = Steps()
                    url = serve.url
                    # serve's default video codec (the spec's): VP9, browsers to the transport and
                    # to each other.
                    alice = await one.new_page(url + "?" + _encode(query("alice", "VP9")))
                    await wait_connected(alice, {TRANSPORT_ID})
                    step("alice connected to the transport")
                    bob = await two.new_page(url + "?" + _encode(query("bob", "VP9")))
                    snap = await wait_connected(bob, {TRANSPORT_ID, "alice"})
                    assert snap["peers"]["alice"]["pipeline"] is False
                    await wait_connected(alice, {TRANSPORT_ID, "bob"})
                    step("bob connected to both, alice to both")

                    for page, other in ((alice, "bob"), (bob, "alice")):
                        stats = await wait_media_flowing(page, [TRANSPORT_ID, other])
                        for peer in (TRANSPORT_ID, other):
                            assert stats[peer]["videoIn"]["codec"] == "video/VP9"
                            assert stats[peer]["audioIn"]["codec"] == "audio/opus"
                        step(f"media from the transport and from {other} flowing")

                    # The transport's mix for each page holds the other page's microphone (the
                    # fake device's tone: about 0.25 of energy per second), not the silence a lone
                    # peer gets (exactly 0, the first test): both directions.
                    heard = await wait_heard_through_mix([alice, bob], gain=0.05)
                    print(f"mix energy gained: alice {heard[0]:.3f}, bob {heard[1]:.3f}")
                    step("the mix carries the other browser's audio")

                    await alice.evaluate("window.meshrtc.send('hi bob')")
                    chat = "window.meshrtc.messages"
                    got = await bob.wait_for(
                        chat,
                        lambda ms: any(m["kind"] == "chat" and m["text"] == "hi bob" for m in ms),
                    )
                    assert [m["from"] for m in got if m["kind"] == "chat"] == ["alice"]
                    echo = await alice.wait_for(
                        "window.meshrtc.lastEcho", lambda e: e is not None and e["text"] == "hi bob"
                    )
                    assert echo["from"] == TRANSPORT_ID
                    # Only the sender gets the echo (DataEcho answers the sender).
                    bob_echoes = await bob.evaluate("window.meshrtc.echoes.length")
                    assert bob_echoes == 0
                    step("chat and echo")

                    # Refresh the on-page stats once more so the picture shows figures.
                    await alice.evaluate("new Promise(r => setTimeout(r, 1100))")
                    shot = await alice.screenshot(ARTIFACTS / "browser-mesh.png")
                    print(f"screenshot: {shot}")
                    data = await trio.Path(shot).read_bytes()
                    assert data.startswith(b"\x89PNG\r\n\x1a\n")
                    assert len(data) > 20_000  # three live video tiles, not a blank page
                    step("screenshot")

                    left = await bob.evaluate("window.meshrtc.leave()")
                    assert left["state"] == "left"
                    await alice.wait_for(
                        "Object.keys(window.meshrtc.snapshot().peers)",
                        lambda p: p == [TRANSPORT_ID],
                    )
            except BaseException:
                await _fail_with([one, two])
                raise
    assert serve.process.returncode == 0  # SIGINT: a graceful stop


def _encode(q: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(q)


@pytest.mark.slow
async def test_browser_and_transport_rebuild_a_lost_link() -> None:
    """The path dies; the transport notices (no RTP for 1 s) and the link is rebuilt by the rules
    of docs/signaling.md: ``alice`` (lower id) may offer; the transport, polite, offers after its
    polite wait if she has not. Either way the page answers or offers on a new RTCPeerConnection
    and media and data flow again on the same transport PeerConnection."""
    binary = chromium()
    options = PeerOptions(video_fps=15.0, media_timeout=1.0)
    with trio.fail_after(60):
        async with (
            serve_page(video_codec="H264", options=options) as served,
            open_chromium(binary) as browser,
        ):
            try:
                with trio.fail_after(40):
                    page = await browser.new_page(served.page_url(**query("alice", "H264")))
                    await wait_connected(page, {TRANSPORT_ID})
                    await wait_media_flowing(page, [TRANSPORT_ID])
                    assert served.transport.peers is not None
                    peer = served.transport.peers.get_peer("alice")
                    assert peer is not None
                    first_link = peer.connection_id, peer.generation

                    peer.path_control.kill()
                    await peer.wait_state("Reconnecting")
                    peer.path_control.restore()
                    await peer.wait_state("Connected")
                    assert peer.stats.reconnects == 1
                    assert (peer.connection_id, peer.generation) != first_link

                    def rebuilt(snap: dict[str, Any]) -> bool:
                        link = snap["peers"].get(TRANSPORT_ID, {})
                        return bool(link.get("generation", 0) >= 2) and (
                            link["connectionState"] == "connected"
                        )

                    await page.wait_for("window.meshrtc.snapshot()", rebuilt)
                    await wait_connected(page, {TRANSPORT_ID})
                    await wait_media_flowing(page, [TRANSPORT_ID])
                    assert served.transport.peers.get_peer("alice") is peer
                    await page.evaluate("window.meshrtc.send('still here')")
                    await page.wait_for(
                        "window.meshrtc.lastEcho",
                        lambda e: e is not None and e["text"] == "still here",
                    )
            except BaseException:
                await _fail_with([browser])
                raise


@pytest.mark.slow
async def test_a_page_whose_websocket_drops_keeps_its_link_to_the_transport() -> None:
    """Media outlives signaling (docs/security.md): the page's WebSocket drops (no
    ``peer.disconnect``); the transport holds its live link through ``peer.left``, the page comes
    back with its resume secret and incarnation, and neither side builds a new connection."""
    binary = chromium()
    with trio.fail_after(60):
        async with (
            serve_page(video_codec="H264", options=OPTIONS) as served,
            open_chromium(binary) as browser,
        ):
            try:
                with trio.fail_after(40):
                    page = await browser.new_page(served.page_url(**query("alice", "H264")))
                    await wait_connected(page, {TRANSPORT_ID})
                    await wait_media_flowing(page, [TRANSPORT_ID])
                    assert served.transport.peers is not None
                    peer = served.transport.peers.get_peer("alice")
                    assert peer is not None
                    generation = peer.generation
                    builds = (await page.evaluate("window.meshrtc.snapshot()"))["builds"]
                    hub = served.server.hub
                    await page.evaluate("window.meshrtc.dropSignaling()")
                    # Back when the hub knows alice again (the page retries after 0.5 s).
                    await page.wait_for(
                        "window.meshrtc.log.filter(l => l.includes('link kept')).length",
                        lambda n: n >= 1,
                    )
                    snap = await wait_connected(page, {TRANSPORT_ID})
                    assert snap["builds"] == builds
                    assert hub.session_of("alice") == "default"
                    await wait_media_flowing(page, [TRANSPORT_ID])
                    assert served.transport.peers.get_peer("alice") is peer
                    assert peer.generation == generation
                    assert peer.is_connected
            except BaseException:
                await _fail_with([browser])
                raise
