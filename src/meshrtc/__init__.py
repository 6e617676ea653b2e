"""meshrtc: a media pipeline talking to up to ten WebRTC peers at once.

The public surface is what this module re-exports; everything else is an implementation detail.
"""

from meshrtc.config import AudioCodec as AudioCodec
from meshrtc.config import DataChannelMode as DataChannelMode
from meshrtc.config import TransportConfig as TransportConfig
from meshrtc.config import TurnServer as TurnServer
from meshrtc.config import VideoCodec as VideoCodec
from meshrtc.errors import ConfigError as ConfigError
from meshrtc.errors import MeshRtcError as MeshRtcError

__version__ = "0.1.0"
