"""Keyframe detection on RTP payloads (VP8, VP9, H.264).

After a loss the video jitter buffer drops frames until the decoder can start clean again, which is
only at a keyframe; it asks :func:`is_keyframe_for` (or one of the detectors below) about the first
packet of each frame. The detectors read only the payload descriptor and the first bytes of the codec
header, never decode, never raise on short or malformed input (they answer ``False``: a frame we
cannot prove is a keyframe is not one), and accept ``bytes`` or ``memoryview`` without copying.

A detector answers for the *first packet of a frame*: each one also requires the codec's
"start of frame" signal, so a fragment from the middle of a keyframe is not mistaken for its start.

The VP9 detector is :func:`meshrtc.media.vp9.is_keyframe`: it uses the RFC 9628 descriptor parser
the depayloader uses, so "keyframe" means the same thing to the jitter buffer and the decoder (a
descriptor that does not parse is not a keyframe to either).

:class:`KeyframePolicy` is the one place that decides keyframe *recovery* for a received video
stream: when a keyframe request (RTCP PLI) goes out, how often it is repeated while none has been
decoded, when frames are skipped until a keyframe, and when the decoder's failures call for one. It
is sans-IO (the caller passes the time and carries out "send a PLI now"); the rtc layer's
:class:`~meshrtc.rtc.receiver.MediaReceiver` feeds it the jitter buffer's ``KeyframeRequest`` items
(the buffer detects the loss; it does not decide about PLIs), the decode results and the decode
backlog.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from meshrtc.errors import ConfigError
from meshrtc.media.frame import MediaFrame
from meshrtc.media.vp9 import is_keyframe as vp9_is_keyframe

__all__ = [
    "KeyframePolicy",
    "h264_is_keyframe",
    "is_keyframe_for",
    "vp8_is_keyframe",
    "vp9_is_keyframe",
]

# H.264 NAL unit types (RFC 6184 section 5.4, ITU-T H.264 table 7-1).
_NAL_IDR = 5
_NAL_SPS = 7
_NAL_STAP_A = 24
_NAL_FU_A = 28
_KEY_NALS = frozenset((_NAL_IDR, _NAL_SPS))


def vp8_is_keyframe(payload: bytes | memoryview) -> bool:
    """RFC 7741: the start of partition 0 (S=1, PID=0) whose VP8 header has P=0 (key frame).

    Descriptor: ``|X|R|N|S|R|PID|``, then with X an extension byte ``|I|L|T|K|RSV|`` followed by
    PictureID (1 or 2 bytes, M bit), TL0PICIDX (L) and a TID/KEYIDX byte (T or K).
    """
    size = len(payload)
    if size < 1:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:  # S clear, or not partition 0
        return False
    pos = 1
    if b0 & 0x80:  # X: extension byte present
        if size < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID
            if size <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1  # M: 15-bit PictureID
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    if size <= pos:
        return False
    return not payload[pos] & 0x01  # P bit: 0 = key frame


def h264_is_keyframe(payload: bytes | memoryview) -> bool:
    """RFC 6184: an IDR slice (NAL 5) or an SPS (NAL 7), alone, inside a STAP-A, or as the first
    fragment (S=1) of an FU-A.

    An SPS counts because encoders send SPS/PPS immediately before each IDR, in the same access
    unit; libwebrtc's depacketizer makes the same choice.
    """
    size = len(payload)
    if size < 1:
        return False
    nal = payload[0] & 0x1F
    if nal in _KEY_NALS:
        return True
    if nal == _NAL_FU_A:
        if size < 2:
            return False
        fu = payload[1]
        return bool(fu & 0x80) and (fu & 0x1F) in _KEY_NALS
    if nal == _NAL_STAP_A:
        pos = 1
        while pos + 2 < size:
            length = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if length == 0 or pos + length > size:
                return False
            if payload[pos] & 0x1F in _KEY_NALS:
                return True
            pos += length
    return False


_BY_CODEC: dict[str, Callable[[bytes | memoryview], bool]] = {
    "vp8": vp8_is_keyframe,
    "vp9": vp9_is_keyframe,
    "h264": h264_is_keyframe,
}


def is_keyframe_for(codec: str) -> Callable[[MediaFrame], bool]:
    """The ``is_keyframe`` callable a video :class:`~meshrtc.media.jitter.JitterBuffer` takes.

    ``codec`` is the codec name as SDP spells it ("VP8", "VP9", "H264"; any case).
    """
    try:
        detector = _BY_CODEC[codec.lower()]
    except KeyError:
        raise ConfigError("codec", codec, "VP8, VP9 or H264") from None

    def is_keyframe(frame: MediaFrame) -> bool:
        return detector(frame.payload)

    is_keyframe.__name__ = f"{codec.lower()}_frame_is_keyframe"
    return is_keyframe


#: Keyframe requests (PLI) for one stream are at least this far apart (seconds).
PLI_INTERVAL = 0.3
#: While a requested keyframe has not been decoded, the request is repeated this often: the jitter
#: buffer reports a loss once per episode, and a keyframe that is itself lost or late would otherwise
#: leave video frozen until the sender's next periodic keyframe (aiortc: every 3000 frames).
PLI_RETRY = 1.0


class KeyframePolicy:
    """Keyframe recovery of one received video stream (one per link): every decision, no I/O.

    Each input returns True when a PLI is to be sent *now*; the caller sends it and counts it. The
    rules:

    * a keyframe is *wanted* from the first reason on (a loss the jitter buffer reported, a decode
      failure, a frame dropped because decoding fell behind) until a keyframe *submitted after the
      latest reason* is decoded into a picture. A picture of a frame that was already on its way
      to the decoder (keyframe or not) says nothing about the request: in the five-peer mesh one
      such picture ended the retries while the jitter buffer, which asks once per loss episode,
      kept dropping every frame for the keyframe the PLI had brought and that had been refused
      as late: video frozen for good;
    * PLIs are at least ``min_interval`` apart, whatever asks (no PLI storm from a burst of reasons);
    * while wanted, :meth:`poll` repeats the request every ``retry_interval``;
    * after a decode failure, every later decode result without a picture asks again (rate-limited);
    * after a frame was dropped for the backlog, frames are skipped until a keyframe (those after the
      drop reference it), unless keyframes of this codec cannot be recognised.
    """

    __slots__ = (
        "_decoder_broken",
        "_last_request",
        "_wanted_after",
        "min_interval",
        "requests",
        "retry_interval",
        "skipping",
        "submissions",
        "wanted_since",
    )

    def __init__(
        self, *, min_interval: float = PLI_INTERVAL, retry_interval: float = PLI_RETRY
    ) -> None:
        if not 0 < min_interval <= retry_interval:
            raise ConfigError(
                "min_interval/retry_interval",
                (min_interval, retry_interval),
                "0 < min_interval <= retry_interval",
            )
        self.min_interval = min_interval
        self.retry_interval = retry_interval
        #: Since when a keyframe has been wanted and not yet decoded (None: none wanted).
        self.wanted_since: float | None = None
        #: A frame was dropped (decoding fell behind): frames are skipped until a keyframe.
        self.skipping = False
        #: PLIs decided over the policy's life.
        self.requests = 0
        #: Frames submitted to the decoder so far (a frame's number is the count after it).
        self.submissions = 0
        self._last_request = -math.inf
        self._decoder_broken = False
        #: Frames up to this number were submitted before the latest reason: they cannot answer it.
        self._wanted_after = 0

    def need(self, now: float) -> bool:
        """A keyframe is needed (the jitter buffer lost the decoder's references, or any reason)."""
        if self.wanted_since is None:
            self.wanted_since = now
        self._wanted_after = self.submissions
        return self._request(now)

    def _request(self, now: float) -> bool:
        if now - self._last_request < self.min_interval:
            return False
        self._last_request = now
        self.requests += 1
        return True

    def poll(self, now: float) -> bool:
        """Called on every wake-up of the receive loop: repeat an unanswered request."""
        if self.wanted_since is not None and now - self._last_request >= self.retry_interval:
            return self._request(now)  # a repeat, not a new reason: frames in flight still count
        return False

    def admit(self, *, keyframe: bool, recognisable: bool) -> bool:
        """Whether a frame goes to the decoder; ``recognisable``: this codec's keyframes can be told
        (otherwise skipping would never end)."""
        return keyframe or not recognisable or not self.skipping

    def backlog_full(self, now: float) -> bool:
        """The decoder could not take a frame: it is dropped; skip to a keyframe and ask for one."""
        self.skipping = True
        return self.need(now)

    def submitted(self) -> int:
        """A frame went to the decoder: the skip (if any) is over. Returns the frame's number
        (its decode result names it to :meth:`decoded`)."""
        self.skipping = False
        self.submissions += 1
        return self.submissions

    def decoded(
        self, now: float, *, pictures: int, errors: int, keyframe: bool, number: int
    ) -> bool:
        """One frame's decode result: a picture of a keyframe submitted after the latest reason
        satisfies the request; a failure (and every picture-less result after it) asks for one.

        ``keyframe``: the frame was a keyframe, or this codec's keyframes cannot be recognised
        (then any picture has to do, or the requests would never end). ``number``: what
        :meth:`submitted` returned for it.
        """
        if pictures:
            if keyframe and number > self._wanted_after:
                self.wanted_since = None
            self._decoder_broken = False
        if errors:
            self._decoder_broken = True
        return self._decoder_broken and self.need(now)
