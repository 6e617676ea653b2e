"""VP9 encoder and decoder in aiortc's codec interface, through PyAV (libvpx-vp9 / FFmpeg vp9).

aiortc 1.16 ships VP8 and H.264 only. These two classes give it VP9 with the same shape as its
``Vp8Encoder`` / ``Vp8Decoder`` (``encode``/``pack`` returning RTP payloads and a 90 kHz timestamp,
a clamped ``target_bitrate`` the quality controller can steer, ``force_keyframe`` for PLI/FIR), and
packetize with :class:`meshrtc.media.vp9.Vp9Payloader` (RFC 9628). They use only aiortc's public
codec base classes; registering them with aiortc is :mod:`meshrtc.rtc.aiortc_adapter`'s job.

Encoder settings are libwebrtc's realtime VP9 recipe as far as FFmpeg exposes it:
``deadline=realtime``, ``cpu-used=8`` (the fastest FFmpeg accepts for VP9), no look-ahead
(``lag-in-frames=0``, so one frame in, one frame out, no alt-ref), error resilient, row
multithreading, cyclic-refresh adaptive quantization (``aq-mode=3``), CBR with a one-second buffer,
and keyframes only on request (``gop_size`` 3000, like aiortc's VP8). :func:`encoder_context` is the
one place they are written; ``bench/codecs.py`` measures exactly these.
"""

from __future__ import annotations

import fractions
import multiprocessing
import random
from typing import Final

import av
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.vpx import number_of_threads
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from av.frame import Frame
from av.packet import Packet
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType

from meshrtc.media.vp9 import (
    DEFAULT_MAX_PAYLOAD_SIZE,
    MAX_PICTURE_ID,
    Vp9Payloader,
    Vp9PayloadError,
    parse_frame_header,
)

__all__ = [
    "DECODER_NAME",
    "DEFAULT_BITRATE",
    "ENCODER_NAME",
    "MAX_BITRATE",
    "MIN_BITRATE",
    "Vp9Decoder",
    "Vp9Encoder",
    "encoder_context",
    "encoder_options",
]

#: Bits per second. VP9 needs about a third less than VP8 for the same quality, so it starts lower
#: than aiortc's VP8 (500 kb/s) and may go higher for 720p.
DEFAULT_BITRATE: Final = 500_000
MIN_BITRATE: Final = 150_000
MAX_BITRATE: Final = 2_000_000
#: aiortc recreates its VP8/H.264 encoder when the target moves by more than this; so does VP9,
#: because FFmpeg's libvpx wrapper ignores a bitrate set on an open context (measured).
RECREATE_THRESHOLD: Final = 0.1
#: Frame rate hint for the rate controller; the real rate comes from the frames' timestamps.
FRAME_RATE: Final = 30
ENCODER_NAME: Final = "libvpx-vp9"
#: FFmpeg's own VP9 decoder (FFmpeg's default for VP9); single-threaded it is as fast as libvpx's.
DECODER_NAME: Final = "vp9"


def encoder_options(bitrate: int, threads: int) -> dict[str, str]:
    """The libvpx-vp9 private options meshrtc encodes with (see the module docstring)."""
    tile_columns = max(0, threads.bit_length() - 1)  # log2: one tile column per thread
    return {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "error-resilient": "default",
        "row-mt": "1",
        "tile-columns": str(tile_columns),
        "frame-parallel": "0",
        "aq-mode": "3",
        "noise-sensitivity": "0",
        "static-thresh": "0",
        "undershoot-pct": "50",
        "overshoot-pct": "50",
        "max-intra-rate": "300",
        # CBR (FFmpeg: minrate == maxrate == bit_rate) with a one-second buffer (bufsize in bits).
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }


