"""The RTP jitter buffer (spec section 5)."""

from __future__ import annotations

from meshrtc.statechart import MachineSpec, register

_FILLED = ("Buffering", "Stable", "Underrun", "Overrun", "Adjusting")

JITTER_BUFFER_MACHINE = register(
    MachineSpec(
        name="JitterBuffer",
        doc="Empty → Buffering → Stable → [Underrun | Overrun] → Adjusting → Stable (spec section 5).",
        states=("Empty", *_FILLED),
        initial="Empty",
        transitions=(
            ("first_packet", "Empty", "Buffering"),
            ("target_reached", "Buffering", "Stable"),
            ("underrun", ("Stable", "Adjusting"), "Underrun"),
            ("overrun", ("Stable", "Adjusting"), "Overrun"),
            ("adjust", ("Underrun", "Overrun"), "Adjusting"),
            ("settled", "Adjusting", "Stable"),
            ("reset", _FILLED, "Empty"),
        ),
    )
)
