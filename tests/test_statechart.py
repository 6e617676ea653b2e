from __future__ import annotations

import enum
import filecmp
import itertools
from pathlib import Path

import pytest

from meshrtc import statechart
from meshrtc.__main__ import main
from meshrtc.statechart import (
    MachineError,
    MachineSpec,
    StatechartError,
    StatefulModel,
    all_specs,
    trigger_stub,
)

from .conftest import require_binary

REPO = Path(__file__).resolve().parent.parent
SPECS = {spec.name: spec for spec in all_specs()}

# The paths each machine must contain, as the data model draws them.
SPEC_DRAWINGS = {
    "JitterBuffer": [
        ["Empty", "Buffering", "Stable", "Underrun", "Adjusting", "Stable"],
        ["Stable", "Overrun", "Adjusting", "Stable"],
    ],
    "WebRtcTransport": [["Created", "Connected", "Ready", "Shutdown"]],
    "PeerConnection": [
        ["New", "GatheringIce", "Connecting", "Connected", "Failed"],
        ["Connected", "Closed"],
        ["Connecting", "Reconnecting", "Connected"],
        ["Connected", "Reconnecting", "Connected"],
    ],
    "StreamSession": [
        ["Initializing", "Active", "Paused", "Active", "Closed"],
        ["Paused", "Closed"],
    ],
}


def test_every_drawn_machine_is_registered() -> None:
    assert set(SPEC_DRAWINGS) <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPEC_DRAWINGS))
def test_machine_contains_the_spec_drawing(name: str) -> None:
    spec = SPECS[name]
    arrows = {(a, b) for a, b, _ in spec.edges()}
    for path in SPEC_DRAWINGS[name]:
        assert path[0] in spec.states
        for a, b in itertools.pairwise(path):
            assert (a, b) in arrows, f"{name}: no arrow {a} -> {b}"
    assert spec.initial == SPEC_DRAWINGS[name][0][0]


def test_peer_connection_label_keeps_spec_wording() -> None:
    spec = SPECS["PeerConnection"]
    assert spec.label("GatheringIce") == "Gathering ICE"
    assert 'state "Gathering ICE" as GatheringIce' in statechart.to_mermaid(spec)


@pytest.mark.parametrize(
    ("states", "initial", "rows", "problem"),
    [
        (("A", "B"), "C", [("go", "A", "B")], "initial state"),
        (("A", "B"), "A", [("go", "A", "Z")], "unknown state"),
        (("A", "B", "C"), "A", [("go", "A", "B")], "unreachable"),
        (("A", "B"), "A", [("go-on", "A", "B")], "identifier"),
        (("A", "A"), "A", [], "duplicate"),
    ],
)
def test_inconsistent_specs_are_refused(
    states: tuple[str, ...], initial: str, rows: list[tuple[str, str, str]], problem: str
) -> None:
    with pytest.raises(StatechartError, match=problem):
        MachineSpec(name="Bad", states=states, initial=initial, transitions=rows)


def test_register_refuses_two_specs_with_one_name() -> None:
    spec = SPECS["StreamSession"]
    assert statechart.register(spec) is spec
    clash = MachineSpec(name="StreamSession", states=("A",), initial="A", transitions=[])
    with pytest.raises(StatechartError, match="two different"):
        statechart.register(clash)


class _Plain:
    state: str


class _Door(StatefulModel):
    open = trigger_stub()
    shut = trigger_stub()


_DOOR = MachineSpec(
    name="Door",
    states=("Shut", "Open"),
    initial="Shut",
    transitions=[("open", "Shut", "Open"), ("shut", "Open", "Shut")],
)


def test_guarded_transition_refuses_without_raising() -> None:
    spec = MachineSpec(
        name="Guarded",
        states=("Open", "Closed"),
        initial="Open",
        transitions=[("close", "Open", "Closed", "drained")],
    )
    model = _Plain()
    drained = False
    model.drained = lambda: drained  # type: ignore[attr-defined]
    spec.build(model, model_override=False)
    assert model.trigger("close") is False  # type: ignore[attr-defined]
    assert model.state == "Open"
    drained = True
    assert model.trigger("close") is True  # type: ignore[attr-defined]
    assert model.state == "Closed"
    assert "Open --> Closed: close [drained]" in statechart.to_mermaid(spec)


