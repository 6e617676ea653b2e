"""Replaying an encoded clip forever with timestamps that keep running (sans-IO, no clock).

A fair load generator must not spend the machine on encoding: each synthetic member encodes a few
seconds of media once and then loops over the packets. What a receiver sees must still look like one
endless stream, so every packet gets a fresh presentation timestamp: ``origin + n * step`` for the
``n``-th packet handed out, whatever loop it comes from. aiortc's sender turns that pts into the RTP
timestamp (its own random origin plus the pts, modulo 2**32) and numbers the RTP packets itself
(modulo 2**16), so both continue across loops and wrap like any live stream's.

Video clips start with a keyframe and may hold more; :meth:`Replay.skip_to_keyframe` makes the next
packet the next keyframe of the clip (what a receiver's picture-loss request needs), still with the
next pts, so skipping shows as a jump in the picture, never in time.

A member sends idle silence from connect and switches to its clip and back on cue;
:class:`Handoff` does both on one count, so the switch moves neither the RTP timestamps nor the
Sender Reports' line off the 20 ms pacing. (Its first version read the count when the cue
arrived, while the track held the idle packet it was about to hand out: the clip then began one
frame, 960 ticks, behind the pacing, and the transport followed a 20 ms step in base transit.)
"""

from __future__ import annotations

import attrs

__all__ = [
    "RTP_TIMESTAMP_MODULUS",
    "EncodedClip",
    "Handoff",
    "Replay",
    "ReplayPacket",
    "wire_timestamp",
]

RTP_TIMESTAMP_MODULUS = 1 << 32


@attrs.frozen
class EncodedClip:
    """Encoded packets of equal duration: ``step`` ticks of a ``clock_rate`` Hz clock each.

    ``keyframes`` holds the indices of packets a decoder can start from (empty for audio, where
    every packet is one).
    """

    packets: tuple[bytes, ...]
    step: int
    clock_rate: int
    keyframes: frozenset[int] = frozenset()
    #: Indices of packets that begin a tone (the latency probe's onsets); audio only.
    onsets: frozenset[int] = frozenset()

    def __attrs_post_init__(self) -> None:
        if not self.packets:
            raise ValueError("an encoded clip needs at least one packet")
        if self.step <= 0 or self.clock_rate <= 0:
            raise ValueError("step and clock_rate must be > 0")
        if any(not 0 <= k < len(self.packets) for k in self.keyframes | self.onsets):
            raise ValueError("keyframe and onset indices must be packet indices")

    @property
    def seconds(self) -> float:
        """The clip's length: one loop."""
        return len(self.packets) * self.step / self.clock_rate

    @property
    def interval(self) -> float:
        """Seconds between packets."""
        return self.step / self.clock_rate


@attrs.frozen
class ReplayPacket:
    data: bytes
    #: Presentation timestamp on the clip's clock: ``origin + count * step``.
    pts: int
    #: How many packets were handed out before this one (its due time is ``count * interval``).
    count: int
    #: Its index in the clip.
    index: int
    keyframe: bool
    onset: bool
    #: From the live clip of a :class:`Handoff` (not its idle one).
    live: bool = False


