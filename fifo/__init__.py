"""fifo-video: unbounded text-to-video with FIFO-Diffusion (arXiv 2405.11473).

    >>> import fifo
    >>> bb = fifo.load_backbone("toy")
    >>> for frame in fifo.generate(bb, "a red ball moving right", num_frames=48):
    ...     pass  # frame: uint8 (H, W, 3), as soon as it is decoded
"""

from .backbones import BACKBONES, Backbone, BackboneDefaults, BackboneSpec, Decoder, Distilled, load_backbone
from .backbones.encoders import known_latents, load_known
from .config import FIFOConfig
from .drift import DriftMeter
from .engine import FIFOState, FIFOStream, generate, latents_for_frames
from .prompts import PromptSchedule
from .schedule import Ladder, NoiseSchedule, Window, distilled_ladder, make_ladder, windows

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneDefaults",
    "BackboneSpec",
    "Decoder",
    "Distilled",
    "DriftMeter",
    "FIFOConfig",
    "FIFOState",
    "FIFOStream",
    "Ladder",
    "NoiseSchedule",
    "PromptSchedule",
    "Window",
    "distilled_ladder",
    "generate",
    "known_latents",
    "latents_for_frames",
    "load_backbone",
    "load_known",
    "make_ladder",
    "windows",
]
