"""GPU benchmark: every registry model at full real width, random weights, as a user runs it.

    python benchmarks/gpu.py                 # CUDA, bf16, the five real models at their defaults
    python benchmarks/gpu.py --models videocrafter2 --variants default,compile
    python benchmarks/gpu.py --smoke         # CPU, fp32, widths / 8, 64x64, f = 4 (distilled: its steps): checks the script

Each model is built from the public configs in `tests/fixtures/hub/` (no download: random weights,
initialised directly on the device) and run through `FIFOStream` at the registry's default size
and settings (f, n, lookahead, guidance, shift, fps). Per model and variant it prints:

  s/frame      steady seconds per emitted video frame (after the first frame)
  first s      seconds from the stream's start to its first frame (warm start and warm-up included)
  calls/frame  denoiser forward calls per emitted video frame
  forward %    share of the steady wall time inside the denoiser's forward calls
  peak GB      peak allocated memory over a short run and over a four times longer one (flat
               memory: the two agree)

Variants: `default` (diffusers' own attention processors: SDPA on torch 2), `channels_last`
(UNets: 4-D weights NHWC), `compile` (`torch.compile` of the denoiser; the first calls compile).
Beside the table: the FLOP-based estimate of s/frame (FLOPs of one step counted with
`torch.utils.flop_counter` on the real model, at an assumed share of the GPU's peak) and the
FIFO-Diffusion paper's 12.37 s per frame (VideoCrafter2 on one A6000).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from benchmarks.common import PAPER_S_PER_FRAME, Counters, machine, real_models, table  # noqa: E402
from fifo import FIFOConfig, FIFOStream  # noqa: E402
from fifo.parallel import apply_gpu_options  # noqa: E402

PROMPT = "a red ball rolling across a wooden table, studio light"
VARIANTS = ("default", "channels_last", "compile")
# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A6000": 154.8, "L40S": 362.0, "4090": 165.2}


def peak_for(device: torch.device) -> tuple[str, float | None]:
    """(GPU name, its dense bf16 peak in TFLOP/s if known)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return name, tf
    return name, None


