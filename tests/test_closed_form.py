"""The engine against closed forms: exact data in, exact frames (or exact moments) out."""

from __future__ import annotations

import math

import pytest
import torch

from fakes import GaussianBackbone
from fifo import FIFOConfig, FIFOStream
from fifo.schedule import make_ladder

C, H, W = 2, 16, 16


def run_latents(bb: GaussianBackbone, steps: int, config: FIFOConfig, seed: int = 0, tamper=None) -> list[torch.Tensor]:
    """Pop `steps` latent frames after warm-up; `tamper(stream)` may mislabel slots first."""
    stream = FIFOStream(bb, "data", config, seed=seed)
    if tamper is not None:
        tamper(stream)
    out = []
    for _ in range(steps):
        out.append(stream.step())
    return out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
@pytest.mark.parametrize("lookahead", [False, True])
def test_point_mass_every_frame_exact(prediction_type, lookahead):
    """Data that is one fixed latent: every popped frame equals it (the solver's algebra)."""
    target = torch.linspace(-1.5, 1.5, C * H * W).view(C, H, W)
    bb = GaussianBackbone(target, 0.0, prediction_type, frames=4, partitions=3, lookahead=lookahead)
    eta = 0.0 if prediction_type == "flow" else 1.0
    for latent in run_latents(bb, 30, FIFOConfig(eta=eta)):
        assert (latent - target).abs().max() < 1e-4


def chain_moments(ladder, mu, std, eta, prediction_type="epsilon", rung_labels=None):
    """Exact mean and variance per pixel of a frame born as N(0, 1) at the top rung and stepped down.

    Each step with the exact linear predictor is x' = alpha x + beta + std_eta z, so the moments
    follow a scalar recursion over the rungs the frame visits. `rung_labels[i]` is the rung whose
    noise level the model is told at rung i (the identity unless a test mislabels one).
    """
    L = len(ladder)
    m, v = torch.zeros_like(mu, dtype=torch.float64), torch.ones_like(mu, dtype=torch.float64)
    mu, var = mu.double(), std.double() ** 2
    for i in reversed(range(L)):
        j = i if rung_labels is None else rung_labels[i]
        a, s = ladder.alphas[i].item(), ladder.sigmas[i].item()  # the frame's true level
        am, sm = ladder.alphas[j].item(), ladder.sigmas[j].item()  # the level the model is told
        an, sn = ladder.next_alphas[i].item(), ladder.next_sigmas[i].item()
        g = am * var / (am * am * var + sm * sm)
        # model: x0m = mu + g (x - am mu), epsm = (x - am x0m) / sm; the solver reads them at (a, s)
        x0m_x, x0m_c = g, mu - g * am * mu  # x0m = x0m_x * x + x0m_c
        epsm_x, epsm_c = (1 - am * x0m_x) / sm, -am * x0m_c / sm
        # the solver recovers (x0, eps) from the prediction with its own coefficients (a, s)
        eps_x, eps_c = epsm_x, epsm_c
        x0_x, x0_c = (1 - s * eps_x) / a, -s * eps_c / a
        std_eta = 0.0 if eta == 0 else eta * (sn / s) * math.sqrt(max(0.0, 1 - (a / an) ** 2))
        c = math.sqrt(max(0.0, sn * sn - std_eta**2))
        alpha, beta = an * x0_x + c * eps_x, an * x0_c + c * eps_c
        m, v = alpha * m + beta, alpha * alpha * v + std_eta**2
    return m, v


GAUSS_MU = torch.linspace(-1.0, 1.0, C * H * W).view(C, H, W)
GAUSS_STD = torch.linspace(0.2, 0.8, C * H * W).flip(0).view(C, H, W)
STEPS = 224  # frames born in the tail and popped, after the first L pops


def moment_errors(bb, config, tamper=None, rung_labels=None):
    """(z of the pooled mean error, relative error of the pooled variance) over STEPS frames."""
    cfg = config.resolve(bb)
    L = cfg.queue_length
    pops = run_latents(bb, L + STEPS, config, seed=7, tamper=tamper)[L:]  # only tail-born frames
    x = torch.stack(pops).double()  # (N, C, H, W)
    ladder = make_ladder(bb.noise_schedule, L)
    m, v = chain_moments(ladder, GAUSS_MU, GAUSS_STD, cfg.eta, rung_labels=rung_labels)
    n, p = x.shape[0], m.numel()
    # Pixels are independent and frames are independent (noise keyed per frame), so the pooled
    # standardised mean error is N(0, 1/(n p)) and the pooled variance ratio has sd sqrt(2/((n-1) p)).
    z_mean = ((x.mean(0) - m) / (v / n).sqrt()).sum() / math.sqrt(p)
    ratio = (x.var(0) / v).mean() - 1
    ratio_sd = math.sqrt(2 / ((n - 1) * p))
    return z_mean.item(), ratio.item() / ratio_sd


@pytest.mark.parametrize("partitions", [1, 2, 4])
@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gaussian_moments_match_the_discrete_chain(partitions, lookahead, eta):
    """Empirical mean and variance of emitted frames equal the exact chain's, within 5 sampling sd."""
    bb = GaussianBackbone(GAUSS_MU, GAUSS_STD, frames=4, partitions=partitions, lookahead=lookahead, eta=eta)
    z_mean, z_var = moment_errors(bb, FIFOConfig())
    # 5 sd: a false alarm once in ~1.7 million runs per statistic; the runs are deterministic anyway.
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("rung", [0, 1, 3])
def test_a_mislabelled_rung_is_caught(lookahead, rung):
    """Tell the model rung r+1's noise level on the slot of rung r: the moment test must fail.

    The recursion predicts how loud the failure is (|z| of 43, 11 and 7 for rungs 0, 1, 3 at this
    size); mislabels further up the tail shift the variance less (rung 5: 2.5 sd) and would need
    more frames to see.
    """
    bb = GaussianBackbone(GAUSS_MU, GAUSS_STD, frames=4, partitions=2, lookahead=lookahead, eta=0.0)

    def tamper(stream):
        stream._slot_t = stream._slot_t.clone()
        stream._slot_t[stream.h + rung] = stream._slot_t[stream.h + rung + 1]

    z_mean, z_var = moment_errors(bb, FIFOConfig(), tamper=tamper)
    assert max(abs(z_mean), abs(z_var)) > 5, (z_mean, z_var)
    # ...and the recursion that knows about the mislabel explains the frames again
    labels = list(range(8))
    labels[rung] = rung + 1
    z_mean, z_var = moment_errors(bb, FIFOConfig(), tamper=tamper, rung_labels=labels)
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)
