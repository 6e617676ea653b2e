"""Drive GStreamer ``webrtcbin`` clients (tests/gst_client.py) against a real ``meshrtc serve``.

Shared by tests/test_gstreamer.py and bench/interop_runs.py. Plain blocking code (subprocesses and
reader threads): the clients run under Debian's ``/usr/bin/python3`` (its GStreamer bindings do not
exist for the project's Python), the server under this interpreter, and nothing here needs trio.

A *run* is two clients joining the one session of a (possibly reused) server at the same time, each
sending its own tone, a test picture and data messages; once both are connected the media flows for
``seconds``, then both are told to stop. Each client's result is judged by :func:`judge`:

- it connected, no error;
- the mix it received carries the **other** client's tone in at least ``MIN_HEARD`` of the 20 ms
  windows from ``SETTLE`` s after the later of the two connected until the stop, and never its own
  tone (MixMinus);
- it decoded video of the size it sent (the default manifest returns each member's video);
- every data message but the last few in flight came back (DataEcho);
- with a certificate given, the offer's DTLS fingerprint is that certificate's (the client used it).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

#: Debian's interpreter: the one with python3-gi and the GStreamer 1.22 typelibs.
GST_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("gst_client.py")

CODECS = ("VP9", "H264", "VP8")
CERTIFICATES = ("ecdsa", "default")  # default: GStreamer's own, an RSA 2048 certificate

#: The two members' tones (multiples of 50 Hz: each sits on a bin of the client's 20 ms Goertzel).
TONES = (450.0, 650.0)
#: The mix may take this long, after both are connected, to carry both members.
SETTLE = 1.0
#: A window "hears" the other member when its tone is at least half the window's power and the
#: window is not near silence.
TONE_SHARE = 0.5
MIN_LEVEL_DB = -40.0
#: The share of windows after SETTLE that must hear the other member (the server's own goal is
#: 99% of mix slots, bench/timeline.py; this is the end-to-end figure through two real stacks, so
#: it allows a few windows of codec start-up and jitter-buffer adaptation).
MIN_HEARD = 0.95
#: Data messages still in flight at the stop (one every 200 ms, echoed within a few ms normally).
DATA_IN_FLIGHT = 3
MIN_VIDEO_FRAMES = 10

_SERVE_LINE = re.compile(r"signaling on (ws://\S+), STUN (stun:\S+),")


def gstreamer_missing() -> list[str]:
    """What of the GStreamer stack is missing, as 'element (Debian package)' strings; [] if none."""
    if not Path(GST_PYTHON).exists():
        return [f"{GST_PYTHON} (python3)"]
    done = subprocess.run(
        [GST_PYTHON, str(CLIENT), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 0:
        return []
    return [line for line in done.stdout.splitlines() if line] or [done.stderr.strip()[-500:]]


# --- the server -------------------------------------------------------------------------------


@attrs.define
class Serve:
    """A running ``meshrtc serve``: its URLs and everything it printed."""

    process: subprocess.Popen[str]
    ws: str
    stun: str
    codec: str
    lines: list[str] = attrs.Factory(list)

    def output_since(self, mark: int) -> list[str]:
        return self.lines[mark:]


@contextlib.contextmanager
def meshrtc_serve(
    codec: str,
    *,
    log_level: str = "info",
    src: Path | None = None,
    extra_path: Sequence[Path] = (),
    start_timeout: float = 20.0,
) -> Iterator[Serve]:
    """``python -m meshrtc serve --port 0 --video-codec CODEC``; SIGINT (then SIGKILL) at the end.

    ``src``: run the meshrtc package found there instead of the installed one (an export of an
    older commit, to measure before and after a change); ``extra_path``: more folders for the
    server's ``PYTHONPATH`` (bench/interop_diag's ``sitecustomize``).
    """
    env = dict(os.environ)
    path = [str(p) for p in ([src] if src is not None else []) + list(extra_path)]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "meshrtc", "serve", "--port", "0",
        "--video-codec", codec, "--log-level", log_level,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    lines: list[str] = []
    found: list[tuple[str, str]] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = _SERVE_LINE.search(line)
            if match:
                found.append((match.group(1), match.group(2)))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(start_timeout)
        if not found:
            tail = "\n".join(lines[-30:])
            raise RuntimeError(f"meshrtc serve did not start (exit {process.poll()}):\n{tail}")
        serve = Serve(process, found[0][0], found[0][1], codec, lines)
        yield serve
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()


# --- certificates -----------------------------------------------------------------------------


@attrs.frozen
class Certificate:
    kind: str
    pem_path: Path | None
    fingerprint: str | None  # sha-256, as SDP writes it


def make_certificate(kind: str, folder: Path) -> Certificate:
    """``ecdsa``: a fresh P-256 self-signed certificate (what browsers and aiortc use);
    ``default``: none, so webrtcbin uses GStreamer's own (RSA 2048)."""
    if kind == "default":
        return Certificate(kind, None, None)
    if kind != "ecdsa":
        raise ValueError(f"unknown certificate kind {kind!r}")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gst-interop")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = folder / "ecdsa.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    fingerprint = "sha-256 " + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    return Certificate(kind, path, fingerprint)


