"""The engine's contracts: determinism, resume, batching, schedules, callbacks, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import CausalGauss, GaussianBackbone
from fifo import FIFOConfig, FIFOState, FIFOStream, generate, latents_for_frames
from fifo.backbones.base import video_frames_before

MU, STD = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8), 0.5


def gauss(**kw) -> GaussianBackbone:
    kw = {"frames": 4, "partitions": 2, "lookahead": True, "eta": 1.0, **kw}
    return GaussianBackbone(MU, STD, **kw)


def frames_of(bb, n, **kw) -> np.ndarray:
    return np.stack(list(generate(bb, "p", n, **kw)))


def test_num_frames_exact_and_deterministic():
    a, b = frames_of(gauss(), 13, seed=3), frames_of(gauss(), 13, seed=3)
    assert a.shape == (13, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, frames_of(gauss(), 13, seed=4))


@pytest.mark.parametrize("lookahead", [False, True])
def test_batching_does_not_change_the_frames(lookahead):
    """Randomness keyed by (seed, frame, step): one window per call equals all windows in one call."""
    bb1, bbn = gauss(lookahead=lookahead), gauss(lookahead=lookahead)
    one = frames_of(bb1, 10, config=FIFOConfig(window_batch=1), seed=5)
    all_ = frames_of(bbn, 10, config=FIFOConfig(), seed=5)
    assert np.array_equal(one, all_)
    assert {c[0] for c in bb1.calls} == {1}
    assert max(c[0] for c in bbn.calls) == (4 if lookahead else 2)


@pytest.mark.parametrize("lookahead", [False, True])
def test_model_calls_per_emitted_frame(lookahead):
    """Warm start: L calls on one clip; then n (2n with lookahead) windows' worth per latent frame."""
    bb = gauss(lookahead=lookahead, partitions=3)
    frames_of(bb, 7)
    L, f = 12, 4
    windows_per_step = 6 if lookahead else 3
    assert len(bb.calls) == L + (L - f) + 7
    assert all(c == (1, 3, 4, 8, 8) for c in bb.calls[:L])
    assert all(c == (windows_per_step, 3, 4, 8, 8) for c in bb.calls[L:])


def test_warmup_policy():
    bb = gauss(eta=0.0)
    bb.sink = []
    keep = list(generate(bb, "p", 4, config=FIFOConfig(warmup="keep")))
    assert len(keep) == 4 and len(bb.sink) == 4  # the first popped frames are the video
    bb.sink = []
    discard = list(generate(bb, "p", 4))
    assert len(discard) == 4 and len(bb.sink) == 4  # warm-up frames are popped but never decoded
    assert not np.array_equal(np.stack(keep), np.stack(discard))


def test_resume_is_bit_identical(tmp_path):
    bb = gauss()
    whole = frames_of(bb, 20, seed=11)
    stream = FIFOStream(bb, "p", seed=11)
    first = list(stream.frames(8))
    stream.state().save(tmp_path / "s.pt")
    state = FIFOState.load(tmp_path / "s.pt")
    assert state.queue.device.type == "cpu" and state.frames_emitted == 8
    rest = list(generate(gauss(), "p", 12, state=state))
    assert np.array_equal(np.stack(first + rest), whole)


def test_state_records_its_prompts_and_older_files_still_load(tmp_path):
    stream = FIFOStream(gauss(), "0: a\n6: b", seed=2, negative_prompt="n")
    list(stream.frames(3))
    stream.state().save(tmp_path / "s.pt")
    assert FIFOState.load(tmp_path / "s.pt").meta == {"prompt": "0: a\n6: b", "negative_prompt": "n"}
    d = torch.load(tmp_path / "s.pt", weights_only=True)
    del d["meta"]  # a file written before states recorded their prompts
    torch.save(d, tmp_path / "old.pt")
    assert FIFOState.load(tmp_path / "old.pt").meta == {}


