"""End to end: a transport running the default manifest for 3 synthetic peers, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import trio

from meshrtc.demo import RATE, run_demo, tone_frequency


def _sockets() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def _children() -> set[int]:
    """This process's child pids (zombies included: an unreaped child still shows here)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out.update(int(pid) for pid in f.read().split())
        except OSError:
            continue
    return out


def _level(pcm: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm)) / max(1, pcm.size)
    freqs = np.fft.rfftfreq(pcm.size, 1 / RATE)
    band = (freqs > freq - 10) & (freqs < freq + 10)
    return float(spectrum[band].max())


async def test_three_peers_hear_each_other_not_themselves() -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    sockets_before = _sockets()
    with trio.fail_after(60):
        result = await run_demo(peers=3, seconds=3.0, keep_audio=True, tick=0.5)
    assert set(result.peers) == {"peer1", "peer2", "peer3"}
    for index, (pid, fig) in enumerate(sorted(result.peers.items())):
        pcm = result.audio[pid]
        assert pcm.size > RATE, f"{pid} got {pcm.size} samples back"
        own = _level(pcm, tone_frequency(index))
        others = [_level(pcm, tone_frequency(i)) for i in range(3) if i != index]
        assert min(others) > 10 * own, (pid, own, others)
        assert fig.data_sent > 0
        assert fig.data_echoed > 0
        assert fig.data_echoed <= fig.data_sent
        assert fig.video_received > 0
        assert fig.frames_out > 0
        assert 0 < fig.frames_in <= fig.audio_sent + fig.data_sent + 200  # audio + data + video
    # The transport measured its added latency on the audio it mixed (how much is load-bound; the
    # e2e onset method needs clean 0.5 s tone edges, which a loaded machine may not deliver).
    assert result.added_ms
    assert all(v >= 0 for v in result.added_ms)
    assert result.teardown_ms < 1000
    # Teardown leaves nothing behind: no new thread, no new socket.
    leftover = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert leftover == []
    assert _sockets() - sockets_before == set()


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["star", "mesh"])
async def test_split_mode_reports_the_childs_figures_and_reaps_it(generator: str) -> None:
    """The default path (``meshrtc demo``: star members in a child) and the mesh option: two
    members heard through the transport's mix, figures from both processes, nothing left."""
    children_before = _children()
    sockets_before = _sockets()
    with trio.fail_after(60):
        result = await run_demo(
            peers=2, seconds=2.0, split=True, video=(160, 120), generator=generator
        )
    assert set(result.peers) == {"peer1", "peer2"}
    for index, (pid, fig) in enumerate(sorted(result.peers.items())):
        assert fig.frequency == tone_frequency(index)
        assert fig.audio_sent > 0
        assert fig.audio_received > 0
        assert fig.data_echoed > 0
        assert fig.connect_ms is not None
        assert 0 < fig.connect_ms <= result.connect_ms + 1000
        # Each hears the other through the mix, not itself (figures measured in the child).
        assert set(fig.heard) == {"peer1", "peer2"} - {pid}, fig.heard
        assert fig.frames_in > 0
        assert fig.frames_out > 0
        assert fig.video_received > 0
    # Latencies themselves depend on the machine's load (an onset > 0.5 s late is not counted);
    # the expected count and the transport's own samples do not.
    assert result.onsets()[1] == 2 * 1 * 2
    assert result.added_ms
    # The transport's share of what a peer hears never exceeds what it hears end to end.
    assert all(v >= 0 for v in result.added_ms)
    latency = result.latency(50)
    if (
        latency is not None
    ):  # e2e onsets need clean 0.5 s tone edges: a loaded machine may drop them
        assert min(result.added_ms) <= latency
    assert result.transport_cpu_pct is not None
    assert result.transport_cpu_pct > 0
    assert result.peers_cpu_pct is not None
    assert result.peers_cpu_pct > 0
    assert result.peers_teardown_ms is not None
    assert result.connect_ms > 0
    # No child process left, not even a zombie; no socket left.
    assert _children() - children_before == set()
    assert _sockets() - sockets_before == set()


async def test_split_mode_kills_the_child_when_the_parent_gives_up() -> None:
    children_before = _children()
    # Far too short to connect: run_demo fails, and the child must still be gone.
    with trio.fail_after(60), pytest.RaisesGroup(trio.TooSlowError, flatten_subgroups=True):
        await run_demo(peers=1, seconds=1.0, split=True, video=None, connect_timeout=0.001)
    assert _children() - children_before == set()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshrtc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_demo_json_last_line() -> None:
    proc = _cli("demo", "--peers", "1", "--seconds", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figures["peers"]) == {"peer1"}
    assert figures["peers"]["peer1"]["audio_sent"] > 0
    # The default: the transport here, the synthetic peers' CPU measured apart in their child.
    assert figures["peers_cpu_pct"] is not None
    assert "star peers in a child process" in " ".join(proc.stderr.split())  # rich wraps lines
    for key in ("connect_ms", "latency_p50_ms", "latency_p95_ms", "teardown_ms"):
        assert key in figures


def test_cli_bad_arguments_and_manifest(tmp_path: os.PathLike[str]) -> None:
    bad = os.path.join(tmp_path, "bad.json")
    with open(bad, "w") as f:
        f.write('{"version": "v9", "nodes": []}')
    for args in (
        ("demo", "--peers", "0"),
        ("demo", "--seconds", "-1"),
        ("demo", "--in-process", "--mesh"),
        ("demo", "--manifest", bad),
        ("serve", "--port", "70000"),
        ("serve", "--manifest", bad),
    ):
        proc = _cli(*args, timeout=30)
        assert proc.returncode != 0, args
        lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
        assert len(lines) == 1, (args, proc.stderr)
    for cmd in ("demo", "serve"):
        proc = _cli(cmd, "--help", timeout=30)
        assert proc.returncode == 0
        assert cmd in proc.stdout
