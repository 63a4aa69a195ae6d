"""The encoder side of the backbones' VAEs: a user's picture or clip -> known latent frames.

A run can start from known frames (see `FIFOStream(known=...)`): the user's media is read,
resized to cover the model's size and centre-cropped, then encoded by the backbone's own VAE
(`Backbone.encode_frames`): per frame for image VAEs (the UNet3D family), causally in chunks of
1 + 4k frames for Wan-type video VAEs, by a fixed downsampler in the toy world.

Legend:
    N            video frames given          (N, H, W, 3) uint8
    K            latent frames out           (C, K, h, w) float32, in the space `denoise` works in
    tc           temporal compression        causal VAEs: K latents decode to 1 + tc (K - 1) frames
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# -- media ---------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A picture file -> uint8 (1, H, W, 3); ValueError (naming the file, not its folder) when unreadable."""
    from PIL import Image, UnidentifiedImageError

    name = Path(path).name
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ValueError(f"picture {name!r}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"picture {name!r} is not a readable image ({type(e).__name__}); use PNG, JPEG or WebP") from None
    return rgb[None]


def read_clip(path: str | os.PathLike, keep: int | None = None) -> np.ndarray:
    """A video file -> its last `keep` (default: all) frames, uint8 (N, H, W, 3); ValueError when unreadable."""
    import imageio_ffmpeg

    name = Path(path).name
    if not Path(path).is_file():
        raise ValueError(f"clip {name!r}: no such file")
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"clip {name!r} is a picture: start from it with an image (--init-image), not a clip")
    frames: collections.deque = collections.deque(maxlen=keep)
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        w, h = next(gen)["size"]
        for b in gen:
            frames.append(np.frombuffer(b, np.uint8).reshape(h, w, 3))
    except (RuntimeError, OSError, StopIteration, ValueError) as e:
        raise ValueError(f"clip {name!r} is not a readable video ({type(e).__name__}); use MP4, WebM or MOV") from None
    if not frames:
        raise ValueError(f"clip {name!r} has no frames")
    return np.stack(frames)


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale uint8 frames (N, H, W, 3) to cover height x width, keeping their aspect, and centre-crop to it."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"frames of shape {frames.shape} and dtype {frames.dtype}: expected uint8 (N, H, W, 3) RGB")
    n, H, W, _ = frames.shape
    if (H, W) == (height, width):
        return frames
    scale = max(height / H, width / W)
    h, w = max(height, round(H * scale)), max(width, round(W * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - height) // 2, (w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_frames(backbone, frames: np.ndarray) -> np.ndarray:
    """The frames if they are uint8 (N >= 1, H, W, 3) of a size the backbone takes, else ValueError."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 1:
        raise ValueError(f"frames of shape {frames.shape} and dtype {frames.dtype}: expected uint8 (N >= 1, H, W, 3)")
    backbone.latent_size(*frames.shape[1:3])
    return frames


def causal_count(n: int, tc: int) -> int:
    """The most frames <= n that a causal VAE of temporal compression tc encodes whole: 1 + tc k."""
    return 1 + (n - 1) // tc * tc if n >= 1 else 0


def to_unit(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).to(device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1


# -- the VAEs' encoder side --------------------------------------------------------------------------


@torch.no_grad()
def encode_image_vae(vae: torch.nn.Module, frames: np.ndarray, device: torch.device, batch: int = 8) -> torch.Tensor:
    """SD-style AutoencoderKL, frame by frame: uint8 (N, H, W, 3) -> latents (C, N, h, w), scaled as `denoise` takes them.

    The posterior's mode (its mean): the known frames are what they are, no sampling noise. The
    inverse of `FrameVAEDecoder`: z = (mode - shift_factor) * scaling_factor.
    """
    cfg = vae.config
    outs = []
    for i in range(0, len(frames), batch):
        x = to_unit(frames[i : i + batch], device, vae.dtype)
        outs.append(vae.encode(x).latent_dist.mode().float())
    z = torch.cat(outs)  # (N, C, h, w)
    if getattr(cfg, "shift_factor", None) is not None:
        z = z - cfg.shift_factor
    return (z * cfg.scaling_factor).transpose(0, 1).contiguous()


@torch.no_grad()
def encode_causal_vae(vae: torch.nn.Module, frames: np.ndarray, device: torch.device, tc: int) -> torch.Tensor:
    """Wan-type causal video VAE: uint8 (1 + tc k, H, W, 3) -> normalised latents (C, 1 + k, h, w).

    The first frame is a latent of its own, each next `tc` frames one more (the VAE's own chunking,
    its feature cache carried through); normalised by the config's latents_mean/std, the inverse
    of `WanStreamDecoder`.
    """
    n = len(frames)
    if n != causal_count(n, tc):
        raise ValueError(f"{n} frames: a causal VAE encodes 1 + {tc} k frames (e.g. {causal_count(n, tc)})")
    x = to_unit(frames, device, vae.dtype).transpose(0, 1)[None]  # (1, 3, N, H, W)
    z = vae.encode(x).latent_dist.mode().float()[0]  # (C, 1 + k, h, w)
    c = z.shape[0]
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z.device).view(c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z.device).view(c, 1, 1, 1)
    return (z - mean) / std


# -- media -> known latents --------------------------------------------------------------------------


def known_latents(backbone, frames: np.ndarray, height: int, width: int, max_latents: int | None = None) -> torch.Tensor:
    """User frames of any size -> known latents (C, K, h, w) for a height x width run of `backbone`.

    Fitted to the size (cover, centre-crop); the last frames a whole number of latents make are
    kept (a causal VAE: 1 + tc k), at most `max_latents` latents' worth.
    """
    backbone.latent_size(height, width)
    tc = backbone.temporal_compression
    frames = fit_frames(frames, height, width)
    n = len(frames) if tc == 1 else causal_count(len(frames), tc)
    if max_latents is not None:
        n = min(n, max_latents if tc == 1 else 1 + tc * (max_latents - 1))
    return backbone.encode_frames(frames[len(frames) - n :])


def load_known(
    backbone, path: str | os.PathLike, kind: str, height: int, width: int, max_latents: int | None = None
) -> torch.Tensor:
    """A picture (`kind="image"`) or clip (`kind="video"`) file -> known latents for `backbone` (see `known_latents`).

    A clip must give at least two latent frames (2 frames; 1 + tc for a causal VAE) so that its
    motion carries on; a picture gives one.
    """
    if kind not in ("image", "video"):
        raise ValueError(f"kind={kind!r}: allowed are 'image', 'video'")
    backbone.latent_size(height, width)  # a size the model cannot take fails before any decoding
    tc = backbone.temporal_compression
    if kind == "image":
        if Path(path).suffix.lower() in (".mp4", ".webm", ".mov", ".mkv", ".avi", ".ts"):
            raise ValueError(f"picture {Path(path).name!r} is a video: continue it as a clip (--init-video), not a picture")
        frames = read_image(path)
    else:
        keep = None if max_latents is None else (max_latents if tc == 1 else 1 + tc * (max_latents - 1))
        frames = read_clip(path, keep)
        need = 1 + tc
        if len(frames) < need:
            raise ValueError(
                f"clip {Path(path).name!r} has {len(frames)} frame(s): {backbone.name} needs at least {need}"
                " to carry its motion on"
                " (start from a single picture with an image instead)"
            )
    return known_latents(backbone, frames, height, width, max_latents)
