"""WebRtcTransport lifecycle: the statechart is driven truthfully and cleanup is complete."""

from __future__ import annotations

import threading

import pytest
import trio

from meshrtc.config import TransportConfig
from meshrtc.pipeline import default_manifest
from meshrtc.rtc.stun import StunServer
from meshrtc.session import RunningSession
from meshrtc.signaling.server import SignalingServer
from meshrtc.transport import TransportError, WebRtcTransport


def _config(server: SignalingServer, stun: StunServer, peer_id: str = "t1") -> TransportConfig:
    return TransportConfig(
        signaling_url=server.url,
        stun_servers=[stun.url],
        peer_id=peer_id,
        video_codec="H264",
        ice_host_addresses=("127.0.0.1",),
    )


async def test_lifecycle_and_cancel_from_outside() -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    async with trio.open_nursery() as servers:
        stun: StunServer = await servers.start(StunServer().run)
        server: SignalingServer = await servers.start(SignalingServer(port=0).run)
        transport = WebRtcTransport(_config(server, stun))
        assert transport.state == "Created"
        with pytest.raises(TransportError):
            await transport.run_session(default_manifest())
        seen: list[str] = []
        with trio.fail_after(20):
            with trio.CancelScope() as outer:
                async with transport, trio.open_nursery() as nursery:
                    seen.append(transport.state)
                    running: RunningSession = await nursery.start(
                        transport.run_session, default_manifest()
                    )
                    assert running.session.state == "Active"
                    assert transport.sessions.list_active() == [running.session]
                    outer.cancel()  # cancelled from outside while a session runs
                    await trio.sleep_forever()
        assert seen == ["Ready"]
        assert transport.state == "Shutdown"
        assert running.session.state == "Closed"
        assert transport.sessions.list_active() == []
        assert transport.teardown_seconds is not None
        assert transport.teardown_seconds < 1.0
        assert transport.connect_seconds is not None
        with pytest.raises(TransportError):
            async with transport:
                pass
        servers.cancel_scope.cancel()
    leftover = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert leftover == []


async def test_cancelled_while_starting_ends_in_shutdown() -> None:
    # Nobody listens on this port: the signaling client keeps retrying until our scope gives up,
    # and the transport must not stay half-open.
    async with trio.open_nursery() as servers:
        stun: StunServer = await servers.start(StunServer().run)
        config = TransportConfig(
            signaling_url="ws://127.0.0.1:9/ws",
            stun_servers=[stun.url],
            peer_id="t2",
            video_codec="H264",
        )
        transport = WebRtcTransport(config)
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            async with transport:
                pass
        assert transport.state == "Shutdown"
        servers.cancel_scope.cancel()
