"""Audio NACK between two meshrtc peers (real signaling server, aiortc, one process).

Alice talks, bob only listens (so bob has no RTT from RTCP: his policy measures it from its own
requests). On a clean path bob asks for nothing. Then PathControl drops a seeded tenth of the
datagrams reaching bob, retransmissions included; on loopback the answer comes back in about a
millisecond, well before the lost packet's playout, so most lost audio packets come back in time
and are played instead of concealed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.bridge import open_bridge
from meshrtc.rtc.peer import PeerConnection

from .peer_helpers import TEST_OPTIONS, open_session
from .test_peer_fec import speech_like


@pytest.mark.slow  # about 6 s: connect, 2 s clean, 3 s lossy
async def test_lost_audio_packets_are_resent_in_time_and_none_asked_on_a_clean_path() -> None:
    options = attrs.evolve(TEST_OPTIONS, audio_send_queue=30.0)
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice", options=options)
        bob = await s.join("bob", options=options)
        await s.until(s.all_connected, within=15)
        at_bob: PeerConnection = bob.peer("alice")
        await alice.peer("bob").send_audio(speech_like(12.0))
        link: Any = at_bob._link
        policy = link.receiver.nack
        assert policy is not None
        await s.until(lambda: at_bob.stats.audio_packets >= 100, within=15)  # 2 s clean
        assert policy.stats.nacked == 0
        assert at_bob.stats.audio_nacks == 0

        await bridge.call(at_bob.path_control.set_drop, 0.1)
        await s.until(lambda: at_bob.stats.audio_packets >= 250, within=15)  # 3 s lossy
        await bridge.call(at_bob.path_control.set_drop, 0.0)
        stats = policy.stats
        print(f"bob's NACK stats {stats}, rtt {policy.rtt * 1000:.2f} ms; {at_bob.stats}")
        # ~15 lost of ~150 packets (seeded PathControl, but arrival order depends on timing)
        assert stats.nacked >= 5
        assert stats.retransmitted_in_time >= 0.7 * stats.nacked, stats
        assert stats.rtt_samples >= 1
        assert policy.measured_rtt is not None
        assert policy.measured_rtt < 0.03


def _opus_feedback(sdp: str) -> list[str]:
    pt = next(
        line.split()[0].split(":")[1]
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:") and "opus/48000" in line.lower()
    )
    return [
        line.split(" ", 1)[1] for line in sdp.splitlines() if line.startswith(f"a=rtcp-fb:{pt} ")
    ]


def test_our_offers_say_opus_nack_and_answers_say_it_only_when_offered() -> None:
    adapter.install_aiortc_patches()
    preferences = {"audio": adapter.codec_preferences("audio")}

    async def negotiate(strip: bool) -> tuple[str, str]:
        config = RTCConfiguration(iceServers=[])
        offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
        try:
            offerer.addTransceiver("audio").setCodecPreferences(preferences["audio"])
            await offerer.setLocalDescription(await offerer.createOffer())
            offer = offerer.localDescription.sdp
            if strip:  # a peer that does not NACK audio (Chromium's default offer)
                offer = "\r\n".join(
                    line for line in offer.split("\r\n") if not line.endswith(" nack")
                )
            answer = await adapter.answer_offer(answerer, offer, preferences)
            return offer, answer.sdp
        finally:
            await offerer.close()
            await answerer.close()

    offer, answer = asyncio.run(negotiate(strip=False))
    assert _opus_feedback(offer) == ["nack"]
    assert _opus_feedback(answer) == ["nack"]
    offer, answer = asyncio.run(negotiate(strip=True))
    assert _opus_feedback(offer) == []
    assert _opus_feedback(answer) == []
