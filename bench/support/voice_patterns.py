"""Seeded packet-loss patterns of bench/voice_loss.py, as one drop decision per packet index.

The same mask is applied to every variant (meshrtc before, now, plain aiortc), indexed from the
first audio packet of the stream, so each compares the same lost 20 ms of the same clip.

* ``random``: each packet is lost with probability ``loss``, independently.
* ``bursty``: a two-state Gilbert-Elliott chain: every packet in the Bad state is lost, none in the
  Good state; Bad -> Good with probability :data:`BURST_EXIT` per packet (mean burst 1 /
  BURST_EXIT = 2.5 packets, 50 ms), Good -> Bad with ``p = loss * r / (1 - loss)`` so the long-run
  loss is ``loss``. In-band FEC carries only the previous frame, so bursts are what it cannot fix.

The first :data:`PROTECTED` packets are never dropped: the receiver learns the stream's first RTP
timestamp from packet 0, and the clip starts with silence there anyway.
"""

from __future__ import annotations

import random

BURST_EXIT = 0.4
PROTECTED = 5
PATTERNS = ("random", "bursty")


def loss_mask(pattern: str, loss: float, count: int, seed: int) -> list[bool]:
    """``count`` drop decisions (True: lost) for ``pattern`` at long-run ``loss`` (0..1)."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    rng = random.Random(f"voice-loss/{pattern}/{loss}/{seed}")
    mask: list[bool] = []
    if pattern == "random":
        mask = [rng.random() < loss for _ in range(count)]
    else:
        enter = loss * BURST_EXIT / (1.0 - loss)
        bad = False
        for _ in range(count):
            bad = rng.random() >= BURST_EXIT if bad else rng.random() < enter
            mask.append(bad)
    for i in range(min(PROTECTED, count)):
        mask[i] = False
    return mask


class MaskDrop:
    """Drops packets by their index since the first one seen (RTP sequence numbers, 16-bit wrap).

    The mask judges the *first* copy of each packet. A later copy (a retransmission answering a
    NACK, same sequence number) is a new datagram on the network: after :meth:`resend_loss` it is
    lost independently with that probability, from its own seeded generator; before, never.
    """

    def __init__(self, mask: list[bool]) -> None:
        self.mask = mask
        self.first: int | None = None
        self.seen = 0
        self.dropped = 0
        self.dropped_indices: list[int] = []
        self._judged: set[int] = set()
        self._resend_loss = 0.0
        self._resend_rng = random.Random(0)
        #: Later copies seen, and of those lost.
        self.resent = 0
        self.resent_lost = 0

    def resend_loss(self, loss: float, seed: int) -> None:
        self._resend_loss = loss
        self._resend_rng = random.Random(f"voice-loss/resend/{loss}/{seed}")

    def decide(self, sequence_number: int) -> bool:
        if self.first is None:
            self.first = sequence_number
        index = (sequence_number - self.first) & 0xFFFF
        self.seen += 1
        if index in self._judged:
            self.resent += 1
            lost = self._resend_loss > 0 and self._resend_rng.random() < self._resend_loss
            self.resent_lost += lost
            return lost
        self._judged.add(index)
        lost = index < len(self.mask) and self.mask[index]
        if lost:
            self.dropped += 1
            self.dropped_indices.append(index)
        return lost

    def datagram(self, data: bytes) -> bool:
        """Whether to lose this arriving UDP datagram: only (S)RTP packets are judged.

        The RTP header travels in the clear under SRTP; with rtcp-mux, RTCP is told apart by its
        packet type (200-204, RFC 5761), STUN and DTLS by their first byte (RFC 7983).
        """
        if len(data) < 12 or not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
            return False
        return self.decide(int.from_bytes(data[2:4], "big"))
