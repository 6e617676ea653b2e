"""SessionGrid: the router's slots (a peer whose timeline jumped is re-anchored; module docstring)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.session.grid import GRID_SECONDS, SessionGrid

G = GRID_SECONDS


def slots(grid: SessionGrid, peer: str, times: list[float]) -> list[int | None]:
    out: list[int | None] = []
    for t in times:
        ts = grid.timestamp(peer, t)
        assert grid.origin is not None
        out.append(None if ts is None else round((ts - grid.origin) / G))
    return out


def test_peers_presented_together_share_slots() -> None:
    grid = SessionGrid()
    a = slots(grid, "a", [10.0 + i * G + 0.003 for i in range(5)])
    b = slots(grid, "b", [10.0 + i * G - 0.004 for i in range(5)])
    assert a == b == [0, 1, 2, 3, 4]


def test_times_on_a_slot_boundary_do_not_flap() -> None:
    """Presentation times that sit on a slot boundary (±1 ms noise) keep one slot each: the old
    rounding made a hole, then a collision."""
    grid = SessionGrid()
    grid.timestamp("ref", 0.0)
    noise = [0.001, -0.001, 0.0008, -0.0009, 0.001, -0.001] * 5
    times = [0.01 + i * G + n for i, n in enumerate(noise)]
    got = slots(grid, "a", times)
    assert got == list(range(got[0], got[0] + len(times))), got  # type: ignore[operator]


def test_a_jump_back_is_reanchored_by_dropping_what_is_presented_twice() -> None:
    """The timeline moved 150 ms back: a burst at the last local time, then the earlier pace. The
    peer's slots do not run ahead for good (they used to, by the whole jump): after at most two
    slots of lead it drops frames until its own time reaches its last slot."""
    grid = SessionGrid()
    before = [10.0 + i * G for i in range(10)]  # slots 0..9
    burst = [before[-1]] * 7  # 150 ms presented again, clamped to the last local time
    after = [before[-1] + G * (1 + i) for i in range(20)]
    got = slots(grid, "a", before + burst + after)
    assert got[:10] == list(range(10))
    assert got[10:12] == [10, 11], "a lead of two slots is absorbed"
    assert got[12:17] == [None] * 5, "more is dropped at once"
    # The two-slot lead lasts 200 ms at most; then the frames presented twice are dropped.
    tail = got[17:]
    first_drop = tail.index(None)
    assert first_drop * G <= 0.2
    assert tail[:first_drop] == list(range(12, 12 + first_drop))
    assert tail[first_drop : first_drop + 2] == [None, None]
    assert tail[first_drop + 2 :] == [
        10 + first_drop + 2 + i for i in range(len(tail) - first_drop - 2)
    ]
    assert grid.dropped == {"a": 7}
    assert grid.reanchors == {"a": 1}, "one episode: the peer was never back on its own slots"
    assert grid.lead("a", after[-1]) == 0.0


def test_a_small_lead_is_given_back_within_reanchor_after() -> None:
    """A frame presented a little early pushes the peer one slot ahead; with frames at a steady
    pace it would stay ahead for good. After 200 ms one frame is dropped and the lead is gone."""
    grid = SessionGrid(reanchor_after=0.2)
    times = [0.0, G, 2 * G, 2 * G + 0.001] + [3 * G + i * G for i in range(30)]
    got = slots(grid, "a", times)
    assert got[:4] == [0, 1, 2, 3]
    leads = [i for i, s in enumerate(got[4:]) if s is not None and s != round(times[4 + i] / G)]
    dropped = [i for i, s in enumerate(got[4:]) if s is None]
    assert len(dropped) == 1
    assert dropped[0] * G <= 0.2 + G
    assert leads == list(range(dropped[0])), "ahead until the drop, on time after it"


def test_a_jump_forward_leaves_the_skipped_slots_empty() -> None:
    grid = SessionGrid()
    got = slots(grid, "a", [0.0, G, 2 * G, 2 * G + 0.3, 3 * G + 0.3])
    assert got == [0, 1, 2, 17, 18]


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="step"):
        SessionGrid(0.0)


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.floats(-0.5, 0.5), st.integers(1, 20)),
        min_size=1,
        max_size=30,
    )
)
def test_slots_strictly_increase_and_the_lead_stays_bounded(
    segments: list[tuple[str, float, int]],
) -> None:
    """Whatever the jumps, a peer's slots strictly increase and never run more than two slots
    ahead of its own presentation time."""
    grid = SessionGrid()
    clock = {"a": 100.0, "b": 100.0}
    last: dict[str, int] = {}
    for peer, jump, count in segments:
        clock[peer] = max(clock[peer], clock[peer] + jump)
        for _ in range(count):
            ts = grid.timestamp(peer, clock[peer])
            if ts is not None:
                assert grid.origin is not None
                slot = round((ts - grid.origin) / G)
                assert slot > last.get(peer, -(10**9))
                last[peer] = slot
                assert ts - clock[peer] <= grid.max_lead_slots * G + G / 2 + 1e-9
            clock[peer] += G


def test_a_frame_that_reaches_the_router_late_is_placed_by_its_arrival() -> None:
    """Frames reaching the router 100 ms after their presentation time (a loaded process): the mix
    would carry slots already 100 ms past, too old for the outgoing track. Placed 20 ms before
    their arrival instead; on-time frames keep their presentation time."""
    grid = SessionGrid()
    on_time = [grid.timestamp("a", 10.0 + i * G, 10.0 + i * G + 0.005) for i in range(5)]
    late = [grid.timestamp("a", 10.1 + i * G, 10.2 + i * G) for i in range(5)]
    assert on_time == pytest.approx([10.0 + i * G for i in range(5)])
    assert late == pytest.approx([10.18 + i * G for i in range(5)])
