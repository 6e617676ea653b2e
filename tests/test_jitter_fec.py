"""JitterBuffer and Opus in-band FEC: a Gap carries the packet after it (``Gap.recovery``) when that
packet was already buffered at the lost packet's playout time, never waiting for it.

Deterministic cases on the playout-timer harness of tests/test_jitter_buffer.py.
"""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap, InsertResult, JitterBuffer, PlayoutItem
from meshrtc.media.sync import SyncManager
from tests.test_jitter_buffer import EPS, Sender, audio_harness, video_harness
from tests.test_sync import Sender as SyncSender
from tests.test_sync import run as run_sync
from tests.test_sync import steady_events

AUDIO, VIDEO = FrameType.AUDIO, FrameType.VIDEO
LATE = InsertResult.LATE


def gaps(items: list[tuple[float, object]]) -> list[Gap]:
    return [g for _, g in items if isinstance(g, Gap)]


def played_seqs(items: list[tuple[float, object]]) -> list[int]:
    return [i.sequence_number for _, i in items if isinstance(i, AudioPacket)]


def test_single_loss_offers_the_next_packet_and_still_plays_it() -> None:
    lost = 50
    h, sent = audio_harness(seconds=2.0, delay=lambda i: None if i == lost else 0.030)
    # The lost packet itself turns up after its Gap went out (a retransmission): never played.
    h.deliver(sent[lost].frame(AUDIO, sent[lost].send_time + 0.120))
    h.run_until(13.0)
    (gap,) = gaps(h.items)
    assert (gap.first_sequence, gap.count) == (sent[lost].ext & 0xFFFF, 1)
    assert [r for f, r in h.results if f.sequence_number == gap.first_sequence] == [LATE]
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


def test_every_other_packet_lost_for_long_every_loss_is_offered_and_memory_stays_bounded() -> None:
    # 300 losses, each followed by a packet: more than the arrival memory holds before pruning.
    h, sent = audio_harness(seconds=12.0, delay=lambda i: None if i % 2 else 0.030)
    peak = 0
    for k in range(1, 13):
        h.run_until(10.0 + k)
        peak = max(peak, len(h.jb._arrivals))
    h.run_until(23.0)
    jb = h.jb
    assert jb.packet_loss_count == len(sent) // 2 - 1  # the last loss is never declared
    assert jb.recovery_offered_count == jb.packet_loss_count
    assert all(g.recovery is not None for g in gaps(h.items))
    assert peak <= 257


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


def test_recovery_packet_reordered_behind_the_next_one_is_offered() -> None:
    # 50 lost; 51 takes 55 ms: it comes after 52 (30 ms) but 5 ms before 50's slot.
    delays = {50: None, 51: 0.055}
    h, sent = audio_harness(seconds=2.0, delay=lambda i: delays.get(i, 0.030))
    h.run_until(13.0)
    (gap,) = gaps(h.items)
    assert gap.recovery is not None
    assert gap.recovery.sequence_number == sent[51].ext & 0xFFFF
    assert played_seqs(h.items).count(sent[51].ext & 0xFFFF) == 1


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


@pytest.mark.parametrize("with_reports", [True, False])
def test_sync_manager_passes_the_gap_and_its_recovery_on_unchanged(with_reports: bool) -> None:
    sender = SyncSender()
    lost = sender.audio(120, 0.030)
    events = [
        e
        for e in steady_events(sender, 3.0, 0.030, 0.040)
        if e[1] != lost and (with_reports or isinstance(e[1], MediaFrame))
    ]
    sm = SyncManager("p")
    out = run_sync(sm, events, 14.0)
    found = [a for a in out if isinstance(a.item, Gap)]
    assert len(found) == 1
    gap = found[0].item
    assert isinstance(gap, Gap)
    assert gap.first_sequence == lost.sequence_number
    assert gap.recovery == sender.audio(121, 0.030)
    assert found[0].rtp_timestamp == gap.rtp_timestamp == lost.rtp_timestamp
    assert (found[0].sender_time is not None) == with_reports
    # The recovery packet is presented after the Gap, as itself.
    later = out[out.index(found[0]) + 1 :]
    audio = [a.item for a in later if isinstance(a.item, AudioPacket)]
    assert audio[0].frame == gap.recovery


def test_gap_recovery_defaults_to_none() -> None:
    assert Gap(AUDIO, 1, 1, 0, 0.0).recovery is None
    frame = MediaFrame(AUDIO, 960, 2, b"x", 0.0)
    assert Gap(AUDIO, 1, 1, 0, 0.0, frame).recovery is frame


# --- property: recovery is an annotation, nothing else changes -------------------------------------


class _NoArrivals(dict[int, float]):
    """Forgets every arrival: a buffer holding this never offers recovery."""

    def __setitem__(self, key: int, value: float) -> None:
        pass


class _WithoutRecovery(JitterBuffer):
    """The buffer as it was before FEC recovery (no arrival is ever known), for side-by-side runs."""

    def _clear(self) -> None:
        super()._clear()
        self._arrivals = _NoArrivals()  # empty for good: never long enough to be pruned


def _strip(item: PlayoutItem) -> PlayoutItem:
    return attrs.evolve(item, recovery=None) if isinstance(item, Gap) else item


