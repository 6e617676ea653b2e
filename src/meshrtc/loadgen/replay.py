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
"""

from __future__ import annotations

import attrs

__all__ = ["RTP_TIMESTAMP_MODULUS", "EncodedClip", "Replay", "ReplayPacket", "wire_timestamp"]

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

    def next(self) -> ReplayPacket:
        clip = self.clip
        index = self.index
        packet = ReplayPacket(
            data=clip.packets[index],
            pts=self.origin + self.count * clip.step,
            count=self.count,
            index=index,
            keyframe=index in clip.keyframes,
            onset=index in clip.onsets,
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


def wire_timestamp(sender_origin: int, pts: int) -> int:
    """The RTP timestamp a sender with random ``sender_origin`` puts on ``pts`` (same clock rate)."""
    return (sender_origin + pts) % RTP_TIMESTAMP_MODULUS
