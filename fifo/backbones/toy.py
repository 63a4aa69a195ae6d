"""The built-in toy world: one sprite bouncing in a box, denoised Bayes-optimally in closed form.

No weights, no GPU: the app, the tests and the quality benchmark run offline on a CPU, and "does
FIFO keep the motion consistent for 1,000 frames when the model only knows 16" becomes a number.

The world. One sprite (a ball or a square, about `SPRITE` x `SPRITE` latent pixels) of one colour
on a dark background moves at a constant speed (slow/normal/fast = 1/2/3 latent px per frame) and
bounces off the frame edges (a bounce reverses the velocity on that axis). Its top-left corner is an
integer position in `[0, w - SPRITE] x [0, h - SPRITE]`, so the sprite is always fully inside.

The clip set. For `f` frames and an axis of range `R` and speed `v > 0`, phases `u` in `[0, 2R)`
give the positions `tri((u + j v) mod 2R)`, `tri(p) = p if p <= R else 2R - p`: the bouncing path,
each phase once (no two phases give the same clip for `f >= 2`). With `v = 0` on an axis the
position is any constant in `[0, R]`. The clips are the product of the x- and y-states, the prior
uniform over them. Since `tri(-p) = tri(p)`, the prompt's direction sets the *axis* of motion
(horizontal, vertical or a diagonal) and its speed; through bounces both ways along that axis are
true motion ("moving right" and "moving left" are the same world), and which way the sprite
starts is drawn by the sampling, like its position.

The denoiser. With `x_j = a_j x0_j + s_j eps` per frame (`a_j^2` = alpha-bar of the frame's own
timestep), `log p(clip | x) = sum_j (a_j / s_j^2) <x_j, D at pos_clip(j)> + const`, where `D` is
the sprite's difference from the background (the other terms are the same for every clip because
the sprite is always fully inside). So one cross-correlation of every frame with `D` gives every
frame's log-likelihood map; a clip's log-posterior is a gather-and-sum over its positions; the
posterior mean scatters the clip weights back onto position maps and convolves them with `D`.
Classifier-free guidance and negative prompts do nothing in this world (there is no
unconditional model to contrast with).

Latent space: 3 RGB-like channels in [-1, 1], 4x smaller than the video per side; the decoder
clamps, upsamples bilinearly and quantises; it has no state. The palette sits on whole 8-bit levels.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..schedule import NoiseSchedule
from .base import Backbone, Decoder
from .registry import BACKBONES

SPRITE = 8  # sprite side, latent px
MIN_SIZE, MAX_SIZE, COMPRESSION = 64, 512, 4  # pixel sides allowed; pixels per latent px

# The palette in 8-bit levels; a latent value is level / 127.5 - 1. Whole levels keep every flat
# area off the decoder's rounding boundaries (x.5), and so do a square's edges: upsampling blends
# background and colour with weights k/8 (k odd) and corners with m/64 (m odd), so no channel's
# colour - background is 4 mod 8 or 32 mod 64. A one-ulp difference between two equally good
# computations of a clean frame then flips no pixel (the disc's anti-aliased rim still can, rarely).
BACKGROUND_LEVEL = 26  # every channel
RGB: dict[str, tuple[int, int, int]] = {
    "red": (242, 39, 39),
    "green": (39, 229, 39),
    "blue": (51, 77, 242),
    "yellow": (242, 229, 39),
    "white": (242, 242, 242),
    "cyan": (39, 229, 242),
    "magenta": (242, 39, 242),
    "orange": (242, 153, 26),
    "purple": (165, 51, 229),
}
BACKGROUND = BACKGROUND_LEVEL / 127.5 - 1  # -0.796...
COLOURS: dict[str, tuple[float, float, float]] = {k: tuple(v / 127.5 - 1 for v in rgb) for k, rgb in RGB.items()}  # type: ignore[misc]
SHAPES = {"ball": "ball", "circle": "ball", "disc": "ball", "disk": "ball", "dot": "ball",
          "square": "square", "block": "square", "box": "square", "cube": "square"}  # fmt: skip
SPEEDS = {"slow": "slow", "slowly": "slow", "normal": "normal", "medium": "normal",
          "fast": "fast", "quick": "fast", "quickly": "fast"}  # fmt: skip
SPEED_PX = {"slow": 1, "normal": 2, "fast": 3}
# (dx, dy) per direction word; y grows downwards, as in images
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIRECTIONS.update({w + s: v for w, v in list(DIRECTIONS.items()) for s in ("ward", "wards")})
COMPOUNDS = {"upleft": ("up", "left"), "upright": ("up", "right"), "downleft": ("down", "left"), "downright": ("down", "right")}
FILLER = frozenset(
    "a an the it its this that which is are moving moves move going goes go bouncing bounces bounce "
    "sprite towards toward to and in on of at with across around along diagonally very speed "
    "travelling traveling travels rolling rolls sliding slides flying flies off edges walls "
    "dark background screen frame".split()
)


@dataclass(frozen=True)
class ToyWorld:
    """One prompt's world: the sprite's shape and colour, its velocity (latent px/frame, y down) and speed word."""

    shape: str = "ball"
    colour: str = "white"
    vx: int = 2
    vy: int = 0
    speed: str = "normal"

    def __post_init__(self) -> None:
        v = SPEED_PX.get(self.speed)
        if self.shape not in ("ball", "square") or self.colour not in COLOURS or v is None or {abs(self.vx), abs(self.vy)} - {0, v}:
            raise ValueError(f"{self}: shape ball|square, colour in {list(COLOURS)}, speed in {list(SPEED_PX)}, |vx|, |vy| in (0, speed)")


def vocabulary() -> str:
    """The words prompts may use, for error messages and help texts."""
    dirs = sorted(DIRECTIONS) + ["up-left", "up-right", "down-left", "down-right"]
    return (
        f"shapes: {', '.join(SHAPES)}; colours: {', '.join(COLOURS)}; speeds: {', '.join(SPEEDS)}; "
        f"directions: {', '.join(dirs)} (also as two words, or one: upleft); filler: {', '.join(sorted(FILLER))}"
    )


def parse_prompt(prompt: str) -> ToyWorld:
    """Parse plain English ("a yellow square moving down-left fast") into a ToyWorld; ValueError on unknown words."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt={prompt!r}: must be a string")
    words = re.findall(r"[a-z0-9]+", prompt.lower().replace("'", ""))
    found: dict[str, set[str]] = {"shape": set(), "colour": set(), "speed": set(), "x": set(), "y": set()}
    unknown = []
    for word in words:
        for w in COMPOUNDS.get(word, (word,)):
            if w in SHAPES:
                found["shape"].add(SHAPES[w])
            elif w in COLOURS:
                found["colour"].add(w)
            elif w in SPEEDS:
                found["speed"].add(SPEEDS[w])
            elif w in DIRECTIONS:
                dx, dy = DIRECTIONS[w]
                found["x" if dx else "y"].add(w.removesuffix("wards").removesuffix("ward"))
            elif w not in FILLER:
                unknown.append(w)
    if unknown:
        raise ValueError(f"unknown word(s) {', '.join(map(repr, dict.fromkeys(unknown)))} in prompt {prompt!r}; allowed: {vocabulary()}")
    for part, got in found.items():
        if len(got) > 1:
            what = {"x": "horizontal direction", "y": "vertical direction"}.get(part, part)
            raise ValueError(f"prompt {prompt!r} names more than one {what}: {sorted(got)}")
    if not found["x"] and not found["y"]:
        found["x"] = {"right"}
    speed = next(iter(found["speed"]), "normal")
    v = SPEED_PX[speed]
    vx = DIRECTIONS[next(iter(found["x"]))][0] * v if found["x"] else 0
    vy = DIRECTIONS[next(iter(found["y"]))][1] * v if found["y"] else 0
    return ToyWorld(next(iter(found["shape"]), "ball"), next(iter(found["colour"]), "white"), vx, vy, speed)