#: Extra network delay (s). 20-30 ms puts a packet behind the next one yet before the slot of the
#: one before it (playout delay 50 ms): the reordered recovery packet that must still be offered.
_EXTRA_DELAY = st.one_of(st.floats(0.0, 0.12), st.sampled_from([0.005, 0.025, 0.045]))
#: What happens to each packet: delivered on time, jittered, lost, doubled, or retransmitted late.
_FATES = st.sampled_from(["ok"] * 5 + ["jitter", "jitter", "lost", "lost", "dup", "resend"])


@given(
    seq0=st.one_of(st.integers(65_500, 65_535), st.integers(0, 65_535)),
    ts0=st.one_of(st.integers(2**32 - 20_000, 2**32 - 1), st.integers(0, 2**32 - 1)),
    fates=st.lists(st.tuples(_FATES, _EXTRA_DELAY), min_size=5, max_size=60),
    lateness=st.lists(
        st.sampled_from([0.0] * 6 + [0.004, 0.03, 0.09, 0.3]), min_size=1, max_size=8
    ),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_recovery_only_annotates_gaps(
    seq0: int, ts0: int, fates: list[tuple[str, float]], lateness: list[float]
) -> None:
    """Random orders, duplicates, losses, late retransmissions and 16-bit wrap-around, popped at the
    timer (sometimes late): the buffer outputs exactly what a buffer that cannot offer recovery does,
    recovery aside; every sequence number comes out once, as a packet or inside a Gap; a recovery is
    the packet after the gap's last frame, buffered in time, and plays later as itself."""
    real, plain = JitterBuffer(AUDIO), _WithoutRecovery(AUDIO)
    sender = Sender(AUDIO, seq0, ts0, 0.0)
    arrivals: list[tuple[float, int, MediaFrame]] = []
    sent: dict[int, int] = {}  # 16-bit sequence -> model (extended) sequence
    for i, (fate, extra) in enumerate(fates):
        (s,) = sender.send(i * 0.020)
        sent[s.ext & 0xFFFF] = s.ext
        delays = {
            "ok": [0.030],
            "jitter": [0.030 + extra],
            "lost": [],
            "dup": [0.030, 0.030 + extra],
            "resend": [0.030 + 0.1 + extra],  # a retransmission after its slot, usually
        }[fate]
        arrivals += [(s.send_time + d, s.ext, s.frame(AUDIO, s.send_time + d)) for d in delays]
    arrivals.sort(key=lambda a: (a[0], a[1]))
    arrived: dict[int, float] = {}  # model sequence -> first accepted arrival
    emitted: list[tuple[str, int]] = []
    offered: list[tuple[int, float]] = []  # (model sequence, the gap's last frame's playout time)
    late_pops = iter(lateness * len(fates))
    clock = 0.0
    k = 0
    for _ in range(10 * len(arrivals) + 200):  # bounded: each round inserts or pops
        due = real.next_due()
        assert due == plain.next_due()
        arrival = arrivals[k][0] if k < len(arrivals) else math.inf
        if due is not None and due + 0.0 <= arrival:
            clock = max(clock, due + next(late_pops, 0.0))
            items = real.pop(clock)
            assert list(map(_strip, items)) == plain.pop(clock)
            for item in items:
                if isinstance(item, AudioPacket):
                    emitted.append(("packet", sent[item.sequence_number]))
                    continue
                assert isinstance(item, Gap)
                first = sent[item.first_sequence]
                emitted += [("gap", e) for e in range(first, first + item.count)]
                if item.recovery is not None:
                    after = sent[item.recovery.sequence_number]
                    assert after == first + item.count
                    last_due = item.playout_time + (item.count - 1) * 0.020
                    assert arrived[after] <= last_due + EPS
                    offered.append((after, len(emitted)))
                    event("recovery offered")
                    if after + 1 in arrived and arrived[after + 1] < arrived[after]:
                        event("recovery offered, it came after the packet behind it")
                elif item.count == 1 and first + 1 in arrived:
                    assert arrived[first + 1] > item.playout_time - 1e-6, "not offered"
                    event("next packet came after the slot: no recovery")
                if item.count > 1:
                    event("a Gap of several frames")
            continue
        if arrival == math.inf:
            break
        t, e, frame = arrivals[k]
        k += 1
        clock = max(clock, t)
        result = real.insert(frame, clock)
        assert result is plain.insert(frame, clock)
        if result is InsertResult.ACCEPTED:
            arrived[e] = clock
    else:
        pytest.fail("the event loop did not finish")
    if real.overrun_drop_count:
        event("overrun")
    if real.duplicate_count or real.late_arrival_count:
        event("late or duplicate packets")
    seqs = [e for _, e in emitted]
    assert len(seqs) == len(set(seqs)), "a sequence number came out twice"
    assert seqs == sorted(seqs)
    if real.overrun_drop_count == 0 and arrived:
        # From the first packet to the last received (a loss after it is never declared: nothing
        # follows to show it was lost).
        assert seqs == list(range(min(arrived), max(arrived) + 1))
    for after, position in offered:
        # Played later as itself (an overrun could drop it first; none without one).
        assert ("packet", after) in emitted[position:] or real.overrun_drop_count
    assert real.recovery_offered_count == len(offered)
    assert real.packet_loss_count == plain.packet_loss_count
    assert real.unrecoverable_loss_count == real.packet_loss_count - len(offered)
