"""Opus ``useinbandfec=1`` both ways between Chromium and meshrtc's negotiation (issue 17).

Chromium's Opus encoder sends in-band FEC only when the *other* side's fmtp asks for it
(tests/test_browser_fec.py shows it does once negotiated): so our answer to Chromium's offer, and
our offer to Chromium, must say ``useinbandfec=1``; Chromium's own offer and answer say it for us.
Only SDP is exchanged (no media); aiortc's host candidates are loopback only. About 3 s.
"""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.bridge import Bridge, open_bridge
from tests.browser_helpers import open_chromium
from tests.test_browser import chromium

CREATE_OFFER = """(async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', {direction: 'sendrecv'});
  await pc.setLocalDescription(await pc.createOffer());
  window.pc = pc;
  return pc.localDescription.sdp;
})()"""

ANSWER_OFFER = """(async (offer) => {
  const pc = new RTCPeerConnection();
  await pc.setRemoteDescription({type: 'offer', sdp: offer});
  await pc.setLocalDescription(await pc.createAnswer());
  window.answerer = pc;
  return pc.localDescription.sdp;
})"""


def opus_fmtp(sdp: str) -> dict[str, str]:
    """The Opus payload type's fmtp parameters (lower-case names)."""
    lines = sdp.splitlines()
    pt = next(
        line.split()[0].split(":")[1]
        for line in lines
        if line.startswith("a=rtpmap:") and line.lower().split()[1].startswith("opus/48000")
    )
    fmtp = next((line.split(" ", 1)[1] for line in lines if line.startswith(f"a=fmtp:{pt} ")), "")
    return {
        p.split("=", 1)[0].strip().lower(): p.split("=", 1)[1].strip()
        for p in fmtp.split(";")
        if "=" in p
    }


async def _new_pc(bridge: Bridge) -> RTCPeerConnection:
    def make() -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        adapter.use_host_addresses(pc, ["127.0.0.1"])
        return pc

    return await bridge.call(make)


async def test_chromium_and_meshrtc_both_ask_for_inband_fec() -> None:
    binary = chromium()
    preferences = {"audio": adapter.codec_preferences("audio")}
    async with open_bridge() as bridge, open_chromium(binary) as browser:
        page = await browser.new_page("about:blank")

        # Chromium offers; meshrtc answers (what the transport does for a browser joining).
        offer = await page.evaluate(CREATE_OFFER)
        assert opus_fmtp(offer).get("useinbandfec") == "1", offer
        ours = await _new_pc(bridge)
        try:
            answer = await bridge.run(adapter.answer_offer, ours, offer, preferences)
        finally:
            await bridge.run(ours.close)
        assert opus_fmtp(answer.sdp).get("useinbandfec") == "1", answer.sdp
        await page.evaluate(
            f"window.pc.setRemoteDescription({{type: 'answer', sdp: {answer.sdp!r}}})"
        )
        remote = await page.evaluate("window.pc.remoteDescription.sdp")
        assert opus_fmtp(remote).get("useinbandfec") == "1"  # Chromium took it as it is

        # meshrtc offers; Chromium answers.
        offerer = await _new_pc(bridge)
        try:

            async def offer_from_meshrtc() -> str:
                offerer.addTransceiver("audio").setCodecPreferences(preferences["audio"])
                await offerer.setLocalDescription(await offerer.createOffer())
                return str(offerer.localDescription.sdp)

            our_offer = await bridge.run(offer_from_meshrtc)
            assert opus_fmtp(our_offer).get("useinbandfec") == "1", our_offer
            their_answer = await page.evaluate(f"({ANSWER_OFFER})({our_offer!r})")
            assert opus_fmtp(their_answer).get("useinbandfec") == "1", their_answer
            await bridge.run(
                offerer.setRemoteDescription, RTCSessionDescription(their_answer, "answer")
            )
        finally:
            await bridge.run(offerer.close)
        await page.evaluate("window.pc.close(); window.answerer.close()")
