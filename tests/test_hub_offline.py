"""The registry models as a user meets them: real configs, a Hub cache as `hf download` fills it, offline.

Each repository is built from the public configs in `tests/fixtures/hub/` (widths scaled down,
every structural choice real, random weights, the transformer and UMT5 encoder sharded with an
index), put into an empty `HF_HOME` in the cache layout, and loaded with `fifo.load_backbone(name)`
under `HF_HUB_OFFLINE=1` in a fresh process (huggingface_hub reads its settings at import). Then a
few frames stream through `fifo.generate`. Broken caches must fail with a true message: missing
files named, anything else reported as what it is.

`FIFO_FULL_WIDTH=1` runs the load test at the configs' full width (several GB of random weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fifo
import hub_cache

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("FIFO_FULL_WIDTH") == "1"
NAMES = [n for n, s in fifo.BACKBONES.items() if s.model_id is not None]

LOAD = """
import json, sys, time
import fifo, torch
torch.set_num_threads(1)  # tiny models: threads cost more than they give
out = []
for name in sys.argv[1].split(","):
    t = time.time()
    try:
        bb = fifo.load_backbone(name, device="cpu", **json.loads(sys.argv[2]))
        layout = json.loads(sys.argv[3]) or ({"frames_per_window": 4} if bb.distilled is None else
                                             {"frames_per_window": 2 * bb.distilled.steps, "frames_per_rung": 2})
        cfg = fifo.FIFOConfig(partitions=1, lookahead=False, **layout)
        rows = []  # batch rows through the denoiser's forward: windows, twice each with guidance
        den = getattr(bb, "transformer", None) or getattr(bb, "unet", None)
        forward = den.forward
        den.forward = lambda *a, **k: (rows.append((a[0] if a else k["hidden_states"]).shape[0]), forward(*a, **k))[1]
        frames = list(fifo.generate(bb, "a red ball moving right", 3, config=cfg, height=64, width=64, seed=1))
        out.append({"name": name, "ok": True, "frames": [list(f.shape) + [str(f.dtype)] for f in frames],
                    "flow_shift": getattr(bb, "flow_shift", None), "fps_condition": getattr(bb, "fps_condition", None),
                    "rescaled": bb.noise_schedule.signal_scale is not None, "rows": sum(rows), "calls": len(rows),
                    "steps": None if bb.distilled is None else list(bb.distilled.timesteps),
                    "seconds": round(time.time() - t, 1)})
    except Exception as e:
        out.append({"name": name, "ok": False, "type": type(e).__name__, "message": str(e)})
print("RESULT " + json.dumps(out))
"""


def load_offline(hf_home: Path, names: list[str], timeout: int = 900, layout: dict | None = None, **kw) -> dict[str, dict]:
    """Load (and stream from) `names` in a fresh offline process whose cache is `hf_home`; `layout`: FIFOConfig fields."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_CACHE", None)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, ",".join(names), json.dumps(kw), json.dumps(layout)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {r["name"]: r for r in json.loads(lines[-1][len("RESULT ") :])}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf")
    ids = sorted({fifo.BACKBONES[n].model_id for n in NAMES})
    hub_cache.build_cache(home / "hub", ids, full=FULL)
    return home


def test_fixtures_are_the_registry_models_and_cite_their_sources():
    sources = (hub_cache.FIXTURES / "SOURCES.md").read_text()
    for name in NAMES:
        model_id = fifo.BACKBONES[name].model_id
        folder = hub_cache.fixture_dir(model_id)
        index = json.loads((folder / "model_index.json").read_text())
        for part in ("scheduler", "vae", "text_encoder", "tokenizer"):
            assert part in index, (name, part)
        assert ("unet" in index) != ("transformer" in index), name
        assert f"https://huggingface.co/{model_id}" in sources, model_id


