from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import JitterBuffer
from meshrtc.media.quality import (
    BitrateAction,
    BitrateController,
    ConnectionQuality,
    QualityError,
    rtt_from_report,
)
from meshrtc.media.rtcp import ReceptionReport
from meshrtc.media.sync import SyncManager
from meshrtc.rtc.receiver import buffers_jitter_ms

AUDIO_SSRC = 0x1111
VIDEO_SSRC = 0x2222


def audio(seq: int, ts: int, at: float, size: int = 100) -> MediaFrame:
    return MediaFrame(
        FrameType.AUDIO, ts & 0xFFFFFFFF, seq & 0xFFFF, b"x" * size, at, ssrc=AUDIO_SSRC
    )


def video(seq: int, ts: int, at: float, size: int = 1000) -> MediaFrame:
    return MediaFrame(
        FrameType.VIDEO, ts & 0xFFFFFFFF, seq & 0xFFFF, b"v" * size, at, ssrc=VIDEO_SSRC
    )


def rr(last_sr: int, dlsr: int, fraction_lost: int = 0, at: float = 0.0) -> ReceptionReport:
    return ReceptionReport(
        ssrc=9,
        fraction_lost=fraction_lost,
        packets_lost=0,
        highest_sequence=0,
        jitter=0,
        last_sr=last_sr,
        delay_since_last_sr=dlsr,
        received_at=at,
    )


# --- RTT ---------------------------------------------------------------------------------------


def test_rtt_matches_the_rfc_3550_example() -> None:
    """RFC 3550 figure 2: A = 46864.500 s, LSR = 46853.125 s, DLSR = 5.250 s -> RTT 6.125 s."""
    arrival_ntp = (0xB710 << 32 | 0x8000 << 16) << 0  # middle 32 bits 0xB7108000
    report = rr(last_sr=0xB7052000, dlsr=0x00054000)
    assert rtt_from_report(report, arrival_ntp) == pytest.approx(6.125)
    q = ConnectionQuality("p")
    assert q.on_reception_report(report, arrival_ntp=arrival_ntp) == pytest.approx(6.125)
    assert q.rtt_ms == pytest.approx(6125.0)


def test_rtt_needs_a_previous_sender_report() -> None:
    assert rtt_from_report(rr(last_sr=0, dlsr=0), 123 << 32) is None
    # Arrival before LSR + DLSR: clocks disagree, no figure rather than a negative one.
    assert rtt_from_report(rr(last_sr=0x00020000, dlsr=0x00010000), 0x0002_0000 << 16) is None


def test_rtt_is_smoothed_like_tcp_srtt() -> None:
    q = ConnectionQuality("p")
    q.set_rtt(100.0, now=1.0)
    q.set_rtt(180.0, now=2.0)
    assert q.rtt_ms == pytest.approx(100.0 + (180.0 - 100.0) / 8)
    assert q.last_rtt == pytest.approx(0.180)
    with pytest.raises(QualityError):
        q.set_rtt(-1.0, now=3.0)


# --- loss --------------------------------------------------------------------------------------


def test_loss_from_extended_sequence_numbers_across_wraparound() -> None:
    q = ConnectionQuality("p")
    seqs = [65530, 65531, 65533, 65534, 65535, 0, 2, 3]  # 65532 and 1 missing; 10 expected
    for i, s in enumerate(seqs):
        q.on_packet(audio(s, 960 * i, at=0.02 * i))
    assert q.packets_lost() == 2
    assert q.loss_rate(now=0.2) == pytest.approx(20.0)


def test_loss_rate_covers_only_the_loss_window() -> None:
    q = ConnectionQuality("p", loss_window_s=5.0)
    for s in range(500):  # 10 s at 50 packets/s; every 10th lost during the first 5 s only
        if s < 250 and s % 10 == 5:
            continue
        q.on_packet(audio(s, 960 * s, at=s * 0.02))
        if s == 249:
            assert q.loss_rate(now=4.98) == pytest.approx(10.0)
    assert q.packets_lost() == 25
    assert q.loss_rate(now=9.98) == 0.0


