"""The signaling protocol, sans-IO: JSON-RPC 2.0 messages, their validation, and request matching.

Everything the server and the client agree on lives here, as plain functions and attrs classes that
never touch a socket or a clock they were not handed (``now`` is monotonic seconds, passed in). The
server and the client only move the strings this module builds and parses, so the protocol can be
tested exhaustively without a network and both ends cannot drift apart. docs/signaling.md is the
reader's version of this module.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from meshrtc.config import PEER_ID_PATTERN
from meshrtc.errors import MeshRtcError

__all__ = [
    "DEFAULT_SESSION_ID",
    "GRANTS",
    "MAX_MESSAGE_SIZE",
    "MAX_SDP_LENGTH",
    "MAX_SDP_LINES",
    "MAX_SDP_MEDIA",
    "MAX_USER_DATA_BYTES",
    "Announce",
    "AnnounceResult",
    "Answer",
    "Capability",
    "Disconnect",
    "ErrorCode",
    "ErrorResponse",
    "IceCandidate",
    "LeaveReason",
    "ListPeers",
    "Message",
    "Method",
    "Notification",
    "Offer",
    "PeerErrorNotice",
    "PeerInfo",
    "PeerJoined",
    "PeerLeft",
    "RateLimiter",
    "Request",
    "RequestTracker",
    "Response",
    "SdpMessage",
    "ServerEvent",
    "SignalingError",
    "encode",
    "lower_id_offers",
    "parse_client_message",
    "parse_notification",
    "parse_params",
    "parse_server_message",
    "validate_candidate",
    "validate_sdp",
]

JSONRPC_VERSION: Final = "2.0"
DEFAULT_SESSION_ID: Final = "default"
#: Largest WebSocket message either side accepts (as ``len()`` of the text); larger closes with 1009.
MAX_MESSAGE_SIZE: Final = 1 << 20
#: Seconds a server holds a dropped peer's id for the holder of its resume secret. A protocol fact:
#: peers hold a live link that long after a ``peer.left`` for a dropped connection.
DEFAULT_RESUME_GRACE: Final = 30.0
#: ``user_data`` is echoed to every peer of the session, so it stays small (compact UTF-8 JSON).
MAX_USER_DATA_BYTES: Final = 1024
#: Request ids are echoed back verbatim; bounding them keeps an error response small.
MAX_ID_STRING_LENGTH: Final = 128
MAX_SAFE_INTEGER: Final = (1 << 53) - 1  # what a JavaScript peer can represent exactly
#: A candidate line is about 100-200 characters; anything much longer is not a candidate.
MAX_CANDIDATE_LENGTH: Final = 2048
#: Bounds checked before an SDP's lines are looked at (one regex per line made a 1 MiB offer of
#: empty ``a=`` lines cost 168 ms of server CPU). aiortc's and browsers' offers for audio, video and
#: data are 3-12 KiB, 60-200 lines and 2-4 ``m=`` sections.
MAX_SDP_LENGTH: Final = 64 * 1024
MAX_SDP_LINES: Final = 2000
MAX_SDP_MEDIA: Final = 64

RequestId: TypeAlias = int | str
JsonObject: TypeAlias = dict[str, Any]


class ErrorCode(enum.IntEnum):
    """JSON-RPC 2.0 error codes, then meshrtc's application codes (-32000 to -32099 are reserved
    by JSON-RPC for implementation-defined server errors)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    PEER_NOT_FOUND = -32000
    NOT_ANNOUNCED = -32001
    INVALID_OFFER = -32002
    INVALID_ANSWER = -32003
    INVALID_CANDIDATE = -32004
    SESSION_FULL = -32005
    PEER_ID_TAKEN = -32006
    FORBIDDEN = -32007
    RATE_LIMITED = -32008
    #: Sent peer to peer in ``peer.error``: the target cannot answer the offer (the reason says why).
    UNANSWERABLE_OFFER = -32009


class Method(enum.StrEnum):
    ANNOUNCE = "peer.announce"
    OFFER = "peer.offer"
    ANSWER = "peer.answer"
    ICE_CANDIDATE = "peer.ice_candidate"
    DISCONNECT = "peer.disconnect"
    LIST = "peer.list"
    #: A peer tells another one that it cannot answer its offer (forwarded like an answer).
    ERROR = "peer.error"
    #: Server → client only.
    JOINED = "peer.joined"
    LEFT = "peer.left"


CLIENT_METHODS: Final = frozenset(
    {
        Method.ANNOUNCE,
        Method.OFFER,
        Method.ANSWER,
        Method.ICE_CANDIDATE,
        Method.DISCONNECT,
        Method.LIST,
        Method.ERROR,
    }
)


