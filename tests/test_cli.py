"""The command line, run as users run it: a subprocess writing a real MP4."""

from __future__ import annotations

import dataclasses
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
    return cli_env({}, *args, cwd=cwd)


def cli_env(env: dict[str, str], *args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
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


# Outputs, --frames and --device are checked before the model loads: with an offline real model
# that is not in the cache, loading it first would fail with a message about its weights instead.
NOT_CACHED = ["--backbone", "wan2.1-1.3b"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "folder.mp4"], "--output folder.mp4: is a folder"),
        (["-o", "missing/out.mp4"], "--output missing/out.mp4: the folder 'missing' does not exist"),
        (["-o", "file.txt/out.mp4"], "the folder 'file.txt' is not a folder"),
        (["-o", "out.mp4", "--save-state", "out.mp4"], "--save-state out.mp4: is also --output"),
        (["-o", "out.mp4", "--save-state", "./out.mp4"], "is also --output"),
        (["--save-state", "missing/q.pt"], "--save-state missing/q.pt: the folder 'missing' does not exist"),
        (["--save-state", "folder.mp4"], "--save-state folder.mp4: is a folder"),
        (["--frames", str(10**400)], "--frames 100000000000... (401 digits): must be a whole number from 1 to 1,000,000,000"),
        (["--frames", "1000000001"], "--frames 1000000001: must be a whole number from 1 to 1,000,000,000"),
        (["--frames", "1e308"], "argument --frames: invalid int value: '1e308'"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--device", "nonsense"], "--device 'nonsense': not a device"),
    ],
)
def test_outputs_and_numbers_are_checked_before_the_model_loads(tmp_path, args, message):
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "file.txt").write_text("")
    r = cli("a red ball", *NOT_CACHED, *args, "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.mp4"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    r = cli("a red ball", "--device", "cuda", "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == (
        "error: --device cuda: CUDA is not available here (no GPU, or torch built without CUDA); use --device cpu\n"
    )


def test_a_model_not_in_the_cache_offline_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = cli_env(env, "a red ball", "--backbone", "zeroscope", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cerspense/zeroscope_v2_576w" in lines[0] and "not in the local Hugging Face cache" in lines[0]
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*.part"))


def test_a_bad_state_to_resume_is_one_line_without_torch_advice(tmp_path):
    import pickle

    import torch

    from fifo import FIFOConfig, FIFOStream, load_backbone

    stream = FIFOStream(load_backbone("toy"), "a red ball", FIFOConfig(frames_per_window=4, partitions=1))
    d = dataclasses.asdict(stream.state())
    torch.save({**d, "queue": torch.zeros(3, 6, 8, 8)}, tmp_path / "shape.pt")  # 6 slots, latents 8x8 not 32x32

    class Runs:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Runs()))
    torch.save({**d, "backbone": "zeroscope"}, tmp_path / "other.pt")
    for name, message in [("shape.pt", "--resume shape.pt: state field 'queue': shape (3, 6, 8, 8) does not fit toy at 128x128"),
                          ("other.pt", "--resume other.pt: made by backbone 'zeroscope'; add --backbone zeroscope"),
                          ("evil.pt", "--resume evil.pt: not a fifo state file: it holds objects other than tensors")]:
        r = cli("a red ball", "--resume", name, "--quiet", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "weights_only" not in r.stderr, r.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_long_schedule_and_a_nul_byte_reach_the_video_metadata(tmp_path):
    # Longer than one argument may be on Linux (128 KiB) once in the metadata: it must not travel in argv.
    lines = [f"{i}: " + " ".join(["a red ball moving right"] * 40) for i in range(48)]  # 959 characters each
    lines += [f"{48 + i}: a red ball {'球' * 990}" for i in range(16)]
    lines[1] = "1: a red\0 ball moving right"
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    r = cli("--prompt-file", "s.txt", "--frames", "2", "--partitions", "1", "--frames-per-window", "4", "-o", "v.mp4",
            "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads(probe_video(tmp_path / "v.mp4")["tags"]["comment"])
    assert meta["prompt"].splitlines() == lines
