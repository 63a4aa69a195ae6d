"""The real-GPU estimate: forward passes per frame counted through the engine, FLOPs counted on the meta device.

The estimate's seconds cannot be checked without a GPU; what it is built from can: the passes a
frame costs (counted by running `FIFOStream`, checked against the closed form and the presets the
app states), the attention FLOPs of a transformer on the meta device (against a closed form), and
the script's smoke run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_estimate as ge
from fifo_app.settings import presets

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def meta_backbones():
    """Every real registry model at widths / 8 on the meta device: its geometry, schedule and defaults are the real ones."""
    return {name: ge.build_meta(name, k=8) for name in ge.real_models()}


@pytest.mark.parametrize("name", ge.real_models())
def test_passes_per_frame_are_counted_and_agree_with_the_formula_and_the_presets(name, meta_backbones):
    like = meta_backbones[name]
    app = presets(name)
    for setting, config in ge.settings_for(name).items():
        c = ge.count_calls(like, config, steps=3, height=64, width=64)
        cfg = c["config"]
        tc = like.temporal_compression
        assert c["temporal_compression"] == tc
        assert c["passes_per_frame"] == ge.formula_passes_per_frame(cfg, tc), (setting, c)
        assert c["passes_per_latent"] == c["passes_per_frame"] * tc
        guided = 2 if cfg.guidance_scale != 1 else 1
        # before the first frame: the warm-start clip (one window per rung), the warm-up steps and the first step
        assert c["first_passes"] == guided * (cfg.rungs + (cfg.warmup_steps + 1) * len(cfg.windows)), setting
        assert c["warm_start_passes"] == guided * cfg.rungs, setting  # one window per rung of the clip
        if setting in app:  # the calls a frame the app's preset label states, here counted
            assert c["passes_per_latent"] == app[setting]["calls_per_frame"], setting


def test_the_papers_setting_costs_sixteen_passes_a_frame():
    """VideoCrafter2 at the paper's defaults: 8 windows a frame (n = 4 with lookahead), twice for guidance."""
    like = ge.build_meta("videocrafter2", k=8)
    c = ge.count_calls(like, ge.settings_for("videocrafter2")["paper"], steps=2, height=64, width=64)
    assert (c["passes_per_frame"], c["guided"]) == (16, True)
    wan = ge.build_meta("wan2.1-1.3b", k=8)  # a 4x causal VAE: one latent frame is four video frames
    c = ge.count_calls(wan, ge.settings_for("wan2.1-1.3b")["defaults"], steps=2, height=64, width=64)
    assert (c["passes_per_latent"], c["passes_per_frame"]) == (8, 2)