class Capability(enum.StrEnum):
    AUDIO = "audio"
    VIDEO = "video"
    DATA = "data"


class LeaveReason(enum.StrEnum):
    """Why a peer left, as ``peer.left`` reports it to the others."""

    DISCONNECT = "disconnect"  # it sent peer.disconnect
    CLOSED = "closed"  # its WebSocket closed
    TIMEOUT = "timeout"  # it stopped answering pings
    MESSAGE_TOO_BIG = "message_too_big"  # it sent more than MAX_MESSAGE_SIZE (closed with 1009)
    RATE_LIMITED = "rate_limited"  # it kept flooding past the rate limit (closed with 1008)
    SLOW_CONSUMER = "slow_consumer"  # it did not read what the server sent it (closed with 1008)
    SHUTDOWN = "shutdown"  # the server is stopping
    ERROR = "error"  # the server failed serving it (a bug; logged, closed with 1011)


class SignalingError(MeshRtcError):
    """A JSON-RPC error: raised by validation here, sent by the server, raised again by the client.

    ``request_id`` is the id of the request it answers, when one could be read (JSON-RPC sends
    ``null`` otherwise).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        data: object = None,
        request_id: RequestId | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id
        super().__init__(f"{message} (code {code})")

    def with_id(self, request_id: RequestId | None) -> SignalingError:
        return SignalingError(self.code, self.message, data=self.data, request_id=request_id)

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(self.request_id, self.code, self.message, self.data)


def _error(code: ErrorCode, message: str) -> SignalingError:
    return SignalingError(int(code), message)


# --- Messages -----------------------------------------------------------------------------------


@attrs.frozen
class Request:
    method: str
    params: JsonObject
    id: RequestId

    def to_json(self) -> JsonObject:
        return {
            "jsonrpc": JSONRPC_VERSION,
            "id": self.id,
            "method": self.method,
            "params": self.params,
        }


@attrs.frozen
class Notification:
    method: str
    params: JsonObject

    def to_json(self) -> JsonObject:
        return {"jsonrpc": JSONRPC_VERSION, "method": self.method, "params": self.params}


@attrs.frozen
class Response:
    id: RequestId
    result: JsonObject

    def to_json(self) -> JsonObject:
        return {"jsonrpc": JSONRPC_VERSION, "id": self.id, "result": self.result}


@attrs.frozen
class ErrorResponse:
    id: RequestId | None
    code: int
    message: str
    data: object = None

    def to_json(self) -> JsonObject:
        error: JsonObject = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": JSONRPC_VERSION, "id": self.id, "error": error}

    def to_exception(self) -> SignalingError:
        return SignalingError(self.code, self.message, data=self.data, request_id=self.id)


Message: TypeAlias = Request | Notification | Response | ErrorResponse


def encode(message: Message) -> str:
    """Compact JSON text. ASCII-only output, so a lone surrogate a peer smuggled in as ``\\ud800``
    is re-escaped rather than breaking the UTF-8 encoder of the WebSocket."""
    return json.dumps(message.to_json(), separators=(",", ":"), allow_nan=False)


# --- Parsing ------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _loads(data: str | bytes) -> object:
    if isinstance(data, bytes):
        raise _error(ErrorCode.PARSE_ERROR, "binary frames are not accepted: send JSON as text")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise _error(ErrorCode.PARSE_ERROR, "parse error: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        raise _error(ErrorCode.PARSE_ERROR, f"parse error: {exc}") from None


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER
    return isinstance(value, str) and len(value) <= MAX_ID_STRING_LENGTH


def parse_client_message(data: str | bytes) -> Request | Notification:
    """Parse what a peer sent to the server.

    Raises :class:`SignalingError` with the JSON-RPC code to answer with; its ``request_id`` is set
    when the message had a usable id, so the error can still be matched by the sender.
    """
    obj = _loads(data)
    if isinstance(obj, list):
        raise _error(ErrorCode.INVALID_REQUEST, "batch requests are not supported")
    if not isinstance(obj, dict):
        raise _error(ErrorCode.INVALID_REQUEST, "a message must be a JSON object")
    has_id = "id" in obj
    request_id = obj.get("id")
    if has_id and not _valid_id(request_id):
        raise _error(
            ErrorCode.INVALID_REQUEST,
            f"id must be a string of at most {MAX_ID_STRING_LENGTH} characters or an integer "
            f"within ±{MAX_SAFE_INTEGER}",
        )
    rid: RequestId | None = request_id if has_id else None
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise _error(ErrorCode.INVALID_REQUEST, '"jsonrpc" must be "2.0"').with_id(rid)
    if "result" in obj or "error" in obj:
        raise _error(ErrorCode.INVALID_REQUEST, "the server accepts no responses").with_id(rid)
    method = obj.get("method")
    if not isinstance(method, str):
        raise _error(ErrorCode.INVALID_REQUEST, '"method" must be a string').with_id(rid)
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise _error(
            ErrorCode.INVALID_PARAMS, '"params" must be an object (by-name parameters)'
        ).with_id(rid)
    extra = sorted(set(obj) - {"jsonrpc", "id", "method", "params"})
    if extra:
        raise _error(ErrorCode.INVALID_REQUEST, f"unknown member {extra[0]!r}").with_id(rid)
    if rid is None:
        return Notification(method, params)
    return Request(method, params, rid)


def parse_server_message(data: str | bytes) -> Response | ErrorResponse | Notification:
    """Parse what the server sent to a client (responses and notifications)."""
    obj = _loads(data)
    if not isinstance(obj, dict) or obj.get("jsonrpc") != JSONRPC_VERSION:
        raise _error(ErrorCode.INVALID_REQUEST, "not a JSON-RPC 2.0 object")
    if "method" in obj:
        method, params = obj["method"], obj.get("params", {})
        if "id" in obj or not isinstance(method, str) or not isinstance(params, dict):
            raise _error(ErrorCode.INVALID_REQUEST, "the server sends notifications only")
        return Notification(method, params)
    rid = obj.get("id")
    if "error" in obj:
        err = obj["error"]
        if not isinstance(err, dict):
            raise _error(ErrorCode.INVALID_REQUEST, '"error" must be an object')
        code, message = err.get("code"), err.get("message")
        if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
            raise _error(ErrorCode.INVALID_REQUEST, "error needs an integer code and a message")
        if rid is not None and not _valid_id(rid):
            raise _error(ErrorCode.INVALID_REQUEST, "bad response id")
        return ErrorResponse(rid, code, message, err.get("data"))
    if "result" in obj:
        result = obj["result"]
        if not isinstance(rid, int | str) or not _valid_id(rid) or not isinstance(result, dict):
            raise _error(ErrorCode.INVALID_REQUEST, "a result needs a valid id and an object")
        return Response(rid, result)
    raise _error(ErrorCode.INVALID_REQUEST, "neither a notification nor a response")


# --- SDP and ICE candidate checks ---------------------------------------------------------------

_SDP_LINE = re.compile(r"^([a-z])=(.*)$")
_SDP_ORIGIN = re.compile(r"^\S+ \S+ \S+ IN IP[46] \S+$")
_SDP_MEDIA = re.compile(r"^[A-Za-z0-9_.-]+ \d{1,5}(/\d+)? [A-Za-z0-9/_.-]+( \S+)+$")
_SDP_TIMING = re.compile(r"^\d+ \d+$")


def validate_sdp(sdp: object, kind: str = "SDP") -> str:
    """Check the shape of an SDP blob (RFC 8866), not its meaning.

    Enough to reject what is clearly not an offer or answer before it reaches another peer's
    ``setRemoteDescription``: ``v=0`` first, ``<type>=<value>`` lines, the mandatory ``o=``, ``s=``
    and ``t=`` session lines and at least one ``m=`` section. Lines end in CRLF or LF. The
    ``ValueError`` message names the line so the sender can fix its generator.
    """
    if not isinstance(sdp, str):
        raise ValueError(f"{kind} must be a string")
    if not sdp:
        raise ValueError(f"{kind} is empty")
    # Cheap bounds first (C-speed scans), so a hostile blob costs a few microseconds per KiB.
    if len(sdp) > MAX_SDP_LENGTH:
        raise ValueError(f"{kind} is {len(sdp)} characters; at most {MAX_SDP_LENGTH} allowed")
    if sdp.count("\n") > MAX_SDP_LINES:
        raise ValueError(f"{kind} has more than {MAX_SDP_LINES} lines")
    if sdp.count("\nm=") > MAX_SDP_MEDIA:
        raise ValueError(f"{kind} has more than {MAX_SDP_MEDIA} 'm=' sections")
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    if lines[-1] == "":
        lines.pop()
    if lines[0] != "v=0":
        raise ValueError(f"{kind} must start with 'v=0', got {lines[0][:40]!r}")
    seen_session: set[str] = set()
    media_lines = 0
    for number, line in enumerate(lines, start=1):
        if "\r" in line or "\n" in line:
            raise ValueError(f"{kind} line {number}: mixed or bare line endings")
        match = _SDP_LINE.match(line)
        if match is None:
            raise ValueError(f"{kind} line {number}: expected '<type>=<value>', got {line[:40]!r}")
        kind_char, value = match.groups()
        if kind_char == "m":
            if not _SDP_MEDIA.match(value):
                raise ValueError(
                    f"{kind} line {number}: bad media line {line[:60]!r} "
                    "(expected 'm=<media> <port> <proto> <fmt> ...')"
                )
            media_lines += 1
        elif media_lines == 0:
            seen_session.add(kind_char)
            if kind_char == "o" and not _SDP_ORIGIN.match(value):
                raise ValueError(
                    f"{kind} line {number}: bad origin {line[:60]!r} (expected "
                    "'o=<username> <sess-id> <sess-version> IN IP4|IP6 <address>')"
                )
            if kind_char == "t" and not _SDP_TIMING.match(value):
                raise ValueError(f"{kind} line {number}: bad timing {line[:40]!r}")
    for required in ("o", "s", "t"):
        if required not in seen_session:
            raise ValueError(f"{kind} has no session-level '{required}=' line")
    if media_lines == 0:
        raise ValueError(f"{kind} has no 'm=' line")
    return sdp


_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{1,32}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
CANDIDATE_TYPES: Final = frozenset({"host", "srflx", "prflx", "relay"})


def _check_address(value: str, what: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        # mDNS (".local") and other FQDN candidates are allowed by RFC 8839.
        if not _HOSTNAME.match(value) or value.replace(".", "").isdigit():
            raise ValueError(f"{what} {value[:60]!r} is not an IP address or host name") from None


def _check_port(value: str, what: str) -> None:
    if not value.isascii() or not value.isdigit() or len(value) > 5 or int(value) > 65535:
        raise ValueError(f"{what} {value[:20]!r} is not 0-65535")


def validate_candidate(candidate: object) -> str:
    """Check an ICE candidate line against the RFC 8839 section 5.1 grammar.

    ``candidate:<foundation> <component> <udp|tcp> <priority> <address> <port> typ
    <host|srflx|prflx|relay> [raddr <a> rport <p>] [<name> <value>]...``, with or without an
    ``a=`` prefix. The empty string is the end-of-candidates marker and is valid.
    """
    if not isinstance(candidate, str):
        raise ValueError("candidate must be a string")
    if candidate == "":
        return candidate
    if len(candidate) > MAX_CANDIDATE_LENGTH:
        raise ValueError(f"candidate is longer than {MAX_CANDIDATE_LENGTH} characters")
    body = candidate.removeprefix("a=")
    if not body.startswith("candidate:"):
        raise ValueError("candidate must start with 'candidate:' (or 'a=candidate:')")
    fields = body[len("candidate:") :].split(" ")
    if len(fields) < 8:
        raise ValueError(
            "candidate needs '<foundation> <component> <transport> <priority> <address> <port> "
            f"typ <type>', got {len(fields)} fields"
        )
    foundation, component, transport, priority, address, port, typ, cand_type = fields[:8]
    if not _ICE_CHARS.match(foundation):
        raise ValueError(f"foundation {foundation[:40]!r} must be 1-32 of A-Z a-z 0-9 + /")
    if not (component.isascii() and component.isdigit() and 1 <= int(component) <= 256):
        raise ValueError(f"component {component[:20]!r} must be 1-256")
    if transport.lower() not in ("udp", "tcp"):
        raise ValueError(f"transport {transport[:20]!r} must be udp or tcp")
    if not (priority.isascii() and priority.isdigit() and len(priority) <= 10):
        raise ValueError(f"priority {priority[:20]!r} must be an integer 0-4294967295")
    if int(priority) > 0xFFFFFFFF:
        raise ValueError(f"priority {priority!r} must be an integer 0-4294967295")
    _check_address(address, "connection address")
    _check_port(port, "port")
    if typ != "typ":
        raise ValueError(f"expected 'typ' after the port, got {typ[:20]!r}")
    if cand_type not in CANDIDATE_TYPES:
        raise ValueError(f"candidate type {cand_type[:20]!r} must be host, srflx, prflx or relay")
    rest = fields[8:]
    if len(rest) % 2:
        raise ValueError("candidate extensions must come as '<name> <value>' pairs")
    for name, value in zip(rest[::2], rest[1::2], strict=True):
        if not _TOKEN.match(name) or not value or "\x00" in value:
            raise ValueError(f"bad candidate extension {name[:20]!r} {value[:20]!r}")
        if name == "raddr":
            _check_address(value, "raddr")
        elif name == "rport":
            _check_port(value, "rport")
    return candidate


# --- Typed parameters ---------------------------------------------------------------------------


def _peer_id(params: Mapping[str, Any], key: str, what: str | None = None) -> str:
    value = params.get(key)
    # fullmatch: the pattern's ``$`` would let ``"bob\n"`` through as a distinct peer or session.
    if not isinstance(value, str) or not PEER_ID_PATTERN.fullmatch(value):
        shown = "missing" if key not in params else repr(value)[:80]
        raise _error(
            ErrorCode.INVALID_PARAMS,
            f"{what or key} must be 1-64 characters from A-Z a-z 0-9 _ - (got {shown})",
        )
    return value


def _only(params: Mapping[str, Any], method: str, allowed: Iterable[str]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise _error(ErrorCode.INVALID_PARAMS, f"{method}: unknown parameter {extra[0]!r}")


def _user_data(value: object) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(ErrorCode.INVALID_PARAMS, "user_data must be a JSON object")
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except (RecursionError, ValueError, UnicodeEncodeError):
        raise _error(ErrorCode.INVALID_PARAMS, "user_data is not encodable JSON") from None
    if size > MAX_USER_DATA_BYTES:
        raise _error(
            ErrorCode.INVALID_PARAMS,
            f"user_data is {size} bytes of JSON; at most {MAX_USER_DATA_BYTES} allowed",
        )
    return value


def _incarnation(params: Mapping[str, Any]) -> str | None:
    """Optional (older clients and pages send none); bounded like an id, as it is relayed."""
    if params.get("incarnation") is None:
        return None
    return _peer_id(params, "incarnation")


def _capabilities(value: object) -> tuple[Capability, ...]:
    allowed = ", ".join(repr(c.value) for c in Capability)
    if not isinstance(value, list) or not value:
        raise _error(
            ErrorCode.INVALID_PARAMS, f"capabilities must be a non-empty list of {allowed}"
        )
    out: list[Capability] = []
    for item in value:
        if not isinstance(item, str) or item not in Capability.__members__.values():
            raise _error(
                ErrorCode.INVALID_PARAMS,
                f"unknown capability {repr(item)[:40]}; allowed {allowed}",
            )
        if item in out:
            raise _error(ErrorCode.INVALID_PARAMS, f"capability {item!r} listed twice")
        out.append(Capability(item))
    return tuple(out)


@attrs.frozen
class PeerInfo:
    """What the others learn about a peer when it joins (announce result, peer.joined)."""

    peer_id: str
    capabilities: tuple[Capability, ...]
    user_data: JsonObject = attrs.field(factory=dict)
    #: Names the client process behind the id (random per client instance, optional): the same
    #: incarnation after a drop is the same process whose media link may still be alive; another
    #: is a restarted one whose old link is gone (docs/signaling.md, "Re-announcing").
    incarnation: str | None = None
    #: What the peer's access token grants (sorted names from :data:`GRANTS`), set by a server
    #: with a secret, never by the peer; ``None``: no token, everything. A meshrtc peer takes no
    #: media from a peer without ``publish`` and sends none to one without ``subscribe``.
    grants: tuple[str, ...] | None = None

    def may(self, grant: str) -> bool:
        """True when the peer's token grants ``grant`` (always without a token)."""
        return self.grants is None or grant in self.grants

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "peer_id": self.peer_id,
            "capabilities": [c.value for c in self.capabilities],
            "user_data": self.user_data,
        }
        if self.incarnation is not None:
            out["incarnation"] = self.incarnation
        if self.grants is not None:
            out["grants"] = list(self.grants)
        return out

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> PeerInfo:
        _only(
            params,
            Method.JOINED,
            ("peer_id", "capabilities", "user_data", "incarnation", "grants"),
        )
        return cls(
            _peer_id(params, "peer_id"),
            _capabilities(params.get("capabilities")),
            _user_data(params.get("user_data")),
            _incarnation(params),
            grants=_grants(params.get("grants")),
        )


