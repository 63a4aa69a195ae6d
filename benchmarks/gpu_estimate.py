"""Real-GPU estimate per backbone and preset, without a GPU: calls counted, FLOPs counted, seconds estimated.

    python benchmarks/gpu_estimate.py            # every real registry model, full size, every preset
    python benchmarks/gpu_estimate.py --smoke    # widths / 8, 64x64 px: checks that the script runs

For every registry model with weights (`fifo.BACKBONES`) and every setting (its defaults and the
app's presets, `fifo_app.settings.presets`: paper / quality / fast) it prints:

  calls      denoiser forward passes per emitted frame, COUNTED: the real engine (`FIFOStream`)
             runs a stand-in backbone with the model's latent geometry, schedule and defaults whose
             denoiser only counts (one pass = one window of f latent frames through the network;
             classifier-free guidance runs two, through the adapters' own `guided`)
  FLOPs      of one forward pass of the real denoiser at its default size, of the VAE decode per
             video frame and of the text encoder per prompt, counted by
             `torch.utils.flop_counter.FlopCounterMode` on the full-size model built from the public
             configs in `tests/fixtures/hub/` on the `meta` device (no weights, no memory)
  seconds    per video frame per GPU = FLOPs per frame / (dense bf16 peak x utilisation), the
             utilisation calibrated once so that VideoCrafter2 at the paper's defaults takes the
             FIFO-Diffusion paper's 12.37 s per frame on one A6000: ESTIMATED FROM FLOPs, NOT MEASURED

and, per setting, how many times slower than real time (at the model's frame rate) it runs and how
much video a ZeroGPU visitor's daily quota buys.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fifo  # noqa: E402
from benchmarks.common import PAPER_S_PER_FRAME, machine, real_models, table  # noqa: E402
from fifo import FIFOConfig, FIFOStream  # noqa: E402
from fifo.backbones.base import Backbone, Decoder  # noqa: E402
from fifo.backbones.diffusers_common import DiffusersBackbone  # noqa: E402

PROMPT = "a red ball rolling across a wooden table, studio light"


@dataclass(frozen=True)
class GPU:
    """One GPU: its dense (no sparsity) bf16 / fp16 tensor-core peak and where the figure comes from."""

    name: str
    tflops: float
    source: str


# Dense (no 2:4 sparsity) bf16 tensor-core peaks; vendor sheets print the sparse figure, twice these.
GPUS = (
    GPU(
        "A6000",
        154.8,
        "RTX A6000: 154.8 dense FP16/BF16 tensor, 309.7 with sparsity "
        "(https://llmperf.net/categories/gpu/Nvidia-A6000-GPUs, from NVIDIA's and Microway's figures)",
    ),
    GPU(
        "A100",
        312.0,
        "A100: BF16 matrix 312, 624 with sparsity (https://glennklockwood.com/garden/processors/A100, "
        "from NVIDIA's A100 data sheet)",
    ),
    GPU(
        "H100 SXM", 989.4, "H100 SXM: BF16 matrix 989.4, 1978.9 with sparsity (https://glennklockwood.com/garden/processors/h100)"
    ),
    GPU(
        "H200 (ZeroGPU)",
        989.4,
        "H200: the H100's compute with more memory (same page); ZeroGPU: 'Nvidia H200 slice, "
        "70GB per workload' (https://huggingface.co/docs/hub/spaces-zerogpu), taken as a whole H200's compute",
    ),
    GPU(
        "RTX PRO 6000 (ZeroGPU)",
        503.8,
        "RTX PRO 6000 Blackwell: BF16 tensor 503.8, 1,010 with sparsity "
        "(https://hmc-tech.com/gpu/nvidia-rtx-pro-6000-blackwell-vs-amd-radeon-pro-duo-polaris); the newest "
        "version of the ZeroGPU page names this GPU",
    ),
)
CALIBRATION = ("videocrafter2", "paper", "A6000", PAPER_S_PER_FRAME)  # backbone, setting, GPU, s/frame
ZEROGPU = "H200 (ZeroGPU)"
# Daily ZeroGPU quota per visitor (Hugging Face's ZeroGPU documentation, usage tiers)
QUOTA_S = {"unauthenticated": 120, "free account": 210, "PRO": 1500}
LEASE_S = 120.0  # the app's longest ZeroGPU lease by default (FIFO_MAX_LEASE_S)
NOTE = "estimated from FLOPs, not measured"


# -- the counting stand-in -------------------------------------------------------------------------


class CountingDecoder(Decoder):
    """Frame counts of the model's VAE (a causal one: 1 frame for the first latent, then `tc` each), no pixels."""

    def __init__(self, temporal_compression: int) -> None:
        self.tc, self.first = temporal_compression, True

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        n = latents.shape[1] * self.tc - (self.tc - 1 if self.first and self.tc > 1 else 0)
        self.first = False
        return np.zeros((n, 2, 2, 3), np.uint8)


