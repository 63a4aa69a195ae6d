"""Runs that start from known frames: the user's clip or picture, encoded by the backbone's own VAE."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fifo
from fifo.backbones.encoders import causal_count, fit_frames, known_latents, load_known, to_unit
from fifo.backbones.toy import ToyBackbone, clip_positions, locate_sprite, parse_prompt
from fifo.video import probe_video, read_video, write_video

CFG = fifo.FIFOConfig(partitions=1)  # f = 16 = L, lookahead
CASES = [("a red ball moving right", 0), ("a blue square moving down fast", 1), ("a green ball moving up-left slow", 2)]


@pytest.fixture(scope="module")
def bb():
    return ToyBackbone(height=64, width=64)


def positions(bb, prompt: str, frames: np.ndarray) -> np.ndarray:
    return locate_sprite(parse_prompt(prompt), bb.encode_frames(frames)).numpy()


def is_true_clip(bb, prompt: str, pos: np.ndarray) -> bool:
    """The positions (F, 2) are one of the toy world's true clips: one path, one direction, one speed."""
    true = clip_positions(parse_prompt(prompt), len(pos), *bb.latent_size(64, 64)).numpy()
    return bool((true == pos[None]).all(axis=(1, 2)).any())


@pytest.mark.parametrize("prompt, seed", CASES)
def test_a_cut_video_continues_across_the_seam(bb, prompt, seed):
    video = np.stack(list(fifo.generate(bb, prompt, 48, CFG, seed=seed)))
    clip, cut = video[:-16], video[-16:]
    known = known_latents(bb, clip, 64, 64)
    new = np.stack(list(fifo.FIFOStream(bb, prompt, CFG, seed=seed + 7, known=known).frames(16)))
    assert new.shape == (16, 64, 64, 3)
    seam = positions(bb, prompt, np.concatenate([clip[-16:], new]))
    assert is_true_clip(bb, prompt, seam), seam.tolist()  # last position, direction and speed carry on
    # the world is deterministic given position and velocity: the continuation re-makes the cut frames' path
    assert np.array_equal(positions(bb, prompt, new), positions(bb, prompt, cut))


@pytest.mark.parametrize("clip_len", [4, 1])
def test_short_clips_and_pictures_continue_from_their_last_frame(bb, clip_len):
    prompt = "a red ball moving right"
    video = np.stack(list(fifo.generate(bb, prompt, 24, CFG, seed=4)))
    clip = video[8 : 8 + clip_len]
    new = np.stack(list(fifo.generate(bb, prompt, 12, CFG, seed=9, known=known_latents(bb, clip, 64, 64))))
    seam = positions(bb, prompt, np.concatenate([clip, new]))
    assert is_true_clip(bb, prompt, seam), seam.tolist()


def test_known_frames_are_held_until_they_leave_the_queue(bb):
    prompt = "a red ball moving right"
    clip = np.stack(list(fifo.generate(bb, prompt, 20, CFG, seed=1)))
    known = known_latents(bb, clip, 64, 64)
    s = fifo.FIFOStream(bb, prompt, CFG, seed=2, known=known)
    popped = [s.step() for _ in range(s.warmup)]
    assert s.warmup == 16 and s.frames_emitted == 0  # the last L = 16 known frames, none of them shown
    assert torch.equal(torch.stack(popped, 1), known[:, -16:])  # each leaves the queue exactly as it was known


def test_a_state_saved_mid_known_resumes_exactly(bb, tmp_path):
    prompt = "a blue square moving down fast"
    known = known_latents(bb, np.stack(list(fifo.generate(bb, prompt, 20, CFG, seed=1))), 64, 64)
    whole = np.stack(list(fifo.generate(bb, prompt, 10, CFG, seed=3, known=known)))
    s = fifo.FIFOStream(bb, prompt, CFG, seed=3, known=known)
    for _ in range(5):  # still popping known frames
        s.step()
    s.state().save(tmp_path / "s.pt")
    rest = np.stack(list(fifo.generate(bb, prompt, 10, state=fifo.FIFOState.load(tmp_path / "s.pt"))))
    assert np.array_equal(rest, whole)


