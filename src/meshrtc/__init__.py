"""meshrtc: a media pipeline talking to up to ten WebRTC peers at once.

The public surface is what this module re-exports; everything else is reachable through its
subpackages (``meshrtc.media`` for the sans-IO timing core, ``meshrtc.rtc`` for the aiortc layer) but
is an implementation detail unless documented.
"""

from meshrtc.config import AudioCodec as AudioCodec
from meshrtc.config import DataChannelMode as DataChannelMode
from meshrtc.config import IceTransportPolicy as IceTransportPolicy
from meshrtc.config import TransportConfig as TransportConfig
from meshrtc.config import TurnServer as TurnServer
from meshrtc.config import VideoCodec as VideoCodec
from meshrtc.errors import ConfigError as ConfigError
from meshrtc.errors import MeshRtcError as MeshRtcError
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

__version__ = "0.1.0"