class CountingBackbone(DiffusersBackbone):
    """A real backbone's geometry, schedule and defaults; its denoiser counts forward passes and returns zeros."""

    def __init__(self, like: Backbone) -> None:
        for k in ("name", "native_frames", "prediction_type", "latent_channels", "temporal_compression",
                  "spatial_compression", "defaults", "noise_schedule"):  # fmt: skip
            setattr(self, k, getattr(like, k))
        self._like = like
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.passes = 0  # windows through the network, each CFG half counted

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return self._like.latent_size(height, width)

    def _encode_text(self, text: str) -> torch.Tensor:
        return torch.zeros(1, 1, 1)

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        self.passes += x.shape[0]
        return torch.zeros_like(x)

    def decoder(self) -> CountingDecoder:
        return CountingDecoder(self.temporal_compression)


def settings_for(name: str) -> dict[str, FIFOConfig]:
    """The backbone's defaults and the app's speed presets, as configs (None fields: the backbone's)."""
    from fifo_app.settings import presets

    out = {"defaults": FIFOConfig()}
    for preset, p in presets(name).items():
        out[preset] = FIFOConfig(partitions=p["partitions"], lookahead=p["lookahead"], frames_per_rung=p["frames_per_rung"])
    return out


def count_calls(
    like: Backbone, config: FIFOConfig, steps: int = 4, height: int | None = None, width: int | None = None
) -> dict[str, Any]:
    """Forward passes counted while the real engine runs `like`'s geometry: before the first frame and per frame after it."""
    bb = CountingBackbone(like)
    d = bb.defaults
    stream = FIFOStream(bb, PROMPT, config, 0, "", height or d.height, width or d.width)
    cfg = stream.config
    it = stream.steps(10**9)
    for st in it:  # warm start and warm-up, up to the first step that pops video
        if st.warm_start:
            after_warm_start = bb.passes  # the warm-start clip and the queue's first step
        if st.frames_emitted:
            break
    first_passes, first_frames = bb.passes, st.frames_emitted
    for _ in range(steps):
        st = next(it)
    it.close()
    frames = st.frames_emitted - first_frames
    latents = steps * cfg.frames_per_rung
    per_step = (bb.passes - first_passes) / steps
    return {
        "config": cfg,
        "warm_start_passes": after_warm_start - per_step,
        "per_step_passes": per_step,
        "first_passes": first_passes,
        "passes_per_latent": (bb.passes - first_passes) / latents,
        "passes_per_frame": (bb.passes - first_passes) / frames,
        "guided": cfg.guidance_scale != 1,
        "temporal_compression": bb.temporal_compression,
    }


def formula_passes_per_frame(config: FIFOConfig, temporal_compression: int) -> float:
    """The closed form the count must agree with: (2n if lookahead else n) / b, x2 with guidance, / video frames per latent."""
    n, b = config.partitions, config.frames_per_rung
    return (2 * n if config.lookahead else n) / b * (2 if config.guidance_scale != 1 else 1) / temporal_compression


# -- FLOPs on the meta device ---------------------------------------------------------------------


def _is_attention(op: Any) -> bool:
    name = str(op)
    return "attention" in name or name in ("aten.bmm", "aten.baddbmm")


