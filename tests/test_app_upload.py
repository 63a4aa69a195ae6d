"""Starting a video from the visitor's own picture or clip, through the app's real HTTP API.

The clips are toy-world videos (cut from a generated one), so whether the continuation carries the
sprite's motion across the seam is a fact about positions, checked with the toy world's own
helpers (tests/test_known_frames.py). 64x64, one partition: each run takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import fifo
from fifo.backbones.toy import ToyBackbone
from fifo.video import probe_video, read_video, write_video
from fifo_app import settings, uploads
from test_app import free_port
from test_known_frames import is_true_clip, positions

PROMPT = "a red ball moving right"
RUN = {"partitions": 1, "height": 64, "width": 64, "random_seed": False}  # L = f = 16, lookahead on (the toy's default)
CFG = fifo.FIFOConfig(partitions=1)


@pytest.fixture(scope="module")
def server():
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def client(server):
    c = Client(server, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def bb():
    return ToyBackbone(height=64, width=64)


def run(client: Client, upload: Path | None, frames: int, prompt: str = PROMPT, seed: int = 5, **kw):
    job = client.submit(
        prompt,
        length=frames,
        length_unit="frames",
        seed=seed,
        start_from=handle_file(str(upload)) if upload is not None else None,
        **{**RUN, **kw},
        api_name="/generate",
    )
    return job, job.result(timeout=180)


def comment(mp4) -> dict:
    return json.loads(probe_video(mp4)["tags"]["comment"])


@pytest.fixture(scope="module")
def cut_clip(bb, tmp_path_factory):
    """A 48-frame toy video with its last 16 frames cut: the 32-frame clip a visitor uploads."""
    folder = tmp_path_factory.mktemp("clip")
    video = np.stack(list(fifo.generate(bb, PROMPT, 48, CFG, seed=0)))
    write_video(folder / "clip.mp4", video[:32], 12)
    return folder / "clip.mp4"


def test_an_uploaded_clip_is_shown_then_continued_and_extend_goes_on(client, bb, cut_clip):
    clip = read_video(cut_clip)
    job, out = run(client, cut_clip, 16)
    progress = [o[-1] for o in job.outputs()]
    assert progress[0]["video_frames"] == 32 and progress[0]["frames_done"] == 0  # the clip streams first
    assert [p["frames_done"] for p in progress] == sorted(p["frames_done"] for p in progress)

    mp4 = out[1]
    info = probe_video(mp4)
    assert info["frames"] == 32 + 16 and (info["width"], info["height"]) == (64, 64)
    video = read_video(mp4)
    assert np.abs(video[:32].astype(int) - clip.astype(int)).mean() < 2.0  # the visitor's clip, as it was
    new = video[32:]
    seam = positions(bb, PROMPT, np.concatenate([clip[-8:], new[:8]]))
    assert is_true_clip(bb, PROMPT, seam), seam.tolist()  # the sprite goes on from where, and as, it was going

    d = out[-1]
    assert d["frames_in_video"] == 48 and d["frames_done"] == 16 and d["started_from"] == "an uploaded clip"
    assert "prompt alone" in d["share_note"]
    link = settings.query_params(out[5])  # the link: the prompt alone, the new frames' length
    assert link["prompt"] == PROMPT and int(link["frames"]) == 16
    meta = comment(mp4)
    assert meta["init"] == "video" and meta["init_frames"] == 32 and "uploaded clip" in meta["note"]
    assert Path(out[2]).suffix == ".pt"

    ext = client.predict(length=12, length_unit="frames", api_name="/extend")
    longer = read_video(ext[1])
    assert len(longer) == 48 + 12 and probe_video(ext[1])["frames"] == 60
    assert np.array_equal(longer[:48], video)  # the clip and its continuation, untouched
    seam = positions(bb, PROMPT, longer[40:56])
    assert is_true_clip(bb, PROMPT, seam), seam.tolist()
    assert int(settings.query_params(ext[5])["frames"]) == 16 + 12 and "prompt alone" in ext[-1]["share_note"]
    meta = comment(ext[1])
    assert meta["init"] == "video" and meta["init_frames"] == 32 and meta["frames"] == 28

    # a new prompt for Extend: its schedule counts the queue's frames (from the first after the clip)
    turn = client.predict("a red ball moving up", length=24, length_unit="frames", api_name="/extend")
    assert read_video(turn[1]).shape[0] == 60 + 24
    head, change = settings.query_params(turn[5])["prompt"].split("\n")
    at = int(change.split(":")[0])
    assert head == f"0: {PROMPT}" and change == f"{at}: a red ball moving up" and 28 < at < 28 + 24, change
    assert comment(turn[1])["prompt"] == f"{head}\n{change}"


SEAMS = [("a blue square moving down fast", 1), ("a green ball moving up-left slow", 2), ("a red ball moving right", 4)]


@pytest.mark.parametrize("prompt, seed", SEAMS)
def test_the_motion_carries_across_the_seam(client, bb, tmp_path, prompt, seed):
    video = np.stack(list(fifo.generate(bb, prompt, 40, CFG, seed=seed)))
    write_video(tmp_path / "cut.mp4", video[:24], 12)  # its last 16 frames cut
    clip = read_video(tmp_path / "cut.mp4")
    _, out = run(client, tmp_path / "cut.mp4", 10, prompt=prompt, seed=seed + 7)
    made = read_video(out[1])
    assert len(made) == 24 + 10
    seam = positions(bb, prompt, np.concatenate([clip[-8:], made[24:32]]))
    assert is_true_clip(bb, prompt, seam), seam.tolist()


def test_a_picture_opens_the_video(client, bb, tmp_path):
    from PIL import Image

    video = np.stack(list(fifo.generate(bb, PROMPT, 8, CFG, seed=2)))
    # 64 x 96, the frame between two bands of background: cropped to the model's 64x64, not resampled
    Image.fromarray(np.pad(video[3], ((0, 0), (16, 16), (0, 0)), mode="edge")).save(tmp_path / "pic.png")
    _, out = run(client, tmp_path / "pic.png", 10, seed=9)
    made = read_video(out[1])
    assert len(made) == 11 and out[-1]["frames_in_video"] == 11  # the picture, then 10 new frames
    pos = positions(bb, PROMPT, made)
    assert (pos[0] == positions(bb, PROMPT, video[3:4])[0]).all()
    assert np.abs(np.diff(pos[:3], axis=0)).max() <= 2  # the sprite leaves the picture at its speed
    meta = comment(out[1])
    assert meta["init"] == "image" and meta["init_frames"] == 1
    assert out[-1]["started_from"] == "an uploaded picture"


def huge_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares width x height pixels (its data is one short row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 7)) + chunk(b"IEND", b""))
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, cut_clip):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("not a video at all\n" * 20)
    (d / "notes.png").write_text("not a picture at all\n" * 20)
    huge_png(d / "huge.png", 60_000, 50_000)
    huge_png(d / "wide.png", 5_000, 4_000)
    ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "1", "-c:a", "aac", str(d / "sound.mp4"))
    src = ("-f", "lavfi", "-i", "testsrc=size=64x48:rate=12", "-t", "2", "-pix_fmt", "yuv420p")
    ffmpeg(*src, "-movflags", "+faststart", str(d / "full.mp4"))
    data = (d / "full.mp4").read_bytes()
    (d / "empty.mp4").write_bytes(data[: data.find(b"mdat") + 8])  # its header and no frame
    write_video(d / "one.mp4", read_video(cut_clip)[:1], 12)
    (d / "clip.mp4").write_bytes(cut_clip.read_bytes())
    return d


BAD = [
    ("notes.mp4", {}, "not a readable video"),
    ("notes.png", {}, "not a readable image"),
    ("sound.mp4", {}, "sound but no picture"),
    ("empty.mp4", {}, "has no frames"),
    ("one.mp4", {}, r"has 1 frame\(s\); this model needs at least 2"),
    ("huge.png", {}, "pixels"),
    ("wide.png", {}, r"5000x4000 pixels; this app takes at most 16,777,216"),
    ("clip.mp4", {"frames_per_rung": 2}, "frames_per_rung=2"),
]


@pytest.mark.parametrize("name, kw, message", BAD)
def test_bad_uploads_are_refused_clearly(client, bad_files, name, kw, message):
    with pytest.raises(AppError, match=message) as e:
        run(client, bad_files / name, 8, **kw)
    text = str(e.value)
    assert "/tmp" not in text and str(bad_files) not in text and "Traceback" not in text


def test_size_and_length_caps(client, cut_clip, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_BYTES", 1000)
    with pytest.raises(AppError, match=r"MB, over this app's limit"):
        run(client, cut_clip, 8)
    monkeypatch.setattr(uploads, "MAX_BYTES", 2**20)
    monkeypatch.setattr(uploads, "MAX_CLIP_FRAMES", 20)
    with pytest.raises(AppError, match="more than 20 frames"):
        run(client, cut_clip, 8)
    monkeypatch.setattr(uploads, "MAX_CLIP_SECONDS", 1.5)
    with pytest.raises(AppError, match=r"2\.7 s long; this app takes at most 1\.5 s"):
        run(client, cut_clip, 8)
    monkeypatch.undo()
    _, out = run(client, cut_clip, 4)  # and the server goes on serving
    assert probe_video(out[1])["frames"] == 36


def test_a_run_without_an_upload_is_unchanged(client):
    _, out = run(client, None, 12)
    assert probe_video(out[1])["frames"] == 12 and "started_from" not in out[-1]
    assert "init" not in comment(out[1])


def test_an_upload_run_spread_over_zerogpu_leases_is_the_same_video(cut_clip, tmp_path):
    """On ZeroGPU each lease is another process: the upload's frames cross into it pickled, as uint8 numpy."""
    from test_app import fake_spaces

    from fifo_app import estimate, jobs, sessions

    s = settings.parse_inputs(PROMPT, "", "toy", 40, "frames", 3, False, 1, "on", height=64, width=64)
    up = uploads.read_upload(cut_clip, 64, 64, queue_length=16)
    assert up.known.dtype == np.uint8 and up.known.shape == (16, 64, 64, 3) and up.shown.shape == (32, 64, 64, 3)
    calls: list[int] = []
    leased = fake_spaces(max_duration=30, calls=calls).GPU(duration=jobs.lease_duration)(jobs.lease)

    def run_with(lease_fn, limit):
        rates = estimate.RateBook()
        rates.record("toy", 16 * 16, 16, 0.3)  # a slow toy: 40 frames need several 30 s leases
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        chunks = uploads.write_chunks(up.shown, folder, 12, jobs.CHUNK_SECONDS)
        base = sessions.VideoRecord(folder, chunks, 32, 12, s, None, folder / "x.mp4", reproducible=False)
        job = jobs.Job([jobs.TrackSpec("main", s, known=up.known)], 40, 12, folder, "v", lambda n: s, base=base,
                       origin="clip", lead_frames=32)  # fmt: skip
        return list(jobs.run_job(job, lease_fn, sessions.StopFlag(folder / "STOP"), rates, limit))[-1].result

    split = run_with(leased, 30.0)
    assert split.leases == len(calls) >= 2
    whole = run_with(jobs.lease, None)
    a, b = read_video(split.mp4), read_video(whole.mp4)
    assert a.shape == (72, 64, 64, 3) and np.array_equal(a, b)