# -- the world's geometry ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _alpha(shape: str) -> torch.Tensor:
    """Sprite coverage (SPRITE, SPRITE) in [0, 1]; the disc anti-aliased by 16x16 supersampling."""
    if shape == "square":
        return torch.ones(SPRITE, SPRITE, dtype=torch.float64)
    k = 16
    c = (torch.arange(SPRITE * k, dtype=torch.float64) + 0.5) / k - SPRITE / 2
    inside = (c[:, None] ** 2 + c[None, :] ** 2 <= (SPRITE / 2) ** 2).double()
    return inside.view(SPRITE, k, SPRITE, k).mean(dim=(1, 3))


def sprite_delta(world: ToyWorld) -> torch.Tensor:
    """The sprite minus the background, (3, SPRITE, SPRITE) float64: what a clip adds to an empty frame."""
    return _alpha(world.shape)[None] * _colour(world)[:, None, None]


def _axis_states(v: int, R: int, frames: int) -> torch.Tensor:
    """Positions (states, frames) along one axis of range R: every phase of the bouncing path."""
    j = torch.arange(frames)
    if v == 0:
        return torch.arange(R + 1)[:, None].expand(R + 1, frames)
    p = (torch.arange(2 * R)[:, None] + j[None] * abs(v)) % (2 * R)
    return torch.where(p <= R, p, 2 * R - p)


