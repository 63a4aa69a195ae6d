"""Backbones: one file per model family, each an adapter to the `Backbone` contract."""

from .base import Backbone, BackboneDefaults, Decoder, Distilled, PREDICTION_TYPES
from .registry import BACKBONES, BackboneSpec, load_backbone, register

__all__ = [
    "Backbone", "BackboneDefaults", "Decoder", "Distilled", "PREDICTION_TYPES", "BACKBONES", "BackboneSpec", "load_backbone", "register",
]  # fmt: skip
