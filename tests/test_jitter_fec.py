"""JitterBuffer and Opus in-band FEC: a Gap carries the packet after it (``Gap.recovery``) when that
packet was already buffered at the lost packet's playout time, never waiting for it.

Deterministic cases on the playout-timer harness of tests/test_jitter_buffer.py.
"""

from __future__ import annotations

import pytest

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap, JitterBuffer
from tests.test_jitter_buffer import Sender, audio_harness, video_harness

AUDIO, VIDEO = FrameType.AUDIO, FrameType.VIDEO


def gaps(items: list[tuple[float, object]]) -> list[Gap]:
    return [g for _, g in items if isinstance(g, Gap)]


def played_seqs(items: list[tuple[float, object]]) -> list[int]:
    return [i.sequence_number for _, i in items if isinstance(i, AudioPacket)]


def test_single_loss_offers_the_next_packet_and_still_plays_it() -> None:
    lost = 50
    h, sent = audio_harness(seconds=2.0, delay=lambda i: None if i == lost else 0.030)
    h.run_until(13.0)
    (gap,) = gaps(h.items)
    assert (gap.first_sequence, gap.count) == (sent[lost].ext & 0xFFFF, 1)
    assert gap.recovery is not None
    assert gap.recovery.sequence_number == sent[lost + 1].ext & 0xFFFF
    # It is still played as itself, right after the Gap, at its own time.
    seqs = played_seqs(h.items)
    assert sent[lost + 1].ext & 0xFFFF in seqs
    assert len(seqs) == len(sent) - 1
    jb = h.jb
    assert (jb.packet_loss_count, jb.recovery_offered_count, jb.unrecoverable_loss_count) == (
        1,
        1,
        0,
    )


def test_burst_of_two_recovers_only_the_last() -> None:
    h, sent = audio_harness(seconds=2.0, delay=lambda i: None if i in (50, 51) else 0.030)
    h.run_until(13.0)
    found = gaps(h.items)
    assert sum(g.count for g in found) == 2
    # The playout timer declares them one slot at a time: 50 first (51 is missing too: nothing
    # carries 50's FEC), then 51 with 52.
    assert [(g.first_sequence, g.count) for g in found] == [
        (sent[50].ext & 0xFFFF, 1),
        (sent[51].ext & 0xFFFF, 1),
    ]
    assert found[0].recovery is None
    assert found[1].recovery is not None
    assert found[1].recovery.sequence_number == sent[52].ext & 0xFFFF
    assert (h.jb.recovery_offered_count, h.jb.unrecoverable_loss_count) == (1, 1)


def test_recovery_packet_that_comes_after_the_lost_packets_slot_is_not_offered() -> None:
    # 50 lost; 51 takes 70 ms instead of 30: it arrives 10 ms after 50's slot (50 ms of playout
    # delay) and 10 ms before its own, so it plays, but the Gap did not wait for it.
    delays = {50: None, 51: 0.070}
    h, sent = audio_harness(seconds=2.0, delay=lambda i: delays.get(i, 0.030))
    h.run_until(13.0)
    (gap,) = gaps(h.items)
    assert (gap.first_sequence, gap.count) == (sent[50].ext & 0xFFFF, 1)
    assert gap.recovery is None
    assert sent[51].ext & 0xFFFF in played_seqs(h.items)
    assert (h.jb.recovery_offered_count, h.jb.unrecoverable_loss_count) == (0, 1)


def test_late_pop_still_offers_a_packet_that_was_here_in_time() -> None:
    jb = JitterBuffer(AUDIO)
    sender = Sender(AUDIO, 65_534, 2**32 - 960, 0.0)  # sequence and timestamp wrap in the gap
    sent = [sender.send(i * 0.02)[0] for i in range(6)]
    for i in (0, 1, 3, 4):
        jb.insert(sent[i].frame(AUDIO, i * 0.02 + 0.03), i * 0.02 + 0.03)
    # The consumer pops once, long after everything was due (502's slot: 0.120).
    items = jb.pop(0.5)
    gap = next(i for i in items if isinstance(i, Gap))
    assert (gap.first_sequence, gap.count) == (0, 1)
    assert gap.recovery is not None
    assert gap.recovery.sequence_number == 1
    assert gap.playout_time == pytest.approx(0.02 * 2 + 0.08)
    assert [i.sequence_number for i in items if isinstance(i, AudioPacket)] == [
        65_534,
        65_535,
        1,
        2,
    ]


def test_late_pop_does_not_offer_a_packet_that_came_after_the_slot() -> None:
    jb = JitterBuffer(AUDIO)
    sender = Sender(AUDIO, 100, 0, 0.0)
    sent = [sender.send(i * 0.02)[0] for i in range(6)]
    for i in (0, 1, 4):
        jb.insert(sent[i].frame(AUDIO, i * 0.02 + 0.03), i * 0.02 + 0.03)
    assert [i.sequence_number for i in jb.pop(0.1)] == [100, 101]  # playing: timeline settled
    jb.insert(sent[3].frame(AUDIO, 0.13), 0.13)  # after 102's slot (0.120), before 103's (0.140)
    items = jb.pop(0.5)
    gap = next(i for i in items if isinstance(i, Gap))
    assert (gap.first_sequence, gap.count, gap.recovery) == (102, 1, None)
    assert jb.unrecoverable_loss_count == 1


def test_video_gaps_never_carry_recovery() -> None:
    h, _ = video_harness(frames=45, lose=[31])
    h.run_until(13.0)
    assert h.jb.packet_loss_count == 1
    assert h.jb.recovery_offered_count == 0
    assert h.jb.unrecoverable_loss_count == 1


def test_gap_recovery_defaults_to_none() -> None:
    assert Gap(AUDIO, 1, 1, 0, 0.0).recovery is None
    frame = MediaFrame(AUDIO, 960, 2, b"x", 0.0)
    assert Gap(AUDIO, 1, 1, 0, 0.0, frame).recovery is frame
