"""MixMinus: hand-computed mixes, windowing across peers, and the property that nobody hears itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrtc.pipeline import Audio, Manifest, PipelineRunner, RuntimeData
from meshrtc.pipeline.nodes.mixminus import MixMinusMixer, limit, mix_minus


def audio(value: Any, peer: str | None, ts: float, n: int = 4, **kw: Any) -> Audio:
    samples = np.full(n, value, np.float32) if np.isscalar(value) else np.asarray(value, np.float32)
    return Audio(samples=samples, peer_id=peer, timestamp=ts, **kw)


def by_peer(outputs: list[Audio] | list[RuntimeData]) -> dict[str | None, np.ndarray]:
    return {o.to_peer: o.samples for o in outputs if isinstance(o, Audio)}


def test_mix_minus_hand_computed() -> None:
    frames = {
        "a": np.array([0.1, 0.2, 0.3], np.float32),
        "b": np.array([0.01, 0.02], np.float32),  # shorter: zero-padded
        "c": np.array([-0.5, 0.0, 0.5], np.float32),
    }
    mixes = mix_minus(frames, ["a", "b", "c", "d"])
    np.testing.assert_allclose(mixes["a"], [-0.49, 0.02, 0.5], atol=1e-7)
    np.testing.assert_allclose(mixes["b"], [-0.4, 0.2, 0.8], atol=1e-7)
    np.testing.assert_allclose(mixes["c"], [0.11, 0.22, 0.3], atol=1e-7)
    np.testing.assert_allclose(mixes["d"], [-0.39, 0.22, 0.8], atol=1e-7)  # absent: hears all
    assert all(m.dtype == np.float32 for m in mixes.values())


def test_limiters() -> None:
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 0.9, 1.0, 3.0])
    np.testing.assert_array_equal(
        limit(x.copy(), "clip"), np.array([-1, -1, -0.5, 0, 0.5, 0.9, 1, 1], np.float32)
    )
    np.testing.assert_array_equal(limit(x.copy(), "none"), x.astype(np.float32))
    soft = limit(x.copy(), "soft")
    np.testing.assert_array_equal(soft[2:5], [-0.5, 0.0, 0.5])  # linear below the knee
    assert (np.abs(soft) <= 1.0).all()
    assert 0.8 < soft[5] < 0.9  # compressed above the knee
    assert (np.diff(soft) > 0)[:-1].all()  # monotonic (3.0 and 1.0 both round to 1.0 in float32)


def test_window_mixes_when_every_known_peer_contributed() -> None:
    m = MixMinusMixer()
    # First window: nobody is known yet, so it closes on the next window's first frame.
    assert m.push(audio(0.1, "a", 0.00), now=0.0) == []
    assert m.push(audio(0.2, "b", 0.00), now=0.0) == []
    first = by_peer(m.push(audio(0.1, "a", 0.02), now=0.02))
    np.testing.assert_allclose(first["a"], 0.2)
    np.testing.assert_allclose(first["b"], 0.1)
    # Second window: a and b are known; it closes as soon as b arrives, without waiting.
    second = by_peer(m.push(audio(0.2, "b", 0.02), now=0.02))
    assert set(second) == {"a", "b"}
    np.testing.assert_allclose(second["a"], 0.2)
    assert m.deadline is None


def test_missing_peer_does_not_stall_and_still_hears_the_others() -> None:
    m = MixMinusMixer(window_timeout=0.02)
    for peer, value in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        m.push(audio(value, peer, 0.0), now=0.0)
    m.flush()
    # c's frame of the next window is lost: a and b are there, c is still expected.
    assert m.push(audio(0.1, "a", 0.02), now=1.0) == []
    assert m.push(audio(0.2, "b", 0.02), now=1.0) == []
    assert m.deadline == pytest.approx(1.02)
    assert m.expire(now=1.01) == []
    mixes = by_peer(m.expire(now=1.02))
    np.testing.assert_allclose(mixes["a"], 0.2)
    np.testing.assert_allclose(mixes["b"], 0.1)
    np.testing.assert_allclose(mixes["c"], 0.3, rtol=1e-6)  # c hears a + b
    # A peer a window behind the others is still mixed in: a newer window does not close an older
    # one (browsers fed through a loaded router arrive like this).
    assert m.push(audio(0.1, "a", 0.04), now=2.0) == []
    assert m.push(audio(0.1, "a", 0.06), now=2.0) == []
    assert m.push(audio(0.2, "b", 0.04), now=2.01) == []
    assert m.push(audio(0.2, "b", 0.06), now=2.01) == []
    mixes = m.push(audio(0.3, "c", 0.04), now=2.015)  # completes 0.04 only
    assert {o.timestamp for o in mixes} == {0.04}
    np.testing.assert_allclose(by_peer(mixes)["a"], 0.5)
    assert m.late == 0
    # ... and a window still missing a peer is mixed on its timeout, oldest first.
    assert m.deadline == pytest.approx(2.0 + m.window_timeout)
    mixes = by_peer(m.expire(now=2.0 + m.window_timeout))
    np.testing.assert_allclose(mixes["c"], 0.3, rtol=1e-6)
    assert m.deadline is None
    # More than max_windows open: the oldest is mixed without waiting for its timeout.
    outs: list[Audio] = []
    for k in range(4, 4 + m.max_windows + 1):
        outs += m.push(audio(0.1, "a", k * 0.02), now=3.0)
    assert {o.timestamp for o in outs} == {0.08}


def test_late_mismatched_anonymous_and_departed_peers() -> None:
    m = MixMinusMixer(peer_timeout=0.1)
    m.push(audio(0.1, "a", 0.0), now=0.0)
    m.push(audio(0.2, "b", 0.0), now=0.0)
    m.flush()
    assert m.push(audio(0.3, "c", 0.0), now=0.0) == []  # late for the mixed window
    assert m.late == 1
    m.push(audio(0.1, "a", 0.02, n=2, sample_rate=16_000), now=0.0)  # opens a 16 kHz window
    assert m.push(audio(0.2, "b", 0.02), now=0.0) == []  # 48 kHz: dropped
    assert m.mismatched == 1
    assert m.push(audio(0.2, None, 0.02), now=0.0) == []
    assert m.anonymous == 1
    m.flush()
    # c (seen late) is expected from now on: a window with a and b alone waits for it.
    m.push(audio(0.1, "a", 0.04), now=0.0)
    assert m.push(audio(0.2, "b", 0.04), now=0.0) == []
    assert set(by_peer(m.push(audio(0.3, "c", 0.04), now=0.0))) == {"a", "b", "c"}
    # b and c stop; after peer_timeout of media time they no longer receive mixes.
    outs: list[Audio] = []
    for k in range(3, 12):
        outs += m.push(audio(0.1, "a", k * 0.02), now=0.0)
    outs += m.flush()
    last = [o for o in outs if o.timestamp == 11 * 0.02]
    assert set(by_peer(last)) == {"a"}
    np.testing.assert_array_equal(by_peer(last)["a"], 0.0)  # alone: hears silence
    # Outputs stay in time order although windows waited for b and c.
    stamps = [o.timestamp for o in outs]
    assert stamps == sorted(stamps)


def test_duplicate_frame_in_window_is_dropped() -> None:
    m = MixMinusMixer()
    m.push(audio(0.1, "a", 0.0), now=0.0)
    assert m.push(audio(0.5, "a", 0.0), now=0.0) == []
    assert m.duplicates == 1


def test_differing_lengths_pad_to_the_longest() -> None:
    m = MixMinusMixer()
    m.push(audio([0.1, 0.1, 0.1, 0.1], "a", 0.0), now=0.0)
    m.push(audio([0.2, 0.2], "b", 0.0), now=0.0)
    mixes = by_peer(m.flush())
    np.testing.assert_allclose(mixes["a"], [0.2, 0.2, 0.0, 0.0])
    np.testing.assert_allclose(mixes["b"], [0.1, 0.1, 0.1, 0.1])


async def test_node_window_timeout_on_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    manifest = Manifest.from_dict(
        {
            "version": "v1",
            "nodes": [{"id": "mix", "node_type": "MixMinus", "params": {"window_timeout_ms": 30}}],
        }
    )
    async with PipelineRunner().execute_streaming(manifest) as stream:
        for peer, value in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
            await stream.send(audio(value, peer, 0.0))
        start = trio.current_time()
        with trio.fail_after(1):
            first = [await stream.outputs.receive() for _ in range(3)]
        # The first window had no known peers: it closed on its timeout, 30 ms later.
        assert trio.current_time() - start == pytest.approx(0.03)
        assert {o.to_peer for o in first} == {"a", "b", "c"}
        # c misses the next window: mixed on the timeout, c still gets a + b.
        await stream.send(audio(0.1, "a", 0.02))
        await stream.send(audio(0.2, "b", 0.02))
        start = trio.current_time()
        with trio.fail_after(1):
            second = by_peer([await stream.outputs.receive() for _ in range(3)])
        assert trio.current_time() - start == pytest.approx(0.03)
        np.testing.assert_allclose(second["c"], 0.3, rtol=1e-6)
        # All three present: mixed at once, no timeout.
        for peer, value in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
            await stream.send(audio(value, peer, 0.04))
        start = trio.current_time()
        third = [await stream.outputs.receive() for _ in range(3)]
        assert trio.current_time() == start
        assert len(third) == 3


# -- the property ------------------------------------------------------------------------------

peer_sets = st.integers(min_value=1, max_value=10).map(lambda n: [f"p{i}" for i in range(n)])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    peers=peer_sets,
    windows=st.integers(min_value=1, max_value=4),
)
def test_nobody_hears_itself(data: st.DataObject, peers: list[str], windows: int) -> None:
    """With a random constant per peer, each output is exactly the sum of the *other* peers'.

    A frame can be dropped as late (its peer joined after its window was complete); the test tracks
    which frames the mixer took, so "the others" are exactly the frames that made it into the window.
    """
    m = MixMinusMixer(limiter="none", peer_timeout=10.0)
    level = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)
    outs: list[Audio] = []
    taken: list[dict[str, float]] = []
    for w in range(windows):
        present = data.draw(st.lists(st.sampled_from(peers), unique=True, min_size=1), "present")
        values = {p: data.draw(level, f"value {p}") for p in present}
        lengths = {p: data.draw(st.integers(1, 8), f"len {p}") for p in present}
        order = data.draw(st.permutations(present), "order")
        taken.append({})
        for p in order:
            late = m.late
            outs.extend(m.push(audio(values[p], p, w * 0.02, n=lengths[p]), now=0.0))
            if m.late == late:
                taken[w][p] = values[p]
        if data.draw(st.booleans(), "flush"):
            outs.extend(m.flush())
    outs.extend(m.flush())

    windows_out: dict[float, dict[str | None, Audio]] = {}
    for o in outs:
        windows_out.setdefault(o.timestamp, {})[o.to_peer] = o
    for w, values in enumerate(taken):
        mixes = windows_out.get(w * 0.02, {})
        # Every peer whose frame was mixed receives that window's mix ...
        assert set(values) <= set(mixes), (w, values)
        for receiver, out in mixes.items():
            assert receiver is not None
            assert out.peer_id is None
            # ... and it is the sum of the others: every value is constant over its frame and no
            # frame is shorter than one sample, so the first sample holds the full sum.
            others = sum(v for p, v in values.items() if p != receiver)
            assert out.samples[0] == pytest.approx(others, abs=1e-6)
    # Only the first frame of a peer joining a window that was already complete can be late.
    assert m.late <= len(peers)


@settings(max_examples=60, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from([f"p{i}" for i in range(10)]),
        st.floats(min_value=-0.125, max_value=0.125, allow_nan=False, width=32),
        min_size=1,
    )
)
def test_mix_minus_sum_of_others_property(values: dict[str, float]) -> None:
    frames = {p: np.full(16, v, np.float32) for p, v in values.items()}
    mixes = mix_minus(frames, list(values))
    for p, mix in mixes.items():
        expected = sum(np.float64(np.float32(v)) for q, v in values.items() if q != p)
        np.testing.assert_allclose(mix, np.float32(expected), atol=1e-7)


def test_outputs_are_audio_runtime_data() -> None:
    m = MixMinusMixer()
    m.push(audio(0.1, "a", 0.5, sample_rate=16_000, channels=2), now=0.0)
    (out,) = m.flush()
    assert isinstance(out, RuntimeData)
    assert (out.sample_rate, out.channels, out.timestamp, out.to_peer) == (16_000, 2, 0.5, "a")


def test_a_peer_late_for_every_window_is_reanchored() -> None:
    """Issue 11: b's timestamps run 150 ms behind a's and c's (its timeline jumped). It used to be
    counted late for every frame, for good (8 s of silence in the field); after 100 ms of nothing
    but late frames its timestamps are shifted into the open windows and it is mixed again."""
    m = MixMinusMixer(reanchor_after=0.1)
    heard_b: list[tuple[float, bool]] = []
    for k in range(100):
        now = k * 0.02
        outs: list[Audio] = []
        for peer, value, offset in (("a", 0.01, 0.0), ("b", 0.1, -0.15 if k >= 20 else 0.0)):
            outs += m.push(audio(value, peer, now + offset), now)
        outs += m.push(audio(0.001, "c", now), now + 0.001)
        heard_b.extend(
            (now, bool(np.isclose(o.samples[0], 0.101))) for o in outs if o.to_peer == "a"
        )
    assert m.reanchors == 1
    missing = [t for t, ok in heard_b if not ok and t >= 0.1]
    assert missing, "the jump did cost a few windows"
    assert max(missing) <= 0.4 + 0.1 + 0.06, "b was back in a's mix within the re-anchor time"
    assert all(ok for t, ok in heard_b if t > 0.6)
    assert m.late <= 6


def test_a_peer_that_keeps_every_window_waiting_is_reanchored() -> None:
    """b's frames carry the right timestamps but reach the mixer 50 ms after a's and c's (a slow
    path into the router): every window waited for it, so every mix left 50 ms old, and the
    outgoing track (which drops frames 40 ms past their timestamp) sent silence to everybody. After
    500 ms of that, b's timestamps are shifted forward and the mixes leave fresh again."""
    m = MixMinusMixer(max_lag=0.02, lag_reanchor_after=0.5)
    ages: list[tuple[float, float]] = []
    heard_b: list[tuple[float, bool]] = []
    pushes = []
    for k in range(150):
        ts = k * 0.02
        pushes += [(ts, "a", 0.01, ts), (ts + 0.001, "c", 0.001, ts), (ts + 0.05, "b", 0.1, ts)]
    for now, peer, value, ts in sorted(pushes):
        for o in m.push(audio(value, peer, ts), now):
            ages.append((now, now - o.timestamp))
            if o.to_peer == "a":
                heard_b.append((o.timestamp, bool(np.isclose(o.samples[0], 0.101))))
    assert m.reanchors == 1
    assert all(age >= 0.045 for now, age in ages if 0.2 < now < 0.5), "the slow peer held them"
    assert all(age <= 0.02 for now, age in ages if now > 1.0)
    # b is missing from the windows before it was first heard, and from the two it skips when
    # its timestamps move 40 ms forward; from every other window it is not.
    missing = [round(ts, 2) for ts, ok in heard_b if not ok and ts > 0.1]
    assert len(missing) <= 2, missing


