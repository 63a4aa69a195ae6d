"""The registry of loadable backbones: names users (and the app) may pick, and how each loads."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from .base import Backbone, BackboneDefaults


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: where the weights live, how to build it, what it needs."""

    name: str
    cls: str  # "module:Class" under fifo.backbones; Class.from_pretrained(model_id, device=, dtype=, **kw)
    model_id: str | None  # Hugging Face Hub id; None for the toy world
    licence: str
    defaults: BackboneDefaults
    needs_gpu: bool = True
    vram_gb: float | None = None  # rough peak at the defaults, fp16, for the README and the app
    summary: str = ""


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to `BACKBONES` (names are unique)."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    BACKBONES[spec.name] = spec
    return spec


def load_backbone(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **kw) -> Backbone:
    """Build the registry backbone `name` on `device` (default: CUDA if present, else CPU)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r}: allowed are {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    module, cls_name = spec.cls.split(":")
    cls = getattr(importlib.import_module(f"fifo.backbones.{module}"), cls_name)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return cls.from_pretrained(spec.model_id, device=device, dtype=dtype, **kw)


register(
    BackboneSpec(
        name="toy",
        cls="toy:ToyBackbone",
        model_id=None,
        licence="MIT (ours)",
        defaults=BackboneDefaults(
            frames_per_window=16, partitions=4, lookahead=True, eta=0.0, guidance_scale=1.0, fps=12, height=128, width=128
        ),
        needs_gpu=False,
        vram_gb=0.0,
        summary="built-in toy world: a sprite bouncing in a box, Bayes-optimal closed-form denoiser, no weights",
    )
)
