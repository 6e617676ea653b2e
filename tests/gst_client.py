#!/usr/bin/python3
"""A GStreamer ``webrtcbin`` member of a meshrtc session: the independent-stack client.

Written from docs/signaling.md (and docs/interop.md, which says what an outside stack needs) and
nothing else of meshrtc: it is the check that the documented protocol is enough for a WebRTC stack
that shares no code with aiortc. It runs under Debian's ``/usr/bin/python3`` with Debian's GStreamer
1.22 bindings (python3-gi, gir1.2-gst-plugins-bad-1.0), so it uses only ``gi`` and the standard
library: the WebSocket client is the few lines of RFC 6455 a client needs.

What it does: announce, offer to the transport (``--to``, ``meshrtc-server`` for ``meshrtc serve``),
trickle its candidates, apply the answer; send an Opus tone (``--tone`` Hz), a test picture in the
video codec asked for and a data-channel message every 200 ms; decode what comes back. Received
audio is cut into 20 ms windows at 16 kHz and each window's power at ``--other-tone`` (the other
member's tone, which the MixMinus mix must carry) and at ``--tone`` (our own, which it must not) is
measured with the Goertzel algorithm. It prints JSON lines on stdout: ``{"event": "connected"}``
when the data channel opens, then one result object at the end (timestamps are
``time.monotonic()``, comparable across processes on one Linux machine). The caller judges; this
script only measures. It stops after ``--seconds`` of connection, or at a ``stop`` line on stdin
with ``--stdin-control``, or at ``--timeout``.

Three things an outside stack has to do on loopback (docs/interop.md):

- libnice never gathers 127.0.0.1 (it skips loopback interfaces), so the address is added to the
  ICE agent with ``nice_agent_add_local_address``. Debian ships no GObject introspection data for
  libnice, so the call goes through ctypes on the agent's pointer; the Python wrappers of
  webrtcbin's ICE object and its NiceAgent are kept on ``self`` for the pipeline's lifetime.
- Opus caps need ``encoding-params=(string)2``: without it the m-line says ``opus/48000`` and
  aiortc (like browsers) does not match it with ``opus/48000/2``.
- OpenH264 produces constrained baseline level 1.2 (``profile-level-id=42c00c``); the caps must say
  what the encoder makes, and aiortc matches H.264 on profile and packetization mode, not level.

Run by hand (``meshrtc serve`` prints the signaling and STUN URLs)::

    /usr/bin/python3 tests/gst_client.py --ws ws://127.0.0.1:8765/ws --stun stun:127.0.0.1:PORT \\
        --peer-id gst-a --tone 450 --other-tone 650 --codec VP9 --seconds 10
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import json
import math
import os
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

#: The analysis rate and window: 20 ms at 16 kHz. Tones on multiples of 50 Hz sit on a Goertzel bin.
ANALYSIS_RATE = 16000
WINDOW = 320

#: Payload types of the offer (any dynamic ones would do; the answer echoes them).
OPUS_PT = 111
VIDEO_PT = 96

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def log(message: str) -> None:
    print(f"[gst_client {time.monotonic():.3f}] {message}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# --- a minimal RFC 6455 client ----------------------------------------------------------------


class WebSocketClosedError(Exception):
    pass


class WebSocket:
    """Text frames over one TCP socket; answers pings; masked sends, as a client must."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"{url!r}: only ws://HOST:PORT/PATH URLs")
        self._sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        self._send_lock = threading.Lock()
        self._buffer = b""
        key = base64.b64encode(os.urandom(16))
        path = parts.path or "/"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1:2] != ["101"]:
            raise ConnectionError(f"WebSocket upgrade refused: {lines[0]!r}")
        expected = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        if headers.get("sec-websocket-accept") != expected:
            raise ConnectionError("WebSocket upgrade: bad Sec-WebSocket-Accept")
        self._sock.settimeout(None)

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise WebSocketClosedError("the server closed the TCP connection")
        self._buffer += chunk

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._send_lock:
            self._sock.sendall(bytes(header) + mask + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def receive(self) -> str:
        """The next text message; pings are answered on the way; a close frame raises."""
        message = b""
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)  # servers do not mask
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise WebSocketClosedError(
                    f"close frame {code} {payload[2:].decode(errors='replace')}"
                )
            elif opcode in (0x0, 0x1):
                message += payload
                if first & 0x80:
                    return message.decode()
            # 0xA (pong) and binary frames are not used by the protocol: ignored.

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, struct.pack("!H", 1000))
        self._sock.close()


