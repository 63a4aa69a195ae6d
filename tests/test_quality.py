"""The quality benchmark's metrics and baselines (benchmarks/quality.py, benchmarks/baselines.py), fast.

The metrics must give perfect scores on a rendered true path and catch what they claim to catch:
a jump, a turn in mid-air, a colour or shape change, a blur; the baselines must make the right
number of frames, the same frames seed by seed as in a batch, and the same frames under both
modes of the toy denoiser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baselines import clip_starts, concat_clips, extend_clips
from benchmarks.quality import Truth, level_gap, main, to_small
from fifo.backbones.toy import BACKGROUND, ToyBackbone, ToyDecoder, ToyWorld, clip_positions, parse_prompt, render_clip

SIZE = 64  # latent 16 x 16: sprite positions 0..8 per axis
PROMPT = "a red ball moving right"


@pytest.fixture(scope="module")
def truth() -> Truth:
    return Truth(parse_prompt(PROMPT), SIZE, SIZE)


def frames_at(world: ToyWorld, positions) -> np.ndarray:
    pos = torch.as_tensor(positions)
    return ToyDecoder().decode(render_clip(world, pos, SIZE // 4, SIZE // 4).float())


def true_path(world: ToyWorld, n: int, phase: int = 3) -> torch.Tensor:
    return clip_positions(world, n, SIZE // 4, SIZE // 4)[phase]


def test_true_path_scores_perfectly():
    for prompt in (PROMPT, "a yellow square moving down-left fast", "a cyan ball moving up slowly"):
        w = parse_prompt(prompt)
        t = Truth(w, SIZE, SIZE)
        pos = true_path(w, 40, phase=5)
        d = t.measure(frames_at(w, pos), audit_every=7)
        assert np.array_equal(d["pos"], pos.numpy())
        assert d["motion"].all() and not d["jump"].any()
        assert (d["fidelity"] == 0).all() and d["true"].all() and (d["noise"] == 0).all()
        assert d["identity"].all() and d["colours_seen"] == {w.colour: 40}
        assert (d["ghost"] < 1e-6).all()
        assert max(d["audit"]) == 0


def test_fidelity_search_equals_brute_force(truth):
    """The box decomposition of the pixel error is exact, and the candidates hold the exhaustive min."""
    w = truth.world
    g = torch.Generator().manual_seed(0)
    lat = render_clip(w, true_path(w, 12), 16, 16).float() + 0.3 * torch.randn(3, 12, 16, 16, generator=g)
    fr = ToyDecoder().decode(lat)
    idx = torch.randint(0, len(truth.positions), (12, 5), generator=g)
    brute = (torch.from_numpy(fr).reshape(12, 1, -1).long() - torch.from_numpy(truth.refs[idx]).reshape(12, 5, -1).long()).abs()
    assert torch.equal(truth.mae(fr, idx), brute.sum(-1).double() / brute.shape[-1])
    d = truth.measure(fr, candidates=16, audit_every=1)
    assert max(d["audit"]) == 0 and (d["fidelity"] > 5).all()


def test_jump_is_one_broken_transition(truth):
    w = truth.world
    pos = torch.cat([true_path(w, 20, 2), true_path(w, 20, 6 * 16 + 2)])  # a cut at frame 20: 6 px down, same phase
    d = truth.measure(frames_at(w, pos))
    assert np.flatnonzero(~d["motion"]).tolist() == [19]
    assert d["jump"][19] and d["jump"].sum() == 1
    assert (d["fidelity"] == 0).all() and d["identity"].all()  # every frame is still a true frame


def test_turn_in_mid_air_is_caught(truth):
    """Moving by exactly the speed is not enough: turning back away from a wall breaks the dynamics."""
    w = truth.world
    xs = [0, 2, 4, 6, 4, 2, 0, 2]  # turns at x = 6, not at the wall (x = 8)
    pos = torch.tensor([[5, x] for x in xs])
    d = truth.measure(frames_at(w, pos))
    assert np.flatnonzero(~d["motion"]).tolist() == [3]  # 4 -> 6 -> 4; 2 -> 0 -> 2 is a true bounce
    assert not d["jump"].any()


def test_colour_and_shape_changes_break_identity(truth):
    w = truth.world
    pos = true_path(w, 12)
    fr = frames_at(w, pos)
    fr[4:6] = frames_at(ToyWorld("ball", "blue", 2, 0, "normal"), pos[4:6])
    fr[8:10] = frames_at(ToyWorld("square", "red", 2, 0, "normal"), pos[8:10])
    d = truth.measure(fr)
    assert np.flatnonzero(~d["colour_ok"]).tolist() == [4, 5]
    assert np.flatnonzero(~d["shape_ok"]).tolist() == [8, 9]
    assert np.flatnonzero(~d["identity"]).tolist() == [4, 5, 8, 9]
    assert d["motion"].all()  # the tracker still follows the sprite


def test_blur_and_ghost_are_seen(truth):
    w = truth.world
    pos = true_path(w, 10)
    lat = render_clip(w, pos, 16, 16).float()
    blurred = lat.clone()
    blurred[:, 3] = (lat[:, 2] + lat[:, 3] + lat[:, 4]) / 3  # motion blur: three positions smeared
    ghost = lat.clone()
    far = render_clip(w, torch.tensor([[8, 8]]), 16, 16).float()[:, 0]  # the path runs along y = 0
    ghost[:, 6] = lat[:, 6] + 0.5 * (far - BACKGROUND)  # a half-strength second sprite, far away
    fb, fg = ToyDecoder().decode(blurred), ToyDecoder().decode(ghost)
    db, dg = truth.measure(fb), truth.measure(fg)
    assert db["fidelity"][3] > 2 and db["fidelity"][[0, 1, 2, 4, 5]].max() == 0 and not db["true"][3] and db["true"][[0, 1, 2, 4, 5]].all()
    assert dg["ghost"][6] == pytest.approx(0.5, abs=0.05) and dg["ghost"][[0, 1, 2, 3, 4, 5]].max() < 1e-6
    assert dg["fidelity"][6] > 0.5


def test_small_is_latent_size():
    fr = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    assert to_small(fr).shape == (2, 3, SIZE // 4, SIZE // 4)


@pytest.mark.parametrize("num_frames", [1, 9, 16])
def test_baselines_frame_counts_and_seed_batching(num_frames):
    bb = ToyBackbone(SIZE, SIZE)
    c = concat_clips(bb, PROMPT, num_frames, frames_per_window=4, steps=3, seed=[0, 1])
    e = extend_clips(bb, PROMPT, num_frames, frames_per_window=4, steps=3, overlap=2, seed=[0, 1])
    for v in c + e:
        assert v.shape == (num_frames, SIZE, SIZE, 3) and v.dtype == np.uint8
    assert np.array_equal(c[1], concat_clips(bb, PROMPT, num_frames, frames_per_window=4, steps=3, seed=1))
    assert np.array_equal(e[1], extend_clips(bb, PROMPT, num_frames, frames_per_window=4, steps=3, overlap=2, seed=1))
    assert not np.array_equal(c[0], c[1])


def test_concat_clip_batch_and_causal_vae_refused():
    bb = ToyBackbone(SIZE, SIZE)
    whole = concat_clips(bb, PROMPT, 11, frames_per_window=4, steps=3, seed=2)
    assert np.array_equal(whole, concat_clips(bb, PROMPT, 11, frames_per_window=4, steps=3, seed=2, clip_batch=1))
    bb.temporal_compression = 4  # a causal video VAE: frames are not latents one to one
    with pytest.raises(ValueError, match="causal"):
        concat_clips(bb, PROMPT, 8, frames_per_window=4, steps=2)


def test_extension_keeps_the_known_frames_and_seams():
    """Every clip after the first covers `overlap` frames already made; seams are where new clips begin."""
    assert clip_starts("concat", 10, 4) == [4, 8]
    assert clip_starts("extend", 10, 4, overlap=1) == [4, 7]
    assert clip_starts("extend", 10, 4) == [4, 6, 8]
    with pytest.raises(ValueError):
        extend_clips(ToyBackbone(SIZE, SIZE), PROMPT, 8, frames_per_window=4, overlap=4)


def test_baselines_same_frames_in_both_modes():
    """Every frame of a baseline's call sits at one level, so the shared-level model is the exact one there."""
    ex, sh = ToyBackbone(SIZE, SIZE), ToyBackbone(SIZE, SIZE, shared_level=True)
    for fn in (concat_clips, extend_clips):
        a = fn(ex, PROMPT, 10, frames_per_window=4, steps=4, seed=3)
        b = fn(sh, PROMPT, 10, frames_per_window=4, steps=4, seed=3)
        assert np.array_equal(a, b)


def test_baselines_eta_uses_keyed_noise():
    bb = ToyBackbone(SIZE, SIZE)
    a = concat_clips(bb, PROMPT, 4, frames_per_window=4, steps=4, seed=0, eta=1.0)
    b = concat_clips(bb, PROMPT, 4, frames_per_window=4, steps=4, seed=0, eta=1.0)
    assert np.array_equal(a, b)


def test_level_gap_shrinks_with_partitions_and_lookahead():
    diag, part, la = level_gap(16, 1, False), level_gap(16, 4, False), level_gap(16, 4, True)
    assert diag[1] > part[1] > la[1]  # the sigma the head frame is taken at comes closer to its own
    assert part[0] == la[0] < diag[0]


def test_script_runs_end_to_end(tmp_path, capsys):
    png, js = tmp_path / "q.png", tmp_path / "q.json"
    args = ["--frames", "24", "--prompts", PROMPT, "--seeds", "0", "--f", "4", "--size", str(SIZE), "--stretch", "8"]
    assert main(args + ["--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "### exact denoiser" in out and "### shared denoiser" in out and "extension by replacement" in out
    assert png.stat().st_size > 10_000 and js.stat().st_size > 100
