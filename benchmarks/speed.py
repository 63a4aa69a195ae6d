"""Speed: where the wall time of steady-state FIFO generation goes, and how it scales.

    python benchmarks/speed.py              # default run, a few minutes on 2 CPU cores
    python benchmarks/speed.py --full       # more steps, longer videos, torch.compile on the CPU
    python benchmarks/speed.py --only share,calls

Tables (Markdown), each measured in this one run; compare ratios within a table, not absolute
times across runs (on a shared 2-core machine they swing 30-50%):

  share     share of wall time inside the model's forward calls (backbone.denoise, timed by a
            wrapper), steady state (warm start and warm-up excluded), engine vs PipelinedFIFOStream
  batch     all windows of a step in one forward call vs one window per call
  calls     forward calls and windows per emitted frame, encode_prompt calls per run (counted)
  ranks     2 ranks (gloo, CPU) vs 1 process: time per step, communication per step, same frames
  fullclip  FIFO vs diffusers-style full-clip sampling (all N frames at one timestep), time vs N
  overhead  where a steady-state step's time goes besides the forward call (FIFOStream, timed parts)
  cpualloc  glibc's default allocator vs fifo.cpu.keep_freed_memory (separate processes: it is global)
  cpuopts   the GPU options as far as a CPU can show them (channels-last, SDPA, torch.compile)

Like the command line, this script calls `fifo.cpu.keep_freed_memory()` first (not in `cpualloc`'s
default-allocator processes), so every other table is measured with the allocator users get.

The toy runs at its defaults (128x128, f=16, n=4, lookahead); the tiny UNet3D is a random-weight
UNet3DConditionModel (channels 16/32, latent 8x8, f=8, n=2, lookahead, CFG 9) through the real
adapter (`benchmarks/common.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fifo  # noqa: E402
from benchmarks.common import Counters, full_clip_sample, load_note, machine, pick_sections, set_threads, table, tiny_unet3d  # noqa: E402
from fifo import FIFOConfig, FIFOStream  # noqa: E402
from fifo.cpu import keep_freed_memory  # noqa: E402
from fifo.parallel import PipelinedFIFOStream, spawn  # noqa: E402

TOY_PROMPT = "a red ball moving right"
UNET_PROMPT = "a cat walking on the grass"
SECTIONS = ("share", "overhead", "batch", "calls", "ranks", "fullclip", "cpualloc", "cpuopts")


SMOKE = False  # --smoke: the smallest sizes, for the test that keeps this script working


def make(backbone: str):
    """(backbone, prompt) by name: "toy" at its defaults or "unet3d", the tiny random-weight UNet3D."""
    if backbone == "toy":
        return fifo.load_backbone("toy", **({"height": 64, "width": 64} if SMOKE else {})), TOY_PROMPT
    return tiny_unet3d(latent=8, channels=(8, 16) if SMOKE else (16, 32)), UNET_PROMPT


def sizes(default: tuple[int, int], args) -> tuple[int, int]:
    """(steps, rounds) for a measurement: the default, doubled with --full, (2, 1) with --smoke."""
    if args.smoke:
        return 2, 1
    return (default[0] * 2, default[1] * 2) if args.full else default


def interleaved(variants: dict, backbone, steps: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Run every variant's stream round-robin (so load swings hit all alike); per round (wall, denoise)."""
    counters = Counters(backbone)
    its = {}
    try:
        for name, make_stream in variants.items():
            it = make_stream().frames(10**9)
            next(it)
            its[name] = it
        res = {name: [] for name in variants}
        for _ in range(rounds):
            for name, it in its.items():
                counters.reset()
                t = time.perf_counter()
                for _ in range(steps):
                    next(it)
                res[name].append((time.perf_counter() - t, counters.denoise_s))
        return res
    finally:
        for it in its.values():
            it.close()
        counters.restore()


def med(xs) -> float:
    return statistics.median(xs)


# -- sections ------------------------------------------------------------------------------------


