"""Outgoing media tracks: fed from trio, timed on one media clock per connection, paced on aiortc's
asyncio thread.

**One media clock per connection.** A receiver's lip sync maps each stream's RTP timestamps to its
sender's NTP time through that stream's Sender Reports; audio and video are in sync exactly when
both mappings agree with the capture times. So both tracks of a connection share one
:class:`MediaClock`: a frame captured (or presented, for pipeline outputs) at monotonic time ``t``
gets ``pts = round((t - epoch + latency) * rate)`` in its track's clock rate, ``epoch`` being the
first timestamp either track saw, and the adapter
(:class:`~meshrtc.rtc.aiortc_adapter.SenderControl`) makes each Sender Report map the RTP timestamp
it carries to :meth:`MediaClock.ntp` of that pts (``t`` on the wall clock), not to when
the packet happened to be sent (which adds encode time and queue level, differently per stream).
A frame handed over without a timestamp is stamped with the time it was handed over (audio that
continues the queued samples is chained to them instead, so a clip handed over in one call stays
contiguous).

**Levels, not drift.** aiortc's ``RTCRtpSender`` pulls ``recv()`` as fast as it returns and never
paces, so each track paces itself: a frame is *released* at ``t + smoothing`` (20 ms: a producer's
hand-over jitter up to that goes out evenly paced; a frame handed over later goes at once; a clip
is paced at its own rate) and its *deadline* is ``t + latency``. Audio is a contiguous stream of
20 ms slots: each slot carries its queued frame, or 20 ms of silence when a later frame is already
queued or the slot's deadline passed with none (the RTP clock keeps running and the remote jitter
buffer stays primed). A frame that arrives after its slot went out as silence is *late*: dropped
and counted, and the next frames keep their own times, so one underrun costs one gap instead of
shifting every later frame (what pacing on the track's own clock did). Video sends each picture
once released, only the newest when several are (the others are dropped and counted), and repeats
the last picture when the deadline of a picture one frame interval later passed with nothing new
(a keyframe request is always answered and the encoder's rate control stays steady). A stalled loop
skips the slots that passed instead of bursting.

**Ahead of the clock.** A frame stamped ahead of the slot being sent is waited for (silence until
the slots reach it: a hole once, as for any jump forward), but only while the queue can hold what a
real-time producer hands over meanwhile. When the queue is full, or its newest frame is further
ahead of the slot than the queue's span less one slot, the producer runs ahead of the track by more
than it can hold: the newest frame goes out in the current slot, the older ones queued are dropped
(counted), and from then on frames are sent that much earlier than their timestamps say (an offset,
``realigned`` counts its changes), slot by slot, continuous on the wire and on real time. When the
producer's lead shrinks, a frame that would be behind the slot only by the offset lowers the offset
instead of being dropped as late (down to none). Before, such a head waited while every new frame
evicted it from the full queue, and the track sent silence for good (the soak's stuck members:
MixMinus had shifted every peer forward a slot at a time, the mixes' timestamps ran 100-150 ms
ahead of the track, its 100 ms queue was full, nothing late and nothing sent). The price, while an
offset lasts, is the A/V relation of that link (its audio goes out that much earlier than its
video). Video: a full queue sends its oldest picture now, released or not (with its own pts),
instead of each picture being evicted by the next before its release while the last one repeats.

``latency`` is therefore not a delay but a tolerance: how late a producer may hand a frame over
before its audio slot is given up; only ``smoothing`` is added (the old per-track pacer added a
random 0-20 ms and whatever its queue held). A receiver's jitter buffer absorbs hand-over jitter
beyond ``smoothing``.

The hand-over from trio is a ``collections.deque``: ``put()`` appends from the trio thread and
``recv()`` pops on the asyncio thread (both atomic in CPython). Only a ``recv()`` parked waiting
for a frame is woken, and all the tracks of a loop woken in one go share one
``call_soon_threadsafe`` (:class:`_LoopWaker`). Queues are bounded; overflow drops the oldest
frames and counts them.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

import av
import numpy as np
import numpy.typing as npt
import trio
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from meshrtc.errors import MeshRtcError
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "AUDIO_SAMPLE_RATE",
    "DEFAULT_SEND_LATENCY",
    "DEFAULT_SMOOTHING",
    "VIDEO_CLOCK_RATE",
    "AudioOutputTrack",
    "MediaClock",
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
#: A video track with video shed off is woken by ``set_plan``; it also looks at least this often
#: whether it was stopped (seconds; one wake-up a second costs nothing).
_PAUSED_CHECK: Final = 1.0
#: From a frame's capture (or presentation) time to its deadline, by default: how late a producer
#: may hand it over (a pipeline output's timestamp is in the past: MixMinus alone may wait 60 ms
#: for a window). Not a delay: a frame goes out as soon as it is handed over.
DEFAULT_SEND_LATENCY: Final = 0.1
#: From a frame's capture time to its release (the earliest it is sent), by default: one audio frame,
#: so hand-over jitter up to that is smoothed out rather than passed onto the wire.
DEFAULT_SMOOTHING: Final = 0.02
#: Timestamped audio this close to the end of the queued samples continues them (2 ms): pipeline
#: timestamps are on a 20 ms grid, so this only absorbs floating-point rounding.
CONTIGUOUS: Final = 96
#: A timestamp further than this from now (seconds) is on some other clock (a pipeline node that
#: left ``RuntimeData.timestamp`` at 0): the frame is treated as handed over without one.
PLAUSIBLE: Final = 1.0
#: Half a slot: a queued audio frame within this of a slot is that slot's frame.
_HALF: Final = AUDIO_FRAME_SAMPLES // 2


class TrackInputError(MeshRtcError, ValueError):
    """Samples or pictures handed to an outgoing track have the wrong shape or type."""


class MediaClock:
    """The capture timeline shared by a connection's outgoing tracks (module docstring).

    ``clock`` is the monotonic clock timestamps are on; ``wall`` gives the NTP time: read once, so
    the Sender Reports of both tracks follow one straight line that a wall-clock step cannot bend.
    """

    def __init__(
        self,
        *,
        latency: float = DEFAULT_SEND_LATENCY,
        smoothing: float = DEFAULT_SMOOTHING,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= latency <= 1:
            raise TrackInputError(f"latency must be in [0, 1] s, got {latency}")
        if smoothing < 0:
            raise TrackInputError(f"smoothing must be >= 0, got {smoothing}")
        self.latency = latency
        self.smoothing = min(smoothing, latency)  # never released after its own deadline
        self.now = clock
        self._wall_offset = wall() - clock()
        self._epoch: float | None = None
        self._lock = threading.Lock()  # set from trio's thread (put) or the loop's (silence)

    @property
    def epoch(self) -> float | None:
        """The first timestamp either track saw (monotonic seconds), None before."""
        return self._epoch

    def _anchor(self, timestamp: float) -> float:
        epoch = self._epoch
        if epoch is None:
            with self._lock:
                if self._epoch is None:
                    self._epoch = timestamp
                epoch = self._epoch
        return epoch

    def plausible(self, timestamp: float | None) -> float | None:
        """``timestamp`` if it is on this clock (within :data:`PLAUSIBLE` of now), else None."""
        if timestamp is None or abs(timestamp - self.now()) > PLAUSIBLE:
            return None
        return timestamp

    def pts(self, timestamp: float, rate: int) -> int:
        """Where a frame captured at ``timestamp`` goes on a ``rate`` Hz RTP clock."""
        return round((timestamp - self._anchor(timestamp) + self.latency) * rate)

    def release(self, pts: int, rate: int) -> float:
        """When ``pts`` may be sent: ``smoothing`` after its capture (monotonic seconds)."""
        return self._anchor(self.now()) + pts / rate - self.latency + self.smoothing

    def deadline(self, pts: int, rate: int) -> float:
        """When ``pts`` is too late: its slot goes out without it (monotonic seconds)."""
        return self._anchor(self.now()) + pts / rate

    def ntp(self, pts: int, rate: int) -> int:
        """``pts``'s capture time as NTP (64-bit): what a Sender Report carrying its RTP timestamp
        says (so a receiver's ``sender_time`` is the capture time, not the deadline)."""
        unix = self._anchor(self.now()) + self._wall_offset + pts / rate - self.latency
        fraction, seconds = math.modf(unix + NTP_EPOCH_OFFSET)
        return (int(seconds) << 32) | min(int(fraction * (1 << 32)), 0xFFFFFFFF)


class _LoopWaker:
    """One cross-thread call wakes every track parked on a loop that was notified meanwhile.

    The router hands each member's mix to its track one after the other in one 20 ms slot, from
    trio's thread; a ``call_soon_threadsafe`` per track was a self-pipe write and a GIL hand-off
    to the loop thread per member per slot (4-5 % of the transport's active time at 10 members).
    Here the first notify of a batch schedules one :meth:`_flush`; the others only append until it
    ran. Called in trio's thread, the crossing itself waits for the end of trio's current batch of
    tasks (``run_sync_soon``: trio's own wake-up, no other thread woken): crossing at once let the
    loop thread take the GIL between two members' puts, so only about 3 puts shared a crossing.

    Lock-free, like :class:`~meshrtc.rtc.bridge.ToTrio`: a producer appends before it reads
    ``_scheduled``; the flush clears ``_scheduled`` before it drains. Either the producer sees the
    cleared flag and schedules another flush, or its event was appended before the drain began
    (two producers racing schedule two flushes: harmless).
    """

    __slots__ = ("__weakref__", "_loop", "_pending", "_scheduled", "flushes", "notified")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: collections.deque[asyncio.Event] = collections.deque()
        self._scheduled = False
        #: Cross-thread calls made, and events they set (``notified / flushes``: the batching).
        self.flushes = 0
        self.notified = 0

    def wake(self, event: asyncio.Event) -> None:
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            if trio.lowlevel.in_trio_run():
                try:
                    trio.lowlevel.current_trio_token().run_sync_soon(self._cross)
                    return
                except trio.RunFinishedError:
                    pass  # trio is finishing: cross now
            self._cross()

    def _cross(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed: nobody waits any more
            self._pending.clear()

    def _flush(self) -> None:
        self._scheduled = False
        self.flushes += 1
        pending = self._pending
        while pending:
            pending.popleft().set()
            self.notified += 1


#: The waker of each running loop (made on the loop's thread, by the first track that parks).
_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)


def loop_waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    """The loop's shared waker (call on the loop's thread)."""
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = _LoopWaker(loop)
    return waker


class _Wakeup:
    """Lets ``put()`` (trio's thread) wake a ``recv()`` parked on the loop, only while one is parked:
    a steady stream whose frames are already queued costs no cross-thread call at all, and the
    tracks notified in one go share one (:class:`_LoopWaker`)."""

    __slots__ = ("_event", "_waker")

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._waker: _LoopWaker | None = None

    def notify(self) -> None:
        event, waker = self._event, self._waker
        if event is not None and waker is not None:
            waker.wake(event)

    async def wait(self, seconds: float, ready: Callable[[], bool]) -> None:
        """Until notified, ``ready()`` or ``seconds`` passed (whichever is first)."""
        loop = asyncio.get_running_loop()
        if self._waker is None or self._waker._loop is not loop:
            self._waker = loop_waker(loop)
        event = self._event = asyncio.Event()
        try:
            if ready():
                return  # put() came between the caller's check and _event being set
            handle = loop.call_later(max(0.0, seconds), event.set)
            try:
                await event.wait()
            finally:
                handle.cancel()
        finally:
            self._event = None


class AudioOutputTrack(MediaStreamTrack):
    """Opus-ready audio: s16, 48 kHz, 20 ms frames with pts on the media clock (time base 1/48000).

    Feed it from one thread at a time with :meth:`put` (float32 in [-1, 1] or int16; shape ``(n,)``
    or ``(n, channels)``; any length, re-chunked to 20 ms; optionally the capture ``timestamp`` of
    the first sample). ``max_queued`` bounds the queue in seconds. Before the first :meth:`put` it
    sends nothing (an idle mesh link costs no Opus encoding, the most expensive per-link work);
    from then on empty slots are silence so the remote jitter buffer sees one continuous stream.
    """

    kind = "audio"
    clock_rate = AUDIO_SAMPLE_RATE

    def __init__(
        self, *, channels: int = 1, max_queued: float = 1.0, clock: MediaClock | None = None
    ) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise TrackInputError(f"channels must be 1 or 2, got {channels}")
        self.channels = channels
        self.media_clock = clock or MediaClock()
        self._layout = "mono" if channels == 1 else "stereo"
        self._frames: collections.deque[tuple[int, npt.NDArray[np.int16]]] = collections.deque(
            maxlen=max(1, math.ceil(max_queued / AUDIO_PTIME))
        )
        self._partial: npt.NDArray[np.int16] = np.zeros((0, channels), dtype=np.int16)
        #: pts just after the last queued sample (where the partial frame ends), None before.
        self._tail: int | None = None
        self._silence = np.zeros((1, AUDIO_FRAME_SAMPLES * channels), dtype=np.int16)
        self._next: int | None = None
        self._wakeup = _Wakeup()
        self._started = threading.Event()
        #: Frames handed to the sender, of which silence (nothing queued for that slot).
        self.sent = 0
        self.silent = 0
        #: Frames dropped: queue full (oldest first), or their slot passed (``late``, included).
        self.dropped = 0
        self.late = 0
        #: Slots a stalled loop skipped; puts whose timestamp was on another clock (ignored).
        self.skipped = 0
        self.untimed = 0
        #: Samples queued frames are sent earlier than their timestamps say (> 0 while the producer
        #: runs further ahead of the track than its queue holds), and how often it changed (module
        #: docstring, "Ahead of the clock").
        self._offset = 0
        self.realigned = 0
        #: How far ahead of the slot being sent (samples) a queued frame may be and still be waited
        #: for: the queue's span less that slot (a real-time producer fills the queue meanwhile).
        self._max_ahead = ((self._frames.maxlen or 1) - 1) * AUDIO_FRAME_SAMPLES

    @property
    def queued(self) -> int:
        return len(self._frames)

    @property
    def offset(self) -> float:
        """Seconds frames are sent earlier than their timestamps ("Ahead of the clock")."""
        return self._offset / AUDIO_SAMPLE_RATE

    def put(
        self,
        samples: npt.NDArray[np.floating] | npt.NDArray[np.int16],
        timestamp: float | None = None,
    ) -> None:
        """Queue samples captured at ``timestamp`` (monotonic seconds; None: now, or right after
        the samples still queued)."""
        pcm = _to_int16(samples, self.channels)
        clock = self.media_clock
        tail = self._tail
        if timestamp is not None and clock.plausible(timestamp) is None:
            self.untimed += 1
            timestamp = None
        if timestamp is None:
            now = clock.now()
            start = clock.pts(now, AUDIO_SAMPLE_RATE)
            # Continue the queued samples while their end is not due yet; else start at now.
            contiguous = (
                tail is not None
                and clock.deadline(tail - len(self._partial), AUDIO_SAMPLE_RATE) > now
            )
        else:
            start = clock.pts(timestamp, AUDIO_SAMPLE_RATE)
            contiguous = tail is not None and abs(start - tail) <= CONTIGUOUS
        if tail is not None and contiguous:
            pcm = np.concatenate((self._partial, pcm)) if len(self._partial) else pcm
            start = tail - len(self._partial)
        elif len(self._partial):
            # A new run: the old one's last partial frame goes out padded with silence.
            padded = np.zeros((AUDIO_FRAME_SAMPLES, self.channels), dtype=np.int16)
            padded[: len(self._partial)] = self._partial
            assert tail is not None
            self._append(tail - len(self._partial), padded)
        capacity = self._frames.maxlen or 1
        excess = len(pcm) // AUDIO_FRAME_SAMPLES - capacity
        if timestamp is None and excess > 0:
            # A clip longer than the queue: its oldest part is dropped (counted) and the rest plays
            # from where the clip starts, not after a silence as long as what was dropped.
            pcm = pcm[excess * AUDIO_FRAME_SAMPLES :]
            self.dropped += excess
        whole = len(pcm) - len(pcm) % AUDIO_FRAME_SAMPLES
        for offset in range(0, whole, AUDIO_FRAME_SAMPLES):
            self._append(start + offset, pcm[offset : offset + AUDIO_FRAME_SAMPLES])
        self._partial = pcm[whole:]
        self._tail = start + len(pcm)
        self._started.set()
        self._wakeup.notify()

    def _append(self, pts: int, pcm: npt.NDArray[np.int16]) -> None:
        frames = self._frames
        if len(frames) == frames.maxlen:
            self.dropped += 1
        frames.append((pts, pcm.reshape(1, -1)))

    def start(self) -> None:
        """Send from now on, silence until fed (a rebuilt link continues a started stream)."""
        self._started.set()

    async def recv(self) -> av.AudioFrame:
        while not self._started.is_set():
            if self.readyState != "live":
                raise MediaStreamError
            await asyncio.sleep(AUDIO_PTIME)
        clock = self.media_clock
        frames = self._frames
        if self._next is None:
            head = frames[0] if frames else None
            self._next = head[0] if head else clock.pts(clock.now(), AUDIO_SAMPLE_RATE)
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            slot = self._next
            now = clock.now()
            lag = now - clock.deadline(slot, AUDIO_SAMPLE_RATE)
            if lag > MAX_LAG:  # a stalled loop: skip the slots that passed
                skip = int(lag / AUDIO_PTIME + 1e-9)  # (not one less by rounding)
                slot = self._next = slot + skip * AUDIO_FRAME_SAMPLES
                self.skipped += skip
            offset = self._offset
            while frames and frames[0][0] - offset < slot - _HALF:
                if offset and frames[0][0] >= slot - _HALF:
                    # Behind the slot only by the offset: the producer's lead shrank (module
                    # docstring, "Ahead of the clock"). Follow it, down to none.
                    offset = self._offset = max(0, frames[0][0] - slot)
                    self.realigned += 1
                    continue
                frames.popleft()  # its slot went out (as silence): sending it now delays the rest
                self.dropped += 1
                self.late += 1
            head = frames[0] if frames else None
            if head is not None:
                # The slot's frame, or a later one (then this slot's will not come: silence).
                due = head[0] - offset
                pts = due if due <= slot + _HALF else slot
                wait = clock.release(pts, AUDIO_SAMPLE_RATE) - now
                if wait > 0:
                    await asyncio.sleep(wait)  # a clip: no earlier than it was captured
                    continue
                if pts == due:
                    data = frames.popleft()[1]
                elif self._beyond(slot):
                    # The producer runs further ahead than the queue holds: its newest frame goes
                    # out in this slot, the ones before it are dropped, and the next ones follow
                    # it slot by slot (module docstring, "Ahead of the clock").
                    while len(frames) > 1:
                        frames.popleft()
                        self.dropped += 1
                    self._offset = frames[0][0] - slot
                    self.realigned += 1
                    data = frames.popleft()[1]
                else:
                    data = self._silence
                    self.silent += 1
                break
            wait = clock.deadline(slot, AUDIO_SAMPLE_RATE) - now
            if wait <= 0:
                pts, data = slot, self._silence
                self.silent += 1
                break
            await self._wakeup.wait(wait, lambda: bool(frames))
        self._next = pts + AUDIO_FRAME_SAMPLES
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=self._layout)
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        self.sent += 1
        return frame

    def _beyond(self, slot: int) -> bool:
        """Whether the queued frames run further ahead of ``slot`` (the slot being sent, with the
        head ahead of it) than the queue can hold while the slots reach them: it is full, or its
        newest frame is more than the queue's span less one slot ahead. The slots advance with real
        time, so frames this far ahead of them stay this far ahead, each one evicted by the next."""
        frames = self._frames
        return len(frames) == frames.maxlen or frames[-1][0] - self._offset - slot > self._max_ahead

    def ntp_time(self, pts: int) -> int:
        """NTP time of ``pts`` (what the adapter puts in this stream's Sender Reports)."""
        return self.media_clock.ntp(pts, AUDIO_SAMPLE_RATE)


