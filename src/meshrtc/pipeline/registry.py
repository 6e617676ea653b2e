"""Looking node types up: the built-ins, then ``"package.module:Class"`` for a user node.

Separate from :mod:`meshrtc.pipeline.node` so the import graph has no cycle: the built-in nodes
(:mod:`meshrtc.pipeline.nodes`) import :mod:`~meshrtc.pipeline.node` to subclass :class:`Node`
and register; this module imports both, and nothing it imports imports it.
"""

from __future__ import annotations

import importlib

import meshrtc.pipeline.nodes  # noqa: F401  (importing it registers the built-ins)
from meshrtc.pipeline.node import NODE_TYPES, Node

__all__ = ["node_types", "resolve_node_type"]


def node_types() -> dict[str, type[Node]]:
    """Every registered node type, built-ins included."""
    return dict(NODE_TYPES)


def resolve_node_type(name: str) -> type[Node]:
    """A registered name, or ``"package.module:Class"`` for a user node.

    Raises ``LookupError`` with a readable reason; the manifest turns it into a ManifestError.
    Importing by path runs that module's code: manifests are trusted configuration, like a settings file.
    """
    registered = node_types()
    if name in registered:
        return registered[name]
    if ":" not in name:
        known = ", ".join(sorted(registered))
        raise LookupError(f"unknown node type {name!r} (built-ins: {known}; or 'module:Class')")
    module_name, _, attr_path = name.partition(":")
    if not module_name or not attr_path:
        raise LookupError(f"import path {name!r} must look like 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Node)):
        raise LookupError(f"{name!r} is not a subclass of meshrtc.pipeline.Node")
    return obj