def section_share(args) -> str:
    rows = []
    for name in ("toy", "unet3d"):
        bb, prompt = make(name)
        steps, rounds = sizes((30, 6) if name == "toy" else (4, 4), args)
        variants = {
            "FIFOStream (engine)": lambda: FIFOStream(bb, prompt),
            "PipelinedFIFOStream (defaults)": lambda: PipelinedFIFOStream(bb, prompt),
            "PipelinedFIFOStream + decode_ahead": lambda: PipelinedFIFOStream(bb, prompt, decode_ahead=True, prefetch_noise=True),
        }
        res = interleaved(variants, bb, steps, rounds)
        for v, r in res.items():
            wall = med(w / steps for w, _ in r) * 1e3
            over = med((w - d) / steps for w, d in r) * 1e3
            share = med(d / w for w, d in r)
            rows.append([name, v, f"{steps}x{rounds}", f"{wall:.2f}", f"{over:.2f}", f"{share:.3f}"])
    return "### Share of wall time inside the model's forward calls (steady state)\n\n" + table(
        ["backbone", "stream", "steps x rounds", "ms / step", "overhead ms / step", "share in forward"], rows
    )


class _PartTimer:
    """Sums the wall time of methods of some objects, by part name (instance attributes, undone by `restore`)."""

    def __init__(self, parts: dict[str, tuple[object, str]]) -> None:
        self.seconds = dict.fromkeys(parts, 0.0)
        self._undo = []
        for part, (obj, name) in parts.items():
            fn = getattr(obj, name)

            def timed(*a, _fn=fn, _part=part, **k):
                t = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self.seconds[_part] += time.perf_counter() - t

            setattr(obj, name, timed)
            self._undo.append((obj, name))

    def restore(self) -> None:
        for obj, name in self._undo:
            obj.__dict__.pop(name, None)


def section_overhead(args) -> str:
    rows = []
    for name in ("toy", "unet3d"):
        bb, prompt = make(name)
        steps, rounds = sizes((100, 5) if name == "toy" else (6, 3), args)
        stream = FIFOStream(bb, prompt)
        it = stream.frames(10**9)
        next(it)
        parts = {"forward": (bb, "denoise"), "outputs": (stream, "_main_outputs"), "noise": (stream, "_step_noise"),
                 "step": (stream, "step"), "decode": (stream._decoder, "decode")}  # fmt: skip
        timer = _PartTimer(parts)
        per_round = []
        try:
            for _ in range(rounds):
                timer.seconds = dict.fromkeys(parts, 0.0)
                t = time.perf_counter()
                for _ in range(steps):
                    next(it)
                wall = time.perf_counter() - t
                p = timer.seconds
                per_round.append({
                    "forward call": p["forward"],
                    "gather windows, slice outputs": p["outputs"] - p["forward"],
                    "keyed noise": p["noise"],
                    "queue update (solver, shift, pop)": p["step"] - p["outputs"] - p["noise"],
                    "decode": p["decode"],
                    "frames loop": wall - p["step"] - p["decode"],
                    "wall": wall,
                })  # fmt: skip
        finally:
            timer.restore()
            it.close()
        for part in per_round[0]:
            ms = med(r[part] / steps for r in per_round) * 1e3
            share = med(r[part] / r["wall"] for r in per_round)
            rows.append([name, part, f"{ms:.3f}", f"{share:.3f}"])
    return "### Where a steady-state step goes (FIFOStream, median of rounds)\n\n" + table(
        ["backbone", "part", "ms / step", "share of wall"], rows
    ) + "\n\n(\"decode\" is the model's decoder, run on every popped latent; \"frames loop\" is the generator around the step)"


def section_batch(args) -> str:
    rows = []
    for name in ("toy", "unet3d"):
        bb, prompt = make(name)
        steps, rounds = sizes((20, 5) if name == "toy" else (3, 3), args)
        nwin = len(FIFOConfig().resolve(bb).windows)
        variants = {
            "all windows in one call": lambda: FIFOStream(bb, prompt),
            "one window per call": lambda: FIFOStream(bb, prompt, FIFOConfig(window_batch=1)),
        }
        res = interleaved(variants, bb, steps, rounds)
        per = {v: [w / steps for w, _ in r] for v, r in res.items()}
        ratios = [b / a for a, b in zip(per["all windows in one call"], per["one window per call"])]
        rows.append(
            [name, nwin, f"{med(per['all windows in one call']) * 1e3:.1f}", f"{med(per['one window per call']) * 1e3:.1f}", f"{med(ratios):.2f}x"]
        )
    return "### Batched windows vs one window per forward call (FIFOStream, ms per step)\n\n" + table(
        ["backbone", "windows / step", "batched", "one at a time", "speed-up (median of rounds)"], rows
    )


