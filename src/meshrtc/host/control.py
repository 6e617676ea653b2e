"""The supervisor ⇄ worker control protocol, sans-IO (docs/host.md#the-control-protocol).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one object
with ``v`` (the protocol version) and ``type``. The channel is a socketpair between two processes of
the same install, so the format favours being easy to read in a debugger and impossible to
misframe over compactness: media never crosses it, only control and (next) signaling.

Why so strict: a worker runs trusted code, so a malformed frame does not mean an attacker, it means
the channel is corrupt (a bug, a partial write from a dying process, the wrong fd). Nothing after a
corrupt frame can be trusted, so :class:`FrameDecoder` raises one typed
:class:`ControlProtocolError` and stays failed; the supervisor then kills the worker. The length is
checked against the maximum as soon as the 4-byte header is in, before any of the body is buffered,
so a corrupt length cannot make the supervisor allocate or wait for gigabytes.

Like ``signaling/protocol.py`` this module does no I/O and knows no clock: bytes in, messages out.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar, Final, TypeVar

import attrs

from meshrtc.errors import MeshRtcError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "SUPERVISOR_TO_WORKER",
    "WORKER_TO_SUPERVISOR",
    "Bye",
    "ControlProtocolError",
    "FrameDecoder",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "ProtocolErrorKind",
    "Shutdown",
    "decode_body",
    "encode",
]

#: Bumped on any change a peer of the previous version would misread. Adding an optional field is
#: not such a change (unknown fields are ignored); removing one or changing a meaning is.
PROTOCOL_VERSION: Final = 1
#: Control messages are a few hundred bytes; signaling relay (next) carries SDP of a few KiB. One
#: MiB leaves room for a stats snapshot while bounding what a corrupt length can cost.
DEFAULT_MAX_FRAME: Final = 1 << 20
_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


class ProtocolErrorKind(enum.StrEnum):
    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_VERSION = "wrong_version"
    UNEXPECTED = "unexpected"
    TRUNCATED = "truncated"


class ControlProtocolError(MeshRtcError):
    """The control channel carried something no correct peer sends; the channel is unusable."""

    def __init__(self, kind: ProtocolErrorKind, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        #: Whole messages that came before the bad frame in the same :meth:`FrameDecoder.feed`;
        #: they were sent by a then-healthy peer (its hello, say), so the owner may still act on them.
        self.decoded: list[Message] = []
        super().__init__(f"control protocol error ({kind}): {detail}")


class _MessageBase:
    """Shared by every message class: its wire ``type`` name."""

    TYPE: ClassVar[str]


_M = TypeVar("_M", bound=type[_MessageBase])
#: Wire type name -> message class, filled by :func:`_message`.
MESSAGE_TYPES: dict[str, type[_MessageBase]] = {}
# Per class: (field name, checker) in declaration order, derived once from the attrs annotations.
_FIELD_CHECKS: dict[type[_MessageBase], tuple[tuple[str, Callable[[object], bool]], ...]] = {}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: object) -> bool:
    # JSON has one number type: an integral float may arrive as an int.
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _is_str(value: object) -> bool:
    return isinstance(value, str)


_CHECKERS: dict[type, Callable[[object], bool]] = {int: _is_int, float: _is_float, str: _is_str}


def _message(type_name: str) -> Callable[[_M], _M]:
    """Register a message class under its wire name and derive its field checks."""

    def register(cls: _M) -> _M:
        attrs.resolve_types(cls)  # type: ignore[type-var]
        checks = []
        for field in attrs.fields(cls):  # type: ignore[arg-type]
            checker = _CHECKERS.get(field.type)
            if checker is None:
                raise TypeError(f"{cls.__name__}.{field.name}: unsupported type {field.type!r}")
            checks.append((field.name, checker))
        if type_name in MESSAGE_TYPES:
            raise TypeError(f"two control messages named {type_name!r}")
        cls.TYPE = type_name
        MESSAGE_TYPES[type_name] = cls
        _FIELD_CHECKS[cls] = tuple(checks)
        return cls

    return register


@_message("hello")
@attrs.frozen
class Hello(_MessageBase):
    """Worker → supervisor, first frame: who I am. Its ``v`` is the worker's protocol version, so a
    worker from another install is refused on its first frame."""

    worker_id: str
    pid: int


@_message("ping")
@attrs.frozen
class Ping(_MessageBase):
    """Supervisor → worker liveness probe; ``clock`` is the sender's monotonic clock (seconds)."""

    seq: int
    clock: float


@_message("pong")
@attrs.frozen
class Pong(_MessageBase):
    """Worker → supervisor answer to the :class:`Ping` with the same ``seq``; ``clock`` is the
    worker's own monotonic clock when it answered (the supervisor times the round trip itself)."""

    seq: int
    clock: float