def test_resume_refuses_a_contradicting_request(tmp_path):
    bb = gauss()
    stream = FIFOStream(bb, "p", seed=1)
    list(stream.frames(2))
    state = stream.state()
    with pytest.raises(ValueError, match="seed=2 contradicts"):
        generate(bb, "p", 2, seed=2, state=state)
    with pytest.raises(ValueError, match="partitions=3 contradicts"):
        generate(bb, "p", 2, config=FIFOConfig(partitions=3), state=state)
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a fifo state file"):
        FIFOState.load(tmp_path / "junk.pt")


def test_callback_sees_progress_and_can_stop():
    seen = []

    def cb(info):
        seen.append((info["step"], info["frames_emitted"], info["warming_up"], tuple(info["queue"].shape)))
        return info["frames_emitted"] >= 5

    out = list(generate(gauss(), "p", 50, callback=cb))
    assert len(out) == 6  # the frame decoded at the stopping step is still handed out
    assert seen[0][2] and not seen[-1][2]
    assert seen[-1][3] == (3, 2 + 8, 8, 8)  # (C, h + L, lh, lw)
    info = {}
    list(generate(gauss(), "p", 1, callback=lambda i: info.update(i)))
    assert info["preview"]().shape == (10, 8, 8, 3) and info["timesteps"].shape == (10,)


def test_prompt_schedule_sweeps_through_the_queue():
    """Each window is conditioned on the prompt of its middle frame; prompts encoded once each."""
    bb = gauss(lookahead=False)
    seen = []
    denoise = bb.denoise
    bb.denoise = lambda lat, t, cond, g: (seen.append(list(cond)), denoise(lat, t, cond, g))[1]
    encoded = []
    bb.encode_prompt = lambda p, n="": (encoded.append(p), p)[1]
    stream = FIFOStream(bb, {0: "A", 6: "B"})
    list(stream.frames(10))
    assert encoded == ["A", "B"]
    L = 8  # f = 4, n = 2
    steps = seen[L:]  # after the warm start (conditioned on "A")
    # step k, window r covers main slots [4r, 4r+4) holding latent frames k+4r..; video frame = latent - (L - f);
    # middle frame k + 4r + 2 - 4 >= 6  <=>  k + 4r >= 8
    for k, conds in enumerate(steps):
        assert conds == ["B" if k + 4 * r >= 8 else "A" for r in range(2)], k


def test_temporal_vae_frames_count_and_resume_carries_surplus():
    assert [latents_for_frames(n, 4) for n in (0, 1, 2, 5, 6)] == [0, 1, 2, 2, 3]
    assert [video_frames_before(j, 4) for j in (0, 1, 2, 3)] == [0, 1, 5, 9]
    bb = CausalGauss(MU, STD, frames=4, partitions=2)
    stream = FIFOStream(bb, "p")
    first = list(stream.frames(7))  # latents give 1 + 4 + 4: two frames stay pending
    assert [int(f[0, 0, 0]) for f in first] == list(range(7))
    rest = list(generate(bb, "p", 6, state=stream.state()))
    assert [int(f[0, 0, 0]) for f in rest] == list(range(7, 13))


def test_memory_does_not_grow_with_length():
    bb = gauss()
    stream = FIFOStream(bb, "p")
    list(stream.frames(5))
    shape, n_conds = stream.queue.shape, len(stream._conds)
    for _ in stream.frames(200):
        pass
    assert stream.queue.shape == shape and len(stream._conds) == n_conds and len(stream._pending) == 0
    assert stream.frames_emitted == 205


def test_inputs_are_not_modified():
    bb = gauss()
    stream = FIFOStream(bb, "p")
    list(stream.frames(2))
    state = stream.state()
    before = state.queue.clone()
    list(generate(bb, "p", 3, state=state))
    assert torch.equal(state.queue, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": -1}, "num_frames=-1"),
        ({"num_frames": 2.5}, "num_frames=2.5"),
        ({"seed": -3}, "seed=-3"),
        ({"seed": "x"}, "seed='x'"),
        ({"height": 0}, "height=0"),
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": {3: "late"}}, "first prompt must start at frame 0"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, match):
    bb = gauss()
    args = {"prompt": "p", "num_frames": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(bb, args.pop("prompt"), args.pop("num_frames"), **args)
    assert bb.calls == []