def test_reordered_and_duplicate_packets_are_not_loss() -> None:
    q = ConnectionQuality("p")
    for i, s in enumerate([10, 12, 11, 13, 13, 14]):
        q.on_packet(audio(s, 960 * s, at=0.02 * i))
    assert q.packets_lost() == 0
    assert q.loss_rate(now=0.2) == 0.0


@given(
    start=st.integers(0, 0xFFFF),
    present=st.lists(st.booleans(), min_size=2, max_size=300),
)
def test_loss_counts_exactly_the_missing_packets(start: int, present: list[bool]) -> None:
    present[0] = present[-1] = True  # loss is only knowable between the first and newest packet
    q = ConnectionQuality("p", loss_window_s=1000.0)
    for i, here in enumerate(present):
        if here:
            q.on_packet(audio(start + i, 960 * i, at=0.02 * i))
    missing = present.count(False)
    assert q.packets_lost() == missing
    assert q.loss_rate(now=0.02 * len(present)) == pytest.approx(100.0 * missing / len(present))


# --- jitter ------------------------------------------------------------------------------------


def _play_through_buffers(sync: SyncManager, arrivals: list[float]) -> None:
    for i, at in enumerate(arrivals):
        sync.insert(audio(i, 960 * i, at=at), at)
        sync.insert(video(i, 3000 * i, at=i / 30), i / 30)


def test_interarrival_jitter_is_the_jitter_buffers_estimate() -> None:
    """RFC 3550 A.8 by hand: transits 0, 0, 240, 0 (48 kHz units) -> J = 0, 15, 29.0625. The jitter
    buffer computes it once per packet; the quality figures report that estimate (the worse of the
    audio and video buffers), not a second one."""
    sync = SyncManager("p")
    q = ConnectionQuality("p", jitter_ms=lambda: buffers_jitter_ms(sync))
    _play_through_buffers(sync, [0.0, 0.020, 0.045, 0.060])
    assert sync.audio_jitter_buffer.jitter_ms == pytest.approx(29.0625 / 48)
    assert sync.video_jitter_buffer.jitter_ms == pytest.approx(0.0, abs=1e-9)
    assert q.jitter_ms() == pytest.approx(29.0625 / 48)
    assert q.snapshot(1.0).jitter_ms == pytest.approx(29.0625 / 48)


@given(
    transit=st.floats(0.0, 1.0),
    count=st.integers(2, 100),
    ts0=st.integers(0, 0xFFFFFFFF),
)
def test_constant_transit_means_zero_jitter(transit: float, count: int, ts0: int) -> None:
    jb = JitterBuffer(FrameType.AUDIO)
    for i in range(count):
        at = transit + 0.02 * i
        jb.insert(audio(i, ts0 + 960 * i, at=at), at)
    assert jb.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_without_a_jitter_source_quality_reports_none() -> None:
    q = ConnectionQuality("p")
    for i, at in enumerate([0.0, 0.020, 0.045, 0.060]):
        q.on_packet(audio(i, 960 * i, at=at))
    assert q.jitter_ms() == 0.0


# --- bandwidth, bitrates, frame rate, resolution -------------------------------------------------


def test_bandwidth_over_a_ten_second_sliding_window() -> None:
    q = ConnectionQuality("p", window_s=10.0)
    # 20 s of audio, 50 packets/s of 100 + 12 bytes: 44.8 kbit/s.
    for s in range(1000):
        q.on_packet(audio(s, 960 * s, at=s * 0.02))
    assert q.bitrate_kbps(now=19.98) == pytest.approx(44.8, rel=1e-6)
    # Video 30 fps of 1012 bytes for the last 5 s only: 242.88 kbit/s over 5 s, halved over 10 s.
    for f in range(150):
        q.on_packet(video(f, 3000 * f, at=15.0 + f / 30))
    snap = q.snapshot(now=20.0)
    assert snap.audio_bitrate_kbps == pytest.approx(44.8, rel=1e-2)
    assert snap.video_bitrate_kbps == pytest.approx(1012 * 8 * 150 / 10 / 1000)
    assert snap.bandwidth_kbps == pytest.approx(snap.audio_bitrate_kbps + snap.video_bitrate_kbps)
    assert snap.video_framerate == pytest.approx(30.0)


