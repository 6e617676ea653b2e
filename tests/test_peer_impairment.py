"""Impaired paths between two meshrtc peers (real signaling server, STUN server, aiortc, one process).

* The adapter's seeded Impairment drops 5 % of alice's audio packets and delays the rest by up to
  30 ms before bob's jitter buffer: audio keeps flowing with concealment, every loss counter matches
  exactly what was dropped, and nothing comes out of order.
* PathControl drops a fifth of the datagrams reaching bob: aiortc's reception reports tell alice,
  her quality loop lowers her bitrates through the adapter, and probes back up once the path heals.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import trio

from meshrtc.media.frame import FrameType
from meshrtc.media.quality import BitrateAction
from meshrtc.rtc.aiortc_adapter import OPUS_DEFAULT_BITRATE, ImpairmentConfig
from meshrtc.rtc.bridge import Bridge, open_bridge
from meshrtc.rtc.peer import PeerConnection

from .peer_helpers import TEST_OPTIONS, decoder_threads, open_session, picture, tone

IMPAIRED = ImpairmentConfig(seed=5, drop=0.05, delay=0.03)


async def _on_loop_until(bridge: Bridge, condition: Callable[[], bool], within: float) -> None:
    """Wait for a condition on aiortc's side (evaluated on the loop thread, where it changes)."""
    with trio.fail_after(within):
        while not await bridge.call(condition):  # noqa: ASYNC110 - no trio event over there
            await trio.sleep(0.02)


def _rel(ts: int, origin: int) -> int:
    """RTP timestamp distance from ``origin``, across the 32-bit wrap."""
    return ((ts - origin + 0x80000000) & 0xFFFFFFFF) - 0x80000000


async def test_loss_and_jitter_are_concealed_counted_exactly_and_keep_order() -> None:
    options = attrs.evolve(TEST_OPTIONS, media_timeout=10.0)
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice", options=options)
        bob = await s.join(
            "bob", options=options, impairments={"alice": {FrameType.AUDIO: IMPAIRED}}
        )
        await s.until(s.all_connected, within=15)
        at_alice = alice.peer("bob")
        at_bob = bob.peer("alice")
        await at_alice.send_audio(tone(3.0))
        await s.until(lambda: len(bob.audio("alice")) >= 120, within=15)

        # Stop alice's audio for good, then let everything in flight land and play out.
        link: Any = at_alice._link
        sender = next(x for x in link.pc.getSenders() if x.kind == "audio")
        tap = at_bob._link.tap.receiver(FrameType.AUDIO)  # type: ignore[union-attr]
        assert tap is not None
        impairment = tap.impairment
        assert impairment is not None
        await bridge.call(link.audio_track.stop)
        await _on_loop_until(
            bridge,
            lambda: (
                sender._RTCRtpSender__rtp_task.done()
                and impairment.seen == sender._RTCRtpSender__packet_count
                and not tap._timers
            ),
            within=10,
        )
        sync = at_bob.sync_manager
        buffer = sync.audio_jitter_buffer
        await s.until(lambda: buffer.buffered_packets == 0 and sync.pending_count == 0, within=10)
        audio = bob.audio("alice")
        received = len(bob.received["alice"])
        await s.until(lambda: not at_bob.received.statistics().current_buffer_used, within=5)
        assert len(bob.received["alice"]) == received  # nothing more is coming
        assert at_bob.state == "Connected"

        ssrc = next(iter(tap.ssrcs))
        origin = audio[0].rtp_timestamp
        assert origin is not None
        stamps = [_rel(x.rtp_timestamp or 0, origin) for x in audio]
        concealed = {t for t, x in zip(stamps, audio, strict=True) if x.concealed}
        decoded = [t for t, x in zip(stamps, audio, strict=True) if not x.concealed]
        dropped = {
            rel
            for dropped_ssrc, ts in impairment.dropped_timestamps
            if dropped_ssrc == ssrc and 0 <= (rel := _rel(ts, origin)) <= stamps[-1]
        }
        print(
            f"seen {impairment.seen}, dropped {impairment.dropped} ({len(dropped)} inside the "
            f"played span), delayed {impairment.delayed}; played {len(decoded)} decoded + "
            f"{len(concealed)} concealed; late {buffer.late_arrival_count}, jitter target "
            f"{buffer.target_delay_ms:.0f} ms"
        )
        assert impairment.dropped > 0
        assert impairment.delayed > 0
        # Order: packets come out in RTP order, at non-decreasing presentation times.
        assert all(b > a for a, b in itertools.pairwise(decoded))
        assert all(b.local_time >= a.local_time for a, b in itertools.pairwise(audio))
        # Audio kept flowing: the losses were concealed, the rest decoded.
        assert len(decoded) >= 0.9 * len(audio)
        # Counters, exactly: our RFC 3550 loss (from what passed the impairment) is what was
        # dropped; the jitter buffer concealed that plus what came after its playout time.
        assert at_bob.quality.packets_lost() == len(dropped)
        concealed_items = sum(1 for x in audio if x.concealed)
        # (A lost packet stands in as concealed whether PLC or the next packet's FEC made it.)
        lost_items = at_bob.stats.concealed_frames + at_bob.stats.recovered_frames
        assert buffer.packet_loss_count == concealed_items == lost_items
        assert buffer.packet_loss_count == len(dropped) + buffer.late_arrival_count
        assert at_bob.stats.late_packets == buffer.late_arrival_count
        assert buffer.duplicate_count == 0
        if all(b - a == 960 for a, b in itertools.pairwise(stamps)):
            # (Unless alice's loop stalled and her track skipped ahead, which moves the RTP
            # clock: then concealed packets carry estimated timestamps.) One item per packet,
            # and the concealed ones are exactly the dropped ones plus the late ones.
            assert dropped <= concealed
            assert len(concealed - dropped) == buffer.late_arrival_count
        assert decoder_threads() == []


