"""Outgoing media tracks: fed from trio, paced on aiortc's asyncio thread.

aiortc's ``RTCRtpSender`` pulls ``recv()`` as fast as it returns and never paces, so a track that
returns queued frames immediately would burst them onto the wire. These tracks pace themselves on
the loop's clock: audio one 20 ms frame per 20 ms, video one frame per ``1/fps``.

The hand-over from trio is a ``collections.deque``: ``put()`` appends from the trio thread and
``recv()`` pops on the asyncio thread (both operations are atomic in CPython), so feeding a frame
costs no cross-thread wake-up at all. That is possible because neither track ever *waits* for
input: when nothing was fed, audio sends 20 ms of silence (the RTP clock keeps running and the
remote jitter buffer stays primed) and video repeats its last frame (so a keyframe request is
always answered and the encoder's rate control stays steady); before the first video frame the
track polls once per frame interval. Queues are bounded in time; overflow drops the oldest frames
and counts them, because late real-time media is worth less than current media.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import math
import threading
import time
from typing import Final

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from meshrtc.errors import MeshRtcError

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "AUDIO_SAMPLE_RATE",
    "VIDEO_CLOCK_RATE",
    "AudioOutputTrack",
    "TrackInputError",
    "VideoOutputTrack",
]

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE: Final = 48_000
AUDIO_FRAME_SAMPLES: Final = 960  # 20 ms at 48 kHz
AUDIO_PTIME: Final = AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE
AUDIO_TIME_BASE: Final = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
VIDEO_CLOCK_RATE: Final = 90_000
VIDEO_TIME_BASE: Final = fractions.Fraction(1, VIDEO_CLOCK_RATE)
#: Behind schedule by more than this (a stalled loop), the track skips ahead instead of bursting.
MAX_LAG: Final = 0.1


class TrackInputError(MeshRtcError, ValueError):
    """Samples or pictures handed to an outgoing track have the wrong shape or type."""


class _Pacer:
    """Frame ``n`` is due at ``start + n * interval`` on the loop clock; a stall skips, not bursts.

    ``skipped`` counts the slots a stall cost; a track drops as many queued frames (their time passed).
    """

    __slots__ = ("index", "interval", "skipped", "start")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.start: float | None = None
        self.index = -1
        self.skipped = 0

    async def wait_next(self) -> int:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.index += 1
        lag = now - (self.start + self.index * self.interval)
        if lag < 0:
            await asyncio.sleep(-lag)
        elif lag > MAX_LAG:
            skip = int(lag / self.interval)
            self.index += skip
            self.skipped += skip
        return self.index


class AudioOutputTrack(MediaStreamTrack):
    """Opus-ready audio: s16, 48 kHz, 20 ms frames with pts counted in samples (time base 1/48000).

    Feed it from any thread with :meth:`put` (float32 in [-1, 1] or int16; shape ``(n,)`` or
    ``(n, channels)``; any length, re-chunked to 20 ms). ``max_queued`` bounds the queue in seconds.
    Before the first :meth:`put` it sends nothing (an idle mesh link costs no Opus encoding, the
    most expensive per-link work); from then on gaps are filled with silence so the remote jitter
    buffer sees one continuous stream.
    """

    kind = "audio"

    def __init__(self, *, channels: int = 1, max_queued: float = 1.0) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise TrackInputError(f"channels must be 1 or 2, got {channels}")
        self.channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._frames: collections.deque[npt.NDArray[np.int16]] = collections.deque(
            maxlen=max(1, math.ceil(max_queued / AUDIO_PTIME))
        )
        self._partial: npt.NDArray[np.int16] = np.zeros((0, channels), dtype=np.int16)
        self._silence = np.zeros((1, AUDIO_FRAME_SAMPLES * channels), dtype=np.int16)
        self._pacer = _Pacer(AUDIO_PTIME)
        self._started = threading.Event()
        #: Frames handed to the sender, of which silence (nothing was queued).
        self.sent = 0
        self.silent = 0
        #: Frames dropped because the queue was full (oldest first) or their slot passed in a stall.
        self.dropped = 0

    @property
    def queued(self) -> int:
        return len(self._frames)

    def put(self, samples: npt.NDArray[np.floating] | npt.NDArray[np.int16]) -> None:
        """Queue samples for sending. Call from one feeding thread at a time (trio's)."""
        pcm = _to_int16(samples, self.channels)
        if len(self._partial):
            pcm = np.concatenate((self._partial, pcm))
        whole = len(pcm) - len(pcm) % AUDIO_FRAME_SAMPLES
        frames = self._frames
        for start in range(0, whole, AUDIO_FRAME_SAMPLES):
            if len(frames) == frames.maxlen:
                self.dropped += 1
            frames.append(pcm[start : start + AUDIO_FRAME_SAMPLES].reshape(1, -1))
        self._partial = pcm[whole:]
        self._started.set()

    def start(self) -> None:
        """Send from now on, silence until fed (a rebuilt link continues a started stream)."""
        self._started.set()

    async def recv(self) -> av.AudioFrame:
        while not self._started.is_set():
            if self.readyState != "live":
                raise MediaStreamError
            await asyncio.sleep(AUDIO_PTIME)
        if self.readyState != "live":
            raise MediaStreamError
        skipped = self._pacer.skipped
        index = await self._pacer.wait_next()
        if self.readyState != "live":
            raise MediaStreamError
        for _ in range(min(self._pacer.skipped - skipped, len(self._frames))):
            # Their slots passed during a stall: sending them late would delay everything after.
            self._frames.popleft()
            self.dropped += 1
        try:
            data = self._frames.popleft()
        except IndexError:
            data = self._silence
            self.silent += 1
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=self._layout)
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = index * AUDIO_FRAME_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        self.sent += 1
        return frame


