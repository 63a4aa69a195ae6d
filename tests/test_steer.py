"""Prompt changes while a stream runs: recorded at the frame they take effect, remade exactly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import fifo
from fifo.backbones.toy import ToyBackbone, locate_sprite, parse_prompt
from fifo.prompts import PromptSchedule

RIGHT, UP = "a red ball moving right", "a red ball moving up"
CFG = fifo.FIFOConfig(partitions=1)  # f = 16, L = 16, lookahead: h = 8
FRAMES, CHANGE_AFTER, SEED = 56, 20, 3


@pytest.fixture(scope="module")
def bb():
    return ToyBackbone(height=64, width=64)


def positions(bb, frames: np.ndarray) -> np.ndarray:
    """The sprite's top-left (y, x) in latent pixels in every frame, (N, 2)."""
    return locate_sprite(parse_prompt(RIGHT), bb.encode_frames(frames)).numpy()


@pytest.fixture(scope="module")
def steered(bb):
    """A run whose prompt changes from moving right to moving up after frame CHANGE_AFTER is out."""
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=SEED)
    out, info = [], {}
    for i, frame in enumerate(s.frames(FRAMES)):
        out.append(frame)
        if i == CHANGE_AFTER:
            info["earliest"] = s.earliest_change_frame()
            info["frame"] = s.change_prompt(UP)
    return s, np.stack(out), info


def test_the_change_is_recorded_at_the_tail_frame(steered):
    s, _, info = steered
    # after CHANGE_AFTER + 1 frames (no warm-up at n = 1) the next step's queue ends at latent frame CHANGE_AFTER + 1 + L - 1
    assert info["frame"] == CHANGE_AFTER + CFG.resolve(s.backbone).queue_length
    assert s.schedule.entries == ((0, RIGHT), (info["frame"], UP))
    assert info["earliest"] < info["frame"]
    assert s.state().meta["prompt"] == f"0: {RIGHT}\n{info['frame']}: {UP}"


def test_the_video_turns_at_the_recorded_frame_without_a_jump(bb, steered):
    _, frames, info = steered
    pos = positions(bb, frames)
    turn = info["frame"]
    dy, dx = np.abs(np.diff(pos, axis=0)).T
    x = pos[:, 1]
    walls = (x[: turn - 1] == x.min()) | (x[: turn - 1] == x.max())  # a bounce may rest one frame at a wall
    assert (dy[: turn - 1] == 0).all() and ((dx[: turn - 1] == 2) | ((dx[: turn - 1] == 0) & walls)).all()  # moving right, 2 px a frame
    moved_x = np.nonzero(dx)[0]
    stops = moved_x[-1] + 1  # the first frame from which x stays put
    half = CFG.resolve(bb).frames_per_window // 2
    assert turn <= stops <= turn + half, (turn, stops, pos.tolist())
    assert (dx[stops:] == 0).all() and dy[stops + half :].any()  # then it moves up (and down: bouncing), not right
    assert dx.max() <= 2 and dy.max() <= 3  # no jump (more than speed + 1 px, as the quality benchmark counts one), the turn included


def test_the_recorded_schedule_remakes_it_frame_for_frame(bb, steered):
    s, frames, _ = steered
    link_prompt = s.state().meta["prompt"]  # what a share link or the MP4's metadata carries
    again = np.stack(list(fifo.generate(bb, PromptSchedule.parse(link_prompt), FRAMES, CFG, seed=SEED)))
    assert np.array_equal(again, frames)


def test_a_change_from_another_thread_mid_run_is_reproducible(bb):
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=5)
    go, done, got = threading.Event(), threading.Event(), {}

    def visitor():
        go.wait(60)
        got["frame"] = s.change_prompt(UP, entry="head")
        done.set()

    t = threading.Thread(target=visitor)
    t.start()

    def callback(info):
        if info["step"] == 12:
            go.set()  # the change lands while the next steps run

    frames = np.stack(list(s.frames(40, callback)))
    t.join(60)
    assert done.is_set() and s.schedule.entries[-1] == (got["frame"], UP)
    again = np.stack(list(fifo.generate(bb, s.schedule.to_text(), 40, CFG, seed=5)))
    assert np.array_equal(again, frames)


