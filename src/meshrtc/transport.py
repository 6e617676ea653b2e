"""WebRtcTransport: the object an application holds (spec section 1).

The statechart is declared here, next to where the transport class lives; the class itself, which owns
the root nursery and wires signaling, peers and sessions together, is built on the rtc and session
layers (issue 6).
"""

from __future__ import annotations

from meshrtc.statechart import MachineSpec, register

TRANSPORT_MACHINE = register(
    MachineSpec(
        name="WebRtcTransport",
        doc="Created → Connected (signaling) → Ready → Shutdown; shutdown is allowed from any "
        "live state so that cancelling the transport's scope always ends in Shutdown.",
        states=("Created", "Connected", "Ready", "Shutdown"),
        initial="Created",
        transitions=(
            ("signaling_connected", "Created", "Connected"),
            ("ready", "Connected", "Ready"),
            ("shutdown", ("Created", "Connected", "Ready"), "Shutdown"),
        ),
    )
)
