"""Nodes that forward data without touching its content: PassThrough, VideoPassThrough, DataEcho."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from meshrtc.pipeline.data import Binary, Json, RuntimeData, Text, Video
from meshrtc.pipeline.node import Node, NodeOutput, Params, register_node

__all__ = ["TARGETS", "DataEcho", "PassThrough", "VideoPassThrough", "retarget"]

#: How a forwarding node addresses what it forwards: keep the item's ``to_peer`` ("unchanged"; an
#: input from a peer has none, so it is a broadcast), send it back to its ``peer_id`` ("sender"), or
#: clear ``to_peer`` ("broadcast").
TARGETS = ("unchanged", "sender", "broadcast")


def retarget(data: RuntimeData, target: str) -> RuntimeData:
    """Readdress ``data``; returns the same object when nothing changes (the zero-copy path)."""
    if target == "sender":
        to_peer = data.peer_id
    elif target == "broadcast":
        to_peer = None
    else:
        return data
    if to_peer == data.to_peer:
        return data
    return attrs.evolve(data, to_peer=to_peer)


class _Forward(Node):
    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.target: str = params["target"]

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        target = p.choice("target", TARGETS, "unchanged")
        p.finish()
        return {"target": target}

    async def process(self, data: RuntimeData) -> NodeOutput:
        return retarget(data, self.target)


@register_node
class PassThrough(_Forward):
    """Forwards any item as is (same object); ``target`` may readdress it."""

    node_type = "PassThrough"


@register_node
class VideoPassThrough(_Forward):
    """Forwards video frames as is (same object); ``target`` may readdress them."""

    node_type = "VideoPassThrough"
    accepts = (Video,)
    emits = (Video,)


@register_node
class DataEcho(Node):
    """Sends each Text, Binary or JSON item back to the peer it came from (unchanged content).

    An item without a ``peer_id`` has nobody to go back to and becomes a broadcast.
    """

    node_type = "DataEcho"
    accepts = (Text, Binary, Json)
    emits = (Text, Binary, Json)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        Params(params).finish()
        return {}

    async def process(self, data: RuntimeData) -> NodeOutput:
        return retarget(data, "sender")
