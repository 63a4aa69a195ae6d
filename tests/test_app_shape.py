"""The app's code stays small enough to read: short functions, low complexity, nothing heavy on import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "app.py", *sorted((ROOT / "fifo_app").glob("*.py"))]


def test_no_function_over_80_lines_or_complexity_20():
    radon = pytest.importorskip("radon.complexity")
    long, complex_ = [], []
    for path in FILES:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
        complex_ += [f"{path.name}:{b.name} ({b.complexity})" for b in radon.cc_visit(source) if b.complexity > 20]
    assert not long and not complex_, (long, complex_)


def test_importing_the_app_loads_no_model_and_times_nothing():
    code = "import app; print(app.MANAGER.is_loaded('toy'), app.SERVICE._calibration_done)"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["False", "False"], r.stdout
