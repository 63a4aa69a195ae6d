"""The registry of loadable backbones: names users (and the app) may pick, and how each loads."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from .base import Backbone, BackboneDefaults, Distilled


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
    # How its authors sample it, passed to from_pretrained unless the caller gives its own:
    flow_shift: float | None = None  # flow models: the sigma shift (replaces the shipped scheduler's)
    fps_condition: float | None = None  # frame-rate-conditioned models: the rate fed to the model
    latent_rescale: tuple[float, float, int] | None = None  # VideoCrafter's use_scale: (scale_a, scale_b, mid_step)
    distilled: Distilled | None = None  # step-distilled models: the timesteps, update rule and guidance they were distilled for
    sources: str = ""  # where the defaults above come from


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to `BACKBONES` (names are unique)."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    BACKBONES[spec.name] = spec
    return spec


_SAMPLING_OPTIONS = ("flow_shift", "fps_condition", "latent_rescale")


def load_backbone(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **kw) -> Backbone:
    """Build the registry backbone `name` on `device` (default: CUDA if present, else CPU).

    `flow_shift=` / `fps_condition=` override the entry's own (None keeps it); a model without
    that input refuses the option.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r}: allowed are {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    for key in _SAMPLING_OPTIONS:
        value = kw.pop(key, None)
        default = getattr(spec, key)
        if value is not None and default is None:
            raise ValueError(f"{key}={value!r}: {name} has no such input (it applies to {_takers(key)})")
        if value is not None or default is not None:
            kw[key] = default if value is None else value
    module, cls_name = spec.cls.split(":")
    cls = getattr(importlib.import_module(f"fifo.backbones.{module}"), cls_name)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.model_id is not None:  # the toy world has no name or defaults to be told
        kw = {"name": spec.name, "defaults": spec.defaults, **kw}
        if spec.distilled is not None:
            kw.setdefault("distilled", spec.distilled)
    return cls.from_pretrained(spec.model_id, device=device, dtype=dtype, **kw)


def _takers(key: str) -> str:
    return ", ".join(n for n, s in BACKBONES.items() if getattr(s, key) is not None)


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


# -- real models (weights from the Hugging Face Hub on first use) ---------------------------------
# Defaults: resolution and native clip length from each model card / diffusers pipeline default;
# guidance from the pipeline defaults (TextToVideoSDPipeline 9.0, WanPipeline 5.0, SkyReels-V2 DF
# 6.0) and VideoCrafter2's run_text2video.sh (12.0, ddim_eta 1.0, 320x512); partitions and
# lookahead as in the FIFO-Diffusion paper (n = 4 with lookahead) for the UNets, n = 2 for the
# transformers (L = 42 / 50 steps, about their pipelines' 50). vram_gb: rough estimates with every
# window of a step in one call, not measured (no GPU here); window_batch lowers them.

register(
    BackboneSpec(
        name="modelscope",
        cls="unet3d:UNet3DBackbone",
        model_id="damo-vilab/text-to-video-ms-1.7b",
        licence="CC-BY-NC-4.0",
        defaults=BackboneDefaults(
            frames_per_window=16, partitions=4, lookahead=True, eta=0.0, guidance_scale=9.0, fps=8, height=256, width=256
        ),
        vram_gb=12.0,
        summary="ModelScope T2V 1.7B (UNet3D, 256x256, 16 frames); estimated VRAM",
    )
)
register(
    BackboneSpec(
        name="zeroscope",
        cls="unet3d:UNet3DBackbone",
        model_id="cerspense/zeroscope_v2_576w",
        licence="CC-BY-NC-4.0",
        defaults=BackboneDefaults(
            frames_per_window=24, partitions=4, lookahead=True, eta=0.0, guidance_scale=9.0, fps=8, height=320, width=576
        ),
        vram_gb=40.0,
        summary="zeroscope v2 576w (ModelScope fine-tune, 576x320, 24 frames); estimated VRAM",
    )
)
register(
    BackboneSpec(
        name="videocrafter2",
        cls="unet3d:UNet3DBackbone",
        model_id="adamdad/videocrafterv2_diffusers",
        licence="see model card (VideoCrafter2 port, every component in one repository; terms not verified here)",
        defaults=BackboneDefaults(
            frames_per_window=16, partitions=4, lookahead=True, eta=1.0, guidance_scale=12.0, fps=8, height=320, width=512
        ),
        vram_gb=25.0,
        summary="VideoCrafter2 (UNet3D + fps embedding, 512x320, 16 frames), the FIFO-Diffusion paper's main model; estimated VRAM",
        fps_condition=8.0,
        latent_rescale=(1.0, 0.7, 400),
        sources="fps 8: FIFO-Diffusion's VideoCrafter2 runs (VideoCrafter's own run_text2video.sh passes 28); "
        "latent rescale 1.0 -> 0.7 over t < 400: VideoCrafter2's inference config (use_scale, scale_b 0.7)",
    )
)
register(
    BackboneSpec(
        name="wan2.1-1.3b",
        cls="wan:WanBackbone",
        model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        licence="Apache-2.0",
        defaults=BackboneDefaults(
            frames_per_window=21, partitions=2, lookahead=True, eta=0.0, guidance_scale=5.0, fps=16, height=480, width=832
        ),
        vram_gb=22.0,
        summary="Wan2.1 T2V 1.3B (flow matching, 832x480, 81 frames = 21 latents, causal VAE); estimated VRAM",
        flow_shift=3.0,
        sources="shift 3.0: diffusers' Wan documentation for 480P (5.0 for 720P), as the repository's scheduler config ships",
    )
)
register(
    BackboneSpec(
        name="skyreels-v2-df-1.3b",
        cls="wan:SkyReelsDFBackbone",
        model_id="Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
        licence="see model card (SkyReels-V2 terms not verified here)",
        defaults=BackboneDefaults(
            frames_per_window=25, partitions=2, lookahead=True, eta=0.0, guidance_scale=6.0, fps=24, height=544, width=960
        ),
        vram_gb=26.0,
        summary="SkyReels-V2 diffusion forcing 1.3B (per-frame noise levels, 960x544, 97 frames = 25 latents); estimated VRAM",
        flow_shift=8.0,
        fps_condition=24.0,
        sources="shift 8.0: diffusers' SkyReels-V2 documentation for text-to-video (the shipped scheduler config has none: 1.0); "
        "fps 24: the documentation's 540P example (the model takes two classes, 16 and anything else)",
    )
)


# -- step-distilled models: sampled at their own few levels, one forward per window ---------------
# FastWan2.1 1.3B (FastVideo's DMD + sparse-attention distillation of Wan2.1 T2V 1.3B): 3 steps at
# timesteps 1000, 757, 522, each taking the clean estimate and noising it afresh to the next level,
# no guidance. Its sampling clip is 61 frames = 16 latents at 448x832; 3 rungs need f * n / b = 3,
# which no b allows at f = 16, so f = 15 latents (57 frames, inside the distilled length), one
# partition, b = 5, lookahead off (with an odd f lookahead allows b = 1 only). docs/few-step.md.

register(
    BackboneSpec(
        name="fastwan2.1-1.3b",
        cls="wan:WanBackbone",
        model_id="FastVideo/FastWan2.1-T2V-1.3B-Diffusers",
        licence="Apache-2.0",
        defaults=BackboneDefaults(
            frames_per_window=15, partitions=1, lookahead=False, eta=0.0, guidance_scale=1.0, fps=16, height=448, width=832,
            frames_per_rung=5,
        ),  # fmt: skip
        vram_gb=17.0,
        summary="FastWan2.1 T2V 1.3B (Wan2.1 1.3B distilled to 3 steps, no guidance; 832x448, 15-latent windows); estimated VRAM",
        flow_shift=8.0,
        distilled=Distilled(timesteps=(1000.0, 757.0, 522.0), solver="renoise", guidance=False),
        sources="timesteps 1000, 757, 522 and shift 8.0: FastVideo's FastWan2_1_T2V_480P_Config (dmd_denoising_steps, "
        "flow_shift); "
        "x0 then fresh noise at the next timestep: FastVideo's DMD denoising stage; 61 frames at 448x832, 16 fps, 3 steps: "
        "FastVideo's FastWanT2V480PConfig sampling defaults",
    )
)
