"""The two long-video baselines a user would reach for instead of FIFO-Diffusion.

Both are pure functions of (backbone, prompt, ...): no queue, every frame of a model call at one
noise level (what a short-clip model was trained for), the same ladder (`fifo.schedule.make_ladder`),
the same per-frame DDIM / Euler step (`fifo.solvers.solver_step`) and keyed noise (`fifo.noise`)
as the engine, so a difference in the frames comes from the sampling scheme alone.

- `concat_clips`: independent `f`-frame clips, each sampled from its own noise, concatenated.
- `extend_clips`: clip-by-clip extension by replacement. The first clip is an ordinary sample;
  each next clip overlaps the previous one by `overlap` frames: at every denoising step its first
  `overlap` frames are replaced by the previous clip's last `overlap` clean frames noised to the
  current level with fresh keyed noise, then the whole clip takes one step; the clip's other
  `f - overlap` frames are appended to the video.

`seed` may be one int (returns one video, uint8 (N, H, W, 3)) or a sequence of ints (returns a
list, one video per seed, sampled together in one batch: the same frames as one seed at a time,
since every draw is keyed by (seed, stream, frame, step)).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from fifo.noise import keyed_normal
from fifo.schedule import make_ladder
from fifo.solvers import solver_step

# keyed-noise streams of the baselines (the engine's are 1-4: TAIL, ETA, BASE, FILL)
CONCAT_INIT, EXTEND_INIT, REPLACE, BASELINE_ETA = 101, 102, 103, 104


def _seeds(seed: int | Sequence[int]) -> tuple[list[int], bool]:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed)], True
    seeds = [int(s) for s in seed]
    if not seeds:
        raise ValueError("seed: give an int or a non-empty sequence of ints")
    return seeds, False


def _noise(shape, seeds: list[int], stream: int, frames: Sequence[Sequence[int]], step: int = 0) -> torch.Tensor:
    """Keyed noise (B, C, F, lh, lw): row b, frame j drawn from (seeds[b], stream, frames[b][j], step)."""
    rows = [torch.stack([keyed_normal(shape, s, stream, fr, step) for fr in row], dim=1) for s, row in zip(seeds, frames)]
    return torch.stack(rows)


class _Sampler:
    """What both baselines share: the ladder, the conditioning, one denoising step of a batch of clips."""

    def __init__(self, backbone, prompt: str, frames_per_window, steps, eta, guidance_scale, height, width) -> None:
        d = backbone.defaults
        if backbone.temporal_compression != 1:
            raise ValueError(
                f"{backbone.name}: the baselines count one video frame per latent frame; a causal video VAE "
                f"({backbone.temporal_compression} frames per latent) is not supported here"
            )
        self.bb = backbone
        self.f = d.frames_per_window if frames_per_window is None else int(frames_per_window)
        self.steps = self.f * d.partitions if steps is None else int(steps)
        self.eta = d.eta if eta is None else float(eta)
        self.gs = d.guidance_scale if guidance_scale is None else float(guidance_scale)
        if self.f < 2 or self.steps < 1:
            raise ValueError(f"frames_per_window={self.f}, steps={self.steps}: need f >= 2 and steps >= 1")
        if backbone.prediction_type == "flow" and self.eta != 0:
            raise ValueError(f"eta={self.eta}: flow models step deterministically, use eta=0")
        h = d.height if height is None else height
        w = d.width if width is None else width
        lh, lw = backbone.latent_size(h, w)
        self.shape = (backbone.latent_channels, lh, lw)
        self.lad = make_ladder(backbone.noise_schedule, self.steps)
        self.cond = backbone.encode_prompt(prompt, "")

    def level(self, i: int) -> tuple[float, float]:
        """(alpha, sigma) of rung i."""
        return float(self.lad.alphas[i]), float(self.lad.sigmas[i])

    def step(self, x: torch.Tensor, i: int, seeds: list[int], frames: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every frame of the clips x (B, C, f, lh, lw) from rung i to rung i - 1 (clean after rung 0)."""
        B, f = x.shape[0], x.shape[2]
        dev = self.bb.device
        t = self.lad.timesteps[i].float().to(dev).expand(B, f)
        out = self.bb.denoise(x.to(self.bb.dtype), t, self.cond, self.gs).float()
        lad = self.lad
        coef = [float(v[i]) * torch.ones((), device=dev) for v in (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)]
        noise = None
        if self.eta != 0:
            noise = _noise(self.shape, seeds, BASELINE_ETA, frames, self.steps - i).to(dev)
        return solver_step(x, out, *coef, self.bb.prediction_type, self.eta, noise)

    def decode(self, latents: torch.Tensor, num_frames: int) -> np.ndarray:
        """Latents (C, N, lh, lw) -> the first num_frames uint8 frames: one decoder, f frames per call, in order."""
        dec = self.bb.decoder()
        lat = latents[:, :num_frames]
        frames = np.concatenate([dec.decode(lat[:, i : i + self.f].to(self.bb.device)) for i in range(0, lat.shape[1], self.f)])
        if len(frames) != num_frames:
            raise RuntimeError(f"decoded {len(frames)} frames, wanted {num_frames}")
        return frames


