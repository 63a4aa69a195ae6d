"""Per-frame solver steps: pure functions, vectorised over frames, each frame from its own rung.

Every frame of a window sits at its own noise level, so the coefficients are tensors that
broadcast against the latents (for latents (B, C, F, h, w): shape (B, 1, F, 1, 1)).

Legend (diffusers / paper -> names here), with x_t = alpha * x_0 + sigma * eps:
    sqrt(alpha_bar_t)            alpha        (vp);  1 - sigma_t (flow)
    sqrt(1 - alpha_bar_t)        sigma        (vp);  sigma_t     (flow)
    the same at the next rung    next_alpha, next_sigma  (clean: 1, 0)
    eta                          eta          DDIM stochasticity, 0 = deterministic
    solver                       "ode"        DDIM / flow Euler (the probability-flow ODE, eta noise aside)
                                 "renoise"    x_0, then fresh noise at the next rung (DMD, consistency models)
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
SOLVERS = ("ode", "renoise")


def to_x0_eps(x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """The clean estimate x_0 and the noise estimate eps implied by a model output."""
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction_type == "v_prediction":  # v = alpha * eps - sigma * x_0, with alpha^2 + sigma^2 = 1
        return alpha * x - sigma * out, sigma * x + alpha * out
    if prediction_type == "flow":  # v = eps - x_0, x = (1 - sigma) x_0 + sigma eps
        return x - sigma * out, x + alpha * out
    raise ValueError(f"prediction_type={prediction_type!r}: allowed are 'epsilon', 'v_prediction', 'flow'")


def ddim_step(
    x: Tensor,
    out: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    next_alpha: Tensor,
    next_sigma: Tensor,
    prediction_type: str,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from each frame's rung to its next; next (1, 0) lands on x_0."""
    x0, eps = to_x0_eps(x, out, alpha, sigma, prediction_type)
    if eta == 0:
        return next_alpha * x0 + next_sigma * eps
    if noise is None:
        raise ValueError(f"eta={eta}: a stochastic step needs `noise` shaped like x")
    # sigma_eta^2 = eta^2 (1 - a_n^2)/(1 - a^2) (1 - a^2/a_n^2); zero where the next rung is clean.
    std = eta * (next_sigma / sigma) * (1 - (alpha / next_alpha) ** 2).clamp_min(0).sqrt()
    return next_alpha * x0 + (next_sigma**2 - std**2).clamp_min(0).sqrt() * eps + std * noise


def flow_euler_step(x: Tensor, v: Tensor, sigma: Tensor, next_sigma: Tensor) -> Tensor:
    """Euler on the flow ODE dx/dsigma = v (FlowMatchEulerDiscreteScheduler.step); next 0 lands on x_0."""
    return x + (next_sigma - sigma) * v


def renoise_step(
    x: Tensor,
    out: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    next_alpha: Tensor,
    next_sigma: Tensor,
    prediction_type: str,
    noise: Tensor,
) -> Tensor:
    """Few-step distilled sampling (DMD, consistency models): the clean estimate, noised afresh to the next rung."""
    x0, _ = to_x0_eps(x, out, alpha, sigma, prediction_type)
    return next_alpha * x0 + next_sigma * noise


def solver_step(
    x: Tensor,
    out: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    next_alpha: Tensor,
    next_sigma: Tensor,
    prediction_type: str,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """The step the engine takes: flow Euler for flow models, DDIM otherwise."""
    if prediction_type == "flow":
        if eta != 0:
            raise ValueError(f"eta={eta}: flow Euler is deterministic, use eta=0")
        return flow_euler_step(x, out, sigma, next_sigma)
    return ddim_step(x, out, alpha, sigma, next_alpha, next_sigma, prediction_type, eta, noise)


def step_coefficients(
    alpha: Tensor,
    sigma: Tensor,
    next_alpha: Tensor,
    next_sigma: Tensor,
    prediction_type: str,
    eta: float = 0.0,
    solver: str = "ode",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`solver_step` ("ode") or `renoise_step` as `x' = c_x x + c_out out + c_noise z`, per rung
    (`c_noise` None where no noise enters: the ODE step with eta = 0).

    Every update here is linear in (x, model output, noise) with coefficients that depend only on
    the rung, so the engine computes them once per run (in float64) instead of every step.
    """
    a, s, na, ns = alpha, sigma, next_alpha, next_sigma
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: allowed are {SOLVERS}")
    if solver == "renoise":
        if eta != 0:
            raise ValueError(f"eta={eta}: the renoise step draws all of its next-rung noise afresh; use eta=0")
        if prediction_type == "flow":  # x0 = x - s out
            return na, -na * s, ns
        if prediction_type == "epsilon":  # x0 = (x - s out) / a
            return na / a, -na * s / a, ns
        if prediction_type == "v_prediction":  # x0 = a x - s out
            return na * a, -na * s, ns
        raise ValueError(f"prediction_type={prediction_type!r}: allowed are 'epsilon', 'v_prediction', 'flow'")
    if prediction_type == "flow":
        if eta != 0:
            raise ValueError(f"eta={eta}: flow Euler is deterministic, use eta=0")
        return torch.ones_like(s), ns - s, None
    if eta == 0:
        std, d = torch.zeros_like(s), ns
    else:
        std = eta * (ns / s) * (1 - (a / na) ** 2).clamp_min(0).sqrt()
        d = (ns**2 - std**2).clamp_min(0).sqrt()
    if prediction_type == "epsilon":  # x0 = (x - s out) / a, eps = out
        cx, cout = na / a, d - na * s / a
    elif prediction_type == "v_prediction":  # x0 = a x - s out, eps = s x + a out
        cx, cout = na * a + d * s, d * a - na * s
    else:
        raise ValueError(f"prediction_type={prediction_type!r}: allowed are 'epsilon', 'v_prediction', 'flow'")
    return cx, cout, (std if eta != 0 else None)