def encoder_context(width: int, height: int, bitrate: int) -> VideoCodecContext:
    """A configured, not yet opened libvpx-vp9 encoder (it opens at the first frame)."""
    threads = number_of_threads(width * height, multiprocessing.cpu_count())
    codec = av.CodecContext.create(ENCODER_NAME, "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width = width
    codec.height = height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.framerate = fractions.Fraction(FRAME_RATE, 1)
    codec.gop_size = 3000  # kf_max_dist: keyframes on request (PLI/FIR) only
    codec.qmin = 2
    codec.qmax = 52
    codec.thread_count = threads
    codec.options = encoder_options(bitrate, threads)
    return codec


def _timestamp(pts: int | None, time_base: fractions.Fraction | None) -> int:
    """``pts`` on the 90 kHz RTP clock (aiortc's tracks always stamp their frames)."""
    if pts is None or time_base is None:
        raise ValueError("VP9 encoder input has no pts/time_base")
    return convert_timebase(pts, time_base, VIDEO_TIME_BASE)


class Vp9Encoder(Encoder):
    """aiortc ``Encoder`` for VP9: PyAV frames in, RFC 9628 RTP payloads out.

    ``encode`` runs in aiortc's executor thread, ``target_bitrate`` is set from the loop thread; the
    setter only stores an int that ``encode`` reads once per frame (the VP8 encoder's contract).
    """

    def __init__(self, *, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
        self.codec: VideoCodecContext | None = None
        self.payloader = Vp9Payloader(
            max_payload_size=max_payload_size, picture_id=random.randint(0, MAX_PICTURE_ID)
        )
        self._target_bitrate = DEFAULT_BITRATE
        #: Encoder contexts created after the first (size or bitrate changes).
        self.recreated = 0
        #: Keyframes produced (the first frame, requests, recreations).
        self.keyframes = 0

    @property
    def target_bitrate(self) -> int:
        """Target bitrate in bits per second, clamped to [MIN_BITRATE, MAX_BITRATE]."""
        return self._target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._target_bitrate = max(MIN_BITRATE, min(int(bitrate), MAX_BITRATE))

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        target = self._target_bitrate
        current = (codec.bit_rate or target) if codec is not None else target
        if codec is not None and (
            frame.width != codec.width
            or frame.height != codec.height
            or abs(target - current) / current > RECREATE_THRESHOLD
        ):
            codec = None
            self.recreated += 1
        if codec is None:
            codec = self.codec = encoder_context(frame.width, frame.height, target)
        # Always set: a track may hand the same frame object again after a forced keyframe.
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        payloads: list[bytes] = []
        for packet in codec.encode(frame):
            payloads += self._packetize(packet, (frame.width, frame.height))
        return payloads, _timestamp(frame.pts, frame.time_base)

    def pack(self, packet: Packet[Stream]) -> tuple[list[bytes], int]:
        """Packetize an already encoded VP9 frame (a track that yields ``av.Packet``)."""
        resolution: tuple[int, int] | None = None
        if packet.is_keyframe:
            try:
                header = parse_frame_header(bytes(packet))
            except Vp9PayloadError:
                header = None
            if header is not None and header.width is not None and header.height is not None:
                resolution = (header.width, header.height)
        payloads = self._packetize(packet, resolution)
        return payloads, _timestamp(packet.pts, packet.time_base)

    def _packetize(self, packet: Packet[Stream], resolution: tuple[int, int] | None) -> list[bytes]:
        keyframe = bool(packet.is_keyframe)
        if keyframe:
            self.keyframes += 1
        return self.payloader.payload(bytes(packet), keyframe=keyframe, resolution=resolution)


class Vp9Decoder(Decoder):
    """aiortc ``Decoder`` for VP9: one reassembled frame (descriptors already removed) in,
    ``av.VideoFrame``s out. Single-threaded: up to ten of these share the machine's cores, and
    slice threads would add nothing but contention at these sizes."""

    def __init__(self) -> None:
        codec = av.CodecContext.create(DECODER_NAME, "r")
        assert isinstance(codec, VideoCodecContext)
        codec.thread_count = 1
        self.codec = codec

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        packet = Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = VIDEO_TIME_BASE
        return list(self.codec.decode(packet))
