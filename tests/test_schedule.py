"""The queue arithmetic: ladders against diffusers, window layouts tile the queue exactly once."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from fifo.schedule import NoiseSchedule, context_slots, make_ladder, slot_timesteps, videocrafter_signal_scale, window_batches, windows


@pytest.mark.parametrize("L", [1, 8, 16, 48, 64, 100])
def test_vp_ladder_is_trailing_spacing_over_the_whole_range(L):
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    sched.set_timesteps(L)
    lad = make_ladder(NoiseSchedule.from_scheduler(sched), L)
    _assert_trailing_matches(lad.timesteps.long().numpy(), np.sort(sched.timesteps.numpy()), L)
    assert lad.timesteps[-1] == 999  # the tail rung is the top of the training range
    ac = sched.alphas_cumprod.double()
    assert torch.allclose(lad.alphas**2, ac[lad.timesteps.long()])
    assert torch.allclose(lad.alphas**2 + lad.sigmas**2, torch.ones(L, dtype=torch.float64))
    assert lad.next_alphas[0] == 1 and lad.next_sigmas[0] == 0  # rung 0 steps to clean
    assert torch.equal(lad.next_alphas[1:], lad.alphas[:-1])


def _assert_trailing_matches(ours: np.ndarray, ref: np.ndarray, L: int, T: int = 1000) -> None:
    """Equal to diffusers' float formula except where i T / L is exactly k + 1/2: there the float
    error in `arange` picks either neighbour, and ours rounds half to even."""
    i = np.arange(1, L + 1)
    tie = (2 * (i * T % L)) == L
    assert (ours[~tie] == ref[~tie]).all(), L
    lo = i[tie] * T // L - 1
    assert np.isin(ref[tie] - lo, [0, 1]).all() and (ours[tie] == lo + (lo + 1) % 2).all(), L


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("L", [4, 21, 64])
def test_flow_ladder_matches_flow_match_euler(shift, L):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(L)
    lad = make_ladder(NoiseSchedule.from_scheduler(sched), L)
    assert torch.allclose(lad.sigmas.flip(0).float(), sched.sigmas[:-1], atol=1e-6)
    assert torch.allclose(lad.timesteps.flip(0).float(), sched.timesteps, atol=1e-3)
    assert lad.sigmas[-1] == 1.0 and lad.next_sigmas[0] == 0.0
    assert torch.allclose(lad.alphas, 1 - lad.sigmas)


def test_multistep_and_dynamic_shift_schedulers_are_refused():
    with pytest.raises(ValueError, match="multistep"):
        NoiseSchedule.from_scheduler(UniPCMultistepScheduler())
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        NoiseSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="length=0"):
        make_ladder(NoiseSchedule.scaled_linear(), 0)


@pytest.mark.parametrize("f", [2, 3, 4, 5, 7, 16, 21])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("lookahead", [False, True])
def test_every_main_slot_is_written_exactly_once_per_step(f, n, lookahead):
    h, L = context_slots(f, lookahead), f * n
    wins = windows(f, n, lookahead)
    assert len(wins) == (2 * n if lookahead else n)
    written = np.zeros(h + L, int)
    for w in wins:
        assert w.stop - w.start == f  # the model always sees its native clip length
        assert 0 <= w.start <= w.write_from < w.stop <= h + L
        written[w.write_from : w.stop] += 1
        if lookahead:  # at least h cleaner frames in front of every written frame
            assert w.write_from - w.start >= h
    assert (written[:h] == 0).all() and (written[h:] == 1).all()


def test_lookahead_layout_by_hand():
    # f = 4, n = 2: context slots 0-1, main 2-9; stride 2, each window writes its back half
    assert [tuple(w) for w in windows(4, 2, True)] == [(0, 2, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    # f = 5: spans alternate 3 and 2, each window reads the 5 slots ending with its span
    assert [tuple(w) for w in windows(5, 2, True)] == [(0, 2, 5), (2, 5, 7), (5, 7, 10), (7, 10, 12)]
    assert [tuple(w) for w in windows(4, 3, False)] == [(0, 0, 4), (4, 4, 8), (8, 8, 12)]


def _queue_lengths() -> list[int]:
    """Every L = f * n the config allows (f in [2, 256], n in [1, 64]) that fits T = 1000 rungs."""
    return sorted({f * n for f in range(2, 257) for n in range(1, 65) if f * n <= 1000})


def test_vp_ladder_has_exactly_L_rungs_for_every_allowed_queue_length():
    sched = NoiseSchedule.scaled_linear()
    lengths = _queue_lengths()
    assert len(lengths) == 831
    float_step_wrong = 0
    for L in lengths:
        lad = make_ladder(sched, L)
        t = lad.timesteps.long()
        assert len(lad) == L and t.shape == (L,), L
        assert t[0] >= 0 and t[-1] == 999, L
        assert bool((t[1:] > t[:-1]).all()), L
        # the exact rung i T / L rounded (half to even), computed independently with fractions
        i = np.arange(1, L + 1)
        exact = [round(Fraction(int(k) * 1000, L)) - 1 for k in i]  # Python's round: half to even
        assert t.tolist() == exact, L
        ref = np.round(np.arange(1000, 0, -1000 / L)).astype(np.int64)[::-1] - 1  # diffusers' formula
        if len(ref) == L:
            _assert_trailing_matches(t.numpy(), ref, L)
        else:
            float_step_wrong += 1
    assert float_step_wrong == 44  # the lengths where the float-step arange gives L + 1 rungs (e.g. 122)


def test_ladder_for_f11_n11_steps_to_t0_not_minus_one():
    lad = make_ladder(NoiseSchedule.scaled_linear(), 11 * 11)
    assert len(lad) == 121 and lad.timesteps[0] == 7 and lad.timesteps.min() >= 0


def test_slot_timesteps_and_batches():
    lad = make_ladder(NoiseSchedule.scaled_linear(), 8)
    t = slot_timesteps(lad, 2)
    # context frames are finished: the model sees them at their true level, clean (t = 0)
    assert t.tolist()[:3] == [0.0, 0.0, lad.timesteps[0].item()] and t[-1] == 999
    assert torch.equal(t[2:], lad.timesteps)
    wins = windows(4, 2, True)
    assert window_batches(wins, None) == [wins]
    assert window_batches(wins, 3) == [wins[:3], wins[3:]]
    with pytest.raises(ValueError, match="max_batch=0"):
        window_batches(wins, 0)
    with pytest.raises(ValueError, match="frames_per_window=1"):
        windows(1, 2, False)


def test_videocrafter_signal_scale_values():
    s = np.array(videocrafter_signal_scale())
    assert s.shape == (1000,) and s[0] == 1.0 and s[399] == pytest.approx(0.7) and (s[400:] == 0.7).all()
    assert np.allclose(np.diff(s[:400]), -0.3 / 399)
    with pytest.raises(ValueError, match="signal_scale applies to vp"):
        NoiseSchedule("flow", signal_scale=(1.0,) * 1000)


@pytest.mark.parametrize("L", [16, 64])
def test_rescaled_ladder_reproduces_videocrafters_deterministic_ddim_step(L):
    """VideoCrafter's sampler with use_scale: x0 = (x - sqrt(1 - a_t) e) / sqrt(a_t) / s_t, then
    x' = sqrt(a_prev) s_prev x0 + sqrt(1 - a_prev) e (eta = 0), written out here independently."""
    from fifo.solvers import step_coefficients

    base = NoiseSchedule.scaled_linear()
    scale = videocrafter_signal_scale()
    lad = make_ladder(dataclasses.replace(base, signal_scale=scale), L)
    ac = np.array(base.alphas_cumprod)
    t = lad.timesteps.long().numpy()
    assert np.allclose(lad.alphas.numpy(), np.sqrt(ac[t]) * np.array(scale)[t])
    assert np.allclose(lad.sigmas.numpy(), np.sqrt(1 - ac[t]))
    cx, cout, _ = step_coefficients(lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas, "epsilon", 0.0)
    x, e = 0.3, -1.7  # any latent value and model output: the update is linear in both
    for i in range(1, L):  # rung i steps to rung i - 1
        a_t, a_p, s_t, s_p = ac[t[i]], ac[t[i - 1]], scale[t[i]], scale[t[i - 1]]
        x0 = (x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t) / s_t
        ref = np.sqrt(a_p) * s_p * x0 + np.sqrt(1 - a_p) * e
        assert float(cx[i]) * x + float(cout[i]) * e == pytest.approx(ref, rel=1e-12, abs=1e-12), i
    x0 = (x - np.sqrt(1 - ac[t[0]]) * e) / np.sqrt(ac[t[0]]) / scale[t[0]]
    assert float(cx[0]) * x + float(cout[0]) * e == pytest.approx(x0, rel=1e-12)  # the head rung steps to clean
