"""The speed/quality frontier: motion, fidelity and drift against forward calls per frame, on the toy world.

    python benchmarks/frontier.py                     # default grid: 13 settings, 3 prompts x 2 seeds x 1000 frames
    python benchmarks/frontier.py --grid full --seeds 0 1
    python benchmarks/frontier.py --grid smoke --frames 60 --prompts "a red ball moving right" --plot ''

Every setting generates `--frames` video frames per prompt and seed with the toy world's
shared-level denoiser (`ToyBackbone(shared_level=True)`: it takes every frame of a window to sit at
the window's mean noise level, the training-inference gap of a real short-clip model), and is
measured with `benchmarks/quality.py`'s measures (`Truth.measure`) against the world the prompt names:

  motion     % of frame-to-frame transitions that obey the world's dynamics
  fidelity   mean absolute error (8-bit levels) of each frame to the nearest true frame
  drift      fidelity of the last `--stretch` frames minus that of the first (> 0: it gets worse)
  identity   % of frames keeping the prompt's colour and shape

Cost: window calls per emitted latent frame (`n / b`, `2n / b` with lookahead), counted by
wrapping the backbone's `denoise` (warm start excluded), checked against the config's
`windows_per_frame`. A real model with classifier-free guidance doubles every figure.

The grid varies `f` (frames per window), `n` (partitions), `b` (frames per rung) and lookahead
around the paper's defaults (f = 16, n = 4, lookahead, b = 1: 8 windows per frame). Prints a
Markdown table sorted by cost, the Pareto front (no other setting is both cheaper and better in
fidelity), the cheapest setting reaching the paper default's fidelity and motion, and the best at a
quarter of its cost; writes the plot to `--plot` (default docs/frontier.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import fifo  # noqa: E402
from benchmarks.common import Counters, machine, set_threads, table  # noqa: E402
from benchmarks.quality import PROMPTS, Truth  # noqa: E402
from fifo.backbones.toy import ToyBackbone, parse_prompt  # noqa: E402
from fifo.cpu import keep_freed_memory  # noqa: E402


@dataclass(frozen=True)
class Setting:
    f: int
    n: int
    b: int
    lookahead: bool

    @property
    def config(self) -> fifo.FIFOConfig:
        return fifo.FIFOConfig(frames_per_window=self.f, partitions=self.n, lookahead=self.lookahead, frames_per_rung=self.b)

    @property
    def cost(self) -> float:
        """Window calls per emitted latent frame."""
        return (2 * self.n if self.lookahead else self.n) / self.b

    @property
    def steps(self) -> int:
        """Denoising steps each frame receives: f n / b."""
        return self.f * self.n // self.b

    @property
    def label(self) -> str:
        return f"f={self.f} n={self.n} b={self.b}{' LA' if self.lookahead else ''}"


PAPER = Setting(16, 4, 1, True)


def grid(name: str) -> list[Setting]:
    """The settings of a named grid; every one is a layout the config accepts."""
    if name == "smoke":
        return [PAPER, Setting(16, 4, 4, True), Setting(16, 1, 16, False)]
    core = [  # f = 16, the toy's native window: each of n, b, lookahead moved away from the paper's defaults
        PAPER,
        Setting(16, 4, 1, False), Setting(16, 2, 1, True), Setting(16, 1, 1, True), Setting(16, 1, 1, False),
        Setting(16, 4, 2, True), Setting(16, 4, 4, True), Setting(16, 4, 8, True), Setting(16, 2, 4, True),
        Setting(16, 4, 4, False), Setting(16, 1, 16, False),
    ]  # fmt: skip
    if name == "default":
        return core + [Setting(8, 4, 1, True), Setting(8, 4, 2, True)]
    if name == "full":
        extra = [Setting(f, n, b, la) for f in (8, 16) for n in (1, 2, 4) for la in (False, True)
                 for b in fifo.schedule.allowed_frames_per_rung(f, la)]  # fmt: skip
        return list(dict.fromkeys(core + extra))
    raise ValueError(f"grid={name!r}: allowed are 'smoke', 'default', 'full'")


def run_video(s: Setting, prompt: str, seed: int, args) -> tuple[np.ndarray, float, float]:
    """(frames, windows per popped latent frame after warm start as counted, seconds)."""
    bb = ToyBackbone(height=args.size, width=args.size, shared_level=True)
    counters = Counters(bb)
    stream = fifo.FIFOStream(bb, prompt, s.config, seed=seed)
    t = time.perf_counter()
    stream.state()  # the warm start, outside the count
    warm = counters.windows
    frames = np.stack(list(stream.frames(args.frames)))
    dt = time.perf_counter() - t
    counted = (counters.windows - warm) / (stream.step_index * s.b)
    counters.restore()
    if abs(counted - stream.config.windows_per_frame) > 1e-9:
        raise RuntimeError(f"{s.label}: counted {counted} windows per frame, the config says {stream.config.windows_per_frame}")
    return frames, counted, dt


@dataclass
class Result:
    setting: Setting
    counted: float
    per_video: list  # dicts of motion, fidelity, drift, identity per video
    seconds: float

    def mean(self, key: str) -> float:
        return float(np.mean([v[key] for v in self.per_video]))

    def sd(self, key: str) -> float:
        return float(np.std([v[key] for v in self.per_video], ddof=1)) if len(self.per_video) > 1 else float("nan")


def measure(truth: Truth, frames: np.ndarray, stretch: int) -> dict:
    d = truth.measure(frames, audit_every=0)
    fid = d["fidelity"]
    return {
        "motion": float(d["motion"].mean()),
        "fidelity": float(fid.mean()),
        "drift": float(fid[-stretch:].mean() - fid[:stretch].mean()),
        "identity": float(d["identity"].mean()),
        "motion_last": float(d["motion"][-stretch:].mean()),
    }


MOTION_SLACK = 0.005  # motion within half a point of the paper default's counts as keeping it


def keeps_motion(r: Result, paper: Result | None) -> bool:
    """Motion within `MOTION_SLACK` of the paper default's (every setting, without the paper default in the run)."""
    return paper is None or r.mean("motion") >= paper.mean("motion") - MOTION_SLACK