def test_cache_has_the_hf_download_layout(hf_home):
    for name in NAMES:
        model_id = fifo.BACKBONES[name].model_id
        repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
        assert sorted(p.name for p in repo.iterdir()) == ["blobs", "refs", "snapshots"]
        commit = (repo / "refs" / "main").read_text()
        snap = repo / "snapshots" / commit
        files = [p for p in snap.rglob("*") if not p.is_dir()]
        assert files and all(p.is_symlink() and not os.path.isabs(os.readlink(p)) and p.resolve().parent == repo / "blobs" for p in files)
        rel = {str(p.relative_to(snap)) for p in files}
        assert "model_index.json" in rel and "scheduler/scheduler_config.json" in rel
        if "transformer" in json.loads((snap / "model_index.json").read_text()):
            index = json.loads((snap / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
            shards = sorted(set(index["weight_map"].values()))
            assert shards == [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
            assert "text_encoder/model.safetensors.index.json" in rel


def test_all_load_offline_from_the_cache_and_stream(hf_home):
    results = load_offline(hf_home, NAMES)
    for name in NAMES:
        r = results[name]
        assert r["ok"], r
        assert len(r["frames"]) == 3 and all(f == [64, 64, 3, "uint8"] for f in r["frames"]), r
        spec = fifo.BACKBONES[name]
        if spec.flow_shift is not None:
            assert r["flow_shift"] == spec.flow_shift, r  # SkyReels ships no shift: the registry's 8.0, not 1.0
        if spec.fps_condition is not None:
            assert r["fps_condition"] == spec.fps_condition, r
    assert results["skyreels-v2-df-1.3b"]["flow_shift"] == 8.0
    assert results["videocrafter2"]["fps_condition"] == 8.0
    assert [n for n in NAMES if results[n]["rescaled"]] == ["videocrafter2"]  # VideoCrafter's use_scale
    assert [n for n in NAMES if results[n]["steps"]] == ["fastwan2.1-1.3b"]
    assert results["fastwan2.1-1.3b"]["steps"] == [1000.0, 757.0, 522.0] and results["fastwan2.1-1.3b"]["flow_shift"] == 8.0


def test_the_step_distilled_model_runs_one_forward_a_window_half_the_base_models(hf_home):
    """FastWan2.1 and its base model at equal settings (f = 6, n = 1, b = 2: 3 rungs), loaded from the cache:
    the same windows, one transformer row each for the distilled model, two (guidance) for the base."""
    layout = {"frames_per_window": 6, "frames_per_rung": 2}
    results = load_offline(hf_home, ["fastwan2.1-1.3b", "wan2.1-1.3b"], layout=layout)
    fast, base = results["fastwan2.1-1.3b"], results["wan2.1-1.3b"]
    assert fast["ok"] and base["ok"], results
    assert fast["frames"] == base["frames"] and len(fast["frames"]) == 3
    # warm start (3 calls) + 1 step (1 window): 3 video frames from the first 2 latents of a causal VAE
    assert fast["calls"] == base["calls"] == 4, results
    assert (fast["rows"], base["rows"]) == (4, 8), results


def test_user_options_override_the_registry_defaults(hf_home):
    r = load_offline(hf_home, ["skyreels-v2-df-1.3b"], flow_shift=5.0)["skyreels-v2-df-1.3b"]
    assert r["ok"] and r["flow_shift"] == 5.0, r
    r = load_offline(hf_home, ["modelscope"], fps_condition=12)["modelscope"]
    assert not r["ok"] and r["type"] == "ValueError" and "fps_condition=12" in r["message"], r


def _snapshot(hf_home: Path, model_id: str) -> Path:
    repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def test_missing_files_are_named_and_other_failures_reported_as_they_are(hf_home, tmp_path):
    import shutil

    home = tmp_path / "hf"
    shutil.copytree(hf_home, home, symlinks=True)
    wan = _snapshot(home, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    shard = wan / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.resolve().unlink()  # an interrupted download: the symlink stays, its blob is gone
    sky = _snapshot(home, "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers")
    cfg = sky / "vae" / "config.json"
    target = cfg.resolve()
    target.unlink()
    target.write_text("{ not json")  # present but corrupt: not a cache miss
    ms = _snapshot(home, "damo-vilab/text-to-video-ms-1.7b")
    (ms / "tokenizer" / "vocab.json").unlink()
    results = load_offline(home, ["wan2.1-1.3b", "skyreels-v2-df-1.3b", "modelscope"])
    r = results["wan2.1-1.3b"]
    assert r["type"] == "WeightsUnavailableError", r
    assert "transformer/diffusion_pytorch_model-00002-of-00002.safetensors not in the local Hugging Face cache" in r["message"], r
    r = results["skyreels-v2-df-1.3b"]
    assert r["type"] == "ModelLoadError" and "(VAE)" in r["message"], r
    assert "not in the local" not in r["message"] and "download" not in r["message"], r
    r = results["modelscope"]
    assert r["type"] == "WeightsUnavailableError" and "tokenizer/" in r["message"] and "vocab.json" in r["message"], r
    for r in results.values():
        assert "\n" not in r["message"] and str(home) not in r["message"], r


def test_gpu_benchmark_smoke_runs_on_the_cpu():
    """`benchmarks/gpu.py --smoke`: the full script at tiny width, one UNet and one transformer."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "benchmarks/gpu.py", "--smoke", "--models", "videocrafter2,wan2.1-1.3b,fastwan2.1-1.3b"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    main_table, estimate = proc.stdout.split("FLOP-based estimate")
    lines = [ln for ln in main_table.splitlines() if ln.startswith("| ") and "---" not in ln]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines}
    vc, wan = rows["videocrafter2"], rows["wan2.1-1.3b"]
    # f = 4, n = 1, no lookahead: one batched call (both CFG halves) per step; a step emits one
    # video frame for an image VAE, four for Wan's causal VAE
    assert vc[0] == "default" and vc[3] == "1.00" and float(vc[1]) > 0 and 0 < float(vc[4]) <= 100, vc
    assert wan[3] == "0.25" and float(wan[1]) > 0, wan
    # the step-distilled model: f = 3 (its 3 steps), n = 1, b = 1, no guidance: one window row per step
    fast = rows["fastwan2.1-1.3b"]
    assert fast[3] == "0.25" and float(fast[1]) > 0 and "f=3" in fast[-1], fast
    assert "12.37 s per frame" in estimate and "GFLOP per frame" in estimate
