"""The node base class, the node-type registry and a small params reader.

Looking a name up (:func:`~meshrtc.pipeline.registry.resolve_node_type`) lives in
:mod:`meshrtc.pipeline.registry`: it needs the built-in nodes loaded, and they import this module
(for :class:`Node` and :func:`register_node`), so keeping it here made an import cycle.

A node is the unit a manifest names. The base class is deliberately small:

* ``check_params(params)`` (classmethod) validates the manifest's ``params`` *before* anything runs
  and returns them normalised; raise :class:`ParamError` naming the field.
* ``__init__(node_id, params)`` receives those normalised params; one instance per run.
* ``async process(data)`` handles one item and returns ``None``, one item or a sequence of items:
  enough for every 1→1 or 1→n node.
* ``async run(inputs, emit)`` is the whole stream; its default calls ``process`` per item. Override it
  when a node needs time or several items at once (MixMinus windows frames across peers and flushes on
  a timer) or per-run setup and teardown.

``accepts`` and ``emits`` are the RuntimeData classes a node takes and produces: the runner only
delivers what a node accepts, and the manifest refuses a connection along which nothing could flow.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias, TypeVar

import trio

from meshrtc.pipeline.data import RuntimeData
from meshrtc.pipeline.errors import ParamError

__all__ = [
    "NODE_TYPES",
    "Emit",
    "Node",
    "NodeOutput",
    "Params",
    "register_node",
]

Emit: TypeAlias = Callable[[RuntimeData], Awaitable[None]]
NodeOutput: TypeAlias = RuntimeData | Sequence[RuntimeData] | None


class Node:
    """Base class of built-in and user nodes (see the module docstring and docs/pipeline.md)."""

    #: The name manifests use. Built-ins register under it; a user node loaded by import path is
    #: known by its ``"module:Class"`` string and needs no name.
    node_type: ClassVar[str] = ""
    accepts: ClassVar[tuple[type[RuntimeData], ...]] = (RuntimeData,)
    emits: ClassVar[tuple[type[RuntimeData], ...]] = (RuntimeData,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        self.node_id = node_id
        self.params = params

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Validate ``params`` and return them normalised (the default takes anything as is)."""
        return params

    async def process(self, data: RuntimeData) -> NodeOutput:
        """Handle one item; the default forwards it unchanged (by reference)."""
        return data

    async def run(self, inputs: trio.abc.ReceiveChannel[RuntimeData], emit: Emit) -> None:
        """Consume the node's input stream; return when it ends (the runner closes the outputs)."""
        async for data in inputs:
            out = await self.process(data)
            if out is None:
                continue
            if isinstance(out, RuntimeData):
                await emit(out)
            else:
                for item in out:
                    await emit(item)


NODE_TYPES: dict[str, type[Node]] = {}

N = TypeVar("N", bound=type[Node])


def register_node(cls: N) -> N:
    """Class decorator: make ``cls`` known to manifests under ``cls.node_type``."""
    name = cls.node_type
    if not name:
        raise ValueError(f"{cls.__qualname__} has no node_type to register under")
    existing = NODE_TYPES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"node type {name!r} is already registered by {existing.__qualname__}")
    NODE_TYPES[name] = cls
    return cls


_MISSING: Any = object()


class Params:
    """Reads a params mapping field by field, raising :class:`ParamError` that names the field.

    Call :meth:`finish` last: it refuses fields nobody read, so a typo (``gain_bd``) is an error and
    not a silently ignored setting.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        if not isinstance(raw, Mapping):
            raise ParamError("params", f"must be a mapping, got {type(raw).__name__}")
        self._raw = raw
        self._read: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def _get(self, name: str, default: Any) -> Any:
        self._read.add(name)
        if name in self._raw:
            return self._raw[name]
        if default is _MISSING:
            raise ParamError(name, "is required")
        return default

    def number(
        self,
        name: str,
        default: float = _MISSING,
        *,
        minimum: float = -math.inf,
        maximum: float = math.inf,
    ) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(name, f"must be a number, got {value!r}")
        if not (math.isfinite(value) and minimum <= value <= maximum):
            raise ParamError(name, f"must be between {minimum} and {maximum}, got {value!r}")
        return float(value)

    def optional_number(
        self, name: str, *, minimum: float = -math.inf, maximum: float = math.inf
    ) -> float | None:
        if name not in self._raw:
            self._read.add(name)
            return None
        return self.number(name, minimum=minimum, maximum=maximum)

    def integer(self, name: str, default: int = _MISSING, *, minimum: int, maximum: int) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, f"must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise ParamError(name, f"must be between {minimum} and {maximum}, got {value!r}")
        return value

    def choice(self, name: str, options: Sequence[str], default: str = _MISSING) -> str:
        value = self._get(name, default)
        if value not in options:
            raise ParamError(name, f"must be one of {', '.join(map(repr, options))}, got {value!r}")
        return str(value)

    def boolean(self, name: str, default: bool = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ParamError(name, f"must be true or false, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ParamError(unknown[0], f"unknown parameter (known: {known})")