def pareto(results: list[Result]) -> list[Result]:
    """Settings no other beats on both cost and fidelity (lower is better for both)."""
    front = []
    for r in sorted(results, key=lambda r: (r.setting.cost, r.mean("fidelity"))):
        if not front or r.mean("fidelity") < front[-1].mean("fidelity"):
            front.append(r)
    return front


def plot(results: list[Result], paper: Result | None, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fidelity", "fidelity: MAE to nearest true frame (0-255, lower is better)", 1),
              ("motion", "motion consistency (%)", 100), ("drift", "drift: fidelity last - first stretch (levels)", 1)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), constrained_layout=True)
    bs = sorted({r.setting.b for r in results})
    cmap = plt.get_cmap("viridis", max(len(bs), 2))
    front = {id(r) for r in pareto([r for r in results if keeps_motion(r, paper)])}
    for ax, (key, title, scale) in zip(axes, panels):
        for r in results:
            s = r.setting
            ax.errorbar(s.cost, r.mean(key) * scale, yerr=(r.sd(key) * scale if len(r.per_video) > 1 else None),
                        fmt="o" if s.lookahead else "s", color=cmap(bs.index(s.b)), ms=7 if s.f == 16 else 5,
                        mfc="none" if s.f != 16 else None, capsize=2, alpha=0.9)  # fmt: skip
            ax.annotate(f"n{s.n} b{s.b}" + (f" f{s.f}" if s.f != 16 else ""), (s.cost, r.mean(key) * scale), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        if key == "fidelity":
            fr = sorted((r for r in results if id(r) in front), key=lambda r: r.setting.cost)
            ax.plot([r.setting.cost for r in fr], [r.mean(key) for r in fr], "k--", lw=1, label="Pareto front (motion kept)")
        if paper is not None:
            ax.plot(paper.setting.cost, paper.mean(key) * scale, "*", ms=18, mfc="none", mec="red", mew=1.5,
                    label="paper default (f=16, n=4, LA)")  # fmt: skip
            ax.axvline(paper.setting.cost / 4, color="red", lw=0.8, ls=":", label="quarter of its cost")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("window calls per emitted latent frame (x2 with guidance)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i), label=f"b={b}") for i, b in enumerate(bs)]
    handles += [plt.Line2D([], [], ls="", marker="o", color="gray", label="lookahead"),
                plt.Line2D([], [], ls="", marker="s", color="gray", label="no lookahead"),
                plt.Line2D([], [], ls="", marker="o", mfc="none", color="gray", label="f=8 (hollow)")]  # fmt: skip
    axes[0].legend(handles=handles + axes[0].get_legend_handles_labels()[0], fontsize=7, loc="best")
    fig.suptitle(f"toy world, shared-level denoiser: {len(args.prompts)} prompt(s) x {len(args.seeds)} seed(s), "
                 f"{args.frames} frames each (error bars: sd over videos)", fontsize=10)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="default", help="smoke | default | full (every b each f in {8, 16}, n in {1, 2, 4}, lookahead allow)")
    p.add_argument("--frames", type=int, default=1000, help="video frames per video (default 1000)")
    p.add_argument("--prompts", nargs="+", default=None, help="toy prompts (default: quality.py's 3)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--size", type=int, default=128, help="video side in pixels (default 128)")
    p.add_argument("--stretch", type=int, default=100, help="frames per stretch for drift (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--plot", default="docs/frontier.png", help="where to write the plot ('' for none)")
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    p.add_argument("--part", default="1/1", help="K/N: run only every N-th setting of the grid from the K-th (split over processes)")
    p.add_argument("--merge", nargs="+", default=None, help="no run: report the results in these --json files together")
    args = p.parse_args(argv)
    try:
        settings = grid(args.grid)
        k, n = map(int, args.part.split("/"))
        if not 1 <= k <= n:
            raise ValueError(f"--part {args.part}: need 1 <= K <= N")
    except ValueError as e:
        p.error(str(e))
    settings = settings[k - 1 :: n]
    args.prompts = args.prompts or PROMPTS
    if args.frames < 2 * args.stretch:
        args.stretch = max(args.frames // 4, 1)
    print(f"# benchmarks/frontier.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        results = [Result(Setting(**{key: r["setting"][key] for key in ("f", "n", "b", "lookahead")}), r["counted"], r["videos"],
                          r["seconds"]) for run in runs for r in run["results"]]  # fmt: skip
        for key in ("frames", "prompts", "seeds", "size", "stretch"):
            setattr(args, key, runs[0]["args"][key])
            if any(run["args"][key] != runs[0]["args"][key] for run in runs):
                p.error(f"--merge: the runs differ in {key}")
        print(f"merged {len(results)} settings from {', '.join(args.merge)}; each run's own output gives its wall and CPU time\n")
        report(results, args)
        return 0
    set_threads(args.threads)
    keep_freed_memory()
    t0 = time.perf_counter()
    print(f"{machine()}\n")
    print(f"prompts: {args.prompts}\nseeds: {args.seeds}\nframes per video: {args.frames}, {args.size}x{args.size} px, "
          f"{len(settings)} settings, drift over {args.stretch}-frame stretches\n", flush=True)  # fmt: skip
    truths = {pr: Truth(parse_prompt(pr), args.size, args.size) for pr in args.prompts}
    results = []
    for s in settings:
        vids, secs, counted = [], 0.0, 0.0
        for pr in args.prompts:
            for seed in args.seeds:
                frames, counted, dt = run_video(s, pr, seed, args)
                secs += dt
                vids.append(measure(truths[pr], frames, args.stretch))
        r = Result(s, counted, vids, secs)
        results.append(r)
        print(f"  {s.label}: {counted:g} windows/frame, motion {100 * r.mean('motion'):.1f} %, fidelity {r.mean('fidelity'):.2f}, "
              f"drift {r.mean('drift'):+.2f}, gen {secs:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    report(results, args)
    if args.json:
        out = [{"setting": vars(r.setting) | {"cost": r.setting.cost, "steps": r.setting.steps}, "counted": r.counted,
                "videos": r.per_video, "seconds": r.seconds} for r in results]  # fmt: skip
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": out}, indent=1))
    print(f"\ntotal wall time: {time.perf_counter() - t0:.0f} s, CPU time of this process: {time.process_time():.0f} s "
          f"(wall / CPU > {args.threads} means other processes shared the cores)")  # fmt: skip
    return 0


def report(results: list[Result], args) -> None:
    """The table, the picks and the plot."""
    results = sorted(results, key=lambda r: (r.setting.cost, r.mean("fidelity")))
    paper = next((r for r in results if r.setting == PAPER), None)
    front = {id(r) for r in pareto([r for r in results if keeps_motion(r, paper)])}
    rows = []
    for r in results:
        s = r.setting
        rel = f"{r.setting.cost / PAPER.cost:.3g}"
        rows.append([
            s.label + (" (paper)" if s == PAPER else ""), f"{s.cost:g}", rel, s.steps, f"{r.counted:g}",
            f"{100 * r.mean('motion'):.1f} ± {100 * r.sd('motion'):.1f}", f"{r.mean('fidelity'):.2f} ± {r.sd('fidelity'):.2f}",
            f"{r.mean('drift'):+.2f}", f"{100 * r.mean('identity'):.1f}",
            "yes" if id(r) in front else ("" if keeps_motion(r, paper) else "motion lost"),
            f"{r.seconds / (len(r.per_video) * args.frames) * 1000:.0f}",
        ])  # fmt: skip
    nvid = len(args.prompts) * len(args.seeds)
    print(f"### shared-level toy denoiser: {nvid} video(s) per setting, {args.frames} frames each (± sd over videos)\n")
    print(table(["setting", "windows/frame", "x paper", "steps/frame", "counted", "motion %", "fidelity MAE", "drift",
                 "identity %", "Pareto", "gen ms/frame"], rows))  # fmt: skip
    print("\nwindows/frame: window calls per emitted latent frame, n/b (2n/b with lookahead), x2 with guidance on a real "
          "model; counted: the same, counted at the backbone; drift: fidelity MAE of the last stretch minus the first; "
          "Pareto: among the settings whose motion is within 0.5 points of the paper default's, no other is both cheaper "
          "and better in fidelity (motion lost: motion more than 0.5 points below it); gen ms/frame: wall time of the toy world's "
          "generation per frame on this machine, decoding included, under whatever load it had (not a GPU figure)")  # fmt: skip
    if paper is not None:
        pm, pf = paper.mean("motion"), paper.mean("fidelity")
        reach = [r for r in results if r.mean("fidelity") <= pf and keeps_motion(r, paper)]
        cheapest = min(reach, key=lambda r: (r.setting.cost, r.mean("fidelity")))
        quarter = [r for r in results if r.setting.cost <= PAPER.cost / 4 and keeps_motion(r, paper)]
        print(f"\npaper default ({PAPER.label}, {PAPER.cost:g} windows/frame): motion {100 * pm:.1f} %, fidelity {pf:.2f}")
        print(f"cheapest setting with fidelity <= the paper default's and motion within 0.5 points: {cheapest.setting.label}, "
              f"{cheapest.setting.cost:g} windows/frame (motion {100 * cheapest.mean('motion'):.1f} %, fidelity {cheapest.mean('fidelity'):.2f})")  # fmt: skip
        if quarter:
            best = min(quarter, key=lambda r: r.mean("fidelity"))
            print(f"best fidelity with motion kept at <= a quarter of its cost ({PAPER.cost / 4:g} windows/frame): {best.setting.label}, "
                  f"{best.setting.cost:g} windows/frame (motion {100 * best.mean('motion'):.1f} %, fidelity {best.mean('fidelity'):.2f})")  # fmt: skip
    if args.plot:
        plot(results, paper, args, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    raise SystemExit(main())
