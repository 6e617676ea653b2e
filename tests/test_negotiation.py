"""meshrtc.media.negotiation: rejected sections in SDP text, on hand-built and generated offers.

The generated offers are shaped like real ones (session part, BUNDLE group, audio/video/application
sections with mids, formats, rtpmap/fmtp/rtcp-fb, ssrc, ICE/DTLS attributes, candidates), in either
line-end style, so the invariants hold for what browsers, GStreamer and aiortc send: every section
keeps its place, kind and mid; only the touched sections change; rejected ones leave BUNDLE.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from meshrtc.media.negotiation import (
    SessionText,
    StandIn,
    accepted_kinds,
    reject_in_answer,
    rejected_indices,
    stand_in_answer,
    stand_in_offer,
)

VP9 = StandIn("VP9/90000", "profile-id=0")
OPUS = StandIn("opus/48000/2")

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE video0 audio1 application2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:actpass",
        "a=mid:video0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=ssrc:1 cname:x",
        "a=candidate:1 1 UDP 2015363327 127.0.0.1 5000 typ host",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:actpass",
        "a=mid:audio1",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 OPUS/48000/2",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:application2",
        "a=sctp-port:5000",
        "",
    ]
)


def test_stand_in_offer_keeps_the_section_in_place_with_one_acceptable_codec() -> None:
    seen = SessionText.parse(stand_in_offer(OFFER, {0: VP9}))
    video = seen.sections[0]
    assert video.lines == (
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:actpass",
        "a=mid:video0",
        "a=rtcp-mux",
        "a=candidate:1 1 UDP 2015363327 127.0.0.1 5000 typ host",
        "a=rtpmap:96 VP9/90000",
        "a=fmtp:96 profile-id=0",
        "a=inactive",
    )
    original = SessionText.parse(OFFER)
    assert seen.session == original.session
    assert seen.sections[1:] == original.sections[1:]


def test_reject_in_answer_writes_an_rfc_3264_rejection_outside_bundle() -> None:
    # An answer shaped like aiortc's (its own payload types, every mid bundled).
    answer = stand_in_offer(OFFER, {0: VP9}).replace("a=setup:actpass", "a=setup:active")
    rejected = SessionText.parse(reject_in_answer(answer, OFFER, [0]))
    assert rejected.sections[0].lines == (
        "m=video 0 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        # Transport attributes stay (GStreamer refuses a section without a=fingerprint).
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:active",
        "a=mid:video0",
        "a=inactive",
    )
    assert "a=group:BUNDLE audio1 application2" in rejected.session
    assert accepted_kinds(rejected.render()) == {"audio", "application"}
    assert rejected_indices(rejected.render()) == [0]


def test_stand_in_answer_makes_a_rejected_section_inactive_and_bundled() -> None:
    answer = reject_in_answer(OFFER.replace("actpass", "active"), OFFER, [0])
    seen, indices = stand_in_answer(answer, OFFER)
    assert indices == (0,)
    video = SessionText.parse(seen).sections[0]
    assert video.lines[0] == "m=video 9 UDP/TLS/RTP/SAVPF 96"
    assert "a=inactive" in video.lines
    assert "a=rtpmap:96 VP8/90000" in video.lines  # our own offer's codec
    assert "a=ice-ufrag:abcd" in video.lines  # the accepted section's transport
    assert "a=setup:active" in video.lines
    assert "a=group:BUNDLE audio1 application2 video0" in SessionText.parse(seen).session


def test_an_answer_without_rejections_is_applied_as_it_is() -> None:
    assert stand_in_answer(OFFER, OFFER) == (OFFER, ())


def test_an_answer_rejecting_everything_or_not_matching_the_offer_is_refused() -> None:
    everything = reject_in_answer(OFFER, OFFER, [0, 1])
    everything = everything.replace("m=application 9", "m=application 0")
    with pytest.raises(ValueError, match="every section"):
        stand_in_answer(everything, OFFER)
    fewer = OFFER.split("m=application")[0]
    with pytest.raises(ValueError, match="2 sections, our offer 3"):
        stand_in_answer(fewer, OFFER)
    with pytest.raises(ValueError, match="2 sections, the offer 3"):
        reject_in_answer(fewer, OFFER, [0])


#: What GStreamer 1.22's webrtcbin offered (VP8-only video; trimmed): every section after the first
#: has port 0 and a=bundle-only.
GSTREAMER_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 2248083785724595327 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=ice-options:trickle",
        "a=group:BUNDLE audio0 video1 application2",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        "a=mid:audio0",
        "a=rtpmap:111 OPUS/48000/2",
        "m=video 0 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        "a=bundle-only",
        "a=sendrecv",
        "a=rtpmap:96 VP8/90000",
        "a=mid:video1",
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=bundle-only",
        "a=mid:application2",
        "a=sctp-port:5000",
        "",
    ]
)


def test_bundle_only_sections_with_port_0_are_not_rejected() -> None:
    assert rejected_indices(GSTREAMER_OFFER) == []
    assert accepted_kinds(GSTREAMER_OFFER) == {"audio", "video", "application"}
    video = SessionText.parse(stand_in_offer(GSTREAMER_OFFER, {1: VP9})).sections[1]
    assert video.lines[0] == "m=video 0 UDP/TLS/RTP/SAVPF 96"  # still bundle-only
    assert "a=bundle-only" in video.lines
    assert "a=inactive" in video.lines
    answer = SessionText.parse(reject_in_answer(GSTREAMER_OFFER, GSTREAMER_OFFER, [1]))
    assert answer.sections[1].rejected  # port 0, no a=bundle-only: an RFC 3264 rejection


# --- generated offers ---------------------------------------------------------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@st.composite
def sections(draw: st.DrawFn, index: int) -> list[str]:
    kind = draw(st.sampled_from(["audio", "video", "application"]))
    mid = f"{draw(_TOKEN)}{index}"  # unique per offer
    transport = [
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{draw(_TOKEN)}",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 AA:BB",
        draw(st.sampled_from(["a=setup:actpass", "a=setup:active", "a=setup:passive"])),
        f"a=mid:{mid}",
    ]
    if kind == "application":
        return ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", *transport, "a=sctp-port:5000"]
    pts = draw(st.lists(st.integers(96, 127), min_size=1, max_size=4, unique=True))
    # Port 0 with a=bundle-only: a bundled section (GStreamer), not a rejected one.
    port = draw(st.sampled_from([9, 5000, 0]))
    lines = [f"m={kind} {port} UDP/TLS/RTP/SAVPF {' '.join(map(str, pts))}", *transport]
    if port == 0:
        lines.append("a=bundle-only")
    lines.append(draw(st.sampled_from(["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"])))
    lines.append("a=rtcp-mux")
    for pt in pts:
        lines.append(
            f"a=rtpmap:{pt} {draw(st.sampled_from(['VP8', 'H264', 'opus', 'PCMU']))}/90000"
        )
        if draw(st.booleans()):
            lines.append(f"a=fmtp:{pt} x={draw(_TOKEN)}")
        if draw(st.booleans()):
            lines.append(f"a=rtcp-fb:{pt} nack")
    if draw(st.booleans()):
        lines.append(f"a=ssrc:{draw(st.integers(1, 2**32 - 1))} cname:{draw(_TOKEN)}")
        lines.append(f"a=msid:{draw(_TOKEN)} {draw(_TOKEN)}")
    if draw(st.booleans()):
        lines.append("a=candidate:1 1 udp 2015363327 127.0.0.1 5000 typ host")
    return lines


@st.composite
def offers(draw: st.DrawFn) -> tuple[str, set[int]]:
    count = draw(st.integers(1, 5))
    body = [draw(sections(i)) for i in range(count)]
    mids = [next(x for x in s if x.startswith("a=mid:"))[6:] for s in body]
    session = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if draw(st.booleans()):
        session.append("a=group:BUNDLE " + " ".join(mids))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    text = eol.join([*session, *(x for s in body for x in s)]) + eol
    rtp = [i for i, s in enumerate(body) if not s[0].startswith("m=application")]
    rejected = set(draw(st.lists(st.sampled_from(rtp), unique=True))) if rtp else set()
    return text, rejected


@given(offers())
def test_parse_and_render_round_trip(case: tuple[str, set[int]]) -> None:
    text, _ = case
    assert SessionText.parse(text).render() == text


@given(offers())
def test_stand_in_offer_changes_only_the_rejected_sections(case: tuple[str, set[int]]) -> None:
    text, rejected = case
    original = SessionText.parse(text)
    seen = SessionText.parse(stand_in_offer(text, dict.fromkeys(rejected, VP9)))
    assert seen.session == original.session
    assert seen.eol == original.eol
    assert len(seen.sections) == len(original.sections)
    for i, (before, after) in enumerate(zip(original.sections, seen.sections, strict=True)):
        assert (after.kind, after.mid, after.port) == (before.kind, before.mid, before.port)
        if i not in rejected:
            assert after == before
            continue
        assert after.formats == before.formats[:1]
        assert [x for x in after.lines if x.startswith("a=rtpmap:")] == [
            f"a=rtpmap:{before.formats[0]} VP9/90000"
        ]
        assert [x for x in after.lines if x in ("a=sendrecv", "a=sendonly", "a=recvonly")] == []
        assert after.lines[-1] == "a=inactive"
        assert not any(x.startswith(("a=ssrc:", "a=msid:", "a=rtcp-fb:")) for x in after.lines)
        # Transport and candidates stay: ICE and the bundle are unaffected.
        kept = [x for x in before.lines if x.startswith(("a=ice-", "a=fingerprint", "a=cand"))]
        assert [x for x in after.lines if x in kept] == kept


@given(offers())
def test_reject_then_stand_in_answer_round_trip(case: tuple[str, set[int]]) -> None:
    text, rejected = case
    answer = reject_in_answer(stand_in_offer(text, dict.fromkeys(rejected, OPUS)), text, rejected)
    parsed = SessionText.parse(answer)
    original = SessionText.parse(text)
    assert [s.mid for s in parsed.sections] == [s.mid for s in original.sections]
    assert [s.kind for s in parsed.sections] == [s.kind for s in original.sections]
    assert {i for i, s in enumerate(parsed.sections) if s.rejected} == rejected | {
        i for i, s in enumerate(original.sections) if s.rejected
    }
    for i in rejected:  # an RFC 3264 rejection that still carries its DTLS fingerprint
        lines = parsed.sections[i].lines
        assert lines[0].split()[1] == "0"
        assert [x for x in lines if x.startswith("a=fingerprint:")] == [
            "a=fingerprint:sha-256 AA:BB"
        ]
    bundle = [x.split()[1:] for x in parsed.session if x.startswith("a=group:BUNDLE")]
    if bundle:
        assert not {original.sections[i].mid for i in rejected} & set(bundle[0])
    if len(rejected) == len(original.sections):
        return  # nothing accepted: stand_in_answer refuses (tested above)
    seen, indices = stand_in_answer(answer, text)
    assert set(indices) == rejected
    back = SessionText.parse(seen)
    assert [s.mid for s in back.sections] == [s.mid for s in original.sections]
    assert not any(s.rejected for i, s in enumerate(back.sections) if i in rejected)
    for i in rejected:
        assert "a=inactive" in back.sections[i].lines
        assert back.sections[i].formats == original.sections[i].formats[:1]