def section_calls(args) -> str:
    rows = []
    cases = [("toy", True, 4), ("toy", False, 4), ("unet3d", True, 2), ("unet3d", False, 2)]
    for name, lookahead, n in cases:
        bb, prompt = make(name)
        cfg = FIFOConfig(lookahead=lookahead, partitions=n)
        c = Counters(bb)
        frames = 3 if args.smoke else (24 if name == "toy" else 6)
        stream = PipelinedFIFOStream(bb, prompt, cfg)
        it = stream.frames(frames)
        next(it)  # warm start + warm-up + first frame
        warm_calls, warm_windows = c.denoise_calls, c.windows
        c.denoise_calls = c.windows = 0
        rest = sum(1 for _ in it)
        res = stream.config
        expect = 2 * res.partitions if res.lookahead else res.partitions
        rows.append(
            [
                name, "yes" if lookahead else "no", f"{res.frames_per_window}x{res.partitions}", expect,
                f"{c.windows / rest:g}", f"{c.denoise_calls / rest:g}", f"{warm_calls} / {warm_windows}", c.encode_calls,
            ]
        )  # fmt: skip
        c.restore()
    return "### Forward calls per emitted frame (counted, steady state) and prompt encodings per run\n\n" + table(
        ["backbone", "lookahead", "f x n", "expected windows / frame", "windows / frame", "forward calls / frame",
         "warm start + warm-up calls / windows", "encode_prompt calls"],
        rows,
    ) + "\n\n(one forward call carries every window of a step; classifier-free guidance doubles the batch inside the backbone)"  # fmt: skip


def _rank_bench(ctx, backbone: str, steps: int, out: str, smoke: bool = False) -> None:
    """One rank of the `ranks` section: steady-state time per step, comm per step, a hash of the frames."""
    import torch.distributed as dist

    global SMOKE
    SMOKE = smoke
    from fifo.parallel import DistributedFIFOStream

    bb, prompt = make(backbone)
    stream = DistributedFIFOStream(bb, prompt, seed=0)
    frames = list(stream.frames(1))  # warm start, warm-up, first frame (rank 0 gets it, the others step)
    sync = (lambda: dist.barrier()) if stream.world_size > 1 else (lambda: None)
    sync()
    c0, t = stream.comm_seconds, time.perf_counter()
    frames += list(stream.frames(steps))
    wall = time.perf_counter() - t
    comm = stream.comm_seconds - c0
    transfer = 0.0
    if stream.world_size > 1:  # the all-gather alone, ranks aligned by a barrier first
        buf = torch.zeros(stream._slab, *stream.queue.shape[:1], *stream.queue.shape[2:])
        recv = [torch.empty_like(buf) for _ in range(stream.world_size)]
        for i in range(23):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_gather(recv, buf)
            if i >= 3:
                transfer += (time.perf_counter() - t0) / 20
    if ctx.is_main:
        h = hashlib.sha256(np.stack(frames).tobytes()).hexdigest()[:12]
        res = {"wall": wall / steps, "comm": comm / steps, "transfer": transfer, "bytes": stream.comm_bytes / max(stream.comm_steps, 1), "hash": h}
        Path(out).write_text(json.dumps(res))


def section_ranks(args) -> str:
    rows = []
    for name in ("toy", "unet3d"):
        steps = 3 if args.smoke else (60 if name == "toy" else 8) * (2 if args.full else 1)
        setups = [(1, 1), (1, 2), (2, 1)]
        res = {}
        with tempfile.TemporaryDirectory() as d:
            for world, threads in setups:
                out = os.path.join(d, f"{world}-{threads}.json")
                spawn(_rank_bench, world, args=(name, steps, out, args.smoke), device="cpu", threads=threads)
                res[(world, threads)] = json.loads(Path(out).read_text())
        base = res[(1, 1)]
        for (world, threads), r in res.items():
            same = "yes (identical)" if r["hash"] == base["hash"] else "no"
            comm = f"{r['comm'] * 1e3:.2f} / {r['transfer'] * 1e3:.2f}" if world > 1 else "-"
            rows.append(
                [name, world, threads, f"{r['wall'] * 1e3:.1f}", f"{base['wall'] / r['wall']:.2f}x", comm,
                 f"{r['bytes'] / 1024:.0f} KiB" if world > 1 else "-", same]
            )  # fmt: skip
    return (
        "### Windows split over ranks (gloo on CPU, each rank a full replica)\n\n"
        + table(
            ["backbone", "ranks", "threads / rank", "ms / step", "speed vs 1x1", "comm ms / step (in all_gather incl. wait / transfer alone)",
             "sent / rank / step", "frames same as 1 rank"],
            rows,
        )  # fmt: skip
        + "\n\n(2 ranks x 1 thread use the same 2 cores as 1 process x 2 threads; every run is its own process group)"
    )


