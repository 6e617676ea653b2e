"""LoadShedder (sans-IO): sustained lateness raises the level one step per window, sustained calm
lowers it with hysteresis; LoadMonitor ticks and tells its listeners; the router drops video at
VIDEO_OFF."""

from __future__ import annotations

import itertools
import random

import av
import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrtc.pipeline import default_manifest
from meshrtc.rtc.events import ReceivedVideo
from meshrtc.session import SessionRouter, StreamSession
from meshrtc.session.load_monitor import LoadMonitor
from meshrtc.session.shedding import SHED_PLANS, LoadShedder, ShedLevel, ShedPlan
from tests.test_session import FakePeer, _audio, _stream

SLOT = 0.02


def feed(
    shedder: LoadShedder, start: float, seconds: float, lateness: list[float] | float
) -> tuple[float, list[ShedLevel]]:
    """Ticks every 20 ms for ``seconds`` from ``start`` (each at its slot: the lateness is only
    reported); returns the end time and the levels seen after each tick."""
    levels = []
    n = round(seconds / SLOT)
    for i in range(n):
        late = lateness if isinstance(lateness, float) else lateness[i % len(lateness)]
        shedder.observe(start + i * SLOT, late)
        levels.append(shedder.level)
    return start + n * SLOT, levels


late_values = st.lists(st.floats(min_value=0.011, max_value=0.09), min_size=1, max_size=50)
calm_values = st.lists(st.floats(min_value=0.0, max_value=0.004), min_size=1, max_size=50)


@settings(max_examples=40)
@given(late=late_values, seconds=st.integers(min_value=1, max_value=8))
def test_sustained_lateness_raises_one_level_per_window_up_to_the_top(
    late: list[float], seconds: int
) -> None:
    shedder = LoadShedder()
    _, levels = feed(shedder, 100.0, seconds + 0.5, late)
    # Monotonic, one step at a time, and one step per one-second window of lateness.
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(levels))
    assert shedder.level == min(seconds, ShedLevel.VIDEO_OFF)
    assert shedder.statistics().raises == shedder.level


@settings(max_examples=40)
@given(late=late_values, calm=calm_values, calm_seconds=st.integers(min_value=0, max_value=20))
def test_level_comes_back_only_after_sustained_calm(
    late: list[float], calm: list[float], calm_seconds: int
) -> None:
    shedder = LoadShedder()
    t, _ = feed(shedder, 0.0, 4.5, late)
    assert shedder.level == ShedLevel.VIDEO_OFF
    _, levels = feed(shedder, t, calm_seconds + 0.5, calm)
    # Down one step per five calm windows (the window the lateness ended in is not calm).
    assert all(a - b in (0, 1) for a, b in itertools.pairwise(levels))
    assert shedder.level == max(ShedLevel.NONE, ShedLevel.VIDEO_OFF - max(0, calm_seconds - 1) // 5)


@settings(max_examples=40)
@given(
    middling=st.lists(st.floats(min_value=0.0042, max_value=0.0099), min_size=1, max_size=50),
    start_level=st.integers(min_value=0, max_value=3),
)
def test_lateness_between_the_thresholds_moves_nothing(
    middling: list[float], start_level: int
) -> None:
    shedder = LoadShedder()
    t, _ = feed(shedder, 0.0, float(start_level), 0.05)  # exactly ``start_level`` late windows
    _, levels = feed(shedder, t, 30.0, middling)
    assert set(levels) == {start_level}


@settings(max_examples=40)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), p_late=st.floats(0.0, 1.0))
def test_random_load_never_skips_a_level_and_never_flaps(seed: int, p_late: float) -> None:
    """Whatever the load: one step per window at most, and never down within five windows of a
    change (the hysteresis a flapping picture would need to defeat)."""
    rng = random.Random(seed)
    shedder = LoadShedder()
    changes: list[tuple[float, ShedLevel]] = []
    for i in range(1500):  # 30 s
        now = i * SLOT
        late = rng.uniform(0.011, 0.05) if rng.random() < p_late else rng.uniform(0.0, 0.003)
        if shedder.observe(now, late) is not None:
            changes.append((now, shedder.level))
    previous: tuple[float, ShedLevel] = (0.0, ShedLevel.NONE)
    for when, level in changes:
        assert abs(level - previous[1]) == 1
        if level < previous[1]:
            assert when - previous[0] >= 5 * shedder.window - 1e-9
        previous = (when, level)