# --- one run ----------------------------------------------------------------------------------


@attrs.define
class ClientRun:
    peer_id: str
    process: subprocess.Popen[str]
    connected: threading.Event = attrs.Factory(threading.Event)
    connected_at: float | None = None
    result: dict[str, Any] | None = None
    stderr: collections.deque[str] = attrs.Factory(lambda: collections.deque(maxlen=60))
    threads: list[threading.Thread] = attrs.Factory(list)

    def read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.stderr.append(f"(stdout) {line.rstrip()}")
                continue
            if message.get("event") == "connected":
                self.connected_at = message["t"]
                self.connected.set()
            elif "peer_id" in message and "errors" in message:
                self.result = message
        self.connected.set()  # exited: nobody waits for a connection that cannot come

    def read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())


@attrs.define
class RunResult:
    """One run: each client's verdict (reasons it failed; empty = passed) and figures."""

    index: int
    codec: str
    certificate: str
    failures: dict[str, list[str]]
    figures: dict[str, dict[str, Any]]
    seconds: float
    server_log: list[str]
    #: Why an earlier attempt of this run was discarded (:data:`LIBNICE_CRASH`), or None.
    retried: str | None = None

    @property
    def passed(self) -> bool:
        return not any(self.failures.values())

    def summary(self) -> str:
        parts = []
        for peer, f in self.figures.items():
            missed = f", missed {f['gaps']}" if f.get("gaps") and self.passed else ""
            parts.append(
                f"{peer}: heard {f.get('heard', 0):.0%} (own {f.get('own', 0):.0%}, "
                f"{f.get('level_db', -120):.0f} dBFS{missed}), video {f.get('video_frames', 0)}, "
                f"data {f.get('data_echoed', 0)}/{f.get('data_sent', 0)}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        if self.retried:
            verdict += f" (second attempt; the first: {self.retried})"
        reasons = [f"{p}: {r}" for p, rs in self.failures.items() for r in rs]
        tail = f" -- {'; '.join(reasons)}" if reasons else ""
        return (
            f"run {self.index} {self.codec}/{self.certificate}: {verdict} "
            f"({self.seconds:.1f} s) {' | '.join(parts)}{tail}"
        )


def _start_client(
    serve: Serve, peer_id: str, tone: float, other: float, cert: Certificate, timeout: float
) -> ClientRun:
    command = [
        GST_PYTHON, str(CLIENT), "--ws", serve.ws, "--stun", serve.stun, "--peer-id", peer_id,
        "--codec", serve.codec, "--tone", str(tone), "--other-tone", str(other),
        "--stdin-control", "--timeout", str(timeout),
    ]  # fmt: skip
    if cert.pem_path is not None:
        command += ["--pem", str(cert.pem_path)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "GST_DEBUG_NO_COLOR": "1"},
    )
    run = ClientRun(peer_id, process)
    for target in (run.read_stdout, run.read_stderr):
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        run.threads.append(thread)
    return run