def test_head_entry_is_sooner_than_tail_entry(bb):
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=0)
    list(s.frames(4))
    head = s.earliest_change_frame()
    tail = s.change_prompt(UP)  # tail
    assert head < tail
    assert s.change_prompt(RIGHT, entry="head") == head  # replaces the later entry: right all along
    assert s.schedule.entries == ((0, RIGHT),)


def test_each_distinct_prompt_is_encoded_once(bb, monkeypatch):
    calls = []
    enc = bb.encode_prompt
    monkeypatch.setattr(bb, "encode_prompt", lambda p, n="": calls.append(p) or enc(p, n))
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=0)
    frames = s.frames(30)
    for i, _ in enumerate(frames):
        if i in (2, 10):
            s.change_prompt(UP if i == 2 else RIGHT, frame=s.earliest_change_frame() + 2 * i)
    assert sorted(calls) == sorted([RIGHT, UP])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=UP, entry="middle"), "entry='middle'"),
        (dict(prompt="  "), "non-empty"),
        (dict(prompt="a\nb"), "one non-empty line"),
        (dict(prompt="a red ball moving sideways"), "unknown word"),
        (dict(prompt=UP, frame=3), "frame=3: the run has read the prompts up to frame"),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(bb, kwargs, match):
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=0)
    list(s.frames(6))
    with pytest.raises(ValueError, match=match):
        s.change_prompt(**kwargs)
    assert s.schedule.entries == ((0, RIGHT),)


def test_schedule_with_change():
    sch = PromptSchedule.parse("0: a\n10: b\n20: c")
    assert sch.with_change(15, "d").entries == ((0, "a"), (10, "b"), (15, "d"))
    assert sch.with_change(10, "d").entries == ((0, "a"), (10, "d"))
    assert sch.with_change(12, "b").entries == ((0, "a"), (10, "b"))  # already in force: no entry
    assert sch.entries == ((0, "a"), (10, "b"), (20, "c"))  # the original is untouched
    with pytest.raises(ValueError, match="frame=-1"):
        sch.with_change(-1, "d")


def test_a_saved_state_keeps_the_change_and_continues_exactly(bb, steered, tmp_path):
    s0 = fifo.FIFOStream(bb, RIGHT, CFG, seed=SEED)
    first = []
    for i, frame in enumerate(s0.frames(30)):
        first.append(frame)
        if i == CHANGE_AFTER:
            s0.change_prompt(UP)
    s0.state().save(tmp_path / "s.pt")
    st = fifo.FIFOState.load(tmp_path / "s.pt")
    rest = list(fifo.generate(bb, st.meta["prompt"], FRAMES - 30, state=st))
    assert np.array_equal(np.stack(first + rest), steered[1])


# -- fades: interpolated conditioning over a span of frames ------------------------------------------


def test_schedule_blends_parse_print_and_weigh():
    sch = PromptSchedule.parse("0: a\n10~4: b\n30: c")
    assert sch.blends == (0, 4, 0) and sch.to_text() == "0: a\n10~4: b\n30: c"
    assert PromptSchedule.parse(sch.to_text()) == sch and PromptSchedule.parse("0: a\n10: b").blends == ()
    assert [sch.blend_at(i) for i in (9, 10, 13, 14)] == [("a", "a", 1.0), ("a", "b", 0.2), ("a", "b", 0.8), ("b", "b", 1.0)]
    assert sch.with_change(12, "d", 3).to_text() == "0: a\n10~2: b\n12~3: d"  # the fade into b ends where d starts
    with pytest.raises(ValueError, match="the blend from frame 10 spans 40 frames, past the next entry at frame 30"):
        PromptSchedule.parse("0: a\n10~40: b\n30: c")


@pytest.fixture(scope="module")
def unet():
    from test_backbones import unet_backbone

    return unet_backbone(False)


