"""The scoring helpers of bench/voice_loss.py: if these are wrong, its PESQ table means nothing.

* Alignment finds a known delay of the espeak-ng clip inside a longer, noisy recording.
* PESQ-WB of the clip against itself is near the top of the scale, against noise near the bottom,
  and a clip with every tenth 20 ms frame silenced lands in between (and STOI follows).
* Placement leaves missing frames silent instead of shifting later ones.
* The loss masks are seeded, reach the asked long-run loss, and the bursty one loses in bursts;
  on the wire they judge RTP datagrams only (never RTCP, STUN or DTLS).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.conftest import require_binary

SUPPORT = Path(__file__).resolve().parent.parent / "bench" / "support"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"meshrtc_bench_{name}", SUPPORT / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


voice_clip = _load("voice_clip")
voice_score = _load("voice_score")
voice_patterns = _load("voice_patterns")

RATE = 48_000
FRAME = 960


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    require_binary("espeak-ng", "espeak-ng")
    samples: np.ndarray = voice_clip.speak()
    return samples


def test_the_clip_is_about_ten_seconds_of_speech_at_48k(clip: np.ndarray) -> None:
    assert clip.dtype == np.float32
    assert 8.0 < len(clip) / RATE < 12.0
    assert float(np.abs(clip).max()) == pytest.approx(voice_clip.PEAK, rel=1e-3)


def test_alignment_finds_a_known_delay(clip: np.ndarray) -> None:
    delay = 3_217
    rng = np.random.default_rng(7)
    recording = np.zeros(len(clip) + RATE, dtype=np.float32)
    recording[delay : delay + len(clip)] = clip
    recording += rng.normal(0.0, 0.01, len(recording)).astype(np.float32)
    assert voice_score.align(clip, recording) == delay
    cut = voice_score.aligned(clip, recording, delay)
    assert len(cut) == len(clip)
    assert float(np.corrcoef(cut, clip)[0, 1]) > 0.95


def test_pesq_and_stoi_rank_clean_lossy_and_noise(clip: np.ndarray) -> None:
    lossy = clip.copy()
    for start in range(0, len(clip) - FRAME, 10 * FRAME):
        lossy[start : start + FRAME] = 0.0
    noise = np.random.default_rng(3).normal(0.0, 0.1, len(clip)).astype(np.float32)
    clean_pesq = voice_score.pesq_wb(clip, clip)
    lossy_pesq = voice_score.pesq_wb(clip, lossy)
    noise_pesq = voice_score.pesq_wb(clip, noise)
    print(
        f"PESQ-WB clean {clean_pesq:.2f}, 10% frames silenced {lossy_pesq:.2f}, noise {noise_pesq:.2f}"
    )
    assert clean_pesq > 4.5
    assert noise_pesq < 1.5
    assert noise_pesq < lossy_pesq < clean_pesq - 1.0
    clean_stoi = voice_score.stoi(clip, clip)
    lossy_stoi = voice_score.stoi(clip, lossy)
    noise_stoi = voice_score.stoi(clip, noise)
    assert clean_stoi > 0.99
    assert noise_stoi < lossy_stoi < clean_stoi


def test_placement_leaves_missing_frames_silent() -> None:
    one = np.ones(FRAME, dtype=np.float32)
    placed = voice_score.place([(0, one), (2 * FRAME, 2 * one), (-FRAME, one)], 4 * FRAME)
    assert placed[:FRAME].tolist() == one.tolist()
    assert not placed[FRAME : 2 * FRAME].any()
    assert (placed[2 * FRAME : 3 * FRAME] == 2.0).all()
    assert not placed[3 * FRAME :].any()


@pytest.mark.parametrize("pattern", ["random", "bursty"])
def test_loss_masks_are_seeded_and_reach_the_asked_loss(pattern: str) -> None:
    count = 20_000
    mask = voice_patterns.loss_mask(pattern, 0.1, count, seed=1)
    assert mask == voice_patterns.loss_mask(pattern, 0.1, count, seed=1)
    assert mask != voice_patterns.loss_mask(pattern, 0.1, count, seed=2)
    assert not any(mask[: voice_patterns.PROTECTED])
    assert sum(mask) / count == pytest.approx(0.1, abs=0.01)
    bursts = [len(run) for run in "".join("x" if m else "." for m in mask).split(".") if run]
    mean_burst = sum(bursts) / len(bursts)
    if pattern == "random":
        assert mean_burst < 1.2  # independent losses: 1 / (1 - 0.1)
    else:
        assert mean_burst == pytest.approx(1 / voice_patterns.BURST_EXIT, rel=0.1)
    assert voice_patterns.loss_mask(pattern, 0.0, count, seed=1) == [False] * count


def test_mask_drop_counts_from_the_first_sequence_number_across_the_wrap() -> None:
    drop = voice_patterns.MaskDrop([False, True, False, True])
    decisions = [drop.decide(seq & 0xFFFF) for seq in range(65534, 65538)]
    assert decisions == [False, True, False, True]
    assert drop.dropped == 2
    assert drop.dropped_indices == [1, 3]


def test_mask_drop_judges_only_rtp_datagrams() -> None:
    drop = voice_patterns.MaskDrop([True] * 10)

    def rtp(seq: int, payload_type: int = 111) -> bytes:
        return bytes([0x80, payload_type]) + seq.to_bytes(2, "big") + bytes(8) + b"opus"

    assert drop.datagram(rtp(7))  # RTP (marker bit too): judged by the mask
    assert drop.datagram(rtp(8, 0x80 | 111))
    assert not drop.datagram(bytes([0x80, 200]) + bytes(26))  # RTCP sender report (rtcp-mux)
    assert not drop.datagram(bytes([0x81, 201]) + bytes(30))  # RTCP receiver report
    assert not drop.datagram(bytes([0x00, 0x01]) + bytes(18))  # STUN binding request
    assert not drop.datagram(bytes([23, 0xFE, 0xFD]) + bytes(20))  # DTLS application data
    assert drop.dropped == drop.seen == 2


def test_mask_drop_judges_a_resent_copy_on_its_own() -> None:
    # Packet 1 is lost the first time; copies of it (NACK answers) are new datagrams.
    never = voice_patterns.MaskDrop([False, True, False])
    assert [never.decide(seq) for seq in (10, 11, 12, 11, 11)] == [False, True, False, False, False]
    assert (never.dropped, never.resent, never.resent_lost) == (1, 2, 0)
    always = voice_patterns.MaskDrop([False, True, False])
    always.resend_loss(0.999999, seed=1)
    assert [always.decide(seq) for seq in (10, 11, 12, 11)] == [False, True, False, True]
    assert (always.dropped, always.resent, always.resent_lost) == (1, 1, 1)
    some = voice_patterns.MaskDrop([False])
    some.resend_loss(0.2, seed=1)
    copies = [some.decide(0) for _ in range(5001)][1:]
    assert sum(copies) / len(copies) == pytest.approx(0.2, abs=0.02)