def test_toy_encoder_inverts_its_decoder(bb):
    z = torch.rand(3, 5, 16, 16) * 2 - 1
    frames = bb.decoder().decode(z)
    again = bb.decoder().decode(bb.encode_frames(frames))
    assert np.abs(again.astype(int) - frames.astype(int)).max() <= 1


def test_frames_are_fitted_to_the_model_size():
    frames = np.zeros((2, 90, 160, 3), np.uint8)
    frames[:, :, 70:90] = 255  # a white bar in the middle of a 16:9 frame
    out = fit_frames(frames, 64, 64)  # cover: 64 x 114, then the centre 64 x 64
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert out[0, 32, 32].tolist() == [255, 255, 255] and out[0, 32, 0].tolist() == [0, 0, 0]
    assert fit_frames(frames[:, :64, :64], 64, 64) is not None


def test_bad_known_inputs_get_clear_errors(bb, tmp_path):
    bad_shape = r"known latents of shape \(3, 4, 8, 8\): expected finite values of shape \(3, K >= 1, 16, 16\) for 64x64"
    with pytest.raises(ValueError, match=bad_shape):
        fifo.FIFOStream(bb, "a red ball", CFG, known=torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match="not both"):
        s = fifo.FIFOStream(bb, "a red ball", CFG)
        fifo.FIFOStream(bb, "a red ball", CFG, state=s.state(), known=torch.zeros(3, 4, 16, 16))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="clip 'junk.mp4' is not a readable video"):
        load_known(bb, tmp_path / "junk.mp4", "video", 64, 64)
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="picture 'junk.png' is not a readable image"):
        load_known(bb, tmp_path / "junk.png", "image", 64, 64)
    write_video(tmp_path / "one.mp4", [np.zeros((64, 64, 3), np.uint8)], 8)
    with pytest.raises(ValueError, match="clip 'one.mp4' has 1 frame\\(s\\): toy needs at least 2"):
        load_known(bb, tmp_path / "one.mp4", "video", 64, 64)
    with pytest.raises(ValueError, match="is a video: continue it as a clip"):
        load_known(bb, tmp_path / "one.mp4", "image", 64, 64)
    with pytest.raises(ValueError, match="height=60"):
        load_known(bb, tmp_path / "one.mp4", "video", 60, 64)
    with pytest.raises(ValueError, match="clip 'missing.mp4': no such file") as e:
        load_known(bb, tmp_path / "missing.mp4", "video", 64, 64)
    assert str(tmp_path) not in str(e.value)  # the file's name, never its folder


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "fifo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_cli_continues_a_clip_and_starts_from_a_picture(bb, tmp_path):
    prompt = "a red ball moving right"
    size = ["--height", "64", "--width", "64", "--partitions", "1", "--quiet"]
    video = np.stack(list(fifo.generate(bb, prompt, 36, CFG, seed=0)))
    write_video(tmp_path / "clip.mp4", video[:20], 12)
    r = cli(prompt, "--init-video", "clip.mp4", "--frames", "16", "-o", "out.mp4", "--seed", "5", *size, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = read_video(tmp_path / "out.mp4")
    assert len(out) == 16
    clip = read_video(tmp_path / "clip.mp4")
    assert is_true_clip(bb, prompt, positions(bb, prompt, np.concatenate([clip[-8:], out[:8]])))
    assert json.loads(probe_video(tmp_path / "out.mp4")["tags"]["comment"])["init"] == "video"

    from PIL import Image

    # 64 x 96, the frame between two bands of background: cropped to fit, no resampling. (A resampled
    # picture is off the toy's lattice, and its exact denoiser, shown such a frame as clean context,
    # cannot place the sprite: see docs/known-frames.md.)
    pic = np.pad(video[3], ((0, 0), (16, 16), (0, 0)), mode="edge")
    Image.fromarray(pic).save(tmp_path / "pic.png")
    r = cli(prompt, "--init-image", "pic.png", "--frames", "10", "-o", "pic.mp4", *size, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = read_video(tmp_path / "pic.mp4")
    assert len(out) == 11  # the picture, then 10 new frames
    pos = positions(bb, prompt, out)
    assert (pos[0] == positions(bb, prompt, video[3:4])[0]).all()  # the picture opens the video
    assert np.abs(np.diff(pos[:3], axis=0)).max() <= 2  # and the sprite leaves it at its speed
    # Not asserted: the whole continuation as one true clip. With the lookahead context shown clean
    # (t = 0), copies of a single picture read as a sprite at rest, and the toy's exact denoiser
    # can skip a phase a few frames in (docs/known-frames.md, "A single picture").

    r = cli(prompt, "--init-image", "clip.mp4", "--frames", "4", "-o", "x.mp4", *size, cwd=tmp_path)
    assert r.returncode == 2 and "is a video" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.mp4").exists()


# -- the real-model families, on tiny random-weight models ------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from test_backbones import unet_backbone, wan_backbone

    return {"unet3d": unet_backbone(False), "wan": wan_backbone(False)}


def smooth_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear")
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_unet3d_encoder_is_the_inverse_of_the_decoders_scaling(tiny):
    bb = tiny["unet3d"]
    frames = smooth_frames(3, 16, 16)
    z = bb.encode_frames(frames)
    lh, lw = bb.latent_size(16, 16)
    assert z.shape == (4, 3, lh, lw)  # one latent per frame
    with torch.no_grad():
        ref = bb.vae.decode(bb.vae.encode(to_unit(frames, bb.device, torch.float32)).latent_dist.mode()).sample.clamp(-1, 1)
    torch.testing.assert_close(bb.decoder().decode_float(z), ref, atol=1e-5, rtol=1e-5)
    assert bb.decoder().decode(z).shape == (3, 16, 16, 3)


def test_wan_encoder_is_causal_1_plus_4k(tiny):
    bb = tiny["wan"]
    assert bb.temporal_compression == 4 and causal_count(8, 4) == 5 and causal_count(9, 4) == 9
    frames = smooth_frames(9, 32, 32)
    z = bb.encode_frames(frames)
    assert z.shape == (4, 3, 4, 4)  # 1 + 4 + 4 frames -> 3 latents
    with pytest.raises(ValueError, match="8 frames: a causal VAE encodes 1 \\+ 4 k frames"):
        bb.encode_frames(frames[:8])
    assert known_latents(bb, frames[:8], 32, 32).shape[1] == 2  # the last 5 of 8 frames
    dec = bb.decoder()
    with torch.no_grad():
        video = to_unit(frames, bb.device, torch.float32).transpose(0, 1)[None]  # (1, 3, 9, H, W)
        ref = bb.vae.decode(bb.vae.encode(video).latent_dist.mode()).sample
    torch.testing.assert_close(dec.decode_float(z), ref.clamp(-1, 1)[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert bb.decoder().decode(z).shape == (9, 32, 32, 3)


@pytest.mark.parametrize("family, n_frames, clip_frames", [("unet3d", 5, 4), ("wan", 8, 9)])
def test_real_model_runs_continue_known_frames(tiny, family, n_frames, clip_frames):
    bb = tiny[family]
    h, w = bb.defaults.height, bb.defaults.width
    known = known_latents(bb, smooth_frames(clip_frames, h + 8, w), h, w)
    out = np.stack(list(fifo.generate(bb, "a red ball moving right", n_frames, seed=1, known=known)))
    assert out.shape == (n_frames, h, w, 3)
    # decoded ahead in a worker, as the command line runs: each new latent of a causal VAE gives 4 frames
    from fifo.parallel import PipelinedFIFOStream

    again = np.stack(list(PipelinedFIFOStream(bb, "a red ball moving right", seed=1, known=known, decode_ahead=True).frames(n_frames)))
    assert np.array_equal(out, again)
