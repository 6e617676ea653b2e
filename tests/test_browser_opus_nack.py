"""Opus ``a=rtcp-fb:<pt> nack`` between Chromium and meshrtc's negotiation (issue 17, audio NACK).

meshrtc's offer lists NACK for Opus (aiortc_adapter.OPUS_RTCP_FEEDBACK), so a browser that
supports audio NACK keeps its audio packets to resend them; Chromium's own offer does not list it,
and then our answer does not either (aiortc answers with the feedback both sides listed). The
negotiation still completes both ways. Only SDP is exchanged (no media). About 3 s.
"""

from __future__ import annotations

from aiortc import RTCSessionDescription

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.bridge import open_bridge
from tests.browser_helpers import open_chromium
from tests.test_browser import chromium
from tests.test_browser_opus_sdp import ANSWER_OFFER, CREATE_OFFER, _new_pc


def opus_feedback(sdp: str) -> list[str]:
    """The Opus payload type's ``a=rtcp-fb`` values."""
    lines = sdp.splitlines()
    pt = next(
        line.split()[0].split(":")[1]
        for line in lines
        if line.startswith("a=rtpmap:") and line.lower().split()[1].startswith("opus/48000")
    )
    return [line.split(" ", 1)[1] for line in lines if line.startswith(f"a=rtcp-fb:{pt} ")]


async def test_chromium_negotiates_with_meshrtc_offering_opus_nack() -> None:
    binary = chromium()
    preferences = {"audio": adapter.codec_preferences("audio")}
    async with open_bridge() as bridge, open_chromium(binary) as browser:
        page = await browser.new_page("about:blank")

        offer = await page.evaluate(CREATE_OFFER)
        ours = await _new_pc(bridge)
        try:
            answer = await bridge.run(adapter.answer_offer, ours, offer, preferences)
        finally:
            await bridge.run(ours.close)
        assert ("nack" in opus_feedback(answer.sdp)) == ("nack" in opus_feedback(offer))
        await page.evaluate(
            f"window.pc.setRemoteDescription({{type: 'answer', sdp: {answer.sdp!r}}})"
        )

        offerer = await _new_pc(bridge)
        try:

            async def offer_from_meshrtc() -> str:
                offerer.addTransceiver("audio").setCodecPreferences(preferences["audio"])
                await offerer.setLocalDescription(await offerer.createOffer())
                return str(offerer.localDescription.sdp)

            our_offer = await bridge.run(offer_from_meshrtc)
            assert "nack" in opus_feedback(our_offer), our_offer
            their_answer = await page.evaluate(f"({ANSWER_OFFER})({our_offer!r})")
            print(
                f"Chromium's offer: Opus feedback {opus_feedback(offer)}; its answer to ours: "
                f"{opus_feedback(their_answer)}"
            )
            await bridge.run(
                offerer.setRemoteDescription, RTCSessionDescription(their_answer, "answer")
            )
        finally:
            await bridge.run(offerer.close)
        await page.evaluate("window.pc.close(); window.answerer.close()")
