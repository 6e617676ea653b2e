"""Statecharts as data: one spec drives the running machine and the rendered diagram.

Every lifecycle entity declares a :class:`MachineSpec` next to its class (states, transitions and the
initial state as plain tuples a reader can scan, like h11's state table) and registers it here. The
runtime builds a plain synchronous ``transitions.Machine`` from the spec; ``python -m meshrtc
statecharts`` renders the same spec as Mermaid (always) and DOT/SVG (with Graphviz), so a diagram can
never drift from the code that runs.

States are a str-valued :class:`enum.Enum` (``class JitterState(enum.StrEnum)``) whose member names
equal their values, so a diagram keeps the names the data model draws and the runtime compares enum
members, never bare strings. A spec still accepts plain string states (a test's throwaway machine).

Typed models: a class declares ``state: SomeState`` and one ``name = trigger_stub()`` per trigger (and
per ``is_<State>``/``may_<trigger>`` it asks), so mypy sees every one; the machine is built with
``model_override=True`` and replaces exactly those.
"""

from __future__ import annotations

import enum
import importlib
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from transitions import Machine, MachineError

from meshrtc.errors import MeshRtcError

__all__ = [
    "SPEC_MODULES",
    "MachineError",
    "MachineSpec",
    "StatefulModel",
    "Transition",
    "all_specs",
    "machine_of",
    "register",
    "render",
    "state_name",
    "to_dot",
    "to_mermaid",
    "trigger_stub",
]

log = logging.getLogger(__name__)

#: Modules that declare machine specs. Importing them registers their specs; the renderer and the
#: stale-diagram test import exactly this list, so adding an entity means adding its module here.
SPEC_MODULES: tuple[str, ...] = (
    "meshrtc.host.worker",
    "meshrtc.media.drift",
    "meshrtc.media.jitter",
    "meshrtc.media.sync",
    "meshrtc.rtc.peer",
    "meshrtc.session.stream",
    "meshrtc.signaling.client",
    "meshrtc.transport",
)

_REGISTRY: dict[str, MachineSpec] = {}
#: Where :meth:`MachineSpec.build` leaves the spec and machine on the model, for observers.
_MACHINE_ATTRIBUTE = "_statechart_machine"


class _SkipBindingFilter(logging.Filter):
    """Drop transitions' per-instance notice that it skipped a convenience method.

    With ``model_override=True`` transitions binds only the triggers a model declares and logs a
    WARNING for each ``is_*``/``may_*``/``to_*`` it leaves out, on every instance. That is the
    intended behaviour here, so the notice is noise; every other transitions record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skip binding of" not in record.getMessage()


logging.getLogger("transitions.core").addFilter(_SkipBindingFilter())


def state_name(state: object) -> str:
    """The diagram name of a state: an Enum member's value, or the string itself."""
    if isinstance(state, enum.Enum):
        return str(state.value)
    if isinstance(state, str):
        return state
    raise StatechartError(f"a state must be a str or a str-valued Enum member, not {state!r}")


def _state_tuple(states: type[enum.Enum] | Iterable[str]) -> tuple[str, ...]:
    """Keep Enum members as they are (they are str), so :meth:`MachineSpec.build` can hand the
    Enum to transitions; check that each member's name is its value (diagram name = code name)."""
    members = tuple(states)
    for member in members:
        if isinstance(member, enum.Enum) and (
            not isinstance(member, str) or member.name != member.value
        ):
            raise StatechartError(
                f"state {member!r}: use a str-valued Enum whose member names equal their values"
            )
    return members


def _name_tuple(states: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(states, str):
        return (state_name(states),)
    return tuple(state_name(s) for s in states)


@attrs.frozen
class Transition:
    """One arrow (or one arrow from each of several sources) of a statechart."""

    trigger: str
    source: tuple[str, ...] = attrs.field(converter=_name_tuple)
    dest: str = attrs.field(converter=state_name)
    #: Name of a model method that must return True for the transition to happen (a guard). A
    #: guarded trigger whose guard is false returns False and leaves the state unchanged.
    condition: str | None = None

    def as_transitions_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "trigger": self.trigger,
            "source": list(self.source),
            "dest": self.dest,
        }
        if self.condition is not None:
            row["conditions"] = self.condition
        return row

    @property
    def label(self) -> str:
        return self.trigger if self.condition is None else f"{self.trigger} [{self.condition}]"


class StatechartError(MeshRtcError):
    """A machine spec is inconsistent (unknown state, unreachable state, bad name)."""


Row = tuple[str, str | tuple[str, ...], str] | tuple[str, str | tuple[str, ...], str, str]


def _transitions(rows: Iterable[Row | Transition]) -> tuple[Transition, ...]:
    out = []
    for row in rows:
        if isinstance(row, Transition):
            out.append(row)
            continue
        trigger, source, dest, *condition = row
        out.append(
            Transition(trigger, _name_tuple(source), dest, condition[0] if condition else None)
        )
    return tuple(out)


