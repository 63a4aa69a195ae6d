"""Speed and scale: batched windows, the pipelined stream, windows split over ranks, GPU options.

Every comparison is on what the engine computes (popped latents, final queues) or on the frames;
nothing here is timed (benchmarks/speed.py prints the timings).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fakes import CausalGauss, GaussianBackbone
import fifo
from fifo import FIFOConfig, FIFOState, FIFOStream
from fifo.parallel import (
    DistributedFIFOStream,
    PipelinedFIFOStream,
    apply_gpu_options,
    distributed_context,
    generate_distributed,
    generate_fast,
    init_from_env,
    share_windows,
    spawn,
)
from fifo.schedule import windows

torch.set_num_threads(1)  # tiny models: threads cost more than they give; the ranks use one each too
PROMPT = "a red ball moving right"
MU, STD = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8), 0.5


def toy():
    return fifo.load_backbone("toy", height=64, width=64)


def gauss(**kw):
    kw = {"frames": 4, "partitions": 2, "lookahead": True, "eta": 1.0, **kw}
    return GaussianBackbone(MU, STD, **kw)


@pytest.fixture(scope="module")
def unet():
    pytest.importorskip("diffusers")
    from benchmarks.common import tiny_unet3d

    return tiny_unet3d(frames=4, partitions=2, lookahead=True, latent=8, channels=(8, 16))


def popped(stream, steps: int) -> torch.Tensor:
    """The next `steps` popped latents (steps, C, lh, lw), stepping directly."""
    with torch.inference_mode():
        return torch.stack([stream.step().clone() for _ in range(steps)])


# -- batched windows equal one window at a time ---------------------------------------------------


@pytest.mark.parametrize("cls", [FIFOStream, PipelinedFIFOStream])
@pytest.mark.parametrize("lookahead, f", [(True, 8), (True, 5), (False, 4)])
def test_batched_windows_equal_one_at_a_time_on_the_toy(cls, lookahead, f):
    cfg = dict(frames_per_window=f, partitions=2, lookahead=lookahead)
    bb = toy()
    one = popped(cls(bb, PROMPT, FIFOConfig(window_batch=1, **cfg), seed=2), 12)
    two = popped(cls(bb, PROMPT, FIFOConfig(window_batch=2, **cfg), seed=2), 12)
    every = popped(cls(bb, PROMPT, FIFOConfig(**cfg), seed=2), 12)
    torch.testing.assert_close(every, one, rtol=0, atol=1e-5)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", [FIFOStream, PipelinedFIFOStream])
def test_batched_windows_equal_one_at_a_time_on_a_tiny_unet3d(unet, cls):
    calls = []
    inner = unet.denoise
    unet.denoise = lambda lat, *a, **k: calls.append(lat.shape[0]) or inner(lat, *a, **k)
    try:
        one = popped(cls(unet, "a cat", FIFOConfig(window_batch=1, eta=1.0), seed=1), 4)
        assert set(calls[-4:]) == {1}
        every = popped(cls(unet, "a cat", FIFOConfig(eta=1.0), seed=1), 4)
        assert calls[-1] == 4  # 2n windows in one forward call (CFG's two halves inside the backbone)
    finally:
        del unet.denoise
    # random-weight latents reach ~40, where one float32 ulp is 4e-6: 1e-5 plus a relative 1e-6
    torch.testing.assert_close(every, one, rtol=1e-6, atol=1e-5)


# -- the pipelined stream ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [dict(decode_ahead=False, prefetch_noise=False), dict(decode_ahead=True, prefetch_noise=True)],
)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_pipelined_is_bit_identical(options, eta):
    bb = toy()
    cfg = FIFOConfig(frames_per_window=8, partitions=2, eta=eta)
    ref = np.stack(list(fifo.generate(bb, PROMPT, 20, config=cfg, seed=4)))
    got = np.stack(list(generate_fast(bb, PROMPT, 20, config=cfg, seed=4, **options)))
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("pred, eta", [("epsilon", 0.0), ("epsilon", 1.0), ("v_prediction", 1.0), ("flow", 0.0)])
def test_pipelined_latents_equal_the_engine(pred, eta):
    bb = gauss(prediction_type=pred, eta=eta)
    a, b = FIFOStream(bb, "p", seed=3), PipelinedFIFOStream(bb, "p", seed=3, decode_ahead=True, prefetch_noise=True)
    assert torch.equal(popped(b, 30), popped(a, 30)) and torch.equal(b.queue, a.queue)


def test_pipelined_decode_ahead_gives_the_same_frames_and_resumes_exactly(tmp_path):
    bb = gauss(eta=0.0)
    cfg = FIFOConfig()
    ref = np.stack(list(PipelinedFIFOStream(bb, "p", cfg, seed=7, decode_ahead=False).frames(25)))
    stream = PipelinedFIFOStream(bb, "p", cfg, seed=7, decode_ahead=True, prefetch_noise=True)
    first = list(stream.frames(9))
    assert stream.frames_emitted == 9 and not stream._inflight  # nothing stepped beyond what was asked
    stream.state().save(tmp_path / "s.pt")
    rest = list(PipelinedFIFOStream(bb, "p", cfg, state=FIFOState.load(tmp_path / "s.pt"), decode_ahead=True).frames(16))
    assert np.array_equal(np.stack(first + rest), ref)
    # the plain engine continues the pipelined stream's state too
    rest2 = list(fifo.generate(gauss(eta=0.0), "p", 16, state=FIFOState.load(tmp_path / "s.pt")))
    assert np.array_equal(np.stack(rest2), ref[9:])


def test_pipelined_temporal_vae_counts_callback_stop_and_state_inside_callback():
    bb = CausalGauss(MU, STD, frames=4, partitions=2)
    stream = PipelinedFIFOStream(bb, "p", decode_ahead=True)
    assert [int(f[0, 0, 0]) for f in stream.frames(7)] == list(range(7))
    states = []

    def cb(info):
        states.append(info["state"]())  # drains decodes in flight: a consistent snapshot
        return len(states) == 2

    got = [int(f[0, 0, 0]) for f in stream.frames(100, callback=cb)]
    assert got == list(range(7, 7 + len(got))) and len(got) == 2 + 4 + 4  # pending 2, then two steps of 4
    resumed = [int(f[0, 0, 0]) for f in fifo.generate(bb, "p", 5, state=states[0])]
    assert resumed == list(range(9, 14))


def test_no_threads_hooks_or_lists_accumulate(unet):
    before = threading.active_count()
    stream = PipelinedFIFOStream(unet, "a cat", seed=0, decode_ahead=True, prefetch_noise=True)
    list(stream.frames(3))
    shape, conds = stream.queue.shape, len(stream._conds)
    it = stream.frames(30)
    next(it)
    assert threading.active_count() > before  # the workers run while frames are made
    list(it)
    assert threading.active_count() == before
    assert stream.queue.shape == shape and len(stream._conds) == conds and not stream._inflight and len(stream._pending) == 0
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.unet.modules())
    assert hooks == 0  # the per-frame timestep hooks live only during a call


def test_stopping_the_generator_early_joins_the_workers_and_keeps_the_video_exact():
    before = threading.active_count()
    cfg = FIFOConfig(frames_per_window=4, partitions=1, eta=1.0)
    ref = np.stack(list(generate_fast(toy(), PROMPT, 8, config=cfg, decode_ahead=False, prefetch_noise=False)))
    stream = PipelinedFIFOStream(toy(), PROMPT, cfg, decode_ahead=True, prefetch_noise=True)
    it = stream.frames(50)
    first = [next(it) for _ in range(3)]
    it.close()
    assert threading.active_count() == before and not stream._inflight
    assert stream.frames_emitted == 3  # a frame decoded ahead waits in `pending` for the next call
    rest = list(stream.frames(5))
    assert np.array_equal(np.stack(first + rest), ref)


# -- several ranks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("f, n, lookahead", [(8, 2, True), (5, 3, True), (4, 3, False)])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shares_are_contiguous_and_tile_the_windows(f, n, lookahead, world):
    wins = windows(f, n, lookahead)
    shares = share_windows(wins, world)
    assert [w for s in shares for w in s] == wins
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_without_a_group():
    info = init_from_env("cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    with distributed_context("cpu") as ctx:
        assert ctx.is_main and ctx.world_size == 1 and ctx.stream_class is DistributedFIFOStream
    bb = toy()
    cfg = FIFOConfig(frames_per_window=8, partitions=2)
    ref = np.stack(list(generate_fast(bb, PROMPT, 12, config=cfg, seed=1)))
    assert np.array_equal(np.stack(list(generate_distributed(bb, PROMPT, 12, config=cfg, seed=1))), ref)


def _rank_run(ctx, out_dir, backbone, cfg_kw, frames, stop_rank):
    """One rank: generate, record the frames it receives and its final queue."""
    torch.manual_seed(ctx.rank)  # must not matter: every draw is keyed
    if backbone == "toy":
        bb = fifo.load_backbone("toy", height=64, width=64)
        prompt = PROMPT
    else:
        from benchmarks.common import tiny_unet3d

        bb, prompt = tiny_unet3d(frames=4, partitions=2, latent=8, channels=(8, 16)), "a cat"
    stream = ctx.stream_class(bb, prompt, FIFOConfig(**cfg_kw), 6)
    steps = []

    def cb(info):
        steps.append(info["step"])
        return len(steps) == 5 and ctx.rank == stop_rank

    got = list(stream.frames(frames, callback=cb if stop_rank is not None else None))
    np.save(f"{out_dir}/frames{ctx.rank}.npy", np.stack(got) if got else np.zeros((0,)))
    torch.save({"queue": stream.queue, "step": stream.step_index, "comm": stream.comm_steps, "bytes": stream.comm_bytes}, f"{out_dir}/q{ctx.rank}.pt")


def _single(backbone, cfg_kw, frames, stop_after=None):
    """The same run in this process, with one torch thread like the ranks (thread count changes rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _single_run(backbone, cfg_kw, frames, stop_after)
    finally:
        torch.set_num_threads(threads)


def _single_run(backbone, cfg_kw, frames, stop_after):
    if backbone == "toy":
        bb, prompt = fifo.load_backbone("toy", height=64, width=64), PROMPT
    else:
        from benchmarks.common import tiny_unet3d

        bb, prompt = tiny_unet3d(frames=4, partitions=2, latent=8, channels=(8, 16)), "a cat"
    s = DistributedFIFOStream(bb, prompt, FIFOConfig(**cfg_kw), 6)
    seen = []
    cb = (lambda info: seen.append(1) or len(seen) == stop_after) if stop_after else None
    return np.stack(list(s.frames(frames, callback=cb))), s


@pytest.mark.parametrize(
    "cfg_kw",
    [
        dict(frames_per_window=8, partitions=2),
        dict(frames_per_window=5, partitions=3, eta=1.0, window_batch=1),
    ],
)
def test_two_ranks_give_the_frames_of_one_process(tmp_path, cfg_kw):
    spawn(_rank_run, 2, args=(str(tmp_path), "toy", cfg_kw, 14, None), device="cpu", threads=1)
    ref, single = _single("toy", cfg_kw, 14)
    f0, f1 = np.load(tmp_path / "frames0.npy"), np.load(tmp_path / "frames1.npy")
    assert f0.shape == ref.shape and np.array_equal(f0, ref)
    assert f1.size == 0  # only rank 0 decodes and yields
    q0, q1 = torch.load(tmp_path / "q0.pt"), torch.load(tmp_path / "q1.pt")
    assert torch.equal(q0["queue"], q1["queue"]) and torch.equal(q0["queue"], single.queue)
    assert q0["step"] == q1["step"] == single.step_index and q0["comm"] == single.step_index
    assert q0["bytes"] > 0


def test_a_callback_on_any_rank_stops_every_rank(tmp_path):
    cfg_kw = dict(frames_per_window=4, partitions=2)
    spawn(_rank_run, 2, args=(str(tmp_path), "toy", cfg_kw, 40, 1), device="cpu", threads=1)
    ref, single = _single("toy", cfg_kw, 40, stop_after=5)
    q0, q1 = torch.load(tmp_path / "q0.pt"), torch.load(tmp_path / "q1.pt")
    assert q0["step"] == q1["step"] == single.step_index < 40 + 4
    assert np.array_equal(np.load(tmp_path / "frames0.npy"), ref)


def test_two_ranks_on_a_tiny_unet3d(tmp_path):
    pytest.importorskip("diffusers")
    cfg_kw = dict(eta=1.0)
    spawn(_rank_run, 2, args=(str(tmp_path), "unet3d", cfg_kw, 2, None), device="cpu", threads=1)
    ref, single = _single("unet3d", cfg_kw, 2)
    q0, q1 = torch.load(tmp_path / "q0.pt"), torch.load(tmp_path / "q1.pt")
    assert torch.equal(q0["queue"], q1["queue"])
    # each rank batches 2 windows where one process batches 4: kernels may round differently
    torch.testing.assert_close(q0["queue"], single.queue, rtol=1e-6, atol=1e-6)
    assert np.abs(np.load(tmp_path / "frames0.npy").astype(int) - ref).max() <= 1


# -- GPU options (checked on the CPU for what they must not change) ----------------------------------


def test_gpu_options_keep_the_outputs(unet):
    from benchmarks.common import tiny_unet3d

    bb = tiny_unet3d(frames=4, partitions=2, latent=8, channels=(8, 16))
    cond = bb.encode_prompt("a cat", "")
    x = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[10.0, 200, 400, 600], [300, 500, 700, 999]])
    ref = bb.denoise(x, t, cond, 9.0)
    done = apply_gpu_options(bb, channels_last=True, attention="sdpa")
    assert "channels_last" in done["unet"] and "sdpa" in done["unet"]
    torch.testing.assert_close(bb.denoise(x, t, cond, 9.0), ref, rtol=1e-4, atol=1e-4)  # other conv kernels
    assert apply_gpu_options(toy()) == {}
    with pytest.raises(ValueError, match="attention='flash3'"):
        apply_gpu_options(bb, attention="flash3")


def test_sdpa_option_keeps_processors_of_other_families():
    from diffusers import WanTransformer3DModel

    class Holder:  # apply_gpu_options looks for .unet / .transformer / .vae
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
            freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
        )  # fmt: skip

    before = {k: type(p) for k, p in Holder.transformer.attn_processors.items()}
    done = apply_gpu_options(Holder(), attention="sdpa")
    assert "kept the model's own processors" in done["transformer"]
    assert {k: type(p) for k, p in Holder.transformer.attn_processors.items()} == before
