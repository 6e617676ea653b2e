"""Loss-driven Opus FEC between two meshrtc peers (real signaling server, aiortc, one process).

PathControl drops a seeded tenth of the datagrams reaching bob, so aiortc's own reception reports
tell alice (the tap's Impairment sits after aiortc's statistics: its losses are never reported).
Alice's quality loop feeds them to her link's FecPolicy: her Opus encoder turns in-band FEC on
within a few reports, the audio floor rises to OPUS_FEC_MIN_KBPS, and bob recovers lost frames
from the next packet's FEC data. On the clean path before, FEC stays off.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import pytest

from meshrtc.media.frame import FrameType
from meshrtc.media.quality import OPUS_FEC_MIN_KBPS
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.peer import PeerConnection

from .peer_helpers import TEST_OPTIONS, open_session

#: Reports on alice's audio (one about every second) FEC may take to come on once the loss
#: starts: the smoothed loss of a 10% path is over 1% at the first report; the rest is slack for
#: a loaded machine (a report that covers mostly the clean time before).
MAX_REPORTS_TO_FEC = 4


def speech_like(seconds: float, seed: int = 1) -> npt.NDArray[np.float32]:
    """Glottal pulses (gliding pitch) through three formants, four syllables a second: libopus
    takes it for speech and codes it with SILK, the layer that carries in-band FEC (a steady tone
    or pulse train reads as music: CELT, and no FEC below about 8% expected loss)."""
    rng = np.random.default_rng(seed)
    n = int(48_000 * seconds)
    t = np.arange(n) / 48_000
    pitch = 110 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    pulses = np.flatnonzero(np.diff(np.floor(np.cumsum(pitch / 48_000)), prepend=0.0))
    k = np.arange(1024) / 48_000
    ring = sum(
        np.exp(-np.pi * bw * k) * np.sin(2 * np.pi * fc * k)
        for fc, bw in ((700, 130), (1220, 70), (2600, 160))
    )
    out = 0.01 * rng.standard_normal(n + 1024)
    for p in pulses:
        out[p : p + 1024] += ring
    voiced = out[:n] * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    return (0.3 * voiced / np.max(np.abs(voiced))).astype(np.float32)


@pytest.mark.slow  # about 7 s: connect, three clean reports, then the lossy ones
async def test_path_loss_turns_fec_on_and_the_receiver_recovers_frames() -> None:
    # No audio NACK: on loopback bob's NACKs bring nearly every lost packet back in time, aiortc
    # counts the resent ones as received, and the reports alice's FEC follows show ~no loss
    # (tests/test_peer_nack.py covers NACK).
    options = attrs.evolve(TEST_OPTIONS, audio_send_queue=30.0, audio_nack=None)
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice", options=options)
        bob = await s.join("bob", options=options)
        await s.until(s.all_connected, within=15)
        at_alice: PeerConnection = alice.peer("bob")
        at_bob: PeerConnection = bob.peer("alice")
        await at_alice.send_audio(speech_like(20.0))
        link: Any = at_alice._link
        control = link.tap.sender(FrameType.AUDIO)
        await s.until(lambda: len(bob.audio("alice")) >= 25, within=15)
        ssrc = await bridge.call(lambda: control.ssrc)
        encoder = await bridge.call(lambda: control.encoder)

        # Clean: three reports read, FEC never on, the encoder as aiortc configures it.
        def read(count: int) -> bool:
            until = link.fec_read_until
            return (
                until is not None
                and len(at_alice.quality.loss_reports(ssrc, until)) == 0
                and (len(at_alice.quality.loss_reports(ssrc)) >= count)
            )

        await s.until(lambda: read(3), within=10)
        assert at_alice.fec_decisions == []
        assert await bridge.call(lambda: (encoder.inband_fec, encoder.packet_loss_percent)) == (
            False,
            0,
        )
        assert at_bob.stats.recovered_frames == 0

        clean_reports = len(at_alice.quality.loss_reports(ssrc))
        await bridge.call(at_bob.path_control.set_drop, 0.1)
        await s.until(lambda: bool(at_alice.fec_decisions), within=15)
        turned_on = at_alice.fec_decisions[0]
        assert turned_on.setting.inband_fec
        assert turned_on.setting.packet_loss_percent >= 1
        reports_until_on = [
            r
            for r in at_alice.quality.loss_reports(ssrc)[clean_reports:]
            if r[0] <= link.fec_read_until
        ]
        assert len(reports_until_on) <= MAX_REPORTS_TO_FEC, reports_until_on
        assert await bridge.call(lambda: encoder.inband_fec)
        # The audio floor rises with it (at the next bitrate decision); no later decision goes
        # under it while FEC is on.
        await s.until(
            lambda: link.controllers[FrameType.AUDIO].floor_kbps == OPUS_FEC_MIN_KBPS, within=5
        )

        # Bob rebuilds lost frames from the next packet's in-band FEC data.
        await s.until(lambda: at_bob.stats.recovered_frames >= 3, within=15)
        await bridge.call(at_bob.path_control.set_drop, 0.0)
        assert all(
            applied is None or applied >= OPUS_FEC_MIN_KBPS * 1000
            for kind, _decision, applied in at_alice.bitrate_decisions
            if kind is FrameType.AUDIO
        )
        print(
            f"FEC on after {len(reports_until_on)} lossy reports ({turned_on.reason}); "
            f"bob recovered {at_bob.stats.recovered_frames}, concealed "
            f"{at_bob.stats.concealed_frames}; alice's decisions {at_alice.fec_decisions}"
        )
