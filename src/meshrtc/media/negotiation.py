"""Rejected media sections in SDP text (RFC 3264 section 6, RFC 8843 section 7.3.3). Sans-IO.

An offer may carry a section meshrtc cannot use (VP8-only video to a VP9 transport, PCMU-only
audio). The answer must then *reject* that section, port 0, and serve the others. aiortc can do
neither: it refuses the whole description when one section has no common codec, and it can
neither write nor apply a port-0 section. So the adapter decides which sections are unusable
(with aiortc's own codec matching, :func:`meshrtc.rtc.aiortc_adapter.unusable_sections`), and this
module does the text work around aiortc, keeping every section in its place so that mids, m-line
indices (hence trickled candidates) and the BUNDLE transport do not move:

* :func:`stand_in_offer`: the offer as aiortc sees it. A rejected section keeps its mid and
  transport attributes but carries one codec aiortc accepts (a :class:`StandIn`) and
  ``a=inactive``, so aiortc negotiates it and never sends or receives on it.
* :func:`reject_in_answer`: aiortc's answer as the offerer gets it. Each such section becomes a
  rejection: ``m=<kind> 0 <proto> <the offer's first format>``, its ICE/DTLS attributes (as
  browsers write them; GStreamer insists on ``a=fingerprint``), its mid, ``a=inactive``, and it
  leaves the BUNDLE group.
* :func:`stand_in_answer`: the other direction, for a meshrtc offerer whose answer rejects a
  section: each port-0 audio/video section becomes an inactive section aiortc can apply (our own
  offer's first codec, the transport attributes of an accepted section, back in the BUNDLE
  group so aiortc runs no ICE of its own for it).

Everything here works on lines; nothing outside the touched sections changes (not even line ends).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

import attrs

__all__ = [
    "Section",
    "SessionText",
    "StandIn",
    "accepted_kinds",
    "reject_in_answer",
    "rejected_indices",
    "stand_in_answer",
    "stand_in_offer",
]

#: Attributes that describe a section's codecs, direction and streams: replaced in a stand-in.
_MEDIA_ATTRIBUTES: Final = (
    "a=rtpmap:",
    "a=fmtp:",
    "a=rtcp-fb:",
    "a=ssrc:",
    "a=ssrc-group:",
    "a=msid:",
    "a=rid:",
    "a=simulcast:",
)
_DIRECTIONS: Final = frozenset({"a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"})
#: Attributes of the (bundled) transport, copied into a stand-in section of an answer.
_TRANSPORT_ATTRIBUTES: Final = (
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=ice-options:",
    "a=fingerprint:",
    "a=setup:",
)
_RTP_KINDS: Final = frozenset({"audio", "video"})


@attrs.frozen
class StandIn:
    """A codec aiortc accepts for a section it must not refuse: ``a=rtpmap`` encoding (``VP9/90000``,
    ``opus/48000/2``) and ``a=fmtp`` parameters (None for none)."""

    encoding: str
    fmtp: str | None = None


@attrs.frozen
class Section:
    """One media section: its ``m=`` line and every line up to the next one."""

    lines: tuple[str, ...]

    @property
    def _m(self) -> list[str]:
        return self.lines[0][2:].split()

    @property
    def kind(self) -> str:
        return self._m[0]

    @property
    def port(self) -> int:
        port = self._m[1].split("/", 1)[0]
        return int(port) if port.isdigit() else -1

    @property
    def proto(self) -> str:
        return self._m[2] if len(self._m) > 2 else ""

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self._m[3:])

    @property
    def mid(self) -> str | None:
        for line in self.lines:
            if line.startswith("a=mid:"):
                return line[len("a=mid:") :].strip()
        return None

    @property
    def bundle_only(self) -> bool:
        return "a=bundle-only" in self.lines

    @property
    def rejected(self) -> bool:
        """Port 0 without ``a=bundle-only``: an offer's port 0 *with* it (RFC 8843 section 6,
        what GStreamer's webrtcbin sends for every bundled section after the first) is a section
        that shares the bundle transport, not a rejected one."""
        return self.port == 0 and not self.bundle_only

    def with_port(self, port: int) -> Section:
        m = self._m
        m[1] = str(port)
        return Section((f"m={' '.join(m)}", *self.lines[1:]))


@attrs.frozen
class SessionText:
    """An SDP split into its session part and its sections, rendered back exactly."""

    eol: str
    session: tuple[str, ...]
    sections: tuple[Section, ...]
    #: Whether the text ended with a line end (it should; kept as found).
    trailing_eol: bool

    @classmethod
    def parse(cls, sdp: str) -> SessionText:
        eol = "\r\n" if "\r\n" in sdp else "\n"
        lines = sdp.split(eol)
        trailing = bool(lines) and lines[-1] == ""
        if trailing:
            lines = lines[:-1]
        session: list[str] = []
        sections: list[list[str]] = []
        for line in lines:
            if line.startswith("m="):
                sections.append([line])
            elif sections:
                sections[-1].append(line)
            else:
                session.append(line)
        return cls(eol, tuple(session), tuple(Section(tuple(s)) for s in sections), trailing)

    def render(self) -> str:
        lines = [*self.session, *(line for s in self.sections for line in s.lines)]
        text = self.eol.join(lines)
        return text + self.eol if self.trailing_eol else text

    def with_bundle_mids(self, mids: Sequence[str]) -> SessionText:
        """The BUNDLE group with ``mids`` appended (those not in it yet); no group, no change."""
        session: list[str] = []
        for line in self.session:
            if line.startswith("a=group:BUNDLE"):
                present = line.split()[1:]
                line = " ".join(
                    ["a=group:BUNDLE", *present, *(m for m in mids if m not in present)]
                )
            session.append(line)
        return attrs.evolve(self, session=tuple(session))

    def without_bundle_mids(self, mids: Collection[str]) -> SessionText:
        """The BUNDLE group without ``mids`` (the line goes when no mid is left)."""
        session: list[str] = []
        for line in self.session:
            if line.startswith("a=group:BUNDLE"):
                kept = [m for m in line.split()[1:] if m not in mids]
                if not kept:
                    continue
                line = " ".join(["a=group:BUNDLE", *kept])
            session.append(line)
        return attrs.evolve(self, session=tuple(session))


def _first_format(section: Section) -> str:
    if not section.formats:
        raise ValueError(f"{section.kind} section has no format")
    return section.formats[0]


def stand_in_offer(offer: str, rejected: Mapping[int, StandIn]) -> str:
    """``offer`` with each section in ``rejected`` (index → stand-in codec) made acceptable to aiortc
    as an inactive section: one format (the offer's first payload type) mapped to the stand-in,
    ``a=inactive``, no streams; mid, ICE, DTLS and candidates kept."""
    text = SessionText.parse(offer)
    sections = list(text.sections)
    for index, stand_in in rejected.items():
        section = sections[index]
        pt = _first_format(section)
        kept = [
            line
            for line in section.lines[1:]
            if not line.startswith(_MEDIA_ATTRIBUTES) and line not in _DIRECTIONS
        ]
        m = f"m={section.kind} {section._m[1]} {section.proto} {pt}"
        codec = [f"a=rtpmap:{pt} {stand_in.encoding}"]
        if stand_in.fmtp:
            codec.append(f"a=fmtp:{pt} {stand_in.fmtp}")
        sections[index] = Section((m, *kept, *codec, "a=inactive"))
    return attrs.evolve(text, sections=tuple(sections)).render()


def reject_in_answer(answer: str, offer: str, rejected: Collection[int]) -> str:
    """``answer`` (aiortc's, to :func:`stand_in_offer`'s text) with the ``rejected`` sections written
    as RFC 3264 rejections of the original ``offer``'s sections, and out of the BUNDLE group."""
    text = SessionText.parse(answer)
    offered = SessionText.parse(offer).sections
    if len(text.sections) != len(offered):
        raise ValueError(f"the answer has {len(text.sections)} sections, the offer {len(offered)}")
    sections = list(text.sections)
    mids: list[str] = []
    for index in sorted(rejected):
        source = offered[index]
        mid = source.mid
        # The transport attributes stay, as browsers write rejections: GStreamer's webrtcbin
        # refuses an answer with a section lacking a=fingerprint ("No fingerprint lines in sdp
        # for media 1"), rejected or not.
        transport = [
            line for line in sections[index].lines if line.startswith(_TRANSPORT_ATTRIBUTES)
        ]
        lines = [
            f"m={source.kind} 0 {source.proto} {_first_format(source)}",
            "c=IN IP4 0.0.0.0",
            *transport,
        ]
        if mid is not None:
            lines.append(f"a=mid:{mid}")
            mids.append(mid)
        lines.append("a=inactive")
        sections[index] = Section(tuple(lines))
    return attrs.evolve(text, sections=tuple(sections)).without_bundle_mids(mids).render()


def stand_in_answer(answer: str, local_offer: str) -> tuple[str, tuple[int, ...]]:
    """``answer`` with its rejected (port 0) audio/video sections made applicable by aiortc, and
    their indices.

    Each becomes an inactive section: our ``local_offer``'s section's first format and its
    ``a=rtpmap``/``a=fmtp`` lines, the transport attributes of the answer's first accepted section,
    ``a=rtcp-mux``. Raises ``ValueError`` when the answer accepts no section at all (nothing to
    connect) or does not match the offer's sections.
    """
    text = SessionText.parse(answer)
    offered = SessionText.parse(local_offer).sections
    if len(text.sections) != len(offered):
        raise ValueError(f"the answer has {len(text.sections)} sections, our offer {len(offered)}")
    rejected = [i for i, s in enumerate(text.sections) if s.rejected and s.kind in _RTP_KINDS]
    if not rejected:
        return answer, ()
    accepted = next((s for s in text.sections if not s.rejected), None)
    if accepted is None:
        raise ValueError("the answer rejects every section")
    transport = [line for line in accepted.lines if line.startswith(_TRANSPORT_ATTRIBUTES)]
    sections = list(text.sections)
    mids: list[str] = []
    for index in rejected:
        ours = offered[index]
        pt = _first_format(ours)
        codec = [
            line for line in ours.lines if line.startswith((f"a=rtpmap:{pt} ", f"a=fmtp:{pt} "))
        ]
        mid = text.sections[index].mid or ours.mid
        lines = [f"m={ours.kind} 9 {ours.proto} {pt}", "c=IN IP4 0.0.0.0", *transport]
        if mid is not None:
            lines.append(f"a=mid:{mid}")
            mids.append(mid)
        lines += ["a=inactive", "a=rtcp-mux", *codec]
        sections[index] = Section(tuple(lines))
    # Back in the BUNDLE group (after the accepted ones, so the bundle transport stays theirs):
    # aiortc then moves the section onto that transport instead of running ICE for it alone.
    bundled = attrs.evolve(text, sections=tuple(sections)).with_bundle_mids(mids)
    return bundled.render(), tuple(rejected)


def accepted_kinds(sdp: str) -> frozenset[str]:
    """The media kinds (``audio``, ``video``, ``application``) of sections not rejected."""
    return frozenset(s.kind for s in SessionText.parse(sdp).sections if not s.rejected)


def rejected_indices(sdp: str) -> Sequence[int]:
    """Indices of the rejected (port 0) sections."""
    return [i for i, s in enumerate(SessionText.parse(sdp).sections) if s.rejected]
