"""Chromium sends Opus in-band FEC to meshrtc once ``useinbandfec=1`` is negotiated and our reports
show loss (issue 17).

Chromium's Opus encoder (WebRTC's ``AudioEncoderOpusImpl``) turns libopus's in-band FEC on when the
*remote* description's Opus fmtp says ``useinbandfec=1`` (our answer), and sets libopus's expected
packet loss from the fraction lost in the receiver reports it gets, smoothed by an exponential
filter with a 10 s time constant (capped at 20 %). libopus writes LBRR (FEC) data into a packet only
with FEC on *and* an expected loss above zero (and in SILK or hybrid mode, which it prefers for
speech, and forces under FEC with enough loss). So on a clean path no packet carries FEC, and once
the transport's receive path loses a fifth of what arrives (``PathControl.set_drop``, under aiortc,
so aiortc's RTCP receiver reports tell Chromium), Chromium's packets start to carry it: what
``meshrtc.rtc.opus.has_fec`` (``opus_packet_has_lbrr``) sees on the transport's audio tap.

The fake microphone plays the espeak-ng speech clip of bench/voice_loss.py (a beep is not speech
to libopus: it would stay in CELT mode, which has no LBRR, until the expected loss passes 8 %).
Loopback only; about 25 s.
"""

from __future__ import annotations

import importlib.util
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshrtc.media.frame import FrameType, MediaFrame
from tests.browser_helpers import TRANSPORT_ID, open_chromium, serve_page
from tests.conftest import require_binary
from tests.test_browser import CAMERA, OPTIONS, wait_connected

SUPPORT = Path(__file__).resolve().parent.parent / "bench" / "support"
#: What the transport drops of everything arriving from the browser once the clean phase is over.
DROP = 0.2
#: Clean phase: long enough for a few receiver reports (aiortc sends one every 0.5-1.5 s).
CLEAN_SECONDS = 3.0
#: FEC-carrying packets to see once the loss is on (Chromium sends 50 audio packets a second).
WANTED = 25


def _speech_wav(directory: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "meshrtc_bench_voice_clip", SUPPORT / "voice_clip.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    samples = module.speak()
    path = directory / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(module.RATE)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


class FecCounter:
    """Counts, on the loop thread, the audio packets reaching the tap and those carrying FEC."""

    def __init__(self) -> None:
        self.packets = 0
        self.fec = 0

    def wrap(self, tap: Any) -> None:
        from meshrtc.rtc.opus import has_fec

        emit = tap.emit

        def counting(item: object) -> None:
            if isinstance(item, MediaFrame):
                self.packets += 1
                if has_fec(item.payload):
                    self.fec += 1
            emit(item)

        tap.emit = counting


@pytest.mark.slow
async def test_chromium_sends_inband_fec_once_negotiated_and_our_reports_show_loss(
    tmp_path: Path,
) -> None:
    binary = require_binary("chromium", "chromium")
    require_binary("espeak-ng", "espeak-ng")
    wav = _speech_wav(tmp_path)
    counter = FecCounter()
    with trio.fail_after(90):
        async with (
            serve_page(options=OPTIONS) as served,
            open_chromium(
                binary, extra_flags=[f"--use-file-for-fake-audio-capture={wav}"]
            ) as browser,
        ):
            query = {"session": "default", "name": "alice", "autojoin": "1", "ice": "loopback"}
            page = await browser.new_page(served.page_url(**query, **CAMERA))
            with trio.fail_after(40):
                await wait_connected(page, {TRANSPORT_ID})
            assert served.transport.peers is not None
            peer = served.transport.peers.get_peer("alice")
            assert peer is not None
            tap = peer._link.tap.receiver(FrameType.AUDIO)  # type: ignore[union-attr]
            assert tap is not None
            await peer.bridge.call(counter.wrap, tap)

            await trio.sleep(CLEAN_SECONDS)  # a clean path: measured over a fixed span
            clean_packets, clean_fec = counter.packets, counter.fec
            print(f"clean: {clean_fec} of {clean_packets} audio packets carried FEC")
            assert clean_packets > 0.5 * CLEAN_SECONDS * 50
            assert clean_fec == 0

            await peer.bridge.call(peer.path_control.set_drop, DROP)
            with trio.fail_after(30):
                while counter.fec - clean_fec < WANTED:  # noqa: ASYNC110 - counted on the loop thread
                    await trio.sleep(0.1)
            lossy_packets = counter.packets - clean_packets
            print(
                f"lossy ({DROP:.0%} dropped): {counter.fec - clean_fec} of {lossy_packets} "
                f"audio packets carried FEC; dropped {peer.path_control.dropped_in} datagrams"
            )
            assert peer.path_control.dropped_in > 0
