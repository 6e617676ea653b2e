"""The sans-IO signaling protocol and the server hub, without sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.errors import MeshRtcError
from meshrtc.signaling.protocol import (
    MAX_USER_DATA_BYTES,
    Announce,
    AnnounceResult,
    Capability,
    ErrorCode,
    ErrorResponse,
    IceCandidate,
    LeaveReason,
    Method,
    Notification,
    Offer,
    PeerErrorNotice,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    RateLimiter,
    Request,
    RequestTracker,
    Response,
    SignalingError,
    encode,
    lower_id_offers,
    parse_client_message,
    parse_notification,
    parse_params,
    parse_server_message,
    validate_candidate,
    validate_sdp,
)
from meshrtc.signaling.server import Close, Send, SignalingHub

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=sctp-port:5000\r\n"
)

CANDIDATES = [
    "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 192.168.1.2 "
    "rport 46154 generation 0 ufrag sXn1 network-cost 999",
    "candidate:1467250027 1 udp 2122260223 4b8d3f1c-4c5c-4d2f-9d3a-2c1b8f0e4a55.local 54321 "
    "typ host generation 0 ufrag abcd network-id 1",
    "candidate:1 1 tcp 1518280447 192.168.1.2 9 typ host tcptype active generation 0",
    "candidate:2 1 UDP 2122197247 2001:db8::1 50000 typ host",
    "candidate:0 1 UDP 2122252543 192.168.1.2 53640 typ host",
    "candidate:3 2 udp 41885439 198.51.100.1 3478 typ relay raddr 203.0.113.7 rport 46154",
    "candidate:6c3b0a0f3d21e8a1b0ee0c7d0e8f6f1e 1 udp 2130706431 127.0.0.1 45035 typ host",
    "a=candidate:4 1 udp 1845501695 198.51.100.9 1 typ prflx raddr 0.0.0.0 rport 0",
]


def rpc(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message)


# --- Parsing ------------------------------------------------------------------------------------


def test_request_and_notification_parse() -> None:
    assert parse_client_message(rpc("peer.list", {}, 7)) == Request("peer.list", {}, 7)
    assert parse_client_message(rpc("peer.list", None, "a")) == Request("peer.list", {}, "a")
    assert parse_client_message(rpc("x", {"a": 1}, None)) == Notification("x", {"a": 1})


@pytest.mark.parametrize(
    ("data", "code", "request_id", "words"),
    [
        ("not json", ErrorCode.PARSE_ERROR, None, "parse error"),
        (b'{"jsonrpc":"2.0"}', ErrorCode.PARSE_ERROR, None, "binary"),
        ("1" * 5000, ErrorCode.PARSE_ERROR, None, "parse error"),
        ("[" * 100_000, ErrorCode.PARSE_ERROR, None, "nested too deeply"),
        (
            '{"jsonrpc":"2.0","id":1,"method":"peer.list","params":{"x":1e400}}',
            -32700,
            None,
            "range",
        ),
        ('{"jsonrpc":"2.0","id":NaN,"method":"peer.list"}', ErrorCode.PARSE_ERROR, None, "NaN"),
        ("[]", ErrorCode.INVALID_REQUEST, None, "batch"),
        ("42", ErrorCode.INVALID_REQUEST, None, "JSON object"),
        ('{"jsonrpc":"2.0","id":1.5,"method":"peer.list"}', -32600, None, "id must be"),
        ('{"jsonrpc":"2.0","id":true,"method":"peer.list"}', -32600, None, "id must be"),
        ('{"jsonrpc":"2.0","id":null,"method":"peer.list"}', -32600, None, "id must be"),
        (rpc("peer.list", {}, 2**60), ErrorCode.INVALID_REQUEST, None, "id must be"),
        (rpc("peer.list", {}, "x" * 129), ErrorCode.INVALID_REQUEST, None, "id must be"),
        ('{"jsonrpc":"1.0","id":3,"method":"peer.list"}', ErrorCode.INVALID_REQUEST, 3, "2.0"),
        ('{"id":3,"method":"peer.list"}', ErrorCode.INVALID_REQUEST, 3, "2.0"),
        ('{"jsonrpc":"2.0","id":3,"method":7}', ErrorCode.INVALID_REQUEST, 3, "method"),
        ('{"jsonrpc":"2.0","id":3,"result":{}}', ErrorCode.INVALID_REQUEST, 3, "responses"),
        ('{"jsonrpc":"2.0","id":3,"method":"a","x":1}', ErrorCode.INVALID_REQUEST, 3, "'x'"),
        ('{"jsonrpc":"2.0","id":"q","method":"a","params":[1]}', -32602, "q", "by-name"),
    ],
)
def test_malformed_messages_get_the_right_code(
    data: str | bytes, code: int, request_id: object, words: str
) -> None:
    with pytest.raises(SignalingError) as info:
        parse_client_message(data)
    assert info.value.code == code
    assert info.value.request_id == request_id
    assert words in info.value.message
    response = json.loads(encode(info.value.to_response()))
    assert response == {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": code, "message": info.value.message},
    }


def test_signaling_error_is_a_meshrtc_error() -> None:
    err = SignalingError(-32000, "peer 'x' not found")
    assert isinstance(err, MeshRtcError)
    assert "-32000" in str(err)
    assert "not found" in str(err)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(
    method=st.text(min_size=1, max_size=30),
    params=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    request_id=st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=128),
)
def test_encode_then_parse_round_trips(
    method: str, params: dict[str, Any], request_id: Any
) -> None:
    request = Request(method, params, request_id)
    assert parse_client_message(encode(request)) == request
    notification = Notification(method, params)
    assert parse_server_message(encode(notification)) == notification
    assert parse_server_message(encode(Response(request_id, params))) == Response(
        request_id, params
    )
    error = ErrorResponse(request_id, -32000, method, params or None)
    assert parse_server_message(encode(error)) == error


def test_encode_escapes_lone_surrogates() -> None:
    text = encode(Notification("peer.left", {"peer_id": "a", "reason": "\ud800"}))
    assert text.isascii()
    text.encode("utf-8")  # would raise on a raw lone surrogate


@pytest.mark.parametrize(
    "data",
    [
        "[]",
        '{"jsonrpc":"2.0","id":1}',
        '{"jsonrpc":"2.0","id":1,"result":[]}',
        '{"jsonrpc":"2.0","id":1,"error":"x"}',
        '{"jsonrpc":"2.0","id":1,"error":{"code":"a","message":"m"}}',
        '{"jsonrpc":"2.0","id":1,"method":"peer.joined","params":{}}',
    ],
)
def test_bad_server_messages_are_refused(data: str) -> None:
    with pytest.raises(SignalingError):
        parse_server_message(data)


# --- SDP ----------------------------------------------------------------------------------------


def test_real_sdp_is_accepted_with_crlf_or_lf() -> None:
    assert validate_sdp(SDP) == SDP
    lf = SDP.replace("\r\n", "\n")
    assert validate_sdp(lf) == lf
    assert validate_sdp(SDP.rstrip("\r\n")) == SDP.rstrip("\r\n")


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        (None, "must be a string"),
        ("", "empty"),
        ("hello", "must start with 'v=0'"),
        (SDP.replace("v=0", "v=1"), "must start with 'v=0'"),
        (SDP.replace("s=-\r\n", ""), "no session-level 's='"),
        (SDP.replace("o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n", ""), "'o='"),
        (SDP.replace("t=0 0\r\n", ""), "'t='"),
        (SDP.split("m=audio")[0], "no 'm=' line"),
        (SDP.replace("s=-", "S=-"), "line 3: expected '<type>=<value>'"),
        (SDP.replace("s=-", "s -"), "line 3"),
        (SDP.replace("a=group", "\r\na=group"), "line 5"),
        (SDP.replace("o=- 4611731400430051336 2 IN IP4", "o=- x IN"), "bad origin"),
        (SDP.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio"), "bad media line"),
        (SDP.replace("m=audio 9 ", "m=audio port "), "bad media line"),
        (SDP.replace("t=0 0", "t=now"), "bad timing"),
        (SDP.replace("s=-\r\n", "s=-\n", 1), "line 3: mixed"),
        (SDP.replace("\r\n", "\r"), "must start with 'v=0'"),
    ],
)
def test_broken_sdp_is_refused_with_a_reason(sdp: object, words: str) -> None:
    with pytest.raises(ValueError, match="SDP") as info:
        validate_sdp(sdp)
    assert words in str(info.value)


@given(st.data())
def test_invalid_sdp_maps_to_offer_and_answer_codes(data: st.DataObject) -> None:
    sdp = data.draw(st.text(max_size=60).filter(lambda s: not s.startswith("v=0")))
    for method, code in ((Method.OFFER, -32002), (Method.ANSWER, -32003)):
        with pytest.raises(SignalingError) as info:
            parse_params(method, {"from": "a", "to": "b", "sdp": sdp})
        assert info.value.code == code
        assert f"invalid {method.removeprefix('peer.')} SDP" in info.value.message


# --- ICE candidates -----------------------------------------------------------------------------


@pytest.mark.parametrize("candidate", [*CANDIDATES, ""])
def test_real_candidates_are_accepted(candidate: str) -> None:
    assert validate_candidate(candidate) == candidate


@pytest.mark.parametrize(
    ("candidate", "words"),
    [
        (None, "must be a string"),
        ("842163049 1 udp 1677729535 1.2.3.4 46154 typ host", "must start with 'candidate:'"),
        ("candidate:1 1 udp 1 1.2.3.4 5 typ", "fields"),
        ("candidate:bad! 1 udp 1 1.2.3.4 5 typ host", "foundation"),
        ("candidate:1 0 udp 1 1.2.3.4 5 typ host", "component"),
        ("candidate:1 257 udp 1 1.2.3.4 5 typ host", "component"),
        ("candidate:1 1 sctp 1 1.2.3.4 5 typ host", "transport"),
        ("candidate:1 1 udp -1 1.2.3.4 5 typ host", "priority"),
        ("candidate:1 1 udp 4294967296 1.2.3.4 5 typ host", "priority"),
        ("candidate:1 1 udp 1 1.2.3.999 5 typ host", "connection address"),
        ("candidate:1 1 udp 1 -bad-.local 5 typ host", "connection address"),
        ("candidate:1 1 udp 1 1.2.3.4 65536 typ host", "port"),
        ("candidate:1 1 udp 1 1.2.3.4 5 type host", "expected 'typ'"),
        ("candidate:1 1 udp 1 1.2.3.4 5 typ server", "candidate type"),
        ("candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr", "pairs"),
        ("candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr nope! rport 1", "raddr"),
        ("candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr 1.1.1.1 rport x", "rport"),
        ("candidate:1  1 udp 1 1.2.3.4 5 typ host", "component"),
        ("candidate:" + "1" * 3000, "longer than"),
    ],
)
def test_broken_candidates_are_refused_with_a_reason(candidate: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        validate_candidate(candidate)
    params = {"from": "a", "to": "b", "candidate": candidate}
    with pytest.raises(SignalingError) as info:
        parse_params(Method.ICE_CANDIDATE, params)
    assert info.value.code == ErrorCode.INVALID_CANDIDATE
    assert info.value.message.startswith("invalid ICE candidate")


candidates = st.builds(
    lambda prefix, foundation, component, transport, priority, address, port, typ, ext: (
        f"{prefix}candidate:{foundation} {component} {transport} {priority} {address} {port} "
        f"typ {typ}{ext}"
    ),
    st.sampled_from(["", "a="]),
    st.from_regex(r"[A-Za-z0-9+/]{1,32}", fullmatch=True),
    st.integers(1, 256),
    st.sampled_from(["udp", "UDP", "tcp", "TCP"]),
    st.integers(0, 2**32 - 1),
    st.ip_addresses().map(str),
    st.integers(0, 65535),
    st.sampled_from(["host", "srflx", "prflx", "relay"]),
    st.sampled_from(["", " generation 0", " raddr 10.0.0.1 rport 9 tcptype passive"]),
)


@given(candidates)
def test_generated_grammar_candidates_are_accepted(candidate: str) -> None:
    assert validate_candidate(candidate) == candidate
    parsed = parse_params(Method.ICE_CANDIDATE, {"from": "a", "to": "b", "candidate": candidate})
    assert isinstance(parsed, IceCandidate)
    assert not parsed.end_of_candidates


@given(candidates, st.integers(0, 200), st.characters(codec="ascii"))
def test_candidates_with_a_corrupted_field_never_crash(
    candidate: str, position: int, char: str
) -> None:
    corrupted = candidate[:position] + char + candidate[position + 1 :]
    try:
        outcome = validate_candidate(corrupted)
    except ValueError as exc:
        outcome = str(exc)  # refused, with a reason
    assert outcome


def test_end_of_candidates_and_optional_fields_are_forwarded() -> None:
    parsed = parse_params(
        Method.ICE_CANDIDATE,
        {"from": "a", "to": "b", "candidate": "", "sdp_mid": "0", "sdp_m_line_index": 0},
    )
    assert isinstance(parsed, IceCandidate)
    assert parsed.end_of_candidates
    assert parsed.to_json() == {
        "from": "a",
        "to": "b",
        "candidate": "",
        "sdp_mid": "0",
        "sdp_m_line_index": 0,
    }


# --- Params -------------------------------------------------------------------------------------


def test_announce_defaults_and_round_trip() -> None:
    params = {"peer_id": "alice", "capabilities": ["audio", "data"]}
    announce = parse_params(Method.ANNOUNCE, params)
    assert isinstance(announce, Announce)
    assert announce.session_id == "default"
    assert announce.user_data == {}
    assert Announce.from_json(announce.to_json()) == announce


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"capabilities": ["audio"]}, "peer_id must be"),
        ({"peer_id": "a b", "capabilities": ["audio"]}, "peer_id must be"),
        ({"peer_id": "x" * 65, "capabilities": ["audio"]}, "peer_id must be"),
        ({"peer_id": "a", "capabilities": []}, "non-empty list"),
        ({"peer_id": "a", "capabilities": "audio"}, "non-empty list"),
        ({"peer_id": "a", "capabilities": ["smell"]}, "unknown capability"),
        ({"peer_id": "a", "capabilities": ["audio", "audio"]}, "twice"),
        ({"peer_id": "a", "capabilities": ["audio"], "session_id": "s/1"}, "session_id"),
        ({"peer_id": "a", "capabilities": ["audio"], "user_data": [1]}, "JSON object"),
        (
            {"peer_id": "a", "capabilities": ["audio"], "user_data": {"x": "y" * 1100}},
            f"at most {MAX_USER_DATA_BYTES}",
        ),
        ({"peer_id": "a", "capabilities": ["audio"], "token": 5}, "token"),
        ({"peer_id": "a", "capabilities": ["audio"], "colour": "red"}, "unknown parameter"),
    ],
)
def test_bad_announce_params_are_invalid_params(params: dict[str, Any], words: str) -> None:
    with pytest.raises(SignalingError) as info:
        parse_params(Method.ANNOUNCE, params)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert words in info.value.message


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(SignalingError) as info:
        parse_params("peer.dance", {})
    assert info.value.code == ErrorCode.METHOD_NOT_FOUND
    assert "peer.announce" in info.value.message


def test_server_notifications_parse_into_typed_events() -> None:
    info = PeerInfo("b", (Capability.VIDEO,), {})
    joined = {"peer_id": "b", "capabilities": ["video"], "user_data": {"n": 1}}
    event = parse_notification(Notification(Method.JOINED, joined))
    assert isinstance(event, PeerJoined)
    assert event.peer.to_json() == joined
    assert parse_notification(Notification(Method.LEFT, {"peer_id": "b", "reason": "closed"})) == (
        PeerLeft("b", "closed")
    )
    offer = parse_notification(Notification(Method.OFFER, {"from": "b", "to": "a", "sdp": SDP}))
    assert offer == Offer("b", "a", SDP)
    with pytest.raises(SignalingError):
        parse_notification(Notification("peer.unknown", {}))
    assert info.peer_id == "b"


def test_announce_result_round_trip() -> None:
    peer = PeerInfo("b", (Capability.VIDEO, Capability.DATA), {"k": "v"})
    result = AnnounceResult("a", "s", (peer,), 12.5)
    assert AnnounceResult.from_json(json.loads(json.dumps(result.to_json()))) == result


# --- Request matching, rate limit, who offers ---------------------------------------------------


def test_tracker_matches_each_response_once() -> None:
    tracker = RequestTracker()
    first = tracker.new_request("peer.list", {})
    second = tracker.new_request("peer.list", {})
    assert first.id != second.id
    assert tracker.pending == 2
    assert tracker.match(Response(second.id, {})) == second.id
    with pytest.raises(SignalingError, match="already answered"):
        tracker.match(Response(second.id, {}))
    with pytest.raises(SignalingError, match="unknown"):
        tracker.match(ErrorResponse(None, -32700, "parse error"))
    tracker.forget(first.id)
    assert tracker.match(Response(first.id, {})) is None  # a late answer, expected
    with pytest.raises(SignalingError):
        tracker.match(Response(first.id, {}))  # but only once
    third = tracker.new_request("peer.list", {})
    assert tracker.clear() == [third.id]
    assert tracker.pending == 0


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_rate_limiter_never_exceeds_burst_plus_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst)
    now, allowed = 100.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow(now)
    assert allowed <= burst + rate * (now - 100.0) + 1e-6
    # A quiet period refills the bucket completely.
    assert all(limiter.allow(now + burst / rate + 1) for _ in range(burst))


def test_rate_limiter_allows_a_full_burst_then_refuses() -> None:
    limiter = RateLimiter(10, 3)
    assert [limiter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(0.1)
    assert not limiter.allow(0.1)


@given(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), st.data())
def test_exactly_one_side_offers_on_renegotiation(a: str, data: st.DataObject) -> None:
    b = data.draw(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True).filter(lambda x: x != a))
    assert lower_id_offers(a, b) != lower_id_offers(b, a)
    with pytest.raises(ValueError, match="itself"):
        lower_id_offers(a, a)


# --- Every error code, through the hub ----------------------------------------------------------


def announce(peer_id: str, session: str = "default", **extra: Any) -> str:
    return rpc(
        "peer.announce",
        {"peer_id": peer_id, "capabilities": ["audio"], "session_id": session, **extra},
    )


def relay(method: str, frm: str, to: str, **extra: Any) -> str:
    params: dict[str, Any] = {"from": frm, "to": to}
    if method == "peer.ice_candidate":
        params["candidate"] = CANDIDATES[0]
    else:
        params["sdp"] = SDP
    params.update(extra)
    return rpc(method, params, 99)


def hub_with(*peers: tuple[str, str], **kwargs: Any) -> SignalingHub:
    """A hub with connections 1..n announced as the given (peer_id, session) pairs."""
    hub = SignalingHub(wall_clock=lambda: 1234.5, **kwargs)
    for conn, (peer_id, session) in enumerate(peers, start=1):
        hub.open(conn)
        sent = hub.receive(conn, announce(peer_id, session), 0.0)
        assert "result" in last_json(sent), sent
    hub.open(100)  # an unannounced connection
    return hub


def last_json(actions: list[Send | Close]) -> dict[str, Any]:
    action = actions[-1]
    assert isinstance(action, Send), actions
    message: dict[str, Any] = json.loads(action.text)
    return message


def only_reply(actions: list[Send | Close], conn: int) -> dict[str, Any]:
    assert len(actions) == 1, actions
    action = actions[0]
    assert isinstance(action, Send)
    assert action.conn == conn
    reply: dict[str, Any] = json.loads(action.text)
    return reply


ERROR_CASES: list[tuple[int, Callable[[], tuple[SignalingHub, int, str | bytes]]]] = [
    (-32700, lambda: (hub_with(), 100, "{oops")),
    (-32600, lambda: (hub_with(), 100, '{"jsonrpc":"2.0","id":9,"method":1}')),
    (-32601, lambda: (hub_with(), 100, rpc("peer.fly", {}, 9))),
    (-32602, lambda: (hub_with(), 100, rpc("peer.announce", {"peer_id": "a"}, 9))),
    (-32000, lambda: (hub_with(("a", "s")), 1, relay("peer.offer", "a", "ghost"))),
    (-32001, lambda: (hub_with(("a", "s")), 100, relay("peer.offer", "x", "a"))),
    (-32002, lambda: (hub_with(("a", "s")), 1, relay("peer.offer", "a", "b", sdp="v=0"))),
    (-32003, lambda: (hub_with(("a", "s")), 1, relay("peer.answer", "a", "b", sdp="x"))),
    (
        -32004,
        lambda: (hub_with(("a", "s")), 1, relay("peer.ice_candidate", "a", "b", candidate="c")),
    ),
    (-32005, lambda: (hub_with(("a", "s"), max_peers=1), 100, announce("b", "s"))),
    (-32006, lambda: (hub_with(("a", "s")), 100, announce("a", "t"))),
    (-32007, lambda: (hub_with(("a", "s"), ("b", "s")), 1, relay("peer.offer", "b", "a"))),
    (-32007, lambda: (hub_with(("a", "s"), ("b", "t")), 1, relay("peer.offer", "a", "b"))),
    (-32007, lambda: (hub_with(auth_required=True), 100, announce("a"))),  # no token's claims
    (
        -32007,
        lambda: (hub_with(("a", "s"), ("b", "s")), 1, rpc("peer.disconnect", {"peer_id": "b"})),
    ),
]


@pytest.mark.parametrize(("code", "case"), ERROR_CASES)
def test_every_error_code_reaches_the_sender_only(
    code: int, case: Callable[[], tuple[SignalingHub, int, str | bytes]]
) -> None:
    hub, conn, data = case()
    before = hub.sessions()
    reply = only_reply(hub.receive(conn, data, 1.0), conn)
    assert reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str)
    assert len(reply["error"]["message"]) > 5
    assert hub.sessions() == before


def test_every_documented_code_is_exercised() -> None:
    exercised = {code for code, _ in ERROR_CASES} | {-32603, -32008}  # the two tests below
    exercised.add(-32009)  # peer to peer, in peer.error: test_peer_error_reaches_the_offerer_only
    assert exercised == {int(c) for c in ErrorCode}


def test_peer_error_reaches_the_offerer_only() -> None:
    hub = hub_with(("a", "s"), ("b", "s"), ("c", "s"))
    error = {"code": -32009, "message": "video section 1 offers VP8; meshrtc video uses VP9"}
    sent = hub.receive(2, rpc("peer.error", {"from": "b", "to": "a", "error": error}, 7), 1.0)
    assert [(a.conn, json.loads(a.text)) for a in sent if isinstance(a, Send)] == [
        (
            1,
            {
                "jsonrpc": "2.0",
                "method": "peer.error",
                "params": {"from": "b", "to": "a", "error": error},
            },
        ),
        (2, {"jsonrpc": "2.0", "id": 7, "result": {"status": "forwarded"}}),
    ]
    notice = parse_notification(
        Notification("peer.error", {"from": "b", "to": "a", "error": error})
    )
    assert notice == PeerErrorNotice("b", "a", -32009, error["message"])


@pytest.mark.parametrize(
    "error",
    [
        None,
        {"code": -32009},
        {"code": "x", "message": "m"},
        {"code": True, "message": "m"},
        {"code": -32009, "message": 5},
        {"code": -32009, "message": "m" * 2049},
        {"code": -32009, "message": "m", "data": 1},
    ],
)
def test_peer_error_needs_a_json_rpc_error_object(error: object) -> None:
    hub = hub_with(("a", "s"), ("b", "s"))
    params = {"from": "b", "to": "a", "error": error}
    reply = only_reply(hub.receive(2, rpc("peer.error", params, 7), 1.0), 2)
    assert reply["error"]["code"] == -32602


def test_internal_error_is_reported_and_the_hub_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = hub_with(("a", "s"))

    def explode(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(hub, "_dispatch", explode)
    reply = only_reply(hub.receive(1, rpc("peer.list", {}, 5), 1.0), 1)
    assert reply == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": -32603, "message": "internal server error"},
    }


def test_rate_limit_refuses_then_closes_a_flooder() -> None:
    hub = hub_with(("a", "s"), rate_limit=1.0, rate_burst=2.0)
    replies = [hub.receive(1, rpc("peer.list", {}, i), 50.0) for i in range(3)]
    assert [("result" in last_json(r)) for r in replies[:2]] == [True, True]
    refused = only_reply(replies[2], 1)
    assert refused["error"]["code"] == -32008
    assert refused["id"] == 2
    assert hub.receive(1, rpc("peer.list", {}, None), 50.0) == [
        Close(1, 1008, "rate limit exceeded", hub_reason("rate_limited"))
    ]
    # After a quiet second the peer may talk again.
    assert "result" in only_reply(hub.receive(1, rpc("peer.list", {}, 9), 52.0), 1)


def hub_reason(value: str) -> LeaveReason:
    return LeaveReason(value)


def test_notifications_get_no_response_even_on_error() -> None:
    hub = hub_with(("a", "s"))
    assert hub.receive(1, rpc("peer.offer", {"from": "a", "to": "zz", "sdp": SDP}, None), 1) == []
    assert hub.receive(1, rpc("peer.fly", {}, None), 1) == []


# --- Hub behaviour ------------------------------------------------------------------------------


def test_announce_tells_the_others_and_lists_them_in_join_order() -> None:
    hub = hub_with(("a", "s"), ("b", "s"), ("z", "other"))
    hub.open(4)
    actions = hub.receive(4, announce("c", "s", user_data={"name": "Cee"}), 1.0)
    joined = {"peer_id": "c", "capabilities": ["audio"], "user_data": {"name": "Cee"}}
    notification = json.dumps({"jsonrpc": "2.0", "method": "peer.joined", "params": joined})
    assert actions[:2] == [
        Send(1, notification.replace(" ", "")),
        Send(2, notification.replace(" ", "")),
    ]
    result = last_json(actions)["result"]
    assert [p["peer_id"] for p in result["peers"]] == ["a", "b"]
    assert result["session_id"] == "s"
    assert result["server_time"] == 1234.5
    assert hub.sessions() == {"s": ("a", "b", "c"), "other": ("z",)}


def test_offer_is_forwarded_with_the_same_params_and_acknowledged() -> None:
    hub = hub_with(("a", "s"), ("b", "s"))
    actions = hub.receive(1, relay("peer.offer", "a", "b"), 1.0)
    assert last_json(actions[:1]) == {
        "jsonrpc": "2.0",
        "method": "peer.offer",
        "params": {"from": "a", "to": "b", "sdp": SDP},
    }
    assert actions[0].conn == 2
    assert last_json(actions) == {
        "jsonrpc": "2.0",
        "id": 99,
        "result": {"status": "forwarded"},
    }


def test_leaving_notifies_the_session_and_frees_the_id() -> None:
    hub = hub_with(("a", "s"), ("b", "s"), ("c", "t"))
    actions = hub.receive(1, rpc("peer.disconnect", {"peer_id": "a"}, 3), 1.0)
    left = {
        "jsonrpc": "2.0",
        "method": "peer.left",
        "params": {"peer_id": "a", "reason": "disconnect"},
    }
    assert [(a.conn, json.loads(a.text)) for a in actions if isinstance(a, Send)] == [
        (2, left),
        (1, {"jsonrpc": "2.0", "id": 3, "result": {"status": "left"}}),
    ]
    # The connection may announce again, even in another session.
    assert "result" in last_json(hub.receive(1, announce("a", "t"), 1.0))
    closed = hub.close(3, hub_reason("timeout"))
    assert [a.conn for a in closed] == [1]
    assert hub.sessions() == {"s": ("b",), "t": ("a",)}
    assert hub.session_of("c") is None
    assert hub.close(3, hub_reason("closed")) == []


def test_announcing_twice_on_one_connection_is_refused() -> None:
    hub = hub_with(("a", "s"))
    reply = only_reply(hub.receive(1, announce("b", "s"), 1.0), 1)
    assert reply["error"]["code"] == -32600
    assert "already announced" in reply["error"]["message"]


def test_sending_to_yourself_is_invalid_params() -> None:
    hub = hub_with(("a", "s"))
    reply = only_reply(hub.receive(1, relay("peer.offer", "a", "a"), 1.0), 1)
    assert reply["error"]["code"] == -32602