def count_flops(fn, *args) -> tuple[float, float]:
    """(total FLOPs, of which attention: SDPA kernels and batched matmuls) of `fn(*args)`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn(*args)
    counts = fc.get_flop_counts().get("Global", {})
    return float(fc.get_total_flops()), float(sum(v for k, v in counts.items() if _is_attention(k)))


def text_flops(bb: Backbone) -> tuple[float, torch.Tensor]:
    """FLOPs of encoding one prompt and its negative (once per prompt), and the embeddings' tensor (1, S, D)."""
    try:
        return count_flops(bb.encode_prompt, PROMPT, "")[0], bb._encode_text(PROMPT)
    except RuntimeError:  # a data-dependent branch (UMT5's padding-mask check) cannot run on meta tensors
        n = getattr(bb, "max_sequence_length", None) or bb.tokenizer.model_max_length
        ids = bb.tokenizer([PROMPT], padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        ids = ids.to(bb.device)  # no mask: the same FLOPs, attention runs over all n positions either way
        with torch.no_grad():
            ctx = bb.text_encoder(ids)[0].to(bb.dtype)
        return 2 * count_flops(bb.text_encoder, ids)[0], ctx


def model_flops(bb: Backbone, height: int | None = None, width: int | None = None) -> dict[str, Any]:
    """FLOPs of one forward pass (one window, batch 1), of the VAE decode per video frame, of the text encoder per prompt."""
    d = bb.defaults
    lh, lw = bb.latent_size(height or d.height, width or d.width)
    text, ctx = text_flops(bb)
    x = torch.zeros(1, bb.latent_channels, bb.native_frames, lh, lw, device=bb.device, dtype=bb.dtype)  # (B, C, F, h, w)
    t = torch.full((1, bb.native_frames), 500.0, device=bb.device)  # (B, F)
    fwd, attn = count_flops(bb._model, x, t, ctx)
    dec = bb.decoder()
    decode = None
    if hasattr(dec, "decode_float"):
        z = torch.zeros(bb.latent_channels, 1, lh, lw, device=bb.device)
        dec.decode_float(z)  # a causal VAE's first latent gives 1 frame; the steady ones give tc
        decode = count_flops(dec.decode_float, z)[0] / bb.temporal_compression
    return {"forward": fwd, "attention": attn, "decode_per_frame": decode, "text_per_prompt": text,
            "window": (bb.latent_channels, bb.native_frames, lh, lw)}  # fmt: skip


def build_meta(name: str, k: int = 1) -> Backbone:
    """Registry model `name` from its fixture configs on the meta device: full size at k = 1, no memory."""
    import hub_cache

    return hub_cache.build_backbone(name, k=k, device="meta", dtype=torch.bfloat16)


# -- the estimate ---------------------------------------------------------------------------------


def frame_flops(calls: dict[str, Any], flops: dict[str, Any]) -> float:
    """FLOPs per video frame: the counted passes times one forward, plus the VAE decode."""
    return calls["passes_per_frame"] * flops["forward"] + (flops["decode_per_frame"] or 0.0)


def utilisation(flops_per_frame: float, gpu: GPU, seconds_per_frame: float) -> float:
    """The share of `gpu`'s peak that makes `flops_per_frame` take `seconds_per_frame`."""
    return flops_per_frame / (gpu.tflops * 1e12 * seconds_per_frame)


def seconds(flops: float, gpu: GPU, util: float) -> float:
    """Seconds for `flops` on `gpu` at `util` of its peak."""
    return flops / (gpu.tflops * 1e12 * util)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 10 ** (digits - 1) else f"{x:,.0f}"


def _setting_text(cfg: FIFOConfig) -> str:
    la = ", LA" if cfg.lookahead else ""
    return f"f={cfg.frames_per_window} n={cfg.partitions} b={cfg.frames_per_rung}{la}"


def measure(names: list[str], k: int, steps: int, size: tuple[int, int] | None) -> tuple[dict, dict, dict]:
    """Per model: its counted calls per setting, its FLOPs, or the reason it could not be built."""
    calls, flops, skipped = {}, {}, {}
    for name in names:
        try:
            bb = build_meta(name, k)
        except Exception as e:  # a registry entry without fixture configs or a class the builder does not know
            skipped[name] = f"not built from tests/fixtures/hub: {type(e).__name__}: {str(e)[:120]}"
            continue
        h, w = size or (None, None)
        flops[name] = model_flops(bb, h, w)
        calls[name] = {s: count_calls(bb, cfg, steps, h, w) for s, cfg in settings_for(name).items()}
        print(f"{name}: {flops[name]['forward'] / 1e12:.4g} TFLOP per forward", file=sys.stderr)
    return calls, flops, skipped


def fits_lease(before_first_s: float, per_frame_s: float) -> str:
    """'yes', or 'no' where the app's own lease planner refuses: the warm start and warm-up must fit one lease."""
    from fifo_app.estimate import plan_leases

    try:
        plan_leases(before_first_s + 100 * per_frame_s, before_first_s, LEASE_S)
    except ValueError:
        return "no"
    return "yes"


def main(argv: list[str] | None = None) -> int:
    """Count, estimate and print the tables (Markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="widths / 8, 64x64 px: checks that the script runs (figures meaningless)")
    p.add_argument("--models", default=",".join(real_models()), help="comma-separated registry names (default: every real model)")
    p.add_argument("--steps", type=int, default=4, help="queue steps counted after the first frame (default 4)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in real_models()]
    if bad:
        p.error(f"--models {','.join(bad)}: allowed are {','.join(real_models())}")
    if args.steps < 1:
        p.error(f"--steps {args.steps}: must be >= 1")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    k, size = (8, (64, 64)) if args.smoke else (1, None)
    calls, flops, skipped = measure(models, k, args.steps, size)
    what = "smoke: widths / 8, 64x64 px" if args.smoke else "full size, default resolutions"
    print(f"# GPU estimate ({what}); counted on {machine()}\n")

    rows = []
    for name, per in calls.items():
        for s, c in per.items():
            cfg = c["config"]
            rows.append([name, s, _setting_text(cfg), "yes" if c["guided"] else "no", _fmt(c["passes_per_latent"]),
                         _fmt(c["passes_per_frame"]), _fmt(formula_passes_per_frame(cfg, c["temporal_compression"])),
                         c["first_passes"]])  # fmt: skip
    print("## Forward passes per frame, counted by running the engine\n")
    print(table(["backbone", "setting", "f, n, b, lookahead", "CFG", "passes / latent frame", "passes / video frame",
                 "formula", "passes before the first frame"], rows))  # fmt: skip
    for name, why in skipped.items():
        print(f"\n{name}: skipped, {why}")

    print("\n## FLOPs, counted with FlopCounterMode on the meta device\n")
    rows = []
    for name, f in flops.items():
        c, fr, h, w = f["window"]
        rows.append([name, f"{c}x{fr}x{h}x{w}", _fmt(f["forward"] / 1e12, 4), f"{100 * f['attention'] / f['forward']:.0f}%",
                     _fmt(None if f["decode_per_frame"] is None else f["decode_per_frame"] / 1e12, 3),
                     _fmt(f["text_per_prompt"] / 1e12, 3)])  # fmt: skip
    print(table(["backbone", "window (C x F x h x w)", "TFLOP / forward", "of it attention", "VAE decode TFLOP / video frame",
                 "text encoder TFLOP / prompt"], rows))  # fmt: skip

    cal_name, cal_setting, cal_gpu, cal_s = CALIBRATION
    gpus = {g.name: g for g in GPUS}
    if cal_name not in calls:
        print(f"\n{cal_name} not measured: no calibration, no seconds (run with it in --models).")
        return 0
    cal_flops = frame_flops(calls[cal_name][cal_setting], flops[cal_name])
    util = utilisation(cal_flops, gpus[cal_gpu], cal_s)
    print(f"\n## Calibration\n\n{cal_name}, {cal_setting} setting: {cal_flops / 1e12:.4g} TFLOP per frame; the paper's "
          f"{cal_s} s per frame on one {cal_gpu} ({gpus[cal_gpu].tflops} TFLOP/s dense bf16) is {100 * util:.3g}% of its peak, "
          f"the utilisation used for every estimate below.")  # fmt: skip

    print(f"\n## Seconds per video frame ({NOTE})\n")
    rows, quota_rows = [], []
    zg = gpus[ZEROGPU]
    for name, per in calls.items():
        fps = fifo.BACKBONES[name].defaults.fps
        for s, c in per.items():
            ff = frame_flops(c, flops[name])
            per_gpu = [seconds(ff, g, util) for g in GPUS]
            a6000 = seconds(ff, gpus[cal_gpu], util)
            rows.append([name, s, *[_fmt(x) for x in per_gpu], _fmt(a6000 / cal_s), _fmt(seconds(ff, zg, util) * fps)])
            first = seconds(c["first_passes"] * flops[name]["forward"] + flops[name]["text_per_prompt"], zg, util)
            per_frame = seconds(ff, zg, util)
            bought = [math.floor(max(0.0, q - first) / per_frame) for q in QUOTA_S.values()]
            warm = seconds(c["warm_start_passes"] * flops[name]["forward"], zg, util)
            before = seconds((c["first_passes"] - c["per_step_passes"]) * flops[name]["forward"], zg, util)
            quota_rows.append([name, s, _fmt(warm), _fmt(first), fits_lease(before, per_frame),
                               *[f"{n:,} ({_fmt(n / fps)} s)" for n in bought]])  # fmt: skip
    print(table(["backbone", "setting", *[f"{g.name} s/frame" for g in GPUS], f"x paper ({cal_s} s, A6000)",
                 f"x slower than real time, {ZEROGPU}"], rows))  # fmt: skip
    print(f"\n## A ZeroGPU visitor's daily quota on the {ZEROGPU} ({NOTE})\n")
    quotas = [f"{q}, {v / 60:g} min: frames (video)" for q, v in QUOTA_S.items()]
    print(table(["backbone", "setting", "warm start s", "s to the first frame", f"fits a {LEASE_S:g}-s lease", *quotas],
                quota_rows))  # fmt: skip
    print("\nPeaks, dense bf16 tensor TFLOP/s:\n")
    print("\n".join(f"- {g.name}: {g.tflops:g}. {g.source}" for g in GPUS))
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
