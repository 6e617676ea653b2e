"""An independent WebRTC stack against ``meshrtc serve``: GStreamer ``webrtcbin`` clients.

tests/gst_client.py is written from docs/signaling.md and docs/interop.md only; it runs under
Debian's /usr/bin/python3 (GStreamer 1.22 bindings) as a subprocess, driven by tests/gst_interop.py.
For each video codec one ``meshrtc serve --video-codec CODEC`` is started and **reused**: two runs
on it, one with ECDSA client certificates and one with GStreamer's default (RSA) certificate. In
each run two clients join the session at the same time, and each must hear the other's tone
through the MixMinus mix (in >= 95% of 20 ms windows from 1 s after both connected, never its own),
decode video, and get its data-channel messages echoed. The media runs 6 s: GStreamer sends its
first RTCP Sender Reports 2-5 s in, and the reused-server failure of issue 11 (a member's audio
gone from the mix after the A/V timeline thrashed on those SRs) starts only then.

Components missing (Debian packages in .ci/run) skip the test, or fail it under CI=true.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_component
from tests.gst_interop import CERTIFICATES, CODECS, certificates, gstreamer_missing, meshrtc_serve

pytestmark = pytest.mark.slow

#: Seconds of media per run once both clients are connected (see the module docstring).
MEDIA_SECONDS = 6.0


@pytest.fixture(scope="module")
def gstreamer() -> None:
    require_component(gstreamer_missing(), "GStreamer webrtcbin client")


@pytest.mark.parametrize("codec", CODECS)
def test_webrtcbin_clients_through_a_reused_server(gstreamer: None, codec: str) -> None:
    from tests.gst_interop import run_pair

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