def section_fullclip(args) -> str:
    bb, prompt = make("unet3d")
    d = bb.defaults
    L = d.frames_per_window * d.partitions
    lengths = [16, 32, 64] + ([128, 256] if args.full else [])
    reps = 1 if args.smoke else 2
    rows = []
    for N in lengths:
        runs = {
            "FIFO, lookahead": lambda: [None for _ in PipelinedFIFOStream(bb, prompt, FIFOConfig()).frames(N)],
            "FIFO, no lookahead": lambda: [None for _ in PipelinedFIFOStream(bb, prompt, FIFOConfig(lookahead=False)).frames(N)],
            "full clip": lambda: full_clip_sample(bb, prompt, N, L),
        }
        times = {k: float("inf") for k in runs}
        for _ in range(reps):  # interleaved, the best of `reps`: load swings hit every column alike
            for k, run in runs.items():
                t = time.perf_counter()
                run()
                times[k] = min(times[k], time.perf_counter() - t)
        rows.append([N, *(f"{times[k]:.1f}" for k in runs), f"{times['FIFO, no lookahead'] / times['full clip']:.2f}"])
    return (
        f"### FIFO vs full-clip sampling, tiny UNet3D, {L} steps (seconds for N frames, warm start included; best of {reps})\n\n"
        + table(["N frames", "FIFO, lookahead", "FIFO, no lookahead", "full clip (N frames at one timestep)", "FIFO no-lookahead / full clip"], rows)
        + f"\n\n(every frame gets {L} model evaluations either way, twice that with lookahead; FIFO adds a fixed start: the "
        f"warm-start clip ({d.frames_per_window} frames x {L} steps) and {L - d.frames_per_window} warm-up steps whose frames "
        "are dropped. The full clip holds all N frames' activations at once (memory.py) and the model never saw clips "
        "longer than its native length)"
    )


_ALLOC_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from benchmarks import speed
from fifo.cpu import keep_freed_memory
speed.SMOKE = sys.argv[4] == "1"
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
bb, prompt = speed.make(sys.argv[2])
it = speed.FIFOStream(bb, prompt).frames(10**9)
next(it)
steps, warm = int(sys.argv[5]), int(sys.argv[6])
for _ in range(warm):
    next(it)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_step, t = [], time.perf_counter()
for _ in range(steps):
    f0 = faults()
    next(it)
    per_step.append(faults() - f0)
wall = time.perf_counter() - t
print(json.dumps({"set": tuned, "ms": wall / steps * 1e3, "faults": sum(per_step) / steps,
                  "faulting_steps": sum(f > 0 for f in per_step) / steps}))
