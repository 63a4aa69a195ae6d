"""A prompt change while the video streams, on the toy world: where it turns, how smoothly, and the remake.

A run starts "moving right"; after frame 20 is out, `FIFOStream.change_prompt("... moving up")`
is called (entry at the tail or the head). Prints per seed and entry: the frame the change was
recorded at, the first frame from which the sprite stops moving right, the largest per-frame step
on each axis over the whole video (the speed is 2 latent px, so 2 means no jump), and whether a
fresh run with the recorded schedule remakes the video frame for frame.

    python benchmarks/steer.py            # 64x64, f = 16, n = 1, lookahead, 56 frames, seeds 0-3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fifo
from fifo.backbones.toy import ToyBackbone, locate_sprite, parse_prompt

RIGHT, UP = "a red ball moving right", "a red ball moving up"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--frames", type=int, default=56)
    p.add_argument("--after", type=int, default=20, help="change the prompt after this frame is out")
    p.add_argument("--partitions", type=int, default=1)
    args = p.parse_args()
    bb = ToyBackbone(height=64, width=64)
    cfg = fifo.FIFOConfig(partitions=args.partitions)
    start = time.perf_counter()
    print(f"toy world 64x64, f=16, n={args.partitions}, lookahead; change after frame {args.after}")
    print(f"{'seed':>4} {'entry':<5} {'recorded':>8} {'x stops':>7} {'max |dx|':>8} {'max |dy|':>8} {'remade':>6}")
    for seed in args.seeds:
        for entry in ("tail", "head"):
            s = fifo.FIFOStream(bb, RIGHT, cfg, seed=seed)
            frames, rec = [], None
            for i, frame in enumerate(s.frames(args.frames)):
                frames.append(frame)
                if i == args.after:
                    rec = s.change_prompt(UP, entry=entry)
            video = np.stack(frames)
            pos = locate_sprite(parse_prompt(RIGHT), bb.encode_frames(video)).numpy()
            dy, dx = np.abs(np.diff(pos, axis=0)).T
            stops = int(np.nonzero(dx)[0][-1] + 1)
            again = np.stack(list(fifo.generate(bb, s.schedule.to_text(), args.frames, cfg, seed=seed)))
            same = "yes" if np.array_equal(again, video) else "NO"
            print(f"{seed:>4} {entry:<5} {rec:>8} {stops:>7} {dx.max():>8} {dy.max():>8} {same:>6}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