def test_attention_flops_on_the_meta_device_match_the_closed_form():
    """A small WanTransformer3DModel on `meta`: the attention FLOPs counted are 4 S (S + S_text) D per layer."""
    from diffusers import WanTransformer3DModel

    heads, head_dim, layers, text_dim, s_text = 2, 16, 3, 24, 7
    with torch.device("meta"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                      in_channels=4, out_channels=4, text_dim=text_dim, freq_dim=32, ffn_dim=64,
                                      num_layers=layers, rope_max_seq_len=64)  # fmt: skip
        frames, h, w = 3, 8, 12
        x = torch.zeros(1, 4, frames, h, w)  # (B, C, F, h, w)
        ctx = torch.zeros(1, s_text, text_dim)
        t = torch.full((1,), 500.0)
    total, attention = ge.count_flops(lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=ctx))
    seq, dim = frames * (h // 2) * (w // 2), heads * head_dim
    # QK^T and AV, 2 S_q S_k D FLOPs each: self-attention over the video tokens, cross-attention to the text
    assert attention == layers * (4 * seq * seq * dim + 4 * seq * s_text * dim)
    assert total > attention > 0


def test_calibration_reproduces_the_papers_figure():
    a6000 = {g.name: g for g in ge.GPUS}["A6000"]
    flops = 201.3e12
    u = ge.utilisation(flops, a6000, 12.37)
    assert ge.seconds(flops, a6000, u) == pytest.approx(12.37, rel=1e-12)
    assert u == pytest.approx(flops / (154.8e12 * 12.37))


def test_the_script_runs_in_smoke_mode():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_estimate.py"), "--smoke", "--steps", "2"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for name in ge.real_models():
        assert f"| {name} " in out, name
    assert "estimated from FLOPs, not measured" in out and "## Calibration" in out
    lines = [line for line in out.splitlines() if line.startswith("| videocrafter2 ")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    cells = next(r for r in rows if r[1] == "paper" and len(r) == 2 + len(ge.GPUS) + 2)  # the seconds table
    assert cells[2] == "12.4" and cells[-2] == "1"  # the calibration point: the paper's 12.37 s on an A6000, x1
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_estimate.py"), "--smoke", "--models", "nope"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 2 and "--models nope: allowed are" in bad.stderr


def test_meta_flops_of_a_unet3d_equal_a_real_runs_with_attention_counted():
    """The damo UNet3D layout (widths / 16) on `meta` counts what a CPU run with the math attention kernel counts.

    On a CPU, `scaled_dot_product_attention` runs a fused kernel that FlopCounterMode does not see;
    forced to the math kernel its matmuls are counted, and the meta run agrees with that, attention included.
    """
    import hub_cache
    from diffusers import UNet3DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = hub_cache.scale_unet(hub_cache._load("damo-vilab/text-to-video-ms-1.7b", "unet/config.json"), 16)
    counted = []
    for device in ("meta", "cpu"):
        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet3DConditionModel.from_config(cfg).eval()
            x = torch.randn(1, 4, 3, 16, 16)  # (B, C, F, h, w)
            ctx = torch.randn(1, 5, cfg["cross_attention_dim"])
        with sdpa_kernel(SDPBackend.MATH):
            counted.append(ge.count_flops(unet, x, 500, ctx))  # (sample, timestep, encoder_hidden_states)
    (meta_total, meta_attn), (cpu_total, cpu_attn) = counted
    assert meta_attn > 0 and meta_total > meta_attn
    assert (meta_total, meta_attn) == (cpu_total, cpu_attn)


def test_a_new_registry_entry_shows_up_with_its_own_passes(monkeypatch, capsys):
    """A few-step-like entry (no guidance, 4 rungs of 4 frames) added to the registry is counted and estimated as is."""
    import fifo
    from fifo import BackboneDefaults, BackboneSpec

    wan = fifo.BACKBONES["wan2.1-1.3b"]
    defaults = BackboneDefaults(frames_per_window=16, partitions=1, lookahead=False, eta=0.0, guidance_scale=1.0,
                                fps=16, height=480, width=832, frames_per_rung=4)  # fmt: skip
    spec = BackboneSpec(name="few-step", cls=wan.cls, model_id=wan.model_id, licence=wan.licence, defaults=defaults,
                        flow_shift=wan.flow_shift)  # fmt: skip
    monkeypatch.setitem(fifo.BACKBONES, "few-step", spec)
    assert "few-step" in ge.real_models()
    c = ge.count_calls(ge.build_meta("few-step", k=8), ge.settings_for("few-step")["defaults"], steps=2, height=64, width=64)
    assert (c["guided"], c["config"].rungs) == (False, 4)
    assert (c["passes_per_latent"], c["passes_per_frame"]) == (0.25, 0.0625)  # n / b windows, one pass each, 4 frames a latent
    assert ge.main(["--smoke", "--steps", "1", "--models", "videocrafter2,few-step"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| few-step ")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    counted = next(r for r in rows if r[1] == "defaults")  # the first table: forward passes counted
    assert counted[2:6] == ["f=16 n=1 b=4", "no", "0.25", "0.0625"]
    assert len(rows) == 3 * len(ge.settings_for("few-step")) + 1  # passes, seconds and quota per setting; FLOPs once
