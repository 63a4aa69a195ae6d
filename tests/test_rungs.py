"""Several frames per rung (`b = frames_per_rung`): layout, refusals, closed forms, cost, b = 1 unchanged."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from fakes import GaussianBackbone
from fifo import FIFOConfig, FIFOState, FIFOStream, generate
from fifo.backbones.toy import ToyBackbone
from fifo.parallel import DistributedFIFOStream, PipelinedFIFOStream, spawn
from fifo.schedule import allowed_frames_per_rung, make_ladder, slot_timesteps, windows
from test_closed_form import GAUSS_MU, GAUSS_STD, chain_moments

C, H, W = 2, 16, 16
MU, STD = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8), 0.5
TOY_SCHEDULE = "0: a red ball moving right\n4: a blue square moving up"


def sha(a) -> str:
    a = a.numpy() if torch.is_tensor(a) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def pops(stream: FIFOStream, steps: int) -> torch.Tensor:
    """The latents popped by the next `steps` steps, in order: (steps * b, C, lh, lw)."""
    with torch.inference_mode():
        return torch.cat([stream.step_frames().transpose(0, 1).clone() for _ in range(steps)])


# -- b = 1 is the FIFO of before, bit for bit ------------------------------------------------------

# Hashes of frames made by the engine before frames_per_rung existed (same runs, same seeds, same for
# 1 and 2 torch threads), with lookahead's context frames shown clean (t = 0). The Gaussian model's
# frames are independent, so lookahead does not change its latents; the toy runs cover lookahead.
GAUSS_BEFORE = {0.0: "47db3e2bed69477d", 1.0: "0179b6253364f44d"}  # popped float32 latents
TOY_BEFORE = {  # uint8 frames
    (False, "engine"): "3397da0a55b203a1",
    (False, "pipelined"): "1e6172699b8bc2ab",
    (True, "engine"): "cb3677df58ef7b9c",
    (True, "pipelined"): "2bc887656abe950d",
}


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("b", [None, 1])
def test_one_frame_per_rung_is_the_earlier_engine_bit_for_bit_gaussian(lookahead, eta, b):
    bb = GaussianBackbone(MU, STD, frames=4, partitions=3, lookahead=lookahead, eta=eta)
    bb.sink = []
    list(generate(bb, "0: a\n5: b", 12, config=FIFOConfig(frames_per_rung=b), seed=3))
    assert sha(torch.stack(bb.sink)) == GAUSS_BEFORE[eta]


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("kind", ["engine", "pipelined"])
def test_one_frame_per_rung_is_the_earlier_engine_bit_for_bit_toy(lookahead, kind):
    cfg = FIFOConfig(frames_per_window=6, partitions=2, lookahead=lookahead, eta=0.5, frames_per_rung=1)
    if kind == "engine":
        frames = generate(ToyBackbone(64, 64), TOY_SCHEDULE, 10, config=cfg, seed=1)
    else:
        frames = generate(ToyBackbone(64, 64), "a red ball moving right", 10, config=cfg, seed=1,
                          stream_class=PipelinedFIFOStream, decode_ahead=True, prefetch_noise=True)  # fmt: skip
    assert sha(np.stack(list(frames))) == TOY_BEFORE[(lookahead, kind)]


# -- which b a layout allows ----------------------------------------------------------------------


def test_allowed_frames_per_rung():
    assert allowed_frames_per_rung(16, False) == (1, 2, 4, 8, 16)
    assert allowed_frames_per_rung(16, True) == (1, 2, 4, 8)
    assert allowed_frames_per_rung(6, True) == (1, 3)
    assert allowed_frames_per_rung(5, False) == (1, 5)
    assert allowed_frames_per_rung(5, True) == (1,)
    for f in range(2, 20):
        for la in (False, True):
            for b in allowed_frames_per_rung(f, la):  # every rung inside one written span
                for w in windows(f, 3, la, b):
                    h = f // 2 if la else 0
                    assert (w.write_from - h) % b == 0 and (w.stop - h) % b == 0


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(frames_per_rung=0), "frames_per_rung=0: must be an integer in [1, 256]"),
        (dict(frames_per_rung=2.0), "frames_per_rung=2.0: must be an integer"),
        (dict(frames_per_rung=True), "frames_per_rung=True: must be an integer"),
        (dict(frames_per_window=16, lookahead=False, frames_per_rung=3), "must divide f; allowed are [1, 2, 4, 8, 16]"),
        (dict(frames_per_window=16, lookahead=True, frames_per_rung=16), "must divide f // 2 (1 for odd f); allowed are [1, 2, 4, 8]"),
        (dict(frames_per_window=5, lookahead=True, frames_per_rung=5), "frames_per_window=5 and lookahead=True"),
    ],
)
def test_config_refuses_odd_frames_per_rung(kw, message):
    with pytest.raises(ValueError) as e:
        FIFOConfig(**kw)
    assert message in str(e.value) and str(e.value).startswith("frames_per_rung=")


def test_resolve_checks_b_against_the_backbones_layout():
    bb = GaussianBackbone(MU, STD, frames=4, partitions=2, lookahead=True)
    with pytest.raises(ValueError, match=r"frames_per_rung=4: with frames_per_window=4 and lookahead=True"):
        FIFOConfig(frames_per_rung=4).resolve(bb)
    cfg = FIFOConfig(frames_per_rung=4, lookahead=False).resolve(bb)
    assert (cfg.queue_length, cfg.rungs, cfg.steps, cfg.warmup_frames, cfg.warmup_steps) == (8, 2, 2, 4, 1)
    assert FIFOConfig().resolve(bb).frames_per_rung == 1


@pytest.mark.parametrize("f, n, b, lookahead", [(16, 4, 1, True), (16, 4, 4, True), (16, 1, 16, False), (8, 3, 2, False), (6, 2, 3, True)])
def test_steps_and_windows_per_frame(f, n, b, lookahead):
    cfg = FIFOConfig(frames_per_window=f, partitions=n, lookahead=lookahead, eta=0.0, guidance_scale=1.0, fps=8, frames_per_rung=b)
    assert cfg.steps == f * n // b
    assert cfg.windows_per_frame == (2 * n if lookahead else n) / b


# -- closed forms ---------------------------------------------------------------------------------

LAYOUTS = [  # (f, b, n, lookahead)
    (4, 2, 2, False), (4, 4, 1, False), (4, 4, 3, False), (5, 5, 2, False),
    (4, 2, 3, True), (6, 3, 2, True), (8, 4, 2, True), (6, 3, 1, True),
]  # fmt: skip


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
@pytest.mark.parametrize("f, b, n, lookahead", LAYOUTS)
def test_point_mass_every_frame_exact(prediction_type, f, b, n, lookahead):
    target = torch.linspace(-1.5, 1.5, C * H * W).view(C, H, W)
    bb = GaussianBackbone(target, 0.0, prediction_type, frames=f, partitions=n, lookahead=lookahead)
    eta = 0.0 if prediction_type == "flow" else 1.0
    stream = FIFOStream(bb, "data", FIFOConfig(eta=eta, frames_per_rung=b))
    out = pops(stream, 30 // b)
    assert out.shape[0] == 30 // b * b
    assert (out - target).abs().max() < 1e-4


STEPS = 224  # tail-born frames compared with the chain


def moment_errors(f, b, n, lookahead, eta, tamper=None, rung_labels=None):
    """(z of the pooled mean error, z of the pooled variance error) of tail-born frames vs the chain over R rungs."""
    bb = GaussianBackbone(GAUSS_MU, GAUSS_STD, frames=f, partitions=n, lookahead=lookahead, eta=eta)
    stream = FIFOStream(bb, "data", FIFOConfig(frames_per_rung=b), seed=7)
    if tamper is not None:
        tamper(stream)
    L, R = f * n, f * n // b
    x = pops(stream, (L + STEPS) // b)[L:].double()  # the first L pops were in the warm-started queue
    m, v = chain_moments(make_ladder(bb.noise_schedule, R), GAUSS_MU, GAUSS_STD, eta, rung_labels=rung_labels)
    k, p = x.shape[0], m.numel()
    z_mean = ((x.mean(0) - m) / (v / k).sqrt()).sum() / math.sqrt(p)
    ratio = (x.var(0) / v).mean() - 1
    return z_mean.item(), ratio.item() / math.sqrt(2 / ((k - 1) * p))


@pytest.mark.parametrize("f, b, n, lookahead", [(4, 2, 2, False), (4, 4, 2, False), (4, 2, 3, True), (8, 4, 2, True)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gaussian_moments_match_the_chain_over_the_rungs(f, b, n, lookahead, eta):
    """Each frame takes R = f n / b steps, one per rung: its moments are the R-step chain's."""
    z_mean, z_var = moment_errors(f, b, n, lookahead, eta)
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("rung", [0, 1])
def test_a_mislabelled_rung_is_caught(lookahead, rung):
    """Tell the model rung r+1's level on all b slots of rung r: the moment test fails, the mislabelled chain explains it."""
    f, b, n = 8, 2, 2  # R = 8 rungs
    h = f // 2 if lookahead else 0

    def tamper(stream):
        stream._slot_t = stream._slot_t.clone()
        stream._slot_t[h + rung * b : h + (rung + 1) * b] = stream._slot_t[h + (rung + 1) * b]

    z_mean, z_var = moment_errors(f, b, n, lookahead, 0.0, tamper=tamper)
    assert max(abs(z_mean), abs(z_var)) > 5, (z_mean, z_var)
    labels = list(range(8))
    labels[rung] = rung + 1
    z_mean, z_var = moment_errors(f, b, n, lookahead, 0.0, tamper=tamper, rung_labels=labels)
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)


