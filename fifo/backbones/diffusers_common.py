"""What the diffusers adapters (UNet3D family, Wan family) do alike: prompt embeddings, CFG, dtypes.

An adapter subclasses `DiffusersBackbone` and supplies `_encode_text(text) -> (1, S, D)` and
`_model(x, t, ctx) -> output` (one batched call of its denoiser, timesteps (B, F)); this class
turns them into the `Backbone` contract: both prompts encoded once, classifier-free guidance with
both halves in one call, inputs moved to the model's device and dtype, outputs in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .base import Backbone


@dataclass(frozen=True)
class PromptEmbeds:
    """One encoded prompt: positive and negative text embeddings, batch dim 1 each."""

    positive: torch.Tensor  # (1, S, D)
    negative: torch.Tensor  # (1, S, D)


def stack_conds(cond: PromptEmbeds | Sequence[PromptEmbeds], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embeddings (B, S, D) for one cond shared by all rows or one cond per row."""
    conds = [cond] * batch if isinstance(cond, PromptEmbeds) else list(cond)
    if len(conds) != batch or not all(isinstance(c, PromptEmbeds) for c in conds):
        raise ValueError(f"cond: expected one PromptEmbeds or a sequence of {batch} (one per batch row), got {len(conds)} items")
    return torch.cat([c.positive for c in conds]), torch.cat([c.negative for c in conds])


def guided(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance with both halves in one batched call; scale 1 runs the conditional half alone."""
    if guidance_scale == 1:
        return model(x, t, pos).float()
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([neg, pos])).float()
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Frames (N, 3, H, W) in [-1, 1] to uint8 (N, H, W, 3)."""
    x = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class DiffusersBackbone(Backbone):
    """The shared half of the diffusers adapters; subclasses give `_encode_text` and `_model`."""

    def _encode_text(self, text: str) -> torch.Tensor:  # (1, S, D) on self.device, self.dtype
        raise NotImplementedError

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:  # (B, C, F, h, w)
        raise NotImplementedError

    def _check_latents(self, latents: torch.Tensor) -> None:
        """Adapter-specific shape checks (patch sizes); none by default."""

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeds:
        """Text embeddings of the prompt and the negative prompt ("" is the unconditional one)."""
        with torch.no_grad():
            return PromptEmbeds(self._encode_text(prompt), self._encode_text(negative_prompt or ""))

    @torch.no_grad()
    def denoise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: PromptEmbeds | Sequence[PromptEmbeds], guidance_scale: float
    ) -> torch.Tensor:
        """Model output (B, C, F, h, w), float32, each frame at its own timestep; CFG batched."""
        b, _, f = latents.shape[:3]
        if timesteps.shape != (b, f):
            raise ValueError(f"timesteps shape {tuple(timesteps.shape)}: expected (B, F) = {(b, f)}")
        self._check_latents(latents)
        pos, neg = stack_conds(cond, b)
        x = latents.to(self.device, self.dtype)
        t = timesteps.to(self.device, torch.float32)
        return guided(self._model, x, t, pos.to(self.device, self.dtype), neg.to(self.device, self.dtype), float(guidance_scale))