#: Grant names a token may carry (meshrtc.signaling.auth.Grant); PeerInfo.grants uses them.
GRANTS: Final = ("data", "publish", "subscribe")


def _grants(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(g, str) and g in GRANTS for g in value):
        raise _error(ErrorCode.INVALID_PARAMS, f"grants must be a list of some of {list(GRANTS)}")
    return tuple(sorted(set(value)))


@attrs.frozen
class Announce:
    peer_id: str
    capabilities: tuple[Capability, ...]
    session_id: str = DEFAULT_SESSION_ID
    user_data: JsonObject = attrs.field(factory=dict)
    token: str | None = None
    #: The secret of an earlier announce of this id, to reclaim it within the server's grace period.
    resume: str | None = None
    #: The announcing client instance (see :attr:`PeerInfo.incarnation`); passed on to the others.
    incarnation: str | None = None

    METHOD: ClassVar[Method] = Method.ANNOUNCE

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.peer_id, self.capabilities, self.user_data, self.incarnation)

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "peer_id": self.peer_id,
            "capabilities": [c.value for c in self.capabilities],
            "session_id": self.session_id,
        }
        if self.user_data:
            out["user_data"] = self.user_data
        if self.token is not None:
            out["token"] = self.token
        if self.resume is not None:
            out["resume"] = self.resume
        if self.incarnation is not None:
            out["incarnation"] = self.incarnation
        return out

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> Announce:
        _only(
            params,
            cls.METHOD,
            (
                "peer_id",
                "capabilities",
                "session_id",
                "user_data",
                "token",
                "resume",
                "incarnation",
            ),
        )
        token = params.get("token")
        if token is not None and not isinstance(token, str):
            raise _error(ErrorCode.INVALID_PARAMS, "token must be a string")
        resume = params.get("resume")
        if resume is not None and (not isinstance(resume, str) or len(resume) > 128):
            raise _error(ErrorCode.INVALID_PARAMS, "resume must be a string of at most 128")
        session_id = DEFAULT_SESSION_ID
        if params.get("session_id") is not None:
            session_id = _peer_id(params, "session_id")
        return cls(
            peer_id=_peer_id(params, "peer_id"),
            capabilities=_capabilities(params.get("capabilities")),
            session_id=session_id,
            user_data=_user_data(params.get("user_data")),
            token=token,
            resume=resume,
            incarnation=_incarnation(params),
        )