class VideoOutputTrack(MediaStreamTrack):
    """Video with pts on the media clock's 90 kHz RTP clock (time base 1/90000).

    :meth:`put` takes an ``av.VideoFrame`` or an ``(h, w, 3)`` uint8 RGB array and optionally its
    capture ``timestamp``, from any thread; the track owns what it is given. With nothing new it
    repeats the last picture every ``1/fps`` (``latency`` behind); before the first picture it sends
    nothing.

    **Shedding load** (docs/transport.md, "Shedding load"): :meth:`set_plan` scales what the
    track costs downstream, where the cost is (every picture sent is a VP9 encode, SRTP and UDP
    work). ``framerate_scale`` < 1 spaces the pictures sent by ``1/(fps * scale)``: a picture that
    comes sooner than that after the last one sent is skipped (held as the newest, so the next one
    sent is never older than what was skipped) and repeats come on the same longer step, by
    timestamp, so nothing is made up in a burst. ``video=False`` sends nothing at all (not even
    the last picture again) until video is back; the sender asks for a keyframe then.
    ``bitrate_scale`` is only carried here for the sender's bitrate control
    (:class:`~meshrtc.rtc.aiortc_adapter.SenderControl` reads it from its track), so the plan of a
    link lives in one place and a link rebuilt under load starts shed.
    """

    kind = "video"
    clock_rate = VIDEO_CLOCK_RATE

    def __init__(
        self, *, fps: float = 30.0, max_queued: int = 2, clock: MediaClock | None = None
    ) -> None:
        super().__init__()
        if not 0 < fps <= 60:
            raise TrackInputError(f"fps must be in (0, 60], got {fps}")
        self.fps = fps
        self.media_clock = clock or MediaClock()
        self._step = round(VIDEO_CLOCK_RATE / fps)
        self._frames: collections.deque[tuple[int, av.VideoFrame]] = collections.deque(
            maxlen=max(1, max_queued)
        )
        self._last: av.VideoFrame | None = None
        self._last_pts = 0
        self._wakeup = _Wakeup()
        self.sent = 0
        self.repeated = 0
        #: Pictures dropped: queue full, or a newer one was due too (``late``, included).
        self.dropped = 0
        self.late = 0
        #: Puts whose timestamp was on another clock (ignored: stamped when handed over).
        self.untimed = 0
        #: The shedding plan (:meth:`set_plan`); read by the sender's bitrate control.
        self.bitrate_scale = 1.0
        self.framerate_scale = 1.0
        self.paused = False
        #: Pictures skipped to keep the shed frame rate, and times video was turned back on.
        self.shed = 0
        self.resumed = 0
        #: ``_last`` is a skipped picture not sent yet: its first send is not a repeat.
        self._held = False

    def set_plan(
        self, *, bitrate_scale: float = 1.0, framerate_scale: float = 1.0, video: bool = True
    ) -> None:
        """Follow a load-shedding plan (class docstring); from any thread.

        Returns at once: the running ``recv`` reads the new values at its next picture (a
        resumed one is woken now).
        """
        if not (0 < bitrate_scale <= 1 and 0 < framerate_scale <= 1):
            raise TrackInputError(
                f"scales must be in (0, 1], got {bitrate_scale} and {framerate_scale}"
            )
        self.bitrate_scale = bitrate_scale
        self.framerate_scale = framerate_scale
        resumed = self.paused and video
        self.paused = not video
        if resumed:
            self.resumed += 1
            self._wakeup.notify()

    def put(
        self, picture: av.VideoFrame | npt.NDArray[np.uint8], timestamp: float | None = None
    ) -> None:
        """Show ``picture`` from its capture ``timestamp`` (monotonic seconds; None: now) on."""
        if isinstance(picture, np.ndarray):
            if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
                raise TrackInputError(f"expected an (h, w, 3) uint8 RGB array, got {picture.shape}")
            picture = av.VideoFrame.from_ndarray(picture, format="rgb24")
        elif not isinstance(picture, av.VideoFrame):
            raise TrackInputError(
                f"expected av.VideoFrame or ndarray, got {type(picture).__name__}"
            )
        clock = self.media_clock
        if timestamp is not None and clock.plausible(timestamp) is None:
            self.untimed += 1
            timestamp = None
        pts = clock.pts(clock.now() if timestamp is None else timestamp, VIDEO_CLOCK_RATE)
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append((pts, picture))
        if not self.paused:  # a paused recv waits for set_plan, not for pictures
            self._wakeup.notify()

    async def recv(self) -> av.VideoFrame:
        clock = self.media_clock
        frames = self._frames
        rate = VIDEO_CLOCK_RATE
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.paused:
                # Nothing is encoded while video is off; the bounded wait re-checks readyState.
                await self._wakeup.wait(_PAUSED_CHECK, self._unpaused)
                continue
            now = clock.now()
            # The shed frame rate's step, and how early a picture may come and still be sent
            # (half a picture at full rate: pictures stamped with jitter are not skipped).
            step = (
                self._step
                if self.framerate_scale >= 1
                else round(self._step / self.framerate_scale)
            )
            picked: tuple[int, av.VideoFrame] | None = None
            # A full queue sends its oldest now, released or not: pictures stamped further ahead
            # than the queue holds would otherwise each be evicted by the next before its
            # release, and the track repeat its last picture for good ("Ahead of the clock").
            while frames and (
                clock.release(frames[0][0], rate) <= now or len(frames) == frames.maxlen
            ):
                if picked is not None:
                    self.dropped += 1  # superseded: a newer one is released too
                    self.late += 1
                picked = frames.popleft()
            if picked is not None and self._last is not None and picked[0] <= self._last_pts:
                self.dropped += 1  # behind what was sent (its source's timeline went back)
                self.late += 1
                picked = None
            if (
                picked is not None
                and step != self._step
                and self._last is not None
                and picked[0] - self._last_pts < step - self._step // 2
            ):
                self.shed += 1  # too soon for the shed frame rate: the next step sends it
                self._last = picked[1]
                self._held = True
                picked = None
            if picked is not None:
                pts, frame = picked
                break
            wake = now + 1 / self.fps  # nothing to send yet: wait for a picture
            if self._last is not None:
                # A repeat stands in for a picture that did not come: it waits for that picture's
                # deadline, so one handed over late (but in time) is sent instead, not dropped.
                repeat = self._last_pts + step
                behind = now - clock.deadline(repeat, rate)
                if behind >= 0:
                    if behind > MAX_LAG:  # a stalled loop: skip the repeats that passed
                        repeat += int(behind * rate / step) * step
                    pts, frame = repeat, self._last
                    if not self._held:
                        self.repeated += 1
                    break
                wake = now - behind
            tail = frames[-1] if frames else None
            if tail is not None:
                wake = min(wake, clock.release(frames[0][0], rate))
            # Woken by a *new* picture: one already queued waits for its release time above (a
            # plain ``bool(frames)`` returned at once and spun the loop until then, up to
            # ``smoothing`` per picture: 29 % of the transport's active time at 6 a+v members).
            await self._wakeup.wait(wake - now, functools.partial(_grew, frames, tail))
        self._last = frame
        self._last_pts = pts
        self._held = False
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.sent += 1
        return frame

    def ntp_time(self, pts: int) -> int:
        """NTP time of ``pts`` (what the adapter puts in this stream's Sender Reports)."""
        return self.media_clock.ntp(pts, VIDEO_CLOCK_RATE)

    def _unpaused(self) -> bool:
        return not self.paused


def _grew(frames: collections.deque[tuple[int, av.VideoFrame]], tail: object) -> bool:
    """Whether a picture was queued after ``tail`` (the newest one queued when the wait began)."""
    return bool(frames) and frames[-1] is not tail


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