@_message("shutdown")
@attrs.frozen
class Shutdown(_MessageBase):
    """Supervisor → worker: take no new work, end what you host within ``drain_deadline`` seconds,
    then send :class:`Bye` and exit. Relative seconds, because clocks are per process."""

    drain_deadline: float


@_message("bye")
@attrs.frozen
class Bye(_MessageBase):
    """Worker → supervisor, last frame before a deliberate exit."""

    reason: str = "shutdown"


Message = Hello | Ping | Pong | Shutdown | Bye
#: Which side may send what; a frame in the wrong direction is a protocol error.
SUPERVISOR_TO_WORKER: Final[frozenset[str]] = frozenset({Ping.TYPE, Shutdown.TYPE})
WORKER_TO_SUPERVISOR: Final[frozenset[str]] = frozenset({Hello.TYPE, Pong.TYPE, Bye.TYPE})


def encode(message: Message, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame for ``message``; refuses one the peer would reject as oversize."""
    body_obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.TYPE}
    body_obj.update(attrs.asdict(message))
    body = json.dumps(body_obj, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > max_frame:
        raise ControlProtocolError(
            ProtocolErrorKind.OVERSIZE, f"{message.TYPE} is {len(body)} bytes > {max_frame}"
        )
    return _HEADER.pack(len(body)) + body


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes, *, accept: Collection[str] | None = None) -> Message:
    """The message in one frame body (without its header); ``accept`` limits the types allowed."""
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: deeply nested arrays ("[[[[...") are valid JSON the parser cannot hold.
        raise ControlProtocolError(ProtocolErrorKind.BAD_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise ControlProtocolError(ProtocolErrorKind.BAD_MESSAGE, "a frame must hold an object")
    version = obj.get("v")
    if version != PROTOCOL_VERSION or not _is_int(version):
        raise ControlProtocolError(
            ProtocolErrorKind.WRONG_VERSION, f"v={version!r}, this side speaks {PROTOCOL_VERSION}"
        )
    type_name = obj.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ControlProtocolError(ProtocolErrorKind.UNKNOWN_TYPE, f"type={type_name!r}")
    if accept is not None and type_name not in accept:
        raise ControlProtocolError(
            ProtocolErrorKind.UNEXPECTED, f"{type_name} is not sent in this direction"
        )
    kwargs: dict[str, object] = {}
    for name, check in _FIELD_CHECKS[cls]:
        if name not in obj:
            if attrs.fields_dict(cls)[name].default is not attrs.NOTHING:  # type: ignore[arg-type]
                continue
            raise ControlProtocolError(ProtocolErrorKind.BAD_MESSAGE, f"{type_name}: no {name!r}")
        if not check(obj[name]):
            raise ControlProtocolError(
                ProtocolErrorKind.BAD_MESSAGE, f"{type_name}.{name}={obj[name]!r}"
            )
        kwargs[name] = obj[name]
    message: Message = cls(**kwargs)  # type: ignore[assignment]
    return message


class FrameDecoder:
    """Bytes from the channel in, whole messages out, in any chunking.

    After the first error every later call raises the same error: a corrupt stream cannot be
    resynchronised (there is no frame marker to search for), and the owner must drop the channel.
    """

    def __init__(
        self, *, max_frame: int = DEFAULT_MAX_FRAME, accept: Iterable[str] | None = None
    ) -> None:
        self.max_frame = max_frame
        self.accept = frozenset(accept) if accept is not None else None
        self._buffer = bytearray()
        self._need: int | None = None  # body length once the header is in
        self._error: ControlProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than header + max_frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._error is not None:
            raise self._error
        messages: list[Message] = []
        try:
            self._feed(data, messages)
        except ControlProtocolError as exc:
            exc.decoded = messages
            self._error = exc
            self._buffer.clear()
            raise
        return messages

    def _feed(self, data: bytes, messages: list[Message]) -> None:
        view = memoryview(data)
        while view:
            if self._need is None:
                take = min(HEADER_SIZE - len(self._buffer), len(view))
                self._buffer += view[:take]
                view = view[take:]
                if len(self._buffer) < HEADER_SIZE:
                    break
                (length,) = _HEADER.unpack(self._buffer)
                self._buffer.clear()
                if length > self.max_frame:
                    raise ControlProtocolError(
                        ProtocolErrorKind.OVERSIZE, f"frame of {length} bytes > {self.max_frame}"
                    )
                self._need = length
            take = min(self._need - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == self._need:
                messages.append(decode_body(bytes(self._buffer), accept=self.accept))
                self._buffer.clear()
                self._need = None

    def eof(self) -> None:
        """The channel closed: a partial frame left over means the peer died mid-write."""
        if self._error is not None:
            raise self._error
        if self._buffer or self._need is not None:
            self._error = ControlProtocolError(
                ProtocolErrorKind.TRUNCATED, "the channel closed inside a frame"
            )
            raise self._error