@attrs.frozen
class AnnounceResult:
    peer_id: str
    session_id: str
    #: The other peers of the session, in the order they joined: the newcomer offers to each.
    peers: tuple[PeerInfo, ...]
    #: Server wall-clock time (Unix seconds), for logs; never used for intervals.
    server_time: float
    #: A secret that lets this client (and only it) reclaim its id within the server's grace
    #: period after its connection drops (``peer.announce`` with ``resume``).
    resume: str | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "peer_id": self.peer_id,
            "session_id": self.session_id,
            "peers": [p.to_json() for p in self.peers],
            "server_time": self.server_time,
        }
        if self.resume is not None:
            out["resume"] = self.resume
        return out

    @classmethod
    def from_json(cls, result: Mapping[str, Any]) -> AnnounceResult:
        peers = result.get("peers")
        server_time = result.get("server_time")
        if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
            raise _error(ErrorCode.INVALID_PARAMS, "announce result: peers must be a list")
        if isinstance(server_time, bool) or not isinstance(server_time, int | float):
            raise _error(ErrorCode.INVALID_PARAMS, "announce result: server_time must be a number")
        resume = result.get("resume")
        if resume is not None and not isinstance(resume, str):
            raise _error(ErrorCode.INVALID_PARAMS, "announce result: resume must be a string")
        return cls(
            _peer_id(result, "peer_id"),
            _peer_id(result, "session_id"),
            tuple(PeerInfo.from_json(p) for p in peers),
            float(server_time),
            resume,
        )


