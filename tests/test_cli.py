"""The command line, run as users run it: a subprocess writing a real MP4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fifo.video import probe_video, read_video


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fifo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_writes_exactly_the_frames_asked_for_with_settings_in_metadata(tmp_path):
    out = tmp_path / "ball.mp4"
    r = cli("a red ball moving right", "--frames", "30", "--partitions", "2", "--seed", "3", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: 30 frames in ") and "s/frame" in r.stdout and "peak memory" in r.stdout
    info = probe_video(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (30, 128, 128, 12.0)
    meta = json.loads(info["tags"]["comment"])
    assert meta["prompt"] == "a red ball moving right" and meta["seed"] == 3 and meta["partitions"] == 2


def test_prompt_file_schedule_and_state_resume(tmp_path):
    sched = tmp_path / "s.txt"
    sched.write_text("0: a red ball moving right\n12: a red ball moving up\n")
    a, b, whole = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "w.mp4"
    common = ["--partitions", "1", "--frames-per-window", "8", "--quiet"]
    assert cli("--prompt-file", str(sched), "--frames", "10", "-o", str(a), "--save-state", str(tmp_path / "q.pt"), *common).returncode == 0
    r = cli("--prompt-file", str(sched), "--frames", "10", "-o", str(b), "--resume", str(tmp_path / "q.pt"), *common)
    assert r.returncode == 0, r.stderr
    assert cli("--prompt-file", str(sched), "--frames", "20", "-o", str(whole), *common).returncode == 0
    assert probe_video(b)["frames"] == 10
    # the resumed video continues the first: equal (up to H.264 loss) to the second half of one run
    diff = np.abs(read_video(b).astype(int) - read_video(whole)[10:].astype(int)).mean()
    assert diff < 1.0, diff
    assert json.loads(probe_video(b)["tags"]["comment"])["prompt"].startswith("0: a red ball moving right\n12:")
    # the state records its schedule: resuming without a prompt goes on with it
    c = tmp_path / "c.mp4"
    r = cli("--frames", "10", "-o", str(c), "--resume", str(tmp_path / "q.pt"), *common)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_video(c), read_video(b))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no prompt"),
        (["a blue ball", "--partitions", "0"], "partitions=0"),
        (["a purple giraffe"], "giraffe"),
        (["a red ball", "--frames", "0"], "--frames 0"),
        (["a red ball", "--backbone", "nope"], "backbone='nope'"),
        (["a red ball", "-o", "x.avi"], "must end in .mp4"),
        (["a red ball", "--height", "102"], "height=102"),
        (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file /nonexistent/p.txt"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, args, message):
    r = cli(*args, "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_list_backbones():
    r = cli("--list-backbones")
    assert r.returncode == 0 and r.stdout.startswith("toy") and "licence" in r.stdout
