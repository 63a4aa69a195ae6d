"""Per-frame solver steps against diffusers' own single-timestep steps, and their algebra."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from fifo.schedule import NoiseSchedule, make_ladder
from fifo.solvers import ddim_step, flow_euler_step, solver_step, step_coefficients, to_x0_eps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_step_between_the_same_timesteps(prediction_type, eta):
    L = 20  # 1000 / 20 is whole, so diffusers' previous timestep is our next rung
    sched = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
        clip_sample=False, prediction_type=prediction_type, set_alpha_to_one=True,
    )
    sched.set_timesteps(L)
    lad = make_ladder(NoiseSchedule.from_scheduler(sched), L)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, L, 8, 8, generator=gen)
    out = torch.randn(1, 4, L, 8, 8, generator=gen)
    noise = torch.randn(1, 4, L, 8, 8, generator=gen)
    view = lambda v: v.float().view(1, 1, L, 1, 1)  # noqa: E731
    ours = ddim_step(x, out, *(view(v) for v in (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)), prediction_type, eta, noise)
    for i in range(1, L):  # every frame at its own rung, all in one vectorised call
        t = int(lad.timesteps[i])
        ref = sched.step(out[:, :, i], t, x[:, :, i], eta=eta, variance_noise=noise[:, :, i]).prev_sample
        assert torch.allclose(ours[:, :, i], ref, atol=1e-5), i
    # rung 0 lands on the clean estimate itself, whatever set_alpha_to_one says
    x0, _ = to_x0_eps(x[:, :, 0], out[:, :, 0], view(lad.alphas)[:, :, 0], view(lad.sigmas)[:, :, 0], prediction_type)
    assert torch.allclose(ours[:, :, 0], x0, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers_step(shift):
    L = 12
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(L)
    lad = make_ladder(NoiseSchedule.from_scheduler(sched), L)
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, L, 6, 6, generator=gen), torch.randn(2, 4, L, 6, 6, generator=gen)
    view = lambda t: t.float().view(1, 1, L, 1, 1)  # noqa: E731
    ours = flow_euler_step(x, v, view(lad.sigmas), view(lad.next_sigmas))
    for k, t in enumerate(sched.timesteps):  # diffusers walks from the top: its step k is our rung L-1-k
        i = L - 1 - k
        sched._step_index = k
        ref = sched.step(v[:, :, i], t, x[:, :, i]).prev_sample
        assert torch.allclose(ours[:, :, i], ref, atol=1e-5), i
    assert torch.allclose(ours[:, :, 0], x[:, :, 0] - view(lad.sigmas)[:, :, 0] * v[:, :, 0])


def test_flow_euler_is_ddim_eta0_in_the_flow_parametrisation():
    lad = make_ladder(NoiseSchedule("flow", shift=3.0), 10)
    x, v = torch.randn(3, 10, 4, 4), torch.randn(3, 10, 4, 4)
    view = lambda t: t.float().view(1, 10, 1, 1)  # noqa: E731
    a = solver_step(x, v, *(view(t) for t in (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)), "flow")
    b = ddim_step(x, v, *(view(t) for t in (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)), "flow")
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_arguments_are_refused():
    one = torch.ones(())
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        to_x0_eps(one, one, one, one, "sample")
    with pytest.raises(ValueError, match="needs `noise`"):
        ddim_step(one, one, one * 0.5, one * 0.8, one * 0.6, one * 0.7, "epsilon", eta=1.0)
    with pytest.raises(ValueError, match="eta=0.5"):
        solver_step(one, one, one, one, one, one, "flow", eta=0.5)


@pytest.mark.parametrize("pred, eta", [("epsilon", 0.0), ("epsilon", 0.7), ("v_prediction", 0.0), ("v_prediction", 1.0), ("flow", 0.0)])
def test_step_coefficients_equal_the_solver_step(pred, eta):
    """The engine's precomputed linear form x' = c_x x + c_out out + c_noise z is `solver_step`."""
    sched = NoiseSchedule("flow", shift=3.0) if pred == "flow" else NoiseSchedule.scaled_linear()
    lad = make_ladder(sched, 12)
    g = torch.Generator().manual_seed(0)
    x, out, z = (torch.randn(3, 12, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    view = lambda v: v.view(1, -1, 1, 1)  # noqa: E731
    coef = (lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas)
    ref = solver_step(x, out, *(view(v) for v in coef), pred, eta, z)
    cx, cout, cn = step_coefficients(*coef, pred, eta)
    got = view(cx) * x + view(cout) * out + (0 if cn is None else view(cn) * z)
    assert (cn is None) == (eta == 0)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
