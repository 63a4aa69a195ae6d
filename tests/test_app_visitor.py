"""What a visitor (or a script) runs into: clear messages without server paths, budgets, names, Stop.

The app runs for real on loopback, driven through gradio_client; the budget and the warm-start
Stop are checked on the service and the engine directly.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_app import FAST, PROMPT, free_port

from fifo import FIFOStream, load_backbone
from fifo.video import probe_video
from fifo_app import jobs, sessions, settings
from fifo_app.service import Service

PATH = re.compile(r"(?:/[\w.@+-]+){2,}")


@pytest.fixture(scope="module")
def client():
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    c = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield c
    c.close()
    app.demo.close()


def refused(client: Client, match: str, **kw) -> str:
    with pytest.raises(AppError) as e:
        client.predict(**{"prompt": PROMPT, "length": 12, "length_unit": "frames", "seed": 1, **FAST, **kw}, api_name="/generate")
    text = str(e.value)
    assert re.search(match, text), text
    assert not PATH.search(text) and "weights_only" not in text and "Traceback" not in text, text
    return text


def test_fields_are_checked_with_one_message_naming_each(client):
    refused(client, r"length 1e\+308 seconds is out of range", length=1e308, length_unit="seconds")
    refused(client, r"^.*length=.*not a number in range", length=str(10**400))
    refused(client, r"schedule must be a table", schedule="0: a red ball moving up")
    refused(
        client,
        r"prompt at frame 5000 starts after the video ends \(12 frames\)",
        schedule={"headers": ["from frame", "prompt"], "data": [[5000, "a red ball moving up"]]},
    )
    refused(client, r"no word the toy world knows", prompt="красный мяч")


def test_a_garbage_upload_shows_no_server_path_or_torch_advice(client, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x80\x04not a pickle at all" * 10)
    with pytest.raises(AppError) as e:
        client.predict(handle_file(str(bad)), PROMPT, 12, "frames", api_name="/continue_state")
    text = str(e.value)
    assert "not a saved FIFO state" in text and not PATH.search(text) and "weights_only" not in text, text


def test_a_stopped_video_is_named_by_the_frames_it_holds(client):
    job = client.submit(PROMPT, length=3000, length_unit="frames", seed=4, **FAST, api_name="/generate")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and outs[-1][-1]["frames_done"] >= 12:
            break
        time.sleep(0.1)
    assert client.predict(api_name="/stop") == "stopping"
    out = job.result(timeout=60)
    n = out[-1]["frames_in_video"]
    assert probe_video(out[1])["frames"] == n < 3000
    assert Path(out[1]).name.endswith(f"-{n}f.mp4"), out[1]


def test_a_link_loads_only_settings_that_generate_accepts():
    with pytest.raises(settings.InputError, match="seconds"):
        settings.settings_from_query({"prompt": PROMPT, "seconds": "1e308"})
    s = settings.settings_from_query({"prompt": PROMPT, "frames": "12", "guidance": "3"})  # an older link's key
    assert s.guidance_scale == 3.0 and s.frames == 12


def test_a_run_over_the_budget_is_refused_before_it_starts(tmp_path):
    service = Service(jobs.lease, store=sessions.SessionStore(tmp_path / "s"), max_run_s=0.5)
    s = settings.parse_inputs(PROMPT, "", "toy", 3000, "frames", 1, False, 1, "off", height=64, width=64)
    with pytest.raises(settings.InputError, match=r"over this app's limit of .* per run: ask for a shorter length"):
        next(iter(service.generate(s, "budget")))
    assert not list((tmp_path / "s").rglob("*.mp4"))


def test_the_run_loop_stops_a_run_past_its_time_limit(tmp_path):
    s = settings.parse_inputs(PROMPT, "", "toy", 3000, "frames", 1, False, 1, "off", height=64, width=64)
    job = jobs.Job([jobs.TrackSpec("main", s)], 3000, 12, tmp_path, lambda n: f"v-{n}f", lambda n: s)
    ups = list(jobs.run_job(job, jobs.lease, sessions.StopFlag(tmp_path / "STOP"), jobs.RateBook(), max_run_s=1.0))
    r = ups[-1].result
    assert r.stopped and 0 < r.frames < 3000 and probe_video(r.mp4)["frames"] == r.frames


def test_stop_interrupts_the_warm_start():
    bb = load_backbone("toy")
    calls = []
    stream = FIFOStream(bb, PROMPT, height=64, width=64)
    steps = list(stream.steps(10, interrupt=lambda: calls.append(1) or len(calls) > 3))
    assert steps == [] and stream.queue is None and len(calls) == 4  # stopped after 3 of its model calls
    assert len(list(stream.steps(2))) >= 1  # and the stream still works


def test_a_one_frame_run_does_not_skew_the_next_estimate(tmp_path):
    """After a 1-frame run (its time all warm start), a 72-frame estimate stays where it was."""
    service = Service(jobs.lease, store=sessions.SessionStore(tmp_path / "s"))
    service.calibrate()
    est = lambda: service.rates.estimate("toy", 16 * 16, _toy_config(), _work(72))
    before = est().seconds
    one = settings.parse_inputs(PROMPT, "", "toy", 1, "frames", 1, False, 4, "on")
    for _ in service.generate(one, "one-frame"):
        pass
    assert est().seconds < 1.5 * before, (before, est().seconds)


def _toy_config():
    from fifo import FIFOConfig

    return FIFOConfig(frames_per_window=16, partitions=4, lookahead=True, eta=0.0, guidance_scale=1.0, fps=12)


def _work(frames: int):
    from fifo_app.estimate import work_for

    return work_for(_toy_config(), frames)


def test_one_page_cannot_fill_the_queue(client):
    from fifo_app.limits import MAX_WAITING_PER_SESSION

    running = client.submit(PROMPT, length=3000, length_unit="frames", seed=1, **FAST, api_name="/generate")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not running.outputs():
        time.sleep(0.1)
    waiting = [
        client.submit(PROMPT, length=12, length_unit="frames", seed=2, **FAST, api_name="/generate")
        for _ in range(MAX_WAITING_PER_SESSION + 2)
    ]
    errors = []
    time.sleep(2)
    client.predict(api_name="/stop")
    for job in waiting:
        try:
            job.result(timeout=120)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
    running.result(timeout=120)
    # refused at the door: Gradio's client words it as "Queue is full" (the server's message names the limit)
    assert len(errors) == 2 and all("full" in e for e in errors), errors


def test_the_time_left_is_not_read_off_a_burst_of_frames():
    """Frames handed out together (a warm-up's end, a decode catching up) give no rate; a second of frames does."""
    clock = jobs._Clock()
    for i in range(4):
        clock.mark(10.0 + 0.001 * i, i)  # four frames within 3 ms
    assert clock.seconds_per_frame() is None  # the estimate stands, not "0.001 s a frame"
    for i in range(4, 30):
        clock.mark(10.0 + 0.1 * i, i)
    assert abs(clock.seconds_per_frame() - 0.1) < 0.02


def test_an_uploaded_state_says_which_settings_continue_will_use(tmp_path):
    """The page's settings and estimate describe Generate; an uploaded state's own settings are shown beside it."""
    from fifo import FIFOConfig
    from fifo.backbones.toy import ToyBackbone
    from fifo_app.service import Service

    s = FIFOStream(ToyBackbone(64, 96), PROMPT, FIFOConfig(partitions=2, lookahead=False, fps=10), seed=9)
    list(s.frames(5))
    s.state().save(tmp_path / "q.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    service = Service()
    text = service.describe_state(tmp_path / "q.pt")
    assert "frame 5" in text and "96x64" in text and "10 fps" in text and "2 partitions" in text and "lookahead off" in text
    assert "seed 9" in text and "not the ones above" in text
    junk = service.describe_state(tmp_path / "junk.pt")
    assert junk.startswith("⚠️") and str(tmp_path) not in junk
