"""A run whose last streamed piece holds one or two frames: the app streams it and the MP4 is exact.

Such a piece is a tiny MPEG-TS file, which byte-sniffing readers (Gradio's streaming player runs
ffprobe and ffmpeg on each piece without naming the container) took for MPEG-PS and failed on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from gradio_client import Client
from test_app import FAST, PROMPT, free_port
from test_browser import ARGS, CHROMIUM, VIDEO_STATE

from fifo.video import ChunkWriter, probe_video, read_video
from fifo_app import media
from fifo_app.jobs import CHUNK_SECONDS

FPS = 12  # the app's default; FAST keeps it
PER_CHUNK = round(FPS * CHUNK_SECONDS)
needs_probe = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")), reason="no ffmpeg/ffprobe on PATH")


@pytest.fixture(scope="module")
def url():
    import app

    if not app.STREAMING:
        pytest.skip("the app streams HLS pieces only with ffmpeg and ffprobe on PATH")
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def client(url):
    c = Client(url, verbose=False)
    yield c
    c.close()


def chunk_of(frames: list[np.ndarray], folder) -> str:
    with ChunkWriter(folder, FPS, CHUNK_SECONDS, crf=18, preset="veryfast") as w:
        for f in frames:
            w.write(f)
    return str(w.chunks[-1])


@needs_probe
@pytest.mark.parametrize("n", [1, 2, 3, PER_CHUNK])
def test_a_short_chunk_of_flat_frames_is_read_as_gradio_reads_it(tmp_path, n):
    flat = [np.full((64, 64, 3), 100 + i, np.uint8) for i in range(n)]  # two of these made 1504 bytes, read as MPEG-PS
    path = chunk_of(flat, tmp_path)
    info = gr.Video.probe_chunk(path)  # what the streaming player runs on every piece
    assert info["duration"] == pytest.approx(n / FPS, abs=1e-3) and info["video_codec"] == "h264"
    assert probe_video(path)["frames"] == n
    assert np.abs(read_video(path).astype(int) - np.stack(flat).astype(int)).max() <= 2


@needs_probe
def test_joined_short_chunks_keep_every_frame_and_only_those(tmp_path):
    frames = [np.full((64, 64, 3), 60 + 9 * i, np.uint8) for i in range(PER_CHUNK + 2)]
    with ChunkWriter(tmp_path, FPS, CHUNK_SECONDS, crf=18, preset="veryfast") as w:
        for f in frames:
            w.write(f)
    assert len(w.chunks) == 2
    mp4 = media.join_chunks(w.chunks, tmp_path / "all.mp4")
    assert probe_video(mp4)["frames"] == len(frames)
    assert np.abs(read_video(mp4).astype(int) - np.stack(frames).astype(int)).max() <= 2


def generate(client: Client, frames: int, seed: int = 3):
    return client.predict(PROMPT, length=frames, length_unit="frames", seed=seed, **FAST, api_name="/generate")


@pytest.mark.parametrize("tail", [1, 2, PER_CHUNK])
def test_the_last_piece_may_hold_any_number_of_frames(client, tail):
    n = 4 * PER_CHUNK + tail % PER_CHUNK  # 49, 50 and 48 frames: tails of 1, 2 and a full piece
    out = generate(client, n)
    info = probe_video(out[1])
    assert info["frames"] == n and info["fps"] == FPS
    assert out[-1]["frames_in_video"] == n


def test_extend_by_a_length_leaving_short_tails(client):
    old = read_video(generate(client, 2 * PER_CHUNK)[1])
    one = client.predict(length=PER_CHUNK + 1, length_unit="frames", api_name="/extend")
    mid = read_video(one[1])
    assert probe_video(one[1])["frames"] == len(mid) == len(old) + PER_CHUNK + 1
    assert np.array_equal(mid[: len(old)], old)
    two = client.predict(length=2, length_unit="frames", api_name="/extend")
    new = read_video(two[1])
    assert probe_video(two[1])["frames"] == len(new) == len(mid) + 2
    assert np.array_equal(new[: len(mid)], mid)


@pytest.mark.parametrize("frames", [PER_CHUNK + 1, PER_CHUNK + 2])
def test_compare_with_a_short_last_piece(client, frames):
    out = client.predict(PROMPT, "toy", frames, "frames", 3, 1, "off", None, 2, "on", None, api_name="/compare")
    assert probe_video(out[1])["frames"] == frames


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")
def test_the_browser_plays_a_stream_whose_last_piece_holds_two_frames(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    n = 4 * PER_CHUNK + 2
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#generate", timeout=60_000)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#length input").fill(f"{n / FPS:.4f}")  # seconds, the default unit
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
            assert f"frame {n} of {n}" in page.locator("#status").inner_text()
            # the player's timeline reaches the last piece: every piece, the two-frame one included, was taken
            reached = f"(() => {{ const v = document.querySelector('#live video'); return v && v.duration > {(n - 1) / FPS}; }})()"
            page.wait_for_function(reached, timeout=30_000)
            v = page.evaluate(VIDEO_STATE)
            assert v["duration"] == pytest.approx(n / FPS, abs=0.05), v
        finally:
            browser.close()
