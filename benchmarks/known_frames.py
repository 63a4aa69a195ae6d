"""How to seed the FIFO queue from known frames: the alternatives compared on the toy world.

For each prompt and seed: make a toy video, cut its last 16 frames, continue what is left with
the same prompt and a different seed, and look at the seam. The toy world knows every true clip,
so "coherent across the seam" is exact: the sprite's positions over the last 8 known and the first
8 new frames must be one of the world's true 16-frame clips (same path, direction and speed).

Methods (all start from the same encoded latents):
    hold        known frames sit in the queue at each rung's level until they leave it, re-noised
                from the known latents after every step; a clip shorter than the window is first
                completed by the warm-start clip with its known frames clean at timestep 0 (the
                engine's method)
    renoised    as hold, but the warm-start clip's known frames are re-noised to the clip's level
                at each of its steps (replacement) instead of clean
    seed-only   known frames fill the first queue at their rungs' levels, then are denoised like
                any other frame (no holding)
    restart     no known frames: a fresh run with the same prompt (the baseline)

    python benchmarks/known_frames.py            # 64x64, f = 16, n = 1, lookahead; clips of 32, 4 and 1 frames

Prints one row per (clip length, method): seams that are a true clip, and the mean and worst
distance (latent px, L1) between the first new position and the one the known motion predicts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import fifo
from fifo.backbones.encoders import known_latents
from fifo.backbones.toy import ToyBackbone, clip_positions, locate_sprite, parse_prompt

PROMPTS = ("a red ball moving right", "a blue square moving down fast", "a yellow ball moving up-left slow")
SEEDS = (0, 1)
SEAM = 8  # frames either side of the seam


class RenoisedClipStream(fifo.FIFOStream):
    """Known frames of the warm-start clip re-noised to each of its levels (replacement), not clean at timestep 0."""

    def _known_clip_frames(self, x: torch.Tensor, t: torch.Tensor, first_latent: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(self._known.shape[1] - first_latent, x.shape[1])
        if n <= 0:
            return x, t
        x = x.clone()
        level = int((self.ladder.timesteps.float() - t[0, -1].cpu()).abs().argmin())  # the clip's rung
        a, s = (v[level].expand(n) for v in (self.ladder.alphas, self.ladder.sigmas))
        x[:, :n] = self._renoised_known(list(range(first_latent, first_latent + n)), a, s, -2 - level)
        return x, t


class SeedOnlyStream(fifo.FIFOStream):
    """Known frames only in the first queue: after that, denoised like any other frame."""

    def _hold_known(self, main: torch.Tensor, k: int, stepped: bool = True) -> None:
        if not stepped:
            super()._hold_known(main, k, stepped)


def predicted_next(p: np.ndarray, q: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Where constant-speed bouncing motion from p to q goes next (per axis, within [0, hi])."""
    n = q + (q - p)
    n = np.where(n > hi, 2 * hi - n, n)
    return np.where(n < 0, -n, n)


def seam(bb: ToyBackbone, prompt: str, known: np.ndarray, new: np.ndarray) -> tuple[bool, int | None]:
    """(the seam is a true clip of the world, L1 distance of the first new position from the prediction).

    The seam: the last min(8, K) known frames and the first 8 new ones; a picture (K = 1) predicts
    no direction, so its distance is None.
    """
    world = parse_prompt(prompt)
    m = min(SEAM, len(known))
    joined = np.concatenate([known[-m:], new[:SEAM]])
    pos = locate_sprite(world, bb.encode_frames(joined)).numpy()  # (m + SEAM, 2) (y, x)
    lh, lw = bb.latent_size(bb.defaults.height, bb.defaults.width)
    true = clip_positions(world, len(pos), lh, lw).numpy()
    is_true = bool((true == pos[None]).all(axis=(1, 2)).any())
    if m < 2:
        return is_true, None
    hi = np.array([lh, lw]) - 8
    return is_true, int(np.abs(pos[m] - predicted_next(pos[m - 2], pos[m - 1], hi)).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--clips", type=int, nargs="+", default=[32, 4, 1], help="known clip lengths (frames)")
    args = p.parse_args()
    bb = ToyBackbone(height=args.size, width=args.size)
    cfg = fifo.FIFOConfig(partitions=args.partitions)
    rows = []
    start = time.perf_counter()
    for K in args.clips:
        res: dict[str, list[tuple[bool, int]]] = {m: [] for m in ("hold", "renoised", "seed-only", "restart")}
        for prompt in PROMPTS:
            for seed in SEEDS:
                video = np.stack(list(fifo.generate(bb, prompt, K + 16, cfg, seed=seed)))
                clip = video[:-16][-K:]
                known = known_latents(bb, clip, args.size, args.size)
                for method in res:
                    if method == "restart":
                        stream = fifo.FIFOStream(bb, prompt, cfg, seed=seed + 100)
                    else:
                        cls = {"hold": fifo.FIFOStream, "renoised": RenoisedClipStream, "seed-only": SeedOnlyStream}[method]
                        stream = cls(bb, prompt, cfg, seed=seed + 100, known=known)
                    new = np.stack(list(stream.frames(SEAM)))
                    res[method].append(seam(bb, prompt, clip, new))
        for method, r in res.items():
            ok = sum(t for t, _ in r)
            errs = [e for _, e in r if e is not None]
            mean, worst = (f"{np.mean(errs):.1f}", max(errs)) if errs else ("n/a", "n/a")
            rows.append((K, method, f"{ok}/{len(r)}", mean, worst))
    print(f"toy world {args.size}x{args.size}, f=16, n={args.partitions}, lookahead; {len(PROMPTS)} prompts x {len(SEEDS)} seeds")
    print(f"{'clip':>5} {'method':<10} {'true seams':>10} {'mean err':>9} {'worst':>6}")
    for K, m, ok, mean, worst in rows:
        print(f"{K:>5} {m:<10} {ok:>10} {mean:>9} {worst:>6}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