class VideoOutputTrack(MediaStreamTrack):
    """Video at a fixed frame rate with pts on the 90 kHz RTP clock (time base 1/90000).

    :meth:`put` takes an ``av.VideoFrame`` or an ``(h, w, 3)`` uint8 RGB array, from any thread;
    the track owns what it is given. With nothing new it repeats the last frame; before the first
    frame it sends nothing.
    """

    kind = "video"

    def __init__(self, *, fps: float = 30.0, max_queued: int = 2) -> None:
        super().__init__()
        if not 0 < fps <= 60:
            raise TrackInputError(f"fps must be in (0, 60], got {fps}")
        self.fps = fps
        self._frames: collections.deque[av.VideoFrame] = collections.deque(
            maxlen=max(1, max_queued)
        )
        self._last: av.VideoFrame | None = None
        self._pacer = _Pacer(1.0 / fps)
        self.sent = 0
        self.repeated = 0
        self.dropped = 0

    def put(self, picture: av.VideoFrame | npt.NDArray[np.uint8]) -> None:
        if isinstance(picture, np.ndarray):
            if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
                raise TrackInputError(f"expected an (h, w, 3) uint8 RGB array, got {picture.shape}")
            picture = av.VideoFrame.from_ndarray(picture, format="rgb24")
        elif not isinstance(picture, av.VideoFrame):
            raise TrackInputError(
                f"expected av.VideoFrame or ndarray, got {type(picture).__name__}"
            )
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(picture)

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            index = await self._pacer.wait_next()
            if self.readyState != "live":
                raise MediaStreamError
            try:
                frame = self._frames.popleft()
            except IndexError:
                if self._last is None:
                    # Nothing to send yet. Restart the clock so the first frame gets pts 0.
                    self._pacer = _Pacer(self._pacer.interval)
                    await asyncio.sleep(self._pacer.interval)
                    continue
                frame = self._last
                self.repeated += 1
            self._last = frame
            frame.pts = round(index * VIDEO_CLOCK_RATE / self.fps)
            frame.time_base = VIDEO_TIME_BASE
            self.sent += 1
            return frame


def _to_int16(
    samples: npt.NDArray[np.floating] | npt.NDArray[np.int16], channels: int
) -> npt.NDArray[np.int16]:
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] not in (1, channels):
        raise TrackInputError(f"expected (n,) or (n, {channels}) samples, got shape {array.shape}")
    if array.shape[1] != channels:  # mono into a stereo track
        array = np.repeat(array, channels, axis=1)
    if array.dtype == np.int16:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    raise TrackInputError(f"expected float or int16 samples, got {array.dtype}")
