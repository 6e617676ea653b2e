"""meshrtc: a media pipeline talking to up to ten WebRTC peers at once.

The public surface is what this module re-exports (``__all__``); everything else is reachable
through its subpackages (``meshrtc.media`` for the sans-IO timing core, ``meshrtc.rtc`` for the aiortc
layer) but is an implementation detail unless documented.

The transport and peer names load aiortc and PyAV, which take a second or more to import: they are
imported on first use, so ``import meshrtc`` stays cheap for code that only needs the config, the
pipeline or the signaling server.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from meshrtc.config import AudioCodec as AudioCodec
from meshrtc.config import DataChannelMode as DataChannelMode
from meshrtc.config import IceTransportPolicy as IceTransportPolicy
from meshrtc.config import TransportConfig as TransportConfig
from meshrtc.config import TurnServer as TurnServer
from meshrtc.config import VideoCodec as VideoCodec
from meshrtc.errors import ConfigError as ConfigError
from meshrtc.errors import MeshRtcError as MeshRtcError
from meshrtc.media.vp9 import Vp9PayloadError as Vp9PayloadError
from meshrtc.pipeline import Audio as Audio
from meshrtc.pipeline import Binary as Binary
from meshrtc.pipeline import Json as Json
from meshrtc.pipeline import Manifest as Manifest
from meshrtc.pipeline import ManifestError as ManifestError
from meshrtc.pipeline import Node as Node
from meshrtc.pipeline import PipelineError as PipelineError
from meshrtc.pipeline import PipelineRunner as PipelineRunner
from meshrtc.pipeline import RuntimeData as RuntimeData
from meshrtc.pipeline import Text as Text
from meshrtc.pipeline import Video as Video
from meshrtc.pipeline import default_manifest as default_manifest
from meshrtc.signaling.client import SignalingClient as SignalingClient
from meshrtc.signaling.client import SignalingConnectionError as SignalingConnectionError
from meshrtc.signaling.client import SignalingError as SignalingError
from meshrtc.signaling.client import SignalingTimeoutError as SignalingTimeoutError
from meshrtc.signaling.server import SignalingServer as SignalingServer

if _TYPE_CHECKING:
    from meshrtc.rtc.events import ReceivedAudio as ReceivedAudio
    from meshrtc.rtc.events import ReceivedData as ReceivedData
    from meshrtc.rtc.events import ReceivedVideo as ReceivedVideo
    from meshrtc.rtc.peer import PeerConnection as PeerConnection
    from meshrtc.rtc.peer import PeerError as PeerError
    from meshrtc.rtc.peer import PeerOptions as PeerOptions
    from meshrtc.rtc.peers import PeerManager as PeerManager
    from meshrtc.session.manager import RunningSession as RunningSession
    from meshrtc.session.stream import StreamSession as StreamSession
    from meshrtc.transport import TransportError as TransportError
    from meshrtc.transport import WebRtcTransport as WebRtcTransport

_LAZY = {
    "ReceivedAudio": "meshrtc.rtc.events",
    "ReceivedData": "meshrtc.rtc.events",
    "ReceivedVideo": "meshrtc.rtc.events",
    "PeerConnection": "meshrtc.rtc.peer",
    "PeerError": "meshrtc.rtc.peer",
    "PeerOptions": "meshrtc.rtc.peer",
    "PeerManager": "meshrtc.rtc.peers",
    "RunningSession": "meshrtc.session.manager",
    "StreamSession": "meshrtc.session.stream",
    "TransportError": "meshrtc.transport",
    "WebRtcTransport": "meshrtc.transport",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshrtc' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(
    [
        "Audio",
        "AudioCodec",
        "Binary",
        "ConfigError",
        "DataChannelMode",
        "IceTransportPolicy",
        "Json",
        "Manifest",
        "ManifestError",
        "MeshRtcError",
        "Node",
        "PipelineError",
        "PipelineRunner",
        "RuntimeData",
        "SignalingClient",
        "SignalingConnectionError",
        "SignalingError",
        "SignalingServer",
        "SignalingTimeoutError",
        "Text",
        "TransportConfig",
        "TurnServer",
        "Video",
        "VideoCodec",
        "Vp9PayloadError",
        "default_manifest",
        *_LAZY,
    ]
)

__version__ = "0.1.0"
