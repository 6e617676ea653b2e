from __future__ import annotations

from typing import Any

import pytest

from meshrtc import ConfigError, MeshRtcError, TransportConfig, TurnServer
from meshrtc.config import AudioCodec, DataChannelMode, IceTransportPolicy, VideoCodec


def test_defaults_follow_the_spec() -> None:
    c = TransportConfig()
    assert c.max_peers == 10
    assert c.audio_codec is AudioCodec.OPUS
    assert c.video_codec is VideoCodec.VP9
    assert c.enable_data_channel is True
    assert c.data_channel_mode is DataChannelMode.RELIABLE
    assert c.jitter_buffer_size_ms == 50
    assert len(c.stun_servers) == 1
    assert c.stun_servers[0].startswith("stun:127.0.0.1")


def test_peer_id_is_generated_and_unique() -> None:
    a, b = TransportConfig(), TransportConfig()
    assert a.peer_id != b.peer_id
    assert TransportConfig(peer_id="alice_1").peer_id == "alice_1"


def test_codecs_are_case_insensitive() -> None:
    c = TransportConfig(audio_codec="OPUS", video_codec="h264", data_channel_mode="Unreliable")
    assert c.audio_codec is AudioCodec.OPUS
    assert c.video_codec is VideoCodec.H264
    assert c.data_channel_mode is DataChannelMode.UNRELIABLE


@pytest.mark.parametrize("name", ["VP8", "vp8", VideoCodec.VP8])
def test_vp8_is_a_video_codec(name: str) -> None:
    # The spec lists VP9 and H.264; the CLI, the page and interop (docs/interop.md) need VP8.
    assert TransportConfig(video_codec=name).video_codec is VideoCodec.VP8


@pytest.mark.parametrize("codec", list(VideoCodec))
def test_serve_cli_offers_every_video_codec_and_its_config_accepts_it(codec: VideoCodec) -> None:
    from meshrtc.__main__ import build_parser

    args = build_parser().parse_args(["serve", "--video-codec", codec.value])
    assert TransportConfig(video_codec=args.video_codec).video_codec is codec


def test_serve_cli_refuses_a_codec_the_config_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    from meshrtc.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--video-codec", "AV1"])
    assert "invalid choice: 'AV1'" in capsys.readouterr().err


def test_turn_servers_from_dicts() -> None:
    c = TransportConfig(
        turn_servers=[{"url": "turn:127.0.0.1:3478", "username": "u", "credential": "p"}]
    )
    assert c.turn_servers == (TurnServer("turn:127.0.0.1:3478", "u", "p"),)


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"max_peers": 0}, "max_peers", "1 to 10"),
        ({"max_peers": 11}, "max_peers", "1 to 10"),
        ({"max_peers": True}, "max_peers", "1 to 10"),
        ({"jitter_buffer_size_ms": 49}, "jitter_buffer_size_ms", "50 to 200"),
        ({"jitter_buffer_size_ms": 201}, "jitter_buffer_size_ms", "50 to 200"),
        ({"stun_servers": []}, "stun_servers", "at least one"),
        ({"stun_servers": "stun:127.0.0.1"}, "stun_servers", "list"),
        ({"stun_servers": ["http://127.0.0.1"]}, "stun_servers", "stun:"),
        ({"stun_servers": ["stun:"]}, "stun_servers", "stun:"),
        ({"signaling_url": "http://127.0.0.1/ws"}, "signaling_url", "ws:"),
        ({"signaling_url": "ws://"}, "signaling_url", "host"),
        ({"signaling_url": "ws://127.0.0.1:99999/"}, "signaling_url", "host"),
        ({"audio_codec": "pcmu"}, "audio_codec", "'opus'"),
        ({"video_codec": "AV1"}, "video_codec", "'VP9' or 'H264' or 'VP8'"),
        ({"data_channel_mode": "sometimes"}, "data_channel_mode", "reliable"),
        ({"peer_id": ""}, "peer_id", "1-64"),
        ({"peer_id": "x" * 65}, "peer_id", "1-64"),
        ({"peer_id": "no spaces"}, "peer_id", "1-64"),
        ({"session_id": "a/b"}, "session_id", "1-64"),
        (
            {"turn_servers": [{"url": "stun:127.0.0.1", "username": "u", "credential": "p"}]},
            "turn_servers.url",
            "turn:",
        ),
        (
            {"turn_servers": [{"url": "turn:127.0.0.1", "username": "u", "credential": ""}]},
            "turn_servers.credential",
            "non-empty",
        ),
        ({"turn_servers": [{"url": "turn:127.0.0.1"}]}, "turn_servers", "username"),
        ({"ice_transport_policy": "direct"}, "ice_transport_policy", "'relay'"),
        ({"ice_host_addresses": []}, "ice_host_addresses", "IP addresses"),
        ({"ice_host_addresses": ["localhost"]}, "ice_host_addresses", "IP addresses"),
    ],
)
def test_invalid_values_name_field_value_and_range(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TransportConfig(**kwargs)
    err = info.value
    assert isinstance(err, MeshRtcError)
    assert err.field == field
    assert allowed in err.allowed
    assert field in str(err)
    assert repr(err.value) in str(err)


def test_ice_options() -> None:
    c = TransportConfig(ice_transport_policy="RELAY", ice_host_addresses=["127.0.0.1", "::1"])
    assert c.ice_transport_policy is IceTransportPolicy.RELAY
    assert c.ice_host_addresses == ("127.0.0.1", "::1")
    assert TransportConfig().ice_host_addresses is None


def test_config_is_immutable() -> None:
    c = TransportConfig()
    with pytest.raises(AttributeError):
        c.max_peers = 3  # type: ignore[misc]


@pytest.mark.parametrize("field", ["enable_rtcp", "rtcp_interval_ms"])
def test_rtcp_is_not_configurable(field: str) -> None:
    """RTCP drives sync and quality control: there is no switch or interval to set (README)."""
    with pytest.raises(TypeError, match=field):
        TransportConfig(**{field: 5000})
