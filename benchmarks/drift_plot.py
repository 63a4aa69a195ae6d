"""The app's drift plot of a long toy run, as a PNG: the per-second pixel statistics of every second.

Makes the frames with the toy world (or reads an existing video), measures them with the app's
own `LiveDrift` and draws the same series the app plots (`fifo_app.driftview.plot_rows`), plus the
raw figures in a second panel. Prints the one-line summary and the time taken.

    python benchmarks/drift_plot.py                    # 1,000 toy frames, 64x64, f = 16, n = 1, lookahead -> docs/drift.png
                                                       # (three prompts: at frames 0, 400 and 700)
    python benchmarks/drift_plot.py --video long.mp4   # the plot of an existing video
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fifo  # noqa: E402
from fifo.video import probe_video, read_video  # noqa: E402
from fifo_app.driftview import SERIES, LiveDrift, plot_rows  # noqa: E402

PROMPT = "0: a red ball moving right\n400: a blue square moving down fast\n700: a yellow ball moving up-left slow"


def toy_frames(prompt: str, frames: int, seed: int, partitions: int):
    """The toy world's frames of one run, as they leave the queue."""
    bb = fifo.load_backbone("toy", height=64, width=64)
    stream = fifo.FIFOStream(bb, prompt, fifo.FIFOConfig(partitions=partitions), seed=seed)
    return stream.frames(frames), stream.config.fps


def draw(drift: LiveDrift, title: str, out: Path) -> None:
    """Two panels: the app's series (ratios near 1), and the raw brightness and colour shift in levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plot_rows(drift.meter.seconds)
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for name in SERIES:
        xs = [r[0] for r in rows if r[1] == name]
        ys = [r[2] for r in rows if r[1] == name]
        a.plot(xs, ys, label=name, lw=1.4)
    a.set_ylabel("ratio (1 = as in the 1st second)")
    a.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.04))
    a.set_title(title, fontsize=10)
    a.grid(alpha=0.3)
    d = drift.details()
    secs = list(range(len(d["brightness"])))
    b.plot(secs, d["brightness"], label="brightness (mean luma, levels)", color="tab:orange")
    b.plot(secs, d["colour_shift"], label="colour shift from 1st second (levels)", color="tab:purple")
    b.set_xlabel("second of video")
    b.set_ylabel("8-bit levels")
    b.legend(fontsize=8, loc="center right")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, help="measure this video instead of making toy frames")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "drift.png")
    args = p.parse_args()
    start = time.perf_counter()
    if args.video is not None:
        fps = round(probe_video(args.video)["fps"])
        frames, title = read_video(args.video), f"{args.video.name}, {fps} fps"
    else:
        frames, fps = toy_frames(args.prompt, args.frames, args.seed, args.partitions)
        prompts = "; ".join(line.strip() for line in args.prompt.splitlines())
        title = f"toy world 64x64, f = 16, n = {args.partitions}, lookahead, seed {args.seed}, {args.frames} frames"
        title += f"\n{prompts}"
    drift = LiveDrift(fps)
    n = 0
    for f in frames:
        drift.add(np.asarray(f)[None])
        n += 1
    drift.finish()
    draw(drift, title, args.output)
    print(f"{n} frames, {len(drift.meter.seconds)} seconds at {fps} fps, {time.perf_counter() - start:.1f} s; wrote {args.output}")
    print(drift.summary_line())


if __name__ == "__main__":
    main()
