"""The toy world: its prompt parser, its clip set, and its denoiser against Bayes' rule done by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fifo
from fifo.backbones.registry import BACKBONES
from fifo.backbones.toy import (
    BACKGROUND_LEVEL,
    RGB,
    SPRITE,
    ToyBackbone,
    ToyDecoder,
    ToyWorld,
    clip_positions,
    locate_sprite,
    parse_prompt,
    render_clip,
)

AC = torch.tensor(ToyBackbone().noise_schedule.alphas_cumprod, dtype=torch.float64)


# -- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, vx, vy",
    [
        ("a ball moving right", 2, 0),
        ("a ball moving left", -2, 0),
        ("a ball moving up", 0, -2),
        ("a ball moving down", 0, 2),
        ("a ball moving up-left", -2, -2),
        ("a ball moving up right", 2, -2),
        ("a ball moving down-left", -2, 2),
        ("a ball moving down right", 2, 2),
        ("a ball going downleft", -2, 2),
        ("a ball moving leftwards", -2, 0),
    ],
)
def test_parse_directions(prompt, vx, vy):
    w = parse_prompt(prompt)
    assert (w.vx, w.vy) == (vx, vy)


def test_parse_shapes_colours_speeds_and_defaults():
    assert parse_prompt("a red ball moving right") == ToyWorld("ball", "red", 2, 0, "normal")
    assert parse_prompt("a yellow square moving down-left fast") == ToyWorld("square", "yellow", -3, 3, "fast")
    assert parse_prompt("a blue ball moving up slowly") == ToyWorld("ball", "blue", 0, -1, "slow")
    assert parse_prompt("A GREEN Square, going Up!!") == ToyWorld("square", "green", 0, -2, "normal")
    assert parse_prompt("the sprite is bouncing") == ToyWorld("ball", "white", 2, 0, "normal")
    for colour in ("red", "green", "blue", "yellow", "white"):
        assert parse_prompt(f"a {colour} ball").colour == colour
    for word, v in (("slow", 1), ("normal", 2), ("fast", 3)):
        assert parse_prompt(f"a ball moving left {word}").vx == -v


@pytest.mark.parametrize("prompt, bad", [("a red dog moving right", "dog"), ("a ball moving sideways", "sideways"), ("2 balls", "balls")])
def test_parse_unknown_word_named(prompt, bad):
    with pytest.raises(ValueError, match=bad) as e:
        parse_prompt(prompt)
    assert "allowed" in str(e.value) and "square" in str(e.value)  # the vocabulary is listed


@pytest.mark.parametrize("prompt", ["a red blue ball", "a ball moving left right", "a slow fast ball", "a ball square"])
def test_parse_contradictions_refused(prompt):
    with pytest.raises(ValueError):
        parse_prompt(prompt)


# -- the clip set ------------------------------------------------------------------------------


def simulate(p: int, d: int, v: int, R: int, frames: int) -> list[int]:
    """One axis by the rule (step v, bounce off the walls reversing direction), independent of `tri`."""
    out = [p]
    for _ in range(frames - 1):
        p += d * v
        if p > R:
            p, d = 2 * R - p, -d
        elif p < 0:
            p, d = -p, -d
        out.append(p)
    return out


@pytest.mark.parametrize("prompt", ["a ball moving right", "a ball moving down-left fast", "a ball moving up slowly", "a ball moving up-right"])
@pytest.mark.parametrize("frames, lh, lw", [(2, 16, 16), (16, 32, 32), (16, 16, 24)])
def test_clip_set_is_every_phase_of_the_bouncing_path(prompt, frames, lh, lw):
    """The clip set equals the clips simulated from every start (position, direction): no more, no fewer, no repeats."""
    w = parse_prompt(prompt)
    pos = clip_positions(w, frames, lh, lw)
    got = [tuple(map(tuple, c)) for c in pos.tolist()]
    assert len(set(got)) == len(got)  # no duplicates
    assert pos.min() >= 0 and (pos[..., 0] <= lh - SPRITE).all() and (pos[..., 1] <= lw - SPRITE).all()

    def axis(v: int, R: int) -> set[tuple[int, ...]]:
        if v == 0:
            return {(p,) * frames for p in range(R + 1)}
        return {tuple(simulate(p, d, abs(v), R, frames)) for p in range(R + 1) for d in (1, -1)}

    ys, xs = axis(w.vy, lh - SPRITE), axis(w.vx, lw - SPRITE)
    assert len(ys) == (2 * (lh - SPRITE) if w.vy else lh - SPRITE + 1)  # every phase once
    want = {tuple(zip(y, x)) for y in ys for x in xs}
    assert set(got) == want


# -- the denoiser against Bayes' rule ----------------------------------------------------------


def all_clips(w: ToyWorld, frames: int, lh: int, lw: int) -> torch.Tensor:
    """Every true clip as a dense tensor (N, 3, F, lh, lw) float64."""
    return torch.stack([render_clip(w, p, lh, lw) for p in clip_positions(w, frames, lh, lw)])


def brute_posterior(clips: torch.Tensor, x: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x0 | x], clip weights) by enumeration: full Gaussian log-likelihoods (no dropped terms) in float64; x (3, F, h, w), ab (F,)."""
    a, s2 = ab.sqrt().view(1, 1, -1, 1, 1), (1 - ab).view(1, 1, -1, 1, 1)
    loglik = (-((x.double()[None] - a * clips) ** 2) / (2 * s2)).sum(dim=(1, 2, 3, 4))
    p = torch.softmax(loglik, 0)
    return torch.einsum("n,n...->...", p, clips), p


