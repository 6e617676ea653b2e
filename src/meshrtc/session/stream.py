"""StreamSession: one pipeline run shared by the peers of a session (spec section 3).

The statechart is declared here, where the StreamSession class lives (issue 6). A session only becomes
Active with a validated manifest, and only closes once its pending outputs drained or timed out.
"""

from __future__ import annotations

from meshrtc.statechart import MachineSpec, register

STREAM_SESSION_MACHINE = register(
    MachineSpec(
        name="StreamSession",
        doc="Initializing → Active → [Paused ⇄ Active] → Closed (spec section 3).",
        states=("Initializing", "Active", "Paused", "Closed"),
        initial="Initializing",
        transitions=(
            ("activate", "Initializing", "Active"),
            ("pause", "Active", "Paused"),
            ("resume", "Paused", "Active"),
            # Spec: "cannot close session with pending outputs". The guard is the session's own
            # judgement: outputs drained, or the bounded drain timeout passed.
            ("close", ("Initializing", "Active", "Paused"), "Closed", "outputs_drained"),
        ),
    )
)
