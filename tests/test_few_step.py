"""Step-distilled backbones: their own ladder, the renoise update, layouts with rungs = steps, no guidance.

The maths against closed forms (the renoise step, the distilled ladder, the moments of every
emitted frame under the exact Gaussian predictor), the registry's FastWan2.1 entry on a tiny
random-weight model of its real classes (forward calls counted at the transformer), its refusals,
and its preset in the app's settings.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fifo
import hub_cache
from fakes import GaussianBackbone
from fifo import Distilled, FIFOConfig, FIFOStream
from fifo.schedule import NoiseSchedule, distilled_ladder, make_ladder
from fifo.solvers import renoise_step, step_coefficients, to_x0_eps
from fifo_app import settings

FASTWAN = "fastwan2.1-1.3b"
STEPS = (1000.0, 757.0, 522.0)


# -- the update rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "flow"])
def test_renoise_step_is_the_clean_estimate_noised_to_the_next_rung(pred):
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(2, 3, 4, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    s = torch.tensor([0.9, 0.7, 0.5, 0.3], dtype=torch.float64).view(1, 1, 4, 1, 1)
    ns = torch.tensor([0.7, 0.5, 0.3, 0.0], dtype=torch.float64).view(1, 1, 4, 1, 1)
    a, na = ((1 - s, 1 - ns) if pred == "flow" else ((1 - s**2).sqrt(), (1 - ns**2).sqrt()))
    x = a * x0 + s * eps
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "flow": eps - x0}[pred]  # the exact prediction
    got = renoise_step(x, out, a, s, na, ns, pred, z)
    torch.testing.assert_close(got, na * x0 + ns * z, rtol=0, atol=1e-12)  # x0 kept, eps replaced by z
    torch.testing.assert_close(got[:, :, 3], x0[:, :, 3], rtol=0, atol=1e-12)  # the last rung (next sigma 0) lands on x0
    cx, cout, cn = step_coefficients(a, s, na, ns, pred, solver="renoise")
    torch.testing.assert_close(cx * x + cout * out + cn * z, got, rtol=0, atol=1e-12)
    assert torch.allclose(to_x0_eps(x, out, a, s, pred)[0], x0)


def test_renoise_refuses_eta_and_unknown_solvers():
    one = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"eta=0.5: the renoise step"):
        step_coefficients(one / 2, one / 2, one, one * 0, "flow", eta=0.5, solver="renoise")
    with pytest.raises(ValueError, match=r"solver='sde': allowed are \('ode', 'renoise'\)"):
        step_coefficients(one / 2, one / 2, one, one * 0, "flow", solver="sde")
    with pytest.raises(ValueError, match="solver='sde'"):
        Distilled(STEPS, solver="sde")
    with pytest.raises(ValueError, match="strictly decreasing"):
        Distilled((522.0, 757.0, 1000.0))


# -- the ladder -------------------------------------------------------------------------------------------


def test_the_distilled_ladder_is_exactly_the_models_timesteps():
    lad = distilled_ladder(NoiseSchedule("flow", shift=8.0), STEPS)
    assert lad.timesteps.tolist() == [522.0, 757.0, 1000.0]  # rung 0 (the head) the least noisy
    assert lad.sigmas.tolist() == [0.522, 0.757, 1.0] and torch.equal(lad.alphas, 1 - lad.sigmas)
    assert lad.next_sigmas.tolist() == [0.0, 0.522, 0.757] and lad.next_alphas.tolist()[0] == 1.0
    # the shift does not enter: a flow scheduler's timesteps are its shifted sigmas times T
    assert torch.equal(distilled_ladder(NoiseSchedule("flow", shift=1.0), STEPS).sigmas, lad.sigmas)
    vp = NoiseSchedule.scaled_linear()
    v = distilled_ladder(vp, (999, 749, 499, 249))  # a 4-step vp model (integer timesteps)
    ac = torch.tensor(vp.alphas_cumprod, dtype=torch.float64)[[249, 499, 749, 999]]
    assert torch.equal(v.alphas, ac.sqrt()) and torch.equal(v.sigmas, (1 - ac).sqrt())
    with pytest.raises(ValueError, match=r"integer timesteps in \[0, 999\]"):
        distilled_ladder(vp, STEPS)
    with pytest.raises(ValueError, match=r"strictly decreasing, in \(0, 1000\]"):
        distilled_ladder(NoiseSchedule("flow"), (1200.0, 500.0))
    assert make_ladder(NoiseSchedule("flow", shift=8.0), 3).timesteps.tolist() != lad.timesteps.tolist()


# -- the queue against closed forms --------------------------------------------------------------------


def distilled_gauss(mu, std, frames=6, rung=2, steps=STEPS) -> GaussianBackbone:
    """The exact Gaussian predictor (flow), sampled as a step-distilled model with `f / b` rungs = its steps."""
    bb = GaussianBackbone(mu, std, "flow", frames=frames, partitions=1)
    bb.distilled = Distilled(steps)
    bb.defaults = dataclasses.replace(bb.defaults, frames_per_rung=rung)
    bb.sink = []
    return bb


def test_point_mass_every_frame_comes_out_exactly():
    mu = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(1))
    bb = distilled_gauss(mu, 0.0)
    s = FIFOStream(bb, "data", None, seed=2)
    assert (s.config.rungs, s.config.frames_per_rung, len(s.ladder)) == (3, 2, 3)
    list(s.frames(20))
    assert len(bb.sink) >= 20
    for x in bb.sink:
        torch.testing.assert_close(x, mu, rtol=0, atol=1e-5)


def emitted_variance(ladder_sigmas: list[float], std: float) -> float:
    """Var of an emitted frame that entered the tail as pure noise, renoise steps with the exact predictor.

    At rung k (x = a x0 + s eps, a = 1 - s) the estimate is mu + g (x - a mu), g = a std^2 / (a^2 std^2 + s^2);
    it is re-noised to rung k - 1 with fresh noise: V <- a'^2 g^2 V + s'^2; rung 0 emits the estimate.
    """
    v = 1.0  # the tail: pure noise (sigma = 1)
    sig = sorted(ladder_sigmas, reverse=True)
    for k, s in enumerate(sig):
        a = 1 - s
        g = a * std**2 / (a * a * std**2 + s * s)
        v = g * g * v
        if k + 1 < len(sig):
            ns = sig[k + 1]
            v = (1 - ns) ** 2 * v + ns**2
    return v


def test_gaussian_moments_follow_the_renoise_recursion_and_a_mislabelled_rung_is_seen():
    mu, std = 0.5, 0.8
    bb = distilled_gauss(torch.full((1, 48, 48), mu), torch.tensor(std))
    s = FIFOStream(bb, "data", None, seed=5)
    list(s.frames(46))
    steady = torch.stack(bb.sink[6:46])  # latent frames 6.. entered the tail as noise (0..5: the warm-start clip)
    want = emitted_variance([0.522, 0.757, 1.0], std) ** 0.5
    assert abs(steady.mean().item() - mu) < 0.01
    assert abs(steady.std().item() / want - 1) < 0.008, (steady.std().item(), want)  # ~92k samples: 0.23% std error
    # one rung mislabelled (the head's 522 -> 470) predicts a std 5% off. (Fresh noise each step makes the
    # emitted std depend mostly on the last rung: 757 -> 700 moves it by 0.9% only.)
    wrong = emitted_variance([0.470, 0.757, 1.0], std) ** 0.5
    assert abs(steady.std().item() / wrong - 1) > 0.03, (steady.std().item(), wrong)


def test_renoise_draws_are_keyed_resume_and_batching_give_the_same_frames(tmp_path):
    """The fresh noise of every renoise step is keyed by (seed, frame, step): a stopped and resumed run,
    and windows called one at a time, make the same latents as one uninterrupted batched run."""
    mu = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(4))
    bb = distilled_gauss(mu, torch.tensor(0.7))
    list(FIFOStream(bb, "data", None, seed=9).frames(30))
    whole = torch.stack(bb.sink[:30])
    bb.sink.clear()
    s = FIFOStream(bb, "data", None, seed=9)
    list(s.frames(11))
    s.state().save(tmp_path / "s.pt")
    list(FIFOStream(bb, "data", None, state=fifo.FIFOState.load(tmp_path / "s.pt")).frames(19))
    assert torch.equal(torch.stack(bb.sink[:30]), whole)
    # three independent one-level windows a step (n = 3, b = f): one call, or one call each
    layout = dict(frames_per_window=6, partitions=3, frames_per_rung=6)
    runs = []
    for batch in (None, 1):
        bb.sink.clear()
        list(FIFOStream(bb, "data", FIFOConfig(window_batch=batch, **layout), seed=9).frames(24))
        runs.append(torch.stack(bb.sink[:24]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0][:6], runs[0][6:12])


# -- the registry entry on a tiny model of its real classes -------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """The registry's FastWan2.1 and Wan2.1 1.3B, widths / 8, random weights, as the tests' Hub cache builds them."""
    torch.set_num_threads(1)
    return {n: hub_cache.build_backbone(n, k=8) for n in (FASTWAN, "wan2.1-1.3b")}


def count_rows(bb) -> list[int]:
    """Batch rows through the transformer's forward (a window, twice with guidance), appended per call."""
    rows, forward = [], bb.transformer.forward
    bb.transformer.forward = lambda *a, **k: (rows.append(k["hidden_states"].shape[0]), forward(*a, **k))[1]
    return rows


