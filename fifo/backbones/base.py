"""The Backbone contract: what the engine needs from a short-clip video diffusion model.

The engine knows no model class; every model family is an adapter to this contract. A backbone
knows no queue: it denoises a batch of windows, each frame at its own timestep, and decodes the
latent frames the engine pops.

Legend (the paper's notation -> names here):
    f          native_frames        latent frames the model sees per call
    x_t        latents              (B, C, F, h, w), one window of the queue per batch row
    tau        timesteps            (B, F) float, each frame's own model timestep
    eps / v    denoise(...) output  what the model predicts, per ``prediction_type``
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..schedule import NoiseSchedule
from ..solvers import SOLVERS

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


@dataclass(frozen=True)
class BackboneDefaults:
    """The settings a backbone runs best with; `FIFOConfig.resolve` fills `None` fields from these."""

    frames_per_window: int
    partitions: int
    lookahead: bool
    eta: float
    guidance_scale: float
    fps: int
    height: int
    width: int
    frames_per_rung: int = 1  # b: latent frames per noise level (1: the paper's FIFO)


@dataclass(frozen=True)
class Distilled:
    """How a step-distilled model is sampled: at the levels it was distilled for only, by its own update.

    Legend: `timesteps` are the model timesteps its authors sample at, noisiest first (FastVideo's
    `dmd_denoising_steps`); `solver` "renoise" takes the clean estimate and noises it afresh to
    the next level (DMD and consistency-model sampling), "ode" the DDIM / flow Euler step;
    `guidance` False means classifier-free guidance was distilled into the weights.
    """

    timesteps: tuple[float, ...]
    solver: str = "renoise"
    guidance: bool = False

    def __post_init__(self) -> None:
        t = tuple(self.timesteps)
        if not t or any(not a > b for a, b in zip(t, t[1:])) or t[-1] <= 0:
            raise ValueError(f"timesteps={t!r}: must be a non-empty, strictly decreasing sequence of positive timesteps")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}: allowed are {SOLVERS}")

    @property
    def steps(self) -> int:
        """Denoising steps per sample: the rungs a FIFO queue over this model must have."""
        return len(self.timesteps)


class Decoder(ABC):
    """Turns popped latent frames into uint8 RGB video frames, in order; stateful for causal VAEs."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents (C, F, h, w), the next F popped frames, into uint8 frames (N, H, W, 3)."""

    def state_dict(self) -> dict[str, Any]:
        """What the decoder carries from one call to the next (a causal VAE's cache), on CPU."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, so decoding continues seamlessly."""


class Backbone(ABC):
    """A pretrained short-clip video diffusion model, adapted for per-frame timesteps."""

    name: str = "backbone"
    native_frames: int  # f: latent frames per model call
    prediction_type: str  # one of PREDICTION_TYPES
    latent_channels: int
    temporal_compression: int = 1  # video frames per latent frame (a causal VAE: first latent gives 1)
    spatial_compression: int = 8  # pixels per latent pixel, each side
    defaults: BackboneDefaults
    noise_schedule: NoiseSchedule
    distilled: Distilled | None = None  # a step-distilled model: its own levels, update and guidance
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> Any:
        """Encode one prompt (and its negative) into the conditioning `denoise` takes."""

    @abstractmethod
    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: Any | Sequence[Any],
        guidance_scale: float,
    ) -> torch.Tensor:
        """Model output for latents (B, C, F, h, w) with per-frame timesteps (B, F).

        `cond` is one encoded prompt for the whole batch, or a sequence of B of them (one per
        window, for prompt schedules). Classifier-free guidance runs inside, both halves batched.
        """

    @abstractmethod
    def decoder(self) -> Decoder:
        """A fresh decoder for one video."""

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 video frames (N, H, W, 3) at the run's size -> known latents (C, K, h, w) (see `encoders`)."""
        raise ValueError(f"backbone {self.name!r} has no VAE encoder: it cannot start from a picture or clip")

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for a pixel size; raises ValueError for a size the model cannot take."""
        s = self.spatial_compression
        if height <= 0 or width <= 0 or height % s or width % s:
            raise ValueError(
                f"height={height}, width={width}: both must be positive multiples of {s} for {self.name}"
            )
        return height // s, width // s

    def preview(self, latents: torch.Tensor) -> np.ndarray:
        """A cheap RGB picture of latents (C, F, h, w) without the VAE: uint8 (F, h, w, 3)."""
        x = latents.detach().float().cpu()
        rgb = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])
        lo, hi = rgb.amin(), rgb.amax()
        rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
        return (rgb.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()


def video_frames_before(latent_index: int, temporal_compression: int) -> int:
    """Video frames decoded from the latent frames before `latent_index` (causal VAEs: 1 + 4k)."""
    if latent_index <= 0:
        return 0
    if temporal_compression == 1:
        return latent_index
    return 1 + temporal_compression * (latent_index - 1)
