"""Manifest: a pipeline described as data, validated completely before anything streams.

The shape is RemoteMedia's v1 manifest::

    {"version": "v1", "metadata": {...},
     "nodes": [{"id": ..., "node_type": ..., "params": {...}}, ...],
     "connections": [{"from": ..., "to": ...}, ...]}

so a RemoteMedia manifest that only uses node types meshrtc knows runs unchanged. Of RemoteMedia's
optional node fields, ``is_output_node`` is honoured (that node's outputs also leave the pipeline)
and the placement hints (``is_streaming``, ``capabilities``, ``host`` ...) are accepted and ignored;
any other field is refused, so a typo cannot silently change a pipeline.

A :class:`Manifest` object only exists validated: the constructors check the version, unique ids,
node types, params (each node class checks its own), connections and acyclicity, and raise a
:class:`ManifestError` naming the node and the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from meshrtc.pipeline.errors import ManifestError, ParamError
from meshrtc.pipeline.node import Node
from meshrtc.pipeline.registry import resolve_node_type

__all__ = [
    "DEFAULT_MANIFEST",
    "MANIFEST_VERSION",
    "Connection",
    "Manifest",
    "NodeSpec",
    "default_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_VERSION = "v1"

_TOP_LEVEL_FIELDS = frozenset({"version", "metadata", "nodes", "connections"})
_NODE_FIELDS = frozenset({"id", "node_type", "params", "is_output_node"})
#: RemoteMedia node fields about where and how to execute: meaningless in one process, accepted.
_IGNORED_NODE_FIELDS = frozenset(
    {
        "is_streaming",
        "capabilities",
        "media_capabilities",
        "host",
        "runtime_hint",
        "execution",
        "docker",
    }
)
_CONNECTION_FIELDS = frozenset({"from", "to"})

#: The demo's default pipeline (docs/pipeline.md): each peer hears everyone else, gets its own video back and
#: has its data-channel messages echoed. Three independent source nodes; inputs reach the one that
#: accepts their kind.
DEFAULT_MANIFEST: Mapping[str, Any] = {
    "version": "v1",
    "metadata": {
        "name": "meshrtc-demo",
        "description": "Conference mix-minus for audio, video back to its sender, data echo.",
    },
    "nodes": [
        {
            "id": "audio_mix",
            "node_type": "MixMinus",
            "params": {"window_timeout_ms": 60, "peer_timeout_ms": 200, "limiter": "clip"},
        },
        {"id": "video", "node_type": "VideoPassThrough", "params": {"target": "sender"}},
        {"id": "data_echo", "node_type": "DataEcho", "params": {}},
    ],
    "connections": [],
}


@attrs.frozen(slots=True)
class NodeSpec:
    """One validated node: ``params`` as written, ``config`` as its class normalised them."""

    id: str
    node_type: str
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    node_class: type[Node]
    is_output_node: bool = False

    def instantiate(self) -> Node:
        return self.node_class(self.id, self.config)


@attrs.frozen(slots=True)
class Connection:
    """An edge: every item ``source`` emits that ``target`` accepts flows to ``target``."""

    source: str
    target: str


@attrs.frozen(slots=True)
class Manifest:
    """A validated pipeline description (RemoteMedia v1 shape).

    Building one validates it completely (version, unique ids, known node types, connections, no
    cycles, each node's params), so a session never starts streaming on a manifest that would fail
    half-way; every refusal names the node and the field.
    """

    version: str
    metadata: Mapping[str, Any]
    nodes: tuple[NodeSpec, ...]
    connections: tuple[Connection, ...]
    #: Where it was read from (for messages); ``None`` for dicts and strings.
    source: str | None = attrs.field(default=None, eq=False)

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Manifest:
        return _validate(data, source)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError("<document>", f"invalid JSON: {exc}", source=source) from exc
        return _validate(data, source)

    @classmethod
    def from_yaml(cls, text: str | bytes, *, source: str | None = None) -> Manifest:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ManifestError("<document>", f"invalid YAML: {exc}", source=source) from exc
        return _validate(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a ``.json`` file as JSON and anything else as YAML (a superset of JSON)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError("<file>", f"cannot read: {exc}", source=str(path)) from exc
        if path.suffix.lower() == ".json":
            return cls.from_json(text, source=str(path))
        return cls.from_yaml(text, source=str(path))

    # -- queries ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written (params before normalisation), ready for JSON or YAML."""
        nodes: list[dict[str, Any]] = []
        for spec in self.nodes:
            entry: dict[str, Any] = {
                "id": spec.id,
                "node_type": spec.node_type,
                "params": dict(spec.params),
            }
            if spec.is_output_node:
                entry["is_output_node"] = True
            nodes.append(entry)
        return {
            "version": self.version,
            "metadata": dict(self.metadata),
            "nodes": nodes,
            "connections": [{"from": c.source, "to": c.target} for c in self.connections],
        }

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        raise KeyError(node_id)

    def upstream(self, node_id: str) -> tuple[str, ...]:
        return tuple(c.source for c in self.connections if c.target == node_id)

    def downstream(self, node_id: str) -> tuple[str, ...]:
        return tuple(c.target for c in self.connections if c.source == node_id)

    @property
    def source_nodes(self) -> tuple[str, ...]:
        """Nodes without an upstream: pipeline inputs go to those that accept them."""
        targets = {c.target for c in self.connections}
        return tuple(s.id for s in self.nodes if s.id not in targets)

    @property
    def output_nodes(self) -> tuple[str, ...]:
        """Nodes whose outputs leave the pipeline: the sinks, plus any marked ``is_output_node``."""
        sources = {c.source for c in self.connections}
        return tuple(s.id for s in self.nodes if s.id not in sources or s.is_output_node)


def default_manifest() -> Manifest:
    """The demo's default pipeline (:data:`DEFAULT_MANIFEST`), validated."""
    return Manifest.from_dict(DEFAULT_MANIFEST, source="<default>")


# -- validation -------------------------------------------------------------------------------

_Fail = Callable[..., ManifestError]


def _validate(data: object, source: str | None) -> Manifest:
    def fail(field: str, reason: str, node_id: str | None = None) -> ManifestError:
        return ManifestError(field, reason, node_id=node_id, source=source)

    if not isinstance(data, Mapping):
        raise fail("<document>", f"must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _TOP_LEVEL_FIELDS:
            raise fail(str(key), f"unknown field (known: {', '.join(sorted(_TOP_LEVEL_FIELDS))})")

    version = data.get("version")
    if version != MANIFEST_VERSION:
        raise fail("version", f"must be {MANIFEST_VERSION!r}, got {version!r}")

    metadata = data.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise fail("metadata", f"must be a mapping, got {type(metadata).__name__}")

    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, Sequence) or isinstance(raw_nodes, str) or not raw_nodes:
        raise fail("nodes", f"must be a non-empty list of nodes, got {raw_nodes!r}")
    nodes = tuple(_validate_node(i, raw, fail) for i, raw in enumerate(raw_nodes))

    seen: dict[str, int] = {}
    for i, spec in enumerate(nodes):
        if spec.id in seen:
            raise fail(
                f"nodes[{i}].id", f"duplicate id (already used by nodes[{seen[spec.id]}])", spec.id
            )
        seen[spec.id] = i

    raw_connections = data.get("connections", [])
    if raw_connections is None:
        raw_connections = []
    if not isinstance(raw_connections, Sequence) or isinstance(raw_connections, str):
        raise fail("connections", f"must be a list, got {type(raw_connections).__name__}")
    by_id = {spec.id: spec for spec in nodes}
    connections: list[Connection] = []
    for i, raw in enumerate(raw_connections):
        connection = _validate_connection(i, raw, by_id, fail)
        if connection in connections:
            raise fail(
                f"connections[{i}]",
                f"duplicate connection {connection.source!r} -> {connection.target!r}",
                connection.target,
            )
        connections.append(connection)

    cycle = _find_cycle([s.id for s in nodes], connections)
    if cycle is not None:
        path = " -> ".join(cycle)
        raise fail("connections", f"cycle {path} (a pipeline must be acyclic)", cycle[0])

    return Manifest(
        version=MANIFEST_VERSION,
        metadata=dict(metadata),
        nodes=nodes,
        connections=tuple(connections),
        source=source,
    )


def _validate_node(index: int, raw: object, fail: _Fail) -> NodeSpec:
    where = f"nodes[{index}]"
    if not isinstance(raw, Mapping):
        raise fail(where, f"must be a mapping, got {type(raw).__name__}")
    node_id = raw.get("id")
    if not isinstance(node_id, str) or not node_id.strip():
        raise fail(f"{where}.id", f"must be a non-empty string, got {node_id!r}")
    for key in raw:
        if key in _IGNORED_NODE_FIELDS:
            logger.debug("manifest node %r: ignoring RemoteMedia field %r", node_id, key)
        elif key not in _NODE_FIELDS:
            raise fail(str(key), "unknown field", node_id)

    node_type = raw.get("node_type")
    if not isinstance(node_type, str) or not node_type:
        raise fail("node_type", f"must be a non-empty string, got {node_type!r}", node_id)
    try:
        node_class = resolve_node_type(node_type)
    except LookupError as exc:
        raise fail("node_type", str(exc), node_id) from exc

    params = raw.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise fail("params", f"must be a mapping, got {type(params).__name__}", node_id)
    try:
        config = node_class.check_params(params)
    except ParamError as exc:
        raise fail(f"params.{exc.field}", exc.reason, node_id) from exc
    except (ValueError, TypeError) as exc:
        raise fail("params", str(exc), node_id) from exc

    is_output = raw.get("is_output_node", False)
    if not isinstance(is_output, bool):
        raise fail("is_output_node", f"must be true or false, got {is_output!r}", node_id)

    return NodeSpec(
        id=node_id,
        node_type=node_type,
        params=dict(params),
        config=config,
        node_class=node_class,
        is_output_node=is_output,
    )


def _validate_connection(
    index: int, raw: object, by_id: Mapping[str, NodeSpec], fail: _Fail
) -> Connection:
    where = f"connections[{index}]"
    if not isinstance(raw, Mapping):
        raise fail(where, f"must be a mapping with 'from' and 'to', got {type(raw).__name__}")
    for key in raw:
        if key not in _CONNECTION_FIELDS:
            raise fail(f"{where}.{key}", "unknown field (known: from, to)")
    ends: dict[str, str] = {}
    for key in ("from", "to"):
        value = raw.get(key)
        if not isinstance(value, str):
            raise fail(f"{where}.{key}", f"must be a node id, got {value!r}")
        if value not in by_id:
            raise fail(f"{where}.{key}", "no node has this id", value)
        ends[key] = value
    source, target = by_id[ends["from"]], by_id[ends["to"]]
    if source.id == target.id:
        raise fail(where, "a node cannot feed itself", source.id)
    if not _can_flow(source.node_class, target.node_class):
        emits = ", ".join(t.__name__ for t in source.node_class.emits)
        accepts = ", ".join(t.__name__ for t in target.node_class.accepts)
        raise fail(
            where,
            f"{source.id!r} emits {emits} but {target.id!r} accepts {accepts}: nothing can flow",
            target.id,
        )
    return Connection(source.id, target.id)


def _can_flow(source: type[Node], target: type[Node]) -> bool:
    return any(
        issubclass(out, inp) or issubclass(inp, out)
        for out in source.emits
        for inp in target.accepts
    )


def _find_cycle(node_ids: list[str], connections: list[Connection]) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]``, or ``None`` if the graph is acyclic (iterative DFS)."""
    edges: dict[str, list[str]] = {n: [] for n in node_ids}
    for c in connections:
        edges[c.source].append(c.target)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(node_ids, white)
    for root in node_ids:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            if i < len(edges[node]):
                stack[-1] = (node, i + 1)
                nxt = edges[node][i]
                if colour[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None