@attrs.frozen
class SdpMessage:
    """An offer or answer; the server forwards it to ``to_peer`` with the same method and params."""

    from_peer: str
    to_peer: str
    sdp: str

    METHOD: ClassVar[Method]
    INVALID: ClassVar[ErrorCode]

    def to_json(self) -> JsonObject:
        return {"from": self.from_peer, "to": self.to_peer, "sdp": self.sdp}

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> SdpMessage:
        _only(params, cls.METHOD, ("from", "to", "sdp"))
        from_peer = _peer_id(params, "from")
        to_peer = _peer_id(params, "to")
        kind = cls.METHOD.removeprefix("peer.")
        try:
            sdp = validate_sdp(params.get("sdp"), f"{kind} SDP")
        except ValueError as exc:
            raise _error(cls.INVALID, f"invalid {exc}") from None
        return cls(from_peer, to_peer, sdp)


@attrs.frozen
class Offer(SdpMessage):
    METHOD: ClassVar[Method] = Method.OFFER
    INVALID: ClassVar[ErrorCode] = ErrorCode.INVALID_OFFER


@attrs.frozen
class Answer(SdpMessage):
    METHOD: ClassVar[Method] = Method.ANSWER
    INVALID: ClassVar[ErrorCode] = ErrorCode.INVALID_ANSWER


