"""Pixel statistics per second: exact values on frames with closed forms, incremental, in the CLI's MP4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from fifo.drift import MEASURES, DriftMeter, flicker_score, frame_stats, measure
from fifo.video import probe_video


def flat(rgb, h=8, w=8) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def test_flicker_score_is_255_minus_mae_over_255():
    assert flicker_score(flat(10), flat(10)) == 1.0
    assert flicker_score(flat(10), flat(30)) == pytest.approx((255 - 20) / 255)
    a, b = flat(0), flat(0)
    b[:4] = 255  # half the pixels change by 255
    assert flicker_score(a, b) == pytest.approx(0.5)
    assert flicker_score(flat(200), flat(0)) == pytest.approx(55 / 255)  # no uint8 wrap-around


def test_frame_stats_closed_forms():
    b, s, sh, rgb = frame_stats(flat((255, 0, 0)))
    assert b == pytest.approx(0.299 * 255, rel=1e-6) and s == 1.0 and sh == 0.0 and rgb.tolist() == [255, 0, 0]
    b, s, sh, _ = frame_stats(flat((100, 100, 100)))
    assert b == pytest.approx(100, rel=1e-6) and s == 0.0 and sh == 0.0
    assert frame_stats(flat(0))[1] == 0.0  # black: saturation 0, not a division by zero
    # a grey checkerboard 0 / 200: the Laplacian of every interior pixel is -4 (v - other) = +-800
    board = (np.indices((10, 10)).sum(0) % 2 * 200).astype(np.uint8)
    _, _, sh, _ = frame_stats(np.repeat(board[..., None], 3, axis=2))
    assert sh == pytest.approx(800.0**2, rel=1e-5)  # mean 0 (32 of each sign), variance 800^2
    half = flat((0, 0, 255), 4, 4)
    half[:, :2] = (255, 255, 0)
    assert frame_stats(half)[1] == 1.0 and frame_stats(half)[3].tolist() == [127.5, 127.5, 127.5]


def test_seconds_group_fps_frames_and_colour_is_relative_to_the_first():
    frames = [flat(10), flat(20), flat(20), flat((20, 20, 50)), flat((20, 20, 50))]
    m = DriftMeter(fps=2)
    done = [m.add(f) for f in frames]
    assert [d is not None for d in done] == [False, True, False, True, False]
    secs = m.finish()
    assert [s.frames for s in secs] == [2, 2, 1]
    assert secs[0].flicker == pytest.approx(245 / 255)  # 10 -> 20
    assert secs[1].flicker == pytest.approx(1 - 10 / 255 / 2)  # 20 -> 20, then blue +30 on a third of the values
    assert secs[2].flicker == 1.0
    assert secs[0].brightness == pytest.approx(15, rel=1e-6)
    assert secs[0].colour_shift == 0.0 and secs[2].colour_shift == pytest.approx(np.linalg.norm([5, 5, 35]))
    summary = m.summary()
    assert set(summary) == set(MEASURES) and summary["brightness"][0] == pytest.approx(15, rel=1e-6)
    line = m.summary_line()
    assert line.startswith("pixel statistics, first vs last of 3 seconds: flicker 0.9608 -> 1.0000 (+4.1%)")
    assert "colour shift 35.7 levels" in line


def test_one_frame_has_no_flicker_and_bad_frames_are_refused():
    m = measure([flat(5)], fps=8)
    assert m.seconds[0].flicker is None and "flicker n/a" in m.summary_line()
    with pytest.raises(ValueError, match="expected uint8"):
        DriftMeter(8).add(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"frame of shape \(4, 4, 3\) after frames of shape \(8, 8, 3\)"):
        mm = DriftMeter(8)
        mm.add(flat(0))
        mm.add(flat(0, 4, 4))
    with pytest.raises(ValueError, match="fps=0"):
        DriftMeter(0)


def test_memory_does_not_grow_with_frames():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]

    def peak(n: int) -> int:
        m = DriftMeter(fps=1000)  # one long second: nothing but running sums is kept per frame
        tracemalloc.start()
        for i in range(n):
            m.add(frames[i % 4])
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return size

    assert peak(400) - peak(40) < 4096


def test_cli_prints_the_summary_and_writes_the_figures_into_the_mp4(tmp_path):
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "fifo", "a red ball moving right", "--frames", "30", "--height", "64", "--width", "64",
         "--partitions", "1", "--fps", "12", "-o", "v.mp4", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("pixel statistics"))
    assert "first vs last of 3 seconds" in line
    tags = probe_video(tmp_path / "v.mp4")["tags"]
    stats = json.loads(tags["pixel_stats"])
    assert stats["frames"] == 30 and len(stats["brightness"]) == 3 and stats["measures"] == list(MEASURES)
    assert tags["pixel_stats_summary"] == line
    assert json.loads(tags["comment"])["prompt"] == "a red ball moving right"  # the run's own metadata is kept
    assert probe_video(tmp_path / "v.mp4")["frames"] == 30
