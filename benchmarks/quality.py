"""Quality: does a FIFO video stay coherent for 1,000+ frames? Measured on the toy world, where truth is known.

    python benchmarks/quality.py            # default: 3 prompts x 2 seeds x 1000 frames, f = 16
    python benchmarks/quality.py --full     # 6 prompts x 3 seeds x 2000 frames
    python benchmarks/quality.py --frames 300 --prompts "a red ball moving right" --seeds 0

Methods (each makes `--frames` video frames per prompt and seed):

  fifo-diag      FIFO, diagonal denoising alone: n = 1, no lookahead (L = f steps per frame)
  fifo-part      FIFO with latent partitioning: n = 4 (L = 4f)
  fifo-part-la   FIFO with partitioning and lookahead denoising: n = 4, f // 2 context frames
  concat         independent f-frame clips concatenated (4f steps each)
  extend         clip-by-clip extension: each clip's first f // 2 frames are the previous clip's
                 last ones, put back at every step at the current level with fresh keyed noise

Two modes of the toy denoiser: `exact` (Bayes-optimal given each frame's own noise level) and
`shared` (`ToyBackbone(shared_level=True)`: it takes every frame of a window to sit at the window's
mean alpha-bar, like a model trained on clips whose frames share one level). Every frame of a
baseline's model call sits at one level, so both modes give a baseline the same frames: the
baselines are sampled once (exact) and listed under both modes; the run checks this on a short
video of each baseline.

Metrics, from the decoded uint8 frames alone (what an outsider sees), against the world the prompt
names (rendered and decoded by the toy's own `render_clip` and `ToyDecoder`):

  motion     the fraction of frame-to-frame transitions that obey the world's dynamics. The sprite
             is tracked by template matching: each frame, area-downsampled to latent size, against
             the true frame with the sprite at every position (least squares). A transition is
             right when the pair of positions is a true 2-frame clip (each axis moves by exactly
             the speed, or reflects off a wall) and, if the transition before it was right, the
             three positions are a true 3-frame clip (no turning back in mid-air). A 1-px slip
             counts; `jumps` counts only transitions moving more than speed + 1 px on an axis.
  seams      baselines only: broken transitions into the first frame of a new clip / seams.
  fidelity   the distance of each frame to the nearest true frame: min over sprite positions of
             the mean absolute error (8-bit levels, 0-255) against the rendered true frame at full
             resolution. The min runs over the `--candidates` positions best by the tracker's
             least squares; every `--audit-every`-th frame is also searched over all positions and
             the largest difference is printed. `true frames`: frames within 1 level, at every
             pixel, of a true frame.
  identity   the fraction of frames whose sprite keeps the prompt's colour and shape: the mean
             colour of the tracked sprite's central 4x4 latent pixels is nearest (of the palette
             and the background) to the prompt's colour, and the coverage around it is nearer the
             prompt's shape (ball or square) than the other.
  ghost      diagnostic: the strongest second sprite in the residual (frame minus the nearest true
             frame), as a fraction of a full sprite, away from the tracked one; with the background
             noise (RMS error against the empty frame outside the sprite's box) and the noise level
             the shared-level model assigns to the frame taking its last step.
  drift      each metric per `--stretch`-frame stretch of the video (first, last, worst stretch),
             and plotted against the frame index.

Prints Markdown tables (one per mode, per prompt, drift per stretch, diagnostics) and writes the plot to
`--plot` (default docs/quality.png). The default run takes about 10 minutes on 2 shared CPU cores
with 1 torch thread (the run prints its own wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fifo  # noqa: E402
from benchmarks.baselines import clip_starts, concat_clips, extend_clips  # noqa: E402
from benchmarks.common import machine, set_threads, table  # noqa: E402
from fifo.backbones.toy import (  # noqa: E402
    BACKGROUND,
    COLOURS,
    COMPRESSION,
    SPRITE,
    ToyBackbone,
    ToyDecoder,
    ToyWorld,
    clip_positions,
    parse_prompt,
    render_clip,
)
from fifo.cpu import keep_freed_memory  # noqa: E402
from fifo.schedule import make_ladder, slot_timesteps, windows  # noqa: E402

PROMPTS = ["a red ball moving right", "a yellow square moving down-left fast", "a cyan ball moving up slowly"]
FULL_PROMPTS = PROMPTS + ["a white square moving down", "a magenta ball moving up-right", "a green square moving left slowly"]
SEEDS, FULL_SEEDS = [0, 1], [0, 1, 2]
MODES = ("exact", "shared")


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    partitions: int = 0  # FIFO only
    lookahead: bool = False

    @property
    def fifo(self) -> bool:
        return self.key.startswith("fifo")


def methods(partitions: int) -> list[Method]:
    n = partitions
    return [
        Method("fifo-diag", "FIFO diagonal (n=1)", 1, False),
        Method("fifo-part", f"FIFO + partitions (n={n})", n, False),
        Method("fifo-part-la", f"FIFO + partitions + lookahead (n={n})", n, True),
        Method("concat", "concatenated clips"),
        Method("extend", "extension by replacement"),
    ]


# -- the truth an outsider knows: the world the prompt names, rendered --------------------------


def to_small(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> float (N, 3, H / 4, W / 4) in [-1, 1], 4x4 area means (latent size)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
    return F.avg_pool2d(x, COMPRESSION)


class Truth:
    """One world's true frames at every sprite position, full size (uint8) and latent size, and its dynamics."""

    def __init__(self, world: ToyWorld, height: int, width: int) -> None:
        self.world = world
        self.lh, self.lw = lh, lw = height // COMPRESSION, width // COMPRESSION
        ys, xs = torch.meshgrid(torch.arange(lh - SPRITE + 1), torch.arange(lw - SPRITE + 1), indexing="ij")
        self.positions = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)  # (P, 2) (y, x)
        self.refs = self.render(world)  # (P, H, W, 3) uint8
        # a true frame differs from the empty one only in a box around the sprite: the pixel error
        # against it is sum |g - empty| - sum_box |g - empty| + sum_box |g - true|, one box's work
        empty = ToyDecoder().decode(torch.full((3, 1, lh, lw), BACKGROUND))[0]
        self.empty = torch.from_numpy(empty).short()
        diff = (self.refs != empty[None]).any(-1)  # (P, H, W)
        rows, cols = diff.any(2), diff.any(1)
        y0, y1 = rows.argmax(1), height - rows[:, ::-1].argmax(1)
        x0, x1 = cols.argmax(1), width - cols[:, ::-1].argmax(1)
        self.box = S = int(max((y1 - y0).max(), (x1 - x0).max()))
        self.box_y = torch.from_numpy(np.minimum(y0, height - S)).long()  # (P,) top-left of an S x S box holding the sprite
        self.box_x = torch.from_numpy(np.minimum(x0, width - S)).long()
        every = torch.arange(len(self.refs))[:, None]
        self.ref_crops = self._crops(torch.from_numpy(self.refs).short(), every, every)[:, 0]  # (P, S, S, 3)
        small = to_small(self.refs)  # (P, 3, lh, lw)
        self.small = small.reshape(len(small), -1)
        self.small_sq = (self.small**2).sum(1)
        # the sprite's coverage at every position as the decoder and downsampling show it, per shape
        white = np.full(3, 0.9 - BACKGROUND)
        self.coverage = {}
        for shape in ("ball", "square"):
            s = to_small(self.render(ToyWorld(shape, "white", 1, 0, "slow")))
            w = torch.from_numpy(white).float()
            self.coverage[shape] = torch.einsum("c,pchw->phw", w, s - BACKGROUND) / float(white @ white)
        self.palette = {**{k: torch.tensor(v) for k, v in COLOURS.items()}, "background": torch.full((3,), BACKGROUND)}
        # the dynamics: codes of every true 2- and 3-frame clip
        self.pairs = self._codes(clip_positions(world, 2, lh, lw))
        self.triples = self._codes(clip_positions(world, 3, lh, lw))

    def render(self, world: ToyWorld) -> np.ndarray:
        return ToyDecoder().decode(render_clip(world, self.positions, self.lh, self.lw).float())

    def _state(self, pos: torch.Tensor) -> np.ndarray:
        return (pos[..., 0] * self.lw + pos[..., 1]).numpy().astype(np.int64)

    def _codes(self, clips: torch.Tensor) -> np.ndarray:
        s, M = self._state(clips), self.lh * self.lw
        code = np.zeros(len(s), np.int64)
        for j in range(s.shape[1]):
            code = code * M + s[:, j]
        return np.unique(code)

    # -- measuring ------------------------------------------------------------------------------

    def track(self, small: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares template matching: (best position index (N,), the k best (N, k)) per frame."""
        x = small.reshape(len(small), -1)
        d2 = (x**2).sum(1, keepdim=True) - 2 * x @ self.small.t() + self.small_sq[None]
        cand = d2.topk(min(k, d2.shape[1]), dim=1, largest=False).indices
        return cand[:, 0], cand

    def _crops(self, g: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The S x S boxes of positions idx (N, k) cut from images g[rows] -> (N, k, S, S, 3)."""
        r = torch.arange(self.box)
        yy = (self.box_y[idx][..., None] + r)[..., :, None]  # (N, k, S, 1)
        xx = (self.box_x[idx][..., None] + r)[..., None, :]  # (N, k, 1, S)
        return g[rows[..., None, None], yy, xx]

    def mae(self, frames: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """Mean abs error (8-bit levels) of each frame (N, H, W, 3) against the true frames idx (N, k)."""
        g = torch.from_numpy(np.ascontiguousarray(frames)).short()
        n = len(g)
        e = (g - self.empty).abs().sum(-1, dtype=torch.int32)  # (N, H, W) error against the empty frame (< 2^31)
        total = e.flatten(1).sum(1, dtype=torch.int64)
        cum = F.pad(e.cumsum(1, dtype=torch.int64).cumsum(2), (1, 0, 1, 0))  # box sums of e from an integral image
        y, x, S, nn = self.box_y[idx], self.box_x[idx], self.box, torch.arange(n)[:, None]
        inside_empty = cum[nn, y + S, x + S] - cum[nn, y, x + S] - cum[nn, y + S, x] + cum[nn, y, x]
        crop = self._crops(g, nn.expand_as(idx), idx)  # (N, k, S, S, 3)
        inside_true = (crop - self.ref_crops[idx]).abs().flatten(2).sum(2, dtype=torch.int32)
        return (total[:, None] - inside_empty + inside_true.long()).double() / g[0].numel()

    def exactness(self, frames: np.ndarray, ref: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: (within 1 level everywhere of the true frame ref (N,), RMS error outside its sprite box in 8-bit levels)."""
        g = torch.from_numpy(np.ascontiguousarray(frames)).short()
        r = torch.from_numpy(self.refs)[ref].short()
        within = (g - r).abs().flatten(1).amax(1) <= 1
        e2 = ((g - self.empty).double() ** 2).sum(-1)  # (N, H, W)
        y, x, S, nn = self.box_y[ref], self.box_x[ref], self.box, torch.arange(len(g))
        cum = F.pad(e2.cumsum(1).cumsum(2), (1, 0, 1, 0))
        inside = cum[nn, y + S, x + S] - cum[nn, y, x + S] - cum[nn, y + S, x] + cum[nn, y, x]
        outside = (e2.flatten(1).sum(1) - inside).clamp_min(0) / ((e2[0].numel() - S * S) * 3)
        return within.numpy(), outside.sqrt().numpy()

    def jumps(self, pos: torch.Tensor) -> np.ndarray:
        """Per transition: the sprite moves more than the speed + 1 latent px on an axis (a jump, not a slip)."""
        d = (pos[1:] - pos[:-1]).abs()
        return ((d[:, 0] > abs(self.world.vy) + 1) | (d[:, 1] > abs(self.world.vx) + 1)).numpy()

    def motion(self, pos: torch.Tensor) -> np.ndarray:
        """Per transition t -> t + 1 (N - 1,): does it obey the world's dynamics (see the module doc)?"""
        s, M = self._state(pos), self.lh * self.lw
        pair_ok = np.isin(s[:-1] * M + s[1:], self.pairs)
        triple_ok = np.isin((s[:-2] * M + s[1:-1]) * M + s[2:], self.triples)
        ok = pair_ok.copy()
        ok[1:] &= ~pair_ok[:-1] | triple_ok
        return ok

    def identity(self, small: torch.Tensor, pos: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Per frame: colour kept, shape kept, and the colour name seen."""
        n = len(small)
        ar = torch.arange(n)
        core = torch.stack([small[ar, :, pos[:, 0] + i, pos[:, 1] + j] for i in range(2, 6) for j in range(2, 6)]).mean(0)  # (N, 3)
        names = list(self.palette)
        pal = torch.stack([self.palette[k] for k in names])  # (K, 3)
        seen = [names[i] for i in torch.cdist(core.double(), pal.double()).argmin(1).tolist()]
        colour_ok = np.array([c == self.world.colour for c in seen])
        # shape: coverage seen (projected on the colour seen) against each shape's coverage at that position
        delta = torch.stack([self.palette[self.world.colour if c == "background" else c] for c in seen]) - BACKGROUND
        cov = torch.einsum("nc,nchw->nhw", delta, small - BACKGROUND) / (delta**2).sum(1)[:, None, None]
        pidx = pos[:, 0] * (self.lw - SPRITE + 1) + pos[:, 1]
        err = {s: ((cov - self.coverage[s][pidx]) ** 2).sum((1, 2)) for s in ("ball", "square")}
        shape_seen = np.where((err["ball"] <= err["square"]).numpy(), "ball", "square")
        shape_ok = (shape_seen == self.world.shape) & np.array([c != "background" for c in seen])
        return colour_ok, shape_ok, seen

    def ghost(self, small: torch.Tensor, best: torch.Tensor) -> np.ndarray:
        """Strongest second sprite in the residual, in full sprites, at positions not overlapping the tracked one."""
        delta = self.palette[self.world.colour] - BACKGROUND
        res = small - self.small[best].view_as(small)
        a = torch.einsum("c,nchw->nhw", delta, res) / float(delta @ delta)
        # template: the shape's coverage at an interior position, with its 1-pixel blur margin
        R = self.lh - SPRITE
        p = (R // 2) * (self.lw - SPRITE + 1) + (self.lw - SPRITE) // 2
        y0, x0 = R // 2 - 1, (self.lw - SPRITE) // 2 - 1
        t = self.coverage[self.world.shape][p, y0 : y0 + SPRITE + 2, x0 : x0 + SPRITE + 2]
        g = F.conv2d(F.pad(a[:, None], (1, 1, 1, 1)), t[None, None])[:, 0] / (t**2).sum()  # (N, lh - 7, lw - 7)
        g = g[:, : self.lh - SPRITE + 1, : self.lw - SPRITE + 1]
        gy = torch.arange(g.shape[1])[None, :, None]
        gx = torch.arange(g.shape[2])[None, None, :]
        pos = self.positions[best]
        near = ((gy - pos[:, 0, None, None]).abs() < SPRITE) & ((gx - pos[:, 1, None, None]).abs() < SPRITE)
        return g.masked_fill(near, -1e9).flatten(1).amax(1).clamp_min(0).numpy()

    def measure(self, frames: np.ndarray, candidates: int = 16, audit_every: int = 0) -> dict:
        """Every per-frame metric of one video (uint8 (N, H, W, 3)); see the module doc."""
        out: dict = {}
        fid, best, col, shp, gh, seen, true, noise = [], [], [], [], [], [], [], []
        audit = []
        for lo in range(0, len(frames), 250):  # chunks bound the memory
            fr = frames[lo : lo + 250]
            small = to_small(fr)
            b, cand = self.track(small, candidates)
            d = self.mae(fr, cand)
            dmin = d.min(1)
            fid.append(dmin.values)
            ref = cand[torch.arange(len(cand)), dmin.indices]
            w_, n_ = self.exactness(fr, ref)
            true.append(w_)
            noise.append(n_)
            best.append(b)
            c, s, names = self.identity(small, self.positions[b])
            col.append(c)
            shp.append(s)
            seen += names
            gh.append(self.ghost(small, b))
            if audit_every:
                for j in range(-lo % audit_every, len(fr), audit_every):
                    full = self.mae(fr[j : j + 1], torch.arange(len(self.positions))[None]).min().item()
                    audit.append(fid[-1][j].item() - full)
        best = torch.cat(best)
        pos = self.positions[best]
        out["pos"] = pos.numpy()
        out["fidelity"] = torch.cat(fid).numpy()
        out["colour_ok"], out["shape_ok"] = np.concatenate(col), np.concatenate(shp)
        out["identity"] = out["colour_ok"] & out["shape_ok"]
        out["ghost"] = np.concatenate(gh)
        out["motion"] = self.motion(pos)
        out["jump"] = self.jumps(pos)
        out["true"] = np.concatenate(true)
        out["noise"] = np.concatenate(noise)
        out["audit"] = audit  # candidate min - exhaustive min, >= 0; 0 where the candidates hold the min
        out["colours_seen"] = {k: seen.count(k) for k in set(seen)}
        return out


# -- making the videos -----------------------------------------------------------------------


def fifo_video(prompt: str, mode: str, m: Method, args, seed: int) -> np.ndarray:
    bb = ToyBackbone(height=args.size, width=args.size, shared_level=(mode == "shared"))
    cfg = fifo.FIFOConfig(frames_per_window=args.f, partitions=m.partitions, lookahead=m.lookahead)
    return np.stack(list(fifo.generate(bb, prompt, args.frames, cfg, seed=seed)))


def baseline_videos(prompt: str, m: Method, args, seeds: list[int], mode: str = "exact", frames: int | None = None) -> list:
    bb = ToyBackbone(height=args.size, width=args.size, shared_level=(mode == "shared"))
    n = args.frames if frames is None else frames
    if m.key == "concat":
        return concat_clips(bb, prompt, n, args.f, args.steps, seed=seeds)
    return extend_clips(bb, prompt, n, args.f, args.steps, overlap=args.overlap, seed=seeds)


def level_gap(f: int, n: int, lookahead: bool) -> tuple[float, float, float]:
    """The shared-level model's error in sigma: (head frame's own sigma, the sigma it is taken at, mean |gap| over main slots)."""
    bb = ToyBackbone()
    lad = make_ladder(bb.noise_schedule, f * n)
    h = f // 2 if lookahead else 0
    ac = torch.tensor(bb.noise_schedule.alphas_cumprod, dtype=torch.float64)
    ab = ac[slot_timesteps(lad, h).round().long()]
    gaps, head = [], None
    for w in windows(f, n, lookahead):
        shared = ab[w.start : w.stop].mean()
        for j in range(w.write_from, w.stop):
            g = ((1 - shared).sqrt() - (1 - ab[j]).sqrt()).abs().item()
            gaps.append(g)
            if j == h:
                head = ((1 - ab[j]).sqrt().item(), (1 - shared).sqrt().item())
    return head[0], head[1], float(np.mean(gaps))


# -- summaries --------------------------------------------------------------------------------


@dataclass
class Agg:
    """One (mode, method)'s measurements over all its videos."""

    videos: list = field(default_factory=list)  # (prompt, seed, measurement dict)
    seconds: float = 0.0
    seams: list = field(default_factory=list)  # per video: (broken seams, seams)

    def cat(self, key: str) -> np.ndarray:
        return np.concatenate([v[2][key] for v in self.videos])

    def stretches(self, key: str, size: int) -> np.ndarray:
        """Per-stretch mean of a per-frame (or per-transition) metric, averaged over the videos."""
        per = []
        for _, _, d in self.videos:
            x = d[key].astype(float)
            k = -(-len(x) // size)
            per.append([x[i * size : (i + 1) * size].mean() for i in range(k)])
        return np.mean(np.array(per), axis=0)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summary_rows(aggs: dict, mlist: list[Method], mode: str, stretch: int) -> list[list]:
    rows = []
    for m in mlist:
        a = aggs[mode, m.key]
        mot, fid, ide = a.stretches("motion", stretch), a.stretches("fidelity", stretch), a.stretches("identity", stretch)
        seams = "-"
        if a.seams:
            broken, total = map(sum, zip(*a.seams))
            seams = f"{broken}/{total}"
        rows.append([
            m.label,
            pct(a.cat("motion").mean()), pct(mot.min()), pct(a.cat("jump").mean()), seams,
            f"{a.cat('fidelity').mean():.2f}", f"{fid[0]:.2f}", f"{fid[-1]:.2f}", f"{fid.max():.2f}",
            pct(a.cat("true").mean()),
            pct(a.cat("identity").mean()), pct(ide.min()),
            f"{a.seconds:.0f}",
        ])  # fmt: skip
    return rows


HEADERS = [
    "method", "motion %", "worst stretch", "jumps %", "seams broken", "fidelity MAE", "first stretch", "last stretch",
    "worst stretch", "true frames %", "identity %", "worst stretch", "gen s",
]  # fmt: skip


def plot(aggs: dict, mlist: list[Method], args, thumbs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("motion", "motion consistency (%)", 100), ("fidelity", "fidelity: MAE to nearest true frame (0-255)", 1),
               ("identity", "identity kept (%)", 100), ("ghost", "ghost: 2nd-sprite strength", 1)]  # fmt: skip
    fig = plt.figure(figsize=(14, 4 * len(metrics) + 4.2), constrained_layout=True)
    sub = fig.subfigures(2, 1, height_ratios=[4 * len(metrics), 4.2])
    axes = sub[0].subplots(len(metrics), 2, sharex=True)
    colours = dict(zip([m.key for m in mlist], ["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"]))
    styles = {"concat": "--", "extend": ":"}
    for c, mode in enumerate(MODES):
        for r, (key, title, scale) in enumerate(metrics):
            ax = axes[r, c]
            for m in mlist:
                y = aggs[mode, m.key].stretches(key, args.stretch) * scale
                x = (np.arange(len(y)) + 0.5) * args.stretch
                ax.plot(x, y, styles.get(m.key, "-"), marker="o", ms=3, color=colours[m.key], label=m.label)
            ax.set_title(f"{mode} denoiser: {title}", fontsize=10)
            ax.grid(alpha=0.3)
            if scale == 100:
                lo = min(aggs[md, m.key].stretches(key, args.stretch).min() for md in MODES for m in mlist) * 100
                ax.set_ylim(min(lo - 1, 99), 100.5)
            if key == "fidelity":
                ax.set_yscale("symlog", linthresh=0.1)
        axes[-1, c].set_xlabel(f"video frame (means over {args.stretch}-frame stretches, all prompts and seeds)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    # thumbnails: three consecutive frames per method, first prompt and seed, from the middle of the video
    tax = sub[1].subplots(2, len(mlist))
    for r, mode in enumerate(MODES):
        for c, m in enumerate(mlist):
            ax = tax[r, c]
            ax.imshow(thumbs[mode, m.key])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{mode}: {m.label}", fontsize=8)
    sub[1].suptitle(f"frames {args.frames // 2}-{args.frames // 2 + 2} of {args.prompts[0]!r}, seed {args.seeds[0]}", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the long run: 6 prompts, 3 seeds, 2000 frames")
    p.add_argument("--frames", type=int, default=None, help="video frames per video (default 1000; --full 2000)")
    p.add_argument("--prompts", nargs="+", default=None, help="toy prompts (default: 3 named in PROMPTS; --full 6)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1; --full 0 1 2)")
    p.add_argument("--f", type=int, default=16, help="frames per window (the toy's native 16)")
    p.add_argument("--partitions", type=int, default=4, help="n of the partitioned variants (default 4)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps of each baseline clip (default f * partitions)")
    p.add_argument("--overlap", type=int, default=None, help="extension baseline: known frames per clip (default f // 2)")
    p.add_argument("--size", type=int, default=128, help="video side in pixels (toy default 128: latent 32)")
    p.add_argument("--stretch", type=int, default=100, help="frames per stretch for drift (default 100)")
    p.add_argument("--candidates", type=int, default=16, help="positions searched for the fidelity min (default 16)")
    p.add_argument("--audit-every", type=int, default=250, help="search every k-th frame over all positions too (0: never)")
    p.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(m.key for m in methods(4)))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of exact,shared")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier and faster on a shared box)")
    p.add_argument("--plot", default="docs/quality.png", help="where to write the plot ('' for none)")
    p.add_argument("--json", default="", help="also write the summary numbers to this JSON file")
    args = p.parse_args(argv)
    args.frames = args.frames or (2000 if args.full else 1000)
    args.prompts = args.prompts or (FULL_PROMPTS if args.full else PROMPTS)
    args.seeds = args.seeds or (FULL_SEEDS if args.full else SEEDS)
    args.steps = args.steps or args.f * args.partitions
    args.overlap = args.f // 2 if args.overlap is None else args.overlap
    mlist = methods(args.partitions)
    if args.methods:
        keep = args.methods.split(",")
        mlist = [m for m in mlist if m.key in keep]
    modes = [m for m in args.modes.split(",") if m]
    set_threads(args.threads)
    keep_freed_memory()  # ~25% faster toy steps (fifo/cpu.py); the frames are the same
    t_start = time.perf_counter()
    print(f"# benchmarks/quality.py {' '.join(argv if argv is not None else sys.argv[1:])}\n\n{machine()}\n")
    print(f"prompts: {args.prompts}\nseeds: {args.seeds}\nframes per video: {args.frames}; f = {args.f}, n = {args.partitions}, "
          f"baseline steps = {args.steps}, extension overlap = {args.overlap}, {args.size}x{args.size} px\n", flush=True)  # fmt: skip
    for pr in args.prompts:
        parse_prompt(pr)  # unknown words fail before any work

    aggs = {(mode, m.key): Agg() for mode in MODES for m in mlist}
    thumbs: dict = {}
    audit: list[float] = []
    mid = args.frames // 2
    for prompt in args.prompts:
        truth = Truth(parse_prompt(prompt), args.size, args.size)
        for m in mlist:
            if m.fifo:
                for mode in modes:
                    for seed in args.seeds:
                        t = time.perf_counter()
                        v = fifo_video(prompt, mode, m, args, seed)
                        dt = time.perf_counter() - t
                        d = truth.measure(v, args.candidates, args.audit_every)
                        audit += d["audit"]
                        aggs[mode, m.key].videos.append((prompt, seed, d))
                        aggs[mode, m.key].seconds += dt
                        if prompt == args.prompts[0] and seed == args.seeds[0]:
                            thumbs[mode, m.key] = np.concatenate(list(v[mid : mid + 3]), axis=1)
                        print(f"  {prompt!r} seed {seed} {mode} {m.key}: motion {pct(d['motion'].mean())} %, "
                              f"fidelity {d['fidelity'].mean():.2f}, identity {pct(d['identity'].mean())} %, "
                              f"gen {dt:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
            else:
                t = time.perf_counter()
                vids = baseline_videos(prompt, m, args, args.seeds)
                dt = time.perf_counter() - t
                starts = clip_starts(m.key, args.frames, args.f, args.overlap)
                for seed, v in zip(args.seeds, vids):
                    d = truth.measure(v, args.candidates, args.audit_every)
                    audit += d["audit"]
                    seam = (int((~d["motion"][np.array(starts) - 1]).sum()), len(starts)) if starts else (0, 0)
                    for mode in modes:
                        aggs[mode, m.key].videos.append((prompt, seed, d))
                        aggs[mode, m.key].seams.append(seam)
                        if prompt == args.prompts[0] and seed == args.seeds[0]:
                            thumbs[mode, m.key] = np.concatenate(list(v[mid : mid + 3]), axis=1)
                    print(f"  {prompt!r} seed {seed} {m.key}: motion {pct(d['motion'].mean())} %, "
                          f"seams broken {seam[0]}/{seam[1]}, fidelity {d['fidelity'].mean():.2f}, "
                          f"identity {pct(d['identity'].mean())} %", file=sys.stderr, flush=True)  # fmt: skip
                for mode in modes:
                    aggs[mode, m.key].seconds += dt

    # the baselines' frames do not depend on the mode: check it on a short video of each
    same = {}
    if "shared" in modes:
        n_check = args.f + 2 * (args.f - args.overlap)
        for m in mlist:
            if not m.fifo:
                a = baseline_videos(args.prompts[0], m, args, args.seeds[:1], "exact", n_check)[0]
                b = baseline_videos(args.prompts[0], m, args, args.seeds[:1], "shared", n_check)[0]
                same[m.key] = (bool(np.array_equal(a, b)), int(np.abs(a.astype(int) - b.astype(int)).max()), n_check)

    nvid = len(args.prompts) * len(args.seeds)
    for mode in modes:
        print(f"\n### {mode} denoiser: {nvid} videos per method ({len(args.prompts)} prompts x {len(args.seeds)} seeds), "
              f"{args.frames} frames each, stretches of {args.stretch} frames\n")  # fmt: skip
        print(table(HEADERS, summary_rows(aggs, mlist, mode, args.stretch)))
    print("\nmotion %: transitions obeying the dynamics (worst stretch: the lowest stretch mean); jumps %: transitions moving "
          "more than speed + 1 latent px on an axis; seams broken: broken transitions into a baseline's new clip / seams; "
          "fidelity MAE: 8-bit levels to the nearest true frame, per frame, mean (first / last / worst stretch); true frames %: "
          "frames within 1 level everywhere of a true frame; identity %: the prompt's colour and shape kept; gen s: generation "
          "wall time of all the row's videos (baselines: sampled once, listed under both modes)")  # fmt: skip

    print("\n### per prompt (mean over seeds): motion % / fidelity MAE / identity %\n")
    rows = []
    for mode in modes:
        for m in mlist:
            a = aggs[mode, m.key]
            row = [mode, m.key]
            for prompt in args.prompts:
                ds = [d for pr, _, d in a.videos if pr == prompt]
                mean = {k: np.mean([d[k].mean() for d in ds]) for k in ("motion", "fidelity", "identity")}
                row.append(f"{pct(mean['motion'])} / {mean['fidelity']:.2f} / {pct(mean['identity'])}")
            rows.append(row)
    print(table(["mode", "method"] + args.prompts, rows))

    for key, name, fmt in (("motion", "motion %", lambda v: pct(v)), ("fidelity", "fidelity MAE", lambda v: f"{v:.2f}"),
                           ("ghost", "ghost (mean)", lambda v: f"{v:.3f}")):  # fmt: skip
        rows = [[mode, m.key] + [fmt(v) for v in aggs[mode, m.key].stretches(key, args.stretch)] for mode in modes for m in mlist]
        starts = [f"{i * args.stretch}-" for i in range(len(rows[0]) - 2)]
        print(f"\n### drift: {name} per {args.stretch}-frame stretch (mean over videos), by first frame of the stretch\n")
        print(table(["mode", "method"] + starts, rows))

    print("\n### diagnostics: why the shared-level model's frames go wrong\n")
    rows = []
    for mode in modes:
        for m in mlist:
            a = aggs[mode, m.key]
            own = taken = left = "-"
            if m.fifo:
                own, taken, _ = level_gap(args.f, m.partitions, m.lookahead)
                if mode == "shared":
                    a_own = (1 - own**2) ** 0.5
                    left = f"{own * (1 - own / taken) / a_own:.3f}"
                else:
                    taken, left = own, "0"
                own, taken = f"{own:.3f}", f"{taken:.3f}" if isinstance(taken, float) else taken
            gh = a.cat("ghost")
            broken = at_ghost = 0
            for _, _, d in a.videos:
                g = d["ghost"] > 0.25
                bad = ~d["motion"]
                broken += int(bad.sum())
                at_ghost += int((bad & (g[:-1] | g[1:])).sum())
            rows.append([mode, m.key, own, taken, left, f"{a.cat('noise').mean():.2f}", f"{gh.mean():.3f}", pct((gh > 0.25).mean()),
                         f"{at_ghost}/{broken}"])  # fmt: skip
    print(table(["mode", "method", "head frame's own sigma", "sigma the model takes it at", "noise left by the last step (latent std)",
                 "background noise RMS (levels)", "ghost (mean)", "frames with ghost > 0.25 %",
                 "broken transitions next to a ghost > 0.25"], rows))  # fmt: skip
    print("\nhead frame: the frame taking its last step (rung 0 -> clean). The shared-level model takes it at its window's mean "
          "alpha-bar; its noise prediction (x - a' x0) / s' then leaves s (1 - s / s') / a of the frame's own noise in the clean "
          "frame when its clean estimate x0 is right (s, a its own sigma and alpha, s' the sigma it is taken at). Background "
          "noise RMS: the frames' error against the empty frame outside the nearest true frame's sprite box (after decoding: "
          "upsampled, clamped, rounded). Ghost: strongest second sprite in the residual, 1 = a full sprite.")  # fmt: skip
    colours = []
    for mode in modes:
        for m in mlist:
            tot: dict = {}
            for _, _, d in aggs[mode, m.key].videos:
                for k, v in d["colours_seen"].items():
                    tot[k] = tot.get(k, 0) + v
            colours.append([mode, m.key, ", ".join(f"{k} {v}" for k, v in sorted(tot.items(), key=lambda kv: -kv[1]))])
    print("\ncolours seen (frames), all prompts:\n")
    print(table(["mode", "method", "colour seen at the tracked sprite: frames"], colours))
    if audit:
        print(f"\nfidelity search audit: {len(audit)} frames also searched over all {len(truth.positions)} positions; "
              f"largest (candidate min - exhaustive min) = {max(audit):.4f} levels, "
              f"frames differing: {sum(a > 1e-9 for a in audit)}")  # fmt: skip
    for k, (eq, diff, n) in same.items():
        print(f"baseline {k}: exact vs shared-level denoiser on {n} frames of {args.prompts[0]!r}, seed {args.seeds[0]}: "
              f"identical frames {eq} (max |diff| {diff} levels)")  # fmt: skip

    if args.plot and set(modes) == set(MODES):
        plot(aggs, mlist, args, thumbs, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        summary = {
            f"{mode}/{m.key}": {
                "motion": float(aggs[mode, m.key].cat("motion").mean()),
                "fidelity": float(aggs[mode, m.key].cat("fidelity").mean()),
                "identity": float(aggs[mode, m.key].cat("identity").mean()),
                "ghost": float(aggs[mode, m.key].cat("ghost").mean()),
                "jumps": float(aggs[mode, m.key].cat("jump").mean()),
                "true_frames": float(aggs[mode, m.key].cat("true").mean()),
                "background_noise_rms": float(aggs[mode, m.key].cat("noise").mean()),
                "motion_stretches": aggs[mode, m.key].stretches("motion", args.stretch).tolist(),
                "fidelity_stretches": aggs[mode, m.key].stretches("fidelity", args.stretch).tolist(),
                "identity_stretches": aggs[mode, m.key].stretches("identity", args.stretch).tolist(),
                "ghost_stretches": aggs[mode, m.key].stretches("ghost", args.stretch).tolist(),
                "background_noise_stretches": aggs[mode, m.key].stretches("noise", args.stretch).tolist(),
                "seams": aggs[mode, m.key].seams,
                "gen_s": aggs[mode, m.key].seconds,
            }
            for mode in modes
            for m in mlist
        }
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary}, indent=1))
    print(f"\ntotal wall time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