#: Longest ``peer.error`` message (it quotes codec lists and aiortc's exception, not whole SDPs).
MAX_ERROR_MESSAGE_LENGTH: Final = 2048


@attrs.frozen
class PeerErrorNotice:
    """``peer.error``: ``from_peer`` cannot answer ``to_peer``'s offer. ``code`` and ``message``
    form a JSON-RPC error object (``error`` in the params), e.g. ``-32009`` and the reason."""

    from_peer: str
    to_peer: str
    code: int
    message: str

    METHOD: ClassVar[Method] = Method.ERROR

    def to_json(self) -> JsonObject:
        return {
            "from": self.from_peer,
            "to": self.to_peer,
            "error": {"code": self.code, "message": self.message},
        }

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> PeerErrorNotice:
        _only(params, cls.METHOD, ("from", "to", "error"))
        from_peer = _peer_id(params, "from")
        to_peer = _peer_id(params, "to")
        error = params.get("error")
        if not isinstance(error, dict) or set(error) != {"code", "message"}:
            raise _error(
                ErrorCode.INVALID_PARAMS, "error must be an object with exactly code and message"
            )
        code, message = error["code"], error["message"]
        if isinstance(code, bool) or not isinstance(code, int) or abs(code) > MAX_SAFE_INTEGER:
            raise _error(ErrorCode.INVALID_PARAMS, "error.code must be an integer")
        if not isinstance(message, str) or len(message) > MAX_ERROR_MESSAGE_LENGTH:
            raise _error(
                ErrorCode.INVALID_PARAMS,
                f"error.message must be a string of at most {MAX_ERROR_MESSAGE_LENGTH} characters",
            )
        return cls(from_peer, to_peer, code, message)


