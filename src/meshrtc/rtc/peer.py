"""PeerConnection: one WebRTC connection to one remote peer (spec section 2).

The statechart is declared here, where the PeerConnection class lives. Its state mirrors aiortc's
real connection state (invariant 8): ``connected`` requires a remote SDP, and a lost path goes through
Reconnecting (rebuild and renegotiate, since aiortc has no ICE restart) before Failed.
"""

from __future__ import annotations

from meshrtc.statechart import MachineSpec, register

_LIVE = ("New", "GatheringIce", "Connecting", "Connected", "Reconnecting")

PEER_CONNECTION_MACHINE = register(
    MachineSpec(
        name="PeerConnection",
        doc="New → Gathering ICE → Connecting → Connected → Failed | Closed; a lost path from "
        "Connecting or Connected goes to Reconnecting and back to Connected (spec section 2).",
        states=(*_LIVE, "Failed", "Closed"),
        initial="New",
        labels={"GatheringIce": "Gathering ICE"},
        transitions=(
            ("start_gathering", "New", "GatheringIce"),
            ("gathering_complete", "GatheringIce", "Connecting"),
            ("connected", ("Connecting", "Reconnecting"), "Connected"),
            ("connection_lost", ("Connecting", "Connected"), "Reconnecting"),
            ("fail", _LIVE, "Failed"),
            ("close", (*_LIVE, "Failed"), "Closed"),
        ),
    )
)