@attrs.frozen
class MachineSpec:
    """A statechart as data.

    ``transitions`` rows are ``(trigger, source_or_sources, dest[, condition])``; ``labels`` gives
    display names where the spec's wording is not an identifier ("Gathering ICE"). ``states`` is a
    str-valued Enum class (the runtime's states are then its members) or, for throwaway machines,
    a tuple of names; rows and ``initial`` may name states by member or by string.
    """

    name: str
    states: tuple[str, ...] = attrs.field(converter=_state_tuple)
    initial: str = attrs.field(converter=state_name)
    transitions: tuple[Transition, ...] = attrs.field(converter=_transitions)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    doc: str = ""

    def __attrs_post_init__(self) -> None:
        self.validate()

    @property
    def state_enum(self) -> type[enum.Enum] | None:
        """The Enum the states came from, if any (what ``model.state`` holds at run time)."""
        first = self.states[0] if self.states else None
        return type(first) if isinstance(first, enum.Enum) else None

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(state_name(s) for s in self.states)

    def validate(self) -> None:
        names = self.state_names
        known = set(names)
        problems: list[str] = []
        if self.states and any(
            isinstance(s, enum.Enum) != isinstance(self.states[0], enum.Enum) for s in self.states
        ):
            problems.append("states mix Enum members and plain strings")
        if len(known) != len(names):
            problems.append("duplicate state")
        if self.initial not in known:
            problems.append(f"initial state {self.initial!r} is not a state")
        problems += [
            f"{name!r} is not an identifier"
            for name in (*names, *self.triggers())
            if not name.isidentifier()
        ]
        problems += [
            f"transition {t.trigger!r} names unknown state {s!r}"
            for t in self.transitions
            for s in (*t.source, t.dest)
            if s not in known
        ]
        reachable = {self.initial}
        grew = True
        while grew:
            grew = False
            for t in self.transitions:
                if t.dest not in reachable and reachable.intersection(t.source):
                    reachable.add(t.dest)
                    grew = True
        if unreachable := [s for s in names if s not in reachable]:
            problems.append(f"unreachable states {unreachable}")
        if problems:
            raise StatechartError(f"{self.name}: " + "; ".join(problems))

    def triggers(self) -> tuple[str, ...]:
        """Trigger names in declaration order, each once."""
        return tuple(dict.fromkeys(t.trigger for t in self.transitions))

    def label(self, state: str) -> str:
        name = state_name(state)
        return self.labels.get(name, name)

    def edges(self) -> list[tuple[str, str, str]]:
        """``(source, dest, label)`` for every arrow, in declaration order."""
        return [(s, t.dest, t.label) for t in self.transitions for s in t.source]

    def conditions(self) -> tuple[str, ...]:
        """Guard names in declaration order, each once."""
        return tuple(dict.fromkeys(t.condition for t in self.transitions if t.condition))

    def build(self, model: object, *, model_override: bool = True, **kwargs: Any) -> Machine:
        """Attach a machine for this spec to ``model``: no auto ``to_*`` triggers, invalid raises."""
        states_enum = self.state_enum
        machine = Machine(
            model=model,
            states=states_enum if states_enum is not None else list(self.states),
            transitions=[t.as_transitions_dict() for t in self.transitions],
            initial=states_enum[self.initial] if states_enum is not None else self.initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_override=model_override,
            name=self.name,
            **kwargs,
        )
        # On the model itself: the machine already refers to the model (and the model's triggers to
        # the machine), so this adds no reference that could keep either alive longer.
        setattr(model, _MACHINE_ATTRIBUTE, (self, machine))
        return machine


def trigger_stub() -> Callable[..., bool]:
    """Declare a trigger on a typed model; the machine replaces it per instance."""

    def unbound(*_args: object, **_kwargs: object) -> bool:
        raise StatechartError("trigger called before a machine was attached to this model")

    return unbound


class StatefulModel:
    """Base for models driven by a :class:`MachineSpec` (``state`` and the generic triggers)."""

    state: str
    trigger = trigger_stub()
    may_trigger = trigger_stub()

    def fire_if_taken(self, trigger: str) -> bool:
        """Fire ``trigger`` if the machine takes it from the current state and its guard agrees.

        For a real event that is meaningful in some states only (an observation, a timer tick):
        the runtime fires it here and the machine decides; returns whether the state changed.
        """
        return bool(self.may_trigger(trigger)) and bool(self.trigger(trigger))


def machine_of(model: object) -> tuple[MachineSpec, Machine]:
    """The spec and the ``transitions.Machine`` that drive ``model`` (built by :meth:`MachineSpec.build`).

    For observers: a stateful test hooks the machine's ``after_state_change`` to see every arrow
    taken, even several within one call.
    """
    found = getattr(model, _MACHINE_ATTRIBUTE, None)
    if found is None:
        raise StatechartError(f"{model!r} has no machine")
    spec, machine = found
    assert isinstance(spec, MachineSpec)
    assert isinstance(machine, Machine)
    return spec, machine