@functools.lru_cache(maxsize=64)
def _positions(avx: int, avy: int, frames: int, lh: int, lw: int) -> torch.Tensor:
    ys, xs = _axis_states(avy, lh - SPRITE, frames), _axis_states(avx, lw - SPRITE, frames)
    pos = torch.stack(torch.broadcast_tensors(ys[:, None], xs[None, :]), dim=-1).reshape(-1, frames, 2)
    # for f >= 2 every phase is a distinct clip; one frame cannot tell phase u from 2R - u
    return pos.unique(dim=0) if frames == 1 else pos


def clip_positions(world: ToyWorld, frames: int, lh: int, lw: int) -> torch.Tensor:
    """Every true clip of `frames` frames in an (lh, lw) latent: top-left (y, x) per frame, (N, frames, 2) long."""
    if lh < SPRITE or lw < SPRITE or frames < 1:
        raise ValueError(f"latent {lh}x{lw} with {frames} frames: need frames >= 1 and sides >= {SPRITE}")
    return _positions(abs(world.vx), abs(world.vy), frames, lh, lw).clone()  # the cached one stays intact


def render_clip(world: ToyWorld, positions: torch.Tensor, lh: int, lw: int) -> torch.Tensor:
    """The clean latent clip (3, F, lh, lw) float64 with the sprite's top-left at positions (F, 2) (y, x)."""
    out = torch.full((3, len(positions), lh, lw), BACKGROUND, dtype=torch.float64)
    d = sprite_delta(world)
    for j, (y, x) in enumerate(positions.tolist()):
        out[:, j, y : y + SPRITE, x : x + SPRITE] += d
    return out


