"""The media pipeline: RuntimeData, manifests, the trio runner and the built-in nodes.

See docs/pipeline.md for the manifest format, the node reference and the streaming API.
"""

from meshrtc.pipeline import nodes as nodes
from meshrtc.pipeline.data import Audio as Audio
from meshrtc.pipeline.data import Binary as Binary
from meshrtc.pipeline.data import Json as Json
from meshrtc.pipeline.data import RuntimeData as RuntimeData
from meshrtc.pipeline.data import Text as Text
from meshrtc.pipeline.data import Video as Video
from meshrtc.pipeline.errors import ManifestError as ManifestError
from meshrtc.pipeline.errors import ParamError as ParamError
from meshrtc.pipeline.errors import PipelineError as PipelineError
from meshrtc.pipeline.manifest import DEFAULT_MANIFEST as DEFAULT_MANIFEST
from meshrtc.pipeline.manifest import Connection as Connection
from meshrtc.pipeline.manifest import Manifest as Manifest
from meshrtc.pipeline.manifest import NodeSpec as NodeSpec
from meshrtc.pipeline.manifest import default_manifest as default_manifest
from meshrtc.pipeline.node import Emit as Emit
from meshrtc.pipeline.node import Node as Node
from meshrtc.pipeline.node import NodeOutput as NodeOutput
from meshrtc.pipeline.node import Params as Params
from meshrtc.pipeline.node import register_node as register_node
from meshrtc.pipeline.registry import node_types as node_types
from meshrtc.pipeline.runner import PipelineRunner as PipelineRunner
from meshrtc.pipeline.runner import PipelineStream as PipelineStream
from meshrtc.pipeline.runner import RunStats as RunStats
