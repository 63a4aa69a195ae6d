"""Memory: FIFO's peak memory does not grow with the video's length; a full clip's does.

    python benchmarks/memory.py            # default run, a few minutes on 2 CPU cores
    python benchmarks/memory.py --full     # 5,000 toy frames, longer UNet3D runs and clips

Each measurement runs in a fresh process (a peak is a process-wide high-water mark): the process
resident set size (RSS) sampled every 2 ms by a thread, and on a GPU also
`torch.cuda.max_memory_allocated`. "Above baseline" subtracts the RSS right after the model is
built and the prompt encoded. Tables:

  toy       FIFO on the toy world (defaults, 128x128): peak RSS up to 64, 256, 1,024, 2,000 (5,000) frames
            in one run, live Python objects (gc) and tensors at each point: flat within 2%
  unet3d    FIFO vs full-clip sampling on the tiny random-weight UNet3D, N frames: peak memory and
            time against N, and the plot docs/memory_time.png
  cli       `python -m fifo "a red ball moving right" --backbone toy --frames N -o out.mp4` at 100
            and 1,000 frames: peak RSS of the whole process tree (the CLI and its ffmpeg), sampled

Every measured process sets glibc's allocator as the command line does (`fifo.cpu.keep_freed_memory`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20
SECTIONS = ("toy", "unet3d", "cli")


# -- child processes: one measurement each, a JSON line out ----------------------------------------


def _live_tensors() -> int:
    import torch

    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def child_fifo(backbone: str, checkpoints: list[int], threads: int) -> dict:
    """One FIFO run to max(checkpoints) frames; at each checkpoint: peak RSS so far, time, live objects."""
    import torch

    from benchmarks.common import PeakRSS, rss_bytes, set_threads, tiny_unet3d
    from fifo.parallel import PipelinedFIFOStream

    set_threads(threads)
    import fifo

    if backbone == "toy":
        bb, prompt = fifo.load_backbone("toy"), "a red ball moving right"
    else:
        bb, prompt = tiny_unet3d(latent=8, channels=(16, 32)), "a cat walking on the grass"
    bb.encode_prompt(prompt, "")
    gc.collect()
    base = rss_bytes()
    cuda = torch.cuda.is_available() and bb.device.type == "cuda"
    out = {"baseline": base, "points": []}
    stream = PipelinedFIFOStream(bb, prompt)
    done = 0
    with PeakRSS() as peak:
        t = time.perf_counter()
        it = stream.frames(max(checkpoints))
        for n in sorted(checkpoints):
            while done < n:
                next(it)
                done += 1
            gc.collect()
            out["points"].append(
                {
                    "frames": n,
                    "seconds": time.perf_counter() - t,
                    "peak": max(peak.peak, rss_bytes()),
                    "rss": rss_bytes(),
                    "objects": len(gc.get_objects()),
                    "tensors": _live_tensors(),
                    "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None,
                }
            )
    return out


def child_fullclip(frames: int, threads: int) -> dict:
    """One diffusers-style full-clip sample of `frames` frames on the tiny UNet3D: peak RSS, time."""
    import torch

    from benchmarks.common import PeakRSS, full_clip_sample, rss_bytes, set_threads, tiny_unet3d

    set_threads(threads)
    bb, prompt = tiny_unet3d(latent=8, channels=(16, 32)), "a cat walking on the grass"
    bb.encode_prompt(prompt, "")
    gc.collect()
    base = rss_bytes()
    d = bb.defaults
    with PeakRSS() as peak:
        t = time.perf_counter()
        full_clip_sample(bb, prompt, frames, d.frames_per_window * d.partitions)
        secs = time.perf_counter() - t
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and bb.device.type == "cuda" else None
    return {"baseline": base, "frames": frames, "seconds": secs, "peak": peak.peak, "cuda_peak": cuda}


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- sections ------------------------------------------------------------------------------------


def section_toy(args) -> tuple[str, dict]:
    from benchmarks.common import table

    points = [64, 256, 1024, 2000] + ([5000] if args.full else [])
    res = run_child("fifo", "toy", ",".join(map(str, points)), str(args.threads))
    first = res["points"][0]
    rows = []
    for p in res["points"]:
        rows.append(
            [
                p["frames"], f"{p['seconds']:.1f}", f"{p['peak'] / MiB:.1f}", f"{(p['peak'] - res['baseline']) / MiB:.1f}",
                f"{100 * (p['peak'] / first['peak'] - 1):+.2f}%", p["objects"], p["tensors"],
            ]
        )  # fmt: skip
    text = "### FIFO on the toy world (128x128, f=16, n=4, lookahead): one run, peak memory so far at each length\n\n" + table(
        ["frames", "seconds", "peak RSS MiB", "above baseline MiB", "vs 64 frames", "Python objects (gc)", "live tensors"], rows
    )
    return text, res


def section_unet3d(args) -> tuple[str, dict]:
    from benchmarks.common import table

    fifo_points = [16, 32, 64, 128, 256] + ([512, 1024] if args.full else [])
    clip_lengths = [16, 32, 64, 128] + ([256, 512] if args.full else [])
    fifo_res = run_child("fifo", "unet3d", ",".join(map(str, fifo_points)), str(args.threads))
    clips = [run_child("fullclip", str(n), str(args.threads)) for n in clip_lengths]
    rows = []
    by_n = {c["frames"]: c for c in clips}
    first = fifo_res["points"][0]["peak"]
    for p in fifo_res["points"]:
        c = by_n.get(p["frames"])
        rows.append(
            [
                p["frames"],
                f"{(p['peak'] - fifo_res['baseline']) / MiB:.1f}",
                f"{100 * (p['peak'] / first - 1):+.2f}%",
                f"{(c['peak'] - c['baseline']) / MiB:.1f}" if c else "-",
                f"{p['seconds']:.1f}",
                f"{c['seconds']:.1f}" if c else "-",
            ]
        )
    text = (
        "### FIFO vs full-clip sampling on the tiny UNet3D (latent 8x8, f=8, n=2, 16 steps): peak RSS above baseline and time\n\n"
        + table(["N frames", "FIFO peak MiB", "FIFO total peak RSS vs first", "full clip peak MiB", "FIFO seconds (cumulative, one run)",
                 "full clip seconds"], rows)  # fmt: skip
        + f"\n\n(baseline RSS after building the model: {fifo_res['baseline'] / MiB:.0f} MiB; FIFO is one run read at each length, "
        "each full clip its own process)"
    )
    return text, {"fifo": fifo_res, "clips": clips}


def _rss_parts(proc) -> tuple[int, int]:
    """(RSS of the CLI's Python process, summed RSS of its ffmpeg children); forks caught before exec are skipped."""
    import psutil

    try:
        own = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    ff = 0
    for k in kids:
        try:
            if "ffmpeg" in k.name():
                ff += k.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return own, ff


def section_cli(args) -> tuple[str, dict]:
    import psutil

    from benchmarks.common import table

    rows, res = [], {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as d:
        for n in (100, 1000):
            out = Path(d) / f"out{n}.mp4"
            cmd = [sys.executable, "-m", "fifo", "a red ball moving right", "--backbone", "toy", "--frames", str(n), "-o", str(out), "--quiet"]
            t = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d)
            proc = psutil.Process(p.pid)
            peak_py = peak_ff = 0
            while p.poll() is None:
                own, ff = _rss_parts(proc)
                peak_py, peak_ff = max(peak_py, own), max(peak_ff, ff)
                time.sleep(0.005)
            stdout, stderr = p.communicate()
            secs = time.perf_counter() - t
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
            own = stdout.strip().rsplit("peak memory", 1)[-1].strip()
            res[n] = {"python_peak": peak_py, "ffmpeg_peak": peak_ff, "cli_says": own, "seconds": secs}
            rows.append([n, f"{peak_py / MiB:.1f}", f"{peak_ff / MiB:.1f}", f"{(peak_py + peak_ff) / MiB:.1f}", own, f"{secs:.1f}"])
    a = res[100]["python_peak"] + res[100]["ffmpeg_peak"]
    b = res[1000]["python_peak"] + res[1000]["ffmpeg_peak"]
    text = (
        "### The command line at 100 and 1,000 frames (toy, defaults), sampled every 5 ms\n\n"
        + table(["frames", "peak RSS MiB, CLI (Python)", "peak RSS MiB, its ffmpeg", "sum", "the CLI's own report", "wall seconds"], rows)
        + f"\n\n(1,000 vs 100 frames: {100 * (b / a - 1):+.1f}% peak memory)"
    )
    return text, res


def plot(unet: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = unet["fifo"]
    fx = [p["frames"] for p in f["points"]]
    fm = [(p["peak"] - f["baseline"]) / MiB for p in f["points"]]
    ft = [p["seconds"] for p in f["points"]]
    cx = [c["frames"] for c in unet["clips"]]
    cm = [(c["peak"] - c["baseline"]) / MiB for c in unet["clips"]]
    ct = [c["seconds"] for c in unet["clips"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, fy, cy, label in ((a1, fm, cm, "peak RSS above baseline (MiB)"), (a2, ft, ct, "time (s)")):
        ax.plot(fx, fy, "o-", label="FIFO (queue of L frames)")
        ax.plot(cx, cy, "s--", label="full clip (all N frames at once)")
        ax.set_xlabel("video length N (frames)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    a1.set_title("memory: flat for FIFO, growing for a full clip")
    a2.set_title("time: both linear in N")
    a1.legend()
    fig.suptitle("tiny random-weight UNet3D (latent 8x8, f=8, n=2, lookahead, 16 steps), CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="5,000 toy frames; longer UNet3D runs and clips")
    p.add_argument("--threads", type=int, default=1, help="torch threads per measured process (default 1)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "memory_time.png", help="where the unet3d section's plot goes")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        from fifo.cpu import keep_freed_memory

        keep_freed_memory()  # the allocator the command line and the app use (fifo/cpu.py)
        kind, *rest = args.child
        if kind == "fifo":
            res = child_fifo(rest[0], [int(x) for x in rest[1].split(",")], int(rest[2]))
        else:
            res = child_fullclip(int(rest[0]), int(rest[1]))
        print(json.dumps(res))
        return 0
    from benchmarks.common import load_note, machine, pick_sections, set_threads

    set_threads(args.threads)
    only = pick_sections(p, args.only, SECTIONS)
    print(f"# benchmarks/memory.py {' '.join(argv if argv is not None else sys.argv[1:])}\n\n{machine()}\n", flush=True)
    for s in only:
        t = time.perf_counter()
        text, res = globals()[f"section_{s}"](args)
        print(text, flush=True)
        if s == "unet3d":
            plot(res, args.plot)
            print(f"\n(plot: {args.plot})")
        print(f"\n({s}: {time.perf_counter() - t:.0f} s; {load_note()} at its end)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
