"""The control protocol's framing and message set (meshrtc.host.control), sans-IO."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrtc.errors import MeshRtcError
from meshrtc.host.control import (
    DEFAULT_MAX_FRAME,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPERVISOR_TO_WORKER,
    WORKER_TO_SUPERVISOR,
    Bye,
    ControlProtocolError,
    FrameDecoder,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolErrorKind,
    Shutdown,
    decode_body,
    encode,
)

_finite = st.floats(allow_nan=False, allow_infinity=False)
_seq = st.integers(min_value=0, max_value=2**53)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, worker_id=st.text(max_size=40), pid=st.integers(1, 2**22)),
    st.builds(Ping, seq=_seq, clock=_finite),
    st.builds(Pong, seq=_seq, clock=_finite),
    st.builds(Shutdown, drain_deadline=_finite),
    st.builds(Bye, reason=st.text(max_size=40)),
)


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def kind_of(data: bytes, **kwargs: object) -> ProtocolErrorKind:
    with pytest.raises(ControlProtocolError) as caught:
        FrameDecoder(**kwargs).feed(data)  # type: ignore[arg-type]
    return caught.value.kind


@given(messages)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:])["v"] == PROTOCOL_VERSION
    assert FrameDecoder().feed(data) == [message]


@given(st.lists(messages, max_size=8), st.data())
def test_any_chunking_decodes_to_the_same_messages(
    stream: list[Message], data: st.DataObject
) -> None:
    wire = b"".join(encode(m) for m in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    decoder = FrameDecoder()
    out: list[Message] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    decoder.eof()
    assert out == stream
    assert decoder.buffered == 0


@given(max_frame=st.integers(0, 1 << 24), excess=st.integers(1, 1 << 31))
def test_oversize_is_refused_from_the_header_alone(max_frame: int, excess: int) -> None:
    length = min(max_frame + excess, 2**32 - 1)
    decoder = FrameDecoder(max_frame=max_frame)
    with pytest.raises(ControlProtocolError) as caught:
        decoder.feed(struct.pack(">I", length))  # no body byte was ever offered
    assert caught.value.kind is ProtocolErrorKind.OVERSIZE
    assert decoder.buffered == 0


def test_a_frame_of_exactly_the_maximum_is_accepted() -> None:
    data = encode(Bye(reason="x"))
    assert FrameDecoder(max_frame=len(data) - 4).feed(data) == [Bye(reason="x")]
    assert kind_of(data, max_frame=len(data) - 5) is ProtocolErrorKind.OVERSIZE


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(ControlProtocolError) as caught:
        encode(Bye(reason="x" * 100), max_frame=50)
    assert caught.value.kind is ProtocolErrorKind.OVERSIZE
    assert DEFAULT_MAX_FRAME >= 64 * 1024


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (struct.pack(">I", 2) + b"{]", ProtocolErrorKind.BAD_JSON),
        (struct.pack(">I", 0), ProtocolErrorKind.BAD_JSON),
        (struct.pack(">I", 2) + b"\xff\xfe", ProtocolErrorKind.BAD_JSON),
        (frame([1, 2]), ProtocolErrorKind.BAD_MESSAGE),
        (frame({"v": PROTOCOL_VERSION, "type": "start_session"}), ProtocolErrorKind.UNKNOWN_TYPE),
        (frame({"v": PROTOCOL_VERSION, "type": 3}), ProtocolErrorKind.UNKNOWN_TYPE),
        (frame({"v": PROTOCOL_VERSION + 1, "type": "bye"}), ProtocolErrorKind.WRONG_VERSION),
        (frame({"type": "bye"}), ProtocolErrorKind.WRONG_VERSION),
        (frame({"v": True, "type": "bye"}), ProtocolErrorKind.WRONG_VERSION),
        (frame({"v": PROTOCOL_VERSION, "type": "ping", "seq": 1}), ProtocolErrorKind.BAD_MESSAGE),
        (
            frame({"v": PROTOCOL_VERSION, "type": "ping", "seq": True, "clock": 1.0}),
            ProtocolErrorKind.BAD_MESSAGE,
        ),
        (
            frame({"v": PROTOCOL_VERSION, "type": "hello", "worker_id": 7, "pid": 1}),
            ProtocolErrorKind.BAD_MESSAGE,
        ),
    ],
    ids=[
        "not-json",
        "empty",
        "not-utf8",
        "not-an-object",
        "reserved-type",
        "non-string-type",
        "newer-version",
        "no-version",
        "bool-version",
        "missing-field",
        "bool-for-int",
        "int-for-str",
    ],
)
def test_malformed_frames_are_typed_errors(data: bytes, kind: ProtocolErrorKind) -> None:
    assert kind_of(data) is kind


@given(st.binary(max_size=300), st.integers(0, 64))
def test_any_bytes_give_messages_or_a_protocol_error(data: bytes, max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    try:
        decoder.feed(data)
        decoder.eof()
    except ControlProtocolError:
        pass
    assert decoder.buffered <= 4 + max_frame


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    body = b"[" * 100_000
    assert kind_of(struct.pack(">I", len(body)) + body) is ProtocolErrorKind.BAD_JSON


def test_nan_is_not_json() -> None:
    body = b'{"v":1,"type":"ping","seq":1,"clock":NaN}'
    with pytest.raises(ControlProtocolError) as caught:
        decode_body(body)
    assert caught.value.kind is ProtocolErrorKind.BAD_JSON
    with pytest.raises(ValueError, match="JSON"):
        encode(Ping(seq=1, clock=float("nan")))


def test_unknown_fields_are_ignored_and_defaults_apply() -> None:
    """Adding an optional field is not a version change (docs/host.md)."""
    data = frame({"v": PROTOCOL_VERSION, "type": "bye", "extra": [1]})
    assert FrameDecoder().feed(data) == [Bye(reason="shutdown")]
    assert FrameDecoder().feed(frame({"v": 1, "type": "ping", "seq": 2, "clock": 3})) == [
        Ping(seq=2, clock=3)
    ]


def test_each_side_accepts_only_what_the_other_sends() -> None:
    assert set(MESSAGE_TYPES) == SUPERVISOR_TO_WORKER | WORKER_TO_SUPERVISOR
    assert not SUPERVISOR_TO_WORKER & WORKER_TO_SUPERVISOR
    ping = encode(Ping(seq=1, clock=0.0))
    assert FrameDecoder(accept=SUPERVISOR_TO_WORKER).feed(ping) == [Ping(seq=1, clock=0.0)]
    assert kind_of(ping, accept=WORKER_TO_SUPERVISOR) is ProtocolErrorKind.UNEXPECTED


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    good = encode(Bye())
    with pytest.raises(ControlProtocolError):
        decoder.feed(struct.pack(">I", 2) + b"{]" + good)
    with pytest.raises(ControlProtocolError):
        decoder.feed(good)
    with pytest.raises(ControlProtocolError):
        decoder.eof()


@given(messages, st.data())
def test_eof_inside_a_frame_is_truncation(message: Message, data: st.DataObject) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(1, len(wire) - 1))
    decoder = FrameDecoder()
    assert decoder.feed(wire[:cut]) == []
    with pytest.raises(ControlProtocolError) as caught:
        decoder.eof()
    assert caught.value.kind is ProtocolErrorKind.TRUNCATED


def test_messages_before_a_bad_frame_in_the_same_chunk_are_kept() -> None:
    """A worker's hello followed by garbage in one read: the hello is still known."""
    hello = Hello(worker_id="w", pid=1)
    with pytest.raises(ControlProtocolError) as caught:
        FrameDecoder().feed(encode(hello) + struct.pack(">I", 2) + b"{]")
    assert caught.value.decoded == [hello]


def test_protocol_errors_are_meshrtc_errors() -> None:
    assert issubclass(ControlProtocolError, MeshRtcError)
