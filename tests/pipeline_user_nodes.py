"""User nodes for the pipeline tests, loaded by import path ("tests.pipeline_user_nodes:Scale")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

from meshrtc.pipeline import Audio, Node, NodeOutput, Params, RuntimeData


class Scale(Node):
    """Multiplies audio by ``factor``: the documented shape of a small user node."""

    accepts = (Audio,)
    emits = (Audio,)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        factor = p.number("factor", minimum=0.0, maximum=10.0)
        p.finish()
        return {"factor": factor}

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.factor: float = params["factor"]

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        return attrs.evolve(data, samples=data.samples * self.factor)


class FailOnThird(Node):
    """Forwards two items, then raises."""

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.seen = 0

    async def process(self, data: RuntimeData) -> NodeOutput:
        self.seen += 1
        if self.seen == 3:
            raise ValueError("third item refused")
        return data


class Stall(Node):
    """Never finishes its first item (a node stuck waiting on something)."""

    async def process(self, data: RuntimeData) -> NodeOutput:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class Garbage(Node):
    """Emits something that is not RuntimeData."""

    async def run(self, inputs: trio.abc.ReceiveChannel[RuntimeData], emit: Any) -> None:
        async for _ in inputs:
            await emit("not runtime data")


class Copying(Node):
    """The naive node the allocation measurement compares against: copies samples every hop."""

    accepts = (Audio,)
    emits = (Audio,)

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Audio)
        return attrs.evolve(data, samples=data.samples.copy())


class BadParams(Node):
    """A user node whose check_params raises a plain ValueError."""

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ValueError("threshold must be below ceiling")


NotANode = 42
