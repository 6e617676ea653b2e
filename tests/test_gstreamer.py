"""An independent WebRTC stack against ``meshrtc serve``: GStreamer ``webrtcbin`` clients.

tests/gst_client.py is written from docs/signaling.md and docs/interop.md only; it runs under
Debian's /usr/bin/python3 (GStreamer 1.22 bindings) as a subprocess, driven by tests/gst_interop.py.
For each video codec one ``meshrtc serve --video-codec CODEC`` is started and **reused**: two runs
on it, one with ECDSA client certificates and one with GStreamer's default (RSA) certificate. In
each run two clients join the session at the same time, and each must hear the other's tone
through the MixMinus mix (in >= 95% of 20 ms windows from 1 s after both connected, never its own),
decode video, and get its data-channel messages echoed. The media runs 6 s: GStreamer sends its
first RTCP Sender Reports 2-5 s in, and the reused-server failure (docs/interop.md: a member's audio
gone from the mix after the A/V timeline thrashed on those SRs) starts only then.

Components missing (Debian packages in .ci/run) skip the test, or fail it under CI=true.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_component
from tests.gst_interop import (
    CERTIFICATES,
    CODECS,
    Certificate,
    certificates,
    gstreamer_missing,
    judge_result,
    meshrtc_serve,
    run_pair,
)

#: Seconds of media per run once both clients are connected (see the module docstring).
MEDIA_SECONDS = 6.0


@pytest.fixture(scope="module")
def gstreamer() -> None:
    require_component(gstreamer_missing(), "GStreamer webrtcbin client")


@pytest.mark.slow
@pytest.mark.parametrize("codec", CODECS)
def test_webrtcbin_clients_through_a_reused_server(gstreamer: None, codec: str) -> None:
    results = []
    with certificates() as certs, meshrtc_serve(codec) as serve:
        for index, kind in enumerate(CERTIFICATES):
            result = run_pair(serve, certs[kind], index=index, seconds=MEDIA_SECONDS)
            print(result.summary())
            results.append(result)
    failed = [r for r in results if not r.passed]
    report = "\n".join(r.summary() for r in results)
    for r in failed:
        log = [line for line in r.server_log if "transitions.core" not in line]
        report += f"\n--- server log during run {r.index} ---\n" + "\n".join(log[-40:])
    assert not failed, report
    assert serve.process.returncode == 0, "\n".join(serve.lines[-20:])  # SIGINT: graceful stop


# --- the judge itself (no GStreamer needed): a run that should fail does ---------------------

CONNECTED = 100.0
ECDSA = Certificate("ecdsa", None, "sha-256 AA:BB")


def client_result(windows: list[list[float]], **overrides: object) -> dict[str, object]:
    """A client's result object as tests/gst_client.py prints it, passing unless overridden."""
    result: dict[str, object] = {
        "errors": [],
        "connected_at": CONNECTED,
        "stopped_at": CONNECTED + 6.0,
        "audio_windows": windows,
        "video_frames": 80,
        "video_size": [320, 240],
        "data_sent": 30,
        "data_echoed": 29,
        "data_unexpected": 0,
        "offer_fingerprint": "sha-256 AA:BB",
    }
    result.update(overrides)
    return result


def tone_windows(heard: float = 0.9, own: float = 0.0, level: float = -11.0) -> list[list[float]]:
    """20 ms windows for 6 s after connecting: [end time, dBFS, other's share, own share]."""
    return [[CONNECTED + 0.02 * i, level, heard, own] for i in range(300)]


def test_judge_passes_a_good_run() -> None:
    reasons, figures = judge_result(client_result(tone_windows()), 0, CONNECTED, ECDSA)
    assert reasons == []
    assert figures["heard"] == 1.0
    assert figures["windows"] == 250  # from SETTLE (1 s) after both connected to the stop


def test_judge_fails_a_mix_without_the_other_member() -> None:
    windows = tone_windows()
    for w in windows[100:150]:  # a second of silence: the windows ending at +2.00..+2.98 s
        w[1:3] = [-120.0, 0.0]
    reasons, figures = judge_result(client_result(windows), 0, CONNECTED, ECDSA)
    assert figures["heard"] == pytest.approx(0.8)
    assert len(reasons) == 1
    assert "200 of 250 windows" in reasons[0]
    assert "+1.98..+2.98 s" in reasons[0]  # from the end of the last window that heard it


@pytest.mark.parametrize(
    ("windows", "overrides", "expected"),
    [
        (tone_windows(own=0.6), {}, "own tone in the mix"),
        (tone_windows(heard=0.3), {}, "the other member's tone in 0 of 250"),
        (tone_windows(level=-50.0), {}, "250 near-silent"),
        (tone_windows(), {"video_frames": 3}, "3 video frames"),
        (tone_windows(), {"video_size": [160, 120]}, "video of size"),
        (tone_windows(), {"data_echoed": 20}, "20 of 30 messages echoed"),
        (tone_windows(), {"offer_fingerprint": "sha-256 CC:DD"}, "not the certificate's"),
        (tone_windows(), {"errors": ["peer.error from meshrtc-server"]}, "peer.error"),
        (tone_windows(), {"connected_at": None}, "not connected"),
        ([], {}, "no audio received"),
    ],
)
def test_judge_names_what_failed(
    windows: list[list[float]], overrides: dict[str, object], expected: str
) -> None:
    reasons, _ = judge_result(client_result(windows, **overrides), 0, CONNECTED, ECDSA)
    assert any(expected in reason for reason in reasons), reasons


def test_judge_counts_a_hung_teardown() -> None:
    reasons, _ = judge_result(client_result(tone_windows()), 3, CONNECTED, ECDSA)
    assert reasons == ["exit status 3 (teardown)"]