def test_the_rung_of_every_slot():
    lad = make_ladder(GaussianBackbone(MU, STD).noise_schedule, 3)
    t = slot_timesteps(lad, 2, 4)  # 2 context slots (clean: t = 0), 3 rungs of 4 frames
    t0, t1, t2 = lad.timesteps.tolist()
    assert t.tolist() == [0.0] * 2 + [t0] * 4 + [t1] * 4 + [t2] * 4


# -- cost: forward calls counted ------------------------------------------------------------------


class Recording(GaussianBackbone):
    """Records the timesteps of every window it is called on."""

    def denoise(self, latents, timesteps, cond, guidance_scale):
        self.windows_t = getattr(self, "windows_t", []) + list(timesteps)
        return super().denoise(latents, timesteps, cond, guidance_scale)


@pytest.mark.parametrize("f, n, b, lookahead", [(4, 2, 1, True), (4, 2, 2, True), (4, 3, 4, False), (8, 2, 2, False), (8, 4, 4, True)])
def test_forward_calls_per_frame_are_counted(f, n, b, lookahead):
    """Warm start: R calls on one clip; then n / b (2n / b with lookahead) windows per emitted latent frame."""
    bb = Recording(MU, STD, frames=f, partitions=n, lookahead=lookahead)
    cfg = FIFOConfig(frames_per_rung=b).resolve(bb)
    frames = 8 * b
    assert len(list(generate(bb, "p", frames, config=cfg))) == frames
    R, L = f * n // b, f * n
    assert len(bb.calls) >= R and all(c[0] == 1 for c in bb.calls[:R])
    windows_after = sum(c[0] for c in bb.calls[R:])
    steps = len(bb.calls) - R
    assert steps == (L - f + frames) // b  # every popped latent frame: warm-up, then the video
    assert windows_after / (steps * b) == cfg.windows_per_frame == (2 * n if lookahead else n) / b