class Replay:
    """The packets of ``clip``, looped, with a pts that advances by ``step`` per packet."""

    def __init__(self, clip: EncodedClip, *, origin: int = 0) -> None:
        if origin < 0:
            raise ValueError("origin must be >= 0")
        self.clip = clip
        self.origin = origin
        self.count = 0
        self.index = 0
        #: Completed passes over the clip.
        self.loops = 0
        #: Packets left out by :meth:`skip_to_keyframe`.
        self.skipped = 0

    def next(self, live: bool = False) -> ReplayPacket:
        """The next packet (``live``: marked as the live clip's, see :class:`Handoff`)."""
        clip = self.clip
        index = self.index
        packet = ReplayPacket(
            data=clip.packets[index],
            pts=self.origin + self.count * clip.step,
            count=self.count,
            index=index,
            keyframe=index in clip.keyframes,
            onset=index in clip.onsets,
            live=live,
        )
        self.count += 1
        self._advance(1)
        return packet

    def _advance(self, n: int) -> None:
        total = self.index + n
        self.loops += total // len(self.clip.packets)
        self.index = total % len(self.clip.packets)

    def skip(self, n: int) -> None:
        """Leave out the next ``n`` packets, time included (a sender that fell behind): the pts
        jumps by ``n`` steps, as a capture device's would over the samples it lost."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self.count += n
        self.skipped += n
        self._advance(n)

    def skip_to_keyframe(self) -> None:
        """Make the next packet the clip's next keyframe (the first one after a wrap)."""
        keyframes = self.clip.keyframes
        if not keyframes or self.index in keyframes:
            return
        n = len(self.clip.packets)
        ahead = min((k - self.index) % n for k in keyframes)
        self.skipped += ahead
        self._advance(ahead)

    def due(self, count: int) -> float:
        """Seconds after the first packet at which packet ``count`` is due."""
        return count * self.clip.interval


class Handoff:
    """An ``idle`` clip (or nothing), then ``live`` on :meth:`start`, then idle again: one stream.

    Every packet's pts is ``count * step`` for its place on the pacing line (``count`` counts
    packets handed out and skipped, whichever clip they came from), so the caller paces packet
    ``count`` at ``t0 + count * interval`` and its Sender Reports map pts to that same line. A
    switch takes effect on the next packet handed out, so a caller should take a packet only
    when it is due (not take it, sleep, and hand it out after a cue may have come).
    """

    def __init__(self, live: EncodedClip, idle: EncodedClip | None = None) -> None:
        if idle is not None and (idle.step, idle.clock_rate) != (live.step, live.clock_rate):
            raise ValueError("the idle clip must share the live clip's step and clock rate")
        self.live_clip = live
        self.idle_clip = idle
        #: Packets on the pacing line so far: handed out or skipped.
        self.count = 0
        #: Live packets handed out (skipped ones not included).
        self.sent_live = 0
        self.live = False
        self._limit: int | None = None
        self._replay: Replay | None = None if idle is None else Replay(idle)

    def start(self, packets: int | None = None) -> None:
        """Replay the live clip for the next ``packets`` packets (None: until further notice),
        then go back to idle. Starting while live changes nothing."""
        if self.live:
            return
        self.live = True
        self._limit = None if packets is None else self.sent_live + packets
        self._replay = Replay(self.live_clip, origin=self.count * self.live_clip.step)

    @property
    def sending(self) -> bool:
        """Whether there is a packet to hand out (false only idle without an idle clip)."""
        self._expire()
        return self._replay is not None

    def next(self) -> ReplayPacket:
        """The packet for place ``count`` on the pacing line (raises when not :attr:`sending`)."""
        self._expire()
        replay = self._replay
        if replay is None:
            raise RuntimeError("nothing to send: idle without an idle clip")
        # Marked live as it is made: one object per packet (an evolve() made two, on every
        # packet of every member: the generator's hot path).
        packet = replay.next(self.live)
        self.count += 1
        if self.live:
            self.sent_live += 1
        return packet

    def skip(self, n: int) -> None:
        """Leave out the next ``n`` places (a sender that fell behind), time included."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self.count += n
        if self._replay is not None:
            self._replay.skip(n)

    def _expire(self) -> None:
        if self.live and self._limit is not None and self.sent_live >= self._limit:
            self.live = False
            self._limit = None
            idle = self.idle_clip
            self._replay = None if idle is None else Replay(idle, origin=self.count * idle.step)


def wire_timestamp(sender_origin: int, pts: int) -> int:
    """The RTP timestamp a sender with random ``sender_origin`` puts on ``pts`` (same clock rate)."""
    return (sender_origin + pts) % RTP_TIMESTAMP_MODULUS
