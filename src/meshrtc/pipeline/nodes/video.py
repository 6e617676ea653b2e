"""Video nodes: VideoFlip and Grayscale.

Both take a :class:`Video` whose frame is an ``av.VideoFrame`` or a numpy array and return the same
kind: an av frame keeps its pixel format, ``pts`` and ``time_base`` (what the encoder expects), an
array keeps its shape. Numpy arrays are flipped as views (no pixel copy); av frames have to be
converted, which costs one or two pixel-format conversions per frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import av
import numpy as np
import numpy.typing as npt

from meshrtc.pipeline.data import RuntimeData, Video
from meshrtc.pipeline.node import Node, NodeOutput, Params, register_node

__all__ = ["Grayscale", "VideoFlip", "flip_array", "luma_bt601"]

_DIRECTIONS = ("horizontal", "vertical", "both")


def flip_array(frame: npt.NDArray[np.uint8], direction: str) -> npt.NDArray[np.uint8]:
    """A flipped *view* of an ``HxW`` or ``HxWxC`` array."""
    if direction == "horizontal":
        return frame[:, ::-1]
    if direction == "vertical":
        return frame[::-1]
    return frame[::-1, ::-1]


def luma_bt601(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), rounded, as ``HxW`` uint8."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    y = rgb.astype(np.float32) @ weights
    return np.asarray(np.clip(np.rint(y), 0, 255), dtype=np.uint8)


def _like(original: Any, rgb: npt.NDArray[np.uint8]) -> Any:
    """An av frame holding ``rgb`` in ``original``'s pixel format and timing."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    if original.format.name != "rgb24":
        frame = frame.reformat(format=original.format.name)
    _copy_timing(original, frame)
    return frame


def _copy_timing(source: Any, target: Any) -> None:
    target.pts = source.pts
    if source.time_base is not None:
        target.time_base = source.time_base


@register_node
class VideoFlip(Node):
    """Mirrors frames ``horizontal``-ly (default, a selfie view), ``vertical``-ly or ``both``."""

    node_type = "VideoFlip"
    accepts = (Video,)
    emits = (Video,)

    def __init__(self, node_id: str, params: Mapping[str, Any]) -> None:
        super().__init__(node_id, params)
        self.direction: str = params["direction"]

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        p = Params(params)
        direction = p.choice("direction", _DIRECTIONS, "horizontal")
        p.finish()
        return {"direction": direction}

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Video)
        frame = data.frame
        if isinstance(frame, np.ndarray):
            return attrs.evolve(data, frame=flip_array(frame, self.direction))
        flipped = flip_array(data.to_rgb(), self.direction)
        return attrs.evolve(data, frame=_like(frame, flipped))


@register_node
class Grayscale(Node):
    """Removes colour (BT.601 luma).

    A ``yuv420p`` av frame keeps its luma plane and gets neutral chroma (exact, no colour-space
    round trip); other av formats go through RGB. An ``HxWx3`` array becomes an ``HxWx3`` array with
    R = G = B = luma; a gray ``HxW`` array is forwarded unchanged.
    """

    node_type = "Grayscale"
    accepts = (Video,)
    emits = (Video,)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        Params(params).finish()
        return {}

    async def process(self, data: RuntimeData) -> NodeOutput:
        assert isinstance(data, Video)
        frame = data.frame
        if isinstance(frame, np.ndarray):
            if frame.ndim == 2:
                return data
            return attrs.evolve(data, frame=np.repeat(luma_bt601(frame)[:, :, None], 3, axis=2))
        if frame.format.name == "yuv420p":
            planes = frame.to_ndarray()
            planes[frame.height :] = 128
            gray = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            _copy_timing(frame, gray)
            return attrs.evolve(data, frame=gray)
        y = luma_bt601(data.to_rgb())
        return attrs.evolve(data, frame=_like(frame, np.repeat(y[:, :, None], 3, axis=2)))