async def test_path_loss_lowers_the_senders_bitrate_and_recovery_probes_it_back_up() -> None:
    options = attrs.evolve(TEST_OPTIONS, quality_interval=1.0, probe_after=1.0)
    async with open_bridge() as bridge, open_session(shared_bridge=bridge) as s:
        alice = await s.join("alice", options=options)
        bob = await s.join("bob", options=options)
        await s.until(s.all_connected, within=15)
        at_alice: PeerConnection = alice.peer("bob")
        at_bob = bob.peer("alice")
        await at_alice.send_audio(tone(30.0))
        await at_alice.send_video(picture(80))
        await s.until(lambda: len(bob.video("alice")) >= 5, within=15)

        def decisions(action: BitrateAction) -> list[tuple[FrameType, int | None]]:
            return [
                (kind, applied)
                for kind, decision, applied in at_alice.bitrate_decisions
                if decision.action is action
            ]

        def audio_rates() -> list[tuple[BitrateAction, int | None]]:
            return [
                (decision.action, applied)
                for kind, decision, applied in at_alice.bitrate_decisions
                if kind is FrameType.AUDIO
            ]

        await bridge.call(at_bob.path_control.set_drop, 0.2)
        await s.until(lambda: len(decisions(BitrateAction.DECREASE)) >= 2, within=15)
        metrics = at_alice.get_metrics()
        assert metrics.outbound_loss_rate is not None
        assert metrics.outbound_loss_rate > 5.0  # what bob's reception reports say
        lowered = dict(decisions(BitrateAction.DECREASE))
        # Both encoders were told: Opus from its 144 kb/s start, H.264 from its 1 Mb/s start.
        assert lowered.keys() == {FrameType.AUDIO, FrameType.VIDEO}
        audio_rate = lowered[FrameType.AUDIO]
        assert audio_rate is not None
        assert audio_rate < OPUS_DEFAULT_BITRATE
        control = at_alice._link.tap.sender(FrameType.AUDIO)  # type: ignore[union-attr]
        assert control is not None
        # The loss goes on while we look, so another decision may land during the call: the
        # encoder holds the rate of the newest one, before or after it.
        before = audio_rates()[-1][1]
        told = await bridge.call(lambda: control.target_bitrate)
        assert told in (before, audio_rates()[-1][1])

        decreases = len(audio_rates())
        await bridge.call(at_bob.path_control.set_drop, 0.0)
        await s.until(
            lambda: any(
                action is BitrateAction.INCREASE for action, _ in audio_rates()[decreases:]
            ),
            within=15,
        )
        # A probe raises the rate from where the decisions before it had left it (decreases that
        # were still in flight when the loss stopped included).
        rates = audio_rates()
        probe = next(
            i for i in range(decreases, len(rates)) if rates[i][0] is BitrateAction.INCREASE
        )
        probed, previous = rates[probe][1], rates[probe - 1][1]
        assert probed is not None
        assert previous is not None
        assert probed > previous
        assert at_bob.path_control.dropped_in > 0
        assert at_alice.state == at_bob.state == "Connected"
