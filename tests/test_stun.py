from __future__ import annotations

import trio
from aioice import stun

from meshrtc.rtc.stun import StunResponder, StunServer


def _binding_request() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


def test_responder_answers_binding_with_xor_mapped_address() -> None:
    responder = StunResponder()
    request = _binding_request()
    reply = responder.respond(bytes(request), ("127.0.0.1", 40000))
    assert reply is not None
    response = stun.parse_message(reply)
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("127.0.0.1", 40000)
    assert "FINGERPRINT" in response.attributes
    assert responder.answered == 1


def test_responder_ignores_garbage_and_non_requests() -> None:
    responder = StunResponder()
    indication = stun.Message(
        message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION
    )
    for datagram in (b"", b"hello", bytes(indication), b"\x00" * 2000):
        assert responder.respond(datagram, ("127.0.0.1", 1)) is None
    assert responder.ignored == 4
    assert responder.answered == 0


async def test_server_answers_over_loopback_udp() -> None:
    async with trio.open_nursery() as nursery:
        server: StunServer = await nursery.start(StunServer().run)
        assert server.port > 0
        assert server.url == f"stun:127.0.0.1:{server.port}"
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            request = _binding_request()
            with trio.fail_after(5):
                await sock.sendto(b"junk", ("127.0.0.1", server.port))
                await sock.sendto(bytes(request), ("127.0.0.1", server.port))
                reply, _ = await sock.recvfrom(2048)
            local = sock.getsockname()
        response = stun.parse_message(reply)
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == local
        assert server.responder.ignored == 1
        nursery.cancel_scope.cancel()
