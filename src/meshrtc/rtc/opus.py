"""libopus for meshrtc's audio: the one module that loads it (docs/codecs.md, "Opus").

Why libopus directly and not FFmpeg's wrapper (what aiortc decodes with): FFmpeg never calls
libopus's loss concealment (an empty packet means "flush" there) and always decodes with in-band
FEC off, so a lost packet could only be faded out by hand. Here a lost packet is

* **concealed** by libopus's PLC (:meth:`OpusDecoder.conceal`, ``opus_decode(NULL)``): pitch-
  synchronous continuation of voiced speech that decays over consecutive losses, and
* **recovered** from the next packet's in-band FEC (LBRR) data when that packet is already here
  (:meth:`OpusDecoder.recover`, ``decode_fec=1``): a low-bitrate copy of the lost frame that the
  sender put in the packet after it. libopus itself falls back to PLC when there is none.

The binding is ``opuslib-next-bundled`` (ctypes over the libopus 1.5 it bundles; pyproject.toml says
what else was considered). It is untyped, so nothing else in meshrtc imports it: this module calls
the shared library through prototypes of its own (``CDLL[name]`` gives a fresh function object, so
the binding's own argtypes are neither relied on nor changed) and exposes typed methods. ctypes
releases the GIL for each call.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import opuslib_next.api

__all__ = [
    "CHANNELS",
    "FRAME_SAMPLES",
    "MAX_FRAME_SAMPLES",
    "SAMPLE_RATE",
    "OpusDecodeError",
    "OpusDecoder",
    "OpusEncodeError",
    "OpusEncoder",
    "has_fec",
]

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 48_000
#: Decoders always output stereo: libopus upmixes a mono packet, so downstream never branches.
CHANNELS: Final = 2
#: 20 ms, what WebRTC endpoints send by default (and what a lost packet is assumed to be until a
#: packet has been decoded).
FRAME_SAMPLES: Final = 960
#: The longest Opus packet (120 ms): the decode buffer's size.
MAX_FRAME_SAMPLES: Final = 5760
#: PLC and FEC lengths must be a multiple of 2.5 ms.
_GRANULE: Final = 120
_SCALE: Final = np.float32(1.0 / 32768.0)

_lib: Any = opuslib_next.api.libopus

_decoder_create = _lib["opus_decoder_create"]
_decoder_create.argtypes = (ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
_decoder_create.restype = ctypes.c_void_p

_decoder_destroy = _lib["opus_decoder_destroy"]
_decoder_destroy.argtypes = (ctypes.c_void_p,)
_decoder_destroy.restype = None

# int opus_decode(OpusDecoder *st, const unsigned char *data, opus_int32 len, opus_int16 *pcm,
#                 int frame_size, int decode_fec): the int16 path, which soft-clips to [-1, 1) as
# FFmpeg's s16 output did (opus_decode_float does not clip).
_decode = _lib["opus_decode"]
_decode.argtypes = (
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_int32,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
)
_decode.restype = ctypes.c_int

_packet_has_lbrr = _lib["opus_packet_has_lbrr"]
_packet_has_lbrr.argtypes = (ctypes.c_char_p, ctypes.c_int32)
_packet_has_lbrr.restype = ctypes.c_int

_strerror = _lib["opus_strerror"]
_strerror.argtypes = (ctypes.c_int,)
_strerror.restype = ctypes.c_char_p


class OpusDecodeError(Exception):
    """libopus refused to create a decoder (never raised for a bad packet: that is concealed)."""


def _error_text(code: int) -> str:
    text = _strerror(code)
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(code)


def has_fec(payload: bytes | memoryview) -> bool:
    """Whether an Opus packet carries in-band FEC (LBRR) data for the frame before it."""
    data = bytes(payload)
    return bool(data) and _packet_has_lbrr(data, len(data)) == 1


class OpusDecoder:
    """One Opus stream → float32 PCM at 48 kHz, shape ``(samples, 2)``, in [-1, 1).

    Use one per stream and feed it in order: libopus's PLC and FEC continue from the state the
    previous packets left, so a lost packet must be concealed or recovered in its place, not skipped.
    Nothing here raises for bad input: a packet libopus cannot decode is concealed and counted in
    :attr:`errors`, so the receive loop never sees an exception from a remote's bytes.
    """

    def __init__(self) -> None:
        err = ctypes.c_int(0)
        state = _decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(err))
        if err.value != 0 or not state:
            raise OpusDecodeError(f"opus_decoder_create: {_error_text(err.value)}")
        self._state: int = state
        self._finalizer = weakref.finalize(self, _decoder_destroy, state)
        self._buffer = np.zeros((MAX_FRAME_SAMPLES, CHANNELS), dtype=np.int16)
        self._pcm = self._buffer.ctypes.data
        self.channels = CHANNELS
        self.sample_rate = SAMPLE_RATE
        #: Length of the newest decoded packet (samples): what a lost packet most likely held.
        self.frame_samples = FRAME_SAMPLES
        #: Packets decoded.
        self.decoded = 0
        #: Lost frames rebuilt from the next packet's in-band FEC data.
        self.recovered = 0
        #: Frames made up by libopus's PLC (losses without FEC data, and undecodable packets).
        self.concealed = 0
        #: Packets libopus refused (corrupt or not Opus): each was concealed instead.
        self.errors = 0

    def close(self) -> None:
        """Free the libopus state now (otherwise when the decoder is collected)."""
        self._finalizer()

    def decode(self, payload: bytes | memoryview) -> npt.NDArray[np.float32]:
        """One packet; its length is what the packet holds (10, 20, 40, 60 ms...)."""
        data = bytes(payload)
        if not data:
            self.errors += 1
            return self.conceal()
        n = self._call(data, MAX_FRAME_SAMPLES, fec=False)
        if n < 0:
            self.errors += 1
            if self.errors == 1:
                log.warning("undecodable Opus packet (%s); concealed", _error_text(n))
            return self.conceal()
        self.decoded += 1
        self.frame_samples = n
        return self._out(n)

    def conceal(self, samples: int | None = None) -> npt.NDArray[np.float32]:
        """libopus PLC for ``samples`` (default: the newest packet's length) of lost audio.

        Consecutive calls continue the concealment, fading towards silence as libopus does.
        """
        n = self._length(samples)
        got = self._call(None, n, fec=False)
        self.concealed += 1
        if got < 0:  # cannot happen for a valid length; stay silent rather than raise
            return np.zeros((n, CHANNELS), dtype=np.float32)
        return self._out(got)

    def recover(
        self, next_payload: bytes | memoryview, samples: int | None = None
    ) -> npt.NDArray[np.float32]:
        """The lost frame just before ``next_payload``, from that packet's in-band FEC data.

        ``next_payload`` is not consumed: decode it normally afterwards. Without FEC data in it
        (or when it is corrupt) this is :meth:`conceal`, counted as such.
        """
        data = bytes(next_payload)
        if not has_fec(data):
            return self.conceal(samples)
        n = self._length(samples)
        got = self._call(data, n, fec=True)
        if got < 0:
            self.errors += 1
            return self.conceal(samples)
        self.recovered += 1
        return self._out(got)

    @staticmethod
    def has_fec(payload: bytes | memoryview) -> bool:
        """Whether ``payload`` could :meth:`recover` the frame before it (module :func:`has_fec`)."""
        return has_fec(payload)

    def _length(self, samples: int | None) -> int:
        n = self.frame_samples if samples is None else samples
        n = max(_GRANULE, min(MAX_FRAME_SAMPLES, n))
        return n - n % _GRANULE

    def _call(self, data: bytes | None, frame_size: int, *, fec: bool) -> int:
        length = 0 if data is None else len(data)
        return int(_decode(self._state, data, length, self._pcm, frame_size, int(fec)))

    def _out(self, n: int) -> npt.NDArray[np.float32]:
        return np.multiply(self._buffer[:n], _SCALE, dtype=np.float32)


# --- encoder --------------------------------------------------------------------------------------
#
# What meshrtc sends with (rtc/aiortc_adapter.py's BitrateOpusEncoder wraps it for aiortc). FFmpeg's
# libopus wrapper fixes bitrate, FEC and expected loss when the context opens, so following the
# path meant a fresh context per change; libopus itself takes them between any two frames
# (opus_encoder_ctl), which is what loss-driven FEC needs (media/opus_fec.py).

_APPLICATION_VOIP: Final = int(opuslib_next.APPLICATION_VOIP)
#: libopus's own ceiling for one packet's bytes (a 20 ms frame never needs more than 1275).
_MAX_PACKET: Final = 4000
_SET_BITRATE: Final = int(opuslib_next.SET_BITRATE_REQUEST)
_GET_BITRATE: Final = int(opuslib_next.GET_BITRATE_REQUEST)
_SET_VBR: Final = int(opuslib_next.SET_VBR_REQUEST)
_SET_COMPLEXITY: Final = int(opuslib_next.SET_COMPLEXITY_REQUEST)
_SET_INBAND_FEC: Final = int(opuslib_next.SET_INBAND_FEC_REQUEST)
_GET_INBAND_FEC: Final = int(opuslib_next.GET_INBAND_FEC_REQUEST)
_SET_PACKET_LOSS_PERC: Final = int(opuslib_next.SET_PACKET_LOSS_PERC_REQUEST)
_GET_PACKET_LOSS_PERC: Final = int(opuslib_next.GET_PACKET_LOSS_PERC_REQUEST)
_GET_LOOKAHEAD: Final = int(opuslib_next.GET_LOOKAHEAD_REQUEST)

_encoder_create = _lib["opus_encoder_create"]
_encoder_create.argtypes = (
    ctypes.c_int32,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int),
)
_encoder_create.restype = ctypes.c_void_p

_encoder_destroy = _lib["opus_encoder_destroy"]
_encoder_destroy.argtypes = (ctypes.c_void_p,)
_encoder_destroy.restype = None

# opus_int32 opus_encode(OpusEncoder *st, const opus_int16 *pcm, int frame_size,
#                        unsigned char *data, opus_int32 max_data_bytes)
_encode = _lib["opus_encode"]
_encode.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32)
_encode.restype = ctypes.c_int32

# int opus_encoder_ctl(OpusEncoder *st, int request, ...): variadic, so only the fixed part is
# declared; the value (an int, or a pointer for GET requests) is passed as a ctypes object.
_encoder_ctl = _lib["opus_encoder_ctl"]
_encoder_ctl.argtypes = (ctypes.c_void_p, ctypes.c_int)
_encoder_ctl.restype = ctypes.c_int


class OpusEncodeError(Exception):
    """libopus refused to create the encoder, a setting, or a frame (wrong length or shape)."""


class OpusEncoder:
    """Interleaved s16 stereo PCM at 48 kHz → one Opus packet per frame (20 ms: 960 samples).

    Configured as aiortc's FFmpeg encoder was (the contract test compares): application VOIP,
    96 kb/s unless told otherwise, VBR, complexity 10, in-band FEC off and 0% expected loss.
    :attr:`bitrate`, :attr:`inband_fec` and :attr:`packet_loss_percent` change between any two
    frames without a new encoder (no discontinuity for the remote's decoder). Not thread-safe: one
    caller at a time (the sender's loop thread).
    """

    def __init__(self, *, bitrate: int = 96_000, complexity: int = 10) -> None:
        err = ctypes.c_int(0)
        state = _encoder_create(SAMPLE_RATE, CHANNELS, _APPLICATION_VOIP, ctypes.byref(err))
        if err.value != 0 or not state:
            raise OpusEncodeError(f"opus_encoder_create: {_error_text(err.value)}")
        self._enc: int = state
        self._enc_finalizer = weakref.finalize(self, _encoder_destroy, state)
        self._packet = ctypes.create_string_buffer(_MAX_PACKET)
        self._set(_SET_VBR, 1)
        self._set(_SET_COMPLEXITY, complexity)
        self.bitrate = bitrate
        #: Samples libopus delays its output by (its lookahead): a packet decodes to the samples
        #: that started this long before the frame it was encoded from (what FFmpeg subtracts from
        #: a packet's pts as "initial padding").
        self.lookahead = self._get(_GET_LOOKAHEAD)
        #: Frames encoded.
        self.encoded = 0

    def close(self) -> None:
        """Free the libopus state now (otherwise when the encoder is collected)."""
        self._enc_finalizer()

    def encode(self, pcm: bytes | memoryview | npt.NDArray[np.int16]) -> bytes:
        """One frame of interleaved int16 stereo (any Opus frame length; 960 samples is 20 ms)."""
        samples = np.frombuffer(pcm, dtype=np.int16) if not isinstance(pcm, np.ndarray) else pcm
        if samples.dtype != np.int16 or not samples.flags.c_contiguous:
            raise OpusEncodeError("encode takes C-contiguous int16 samples")
        frame = samples.size // CHANNELS
        n = int(_encode(self._enc, samples.ctypes.data, frame, self._packet, _MAX_PACKET))
        if n < 0:
            raise OpusEncodeError(f"opus_encode ({frame} samples): {_error_text(n)}")
        self.encoded += 1
        return ctypes.string_at(self._packet, n)

    @property
    def bitrate(self) -> int:
        """Target bits per second (libopus clamps it to what it can do)."""
        return self._get(_GET_BITRATE)

    @bitrate.setter
    def bitrate(self, value: int) -> None:
        if value <= 0:
            raise OpusEncodeError(f"bitrate must be positive, got {value}")
        self._set(_SET_BITRATE, int(value))

    @property
    def inband_fec(self) -> bool:
        """Whether each packet carries a low-bitrate copy of the previous frame (LBRR). libopus
        sends it only in SILK and hybrid modes, with :attr:`packet_loss_percent` above 0, and not
        at all at very low bitrates (none at 16 kb/s stereo)."""
        return self._get(_GET_INBAND_FEC) != 0

    @inband_fec.setter
    def inband_fec(self, on: bool) -> None:
        self._set(_SET_INBAND_FEC, 1 if on else 0)

    @property
    def packet_loss_percent(self) -> int:
        """The loss libopus expects (0-100): it sizes the FEC layer and the prediction by it."""
        return self._get(_GET_PACKET_LOSS_PERC)

    @packet_loss_percent.setter
    def packet_loss_percent(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise OpusEncodeError(f"packet_loss_percent must be in 0-100, got {percent}")
        self._set(_SET_PACKET_LOSS_PERC, int(percent))

    def _set(self, request: int, value: int) -> None:
        code = int(_encoder_ctl(self._enc, request, ctypes.c_int32(value)))
        if code != 0:
            raise OpusEncodeError(f"opus_encoder_ctl({request}, {value}): {_error_text(code)}")

    def _get(self, request: int) -> int:
        out = ctypes.c_int32(0)
        code = int(_encoder_ctl(self._enc, request, ctypes.byref(out)))
        if code != 0:
            raise OpusEncodeError(f"opus_encoder_ctl({request}): {_error_text(code)}")
        return int(out.value)