def test_a_fade_interpolates_the_conditioning_and_remakes_exactly(unet, monkeypatch):
    seen = []
    denoise = unet.denoise
    monkeypatch.setattr(unet, "denoise", lambda x, t, cond, g: seen.append(cond) or denoise(x, t, cond, g))
    s = fifo.FIFOStream(unet, "a red ball", seed=0)
    frames = []
    for i, frame in enumerate(s.frames(12)):
        frames.append(frame)
        if i == 1:
            at = s.change_prompt("a blue cat", blend=4)
    assert s.schedule.to_text() == f"0: a red ball\n{at}~4: a blue cat"
    a, b = unet.encode_prompt("a red ball"), unet.encode_prompt("a blue cat")
    weights = set()
    for conds in seen:
        for c in conds if isinstance(conds, list) else [conds]:
            d, e = (c.positive - a.positive).flatten(), (b.positive - a.positive).flatten()
            w = round(float(d @ e / (e @ e)), 4)
            torch.testing.assert_close(c.positive, torch.lerp(a.positive, b.positive, w), atol=1e-5, rtol=0)  # exactly on the line
            weights.add(w)
    assert weights == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}  # (i + 1) / (4 + 1) over the 4 fading frames
    monkeypatch.undo()
    again = np.stack(list(fifo.generate(unet, s.schedule.to_text(), 12, seed=0)))
    assert np.array_equal(again, np.stack(frames))


def test_the_toy_world_refuses_fades_clearly(bb):
    s = fifo.FIFOStream(bb, RIGHT, CFG, seed=0)
    with pytest.raises(ValueError, match="toy cannot blend prompts"):
        s.change_prompt(UP, blend=4)
    assert s.schedule.entries == ((0, RIGHT),)
    with pytest.raises(ValueError, match="toy cannot blend prompts"):
        fifo.FIFOStream(bb, f"0: {RIGHT}\n20~4: {UP}", CFG)


def test_a_continued_video_with_a_new_prompt_is_remade_by_its_recorded_schedule(bb):
    """Extend (or Continue) with a changed prompt: the schedule it records remakes every frame.

    The frames in the queue when the first run stopped were begun with the old prompt, so the new
    one takes effect from `FIFOState.earliest_change_frame()`, the first frame no finished window read.
    """
    from fifo_app.settings import continue_schedule

    first = fifo.FIFOStream(bb, RIGHT, CFG, seed=SEED)
    a = np.stack(list(first.frames(24)))
    state = first.state()
    text = continue_schedule(RIGHT, UP, 24, state.earliest_change_frame())
    b = np.stack(list(fifo.FIFOStream(bb, text, state=state).frames(24)))
    again = np.stack(list(fifo.generate(bb, PromptSchedule.parse(text), 48, CFG, seed=SEED)))
    assert np.array_equal(again, np.concatenate([a, b]))
    # the stream's own earliest frame agrees (a resumed stream knows the steps that ran before it)
    assert state.earliest_change_frame() == fifo.FIFOStream(bb, RIGHT, state=state).earliest_change_frame()
    assert PromptSchedule.parse(text).entries[-1] == (state.earliest_change_frame(), UP)


@pytest.mark.parametrize("family", ["unet3d", "wan"])
def test_a_real_model_family_takes_a_change_mid_stream_and_remakes_it(family):
    """Tiny random-weight UNet3D and Wan: a change mid-stream encodes the new prompt, is recorded, and
    the recorded schedule remakes the video; frames before the change are the unchanged run's."""
    from test_backbones import unet_backbone, wan_backbone

    bb = unet_backbone(False) if family == "unet3d" else wan_backbone(False)
    h, w = bb.defaults.height, bb.defaults.width
    n = 12 if family == "unet3d" else 16  # a 4x causal VAE gives 4 frames per latent
    plain = np.stack(list(fifo.generate(bb, "a red ball", n, seed=2)))
    s = fifo.FIFOStream(bb, "a red ball", seed=2)
    frames, at = [], None
    for frame in s.frames(n):
        frames.append(frame)
        if at is None:
            at = s.change_prompt("a blue cat")
    frames = np.stack(frames)
    assert frames.shape == (n, h, w, 3) and 0 < at < n
    assert s.schedule.to_text() == f"0: a red ball\n{at}: a blue cat"
    again = np.stack(list(fifo.generate(bb, s.schedule.to_text(), n, seed=2)))
    assert np.array_equal(again, frames)
    assert np.array_equal(frames[:1], plain[:1])  # out before the change was sent
    assert not np.array_equal(frames[at:], plain[at:])  # from the recorded frame on it is another video