def naive_mix_minus(
    frames: dict[str, np.ndarray], receivers: list[str], limiter: str
) -> dict[str, np.ndarray]:
    """The per-member mix the vectorised one replaced: for each receiver, the others summed."""
    length = max((f.size for f in frames.values()), default=0)
    mixes = {}
    for peer in receivers:
        mix = np.zeros(length, np.float64)
        for other, samples in frames.items():
            if other != peer:
                mix[: samples.size] += samples
        mixes[peer] = limit(mix, limiter)
    return mixes


@settings(max_examples=80, deadline=None)
@given(
    senders=st.integers(min_value=0, max_value=10),
    listeners=st.integers(min_value=0, max_value=2),
    length=st.integers(min_value=0, max_value=96),
    short=st.integers(min_value=0, max_value=96),
    loud=st.booleans(),
    limiter=st.sampled_from(["clip", "soft", "none"]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_vectorised_mix_minus_equals_the_per_member_mix(
    senders: int, listeners: int, length: int, short: int, loud: bool, limiter: str, seed: int
) -> None:
    # 16-bit PCM as decoders deliver it: float64 sums of such samples are exact in any order, so
    # the two must agree to the bit, clipping included (``loud``: full-scale frames from up to ten
    # members sum far past 1.0).
    rng = np.random.default_rng(seed)
    scale = 32767 if loud else 4000
    frames = {
        f"p{i}": (rng.integers(-scale, scale + 1, length) / 32768).astype(np.float32)
        for i in range(senders)
    }
    if frames and short < length:
        frames["p0"] = frames["p0"][:short]  # a shorter frame is zero-padded
    receivers = [*frames, *(f"l{i}" for i in range(listeners))]
    rng.shuffle(receivers)
    got = mix_minus(frames, receivers, limiter)
    want = naive_mix_minus(frames, receivers, limiter)
    assert list(got) == list(want)
    for peer in receivers:
        assert got[peer].dtype == np.float32
        np.testing.assert_array_equal(got[peer], want[peer])
        if limiter != "none":
            assert (np.abs(got[peer]) <= 1.0).all()
