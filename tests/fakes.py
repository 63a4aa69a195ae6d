"""Analytic backbones for testing the engine against closed forms (no weights, no randomness)."""

from __future__ import annotations

import numpy as np
import torch

from fifo.backbones.base import Backbone, BackboneDefaults, Decoder
from fifo.schedule import NoiseSchedule


class LatentDecoder(Decoder):
    """Hands the popped latents back (as uint8 of a fixed affine map) and keeps them for inspection."""

    def __init__(self, sink: list | None):
        self.sink = sink

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        if self.sink is not None:
            self.sink.extend(latents.permute(1, 0, 2, 3).cpu().clone())  # (C, lh, lw) each
        x = ((latents[:1].expand(3, *latents.shape[1:]).permute(1, 2, 3, 0) + 2) * 50).clamp(0, 255)  # (F, lh, lw, 3)
        return x.round().to(torch.uint8).numpy()


class GaussianBackbone(Backbone):
    """Data x_0 ~ N(mu, std^2) per latent pixel, frames independent; the exact noise predictor.

    E[x_0 | x_t] = mu + g (x_t - a mu), g = a std^2 / (a^2 std^2 + s^2); std = 0 is a point mass.
    `prediction_type` chooses how the exact prediction is expressed (epsilon, v, or flow velocity).
    """

    name = "gaussian"
    latent_channels = 3
    spatial_compression = 1

    def __init__(self, mu, std, prediction_type="epsilon", schedule=None, frames=4, partitions=2, lookahead=False, eta=0.0):
        self.mu = torch.as_tensor(mu, dtype=torch.float32)  # (C, lh, lw)
        self.std = torch.as_tensor(std, dtype=torch.float32).expand_as(self.mu)
        self.prediction_type = prediction_type
        self.native_frames = frames
        if schedule is None:
            schedule = NoiseSchedule("flow", shift=3.0) if prediction_type == "flow" else NoiseSchedule.scaled_linear()
        self.noise_schedule = schedule
        self.latent_channels, lh, lw = self.mu.shape
        self.defaults = BackboneDefaults(frames, partitions, lookahead, eta, 1.0, 8, lh, lw)
        self.calls: list[tuple[int, ...]] = []  # latents shape of every denoise call
        self.sink: list | None = None

    def coefficients(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) of x_t = a x_0 + s eps for model timesteps, float64."""
        t = timesteps.double()
        ns = self.noise_schedule
        if ns.kind == "flow":
            sig = t / ns.num_train_timesteps
            return 1 - sig, sig
        ac = torch.tensor(ns.alphas_cumprod, dtype=torch.float64)[t.round().long()]
        return ac.sqrt(), (1 - ac).sqrt()

    def encode_prompt(self, prompt, negative_prompt=""):
        return prompt

    def denoise(self, latents, timesteps, cond, guidance_scale):
        self.calls.append(tuple(latents.shape))
        a, s = (v[:, None, :, None, None] for v in self.coefficients(timesteps))  # (B, 1, F, 1, 1)
        x = latents.double()
        mu, var = self.mu.double()[None, :, None], self.std.double()[None, :, None] ** 2
        g = a * var / (a * a * var + s * s)
        x0 = mu + g * (x - a * mu)
        eps = (x - a * x0) / s
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "v_prediction":
            out = a * eps - s * x0
        else:
            out = eps - x0
        return out.to(latents.dtype)

    def decoder(self):
        return LatentDecoder(self.sink)


class CountingDecoder(Decoder):
    """Like a 4x causal video VAE: the first latent gives 1 frame, later ones 4; frame k holds k at [0, 0, 0]."""

    def __init__(self, size: int = 8):
        self.count, self.size = 0, size

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        n = 1 if self.count == 0 else 4
        out = np.zeros((n, self.size, self.size, 3), np.uint8)
        out[:, 0, 0, 0] = np.arange(self.count, self.count + n)
        self.count += n
        return out

    def state_dict(self) -> dict:
        return {"count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


class CausalGauss(GaussianBackbone):
    """The Gaussian backbone with a 4x causal decoder's frame counts."""

    temporal_compression = 4

    def decoder(self):
        return CountingDecoder(self.mu.shape[-1])