def steady_rows_per_latent(bb, cfg: FIFOConfig, steps: int = 3) -> float:
    """Transformer rows per popped latent frame over `steps` steps after the first (the warm start excluded)."""
    rows = count_rows(bb)
    try:
        s = FIFOStream(bb, "a red ball moving right", cfg, seed=1, height=64, width=64)
        it = s.steps(10**9)
        while s.step_index < 1:  # the warm start and the first step behind us
            next(it)
        before, popped = sum(rows), s.step_index * s.config.frames_per_rung
        while s.step_index < 1 + steps:
            next(it)
        it.close()
        return (sum(rows) - before) / (s.step_index * s.config.frames_per_rung - popped)
    finally:
        del bb.transformer.forward


def test_fastwan_entry_records_its_sources():
    spec = fifo.BACKBONES[FASTWAN]
    d = spec.defaults
    assert spec.model_id == "FastVideo/FastWan2.1-T2V-1.3B-Diffusers" and spec.licence == "Apache-2.0"
    assert spec.distilled == Distilled((1000.0, 757.0, 522.0), "renoise", guidance=False)
    assert (d.frames_per_window, d.partitions, d.frames_per_rung, d.lookahead, d.guidance_scale) == (15, 1, 5, False, 1.0)
    assert (d.height, d.width, d.fps) == (448, 832, 16)
    assert "dmd_denoising_steps" in spec.sources and "FastWanT2V480PConfig" in spec.sources