def _optional_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > 256):
        raise _error(ErrorCode.INVALID_PARAMS, f"{key} must be a string (at most 256) or null")
    return value


@attrs.frozen
class IceCandidate:
    """One trickled candidate; an empty ``candidate`` ends the remote side's candidates."""

    from_peer: str
    to_peer: str
    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None
    username_fragment: str | None = None

    METHOD: ClassVar[Method] = Method.ICE_CANDIDATE

    @property
    def end_of_candidates(self) -> bool:
        return self.candidate == ""

    def to_json(self) -> JsonObject:
        out: JsonObject = {"from": self.from_peer, "to": self.to_peer, "candidate": self.candidate}
        if self.sdp_mid is not None:
            out["sdp_mid"] = self.sdp_mid
        if self.sdp_m_line_index is not None:
            out["sdp_m_line_index"] = self.sdp_m_line_index
        if self.username_fragment is not None:
            out["username_fragment"] = self.username_fragment
        return out

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> IceCandidate:
        _only(
            params,
            cls.METHOD,
            ("from", "to", "candidate", "sdp_mid", "sdp_m_line_index", "username_fragment"),
        )
        from_peer = _peer_id(params, "from")
        to_peer = _peer_id(params, "to")
        index = params.get("sdp_m_line_index")
        if index is not None and (
            isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 65535
        ):
            raise _error(ErrorCode.INVALID_PARAMS, "sdp_m_line_index must be 0-65535 or null")
        sdp_mid = _optional_str(params, "sdp_mid")
        ufrag = _optional_str(params, "username_fragment")
        if "candidate" not in params:
            raise _error(ErrorCode.INVALID_CANDIDATE, "invalid ICE candidate: missing")
        try:
            candidate = validate_candidate(params["candidate"])
        except ValueError as exc:
            raise _error(ErrorCode.INVALID_CANDIDATE, f"invalid ICE candidate: {exc}") from None
        return cls(from_peer, to_peer, candidate, sdp_mid, index, ufrag)


@attrs.frozen
class Disconnect:
    peer_id: str

    METHOD: ClassVar[Method] = Method.DISCONNECT

    def to_json(self) -> JsonObject:
        return {"peer_id": self.peer_id}

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> Disconnect:
        _only(params, cls.METHOD, ("peer_id",))
        return cls(_peer_id(params, "peer_id"))


@attrs.frozen
class ListPeers:
    METHOD: ClassVar[Method] = Method.LIST

    def to_json(self) -> JsonObject:
        return {}

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> ListPeers:
        _only(params, cls.METHOD, ())
        return cls()


@attrs.frozen
class PeerJoined:
    """``peer.joined``: a newcomer in the session; it will send the offer (docs/signaling.md)."""

    peer: PeerInfo

    METHOD: ClassVar[Method] = Method.JOINED

    def to_json(self) -> JsonObject:
        return self.peer.to_json()

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> PeerJoined:
        return cls(PeerInfo.from_json(params))


@attrs.frozen
class PeerLeft:
    peer_id: str
    reason: str

    METHOD: ClassVar[Method] = Method.LEFT

    def to_json(self) -> JsonObject:
        return {"peer_id": self.peer_id, "reason": self.reason}

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> PeerLeft:
        _only(params, cls.METHOD, ("peer_id", "reason"))
        reason = params.get("reason")
        if not isinstance(reason, str):
            raise _error(ErrorCode.INVALID_PARAMS, "reason must be a string")
        return cls(_peer_id(params, "peer_id"), reason)


ClientParams: TypeAlias = (
    Announce | Offer | Answer | IceCandidate | Disconnect | ListPeers | PeerErrorNotice
)