def test_b_equals_f_is_block_by_block():
    """b = f, n = 1: one rung; each step denoises one block of f frames, all at one level, from pure noise."""
    bb = Recording(MU, STD, frames=4, partitions=1, lookahead=False)
    cfg = FIFOConfig(frames_per_rung=4).resolve(bb)
    assert (cfg.rungs, cfg.warmup_frames) == (1, 0)
    assert len(list(generate(bb, "p", 12, config=cfg))) == 12
    assert len(bb.calls) == 1 + 3 and all(c == (1, 3, 4, 8, 8) for c in bb.calls)
    top = make_ladder(bb.noise_schedule, 1).timesteps[0].item()
    assert all(t.tolist() == [top] * 4 for t in bb.windows_t)
    bb2 = Recording(MU, STD, frames=4, partitions=3, lookahead=False)  # b = f, n = 3: every window one level
    list(generate(bb2, "p", 8, config=FIFOConfig(frames_per_rung=4)))
    assert all(len(set(t.tolist())) == 1 for t in bb2.windows_t)


# -- the rest of the engine follows ----------------------------------------------------------------


def gauss(**kw):
    kw = {"frames": 4, "partitions": 2, "lookahead": True, "eta": 1.0, **kw}
    return GaussianBackbone(MU, STD, **kw)