"""


def alloc_child(mode: str, backbone: str, steps: int, smoke: bool = False, warm: int | None = None) -> dict:
    """A fresh process stepping FIFOStream with glibc's defaults ("default") or `keep_freed_memory()`
    ("tuned"), `warm` steps (default steps // 4) after the first frame, then `steps` measured:
    {"set": what the call returned (None if not made), "ms": per step, "faults": page faults per step,
    "faulting_steps": the fraction of steps with any page fault}."""
    warm = max(steps // 4, 1) if warm is None else warm
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _ALLOC_CHILD, mode, backbone, root, "1" if smoke else "0", str(steps), str(warm)],
        capture_output=True, text=True, check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_cpualloc(args) -> str:
    rows = []
    for name in ("toy", "unet3d"):
        steps, reps = sizes((150, 3) if name == "toy" else (8, 3), args)
        res = {"default": [], "tuned": []}
        for _ in range(reps):  # alternating processes: load swings hit both alike
            for mode in res:
                res[mode].append(alloc_child(mode, name, steps, args.smoke))
        ratios = [d["ms"] / t["ms"] for d, t in zip(res["default"], res["tuned"])]
        for mode, r in res.items():
            rows.append([name, "glibc defaults" if mode == "default" else "keep_freed_memory()", f"{med(x['ms'] for x in r):.2f}",
                         f"{med(x['faults'] for x in r):.0f}", "1.00x" if mode == "default" else f"{med(ratios):.2f}x"])  # fmt: skip
    return (
        "### CPU allocator: glibc defaults vs `fifo.cpu.keep_freed_memory()` (FIFOStream, one process each, "
        f"median of {reps})\n\n"
        + table(["backbone", "allocator", "ms / step", "page faults / step", "speed vs defaults (paired runs)"], rows)
    )


def section_cpuopts(args) -> str:
    from diffusers.models.attention_processor import AttnProcessor

    from fifo.parallel import apply_gpu_options

    rows = []
    bb, prompt = make("unet3d")
    cond = bb.encode_prompt(prompt, "")
    g = torch.Generator().manual_seed(0)
    nwin = 2 * bb.defaults.partitions
    x = torch.randn(nwin, 4, bb.defaults.frames_per_window, 8, 8, generator=g)
    t = torch.linspace(10, 990, nwin * bb.defaults.frames_per_window).view(nwin, -1)
    reps = 6 if args.full else 3

    def timeit():
        bb.denoise(x, t, cond, 9.0)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            bb.denoise(x, t, cond, 9.0)
            ts.append(time.perf_counter() - t0)
        return med(ts)

    ref = bb.denoise(x, t, cond, 9.0)
    bb.unet.set_attn_processor(AttnProcessor())
    base = timeit()
    rows.append(["classic attention (AttnProcessor, no SDPA)", f"{base * 1e3:.1f}", "1.00x", "-"])
    apply_gpu_options(bb, attention="sdpa")
    s = timeit()
    rows.append(["SDPA (AttnProcessor2_0, diffusers' default)", f"{s * 1e3:.1f}", f"{base / s:.2f}x", f"{(bb.denoise(x, t, cond, 9.0) - ref).abs().max():.1e}"])
    apply_gpu_options(bb, channels_last=True)
    s = timeit()
    rows.append(["SDPA + channels-last", f"{s * 1e3:.1f}", f"{base / s:.2f}x", f"{(bb.denoise(x, t, cond, 9.0) - ref).abs().max():.1e}"])
    if args.full:
        apply_gpu_options(bb, compile=True)
        t0 = time.perf_counter()
        bb.denoise(x, t, cond, 9.0)
        ctime = time.perf_counter() - t0
        s = timeit()
        rows.append([f"SDPA + channels-last + torch.compile (inductor; first call {ctime:.0f} s)", f"{s * 1e3:.1f}", f"{base / s:.2f}x",
                     f"{(bb.denoise(x, t, cond, 9.0) - ref).abs().max():.1e}"])  # fmt: skip
    else:
        rows.append(["torch.compile", "--full only (compiling takes minutes on 2 cores)", "", ""])
    return (
        f"### GPU options as a CPU sees them: one step's forward call ({nwin} windows, CFG), tiny UNet3D, fp32, CPU\n\n"
        + table(["setting", "ms / call", "speed vs classic", "max |diff| vs default"], rows)
        + "\n\n(GPU effects are not measured here: the README's \"GPU options\" table gives what each buys on a GPU, with sources)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="more steps, longer videos, torch.compile")
    p.add_argument("--smoke", action="store_true", help="smallest sizes, one round: checks the script runs (tests)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1: steadier on a shared box)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    args = p.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    set_threads(args.threads)
    keep_freed_memory()
    only = pick_sections(p, args.only, SECTIONS)
    print(f"# benchmarks/speed.py {' '.join(argv if argv is not None else sys.argv[1:])}\n\n{machine()}\n", flush=True)
    for s in only:
        t = time.perf_counter()
        print(globals()[f"section_{s}"](args), flush=True)
        print(f"\n({s}: {time.perf_counter() - t:.0f} s; {load_note()} at its end)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