# --- the audio analysis -----------------------------------------------------------------------


def goertzel_power(samples: list[float], freq: float, rate: int) -> float:
    """Mean power of ``samples`` at ``freq`` (a full-scale sine on the bin gives 0.5)."""
    n = len(samples)
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    magnitude2 = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return 2.0 * magnitude2 / (n * n)


def db(power: float) -> float:
    return round(10.0 * math.log10(power), 1) if power > 1e-12 else -120.0


def _share(tone: float, power: float) -> float:
    return round(min(tone / power, 1.0), 3) if power > 1e-9 else 0.0


class AudioAnalysis:
    """20 ms windows of received audio: time, level, and the two tones' shares of it."""

    def __init__(self, own: float, other: float) -> None:
        self.own, self.other = own, other
        self.pending: list[float] = []
        #: [monotonic time at the window's end, level dBFS, other's share, own share]
        self.windows: list[list[float]] = []
        self.lock = threading.Lock()

    def add(self, data: bytes) -> None:
        count = len(data) // 2
        self.pending.extend(x / 32768.0 for x in struct.unpack(f"<{count}h", data[: 2 * count]))
        now = time.monotonic()
        while len(self.pending) >= WINDOW:
            window, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            power = sum(x * x for x in window) / WINDOW
            other = goertzel_power(window, self.other, ANALYSIS_RATE)
            own = goertzel_power(window, self.own, ANALYSIS_RATE)
            with self.lock:
                self.windows.append(
                    [round(now, 4), db(power), _share(other, power), _share(own, power)]
                )


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of the first certificate in ``pem``, as SDP writes it (RFC 8122)."""
    match = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    if match is None:
        raise ValueError("no certificate in the PEM file")
    digest = hashlib.sha256(base64.b64decode("".join(match.group(1).split()))).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _elements_of(bin_: Gst.Bin) -> list[Gst.Element]:
    found: list[Gst.Element] = []
    iterator = bin_.iterate_recurse()
    while True:
        result, element = iterator.next()
        if result == Gst.IteratorResult.OK:
            found.append(element)
        elif result == Gst.IteratorResult.RESYNC:
            iterator.resync()
            found.clear()
        else:
            return found


# --- the client -------------------------------------------------------------------------------

VIDEO_CHAINS = {
    # deadline=1 is libvpx's realtime mode; cpu-used 8 (VP8: 16) its cheapest presets.
    "VP8": (
        "vp8enc deadline=1 cpu-used=16 target-bitrate=300000 keyframe-max-dist=30 ! rtpvp8pay",
        "VP8",
        "",
    ),
    "VP9": (
        "vp9enc deadline=1 cpu-used=8 target-bitrate=300000 keyframe-max-dist=30 ! rtpvp9pay",
        "VP9",
        "",
    ),
    "H264": (
        "openh264enc bitrate=300000 complexity=low gop-size=30 ! h264parse ! "
        "rtph264pay config-interval=-1 aggregate-mode=zero-latency",
        "H264",
        ",packetization-mode=(string)1,profile-level-id=(string)42c00c",
    ),
}


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.started = time.monotonic()
        self.result: dict[str, Any] = {
            "peer_id": args.peer_id,
            "codec_asked": args.codec,
            "certificate": "pem" if args.pem else "default",
            "errors": [],
        }
        self.audio = AudioAnalysis(args.tone, args.other_tone)
        self.video_frames = 0
        self.video_size: tuple[int, int] | None = None
        self.first_video: float | None = None
        self.first_audio: float | None = None
        self.sent = 0
        self.echoed: set[int] = set()
        self.unexpected_messages = 0
        self.connected_at: float | None = None
        self.channel: Any = None
        self.offered = False
        self.stopping = False
        self.next_id = 1
        self.ws: WebSocket | None = None
        self.pem_set: set[str] = set()
        self.pem = Path(args.pem).read_text() if args.pem else None

        Gst.init(None)
        self.pipe = Gst.parse_launch(self._description())
        self.webrtc = self.pipe.get_by_name("wb")
        # Kept for the pipeline's lifetime: these wrappers must outlive every use of the agent.
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)
        self.nice_agent = self.ice.get_property("agent")
        self._add_loopback_address()
        if self.pem is not None:
            self.pipe.connect("deep-element-added", self._on_deep_element_added)
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self._on_ice_candidate)
        self.webrtc.connect("pad-added", self._on_pad_added)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering_state)
        self.webrtc.connect("notify::ice-connection-state", self._on_ice_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)

    def _description(self) -> str:
        a = self.args
        encode, name, extra = VIDEO_CHAINS[a.codec]
        stun = a.stun.replace("stun:", "stun://", 1) if "://" not in a.stun else a.stun
        return (
            f"webrtcbin name=wb bundle-policy=max-bundle stun-server={stun} "
            f"audiotestsrc is-live=true wave=sine freq={a.tone} volume=0.4 ! audioconvert ! "
            "audioresample ! audio/x-raw,rate=48000,channels=2 ! opusenc frame-size=20 ! "
            f"rtpopuspay pt={OPUS_PT} ! application/x-rtp,media=audio,encoding-name=OPUS,"
            f"payload={OPUS_PT},clock-rate=48000,encoding-params=(string)2 ! wb. "
            "videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1 ! videoconvert ! "
            f"queue max-size-buffers=2 leaky=downstream ! {encode} pt={VIDEO_PT} ! "
            f"application/x-rtp,media=video,encoding-name={name},payload={VIDEO_PT},"
            f"clock-rate=90000{extra} ! wb."
        )

    def _add_loopback_address(self) -> None:
        """libnice gathers no loopback candidates unless the address is added explicitly."""
        lib = ctypes.CDLL("libnice.so.10")
        lib.nice_address_new.restype = ctypes.c_void_p
        lib.nice_address_set_from_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nice_agent_add_local_address.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.nice_address_free.argtypes = [ctypes.c_void_p]
        address = lib.nice_address_new()
        try:
            if not lib.nice_address_set_from_string(address, self.args.host.encode()):
                raise ValueError(f"not an address: {self.args.host}")
            # PyGObject's hash of a GObject wrapper is the object's pointer.
            if not lib.nice_agent_add_local_address(hash(self.nice_agent), address):
                raise RuntimeError("nice_agent_add_local_address failed")
        finally:
            lib.nice_address_free(address)

    # -- signaling --

    def request(self, method: str, params: dict[str, Any]) -> None:
        assert self.ws is not None
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.next_id += 1
        self.ws.send_text(json.dumps(message))

    def notify(self, method: str, params: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send_text(json.dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    def _reader(self) -> None:
        assert self.ws is not None
        while True:
            try:
                text = self.ws.receive()
            except (OSError, WebSocketClosedError) as exc:
                if not self.stopping:
                    GLib.idle_add(self.fail, f"signaling lost: {exc}")
                return
            GLib.idle_add(self._on_message, json.loads(text))

    def _on_message(self, message: dict[str, Any]) -> bool:
        if "error" in message:
            self.fail(f"signaling error: {message['error']}")
        elif message.get("id") == 1 and "result" in message:
            self._on_announced(message["result"])
        elif message.get("method") == "peer.answer":
            self._on_answer(message["params"])
        elif message.get("method") == "peer.ice_candidate":
            params = message["params"]
            if params.get("from") == self.args.to and params["candidate"]:
                index = params.get("sdp_m_line_index", 0)
                self.webrtc.emit("add-ice-candidate", index, params["candidate"])
        elif message.get("method") == "peer.error":
            # The offer could not be answered at all (docs/signaling.md): the reason is here.
            self.fail(f"peer.error from {message['params'].get('from')}: {message['params']}")
        elif message.get("method") == "peer.offer":
            sender = message["params"].get("from")
            if sender == self.args.to:
                # A rebuild offered by the transport (docs/signaling.md "Who offers"): this client
                # does not rebuild links, so it is an error of the run.
                self.result["errors"].append(f"unexpected offer from {sender}")
            else:
                # A pipeline-only client links to the transport alone; any other member is told
                # at once, so it does not keep retrying (docs/interop.md).
                reason = "this client links only to the transport"
                self.request(
                    "peer.error",
                    {
                        "from": self.args.peer_id,
                        "to": sender,
                        "error": {"code": -32009, "message": reason},
                    },
                )
        return False

    def _on_announced(self, result: dict[str, Any]) -> None:
        peers = [p["peer_id"] for p in result["peers"]]
        log(f"announced; peers in the session: {peers}")
        if self.args.to not in peers:
            self.fail(f"{self.args.to!r} is not in the session (peers: {peers})")
            return
        self.pipe.set_state(Gst.State.PLAYING)
        # The offerer creates the data channel (docs/peers.md); before the offer, so it has an
        # m=application section.
        self.channel = self.webrtc.emit("create-data-channel", "meshrtc", None)
        self.channel.connect("on-open", lambda _ch: GLib.idle_add(self._on_channel_open))
        self.channel.connect("on-message-string", self._on_channel_message)
        self.channel.connect("on-error", lambda _ch, err: GLib.idle_add(self.fail, f"dc {err}"))

    def _on_negotiation_needed(self, _element: Any) -> None:
        GLib.idle_add(self._create_offer)

    def _create_offer(self) -> bool:
        if self.offered or self.channel is None:
            return False
        self.offered = True
        promise = Gst.Promise.new_with_change_func(self._on_offer_created, None)
        self.webrtc.emit("create-offer", None, promise)
        return False

    def _on_offer_created(self, promise: Gst.Promise, _data: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        sdp = offer.sdp.as_text()
        if self.pem is not None:
            # GStreamer 1.22 hashes the whole "pem" string (certificate *and* key) for the SDP
            # fingerprint; the peer checks the certificate alone, so the offer says that one's.
            right = f"a=fingerprint:sha-256 {certificate_fingerprint(self.pem)}"
            sdp = re.sub(r"(?m)^a=fingerprint:.*?(?=\r?$)", right, sdp)
            _res, message = GstSdp.SDPMessage.new_from_text(sdp)
            offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, message)
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        self.result["offer_fingerprint"] = next(
            (
                line.split(":", 1)[1]
                for line in sdp.splitlines()
                if line.startswith("a=fingerprint:")
            ),
            None,
        )
        GLib.idle_add(self._send_offer, sdp)

    def _send_offer(self, sdp: str) -> bool:
        self.request("peer.offer", {"from": self.args.peer_id, "to": self.args.to, "sdp": sdp})
        log("offer sent")
        return False

    def _on_ice_candidate(self, _element: Any, index: int, candidate: str) -> None:
        GLib.idle_add(self._send_candidate, index, candidate)

    def _send_candidate(self, index: int, candidate: str) -> bool:
        params = {"from": self.args.peer_id, "to": self.args.to, "candidate": candidate}
        if candidate:
            params["sdp_m_line_index"] = index
        self.notify("peer.ice_candidate", params)
        return False

    def _on_gathering_state(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._send_candidate, 0, "")  # end of candidates

    def _on_ice_state(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("ice-connection-state")
        log(f"ICE {state.value_nick}")
        if state == GstWebRTC.WebRTCICEConnectionState.FAILED:
            GLib.idle_add(self.fail, "ICE failed")

    def _on_answer(self, params: dict[str, Any]) -> None:
        if params.get("from") != self.args.to:
            return
        sdp = params["sdp"]
        self.result["answer_video"] = [
            line for line in sdp.splitlines() if line.startswith(("m=video", "a=rtpmap"))
        ]
        self.result["answer_fingerprint"] = next(
            (
                line.split(":", 1)[1]
                for line in sdp.splitlines()
                if line.startswith("a=fingerprint:")
            ),
            None,
        )
        _res, message = GstSdp.SDPMessage.new_from_text(sdp)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        log("answer applied")

    # -- DTLS certificate --

    def _on_deep_element_added(self, _bin: Any, _sub: Any, element: Gst.Element) -> None:
        # webrtcbin builds each DTLS transport's elements inside a transport bin and only then adds
        # that bin (so no signal names the dtlssrtpdec itself), and syncs its state after adding
        # it. Here, between the two, the encoder has not yet taken its DTLS connection: setting
        # "pem" now replaces the decoder's connection with one that uses our certificate, the
        # encoder takes that one, and webrtcbin reads the SDP fingerprint from the same "pem".
        candidates = [element]
        if isinstance(element, Gst.Bin):
            candidates += _elements_of(element)
        for candidate in candidates:
            factory = candidate.get_factory()
            if factory is None or factory.get_name() != "dtlssrtpdec":
                continue
            if candidate.get_name() in self.pem_set:
                continue
            self.pem_set.add(candidate.get_name())
            candidate.set_property("pem", self.pem)
            log(f"certificate set on {candidate.get_name()}")

    # -- media in --

    def _on_pad_added(self, _element: Any, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._on_decoded_pad)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _on_decoded_pad(self, _decodebin: Any, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        if name.startswith("audio"):
            chain = (
                "queue ! audioconvert ! audioresample ! "
                f"audio/x-raw,format=S16LE,rate={ANALYSIS_RATE},channels=1 ! "
                "appsink name=sink emit-signals=true sync=false"
            )
            handler = self._on_audio_sample
        elif name.startswith("video"):
            chain = "queue ! videoconvert ! appsink name=sink emit-signals=true sync=false"
            handler = self._on_video_sample
        else:
            return
        sink_bin = Gst.parse_bin_from_description(chain, True)
        self.pipe.add(sink_bin)
        sink_bin.sync_state_with_parent()
        sink_bin.get_by_name("sink").connect("new-sample", handler)
        pad.link(sink_bin.get_static_pad("sink"))

    def _on_audio_sample(self, sink: Any) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            try:
                if self.first_audio is None:
                    self.first_audio = time.monotonic()
                self.audio.add(bytes(info.data))
            finally:
                buffer.unmap(info)
        return Gst.FlowReturn.OK

    def _on_video_sample(self, sink: Any) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if self.first_video is None:
            self.first_video = time.monotonic()
            s = sample.get_caps().get_structure(0)
            self.video_size = (s.get_value("width"), s.get_value("height"))
        self.video_frames += 1
        return Gst.FlowReturn.OK

    # -- data --

    def _on_channel_open(self) -> bool:
        self.connected_at = time.monotonic()
        log("data channel open")
        emit({"event": "connected", "t": self.connected_at, "peer_id": self.args.peer_id})
        GLib.timeout_add(200, self._send_data)
        if not self.args.stdin_control:
            GLib.timeout_add(int(self.args.seconds * 1000), self.stop)
        return False

    def _send_data(self) -> bool:
        if self.stopping:
            return False
        self.channel.emit("send-string", json.dumps({"from": self.args.peer_id, "seq": self.sent}))
        self.sent += 1
        return True

    def _on_channel_message(self, _channel: Any, text: str) -> None:
        try:
            message = json.loads(text)
            if message.get("from") == self.args.peer_id:
                self.echoed.add(int(message["seq"]))
                return
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        self.unexpected_messages += 1

    # -- lifecycle --

    def fail(self, reason: str) -> bool:
        log(f"failure: {reason}")
        self.result["errors"].append(reason)
        self.stop()
        return False

    def stop(self) -> bool:
        if not self.stopping:
            self.stopping = True
            self.loop.quit()
        return False

    def _stdin_reader(self) -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        GLib.idle_add(self.stop)

    def run(self) -> int:
        a = self.args
        self.ws = WebSocket(a.ws, timeout=5.0)
        threading.Thread(target=self._reader, daemon=True).start()
        if a.stdin_control:
            threading.Thread(target=self._stdin_reader, daemon=True).start()
        self.request(
            "peer.announce",
            {
                "peer_id": a.peer_id,
                "capabilities": ["audio", "video", "data"],
                "session_id": a.session,
                "user_data": {"client": "gst-webrtcbin"},
            },
        )
        GLib.timeout_add(int(a.timeout * 1000), self.fail, f"timeout after {a.timeout} s")
        self.loop.run()
        self._report()
        # Leaving: the protocol's goodbye, then the pipeline down. A webrtcbin that hangs going to
        # NULL must not hang the caller: the watchdog ends the process (the result is printed).
        watchdog = threading.Timer(5.0, lambda: os._exit(3))
        watchdog.daemon = True
        watchdog.start()
        with contextlib.suppress(OSError):
            self.request("peer.disconnect", {"peer_id": a.peer_id})
        self.ws.close()
        self.pipe.set_state(Gst.State.NULL)
        watchdog.cancel()
        return 0

    def _report(self) -> None:
        with self.audio.lock:
            windows = list(self.audio.windows)
        self.result.update(
            connected_at=self.connected_at,
            started_at=self.started,
            stopped_at=time.monotonic(),
            first_audio=self.first_audio,
            first_video=self.first_video,
            audio_windows=windows,
            video_frames=self.video_frames,
            video_size=self.video_size,
            data_sent=self.sent,
            data_echoed=len(self.echoed),
            data_unexpected=self.unexpected_messages,
        )
        emit(self.result)

    def _on_bus_error(self, _bus: Any, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        self.fail(f"GStreamer error from {message.src.get_name()}: {err.message} ({debug})")


#: Every element this client can use, with the Debian package that ships it.
ELEMENTS = {
    "webrtcbin": "gstreamer1.0-plugins-bad",
    "dtlssrtpdec": "gstreamer1.0-plugins-bad",
    "sctpdec": "gstreamer1.0-plugins-bad",
    "nicesrc": "gstreamer1.0-nice",
    "opusenc": "gstreamer1.0-plugins-base",
    "opusdec": "gstreamer1.0-plugins-base",
    "audiotestsrc": "gstreamer1.0-plugins-base",
    "videotestsrc": "gstreamer1.0-plugins-base",
    "decodebin": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "rtpopuspay": "gstreamer1.0-plugins-good",
    "rtpvp8pay": "gstreamer1.0-plugins-good",
    "rtpvp9pay": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "vp8enc": "gstreamer1.0-plugins-good",
    "vp9enc": "gstreamer1.0-plugins-good",
    "vp8dec": "gstreamer1.0-plugins-good",
    "vp9dec": "gstreamer1.0-plugins-good",
    "openh264enc": "gstreamer1.0-plugins-bad",
    "h264parse": "gstreamer1.0-plugins-bad",
    "avdec_h264": "gstreamer1.0-libav",
}


def check() -> int:
    """Prints each missing element as 'element (Debian package)'; exit status 1 if any."""
    Gst.init(None)
    missing = [f"{e} ({pkg})" for e, pkg in ELEMENTS.items() if Gst.ElementFactory.find(e) is None]
    try:
        ctypes.CDLL("libnice.so.10")
    except OSError:
        missing.append("libnice.so.10 (gstreamer1.0-nice)")
    for line in missing:
        print(line)
    return 1 if missing else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="list missing GStreamer parts and exit")
    p.add_argument("--ws", help="signaling URL, ws://HOST:PORT/ws")
    p.add_argument("--stun", help="STUN server, stun:HOST:PORT")
    p.add_argument("--peer-id")
    p.add_argument("--session", default="default")
    p.add_argument("--to", default="meshrtc-server", help="the peer to offer to (the transport)")
    p.add_argument("--host", default="127.0.0.1", help="the local address ICE uses")
    p.add_argument("--codec", choices=sorted(VIDEO_CHAINS), default="VP9")
    p.add_argument("--tone", type=float, default=450.0, help="our tone, Hz")
    p.add_argument("--other-tone", type=float, default=650.0, help="the tone to listen for, Hz")
    p.add_argument("--pem", help="DTLS certificate and private key, one PEM file")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--seconds", type=float, default=4.0, help="run this long once connected")
    p.add_argument("--stdin-control", action="store_true", help="run until 'stop' on stdin")
    p.add_argument("--timeout", type=float, default=30.0, help="give up after this long")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.check:
        return check()
    if not (args.ws and args.stun and args.peer_id):
        print("--ws, --stun and --peer-id are required", file=sys.stderr)
        return 2
    return Client(args).run()


if __name__ == "__main__":
    sys.exit(main())
