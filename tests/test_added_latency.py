"""The router's added latency never exceeds what the audio a peer hears spent in the transport.

A mix leaving for peer P carries the others' frames, never P's own. Each sample is measured from
the arrival of the newest packet in that very mix (carried through the pipeline on
``Audio.arrived_at``), so it is at most the residence of every frame the mix holds, and so at most
the end-to-end latency of any of them. The old bookkeeping took the earliest arrival of any frame
snapped onto the slot (P's own included), and a mix that MixMinus had shifted to another slot
picked up the arrivals of frames it did not carry.
"""

from __future__ import annotations

import numpy as np

from meshrtc.pipeline import default_manifest
from meshrtc.pipeline.data import Audio
from meshrtc.pipeline.nodes.mixminus import MixMinusMixer
from meshrtc.rtc.events import ReceivedAudio
from meshrtc.session import SessionRouter, StreamSession
from tests.test_session import FakePeer, _stream


def _received(peer: str, local_time: float, received_at: float) -> ReceivedAudio:
    return ReceivedAudio(
        peer_id=peer,
        samples=np.full((960, 1), 0.1, np.float32),
        sample_rate=48_000,
        channels=1,
        sender_time=None,
        local_time=local_time,
        received_at=received_at,
    )


def _router(now: list[float], peers: tuple[str, ...]) -> SessionRouter:
    stream, _recv_in = _stream()
    session = StreamSession(default_manifest())
    session.activate()
    for peer in peers:
        session.add_peer(FakePeer(peer))
    return SessionRouter(session, stream, clock=lambda: now[0])


async def test_each_mix_is_timed_from_the_newest_packet_it_carries_not_its_receivers_own() -> None:
    now = [10.0]
    router = _router(now, ("a", "b"))
    mixer = MixMinusMixer(window_timeout=0.06, peer_timeout=0.2)
    # b's packet for the same instant arrived 80 ms after a's (b's path is slower).
    inputs = [_received("a", 10.0, received_at=9.90), _received("b", 10.0, received_at=9.98)]
    outputs: list[Audio] = []
    for item in inputs:
        data = router.convert(item)
        assert isinstance(data, Audio)
        outputs += mixer.push(data, now[0])
    outputs += mixer.flush()
    assert sorted(o.to_peer or "" for o in outputs) == ["a", "b"]
    now[0] = 10.01
    for out in outputs:
        await router.deliver(out)
    added = sorted(round(v, 6) for v in router.statistics().added_latency)
    # a hears b's frame (arrived 9.98), b hears a's (9.90); the old figure was 0.11 for both.
    assert added == [0.03, 0.11]


async def test_a_mix_shifted_to_another_slot_is_timed_by_its_own_frames() -> None:
    now = [20.0]
    router = _router(now, ("a", "b"))
    # A mix stamped with a slot whose other frames arrived long ago (MixMinus re-anchors a lagging
    # peer's frames into a later window): only the arrival it carries counts.
    stale = router.convert(_received("a", 19.5, received_at=19.40))
    assert isinstance(stale, Audio)
    carried = Audio(
        samples=np.zeros(960, np.float32),
        timestamp=stale.timestamp,
        to_peer="b",
        arrived_at=19.95,
    )
    await router.deliver(carried)
    assert [round(v, 6) for v in router.statistics().added_latency] == [0.05]


async def test_audio_the_pipeline_made_itself_adds_no_sample() -> None:
    now = [5.0]
    router = _router(now, ("a",))
    await router.deliver(Audio(samples=np.zeros(960, np.float32), timestamp=4.9, to_peer="a"))
    assert router.statistics().added_latency == ()