def noisy(clip: torch.Tensor, t: torch.Tensor, seed: int) -> torch.Tensor:
    ab = AC[t.long()].view(1, -1, 1, 1)
    eps = torch.randn(clip.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ab.sqrt() * clip + (1 - ab).sqrt() * eps


def test_tiny_noise_recovers_the_true_clip():
    bb, w, f = ToyBackbone(), parse_prompt("a yellow square moving down-left fast"), 16
    pos = clip_positions(w, f, 32, 32)
    t = torch.zeros(2, f)
    clips = torch.stack([render_clip(w, pos[i], 32, 32) for i in (7, 1000)])
    x = torch.stack([noisy(c, t[0], i) for i, c in enumerate(clips)]).float()
    x0 = bb.posterior_mean(x, t, w)
    assert (x0.double() - clips).abs().max() < 1e-3
    eps = bb.denoise(x, t, w, 1.0)  # the noise prediction is that clean estimate, re-expressed
    ab = AC[0]
    assert torch.allclose((x - (1 - ab).sqrt() * eps) / ab.sqrt(), x0, atol=1e-4)


def test_no_evidence_gives_the_prior_mean():
    """A constant frame correlates equally with every position: the posterior is the prior, at any noise level."""
    bb, w, f = ToyBackbone(64, 64), parse_prompt("a red ball moving up-right slowly"), 5
    prior = all_clips(w, f, 16, 16).mean(0)
    x = torch.full((1, 3, f, 16, 16), 0.3, dtype=torch.float64)
    x0 = bb.posterior_mean(x, torch.tensor([[0.0, 10, 400, 800, 999]]), w)[0]
    assert (x0 - prior).abs().max() < 1e-9


def test_pure_noise_level_averages_to_the_prior_mean():
    """At t = 999, E over x of x0_hat(x) is the prior mean (the tower property), measured by Monte Carlo.

    One draw's x0_hat is *not* near the prior here: a bright 8x8 sprite over 16 frames leaves several
    nats of evidence even at alpha-bar(999) = 0.0047.
    """
    bb, w, f, K = ToyBackbone(64, 64), parse_prompt("a red ball moving right"), 16, 400
    clips = all_clips(w, f, 16, 16)
    prior = clips.mean(0)
    g = torch.Generator().manual_seed(0)
    c = clips[torch.randint(len(clips), (K,), generator=g)]
    ab = AC[999]
    x = ab.sqrt() * c + (1 - ab).sqrt() * torch.randn(c.shape, generator=g, dtype=torch.float64)
    x0 = bb.posterior_mean(x, torch.full((K, f), 999.0), w)
    assert (x0.mean(0) - prior).abs().mean() < 0.2 * (c - prior).abs().mean()
    assert (x0.mean(0) - prior).abs().max() < 0.15


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_brute_force_posterior_mixed_levels(dtype):
    """Mixed per-frame timesteps, two worlds in one batch (grouped by world), against explicit enumeration."""
    bb, f = ToyBackbone(64, 64), 6
    ball, square = parse_prompt("a blue ball moving down-left"), parse_prompt("a white square moving right fast")
    rows = [  # world, timesteps, true clip, seed: the first three leave the posterior spread over many clips
        (ball, [999, 980, 950, 900, 850, 800], 37, 0),
        (square, [999, 990, 999, 970, 999, 999], 74, 3),
        (ball, [999, 999, 900, 999, 940, 960], 111, 2),
        (square, [20, 250, 480, 610, 820, 999], 5, 4),  # a frame near clean: logits ~1e4 apart
    ]
    t = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    x = torch.stack([noisy(all_clips(w, f, 16, 16)[c], t[b], seed) for b, (w, _, c, seed) in enumerate(rows)]).to(dtype)
    want, weights = zip(*(brute_posterior(all_clips(w, f, 16, 16), x[b], AC[t[b].long()]) for b, (w, *_) in enumerate(rows)))
    assert all(p.max() < 0.5 for p in weights[:3]) and weights[3].max() > 0.999
    before = x.clone()
    x0 = bb.posterior_mean(x, t, [r[0] for r in rows])
    assert x0.dtype == dtype and torch.equal(x, before)  # the caller's tensor is untouched
    assert (x0.double() - torch.stack(want)).abs().max() < 1e-4
    eps = bb.denoise(x, t, [r[0] for r in rows], 7.5)  # guidance does nothing in this world
    ab = AC[t.long()].view(len(rows), 1, f, 1, 1)
    want_eps = (x.double() - ab.sqrt() * torch.stack(want)) / (1 - ab).sqrt()
    assert (eps.double() - want_eps).abs().max() < 1e-3  # / s amplifies x0's rounding at t = 20


def test_shared_level_mode():
    """Same as exact mode when a window's frames share a level; the brute force at the mean alpha-bar when not."""
    exact, shared, w, f = ToyBackbone(64, 64), ToyBackbone(64, 64, shared_level=True), parse_prompt("a green ball moving up"), 4
    clips = all_clips(w, f, 16, 16)
    same, mixed = torch.full((1, f), 500.0), torch.tensor([[700.0, 800, 900, 999]])
    x = noisy(clips[3], mixed[0], 0)[None]
    assert torch.equal(exact.denoise(x, same, w, 1.0), shared.denoise(x, same, w, 1.0))
    x0_exact, x0_shared = exact.posterior_mean(x, mixed, w), shared.posterior_mean(x, mixed, w)
    assert (x0_exact - x0_shared).abs().max() > 0.3
    assert (exact.denoise(x, mixed, w, 1.0) - shared.denoise(x, mixed, w, 1.0)).abs().max() > 0.1
    ab = AC[mixed[0].long()].mean().expand(f)
    assert (x0_shared[0] - brute_posterior(clips, x[0], ab)[0]).abs().max() < 1e-6
    # the noise prediction too is expressed at the mean level
    eps = shared.denoise(x, mixed, w, 1.0)
    assert torch.allclose(eps, (x - ab[0].sqrt() * x0_shared) / (1 - ab[0]).sqrt(), atol=1e-9)


# -- decoding, sizes, the registry -------------------------------------------------------------


@pytest.mark.parametrize("shape", ["square", "ball"])
def test_decoder(shape):
    bb = ToyBackbone()
    w = parse_prompt(f"a red {shape}")
    pos = torch.tensor([[3, 5], [10, 24], [24, 0]])
    clip = render_clip(w, pos, 32, 32).float()
    frames = bb.decoder().decode(clip)
    assert frames.dtype == np.uint8 and frames.shape == (3, 128, 128, 3)
    assert (frames[0, 100:, 100:] == BACKGROUND_LEVEL).all()  # flat areas land on whole levels
    for j, (y, x) in enumerate(pos.tolist()):
        assert (frames[j, 4 * y + 4 * SPRITE // 2, 4 * x + 4 * SPRITE // 2] == RGB["red"]).all()
    assert torch.equal(locate_sprite(w, clip), pos)
    pv = bb.preview(clip)
    assert pv.dtype == np.uint8 and pv.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("lh, lw", [(32, 32), (16, 40), (23, 17)])
def test_decoder_is_bilinear_interpolation(lh, lw):
    """The separable-matmul decoder equals F.interpolate(bilinear, align_corners=False) before rounding."""
    lat = torch.randn(3, 2, lh, lw, generator=torch.Generator().manual_seed(lh)) * 0.8
    ref = F.interpolate(lat.clamp(-1, 1).transpose(0, 1).double(), scale_factor=4, mode="bilinear", align_corners=False)
    ref = ((ref + 1) * 127.5).permute(0, 2, 3, 1).numpy()  # (F, 4h, 4w, 3) levels, unrounded
    got = ToyDecoder().decode(lat).astype(np.float64)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.5 + 1e-3  # rounding only
    assert (got == np.round(ref)).mean() > 0.9999  # the rest: float32 ties at x.5


@pytest.mark.parametrize("colour", list(RGB))
def test_square_edges_miss_the_rounding_boundaries(colour):
    """A square's decoded pixels, edges and corners included, lie at least 0.01 level from any x.5."""
    clip = render_clip(ToyWorld("square", colour), torch.tensor([[3, 5]]), 16, 16)  # float64
    up = F.interpolate(((clip + 1) * 127.5).transpose(0, 1), scale_factor=4, mode="bilinear", align_corners=False)
    assert ((up - up.floor() - 0.5).abs() > 0.01).all()


def test_palette_survives_one_ulp():
    """Every palette value decodes to its level even one float32 ulp off, so exact-mode runs reproduce true frames."""
    for level in [BACKGROUND_LEVEL, *(v for rgb in RGB.values() for v in rgb)]:
        v = torch.tensor(level / 127.5 - 1, dtype=torch.float32)
        for x in (torch.nextafter(v, v - 1), v, torch.nextafter(v, v + 1)):
            got = ToyDecoder().decode(x.expand(3, 1, 8, 8).clone())
            assert (got == level).all(), (level, x.item())


@pytest.mark.parametrize("size", [60, 130, 516, 0, -64, 100.0])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match=str(size)):
        ToyBackbone(height=size)
    with pytest.raises(ValueError, match=str(size)):
        ToyBackbone().latent_size(128, size)


def test_good_sizes_and_registry():
    assert ToyBackbone().latent_size(64, 512) == (16, 128)
    bb = fifo.load_backbone("toy", device="cpu")
    assert isinstance(bb, ToyBackbone) and bb.defaults == BACKBONES["toy"].defaults
    assert (bb.name, bb.native_frames, bb.prediction_type, bb.latent_channels) == ("toy", 16, "epsilon", 3)
    assert (bb.temporal_compression, bb.spatial_compression) == (1, 4)
    assert bb.encode_prompt("a red ball", negative_prompt="blurry, anything at all") == parse_prompt("a red ball")
    with pytest.raises(ValueError, match="dog"):
        bb.encode_prompt("a dog")


def test_generate_smoke():
    """The engine runs end to end on the toy world and the sprite is there in every frame."""
    bb = ToyBackbone(64, 64)
    cfg = fifo.FIFOConfig(frames_per_window=4, partitions=2, lookahead=False)
    frames = list(fifo.generate(bb, "a red square moving right", num_frames=6, config=cfg, seed=1))
    assert len(frames) == 6 and all(fr.shape == (64, 64, 3) and fr.dtype == np.uint8 for fr in frames)
    red = RGB["red"][0]
    assert all((np.abs(fr[..., 0].astype(int) - red) <= 10).sum() >= 0.5 * (4 * SPRITE) ** 2 for fr in frames)
