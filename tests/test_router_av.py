"""The router moves a peer's pictures with its audio: whatever the grid does to the audio's times
(snap to the session's slots, late frames placed at their arrival) the pictures presented with it
take too, so the pipeline's outputs keep the A/V relation the peer's timeline presented."""

from __future__ import annotations

import av
import numpy as np

from meshrtc.pipeline import Audio, Video, default_manifest
from meshrtc.rtc.events import ReceivedAudio, ReceivedVideo
from meshrtc.session import SessionRouter, StreamSession
from tests.test_session import _stream


def _audio(peer: str, t: float) -> ReceivedAudio:
    return ReceivedAudio(peer, np.zeros((960, 1), np.float32), 48_000, 1, None, t)


def _video(peer: str, t: float) -> ReceivedVideo:
    return ReceivedVideo(peer, av.VideoFrame(16, 16, "yuv420p"), None, t)


def _router(now: list[float]) -> SessionRouter:
    stream, _ = _stream()
    return SessionRouter(StreamSession(default_manifest()), stream, clock=lambda: now[0])


def _timestamp(router: SessionRouter, item: ReceivedAudio | ReceivedVideo) -> float:
    data = router.convert(item)
    assert isinstance(data, Audio | Video)
    return data.timestamp


def test_a_peer_between_the_slots_has_its_pictures_moved_with_its_audio() -> None:
    """Peer b presents 7 ms after the slots peer a started: its audio is snapped 7 ms earlier, so
    its pictures must be too (they kept their local time and showed up 7 ms late on the wire)."""
    now = [10.0]
    router = _router(now)
    _timestamp(router, _audio("a", 10.0))
    for n in range(20):
        t = 10.007 + n * 0.02
        now[0] = t
        assert abs(_timestamp(router, _audio("b", t)) - (t - 0.007)) < 1e-9
        picture = t + 0.004  # presented with the audio of this frame
        assert abs(_timestamp(router, _video("b", picture)) - (picture - 0.007)) < 1e-9
    # Peer a's pictures are on its own audio's slots: untouched.
    assert _timestamp(router, _video("a", 10.01)) == 10.01


def test_pictures_follow_audio_placed_at_its_late_arrival_and_not_stale_audio() -> None:
    now = [100.0]
    router = _router(now)
    _timestamp(router, _audio("a", 100.0))
    now[0] = 100.06  # the frame of 100.02 reaches the router 40 ms late: placed at 100.04
    assert abs(_timestamp(router, _audio("a", 100.02)) - 100.04) < 1e-9
    assert abs(_timestamp(router, _video("a", 100.025)) - 100.045) < 1e-9
    # A picture long after the peer's last audio (its audio stopped) keeps its local time.
    assert _timestamp(router, _video("a", 101.0)) == 101.0
    assert _timestamp(router, _video("nobody", 5.0)) == 5.0
