"""Transport configuration: every field a :class:`~meshrtc.transport.WebRtcTransport` reads.

Validation happens when the object is built, so a bad value fails at start-up with the field's name
rather than minutes later inside ICE or a codec.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import secrets
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

from meshrtc.backoff import Backoff
from meshrtc.errors import ConfigError

__all__ = [
    "PEER_ID_PATTERN",
    "AudioCodec",
    "DataChannelMode",
    "IceTransportPolicy",
    "TransportConfig",
    "TurnServer",
    "VideoCodec",
    "generate_peer_id",
    "validate_peer_id",
]

#: Peer and session ids: also what the signaling protocol accepts (docs/signaling.md).
PEER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

MAX_PEERS_LIMIT = 10
_E = TypeVar("_E", bound=enum.StrEnum)
JITTER_BUFFER_RANGE_MS = (50, 200)


class AudioCodec(enum.StrEnum):
    OPUS = "opus"


class VideoCodec(enum.StrEnum):
    """The video codec a transport negotiates (and nothing else: an offer without it gets its
    video section rejected, docs/codecs.md).

    The spec lists VP9 and H.264; VP8 is here too because every WebRTC endpoint has it (RFC 7742
    makes it mandatory for browsers) and aiortc ships it, so it is the codec interop falls back on.
    """

    VP9 = "VP9"
    H264 = "H264"
    VP8 = "VP8"


class IceTransportPolicy(enum.StrEnum):
    #: Host, server-reflexive and relay candidates.
    ALL = "all"
    #: Relay candidates only: media always goes through the TURN server.
    RELAY = "relay"


class DataChannelMode(enum.StrEnum):
    #: Ordered, retransmitted until delivered (SCTP reliable).
    RELIABLE = "reliable"
    #: Unordered, no retransmission: for state that is stale once a newer value exists.
    UNRELIABLE = "unreliable"


def generate_peer_id() -> str:
    return f"peer-{secrets.token_hex(6)}"


def validate_peer_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not PEER_ID_PATTERN.fullmatch(value):
        raise ConfigError(field, value, "1-64 characters from A-Z a-z 0-9 _ -")
    return value


def _to_enum(kind: type[_E], field: str, value: object) -> _E:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        for member in kind:
            if member.value.lower() == value.lower():
                return member
    raise ConfigError(field, value, " or ".join(repr(m.value) for m in kind))


def _audio_codec(value: object) -> AudioCodec:
    return _to_enum(AudioCodec, "audio_codec", value)


def _video_codec(value: object) -> VideoCodec:
    return _to_enum(VideoCodec, "video_codec", value)


def _data_channel_mode(value: object) -> DataChannelMode:
    return _to_enum(DataChannelMode, "data_channel_mode", value)


def _turn_url(value: object) -> str:
    return _url_with_scheme("turn_servers.url", value, ("turn", "turns"))


def _signaling_url(value: object) -> str:
    return _url_with_scheme("signaling_url", value, ("ws", "wss"))


def _ice_transport_policy(value: object) -> IceTransportPolicy:
    return _to_enum(IceTransportPolicy, "ice_transport_policy", value)


def _host_addresses(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    allowed = "None (every interface but loopback, aioice's choice) or a list of IP addresses"
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ConfigError("ice_host_addresses", value, allowed)
    out = []
    for address in value:
        try:
            out.append(str(ipaddress.ip_address(address)))
        except ValueError:
            raise ConfigError("ice_host_addresses", address, allowed) from None
    return tuple(out)


def _session_id(value: object) -> str:
    return validate_peer_id("session_id", value)


def _int_in_range(lo: int, hi: int) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(attribute.name, value, f"an integer from {lo} to {hi}")

    return check


def _url_with_scheme(field: str, url: object, schemes: tuple[str, ...]) -> str:
    allowed = f"a URL with scheme {' or '.join(s + ':' for s in schemes)} and a host"
    if not isinstance(url, str):
        raise ConfigError(field, url, allowed)
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in schemes:
        raise ConfigError(field, url, allowed)
    if scheme.lower() in ("ws", "wss"):
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(field, url, allowed)
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(field, url, allowed) from None
    else:
        # stun:host[:port] / turn:host[:port][?transport=udp|tcp] (RFC 7064/7065): no slashes.
        host = rest.split("?", 1)[0]
        if not host or host.startswith(("/", ":")):
            raise ConfigError(field, url, allowed)
    return url


def _stun_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError("stun_servers", value, "a list of at least one stun: or stuns: URL")
    if not value:
        raise ConfigError("stun_servers", value, "at least one stun: or stuns: URL")
    return tuple(_url_with_scheme("stun_servers", u, ("stun", "stuns")) for u in value)


@attrs.frozen
class TurnServer:
    """One TURN server; WebRTC only uses long-term credentials, so both are required."""

    url: str = attrs.field(converter=_turn_url)
    username: str
    credential: str

    def __attrs_post_init__(self) -> None:
        for name in ("username", "credential"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"turn_servers.{name}", value, "a non-empty string")


def _turn_list(value: object) -> tuple[TurnServer, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            "turn_servers", value, "a list of TurnServer or {url, username, credential}"
        )
    out: list[TurnServer] = []
    for entry in value:
        if isinstance(entry, TurnServer):
            out.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"url", "username", "credential"}:
            out.append(TurnServer(**entry))
        else:
            raise ConfigError("turn_servers", entry, "TurnServer or {url, username, credential}")
    return tuple(out)


def _peer_id(value: object) -> str:
    if value is None:
        return generate_peer_id()
    return validate_peer_id("peer_id", value)


def _bool(field: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if not isinstance(value, bool):
            raise ConfigError(field, value, "True or False")

    return check


def _backoff(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Backoff):
        raise ConfigError(attribute.name, value, "a meshrtc.backoff.Backoff")


def _optional_token(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(attribute.name, "<hidden>", "a non-empty string or None")


def _optional_file(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    from pathlib import Path

    if value is not None and (not isinstance(value, str) or not Path(value).is_file()):
        raise ConfigError(attribute.name, value, "None or the path of an existing file")


@attrs.frozen(kw_only=True)
class TransportConfig:
    """Everything a :class:`WebRtcTransport` needs to join a session.

    Defaults: Opus, VP9, a reliable data channel, a 50 ms jitter buffer, 10 peers. The STUN
    default points at loopback because meshrtc ships its own binding responder for demos and
    tests: an unanswered STUN server costs aiortc 5 s of ICE gathering.

    There is no RTCP switch or interval: Sender Reports are what A/V sync maps RTP to wall-clock
    time with, and receiver reports what quality control reads, so RTCP is always on, at aiortc's
    own cadence (0.5–1.5 s, randomised per report; README "Configuration").
    """

    signaling_url: str = attrs.field(
        default="ws://127.0.0.1:8765/ws",
        converter=_signaling_url,
    )
    stun_servers: tuple[str, ...] = attrs.field(
        default=("stun:127.0.0.1:3478",), converter=_stun_list
    )
    turn_servers: tuple[TurnServer, ...] = attrs.field(default=(), converter=_turn_list)
    peer_id: str = attrs.field(default=None, converter=_peer_id)
    session_id: str = attrs.field(default="default", converter=_session_id)
    #: Access token for a signaling server with a secret (``meshrtc token``; docs/security.md).
    #: Sent as the ``token`` query parameter of the WebSocket URL; ``repr`` leaves it out.
    auth_token: str | None = attrs.field(default=None, validator=_optional_token, repr=False)
    #: PEM file of the CA(s) a ``wss://`` signaling server's certificate is checked against,
    #: instead of the system store (a self-signed deployment); verification is never off.
    signaling_cafile: str | None = attrs.field(default=None, validator=_optional_file)
    max_peers: int = attrs.field(
        default=MAX_PEERS_LIMIT, validator=_int_in_range(1, MAX_PEERS_LIMIT)
    )
    #: The audio codec offered and accepted (an offer without it gets its audio section rejected).
    #: Opus is the only one: it is the one meshrtc decodes.
    audio_codec: AudioCodec = attrs.field(default=AudioCodec.OPUS, converter=_audio_codec)
    video_codec: VideoCodec = attrs.field(default=VideoCodec.VP9, converter=_video_codec)
    enable_data_channel: bool = attrs.field(default=True, validator=_bool("enable_data_channel"))
    data_channel_mode: DataChannelMode = attrs.field(
        default=DataChannelMode.RELIABLE,
        converter=_data_channel_mode,
    )
    jitter_buffer_size_ms: int = attrs.field(
        default=50, validator=_int_in_range(*JITTER_BUFFER_RANGE_MS)
    )
    ice_transport_policy: IceTransportPolicy = attrs.field(
        default=IceTransportPolicy.ALL, converter=_ice_transport_policy
    )
    #: Addresses offered as ICE host candidates. ``None`` lets aioice choose (every interface except
    #: loopback); tests and the demo use ``("127.0.0.1",)`` so media never leaves loopback.
    ice_host_addresses: tuple[str, ...] | None = attrs.field(
        default=None, converter=_host_addresses
    )
    #: Delays between signaling reconnect attempts. ``tries`` bounds an outage only while no
    #: peer's media flows; with media flowing the client keeps retrying at ``maximum``
    #: (docs/security.md, "Media outlives signaling").
    signaling_backoff: Backoff = attrs.field(factory=Backoff, validator=_backoff)