def _stop_client(client: ClientRun, deadline: float) -> None:
    if client.process.poll() is None and client.process.stdin is not None:
        with contextlib.suppress(OSError):
            client.process.stdin.write("stop\n")
            client.process.stdin.close()
    try:
        client.process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        client.stderr.append("(killed: did not exit in time)")
        client.process.kill()
        client.process.wait()
    for thread in client.threads:
        thread.join(2)
    for pipe in (client.process.stdin, client.process.stdout, client.process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def run_pair(
    serve: Serve,
    cert: Certificate,
    *,
    index: int = 0,
    seconds: float = 3.0,
    connect_timeout: float = 20.0,
) -> RunResult:
    """Two clients at once in the server's session; ``seconds`` of media once both are connected.

    One exception to "a run is what it is": a client that *aborted* on an assertion inside libnice
    (:data:`LIBNICE_CRASH`; a race in libnice 0.1.21's regular nomination, once in about 300
    client starts here, with nothing wrong on the wire) is a crash of the client's stack, not
    a verdict on the server, so that run is repeated once and the result says so. Every other
    failure, including a second crash, counts.
    """
    result = _run_pair_once(serve, cert, index, seconds, connect_timeout)
    crash = next(
        (
            r
            for rs in result.failures.values()
            for r in rs
            if LIBNICE_CRASH in r and "no result" in r
        ),
        None,
    )
    if crash is None:
        return result
    again = _run_pair_once(serve, cert, index, seconds, connect_timeout, suffix="r")
    again.retried = crash[:300]
    return again


#: An assertion in libnice's connectivity checks. Seen: ``priv_conn_check_tick_stream_nominate:
#: assertion failed: (p->state == NICE_CHECK_SUCCEEDED)`` (Debian's libnice 0.1.21, as controlling
#: agent with regular nomination: a valid pair that a triggered check has put back in progress).
LIBNICE_CRASH = "libnice:ERROR:../agent/conncheck.c"


def _run_pair_once(
    serve: Serve,
    cert: Certificate,
    index: int,
    seconds: float,
    connect_timeout: float,
    suffix: str = "",
) -> RunResult:
    started = time.monotonic()
    mark = len(serve.lines)
    ids = (f"gst-{index}{suffix}-a", f"gst-{index}{suffix}-b")
    clients = [
        _start_client(serve, ids[0], TONES[0], TONES[1], cert, connect_timeout + seconds + 10),
        _start_client(serve, ids[1], TONES[1], TONES[0], cert, connect_timeout + seconds + 10),
    ]
    try:
        deadline = started + connect_timeout
        for client in clients:
            client.connected.wait(max(0.0, deadline - time.monotonic()))
        if all(c.connected_at is not None for c in clients):
            time.sleep(seconds)
    finally:
        stop_deadline = time.monotonic() + 10.0
        for client in clients:
            _stop_client(client, stop_deadline)
    failures: dict[str, list[str]] = {}
    figures: dict[str, dict[str, Any]] = {}
    both = [c.connected_at for c in clients]
    both_connected = max(both) if all(t is not None for t in both) else None  # type: ignore[type-var]
    for client in clients:
        reasons, figs = judge(client, both_connected, cert)
        failures[client.peer_id] = reasons
        figures[client.peer_id] = figs
    return RunResult(
        index,
        serve.codec,
        cert.kind,
        failures,
        figures,
        time.monotonic() - started,
        serve.output_since(mark),
    )


def judge(
    client: ClientRun, both_connected: float | None, cert: Certificate
) -> tuple[list[str], dict[str, Any]]:
    """Why this client's run failed ([] if it passed), and its figures."""
    r = client.result
    if r is None:
        lines = list(client.stderr)
        crash = [line for line in lines if LIBNICE_CRASH in line]
        tail = " / ".join(crash[:1] + lines[-6:])
        return [f"no result (exit {client.process.returncode}): {tail}"], {}
    return judge_result(r, client.process.returncode, both_connected, cert)


def judge_result(
    r: dict[str, Any], returncode: int | None, both_connected: float | None, cert: Certificate
) -> tuple[list[str], dict[str, Any]]:
    """:func:`judge` on a client's result object (what tests/gst_client.py prints last)."""
    reasons = list(r["errors"])
    figures: dict[str, Any] = {
        k: r.get(k) for k in ("video_frames", "video_size", "data_sent", "data_echoed")
    }
    if returncode != 0:
        reasons.append(f"exit status {returncode} (teardown)")
    if r["connected_at"] is None or both_connected is None:
        reasons.append("not connected (both clients)")
        return reasons, figures
    windows = [w for w in r["audio_windows"] if both_connected + SETTLE <= w[0] <= r["stopped_at"]]
    if not windows:
        reasons.append("no audio received after both connected")
    else:
        heard = [w for w in windows if _heard(w)]
        own = [w for w in windows if w[1] >= MIN_LEVEL_DB and w[3] >= TONE_SHARE]
        figures["heard"] = len(heard) / len(windows)
        figures["own"] = len(own) / len(windows)
        figures["windows"] = len(windows)
        figures["level_db"] = max(w[1] for w in windows)
        first = next((w[0] for w in r["audio_windows"] if w[2] >= TONE_SHARE), None)
        figures["first_heard_after_s"] = None if first is None else round(first - both_connected, 3)
        gaps = ", ".join(
            f"{start - both_connected:+.2f}..{end - both_connected:+.2f} s"
            for start, end in _gaps(windows)
        )
        figures["gaps"] = gaps
        if figures["heard"] < MIN_HEARD:
            silent = sum(1 for w in windows if w[1] < MIN_LEVEL_DB)
            reasons.append(
                f"the other member's tone in {len(heard)} of {len(windows)} windows "
                f"({figures['heard']:.0%} < {MIN_HEARD:.0%}; {silent} near-silent; not heard "
                f"{gaps} after both connected)"
            )
        if own:
            reasons.append(f"own tone in the mix in {len(own)} windows (MixMinus should remove it)")
    if r["video_frames"] < MIN_VIDEO_FRAMES:
        reasons.append(f"{r['video_frames']} video frames decoded")
    elif r["video_size"] != [320, 240]:
        reasons.append(f"video of size {r['video_size']}, sent 320x240")
    if r["data_echoed"] < r["data_sent"] - DATA_IN_FLIGHT or r["data_echoed"] == 0:
        reasons.append(f"data: {r['data_echoed']} of {r['data_sent']} messages echoed")
    if r["data_unexpected"]:
        reasons.append(f"data: {r['data_unexpected']} unexpected messages")
    fingerprint = r.get("offer_fingerprint")
    if cert.fingerprint is not None and fingerprint != cert.fingerprint:
        reasons.append(f"offer fingerprint {fingerprint} is not the certificate's")
    return reasons, figures


def _heard(window: list[float]) -> bool:
    return window[1] >= MIN_LEVEL_DB and window[2] >= TONE_SHARE


def _gaps(windows: list[list[float]], limit: int = 4) -> list[tuple[float, float]]:
    """The first ``limit`` stretches of windows that do not hear the other member (start, end)."""
    gaps: list[tuple[float, float]] = []
    start: float | None = None
    previous = windows[0][0]
    for w in windows:
        if not _heard(w) and start is None:
            start = previous
        elif _heard(w) and start is not None:
            gaps.append((start, previous))
            start = None
        previous = w[0]
    if start is not None:
        gaps.append((start, previous))
    return gaps[:limit]


@contextlib.contextmanager
def certificates() -> Iterator[dict[str, Certificate]]:
    folder = Path(tempfile.mkdtemp(prefix="gst-interop-"))
    try:
        yield {kind: make_certificate(kind, folder) for kind in CERTIFICATES}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