def test_a_server_file_cannot_be_passed_off_as_an_upload(server):
    """Only files a client uploaded reach the handler: a request naming a picture on the server is refused before it."""
    import urllib.request

    from fifo.config import APP_SETTINGS

    picture = Path(__file__).resolve().parent.parent / "docs" / "app-upload.png"
    assert picture.exists()
    api = f"{server}gradio_api/call/generate"

    def call(path: str) -> str:
        empty_schedule = {"headers": ["from frame", "prompt"], "data": []}
        data = [PROMPT, "", "toy", 4, "frames", 0, False, *["default"] * len(APP_SETTINGS), empty_schedule]
        data.append({"path": path, "meta": {"_type": "gradio.FileData"}})
        req = urllib.request.Request(api, json.dumps({"data": data}).encode(), {"Content-Type": "application/json"})
        event = json.load(urllib.request.urlopen(req, timeout=30))["event_id"]
        return urllib.request.urlopen(f"{api}/{event}", timeout=120).read().decode()

    answer = call(str(picture))
    assert answer.startswith("event: error") and "complete" not in answer and str(picture) not in answer, answer
    # the same request with the picture uploaded first is served: the refusal was of the path
    with picture.open("rb") as f:
        uploaded = httpx.post(f"{server}gradio_api/upload", files={"files": ("pic.png", f, "image/png")}, timeout=30).json()[0]
    assert "event: complete" in call(uploaded)