@pytest.mark.parametrize("lookahead", [False, True])
def test_batching_and_pipelining_do_not_change_the_frames(lookahead):
    cfg = dict(frames_per_window=6, partitions=2, lookahead=lookahead, eta=0.5, frames_per_rung=3)
    ref = np.stack(list(generate(ToyBackbone(64, 64), TOY_SCHEDULE, 10, config=FIFOConfig(**cfg), seed=1)))
    one = np.stack(list(generate(ToyBackbone(64, 64), TOY_SCHEDULE, 10, config=FIFOConfig(window_batch=1, **cfg), seed=1)))
    pipe = np.stack(list(generate(ToyBackbone(64, 64), TOY_SCHEDULE, 10, config=FIFOConfig(**cfg), seed=1,
                                  stream_class=PipelinedFIFOStream, decode_ahead=True, prefetch_noise=True)))  # fmt: skip
    assert ref.shape == (10, 64, 64, 3) and np.array_equal(ref, one) and np.array_equal(ref, pipe)


@pytest.mark.parametrize("stream_class", [FIFOStream, PipelinedFIFOStream])
def test_resume_is_bit_identical_and_keeps_b(tmp_path, stream_class):
    cfg = FIFOConfig(frames_per_rung=2)
    whole = np.stack(list(generate(gauss(), "0: a\n9: b", 21, config=cfg, seed=11)))
    stream = stream_class(gauss(), "0: a\n9: b", cfg, seed=11)
    first = list(stream.frames(7))  # mid-step: one of the step's two frames is still pending
    stream.state().save(tmp_path / "s.pt")
    state = FIFOState.load(tmp_path / "s.pt")
    assert state.config["frames_per_rung"] == 2
    rest = list(generate(gauss(), "0: a\n9: b", 14, state=state))  # b comes from the state
    assert np.array_equal(np.stack(first + rest), whole)
    with pytest.raises(ValueError, match=r"frames_per_rung=1 contradicts the state being continued \(frames_per_rung=2\)"):
        FIFOStream(gauss(), "p", FIFOConfig(frames_per_rung=1), state=state)


def test_a_state_from_before_the_field_has_one_frame_per_rung(tmp_path):
    stream = FIFOStream(gauss(), "p", seed=2)
    list(stream.frames(3))
    st = stream.state()
    del st.config["frames_per_rung"]
    rest = list(generate(gauss(), "p", 4, state=st))
    assert len(rest) == 4


def test_prompt_schedule_sweeps_through_the_rungs():
    """A window takes its middle frame's prompt: with b = 3, frames far before the change do not see it."""
    cfg = FIFOConfig(frames_per_window=6, partitions=2, frames_per_rung=3, lookahead=False)
    one = np.stack(list(generate(ToyBackbone(64, 64), "a red ball moving right", 30, config=cfg, seed=1)))
    schedule = "0: a red ball moving right\n24: a blue square moving up"
    sched = np.stack(list(generate(ToyBackbone(64, 64), schedule, 30, config=cfg, seed=1)))
    assert np.array_equal(one[:12], sched[:12])  # popped before any window's middle frame reached 24
    assert not np.array_equal(one[24:], sched[24:])