def test_bandwidth_before_the_window_fills_uses_the_time_seen() -> None:
    q = ConnectionQuality("p", window_s=10.0)
    for s in range(101):  # 2 s
        q.on_packet(audio(s, 960 * s, at=s * 0.02))
    assert q.bitrate_kbps(now=2.0) == pytest.approx(101 * 112 * 8 / 2.0 / 1000)
    assert ConnectionQuality("q").bitrate_kbps(now=5.0) == 0.0


def test_framerate_counts_frames_not_packets() -> None:
    q = ConnectionQuality("p")
    seq = 0
    for f in range(60):  # 2 s at 15 fps, three packets per frame
        for _ in range(3):
            q.on_packet(video(seq, 6000 * f, at=f / 15 + seq * 1e-4))
            seq += 1
    assert q.video_framerate(now=4.0) == pytest.approx(15.0)
    assert ConnectionQuality("q").video_framerate(now=1.0) is None


def test_snapshot_has_every_figure_and_no_side_effects() -> None:
    q = ConnectionQuality("peer-7")
    for s in range(100):
        if s != 50:
            q.on_packet(audio(s, 960 * s, at=s * 0.02))
    q.set_video_resolution(1280, 720, now=2.0)
    q.on_reception_report(rr(0, 0, fraction_lost=64, at=2.1), arrival_ntp=0)
    first = q.snapshot(now=2.2)
    assert first == q.snapshot(now=2.2)
    assert first.peer_id == "peer-7"
    assert first.packet_loss_rate == pytest.approx(1.0)
    assert first.video_resolution == "720p"
    assert (first.video_width, first.video_height) == (1280, 720)
    assert first.outbound_loss_rate == pytest.approx(25.0)
    assert first.updated_at == pytest.approx(2.1)
    assert first.latency_ms is None
    assert q.snapshot(now=30.0).outbound_loss_rate is None  # older than the window


# --- bitrate controller ------------------------------------------------------------------------


def test_high_loss_cuts_multiplicatively_with_a_hold_and_a_floor() -> None:
    c = BitrateController(min_kbps=100, max_kbps=1000, start_kbps=200)
    d = c.update(0.0, loss_percent=6.0, rtt_ms=50)
    assert d.action is BitrateAction.DECREASE
    assert (d.previous_kbps, d.target_kbps) == (200, pytest.approx(170))
    assert c.update(1.0, loss_percent=8.0, rtt_ms=50).action is BitrateAction.HOLD
    d = c.update(2.0, loss_percent=8.0, rtt_ms=50)
    assert d.target_kbps == pytest.approx(144.5)
    assert c.update(4.0, loss_percent=8.0, rtt_ms=50).target_kbps == pytest.approx(122.825)
    assert c.update(6.0, loss_percent=8.0, rtt_ms=50).target_kbps == pytest.approx(104.40125)
    assert c.update(8.0, loss_percent=8.0, rtt_ms=50).target_kbps == 100  # floored at min
    assert c.update(10.0, loss_percent=50.0, rtt_ms=50).action is BitrateAction.HOLD


def test_exactly_five_percent_is_not_high() -> None:
    c = BitrateController(start_kbps=500)
    assert c.update(0.0, loss_percent=5.0, rtt_ms=50).action is BitrateAction.HOLD