def test_typed_model_gets_its_declared_triggers() -> None:
    door = _Door()
    with pytest.raises(StatechartError, match="before a machine"):
        door.open()
    _DOOR.build(door)
    assert door.state == "Shut"
    assert door.may_trigger("open")
    assert door.open()
    assert door.state == "Open"
    with pytest.raises(MachineError):
        door.open()
    assert not hasattr(door, "to_Shut"), "auto transitions must stay off"


class _DoorState(enum.StrEnum):
    Shut = "Shut"
    Open = "Open"


class _TypedDoor(StatefulModel):
    state: _DoorState
    open = trigger_stub()
    is_Open = trigger_stub()  # noqa: N815 - transitions names it after the state


def test_enum_states_run_as_members_and_render_as_names() -> None:
    spec = MachineSpec(
        name="Door",
        states=_DoorState,
        initial=_DoorState.Shut,
        transitions=[("open", _DoorState.Shut, _DoorState.Open), ("shut", "Open", "Shut")],
    )
    assert spec.state_enum is _DoorState
    assert statechart.to_mermaid(spec) == statechart.to_mermaid(_DOOR)
    door = _TypedDoor()
    spec.build(door)
    assert door.state is _DoorState.Shut
    assert not door.is_Open()
    door.open()
    assert door.state is _DoorState.Open
    assert door.is_Open()
    assert statechart.machine_of(door)[0] is spec


def test_fire_if_taken_lets_the_machine_decide() -> None:
    spec = MachineSpec(
        name="Guarded",
        states=_DoorState,
        initial="Shut",
        transitions=[("open", "Shut", "Open", "unlocked")],
    )
    door = _TypedDoor()
    unlocked = False
    door.unlocked = lambda: unlocked  # type: ignore[attr-defined]
    spec.build(door)
    assert door.fire_if_taken("open") is False  # the guard says no
    unlocked = True
    assert door.fire_if_taken("open") is True
    assert door.fire_if_taken("open") is False  # no arrow from Open: not taken, no MachineError
    assert door.state is _DoorState.Open


def test_enum_whose_names_are_not_its_values_is_refused() -> None:
    class Renamed(enum.Enum):
        A = "a"

    with pytest.raises(StatechartError, match="names equal their values"):
        MachineSpec(name="Bad", states=Renamed, initial="a", transitions=[])


# Every registered machine is driven through its real class in tests/test_machines_stateful.py.


# --- The rendered files in the repository are current ------------------------------------------


def _render(tmp_path: Path, formats: list[str]) -> Path:
    out = tmp_path / "charts"
    docs = tmp_path / "statecharts.md"
    fmt = "all" if len(formats) > 1 else formats[0]
    assert main(["statecharts", "--out", str(out), "--docs", str(docs), "--format", fmt]) == 0
    return out


def _assert_same(rendered: Path, committed: Path, suffixes: tuple[str, ...]) -> None:
    names = sorted(p.name for p in rendered.iterdir() if p.suffix in suffixes)
    assert names, "nothing rendered"
    committed_names = sorted(p.name for p in committed.iterdir() if p.suffix in suffixes)
    assert names == committed_names, "statecharts/ lists other machines: run `make statecharts`"
    _, mismatch, errors = filecmp.cmpfiles(rendered, committed, names, shallow=False)
    assert not mismatch + errors, f"stale: {mismatch + errors}; run `make statecharts`"


def test_committed_mermaid_and_docs_are_current(tmp_path: Path) -> None:
    out = _render(tmp_path, ["mermaid"])
    _assert_same(out, REPO / "statecharts", (".mmd",))
    committed_docs = (REPO / "docs" / "statecharts.md").read_text(encoding="utf-8")
    assert (tmp_path / "statecharts.md").read_text(encoding="utf-8") == committed_docs


def test_committed_svg_and_dot_are_current(tmp_path: Path) -> None:
    require_binary("dot", "graphviz")
    out = _render(tmp_path, ["mermaid", "dot", "svg"])
    _assert_same(out, REPO / "statecharts", (".dot", ".svg"))


def test_svg_without_dot_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(statechart, "dot_binary", lambda: None)
    assert main(["statecharts", "--out", str(tmp_path), "--format", "svg"]) == 2
    err = capsys.readouterr().err
    assert "'dot'" in err
    assert "graphviz" in err
