"""Stopping the command line the way a terminal or `timeout` does keeps the video and the state.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group (ffmpeg included); `timeout`
and `kill` send SIGTERM. Each test runs `python -m fifo` in a process group of its own, as a
terminal would, signals the group mid-run, then checks the video, the state and the resume.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fifo import FIFOState
from fifo.video import probe_video, read_video

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["a red ball moving right", "--partitions", "1", "--frames-per-window", "8", "--seed", "5"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    """The CLI as a terminal's foreground job: the leader of a new process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "fifo", *COMMON, *args],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.txt", "w"),
        text=True, start_new_session=True,
    )


def wait_for_frames(proc: subprocess.Popen, stderr: Path, at_least: int, timeout: float = 300) -> None:
    """Block until the progress bar shows `at_least` frames written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [int(c) for c in re.findall(r"frames:\s+\d+%\|.*?\|\s*(\d+)/", stderr.read_text())]
        if counts and counts[-1] >= at_least:
            return
        assert proc.poll() is None, f"the run ended before it was signalled: {stderr.read_text()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError("no progress within the timeout")


def finish(proc: subprocess.Popen, tmp_path: Path) -> tuple[int, str, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out, (tmp_path / "stderr.txt").read_text()


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fifo", *COMMON, "--quiet", *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_keeps_the_video_and_the_state(tmp_path, sig):
    proc = start(tmp_path, "--frames", "2000", "-o", "out.mp4", "--save-state", "q.pt")
    wait_for_frames(proc, tmp_path / "stderr.txt", 4)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal does: ffmpeg must survive it
    rc, out, err = finish(proc, tmp_path)
    assert rc == 128 + sig, (rc, out, err)
    m = re.fullmatch(r"wrote out\.mp4: (\d+) frames \(stopped early\) in .*; state saved to q\.pt\n", _wrote_line(out))
    assert m, (out, err)
    n = int(m[1])
    assert 4 <= n < 2000
    assert probe_video(tmp_path / "out.mp4")["frames"] == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "q.pt", "stderr.txt"]  # no .part files
    state = FIFOState.load(tmp_path / "q.pt")
    assert state.frames_emitted == n and len(state.pending) == 0

    # The state continues the video exactly where it stopped: frames n.. of one uninterrupted run.
    r = cli(tmp_path, "--frames", "3", "-o", "rest.mp4", "--resume", "q.pt")
    assert r.returncode == 0, r.stderr
    r = cli(tmp_path, "--frames", str(n + 3), "-o", "whole.mp4")
    assert r.returncode == 0, r.stderr
    whole, first, rest = (read_video(tmp_path / f) for f in ("whole.mp4", "out.mp4", "rest.mp4"))
    assert len(rest) == 3 and len(whole) == n + 3
    for part, ref in ((first, whole[:n]), (rest, whole[n:])):  # equal up to H.264 loss
        assert np.abs(part.astype(int) - ref.astype(int)).mean() < 1.0


def test_a_second_signal_stops_at_once_and_keeps_the_video(tmp_path):
    proc = start(tmp_path, "--frames", "2000", "-o", "out.mp4", "--save-state", "q.pt")
    wait_for_frames(proc, tmp_path / "stderr.txt", 2)
    # Two different signals, so that they cannot merge into one before Python sees them.
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out, err = finish(proc, tmp_path)
    assert rc == 128 + signal.SIGTERM, (rc, out, err)
    tail = r"; state not saved \(stopped in the middle of a step\)\n"
    m = re.fullmatch(r"wrote out\.mp4: (\d+) frames \(stopped early\) in .*" + tail, _wrote_line(out))
    assert m, (out, err)
    assert probe_video(tmp_path / "out.mp4")["frames"] == int(m[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "stderr.txt"]


def _wrote_line(out: str) -> str:
    """The CLI's 'wrote ...' line (its pixel-statistics summary follows on a line of its own)."""
    lines = out.splitlines(keepends=True)
    assert len(lines) == 2 and lines[1].startswith("pixel statistics"), out
    return lines[0]