def test_probes_up_only_after_a_good_while_and_stops_at_max() -> None:
    c = BitrateController(min_kbps=100, max_kbps=240, start_kbps=200, probe_after_s=5.0)
    assert c.update(0.0, loss_percent=0.5, rtt_ms=80).action is BitrateAction.HOLD
    assert c.update(4.9, loss_percent=0.5, rtt_ms=80).action is BitrateAction.HOLD
    d = c.update(5.0, loss_percent=0.5, rtt_ms=80)
    assert d.action is BitrateAction.INCREASE
    assert d.target_kbps == pytest.approx(216)
    assert c.update(6.0, loss_percent=0.0, rtt_ms=80).action is BitrateAction.HOLD
    assert c.update(10.0, loss_percent=0.0, rtt_ms=80).target_kbps == pytest.approx(233.28)
    assert c.update(15.0, loss_percent=0.0, rtt_ms=80).target_kbps == 240  # 251.94 -> capped
    assert c.update(20.0, loss_percent=0.0, rtt_ms=80).action is BitrateAction.HOLD


def test_middling_loss_or_bad_rtt_restarts_the_wait() -> None:
    c = BitrateController(start_kbps=300, probe_after_s=5.0, max_sane_rtt_ms=300)
    c.update(0.0, loss_percent=0.0, rtt_ms=50)
    c.update(3.0, loss_percent=2.0, rtt_ms=50)  # between thresholds: hold, wait restarts
    assert c.update(6.0, loss_percent=0.0, rtt_ms=50).action is BitrateAction.HOLD
    c.update(8.0, loss_percent=0.0, rtt_ms=900)  # RTT insane: restarts too
    assert c.update(12.0, loss_percent=0.0, rtt_ms=50).action is BitrateAction.HOLD
    assert c.update(17.0, loss_percent=0.0, rtt_ms=50).action is BitrateAction.INCREASE


def test_update_from_prefers_the_peers_report_on_our_media() -> None:
    q = ConnectionQuality("p")
    q.on_reception_report(rr(0, 0, fraction_lost=26, at=1.0), arrival_ntp=0)  # 10.2% of ours lost
    c = BitrateController(start_kbps=400)
    assert c.update_from(q.snapshot(now=1.0)).action is BitrateAction.DECREASE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_kbps": 0},
        {"min_kbps": 500, "max_kbps": 100},
        {"decrease_factor": 1.0},
        {"increase_factor": 1.0},
        {"low_loss_percent": 6.0, "high_loss_percent": 5.0},
        {"start_kbps": 10_000},
    ],
)
def test_bad_controller_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(QualityError):
        BitrateController(**kwargs)


@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 3.0),
            st.floats(0.0, 30.0),
            st.one_of(st.none(), st.floats(0.0, 1000.0)),
        ),
        max_size=80,
    )
)
def test_controller_decisions_follow_the_rules(
    steps: list[tuple[float, float, float | None]],
) -> None:
    c = BitrateController(min_kbps=50, max_kbps=800, start_kbps=300)
    now = 0.0
    good_since: float | None = None
    for dt, loss, rtt in steps:
        now += dt
        sane = rtt is None or rtt <= c.max_sane_rtt_ms
        good = loss < c.low_loss_percent and sane
        if good and good_since is None:
            good_since = now
        if not good:
            good_since = None
        before = c.target_kbps
        d = c.update(now, loss_percent=loss, rtt_ms=rtt)
        assert 50 <= d.target_kbps <= 800
        assert d.target_kbps == c.target_kbps
        assert d.previous_kbps == before
        if d.action is BitrateAction.DECREASE:
            assert loss > 5.0
            assert d.target_kbps == pytest.approx(max(50, before * 0.85))
        elif d.action is BitrateAction.INCREASE:
            assert good
            assert good_since is not None
            assert now - good_since >= c.probe_after_s
            assert d.target_kbps == pytest.approx(min(800, before * 1.08))
            good_since = now
        else:
            assert d.target_kbps == before
