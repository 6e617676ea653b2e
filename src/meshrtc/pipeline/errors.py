"""Errors of the pipeline layer.

A manifest is usually written by a person and read by a program, so :class:`ManifestError` names the
node and the field it objects to. A run fails as a whole when one node fails, so :class:`PipelineError`
names the node whose exception ended it and keeps that exception as its ``__cause__``.
"""

from __future__ import annotations

from meshrtc.errors import MeshRtcError

__all__ = ["ManifestError", "ParamError", "PipelineError"]


class ManifestError(MeshRtcError, ValueError):
    """A manifest was refused before anything ran.

    ``node_id`` is the node the error is about (``None`` for manifest-wide fields such as ``version``),
    ``field`` the offending field relative to that node (``params.gain_db``, ``node_type``) or to the
    manifest (``version``, ``connections[2].to``), and ``reason`` what was wrong with it.
    """

    def __init__(
        self, field: str, reason: str, *, node_id: str | None = None, source: str | None = None
    ) -> None:
        self.field = field
        self.reason = reason
        self.node_id = node_id
        self.source = source
        where = "manifest" if source is None else f"manifest {source}"
        who = "" if node_id is None else f" node {node_id!r}"
        super().__init__(f"{where}:{who} field {field!r}: {reason}")


class ParamError(MeshRtcError, ValueError):
    """A node refused one of its params; the manifest turns it into a :class:`ManifestError`."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class PipelineError(MeshRtcError):
    """A run ended because a node raised; the node's exception is the ``__cause__``."""

    def __init__(self, node_id: str, node_type: str, reason: str) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.reason = reason
        super().__init__(f"pipeline node {node_id!r} ({node_type}) failed: {reason}")
