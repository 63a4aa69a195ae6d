"""Each model's noise levels as its authors sample it: registry defaults, and the options that change them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fifo
from fifo.backbones.registry import load_backbone

ROOT = Path(__file__).resolve().parents[1]


def test_registry_defaults_and_their_sources():
    expect = {
        "modelscope": (None, None),
        "zeroscope": (None, None),
        "videocrafter2": (None, 8.0),
        "wan2.1-1.3b": (3.0, None),
        "skyreels-v2-df-1.3b": (8.0, 24.0),
        "fastwan2.1-1.3b": (8.0, None),
    }
    for name, (shift, fps) in expect.items():
        spec = fifo.BACKBONES[name]
        assert (spec.flow_shift, spec.fps_condition) == (shift, fps), name
        if shift is not None or fps is not None:
            assert spec.sources, name


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("toy", {"flow_shift": 5.0}, r"flow_shift=5.0: toy has no such input \(it applies to wan2.1-1.3b, skyreels-v2-df-1.3b, fastwan2.1-1.3b\)"),
        ("modelscope", {"fps_condition": 12}, r"fps_condition=12: modelscope has no such input"),
    ],
)
def test_options_a_model_does_not_take_are_refused(name, kw, match):
    with pytest.raises(ValueError, match=match):
        load_backbone(name, device="cpu", **kw)


def test_none_keeps_the_default():
    bb = load_backbone("toy", device="cpu", flow_shift=None, fps_condition=None)
    assert bb.name == "toy"


@pytest.mark.parametrize("flag", ["--flow-shift", "--fps-condition"])
def test_cli_flags_reach_the_loader(tmp_path, flag):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fifo", "a red ball", "--frames", "1", "-o", str(tmp_path / "x.mp4"), flag, "5", "--quiet"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    key = flag[2:].replace("-", "_")
    assert proc.returncode == 2 and f"error: {key}=5.0: toy has no such input" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.mp4").exists()