def step_flops(bb, stream: FIFOStream) -> float:
    """FLOPs of one steady step's denoiser calls, counted on the real model."""
    from torch.utils.flop_counter import FlopCounterMode

    it = stream.frames(10**9)
    next(it)
    with FlopCounterMode(display=False) as fc:
        next(it)
    return float(fc.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def smoke_config(bb) -> FIFOConfig:
    """The smoke run's layout: f = 4, n = 1, no lookahead; a step-distilled model's own step count as f."""
    f = 4 if bb.distilled is None else bb.distilled.steps
    return FIFOConfig(frames_per_window=f, partitions=1, lookahead=False, frames_per_rung=1)


def run_one(name: str, variant: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Build `name`, apply `variant`, stream, and measure."""
    import hub_cache

    t = time.perf_counter()
    bb = hub_cache.build_backbone(name, k=8 if args.smoke else 1, device=device, dtype=dtype)
    _sync(device)
    build_s = time.perf_counter() - t
    is_unet = hasattr(bb, "unet")
    if variant == "channels_last" and not is_unet:
        return {"skip": "no 2-D convolutions in the denoiser"}
    apply_gpu_options(bb, channels_last=variant == "channels_last", compile=variant == "compile")
    d = bb.defaults
    h, w = (64, 64) if args.smoke else (d.height, d.width)
    cfg = smoke_config(bb) if args.smoke else FIFOConfig()
    tc = bb.temporal_compression
    counters = Counters(bb)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = FIFOStream(bb, PROMPT, cfg, 0, "", h, w)
    frames = stream.frames(10**9)
    t = time.perf_counter()
    next(frames)
    _sync(device)
    first_s = time.perf_counter() - t
    # steady state: whole steps (a step pops one latent frame: tc video frames, 1 for the first)
    counters.reset()
    short, long = args.steps, 4 * args.steps
    emitted, t = 0, time.perf_counter()
    peaks = []
    for i in range(long * tc):
        next(frames)
        emitted += 1
        if emitted == short * tc:
            _sync(device)
            peaks.append(_peak_gb(device))
            steady = time.perf_counter() - t, counters.denoise_s, counters.denoise_calls, emitted
    _sync(device)
    peaks.append(_peak_gb(device))
    wall, fwd, calls = steady[0], steady[1], steady[2]
    out = {
        "build s": build_s,
        "s/frame": wall / steady[3],
        "first s": first_s,
        "calls/frame": calls / steady[3],
        "forward %": 100 * fwd / wall,
        "peak GB": peaks,
        "frames": f"{steady[3]} / {emitted}",
        "size": f"{w}x{h}, f={stream.config.frames_per_window}, n={stream.config.partitions}",
    }
    if variant == "default":
        est = FIFOStream(bb, PROMPT, cfg, 0, "", h, w)
        out["flops/frame"] = step_flops(bb, est) / tc
    del bb, stream, frames, counters
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints Markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, fp32, widths / 8, 64x64, f=4, n=1: checks that the script runs")
    p.add_argument("--models", default=",".join(real_models()), help="comma-separated registry names")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} (default: all; smoke: default)")
    p.add_argument("--steps", type=int, default=None, help="steady steps of the short run (the long one is 4x; default 4, smoke 1)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed share of the GPU's peak for the FLOP-based estimate")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in real_models()]
    if bad:
        p.error(f"--models {','.join(bad)}: allowed are {','.join(real_models())}")
    variants = (args.variants or ("default" if args.smoke else ",".join(VARIANTS))).split(",")
    if any(v not in VARIANTS for v in variants):
        p.error(f"--variants {args.variants}: allowed are {','.join(VARIANTS)}")
    args.steps = args.steps or (1 if args.smoke else 4)
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run with --smoke on a CPU", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
    gpu, peak = peak_for(device)
    print(f"# {'smoke (CPU, widths / 8)' if args.smoke else 'full width, bf16'} on {gpu}; {machine()}\n")
    rows, est_rows = [], []
    t0 = time.perf_counter()
    for name in models:
        for variant in variants:
            r = run_one(name, variant, args, device, dtype)
            if "skip" in r:
                rows.append([name, variant, "-", "-", "-", "-", "-", r["skip"]])
                continue
            pk = r["peak GB"]
            peak_txt = "n/a (CPU)" if pk[0] is None else f"{pk[0]:.2f} / {pk[1]:.2f}"
            rows.append([name, variant, f"{r['s/frame']:.3f}", f"{r['first s']:.1f}", f"{r['calls/frame']:.2f}",
                         f"{r['forward %']:.1f}", peak_txt, f"{r['size']}; frames {r['frames']}; built in {r['build s']:.1f} s"])  # fmt: skip
            print(f"{name} {variant}: {rows[-1][2]} s/frame", file=sys.stderr)
            if "flops/frame" in r:
                tf = r["flops/frame"] / 1e12
                est = f"{tf / (peak * args.mfu):.3g}" if peak else "n/a (peak unknown)"
                a6000 = tf / (PEAK_TFLOPS["A6000"] * args.mfu)
                est_rows.append([name, f"{tf * 1e3:.4g}", est, f"{a6000:.3g}"])
    print(table(["model", "variant", "s/frame", "first s", "calls/frame", "forward %", "peak GB (short / 4x)", "run"], rows))
    print()
    print(f"FLOP-based estimate at {args.mfu:.0%} of the dense bf16 peak ({gpu}: {peak or 'unknown'} TFLOP/s; A6000: {PEAK_TFLOPS['A6000']}):")
    print(table(["model", "GFLOP per frame", "est. s/frame here", "est. s/frame on an A6000"], est_rows))
    print(f"\nFIFO-Diffusion paper: {PAPER_S_PER_FRAME} s per frame, VideoCrafter2 on one A6000.")
    print(f"Total {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
