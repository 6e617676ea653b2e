"""media/nack.py: which lost audio packets are asked for again, and when.

A simulated stream: packet ``i`` (sequence number ``start + i``, 16-bit) is sent at ``i * 20 ms``
and plays at ``i * 20 ms + DELAY``; the head of the buffer is the first packet not yet due.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrtc.errors import ConfigError
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, JitterBuffer
from meshrtc.media.nack import NackConfig, NackPolicy

PTIME = 0.02
DELAY = 0.06
M16 = 0xFFFF


def playout(i: int) -> float:
    return i * PTIME + DELAY


class Stream:
    """The receiver side of the policy: deadlines and head from the packet index."""

    def __init__(self, start: int, policy: NackPolicy) -> None:
        self.start = start
        self.policy = policy
        self.arrived: set[int] = set()

    def index(self, seq: int) -> int:
        return (seq - self.start) & M16

    def deadline_of(self, now: float) -> Callable[[int], float | None]:
        def deadline(seq: int) -> float | None:
            due = playout(self.index(seq))
            return None if due <= now else due

        return deadline

    def head(self, now: float) -> int:
        # The first packet not yet due (played or declared lost before it).
        i = 0
        while playout(i) <= now:
            i += 1
        return (self.start + i) & M16

    def arrive(self, i: int, now: float) -> bool:
        self.arrived.add(i)
        return self.policy.on_packet((self.start + i) & M16, now, self.deadline_of(now))

    def poll(self, now: float) -> list[int]:
        return [self.index(s) for s in self.policy.poll(now, self.head(now))]


def test_a_hole_is_asked_for_at_once_and_again_after_min_resend() -> None:
    policy = NackPolicy()
    policy.set_rtt(0.001)
    s = Stream(100, policy)
    s.arrive(0, 0.001)
    s.arrive(2, 0.041)  # 1 is missing; it plays at 0.08
    assert s.poll(0.041) == [1]
    assert s.poll(0.05) == []  # within min_resend (20 ms)
    assert s.poll(0.0615) == [1]
    assert policy.stats.nacked == 1
    assert policy.stats.requests == 2
    assert s.arrive(1, 0.063) is True
    assert policy.stats.retransmitted_in_time == 1
    assert s.poll(0.09) == []
    assert policy.pending == []


def test_an_answer_is_waited_for_until_the_packet_plays() -> None:
    policy = NackPolicy()
    policy.set_rtt(0.008)
    s = Stream(0, policy)
    s.arrive(0, 0.0)
    s.arrive(2, 0.041)  # 1 plays at 0.08
    assert s.poll(0.041) == [1]
    assert s.poll(0.07) == []  # too late to ask again, not too late to come
    assert policy.pending == [1]
    assert s.arrive(1, 0.078) is True
    assert policy.stats.retransmitted_in_time == 1
    assert policy.stats.expired == 0


def test_nothing_is_asked_on_a_long_rtt() -> None:
    for rtt in (0.031, 0.2):
        policy = NackPolicy()
        policy.set_rtt(rtt)
        s = Stream(7, policy)
        s.arrive(0, 0.0)
        s.arrive(3, 0.06)
        assert s.poll(0.06) == []
        assert policy.stats.nacked == 0


def test_a_packet_whose_resend_cannot_arrive_in_time_is_not_asked_for() -> None:
    policy = NackPolicy(NackConfig(max_rtt=0.03))
    policy.set_rtt(0.025)  # needs 37.5 + 10 ms before playout
    s = Stream(0, policy)
    s.arrive(0, 0.0)
    s.arrive(2, 0.04)  # 1 plays at 0.08: 40 ms away, not enough
    assert s.poll(0.04) == []
    assert policy.stats.nacked == 0


def test_a_wide_hole_tracks_only_the_newest_packets() -> None:
    policy = NackPolicy(NackConfig(max_pending=4))
    policy.set_rtt(0.001)
    s = Stream(65530, policy)  # across the wrap
    s.arrive(0, 0.0)
    s.arrive(20, 0.0)
    assert policy.stats.overflows == 1
    assert s.poll(0.0) == [16, 17, 18, 19]


def test_a_listener_measures_the_rtt_from_its_answered_requests() -> None:
    policy = NackPolicy()  # no RTT from RTCP: assumed 5 ms
    s = Stream(0, policy)
    s.arrive(0, 0.0)
    s.arrive(2, 0.04)
    assert s.poll(0.04) == [1]
    s.arrive(1, 0.043)
    assert policy.measured_rtt == pytest.approx(0.003)
    assert policy.rtt == pytest.approx(0.003)
    policy.set_rtt(0.002)
    assert policy.rtt == 0.002


def test_a_remote_that_never_resends_is_no_longer_asked() -> None:
    policy = NackPolicy(NackConfig(max_unanswered=3))
    s = Stream(0, policy)
    s.arrive(0, 0.0)
    now = 0.0
    for i in range(1, 40, 2):  # every other packet lost, none resent
        now = i * PTIME + 0.02
        s.arrive(i + 1, now)
        s.poll(now)
        s.poll(now + 0.03)
    assert policy.stats.expired == 3
    assert policy.stats.nacked == 3
    assert not policy.active
    policy.set_rtt(0.002)  # an RTT from RTCP: ask again
    assert policy.active


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        NackConfig(rtt_factor=0.5)
    with pytest.raises(ConfigError):
        NackConfig(max_pending=0)


events = st.lists(
    st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 15)),  # lost, delay, poll gap
    min_size=1,
    max_size=120,
)


@given(
    start=st.integers(0, M16),
    rtt=st.sampled_from([0.0005, 0.001, 0.005, 0.02]),
    plan=events,
    max_pending=st.integers(1, 40),
    max_tries=st.integers(1, 4),
)
def test_never_asks_for_a_received_played_or_hopeless_packet(
    start: int, rtt: float, plan: list[tuple[bool, int, int]], max_pending: int, max_tries: int
) -> None:
    config = NackConfig(max_pending=max_pending, max_tries=max_tries)
    policy = NackPolicy(config)
    policy.set_rtt(rtt)
    s = Stream(start, policy)
    # Arrivals: packet i at i * 20 ms plus ``delay`` packets of reordering, unless lost; a lost
    # packet may come back later as a retransmission of a NACK (at ``now`` + RTT).
    arrivals: list[tuple[float, int]] = []
    for i, (lost, delay, _gap) in enumerate(plan):
        if not lost:
            arrivals.append((i * PTIME + delay * PTIME * 0.5 + 0.001, i))
    arrivals.sort()
    asked: dict[int, int] = {}
    resends: list[tuple[float, int]] = []
    now = 0.0
    polls = [0.003 * (g + 1) for _l, _d, g in plan]
    k = 0
    for step in polls:
        now += step
        while arrivals and arrivals[0][0] <= now:
            at, i = arrivals.pop(0)
            s.arrive(i, at)
        while resends and resends[0][0] <= now:
            at, i = resends.pop(0)
            if i not in s.arrived:
                s.arrive(i, at)
        for i in s.poll(now):
            assert i not in s.arrived, "asked for a packet that arrived"
            assert playout(i) > now, "asked for a packet already played or declared lost"
            assert now + rtt * config.rtt_factor + config.margin <= playout(i), "too late to ask"
            asked[i] = asked.get(i, 0) + 1
            assert asked[i] <= max_tries
            if k % 3:  # two of three resends get through
                resends.append((now + rtt, i))
                resends.sort()
            k += 1
        assert len(policy.pending) <= max_pending
    assert policy.stats.nacked == len(asked)
    assert policy.stats.requests == sum(asked.values())
    assert policy.stats.retransmitted_in_time <= policy.stats.nacked


def _audio(seq: int, ts: int) -> MediaFrame:
    return MediaFrame(FrameType.AUDIO, ts & 0xFFFFFFFF, seq & M16, b"x", 0.0, False, 1, 111)


def test_the_jitter_buffer_says_when_a_missing_packet_would_play() -> None:
    buffer = JitterBuffer(FrameType.AUDIO)
    assert buffer.expected_playout(5) is None  # no stream yet
    start = 65534  # across the wrap
    for i in (0, 1, 3):
        buffer.insert(_audio(start + i, 960 * i), 10.0 + i * PTIME)
    played = [item for item in buffer.pop(10.0 + 0.05) if isinstance(item, AudioPacket)]
    assert [p.sequence_number for p in played] == [65534]
    one = buffer.expected_playout(start + 1)
    two = buffer.expected_playout(start + 2)
    assert one is not None
    assert two == pytest.approx(one + PTIME)
    assert buffer.expected_playout(start) is None  # played
    assert buffer.expected_playout(start - 1) is None