def locate_sprite(world: ToyWorld, latents: torch.Tensor) -> torch.Tensor:
    """Best-matching top-left (y, x) of the sprite in each frame of latents (3, F, lh, lw), (F, 2) long."""
    _, f, lh, lw = latents.shape
    y = torch.einsum("c,cfhw->fhw", _colour(world).to(latents.device), latents.detach().double())
    corr = _correlate(y, _spectrum(world.shape, lh, lw).to(latents.device))[:, : lh - SPRITE + 1, : lw - SPRITE + 1]
    best = corr.flatten(1).argmax(dim=1)
    return torch.stack([best // (lw - SPRITE + 1), best % (lw - SPRITE + 1)], dim=1).cpu()


def _colour(world: ToyWorld) -> torch.Tensor:
    """The sprite's colour minus the background, (3,) float64: D = colour x alpha."""
    return torch.tensor(COLOURS[world.colour], dtype=torch.float64) - BACKGROUND


def _spectrum(shape: str, lh: int, lw: int) -> torch.Tensor:
    """rfft2 of the sprite's coverage padded to (lh, lw)."""
    return torch.fft.rfft2(F.pad(_alpha(shape), (0, lw - SPRITE, 0, lh - SPRITE)))


def _correlate(y: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """(y correlated with the sprite)(p) for every top-left p, (..., lh, lw); by FFT, circular, but a
    sprite fully inside never wraps, so positions in [0, lh - SPRITE] x [0, lw - SPRITE] are exact.
    Far faster on a CPU than conv2d, whose one-output-channel 8x8 kernel it runs slowly."""
    return torch.fft.irfft2(torch.fft.rfft2(y) * spectrum.conj(), s=y.shape[-2:])


# -- decoding ----------------------------------------------------------------------------------


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(F, C, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@functools.lru_cache(maxsize=16)
def _upsample_matrix(n: int, device: torch.device) -> torch.Tensor:
    """(4n, n) float32: bilinear 4x upsampling along one axis, as F.interpolate(align_corners=False) does it."""
    src = ((torch.arange(COMPRESSION * n, dtype=torch.float64) + 0.5) / COMPRESSION - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    frac = src - i0
    m = torch.zeros(COMPRESSION * n, n, dtype=torch.float64)
    rows = torch.arange(COMPRESSION * n)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.float().to(device)


class ToyDecoder(Decoder):
    """Latent (3, F, h, w) -> clamp to [-1, 1] -> bilinear 4x upsample -> uint8 (F, 4h, 4w, 3); stateless."""

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents (3, F, h, w) into uint8 frames (F, 4h, 4w, 3)."""
        x = latents.detach().float().clamp(-1, 1).add_(1).mul_(127.5).transpose(0, 1)  # (F, C, h, w) in 8-bit levels
        # the bilinear upsampling is separable: two small matmuls, ~3x faster on a CPU than F.interpolate
        up = _upsample_matrix(x.shape[-2], x.device) @ x @ _upsample_matrix(x.shape[-1], x.device).T  # (F, C, 4h, 4w)
        return up.permute(0, 2, 3, 1).round().to(torch.uint8).cpu().numpy()


# -- the backbone ------------------------------------------------------------------------------


class ToyBackbone(Backbone):
    """The toy world's Bayes-optimal denoiser (epsilon prediction, scaled-linear vp schedule, T = 1000).

    `shared_level=True` mimics a model trained only on clips whose frames share one noise level: it
    treats every frame of a window as sitting at the window's mean alpha-bar, in the posterior and
    when turning its clean estimate into the noise prediction. `guidance_scale` and negative prompts
    do nothing here: the world has no unconditional model to contrast with.
    """

    name = "toy"
    native_frames = 16
    prediction_type = "epsilon"
    latent_channels = 3
    temporal_compression = 1
    spatial_compression = COMPRESSION

    def __init__(self, height: int = 128, width: int = 128, shared_level: bool = False, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.latent_size(height, width)
        self.defaults = dataclasses.replace(BACKBONES["toy"].defaults, height=height, width=width)
        self.shared_level = bool(shared_level)
        self.device, self.dtype = torch.device(device), dtype
        self.noise_schedule = NoiseSchedule.scaled_linear()
        self._alphas_cumprod = torch.tensor(self.noise_schedule.alphas_cumprod, dtype=torch.float64, device=self.device)
        self._cache: dict[Any, Any] = {}

    @classmethod
    def from_pretrained(cls, model_id: str | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **kw) -> "ToyBackbone":
        """Registry entry point: there are no weights, so `model_id` is ignored."""
        return cls(device=device or "cpu", dtype=dtype or torch.float32, **kw)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) = pixel size / 4; each side a multiple of 4 in [64, 512], else ValueError."""
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not MIN_SIZE <= v <= MAX_SIZE or v % COMPRESSION:
                raise ValueError(f"{name}={v!r}: the toy world takes multiples of {COMPRESSION} from {MIN_SIZE} to {MAX_SIZE}")
        return int(height) // COMPRESSION, int(width) // COMPRESSION

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> ToyWorld:
        """Parse the prompt into its world (ValueError on unknown words); the negative prompt does nothing here."""
        return parse_prompt(prompt)

    def decoder(self) -> ToyDecoder:
        """A decoder; it has no state, so any instance will do."""
        return ToyDecoder()

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) at this model's size -> latents (3, N, h, w): the decoder's fixed left inverse."""
        from .encoders import check_frames

        x = torch.from_numpy(np.array(check_frames(self, frames))).to(self.device, torch.float64)
        x = x.permute(0, 3, 1, 2)  # (N, 3, H, W) in 8-bit levels
        down_h = torch.linalg.pinv(_upsample_matrix(x.shape[-2] // COMPRESSION, self.device).double())
        down_w = torch.linalg.pinv(_upsample_matrix(x.shape[-1] // COMPRESSION, self.device).double())
        z = (down_h @ x @ down_w.T) / 127.5 - 1  # least squares: decode(encode(decode(z))) == decode(z) up to rounding
        return z.clamp(-1, 1).transpose(0, 1).float()  # (3, N, h, w)

    def preview(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (3, F, h, w) shown at latent resolution with the decoder's fixed colour map, uint8 (F, h, w, 3)."""
        return _to_uint8(latents.detach().float().transpose(0, 1))

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Any | Sequence[Any], guidance_scale: float = 1.0) -> torch.Tensor:
        """The exact noise prediction for latents (B, 3, F, h, w) at per-frame timesteps (B, F); guidance does nothing here."""
        with torch.no_grad():
            x, ab = self._inputs(latents, timesteps)
            x0 = self._posterior_mean(x, ab, cond)
            a, s = (v.to(x.dtype)[:, None, :, None, None] for v in (ab.sqrt(), (1 - ab).sqrt()))
            return torch.addcmul(x, x0, a, value=-1).div_(s).to(latents.dtype)  # (x - a x0) / s

    def posterior_mean(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Any | Sequence[Any]) -> torch.Tensor:
        """E[clean window | latents] (B, 3, F, h, w), in the latents' dtype: what `denoise` predicts, as x0."""
        with torch.no_grad():
            return self._posterior_mean(*self._inputs(latents, timesteps), cond).to(latents.dtype)

    # -- internals ---------------------------------------------------------------------------

    def _inputs(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents in float32 or float64 (never a copy when already so) and each frame's alpha-bar (B, F) as the model sees it."""
        if latents.dim() != 5 or latents.shape[1] != 3 or min(latents.shape[-2:]) < SPRITE:
            raise ValueError(f"latents of shape {tuple(latents.shape)}: expected (B, 3, F, h, w) with h, w >= {SPRITE}")
        B, _, f = latents.shape[:3]
        t = torch.as_tensor(timesteps, device=latents.device).round().long().expand(B, f)
        T = self.noise_schedule.num_train_timesteps
        if t.min() < 0 or t.max() >= T:
            raise ValueError(f"timesteps in [{t.min().item()}, {t.max().item()}]: must be in [0, {T - 1}]")
        ab = self._alphas_cumprod.to(latents.device)[t]
        if self.shared_level:
            ab = ab.mean(dim=1, keepdim=True).expand(B, f)
        return (latents if latents.dtype in (torch.float32, torch.float64) else latents.float()), ab

    def _posterior_mean(self, x: torch.Tensor, ab: torch.Tensor, cond: Any | Sequence[Any]) -> torch.Tensor:
        """Group the batch rows by world (one call for the common single-prompt case)."""
        B = x.shape[0]
        conds = [cond] * B if isinstance(cond, (ToyWorld, str)) else list(cond)
        if len(conds) != B:
            raise ValueError(f"{len(conds)} conditionings for a batch of {B}: give one, or one per window")
        worlds = [c if isinstance(c, ToyWorld) else parse_prompt(c) for c in conds]
        groups: dict[ToyWorld, list[int]] = {}
        for b, w in enumerate(worlds):
            groups.setdefault(w, []).append(b)
        if len(groups) == 1:
            return self._world_mean(x, ab, worlds[0])
        out = torch.empty_like(x)
        for w, rows in groups.items():
            idx = torch.tensor(rows, device=x.device)
            out[idx] = self._world_mean(x[idx], ab[idx], w)
        return out

    def _tables(self, world: ToyWorld, f: int, lh: int, lw: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Cached per (world, f, size): the clip index table as sparse gather/scatter matrices, the colour, the sprite's spectrum."""
        key = (world.shape, world.colour, abs(world.vx), abs(world.vy), f, lh, lw, device)
        if key not in self._cache:
            if len(self._cache) >= 32:  # a 512x512 world's tables take ~30 MB: keep the newest few
                self._cache.pop(next(iter(self._cache)))
            pos = clip_positions(world, f, lh, lw)  # (N, f, 2): the index table
            flat = ((torch.arange(f) * lh + pos[..., 0]) * lw + pos[..., 1]).reshape(-1)  # into (f, lh, lw)
            clip = torch.arange(len(pos)).repeat_interleave(f)
            # G[c, k] = 1 where clip c sits at flat position k: G @ maps gathers and sums a clip's frames,
            # G^T @ weights scatters them back; one CSR product is several times faster than index_select
            # + sum or index_add_ on a CPU
            ones = torch.ones(len(flat), dtype=torch.float64)
            size = f * lh * lw
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore")
                gather = torch.sparse_coo_tensor(torch.stack([clip, flat]), ones, (len(pos), size)).to_sparse_csr()
                scatter = torch.sparse_coo_tensor(torch.stack([flat, clip]), ones, (size, len(pos))).coalesce().to_sparse_csr()
            self._cache[key] = tuple(v.to(device) for v in (gather, scatter, _colour(world), _spectrum(world.shape, lh, lw)))
        return self._cache[key]

    def _world_mean(self, x: torch.Tensor, ab: torch.Tensor, world: ToyWorld) -> torch.Tensor:
        """Posterior mean (x's dtype) of the clean window over the world's clip set; x (B, 3, F, h, w), ab (B, F) float64."""
        B, C, f, lh, lw = x.shape
        gather, scatter, colour, A = self._tables(world, f, lh, lw, x.device)
        # D = colour x alpha, so <x_j, D at p> = (alpha correlated with the colour-projected frame)(p).
        # float64 from here: near t = 0 the logits reach ~1e5 and must not round.
        y = torch.matmul(colour.to(x.dtype), x.reshape(B, C, -1)).double().view(B, f, lh, lw)
        corr = _correlate(y, A) * (ab.sqrt() / (1 - ab))[..., None, None]  # each frame's evidence weighs a/s^2
        p = torch.softmax(gather @ corr.view(B, -1).t(), dim=0)  # (N, B): the posterior over clips
        # each frame's posterior over sprite positions, then the expected sprite placed there
        wmap = (scatter @ p).t().reshape(B, f, lh, lw)
        m = torch.fft.irfft2(torch.fft.rfft2(wmap) * A, s=(lh, lw)).to(x.dtype)  # expected coverage
        return torch.addcmul(torch.full((), BACKGROUND, dtype=x.dtype, device=x.device), m[:, None], colour.to(x.dtype).view(1, C, 1, 1, 1))