def test_the_command_line_lists_its_steps_and_layout():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "fifo", "--list-backbones"], cwd=root, capture_output=True, text=True, timeout=120)
    line = r.stdout.split(FASTWAN, 1)[1].splitlines()[1]
    assert "f=15, n=1, lookahead=False, b=5," in line and "guidance=1.0" in line, line
    assert "distilled: 3 steps at t=1000/757/522 (renoise); licence: Apache-2.0" in line, line


def test_fastwan_streams_with_one_forward_per_window_half_the_base_models(tiny):
    fast, base = tiny[FASTWAN], tiny["wan2.1-1.3b"]
    assert fast.distilled is not None and base.distilled is None
    # its defaults: one window of 15 latents a step, 5 popped: 0.2 forward rows a latent frame
    assert steady_rows_per_latent(fast, FIFOConfig()) == pytest.approx(1 / 5)
    # equal settings (f, n, b, lookahead): the base model runs guidance (5), two rows a window
    same = FIFOConfig(frames_per_window=15, partitions=1, frames_per_rung=5, lookahead=False)
    assert steady_rows_per_latent(base, same) == pytest.approx(2 / 5)
    # the base model at its own defaults (f = 21, n = 2, lookahead, b = 1, guidance 5): 4 windows, 8 rows
    assert steady_rows_per_latent(base, FIFOConfig()) == 8
    frames = list(fifo.generate(fast, "a red ball moving right", 9, height=64, width=64, seed=3))
    assert len(frames) == 9 and all(f.shape == (64, 64, 3) and f.dtype.name == "uint8" for f in frames)


def test_fastwan_refuses_levels_it_was_not_distilled_for_and_guidance(tiny):
    bb = tiny[FASTWAN]
    msg = r"fastwan2.1-1.3b was distilled for 3 denoising steps \(timesteps 1000, 757, 522\)"
    for bad in (dict(partitions=2), dict(frames_per_rung=1), dict(lookahead=True), dict(frames_per_window=16)):
        with pytest.raises(ValueError, match=msg):
            FIFOConfig(**bad).resolve(bb)
    with pytest.raises(ValueError, match=r"with f=15 that is partitions=1, frames_per_rung=5, lookahead=off"):
        FIFOConfig(lookahead=True).resolve(bb)
    blocks = r"with f=16 that is partitions=3, frames_per_rung=16, lookahead=off \(one level a window: independent blocks\)$"
    with pytest.raises(ValueError, match=blocks):
        FIFOConfig(frames_per_window=16).resolve(bb)
    with pytest.raises(ValueError, match=r"guidance_scale=5.0: fastwan2.1-1.3b has classifier-free guidance distilled into it; use 1$"):
        FIFOConfig(guidance_scale=5.0).resolve(bb)
    ok = FIFOConfig(frames_per_window=6, frames_per_rung=2).resolve(bb)  # another window that gives 3 rungs
    assert ok.rungs == 3


# -- the app's preset ------------------------------------------------------------------------------------------


def test_fastwan_has_one_preset_whose_cost_is_counted(tiny):
    p = settings.presets(FASTWAN)
    assert list(p) == ["distilled"]
    d = p["distilled"]
    assert (d["partitions"], d["lookahead"], d["frames_per_rung"], d["steps_per_frame"]) == (1, False, 5, 3)
    cfg = FIFOConfig(partitions=d["partitions"], lookahead=d["lookahead"], frames_per_rung=d["frames_per_rung"])
    assert steady_rows_per_latent(tiny[FASTWAN], cfg) == d["calls_per_frame"] == 0.2
    assert settings.preset_choices(FASTWAN) == [("distilled: 0.2 calls/frame, 3 steps", "distilled")]


def test_the_app_writes_the_distilled_preset_into_the_settings():
    import app

    assert app.on_preset("distilled", FASTWAN) == ("1", "off", "5")
    assert all(isinstance(x, type(app.gr.skip())) for x in app.on_preset("paper", FASTWAN))
