"""SessionRouter's counters come out as frozen snapshots; only the router changes them."""

from __future__ import annotations

import attrs
import pytest

from meshrtc.pipeline import Json, default_manifest
from meshrtc.session import SessionRouter, StreamSession
from tests.test_session import FakePeer, _audio, _stream


async def test_statistics_is_a_frozen_snapshot_of_what_the_router_counted() -> None:
    stream, recv_in = _stream()
    session = StreamSession(default_manifest())
    router = SessionRouter(session, stream)
    assert not await router.accept(_audio("a", 1.0), stream.inputs)  # Initializing: dropped
    before = router.statistics()
    session.activate()
    session.add_peer(FakePeer("a"))
    assert await router.accept(_audio("a", 1.0), stream.inputs)
    assert not await router.accept(_audio("ghost", 1.0), stream.inputs)  # not in the session
    assert await router.accept(_audio("a", 1.02), stream.inputs)
    await router.deliver(Json(value={"x": 1}, to_peer="gone"))
    after = router.statistics()

    assert (before.inputs_dropped, before.frames_in) == (1, {})  # taken before: unchanged since
    assert after.inputs_dropped == 2
    assert after.frames_in == {"a": 2}
    assert after.outputs_unroutable == 1
    assert after.send_errors == 0
    assert after.frames_out == {}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.send_errors = 5  # type: ignore[misc]
    assert not hasattr(session, "inputs_dropped")  # the router's count, not the session's
    assert [recv_in.receive_nowait().peer_id for _ in range(2)] == ["a", "a"]
