"""Malformed frames against a real server: each gets a clear error, and the neighbour never notices.

Each generated frame carries its own expectation (the error code and id it must be answered with,
or silence for a notification), so the test does not re-implement the parser it is checking.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from meshrtc.signaling.protocol import MAX_MESSAGE_SIZE, ErrorCode

from .test_signaling_server import SDP, RawPeer, raw_peer, serving

DOCUMENTED = {int(code) for code in ErrorCode}
CLIENT_METHODS = ["peer.announce", "peer.offer", "peer.answer", "peer.ice_candidate", "peer.list"]
PARAM_NAMES = ["peer_id", "capabilities", "session_id", "user_data", "token", "from", "to", "sdp"]
PARAM_NAMES += ["candidate", "sdp_mid", "sdp_m_line_index", "username_fragment"]

# What a frame must get back: (codes, id) for exactly one error, ("any", id) for exactly one
# response of either kind, or None for silence.
Expect = tuple[frozenset[int], Any] | tuple[str, Any] | None

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
not_objects = json_values.filter(lambda v: not isinstance(v, dict))


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _error(*codes: int) -> frozenset[int]:
    return frozenset(codes)


@attrs.frozen
class Deep:
    """A deeply nested frame, built only when sent (its repr stays short in failure reports)."""

    depth: int
    array: bool

    def text(self) -> str:
        if self.array:
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "1" + "}" * self.depth


Frame: TypeAlias = str | bytes | Deep


@st.composite
def frames(draw: st.DrawFn, request_id: int) -> tuple[Frame, Expect]:
    kind = draw(
        st.sampled_from(
            [
                "not_json",
                "binary",
                "not_object",
                "huge_number",
                "deep",
                "bad_method",
                "bad_params",
                "bad_id",
                "junk_request",
                "junk_notification",
            ]
        )
    )
    envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if kind == "not_json":
        text = draw(st.text(max_size=50).filter(lambda t: not _parses(t)))
        return text, (_error(-32700), None)
    if kind == "binary":
        return draw(st.binary(max_size=64)), (_error(-32700), None)
    if kind == "not_object":
        return json.dumps(draw(not_objects)), (_error(-32600), None)
    if kind == "huge_number":
        text = draw(
            st.sampled_from(
                [
                    "1" * 5000,
                    "1e400",
                    "-1e400",
                    '{"jsonrpc":"2.0","id":3,"method":"peer.list","params":{"x":1e999}}',
                    '{"jsonrpc":"2.0","id":' + "9" * 5000 + ',"method":"peer.list"}',
                ]
            )
        )
        return text, (_error(-32700), None)
    if kind == "deep":
        # Up to ~900 kB: deep enough to overflow any recursive parser, under the 1 MiB limit.
        depth = draw(st.integers(1, 150_000))
        array = draw(st.booleans())
        return Deep(depth, array), (_error(-32600, -32700), None)
    if kind == "bad_method":
        envelope["method"] = draw(not_objects.filter(lambda v: not isinstance(v, str)))
        return json.dumps(envelope), (_error(-32600), request_id)
    if kind == "bad_params":
        envelope["method"] = draw(st.sampled_from(CLIENT_METHODS))
        envelope["params"] = draw(not_objects.filter(lambda v: v is not None))
        return json.dumps(envelope), (_error(-32602), request_id)
    if kind == "bad_id":
        bad = draw(
            st.one_of(
                st.integers(-1000, 1000).map(lambda i: i + 0.5),
                st.booleans(),
                st.none(),
                st.lists(scalars, max_size=2),
                st.integers(min_value=2**53),
                st.text(min_size=129, max_size=200),
            )
        )
        frame = json.dumps({"jsonrpc": "2.0", "id": bad, "method": "peer.list"})
        return frame, (_error(-32600), None)
    params = draw(
        st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=6), json_values, max_size=5)
    )
    method = draw(st.sampled_from(CLIENT_METHODS) | st.text(max_size=12))
    if kind == "junk_request":
        envelope.update(method=method, params=params)
        return json.dumps(envelope), ("any", request_id)
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}), None


@st.composite
def frame_lists(draw: st.DrawFn) -> list[tuple[Frame, Expect]]:
    count = draw(st.integers(1, 12))
    return [draw(frames(request_id=1000 + i)) for i in range(count)]


def _check_error_shape(response: dict[str, Any]) -> int:
    assert set(response) == {"jsonrpc", "id", "error"}
    error = response["error"]
    assert set(error) <= {"code", "message", "data"}
    assert error["code"] in DOCUMENTED
    assert isinstance(error["message"], str)
    assert len(error["message"]) >= 8, error
    code: int = error["code"]
    return code


async def _expect_untouched_neighbour(fuzzer: RawPeer, neighbour: RawPeer) -> None:
    # Nothing reached the neighbour but the fuzzer's arrival.
    notifications = [m for m in neighbour.received if "method" in m]
    assert [m["method"] for m in notifications] == ["peer.joined"], neighbour.received
    offer = {"from": "n", "to": "f", "sdp": SDP}
    assert (await neighbour.call("peer.offer", offer))["result"] == {"status": "forwarded"}
    assert (await fuzzer.wait_notification("peer.offer"))["params"] == offer
    listed = (await neighbour.call("peer.list"))["result"]["peers"]
    assert [p["peer_id"] for p in listed] == ["f"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(batch=frame_lists())
async def test_malformed_frames_get_clear_errors_and_leave_the_neighbour_alone(
    batch: list[tuple[Frame, Expect]],
) -> None:
    async with serving() as server, raw_peer(server.url) as fuzzer, raw_peer(server.url) as nb:
        await nb.announce("n")
        await fuzzer.announce("f")
        skip = len(fuzzer.received)
        for frame, _ in batch:
            await fuzzer.send(frame.text() if isinstance(frame, Deep) else frame)
        await fuzzer.call("peer.list")  # a barrier: every earlier answer arrives before this one
        answers = [m for m in fuzzer.received[skip:] if "method" not in m][:-1]
        expected = [e for _, e in batch if e is not None]
        assert len(answers) == len(expected), (answers, expected)
        for answer, expect in zip(answers, expected, strict=True):
            assert expect is not None
            codes, request_id = expect
            assert answer["id"] == request_id
            if codes == "any":
                if "error" in answer:
                    _check_error_shape(answer)
                else:
                    assert set(answer) == {"jsonrpc", "id", "result"}
            else:
                assert _check_error_shape(answer) in codes
        assert server.hub.sessions() == {"default": ("n", "f")}
        await _expect_untouched_neighbour(fuzzer, nb)


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", -32700, "parse error"),
        (b"\x00\xff", -32700, "binary frames are not accepted"),
        ('{"jsonrpc":"2.0","id":1,"method":"peer.list","params":[]}', -32602, "by-name"),
        ('{"jsonrpc":"2.0","id":1,"method":["peer.list"]}', -32600, '"method" must be a string'),
        ('{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"from":5}}', -32602, "from"),
        ("1e400", -32700, "out of range"),
        ("9" * 5000, -32700, "digits"),
        ("[" * 200_000 + "]" * 200_000, -32700, "nested too deeply"),
    ],
)
async def test_each_kind_of_malformed_frame_is_explained(
    frame: str | bytes, code: int, words: str
) -> None:
    async with serving() as server, raw_peer(server.url) as fuzzer, raw_peer(server.url) as nb:
        await nb.announce("n")
        await fuzzer.announce("f")
        await fuzzer.send(frame)
        error = await fuzzer.wait_for(lambda m: "error" in m)
        assert error["error"]["code"] == code
        assert words in error["error"]["message"]
        await _expect_untouched_neighbour(fuzzer, nb)


async def test_an_oversized_frame_closes_only_its_sender() -> None:
    async with serving() as server, raw_peer(server.url) as big, raw_peer(server.url) as nb:
        await nb.announce("n")
        await big.announce("big")
        await big.send(json.dumps({"pad": "x" * MAX_MESSAGE_SIZE}))
        with trio.fail_after(5):
            await big.closed.wait()
        assert big.close_reason is not None
        assert big.close_reason.code == 1009
        left = await nb.wait_notification("peer.left", peer_id="big")
        assert left["params"]["reason"] == "message_too_big"
        assert [m["method"] for m in nb.received if "method" in m] == ["peer.joined", "peer.left"]
        assert (await nb.call("peer.list"))["result"] == {"peers": []}
        # Just under the limit is fine (for a member: a stranger may send 16 KiB).
        async with raw_peer(server.url) as fine:
            await fine.announce("fine")
            await fine.send("x" * (MAX_MESSAGE_SIZE - 1))
            error = await fine.wait_for(lambda m: "error" in m)
            assert error["error"]["code"] == -32700