def test_a_causal_vae_gets_the_last_1_plus_4k_frames(cut_clip):
    up = uploads.read_upload(cut_clip, 64, 64, queue_length=4, temporal_compression=4)
    assert len(up.shown) == 32 and len(up.known) == 13  # 1 + 4 x 3: the queue's 4 latents
    assert np.array_equal(up.known, up.shown[-13:])
    assert len(uploads.read_upload(cut_clip, 64, 64, queue_length=16, temporal_compression=4).known) == 29  # 1 + 4 x 7


def test_a_chosen_upload_is_described_from_its_header(cut_clip, bad_files):
    assert uploads.describe(cut_clip).startswith("A 64x64 clip of 2.7 s (about 32 frames)")
    assert "5000x4000 pixels" in uploads.describe(bad_files / "wide.png")
    assert "sound but no picture" in uploads.describe(bad_files / "sound.mp4")
    assert "'(unknown)' is not taken" in uploads.describe(bad_files.parent / "x.<img src=y>")
    assert uploads.describe(None) == ""


@pytest.mark.parametrize("name, family, frames", [("zeroscope", "unet3d", 5), ("wan2.1-1.3b", "wan", 8)])
def test_a_real_model_lease_encodes_the_pickled_upload(tmp_path, monkeypatch, name, family, frames):
    """The tiny random-weight UNet3D and Wan models: the lease encodes the upload's uint8 frames with the model's own VAE."""
    import pickle

    import torch

    from fifo.backbones.encoders import known_latents
    from fifo_app import jobs
    from fifo_app.models import MANAGER
    from test_backbones import unet_backbone, wan_backbone

    bb = unet_backbone(False) if family == "unet3d" else wan_backbone(False)
    monkeypatch.setitem(MANAGER._loaded, name, bb)  # stands in for the registered model: nothing is downloaded
    h, w = bb.defaults.height, bb.defaults.width
    g = torch.Generator().manual_seed(0)
    pic = torch.nn.functional.interpolate(torch.rand(11, 3, h // 4, (w + 8) // 4, generator=g), size=(h, w + 8), mode="bilinear")
    write_video(tmp_path / "clip.mp4", (pic * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), 8)
    s = settings.parse_inputs("a red ball moving right", "", name, frames, "frames", 1, False, 1, "off", height=h, width=w)
    L = s.config().resolve(bb).queue_length
    up = uploads.read_upload(tmp_path / "clip.mp4", h, w, L, bb.temporal_compression)
    assert up.shown.shape[1:] == (h, w, 3) and len(up.known) == (min(11, L) if family == "unet3d" else 9)
    work = jobs.LeaseWork([jobs.TrackSpec("main", s, known=up.known)], [frames], None, 0, str(tmp_path / "STOP"))
    events = list(jobs.lease(pickle.loads(pickle.dumps(work))))  # as a ZeroGPU worker receives it
    assert isinstance(events[-1], jobs.LeaseEnd) and events[-1].reason == "done", events[-1]
    made = np.concatenate([e.frames for e in events if isinstance(e, jobs.StepEvent) and e.frames is not None])
    direct = fifo.generate(bb, s.prompt, frames, s.config(), seed=1, height=h, width=w,
                           known=known_latents(bb, up.known, h, w, max_latents=L))  # fmt: skip
    assert made.shape == (frames, h, w, 3) and np.array_equal(made, np.stack(list(direct)))
    assert events[-1].states[0].known["latents"].shape[1] >= 1  # the state carries the known frames on to Extend