def test_callback_sees_warming_up_by_steps():
    seen = []
    bb = gauss(lookahead=False, partitions=3)  # L = 12, f = 4: 8 warm-up frames = 4 steps of 2
    stream = FIFOStream(bb, "p", FIFOConfig(frames_per_rung=2))
    list(stream.frames(4, callback=lambda i: seen.append((i["step"], i["warming_up"]))))
    assert seen[:6] == [(1, True), (2, True), (3, True), (4, True), (5, False), (6, False)]


def _rank_run(ctx, out_dir, cfg_kw, frames):
    stream = ctx.stream_class(ToyBackbone(64, 64), "a red ball moving right", FIFOConfig(**cfg_kw), 6)
    got = list(stream.frames(frames))
    np.save(f"{out_dir}/frames{ctx.rank}.npy", np.stack(got) if got else np.zeros((0,)))


def test_two_ranks_give_the_frames_of_one_process(tmp_path):
    cfg_kw = dict(frames_per_window=8, partitions=2, lookahead=True, eta=1.0, frames_per_rung=2)
    spawn(_rank_run, 2, args=(str(tmp_path), cfg_kw, 12), device="cpu", threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the ranks: the thread count changes rounding
    try:
        single = DistributedFIFOStream(ToyBackbone(64, 64), "a red ball moving right", FIFOConfig(**cfg_kw), 6)
        ref = np.stack(list(single.frames(12)))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(tmp_path / "frames0.npy"), ref) and np.load(tmp_path / "frames1.npy").size == 0


def test_frontier_benchmark_counts_the_windows_it_reports(capsys, tmp_path):
    """The smoke grid in two parts, merged: counted windows per frame equal n / b (2n / b), and the picks are named."""
    import json

    from benchmarks import frontier

    common = ["--grid", "smoke", "--frames", "24", "--size", "64", "--prompts", "a red ball moving right", "--plot", ""]
    for k in (1, 2):
        assert frontier.main(common + ["--part", f"{k}/2", "--json", str(tmp_path / f"p{k}.json")]) == 0
    results = [r for k in (1, 2) for r in json.loads((tmp_path / f"p{k}.json").read_text())["results"]]
    assert sorted((r["setting"]["b"], r["counted"]) for r in results) == [(1, 8.0), (4, 2.0), (16, 1 / 16)]
    capsys.readouterr()
    assert frontier.main(["--merge", str(tmp_path / "p1.json"), str(tmp_path / "p2.json"), "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "merged 3 settings" in out and "f=16 n=4 b=1 LA (paper)" in out
    assert "cheapest setting with fidelity <= the paper default's" in out and "best fidelity with motion kept at <= a quarter" in out
    assert (tmp_path / "f.png").stat().st_size > 10_000
    for s in frontier.grid("full"):
        s.config  # every layout of every grid is one the config accepts


def test_cli_frames_per_rung(tmp_path):
    """`--frames-per-rung` reaches the engine and the video's metadata; an odd value is one line, exit 2."""
    import json

    from fifo.video import probe_video
    from test_cli import cli

    out = tmp_path / "b4.mp4"
    r = cli("a red ball moving right", "--frames", "18", "--partitions", "2", "--frames-per-rung", "4", "--height", "64",
            "--width", "64", "-o", str(out), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = probe_video(out)
    assert info["frames"] == 18 and json.loads(info["tags"]["comment"])["frames_per_rung"] == 4
    r = cli("a red ball", "--frames-per-rung", "3", "--quiet", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "frames_per_rung=3: with frames_per_window=16 and lookahead=True" in lines[0]
    assert not list(tmp_path.glob("*.mp4"))[1:]  # only the first run's video
