"""The VP9 RTP payload format (RFC 9628): descriptor codec, payloader, depayloader, keyframe test.

aiortc 1.16 has no VP9, and VP9 is meshrtc's default video codec, so meshrtc carries the payload
format itself. This module is sans-IO and pure (no codec library, no clock, no randomness): the rtc
layer feeds it encoded frames and RTP payloads and does the I/O.

Every RTP payload starts with a *payload descriptor*; its first byte is ``|I|P|L|F|B|E|V|Z|``::

         0 1 2 3 4 5 6 7
        +-+-+-+-+-+-+-+-+
        |I|P|L|F|B|E|V|Z|  I: PictureID present    P: inter-picture predicted
        +-+-+-+-+-+-+-+-+  L: layer indices present F: flexible mode
   I:   |M| PICTURE ID  |  B: start of a frame     E: end of a frame
   M:   | EXTENDED PID  |  V: scalability structure Z: not a reference for upper spatial layers
   L:   | TID |U| SID |D|
        |   TL0PICIDX   |  (non-flexible mode only)
   P,F: | P_DIFF      |N|  (flexible mode, up to 3 times)
   V:   | SS ...        |

What meshrtc *sends* is the simple, widely interoperable subset libwebrtc also sends for one
spatial and one temporal layer: non-flexible mode, a 15-bit PictureID on every packet, optionally
layer indices with TL0PICIDX, and a scalability structure (one layer, its resolution, a one-picture
group referencing the previous picture) on the first packet of every keyframe. What it *accepts* is
the whole descriptor syntax, flexible mode included; anything that does not parse is refused with
:class:`Vp9PayloadError`, which names the field. :func:`parse_descriptor` is the only descriptor
parser: :func:`is_keyframe` (and so :mod:`meshrtc.media.keyframe`) uses it too.

Frames are reassembled per *layer frame* (``B`` … ``E``) by :class:`Vp9Depayloader`, which drops a
frame as soon as one of its packets is missing: a VP9 frame with a hole cannot be decoded, and
handing the decoder a truncated one only costs a decode error and a later keyframe anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from meshrtc.errors import ConfigError, MeshRtcError

__all__ = [
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "MAX_PICTURE_ID",
    "DepayloaderStats",
    "FrameHeader",
    "LayerIndices",
    "PayloadDescriptor",
    "PictureGroupEntry",
    "ScalabilityStructure",
    "Vp9Depayloader",
    "Vp9Frame",
    "Vp9PayloadError",
    "Vp9Payloader",
    "depayload_frame",
    "is_keyframe",
    "parse_descriptor",
    "parse_frame_header",
]

# Byte 0 of the descriptor.
_I: Final = 0x80
_P: Final = 0x40
_L: Final = 0x20
_F: Final = 0x10
_B: Final = 0x08
_E: Final = 0x04
_V: Final = 0x02
_Z: Final = 0x01

#: The largest 15-bit PictureID; the payloader counts modulo ``MAX_PICTURE_ID + 1``.
MAX_PICTURE_ID: Final = 0x7FFF
#: Flexible mode lists at most three reference pictures per frame (the N bit of the third is 0).
MAX_REFERENCES: Final = 3
#: Largest RTP payload the payloader makes, descriptor included. 1100 bytes of payload plus the RTP
#: header, meshrtc's header extensions, the SRTP tag, UDP and IPv6 stays under the 1280-byte IPv6
#: minimum MTU, so a frame is never fragmented by IP on any path WebRTC runs over.
DEFAULT_MAX_PAYLOAD_SIZE: Final = 1100


class Vp9PayloadError(MeshRtcError, ValueError):
    """A VP9 RTP payload (descriptor) or frame header that does not follow RFC 9628 / the VP9
    bitstream; the message names the field. A ``ValueError`` too, because that is what aiortc's
    receive path catches to drop a packet it cannot parse."""


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise Vp9PayloadError(f"{name} {value} is out of range [{low}, {high}]")


@attrs.frozen(slots=True)
class LayerIndices:
    """The L byte ``|TID|U|SID|D|`` and, in non-flexible mode, TL0PICIDX."""

    temporal_id: int = 0
    switching_up: bool = False
    spatial_id: int = 0
    inter_layer_dependency: bool = False
    #: Required in non-flexible mode, absent (None) in flexible mode.
    tl0_pic_idx: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_range("TID", self.temporal_id, 0, 7)
        _check_range("SID", self.spatial_id, 0, 7)
        if self.tl0_pic_idx is not None:
            _check_range("TL0PICIDX", self.tl0_pic_idx, 0, 255)


@attrs.frozen(slots=True)
class PictureGroupEntry:
    """One picture of the scalability structure's picture group: its temporal layer, its
    switching-up flag and the PictureID differences of the pictures it references."""

    temporal_id: int
    switching_up: bool = False
    references: tuple[int, ...] = ()

    def __attrs_post_init__(self) -> None:
        _check_range("picture group TID", self.temporal_id, 0, 7)
        _check_range("picture group reference count (R)", len(self.references), 0, 3)
        for diff in self.references:
            _check_range("picture group P_DIFF", diff, 1, 255)


@attrs.frozen(slots=True)
class ScalabilityStructure:
    """The SS (V bit): how many spatial layers, optionally their resolutions (Y) and the picture
    group (G) that tells a non-flexible receiver which pictures each one references."""

    spatial_layers: int = 1
    #: ``(width, height)`` per spatial layer, or None when Y is clear.
    resolutions: tuple[tuple[int, int], ...] | None = None
    #: The picture group, or None when G is clear.
    picture_group: tuple[PictureGroupEntry, ...] | None = None

    def __attrs_post_init__(self) -> None:
        _check_range("N_S + 1 (spatial layers)", self.spatial_layers, 1, 8)
        if self.resolutions is not None:
            if len(self.resolutions) != self.spatial_layers:
                raise Vp9PayloadError(
                    f"{len(self.resolutions)} resolutions for {self.spatial_layers} spatial layers"
                )
            for width, height in self.resolutions:
                _check_range("SS width", width, 0, 0xFFFF)
                _check_range("SS height", height, 0, 0xFFFF)
        if self.picture_group is not None:
            _check_range("N_G (pictures in the group)", len(self.picture_group), 0, 255)

    def __bytes__(self) -> bytes:
        flags = (self.spatial_layers - 1) << 5
        out = bytearray(1)
        if self.resolutions is not None:
            flags |= 0x10
            for width, height in self.resolutions:
                out += width.to_bytes(2, "big") + height.to_bytes(2, "big")
        if self.picture_group is not None:
            flags |= 0x08
            out.append(len(self.picture_group))
            for entry in self.picture_group:
                out.append(
                    (entry.temporal_id << 5)
                    | (0x10 if entry.switching_up else 0)
                    | (len(entry.references) << 2)
                )
                out += bytes(entry.references)
        out[0] = flags
        return bytes(out)


@attrs.frozen(slots=True)
class PayloadDescriptor:
    """One RTP payload's VP9 descriptor. Constructing an inconsistent one raises
    :class:`Vp9PayloadError`, so whatever :func:`bytes` makes of it parses back to it."""

    #: B: the first packet of a layer frame.
    start_of_frame: bool
    #: E: the last packet of a layer frame.
    end_of_frame: bool
    #: P: the frame is predicted from earlier pictures (P=0 on a frame start: a keyframe).
    inter_predicted: bool = False
    #: I: the PictureID, or None when absent.
    picture_id: int | None = None
    #: M: the PictureID is sent in 15 bits (otherwise 7).
    long_picture_id: bool = True
    #: F: flexible mode (references in the descriptor instead of a picture group).
    flexible: bool = False
    #: L: layer indices (and TL0PICIDX in non-flexible mode).
    layer: LayerIndices | None = None
    #: P_DIFF list: flexible mode, inter-predicted frames only (1 to 3 entries).
    references: tuple[int, ...] = ()
    #: V: the scalability structure.
    scalability: ScalabilityStructure | None = None
    #: Z: not used as a reference by upper spatial layers.
    not_upper_reference: bool = False

    def __attrs_post_init__(self) -> None:
        if self.picture_id is not None:
            _check_range("PictureID", self.picture_id, 0, 0x7FFF if self.long_picture_id else 0x7F)
        if self.layer is not None:
            if self.flexible and self.layer.tl0_pic_idx is not None:
                raise Vp9PayloadError("TL0PICIDX is only sent in non-flexible mode (F=0)")
            if not self.flexible and self.layer.tl0_pic_idx is None:
                raise Vp9PayloadError("non-flexible mode with layer indices (L=1) needs TL0PICIDX")
        if self.flexible and self.inter_predicted:
            _check_range("P_DIFF count", len(self.references), 1, MAX_REFERENCES)
        elif self.references:
            raise Vp9PayloadError("P_DIFF is only sent in flexible mode for inter-predicted frames")
        for diff in self.references:
            _check_range("P_DIFF", diff, 1, 0x7F)

    @property
    def keyframe_start(self) -> bool:
        """The first packet of a base-layer frame that is not inter-predicted: a decoder can start here."""
        return (
            self.start_of_frame
            and not self.inter_predicted
            and (self.layer is None or self.layer.spatial_id == 0)
        )

    def __bytes__(self) -> bytes:
        b0 = (
            (_P if self.inter_predicted else 0)
            | (_F if self.flexible else 0)
            | (_B if self.start_of_frame else 0)
            | (_E if self.end_of_frame else 0)
            | (_Z if self.not_upper_reference else 0)
        )
        out = bytearray(1)
        pid = self.picture_id
        if pid is not None:
            b0 |= _I
            if self.long_picture_id:
                out += bytes((0x80 | (pid >> 8), pid & 0xFF))
            else:
                out.append(pid)
        layer = self.layer
        if layer is not None:
            b0 |= _L
            out.append(
                (layer.temporal_id << 5)
                | (0x10 if layer.switching_up else 0)
                | (layer.spatial_id << 1)
                | (1 if layer.inter_layer_dependency else 0)
            )
            if layer.tl0_pic_idx is not None:
                out.append(layer.tl0_pic_idx)
        refs = self.references
        for i, diff in enumerate(refs):
            out.append((diff << 1) | (1 if i < len(refs) - 1 else 0))
        if self.scalability is not None:
            b0 |= _V
            out += bytes(self.scalability)
        out[0] = b0
        return bytes(out)


def _truncated(field: str) -> Vp9PayloadError:
    return Vp9PayloadError(f"VP9 payload descriptor truncated: {field} missing")


def parse_descriptor(payload: bytes | memoryview) -> tuple[PayloadDescriptor, int]:
    """Parse the descriptor at the start of ``payload``; returns it and where the VP9 data starts.

    Raises :class:`Vp9PayloadError` naming the field when the payload is empty or ends inside the
    descriptor, when flexible mode lists more than three references, or when a value is invalid
    (a P_DIFF of 0, which would reference the picture itself).
    """
    size = len(payload)
    if size == 0:
        raise Vp9PayloadError("empty RTP payload: no VP9 payload descriptor")
    b0 = payload[0]
    pos = 1
    picture_id: int | None = None
    long_picture_id = True
    if b0 & _I:
        if pos >= size:
            raise _truncated("PictureID (I=1)")
        m = payload[pos]
        if m & 0x80:
            if pos + 1 >= size:
                raise _truncated("extended PictureID (M=1)")
            picture_id = ((m & 0x7F) << 8) | payload[pos + 1]
            pos += 2
        else:
            picture_id = m
            long_picture_id = False
            pos += 1
    flexible = bool(b0 & _F)
    layer: LayerIndices | None = None
    if b0 & _L:
        if pos >= size:
            raise _truncated("layer indices (L=1)")
        li = payload[pos]
        pos += 1
        tl0: int | None = None
        if not flexible:
            if pos >= size:
                raise _truncated("TL0PICIDX (L=1, F=0)")
            tl0 = payload[pos]
            pos += 1
        layer = LayerIndices(li >> 5, bool(li & 0x10), (li >> 1) & 0x07, bool(li & 0x01), tl0)
    references: tuple[int, ...] = ()
    if flexible and b0 & _P:
        refs: list[int] = []
        while True:
            if pos >= size:
                raise _truncated("P_DIFF (F=1, P=1)")
            octet = payload[pos]
            pos += 1
            refs.append(octet >> 1)
            if not octet & 0x01:
                break
            if len(refs) == MAX_REFERENCES:
                raise Vp9PayloadError("more than 3 P_DIFF reference indices (N=1 on the third)")
        references = tuple(refs)
    scalability: ScalabilityStructure | None = None
    if b0 & _V:
        scalability, pos = _parse_scalability(payload, pos)
    descriptor = PayloadDescriptor(
        start_of_frame=bool(b0 & _B),
        end_of_frame=bool(b0 & _E),
        inter_predicted=bool(b0 & _P),
        picture_id=picture_id,
        long_picture_id=long_picture_id,
        flexible=flexible,
        layer=layer,
        references=references,
        scalability=scalability,
        not_upper_reference=bool(b0 & _Z),
    )
    return descriptor, pos


def _parse_scalability(payload: bytes | memoryview, pos: int) -> tuple[ScalabilityStructure, int]:
    size = len(payload)
    if pos >= size:
        raise _truncated("scalability structure (V=1)")
    head = payload[pos]
    pos += 1
    layers = (head >> 5) + 1
    resolutions: tuple[tuple[int, int], ...] | None = None
    if head & 0x10:  # Y
        if pos + 4 * layers > size:
            raise _truncated(f"SS resolutions ({layers} spatial layers, Y=1)")
        sizes = []
        for _ in range(layers):
            width = (payload[pos] << 8) | payload[pos + 1]
            height = (payload[pos + 2] << 8) | payload[pos + 3]
            sizes.append((width, height))
            pos += 4
        resolutions = tuple(sizes)
    group: tuple[PictureGroupEntry, ...] | None = None
    if head & 0x08:  # G
        if pos >= size:
            raise _truncated("SS N_G (G=1)")
        count = payload[pos]
        pos += 1
        entries = []
        for i in range(count):
            if pos >= size:
                raise _truncated(f"SS picture group entry {i}")
            octet = payload[pos]
            pos += 1
            n_refs = (octet >> 2) & 0x03
            if pos + n_refs > size:
                raise _truncated(f"SS picture group entry {i} P_DIFF")
            refs = tuple(payload[pos : pos + n_refs])
            pos += n_refs
            entries.append(PictureGroupEntry(octet >> 5, bool(octet & 0x10), refs))
        group = tuple(entries)
    return ScalabilityStructure(layers, resolutions, group), pos


def is_keyframe(payload: bytes | memoryview) -> bool:
    """The first packet of a base-layer frame that is not inter-predicted (B=1, P=0, SID 0).

    Never raises: a payload whose descriptor does not parse is not a keyframe.
    """
    try:
        descriptor, _ = parse_descriptor(payload)
    except Vp9PayloadError:
        return False
    return descriptor.keyframe_start


# ---------------------------------------------------------------------------------------------
# The VP9 bitstream's uncompressed header (VP9 bitstream specification, section 6.2)


@attrs.frozen(slots=True)
class FrameHeader:
    """What the payloader needs from a VP9 frame: is it a keyframe, and (for one) its size."""

    profile: int
    show_existing_frame: bool
    keyframe: bool
    show_frame: bool
    error_resilient: bool
    #: Frame size; known for keyframes only (inter frames may inherit it).
    width: int | None = None
    height: int | None = None


class _Bits:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data
        self._pos = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise Vp9PayloadError("VP9 frame header truncated")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value


_SYNC_CODE: Final = 0x498342
_CS_RGB: Final = 7


def parse_frame_header(data: bytes | memoryview) -> FrameHeader:
    """Read the start of a VP9 frame's uncompressed header (enough for keyframe and size).

    Raises :class:`Vp9PayloadError` when ``data`` is not the start of a VP9 frame.
    """
    bits = _Bits(data)
    if bits.read(2) != 2:
        raise Vp9PayloadError("not a VP9 frame: frame_marker is not 2")
    profile = bits.read(1)
    profile |= bits.read(1) << 1
    if profile == 3 and bits.read(1):
        raise Vp9PayloadError("VP9 profile 3 reserved bit set")
    if bits.read(1):  # show_existing_frame
        bits.read(3)
        return FrameHeader(profile, True, False, True, False)
    keyframe = bits.read(1) == 0
    show_frame = bool(bits.read(1))
    error_resilient = bool(bits.read(1))
    if not keyframe:
        return FrameHeader(profile, False, False, show_frame, error_resilient)
    if bits.read(24) != _SYNC_CODE:
        raise Vp9PayloadError("VP9 keyframe without the frame sync code")
    if profile >= 2:
        bits.read(1)  # ten_or_twelve_bit
    color_space = bits.read(3)
    if color_space != _CS_RGB:
        bits.read(1)  # color_range
        if profile in (1, 3):
            bits.read(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        bits.read(1)  # reserved_zero
    width = bits.read(16) + 1
    height = bits.read(16) + 1
    return FrameHeader(profile, False, True, show_frame, error_resilient, width, height)


# ---------------------------------------------------------------------------------------------
# Payloader


class Vp9Payloader:
    """Split encoded VP9 frames into RTP payloads of at most ``max_payload_size`` bytes.

    Non-flexible mode, one spatial layer. Every packet carries the 15-bit PictureID, which goes up
    by one per frame (start it anywhere, e.g. at random like libwebrtc: ``picture_id``). With
    ``layer_indices`` every packet also carries ``TID=0, SID=0`` and a TL0PICIDX that goes up by one
    per frame (all frames are in temporal layer 0). Keyframes carry the scalability structure on
    their first packet. The payloads of one frame are balanced in size, so the last is not a runt.
    """

    def __init__(
        self,
        *,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        picture_id: int = 0,
        layer_indices: bool = False,
        tl0_pic_idx: int = 0,
    ) -> None:
        if not 0 <= picture_id <= MAX_PICTURE_ID:
            raise ConfigError("picture_id", picture_id, f"0..{MAX_PICTURE_ID}")
        if not 0 <= tl0_pic_idx <= 255:
            raise ConfigError("tl0_pic_idx", tl0_pic_idx, "0..255")
        self.picture_id = picture_id
        self.tl0_pic_idx = tl0_pic_idx
        self.layer_indices = layer_indices
        # The largest descriptor this payloader writes: keyframe start with a full SS.
        worst = self._descriptor(True, True, True, (0xFFFF, 0xFFFF))
        minimum = len(bytes(worst)) + 1
        if max_payload_size < minimum:
            raise ConfigError("max_payload_size", max_payload_size, f">= {minimum} bytes")
        self.max_payload_size = max_payload_size
        #: Frames and RTP payloads made so far.
        self.frames = 0
        self.packets = 0

    def _descriptor(
        self, start: bool, end: bool, keyframe: bool, resolution: tuple[int, int] | None
    ) -> PayloadDescriptor:
        scalability = None
        if start and keyframe:
            scalability = ScalabilityStructure(
                1,
                None if resolution is None else (resolution,),
                (PictureGroupEntry(0, False, (1,)),),
            )
        layer = LayerIndices(tl0_pic_idx=self.tl0_pic_idx) if self.layer_indices else None
        return PayloadDescriptor(
            start_of_frame=start,
            end_of_frame=end,
            inter_predicted=not keyframe,
            picture_id=self.picture_id,
            layer=layer,
            scalability=scalability,
        )

    def payload(
        self,
        frame: bytes | memoryview,
        *,
        keyframe: bool,
        resolution: tuple[int, int] | None = None,
    ) -> list[bytes]:
        """The RTP payloads of one encoded frame, in order (the last one gets the RTP marker).

        ``resolution`` goes into the keyframe's scalability structure; None leaves it out. An empty
        frame (an encoder that dropped one) makes no payloads and uses no PictureID.
        """
        size = len(frame)
        if size == 0:
            return []
        first = bytes(self._descriptor(True, False, keyframe, resolution))
        rest = bytes(self._descriptor(False, False, keyframe, resolution))
        first_cap = self.max_payload_size - len(first)
        rest_cap = self.max_payload_size - len(rest)
        count = 1 if size <= first_cap else 1 + -(-(size - first_cap) // rest_cap)
        payloads: list[bytes] = []
        pos = 0
        for i in range(count):
            head = first if i == 0 else rest
            cap = first_cap if i == 0 else rest_cap
            chunk = min(cap, -(-(size - pos) // (count - i)))
            if i == count - 1:
                head = bytes((head[0] | _E,)) + head[1:]
            payloads.append(head + bytes(frame[pos : pos + chunk]))
            pos += chunk
        self.picture_id = (self.picture_id + 1) & MAX_PICTURE_ID
        self.tl0_pic_idx = (self.tl0_pic_idx + 1) & 0xFF
        self.frames += 1
        self.packets += count
        return payloads


# ---------------------------------------------------------------------------------------------
# Depayloader


@attrs.frozen(slots=True)
class Vp9Frame:
    """One reassembled layer frame, ready for the decoder."""

    data: bytes
    rtp_timestamp: int
    #: The first packet's descriptor (PictureID, layer indices, scalability structure).
    descriptor: PayloadDescriptor
    packets: int

    @property
    def keyframe(self) -> bool:
        return self.descriptor.keyframe_start

    @property
    def picture_id(self) -> int | None:
        return self.descriptor.picture_id


@attrs.define
class DepayloaderStats:
    """What a :class:`Vp9Depayloader` did (counters only grow)."""

    frames: int = 0
    #: Frames dropped because a packet was missing (sequence gap, no E before the next B, a
    #: timestamp or PictureID change mid-frame).
    incomplete: int = 0
    #: Packets discarded because the start of their frame was never seen.
    orphans: int = 0
    #: Packets whose descriptor did not parse (each also raised :class:`Vp9PayloadError`).
    malformed: int = 0


class Vp9Depayloader:
    """Reassemble layer frames from RTP packets that arrive in sequence order.

    :meth:`push` returns a :class:`Vp9Frame` when a packet completes one (B … E, consecutive
    sequence numbers, one RTP timestamp, one PictureID) and None otherwise. Anything else is a loss:
    the partial frame is dropped and counted, never handed on. Reordering is the jitter buffer's
    job, before this.
    """

    def __init__(self) -> None:
        self.stats = DepayloaderStats()
        self._parts: list[bytes | memoryview] = []
        self._first: PayloadDescriptor | None = None
        self._next_sequence = 0
        self._timestamp = 0

    @property
    def pending(self) -> bool:
        """A frame has started and not ended yet."""
        return self._first is not None

    def reset(self) -> None:
        """Forget a partial frame (counted as incomplete): the stream restarted or jumped."""
        if self._first is not None:
            self.stats.incomplete += 1
        self._first = None
        self._parts = []

    def push(
        self, payload: bytes | memoryview, *, sequence_number: int, timestamp: int
    ) -> Vp9Frame | None:
        """Take the next RTP payload of the stream. Raises :class:`Vp9PayloadError` when its
        descriptor is malformed or carries no VP9 data (the partial frame is dropped first)."""
        try:
            descriptor, offset = parse_descriptor(payload)
            if offset >= len(payload):
                raise Vp9PayloadError("no VP9 data after the payload descriptor")
        except Vp9PayloadError:
            self.stats.malformed += 1
            self.reset()
            raise
        data = payload[offset:]
        first = self._first
        if descriptor.start_of_frame:
            if first is not None:
                self.reset()  # the previous frame never ended
            first = self._first = descriptor
            self._parts = [data]
            self._timestamp = timestamp
        elif first is None:
            self.stats.orphans += 1
            return None
        elif (
            sequence_number != self._next_sequence
            or timestamp != self._timestamp
            or descriptor.picture_id != first.picture_id
        ):
            self.reset()
            self.stats.orphans += 1
            return None
        else:
            self._parts.append(data)
        self._next_sequence = (sequence_number + 1) & 0xFFFF
        if not descriptor.end_of_frame:
            return None
        parts = self._parts
        self._first = None
        self._parts = []
        self.stats.frames += 1
        return Vp9Frame(b"".join(parts), timestamp, first, len(parts))


def depayload_frame(
    payloads: Sequence[bytes | memoryview], *, first_sequence: int = 0, timestamp: int = 0
) -> Vp9Frame:
    """Reassemble exactly one layer frame from its consecutive payloads.

    Raises :class:`Vp9PayloadError` when a descriptor is malformed or the payloads are not one
    whole frame (no B on the first, no E on the last, or a frame boundary in between).
    """
    depayloader = Vp9Depayloader()
    frame: Vp9Frame | None = None
    for i, payload in enumerate(payloads):
        if frame is not None:
            raise Vp9PayloadError(f"payload {i} follows the end of the frame (E=1)")
        frame = depayloader.push(
            payload, sequence_number=(first_sequence + i) & 0xFFFF, timestamp=timestamp
        )
        if depayloader.stats.orphans or depayloader.stats.incomplete:
            raise Vp9PayloadError(f"payload {i} does not continue the frame (B/E out of place)")
    if frame is None:
        raise Vp9PayloadError("incomplete VP9 frame: the last payload does not have E=1")
    return frame
