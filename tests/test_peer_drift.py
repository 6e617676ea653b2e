"""The peer's receive path plays audio through the drift compensation stage.

No network: a PeerConnection's receiver (``MediaReceiver.play``) is driven directly with what its
SyncManager would release for a sender whose clock runs 0.5% fast, with the peer's own drift
estimator Stable at that figure.
What comes out of ``received`` must follow *our* clock (one 960-sample frame per 20 ms of it, 20 ms
apart), not the sender's (one frame per packet).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from meshrtc.config import TransportConfig
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap
from meshrtc.media.sync import AlignedItem
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.events import ReceivedAudio
from meshrtc.rtc.peer import PeerConnection, PeerOptions
from meshrtc.rtc.receiver import MediaReceiver

DRIFT_PPM = 5000.0  # within the ±1% the correction may take; large enough to count in 2 minutes
PACKETS = 6000  # two minutes of the sender's clock


class FakeDecoder:
    """Stands in for the Opus decoder (rtc/opus.py): 20 ms of stereo per packet."""

    sample_rate = 48_000
    channels = 2
    frame_samples = 960

    def decode(self, payload: bytes | memoryview) -> npt.NDArray[np.float32]:
        return np.full((960, 2), 0.25, np.float32)

    def conceal(self, samples: int | None = None) -> npt.NDArray[np.float32]:
        return np.zeros((samples or 960, 2), np.float32)


async def _no_signal(method: str, params: dict[str, Any]) -> None:
    return None


def _stable_estimator(peer: PeerConnection, drift_ppm: float) -> float:
    """Feed the peer's drift estimator exact SRs until it is Stable at ``drift_ppm``."""
    est = peer.sync_manager.clock_drift_estimator
    rate = 1 + drift_ppm * 1e-6
    for n in range(80):
        est.observe(3_900_000_000.0 + 5.0 * n, 10.0 + 5.0 * n / rate)
    assert est.state == "Stable"
    assert abs(est.correction_factor * rate - 1) < 2e-6
    return est.correction_factor


async def test_the_peer_delivers_frames_on_our_clock_not_the_senders() -> None:
    async with open_bridge() as bridge:
        peer = PeerConnection(
            "bob",
            bridge,
            TransportConfig(),
            _no_signal,
            local_id="alice",
            media=("audio",),
            options=PeerOptions(max_received=PACKETS + 100),
        )
        k = _stable_estimator(peer, DRIFT_PPM)
        tap: Any = None  # the decoder is in place: the tap is never asked for a codec
        link = MediaReceiver(
            "bob",
            tap=tap,
            bridge=bridge,
            sync=peer.sync_manager,
            quality=peer.quality,
            stats=peer.stats,
            sender_reports=peer.sender_reports,
            deliver=peer._deliver,
            close_timeout=1.0,
            started_at=0.0,
        )
        link.audio_decoder = FakeDecoder()  # type: ignore[assignment]
        lost = range(3000, 3003)  # one Gap of three packets on the way
        for n in range(PACKETS):
            if n in lost:
                if n == lost[0]:
                    gap = Gap(FrameType.AUDIO, n, len(lost), 960 * n, 0.0)
                    t = 500.0 + n * 0.020 * k
                    link.play(AlignedItem(FrameType.AUDIO, gap, None, t, t))
                continue
            frame = MediaFrame(FrameType.AUDIO, 960 * n, n & 0xFFFF, b"x", 0.0, False, 1, 111)
            t = 500.0 + n * 0.020 * k  # the SyncManager's timeline advances k·20 ms a packet
            item = AlignedItem(FrameType.AUDIO, AudioPacket(frame, t), None, t, t)
            link.play(item)
        got: list[ReceivedAudio] = []
        while True:
            try:
                x = peer.received.receive_nowait()
            except trio.WouldBlock:
                break
            assert isinstance(x, ReceivedAudio)
            got.append(x)
    ours = PACKETS * 0.020 * k / 0.020  # 20 ms frames our clock holds in those two minutes
    assert PACKETS - ours > 25  # the sender's count is 30 frames more
    assert abs(len(got) - ours) <= 2
    assert all(x.samples.shape == (960, 2) for x in got)
    steps = np.diff([x.local_time for x in got])
    np.testing.assert_allclose(steps, 0.020, atol=1e-9)
    assert sum(x.concealed for x in got) == len(lost)
    assert all(b.rtp_timestamp != a.rtp_timestamp for a, b in itertools.pairwise(got))
    assert peer.stats.audio_frames == PACKETS
    assert peer.stats.concealed_frames == len(lost)
    assert link.audio_stage.resets == 0
