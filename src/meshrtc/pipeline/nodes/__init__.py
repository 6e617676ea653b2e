"""The built-in nodes; importing this package registers them (docs/pipeline.md has the reference)."""

from meshrtc.pipeline.nodes.audio import AudioLevel as AudioLevel
from meshrtc.pipeline.nodes.audio import EnergyVAD as EnergyVAD
from meshrtc.pipeline.nodes.audio import Gain as Gain
from meshrtc.pipeline.nodes.audio import Resample as Resample
from meshrtc.pipeline.nodes.basic import DataEcho as DataEcho
from meshrtc.pipeline.nodes.basic import PassThrough as PassThrough
from meshrtc.pipeline.nodes.basic import VideoPassThrough as VideoPassThrough
from meshrtc.pipeline.nodes.mixminus import MixMinus as MixMinus
from meshrtc.pipeline.nodes.mixminus import MixMinusMixer as MixMinusMixer
from meshrtc.pipeline.nodes.video import Grayscale as Grayscale
from meshrtc.pipeline.nodes.video import VideoFlip as VideoFlip