@pytest.mark.parametrize(
    ("stall", "level"), [(0.1, ShedLevel.NONE), (0.3, ShedLevel.VIDEO_BITRATE)]
)
def test_a_stall_counts_for_the_slots_it_missed(stall: float, level: ShedLevel) -> None:
    """A 300 ms stall in an otherwise calm second is 15 late slots of 65: overloaded. A lone 100 ms
    one (5 of 55, a DTLS handshake's pause) is not sustained lateness."""
    shedder = LoadShedder()
    t, _ = feed(shedder, 0.0, 1.0, 0.0)
    shedder.observe(t + stall, stall)  # one tick that late: the loop was held
    feed(shedder, t + stall + SLOT, 1.0, 0.0)
    assert shedder.level == level
    assert shedder.statistics().max_lateness == pytest.approx(stall)


def test_plans_shed_video_in_the_stated_order() -> None:
    plans = [SHED_PLANS[level] for level in ShedLevel]
    assert plans[0] == ShedPlan(1.0, 1.0, True)
    assert plans[1].video_bitrate_scale < 1.0
    assert plans[1].video_framerate_scale == 1.0
    assert plans[2].video_framerate_scale < 1.0
    assert not plans[3].video
    for lower, higher in itertools.pairwise(plans):
        assert higher.video_bitrate_scale <= lower.video_bitrate_scale
        assert higher.video_framerate_scale <= lower.video_framerate_scale


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="calm_below"):
        LoadShedder(calm_below=0.02, late_after=0.01)
    with pytest.raises(ValueError, match="lower_after"):
        LoadShedder(lower_after=0)


def test_monitor_tells_listeners_the_plan_now_and_on_change() -> None:
    monitor = LoadMonitor()
    seen: list[ShedPlan] = []
    unsubscribe = monitor.subscribe(seen.append)
    assert seen == [SHED_PLANS[ShedLevel.NONE]]
    for i in range(60):
        monitor.tick(i * SLOT, 0.03)
    assert seen == [SHED_PLANS[ShedLevel.NONE], SHED_PLANS[ShedLevel.VIDEO_BITRATE]]
    unsubscribe()
    for i in range(60, 120):
        monitor.tick(i * SLOT, 0.03)
    assert len(seen) == 2
    assert monitor.shedder.level == ShedLevel.VIDEO_FRAMERATE


async def test_monitor_measures_the_lateness_of_a_blocked_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On trio's autojump clock ticks are on time; a task that holds the loop (here: a clock jump
    while it runs) makes the next tick late, and the following tick is not made up in a burst."""
    monitor = LoadMonitor()
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(0.5)
        assert max(monitor.lateness) == 0.0
        ticks = len(monitor.lateness)
        autojump_clock.jump(0.25)  # the loop was held for 250 ms
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    late = list(monitor.lateness)[ticks:]
    assert max(late) == pytest.approx(0.25 - (0.25 % SLOT), abs=SLOT)
    assert len(late) <= 7  # 100 ms of ticks after the stall, none made up
    assert monitor.shedder.statistics().max_lateness == max(late)


async def test_router_drops_members_video_while_the_plan_turns_it_off() -> None:
    stream, recv_in = _stream()
    session = StreamSession(default_manifest())
    router = SessionRouter(session, stream)
    session.activate()
    session.add_peer(FakePeer("a"))
    picture = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    monitor = LoadMonitor()
    monitor.subscribe(router.apply_plan)
    assert await router.accept(ReceivedVideo("a", picture, None, 1.0), stream.inputs)
    for i in range(160):  # three seconds late: VIDEO_OFF
        monitor.tick(i * SLOT, 0.05)
    assert monitor.shedder.level == ShedLevel.VIDEO_OFF
    assert not await router.accept(ReceivedVideo("a", picture, None, 1.1), stream.inputs)
    assert await router.accept(_audio("a", 1.1), stream.inputs)  # audio is never shed
    assert router.statistics().shed_video == {"a": 1}
    for i in range(160, 160 + 300):  # six calm seconds: one level down, video back
        monitor.tick(i * SLOT, 0.0)
    assert monitor.shedder.level == ShedLevel.VIDEO_FRAMERATE
    assert await router.accept(ReceivedVideo("a", picture, None, 1.2), stream.inputs)
    kinds = [type(recv_in.receive_nowait()).__name__ for _ in range(3)]
    assert kinds == ["Video", "Audio", "Video"]