_CLIENT_PARAMS: Final[Mapping[str, Any]] = {
    Method.ANNOUNCE: Announce,
    Method.OFFER: Offer,
    Method.ANSWER: Answer,
    Method.ICE_CANDIDATE: IceCandidate,
    Method.DISCONNECT: Disconnect,
    Method.LIST: ListPeers,
    Method.ERROR: PeerErrorNotice,
}


def parse_params(method: str, params: Mapping[str, Any]) -> ClientParams:
    """Validate a client method's params into its typed form, or raise the right error code."""
    kind = _CLIENT_PARAMS.get(method)
    if kind is None:
        known = ", ".join(sorted(_CLIENT_PARAMS))
        raise _error(
            ErrorCode.METHOD_NOT_FOUND, f"method {method[:60]!r} not found; known: {known}"
        )
    parsed: ClientParams = kind.from_json(params)
    return parsed


#: Typed forms of what the server sends as notifications.
ServerEvent: TypeAlias = PeerJoined | PeerLeft | Offer | Answer | IceCandidate | PeerErrorNotice


def parse_notification(notification: Notification) -> ServerEvent:
    """A server notification in its typed form."""
    kinds: Mapping[str, Any] = {
        Method.JOINED: PeerJoined,
        Method.LEFT: PeerLeft,
        Method.OFFER: Offer,
        Method.ANSWER: Answer,
        Method.ICE_CANDIDATE: IceCandidate,
        Method.ERROR: PeerErrorNotice,
    }
    kind = kinds.get(notification.method)
    if kind is None:
        raise _error(ErrorCode.METHOD_NOT_FOUND, f"unknown notification {notification.method!r}")
    event: ServerEvent = kind.from_json(notification.params)
    return event


# --- Request/response matching ------------------------------------------------------------------


@attrs.define
class RequestTracker:
    """Numbers outgoing requests and matches responses to them.

    A response whose id was never sent, or was already answered, is a protocol violation by the
    server (JSON-RPC: exactly one response per request), so :meth:`match` reports it rather than
    guessing.
    """

    _next_id: int = 1
    _pending: dict[RequestId, str] = attrs.field(factory=dict)
    #: Recently abandoned ids (timed out or cancelled): their late answers are expected, not errors.
    _abandoned: dict[RequestId, None] = attrs.field(factory=dict)
    max_abandoned: int = 1024

    def new_request(self, method: str, params: JsonObject) -> Request:
        request = Request(method, params, self._next_id)
        self._pending[request.id] = method
        self._next_id += 1
        return request

    def match(self, response: Response | ErrorResponse) -> RequestId | None:
        """Return the id of the request this response answers and stop tracking it.

        ``None`` means a late answer to a request the caller gave up on (:meth:`forget`).
        """
        if response.id is not None and self._abandoned.pop(response.id, 0) is None:
            return None
        if response.id is None or response.id not in self._pending:
            raise _error(
                ErrorCode.INVALID_REQUEST,
                f"response for unknown or already answered request id {response.id!r}",
            )
        del self._pending[response.id]
        return response.id

    def forget(self, request_id: RequestId) -> None:
        """Stop waiting for a request (timed out or cancelled); its late answer will be ignored."""
        if self._pending.pop(request_id, None) is not None:
            self._abandoned[request_id] = None
            if len(self._abandoned) > self.max_abandoned:
                del self._abandoned[next(iter(self._abandoned))]

    def clear(self) -> list[RequestId]:
        """Drop every pending request (the connection is gone); return their ids."""
        ids = list(self._pending)
        self._pending.clear()
        self._abandoned.clear()
        return ids

    @property
    def pending(self) -> int:
        return len(self._pending)


# --- Rate limiting ------------------------------------------------------------------------------


@attrs.define
class RateLimiter:
    """A token bucket: ``rate`` messages per second on average, bursts up to ``burst``.

    Signaling is bursty by nature (a newcomer trickles a dozen candidates to each peer at once), so
    the bucket allows a burst and only refuses sustained floods.
    """

    rate: float
    burst: float
    _tokens: float = attrs.field(init=False)
    _last: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1):
            raise ValueError("rate must be > 0 and burst >= 1")
        self._tokens = self.burst

    def allow(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


# --- Who offers ---------------------------------------------------------------------------------


def lower_id_offers(local_id: str, remote_id: str) -> bool:
    """For renegotiation and reconnection: True when ``local_id`` is the one that sends the offer.

    The lower id (plain string order, which for the allowed ASCII characters is byte order) is the
    impolite peer: it offers and ignores a colliding offer; the other is polite and rolls back.
    A newcomer's first offers do not use this rule: it offers to every peer its announce listed.
    """
    if local_id == remote_id:
        raise ValueError("a peer does not negotiate with itself")
    return local_id < remote_id