def concat_clips(
    backbone,
    prompt: str,
    num_frames: int,
    frames_per_window: int | None = None,
    steps: int | None = None,
    seed: int | Sequence[int] = 0,
    eta: float | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    clip_batch: int | None = None,
) -> np.ndarray | list[np.ndarray]:
    """`ceil(num_frames / f)` independent f-frame clips, `steps` DDIM steps each, concatenated; uint8 (N, H, W, 3).

    Defaults from `backbone.defaults`: f = frames_per_window, steps = f * partitions (the steps a
    FIFO frame receives), eta, guidance. The clips (of all seeds) are denoised `clip_batch` at a
    time (None: all together, one forward call per step; a real model on a GPU needs a few).
    """
    s = _Sampler(backbone, prompt, frames_per_window, steps, eta, guidance_scale, height, width)
    seeds, single = _seeds(seed)
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be >= 1")
    f, k = s.f, math.ceil(num_frames / s.f)
    frames = [list(range(c * f, (c + 1) * f)) for c in range(k)]  # video frame of each clip slot
    rows = [(sd, fr) for sd in seeds for fr in frames]
    row_seeds, row_frames = [r[0] for r in rows], [r[1] for r in rows]
    size = len(rows) if clip_batch is None else int(clip_batch)
    if size < 1:
        raise ValueError(f"clip_batch={clip_batch}: must be >= 1 or None")
    with torch.inference_mode():
        done = []
        for lo in range(0, len(rows), size):
            sd, fr = row_seeds[lo : lo + size], row_frames[lo : lo + size]
            x = _noise(s.shape, sd, CONCAT_INIT, fr).to(backbone.device)
            for i in reversed(range(s.steps)):
                x = s.step(x, i, sd, fr)
            done.append(x.cpu())
        x = torch.cat(done).view(len(seeds), k, *done[0].shape[1:])  # (S, k, C, f, lh, lw)
        videos = [s.decode(v.permute(1, 0, 2, 3, 4).reshape(s.shape[0], k * f, *s.shape[1:]), num_frames) for v in x]
    return videos[0] if single else videos


def extend_clips(
    backbone,
    prompt: str,
    num_frames: int,
    frames_per_window: int | None = None,
    steps: int | None = None,
    overlap: int | None = None,
    seed: int | Sequence[int] = 0,
    eta: float | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Clip-by-clip extension by replacement of the `overlap` known frames; uint8 (N, H, W, 3).

    The first clip is an ordinary f-frame sample; every later clip covers video frames
    `[start, start + f)` with `start` = frames so far - overlap, its first `overlap` frames known.
    At each of its `steps` steps the known frames are put at the current level as
    `alpha * known + sigma * noise`, the noise drawn fresh from (seed, REPLACE, frame, step).
    `overlap` defaults to f // 2 (the context lookahead gives FIFO). Clips of all seeds advance
    together, one forward call per step.
    """
    s = _Sampler(backbone, prompt, frames_per_window, steps, eta, guidance_scale, height, width)
    seeds, single = _seeds(seed)
    f = s.f
    k = f // 2 if overlap is None else int(overlap)
    if not 1 <= k < f:
        raise ValueError(f"overlap={k}: must be in [1, frames_per_window - 1 = {f - 1}]")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be >= 1")
    B, dev = len(seeds), backbone.device
    with torch.inference_mode():
        frames = [list(range(f))] * B
        x = _noise(s.shape, seeds, EXTEND_INIT, frames).to(dev)
        for i in reversed(range(s.steps)):
            x = s.step(x, i, seeds, frames)
        video = [x]  # pieces (B, C, F, lh, lw) of clean latents, in order
        have = f
        while have < num_frames:
            start = have - k
            frames = [list(range(start, start + f))] * B
            known = video[-1][:, :, -k:] if video[-1].shape[2] >= k else torch.cat(video, dim=2)[:, :, -k:]
            x = _noise(s.shape, seeds, EXTEND_INIT, frames).to(dev)
            for i in reversed(range(s.steps)):
                a, sg = s.level(i)
                fresh = _noise(s.shape, seeds, REPLACE, [fr[:k] for fr in frames], s.steps - i).to(dev)
                x = torch.cat([a * known + sg * fresh, x[:, :, k:]], dim=2)
                x = s.step(x, i, seeds, frames)
            video.append(x[:, :, k:])
            have += f - k
        lat = torch.cat(video, dim=2).cpu()  # (B, C, >= N, lh, lw)
        videos = [s.decode(lat[b], num_frames) for b in range(B)]
    return videos[0] if single else videos


def clip_starts(method: str, num_frames: int, frames_per_window: int, overlap: int | None = None) -> list[int]:
    """Video frames where a baseline starts a new clip (after frame 0): the transitions into them cross a seam."""
    f = frames_per_window
    if method == "concat":
        return list(range(f, num_frames, f))
    if method == "extend":
        k = f // 2 if overlap is None else overlap
        return list(range(f, num_frames, f - k))
    raise ValueError(f"method={method!r}: 'concat' or 'extend'")
