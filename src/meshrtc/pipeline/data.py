"""RuntimeData: what flows between pipeline nodes.

Every variant is a frozen attrs object and travels between nodes **by reference**: a node that does not
change the data hands the very same object on, so the passthrough path allocates nothing per frame
(``bench/pipeline_alloc.py`` measures it). Arrays are stored as read-only views so that
sharing one object between several downstream nodes is safe: a node that wants to change samples must
make new ones, it cannot scribble over a neighbour's input by accident.

Routing lives on the data itself:

* ``peer_id`` is where the data came from (the sending peer), ``None`` when the pipeline made it up
  (a mix, a level report).
* ``to_peer`` is where an *output* should go: a peer id for unicast, ``None`` for a broadcast to every
  peer of the session. Inputs arrive with ``to_peer=None``; nodes that address a peer set it with
  :func:`attrs.evolve` (which copies the small record, never the samples).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import av

__all__ = [
    "Audio",
    "Binary",
    "FloatArray",
    "Json",
    "JsonValue",
    "RuntimeData",
    "Text",
    "Video",
    "readonly",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]
JsonValue: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None


def readonly(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A read-only view of ``array`` (no data copy; the caller's array keeps its own flags)."""
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def _audio_samples(value: object) -> FloatArray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"Audio.samples must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.float32:
        raise TypeError(f"Audio.samples must be float32, got {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"Audio.samples must be 1-D (interleaved), got shape {value.shape}")
    return readonly(value)


@attrs.frozen(slots=True, kw_only=True)
class RuntimeData:
    """Base of every variant: where the data came from, when, and where an output goes."""

    peer_id: str | None = None
    timestamp: float = 0.0
    to_peer: str | None = None


@attrs.frozen(slots=True, kw_only=True)
class Audio(RuntimeData):
    """PCM audio: float32 samples in [-1, 1], interleaved when ``channels > 1``.

    ``samples`` is 1-D of length ``frames * channels`` (the layout of PyAV's packed ``flt``
    format); :meth:`frames_view` gives the ``(frames, channels)`` view without copying.
    ``timestamp`` is the capture/presentation time in seconds on the session's media clock: frames of
    different peers that belong to the same instant carry the same timestamp (the router aligns them).
    """

    samples: FloatArray = attrs.field(
        converter=_audio_samples, repr=lambda s: f"<{s.size} samples>"
    )
    sample_rate: int = 48_000
    channels: int = 1
    #: When the newest received packet this audio carries reached the transport (its monotonic
    #: clock); None for audio the pipeline made up. Nodes that derive audio keep it (``evolve``);
    #: a mix takes the newest of the frames it sums. The router's added latency starts here.
    arrived_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"Audio.sample_rate must be positive, got {self.sample_rate}")
        if self.channels < 1:
            raise ValueError(f"Audio.channels must be >= 1, got {self.channels}")
        if self.samples.size % self.channels:
            raise ValueError(
                f"Audio.samples has {self.samples.size} values, not a multiple of "
                f"{self.channels} channels"
            )

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return self.samples.size // self.channels

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate

    def frames_view(self) -> FloatArray:
        """The samples as ``(frames, channels)``: a view, not a copy."""
        return self.samples.reshape(-1, self.channels)


def _video_frame(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise TypeError(
                f"Video.frame as an array must be uint8 HxW or HxWx3, got {value.dtype} "
                f"{value.shape}"
            )
        return readonly(value)
    if not (hasattr(value, "to_ndarray") and hasattr(value, "width")):
        raise TypeError(
            f"Video.frame must be an av.VideoFrame or a numpy array, got {type(value).__name__}"
        )
    return value


@attrs.frozen(slots=True, kw_only=True)
class Video(RuntimeData):
    """One decoded video frame.

    ``frame`` is either an ``av.VideoFrame`` (what the transport decodes and what its encoders take,
    usually ``yuv420p``) or a numpy ``uint8`` array, ``HxWx3`` RGB or ``HxW`` gray (what tests and
    numpy-minded nodes like). Nodes should accept both and return the kind they were given;
    :meth:`to_rgb` gives an RGB array whatever the kind.
    """

    frame: av.VideoFrame | npt.NDArray[np.uint8] = attrs.field(
        converter=_video_frame, repr=lambda f: f"<{type(f).__name__}>"
    )

    @property
    def width(self) -> int:
        if isinstance(self.frame, np.ndarray):
            return int(self.frame.shape[1])
        return int(self.frame.width)

    @property
    def height(self) -> int:
        if isinstance(self.frame, np.ndarray):
            return int(self.frame.shape[0])
        return int(self.frame.height)

    def to_rgb(self) -> npt.NDArray[np.uint8]:
        """An ``HxWx3`` RGB array (a view for RGB arrays; converted for gray arrays and av frames)."""
        frame = self.frame
        if isinstance(frame, np.ndarray):
            if frame.ndim == 2:
                return np.repeat(frame[:, :, None], 3, axis=2)
            return frame
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


@attrs.frozen(slots=True, kw_only=True)
class Text(RuntimeData):
    """A text message (a data-channel string)."""

    text: str


@attrs.frozen(slots=True, kw_only=True)
class Binary(RuntimeData):
    """Opaque bytes (a data-channel binary message); a ``memoryview`` is kept as given, not copied."""

    data: bytes | memoryview = attrs.field(repr=lambda d: f"<{len(d)} bytes>")


@attrs.frozen(slots=True, kw_only=True)
class Json(RuntimeData):
    """A JSON value: control messages, level reports, VAD events.

    The record is frozen but a dict or list inside it is not: treat it as read-only, like samples.
    """

    value: JsonValue
