"""Shared helpers for the benchmarks (and the speed / parallel tests).

- `tiny_unet3d(...)`: a `UNet3DBackbone` around a random-weight `UNet3DConditionModel`, a random
  `AutoencoderKL` and a random CLIP text encoder with a word-hashing tokenizer: the real adapter
  code path (per-frame timestep hooks, CFG, VAE decode) with no download. Its outputs are noise;
  only its speed, memory and numerics matter here.
- `Counters`: wraps `backbone.denoise` / `encode_prompt` with timers and counters.
- `PeakRSS`: the process's resident-set high-water mark over a block, by a sampling thread.
- `table(...)`: a Markdown table.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fifo.backbones.base import BackboneDefaults  # noqa: E402
from fifo.backbones.registry import BACKBONES  # noqa: E402

PAPER_S_PER_FRAME = 12.37  # FIFO-Diffusion paper (arXiv 2405.11473): VideoCrafter2 at its defaults, one A6000


def real_models() -> list[str]:
    """The registry's models with weights (every one but the toy world), in registry order."""
    return [n for n, s in BACKBONES.items() if s.model_id is not None]


# -- a tiny random-weight UNet3D backbone ----------------------------------------------------------


class WordTokenizer:
    """Just what `UNet3DBackbone._encode_text` calls: words hashed into a small vocabulary, padded to 77."""

    model_max_length = 77

    def __init__(self, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str, padding=None, max_length=None, truncation=True, return_tensors="pt"):
        n = max_length or self.model_max_length
        ids = [0] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in text.lower().split()][: n - 2] + [1]
        mask = [1] * len(ids) + [0] * (n - len(ids))
        ids = ids + [1] * (n - len(ids))

        class Batch(dict):
            __getattr__ = dict.__getitem__

        return Batch(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]))


def tiny_unet3d(
    frames: int = 8,
    partitions: int = 2,
    lookahead: bool = True,
    eta: float = 0.0,
    guidance_scale: float = 9.0,
    latent: int = 16,
    channels: Sequence[int] = (32, 64),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A `UNet3DBackbone` with random weights: UNet3D `channels`, latent `latent`x`latent`, VAE x2 spatially."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fifo.backbones.unet3d import UNet3DBackbone

    torch.manual_seed(seed)
    ch = tuple(channels)
    unet = UNet3DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * (len(ch) - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (len(ch) - 1),
        block_out_channels=ch,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77)
    )
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # diffusers zero-initialises some output projections: make every path live
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    for m in (unet, vae, text):
        m.eval().requires_grad_(False).to(device)
        if dtype != torch.float32:
            m.to(dtype)
    px = latent * 2
    defaults = BackboneDefaults(frames, partitions, lookahead, eta, guidance_scale, 8, px, px)
    return UNet3DBackbone(unet, vae, text, WordTokenizer(), sched, name="tiny-unet3d", defaults=defaults, device=device)


def full_clip_sample(backbone, prompt: str, num_frames: int, steps: int, seed: int = 0, guidance_scale: float | None = None):
    """diffusers-style sampling: one `num_frames`-frame clip, all frames at one timestep, `steps` DDIM steps.

    The baseline FIFO is compared with (what `TextToVideoSDPipeline` does), on the same backbone;
    returns the decoded uint8 frames (N, H, W, 3).
    """
    from fifo.schedule import make_ladder
    from fifo.solvers import solver_step

    d = backbone.defaults
    gs = d.guidance_scale if guidance_scale is None else guidance_scale
    lh, lw = backbone.latent_size(d.height, d.width)
    lad = make_ladder(backbone.noise_schedule, steps)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cond = backbone.encode_prompt(prompt, "")
        x = torch.randn((1, backbone.latent_channels, num_frames, lh, lw), generator=g).to(backbone.device)
        for i in reversed(range(steps)):
            t = lad.timesteps[i].float().expand(1, num_frames).to(backbone.device)
            out = backbone.denoise(x.to(backbone.dtype), t, cond, gs).float()
            c = [float(v[i]) for v in (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)]
            x = solver_step(x, out, *c, backbone.prediction_type, 0.0)
        return backbone.decoder().decode(x[0])


# -- measuring -------------------------------------------------------------------------------------


class Counters:
    """Times and counts `backbone.denoise` and `backbone.encode_prompt` (instance attributes, undone by `restore`)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.denoise_s = 0.0
        self.denoise_calls = 0
        self.windows = 0  # batch rows handed to denoise (windows; CFG halves are inside the backbone)
        self.encode_calls = 0
        den, enc = backbone.denoise, backbone.encode_prompt
        sync = (lambda: torch.cuda.synchronize()) if getattr(backbone, "device", torch.device("cpu")).type == "cuda" else (lambda: None)

        def denoise(latents, *a, **k):
            sync()
            t = time.perf_counter()
            out = den(latents, *a, **k)
            sync()
            self.denoise_s += time.perf_counter() - t
            self.denoise_calls += 1
            self.windows += latents.shape[0]
            return out

        def encode_prompt(*a, **k):
            self.encode_calls += 1
            return enc(*a, **k)

        backbone.denoise, backbone.encode_prompt = denoise, encode_prompt

    def reset(self) -> None:
        self.denoise_s, self.denoise_calls, self.windows, self.encode_calls = 0.0, 0, 0, 0

    def restore(self) -> None:
        for k in ("denoise", "encode_prompt"):
            self.backbone.__dict__.pop(k, None)


def rss_bytes() -> int:
    """The process's resident set size now."""
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """`with PeakRSS() as p: ...` then `p.peak` (bytes): the highest RSS seen, sampled every `interval` s."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.start = rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def set_threads(n: int | None) -> int:
    """torch intra-op threads (default: leave torch's choice); returns the number in use."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def pick_sections(parser, only: str, allowed: Sequence[str]) -> list[str]:
    """The comma-separated `--only` value as a list; an unknown name is a usage error naming the allowed ones."""
    picked = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in picked if s not in allowed]
    if bad:
        parser.error(f"unknown section(s) {bad}; allowed: {tuple(allowed)}")
    return picked


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def machine() -> str:
    """One line on where the numbers were measured."""
    import platform

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = "load average %.1f / %.1f / %.1f (1 / 5 / 15 min)" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, {gpu}; {load}"


def load_note() -> str:
    """The machine's load right now (other processes share the cores: timings follow it)."""
    return "load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