def register(spec: MachineSpec) -> MachineSpec:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise StatechartError(f"two different machine specs are named {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def all_specs() -> list[MachineSpec]:
    """Every machine spec declared in the package, sorted by name."""
    for module in SPEC_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def to_mermaid(spec: MachineSpec) -> str:
    """Render as Mermaid ``stateDiagram-v2`` (deterministic text; GitHub renders it)."""
    lines = ["---", f"title: {spec.name}", "---", "stateDiagram-v2", "  direction LR"]
    lines += [f'  state "{spec.label(s)}" as {s}' for s in spec.state_names]
    lines.append(f"  [*] --> {(spec.initial)}")
    lines += [f"  {(a)} --> {(b)}: {t}" for a, b, t in spec.edges()]
    return "\n".join(lines) + "\n"


def to_dot(spec: MachineSpec) -> str:
    """Render as Graphviz DOT through transitions' own graphviz engine (no pygraphviz needed)."""
    from transitions.extensions import GraphMachine

    class _Model:
        pass

    model = _Model()
    GraphMachine(
        model=model,
        states=list(spec.state_names),
        transitions=[t.as_transitions_dict() for t in spec.transitions],
        initial=spec.initial,
        auto_transitions=False,
        graph_engine="graphviz",
        title=spec.name,
        show_conditions=True,
        show_state_attributes=False,
    )
    graph = model.get_graph()  # type: ignore[attr-defined]
    for state, label in sorted(spec.labels.items()):
        # A repeated DOT node statement updates the node's attributes.
        graph.node(state, label=label)
    source: str = graph.source
    return source


FORMATS = ("mermaid", "dot", "svg")


class MissingGraphvizError(MeshRtcError):
    """SVG was asked for but the Graphviz ``dot`` binary is not installed."""


def dot_binary() -> str | None:
    return shutil.which("dot")


def render(out_dir: Path, formats: Iterable[str] = ("mermaid",)) -> list[Path]:
    """Write every registered machine in each format; return the files written."""
    wanted = list(dict.fromkeys(formats))
    for fmt in wanted:
        if fmt not in FORMATS:
            raise StatechartError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if "svg" in wanted and dot_binary() is None:
        raise MissingGraphvizError(
            "SVG needs the Graphviz 'dot' binary, which is not on PATH "
            "(Debian: apt-get install graphviz)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in all_specs():
        if "mermaid" in wanted:
            written.append(_write(out_dir / f"{spec.name}.mmd", to_mermaid(spec)))
        if "dot" in wanted or "svg" in wanted:
            dot = to_dot(spec)
            if "dot" in wanted:
                written.append(_write(out_dir / f"{spec.name}.dot", dot))
            if "svg" in wanted:
                import graphviz

                svg = graphviz.Source(dot).pipe(format="svg", encoding="utf-8")
                written.append(_write(out_dir / f"{spec.name}.svg", svg))
    return written


def docs_page() -> str:
    """The Markdown page ``docs/statecharts.md``, embedding every rendered Mermaid diagram."""
    parts = [
        "# Statecharts",
        "",
        "<!-- Generated by `make statecharts`; do not edit. -->",
        "",
        "Every lifecycle entity in meshrtc runs one of these machines. They are rendered from the",
        "same `MachineSpec` data the runtime builds its `transitions.Machine` from, and a test fails",
        "when this page or `statecharts/` is stale. Invalid triggers raise `MachineError`.",
        "",
        "How the machines decide:",
        "",
        "- States are str-valued Enums (`JitterState`, `DriftState`, `SyncState`, `SessionState`,",
        "  `ClientState`, `TransportState`) whose member names are the names drawn here; the runtime",
        "  compares members, never strings (the JitterBuffer's per-packet path tests members by",
        "  identity: `may_<trigger>()` costs about 7.5 µs there).",
        "- A guard (`[condition]` on an arrow) is the machine's own judgement: the runtime fires the",
        "  trigger on a real event and the machine says no (`fire_if_taken` offers a trigger that is",
        "  meaningful in some states only). Earlier, most decisions were if/elif chains with",
        "  the trigger fired afterwards; the SyncManager diffed the drift estimator's history (the",
        "  estimator now reports each state it enters), the SessionManager zeroed `pending_outputs`",
        "  to pass the close guard (it now closes through the guard or fires `abort`), and",
        "  StreamSession's pause/resume were fired only by tests (a session now pauses when its last",
        "  member leaves and resumes when one joins).",
        "- tests/test_machines_stateful.py drives the real classes with hypothesis and checks that",
        "  every arrow taken is drawn here, and that `MachineError` is raised exactly when",
        "  `may_<trigger>()` is false.",
        "",
    ]
    for spec in all_specs():
        parts += [f"## {spec.name}", ""]
        if spec.doc:
            parts += [spec.doc, ""]
        parts += ["```mermaid", to_mermaid(spec).rstrip("\n"), "```", ""]
        parts += ["| trigger | from | to |", "|---|---|---|"]
        for t in spec.transitions:
            sources = ", ".join(spec.label(s) for s in t.source)
            guard = f" if `{t.condition}`" if t.condition else ""
            parts.append(f"| `{t.trigger}`{guard} | {sources} | {spec.label(t.dest)} |")
        parts.append("")
    return "\n".join(parts)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
