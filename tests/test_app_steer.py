"""Changing the prompt while a video streams: the app's /change_prompt endpoint, the request's hand-off
into the GPU lease (another process on ZeroGPU), and the frame it took, recorded so the link remakes it.

The app runs for real on loopback (the toy world, 64x64, one partition: L = 16) and is driven
through gradio_client, as in tests/test_app.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from fifo import FIFOState
from fifo.video import probe_video, read_video
from fifo_app import estimate, jobs, sessions, settings, steer
from test_app import FAST, fake_spaces, free_port

RIGHT, UP, LEFT = "a red ball moving right", "a red ball moving up", "a red ball moving left"


@pytest.fixture(scope="module")
def server():
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture()
def client(server):
    c = Client(server[1], verbose=False)  # a session of its own: one run at a time per page
    yield c
    c.close()


def start(client: Client, frames: int, seed: int = 7):
    return client.submit(RIGHT, length=frames, length_unit="frames", seed=seed, **FAST, api_name="/generate")


def wait_for_frames(job, n: int, timeout: float = 60) -> int:
    """Block until the run has made at least `n` frames; returns how many it had."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and outs[-1][-1]["frames_done"] >= n:
            return outs[-1][-1]["frames_done"]
        assert not job.done(), "the run ended before the change could be sent"
        time.sleep(0.02)
    pytest.fail(f"the run did not reach {n} frames")


# -- through the HTTP API ---------------------------------------------------------------------------


def test_a_change_mid_stream_is_recorded_at_its_frame_and_the_link_remakes_the_video(client):
    job = start(client, 120)
    made = wait_for_frames(job, 24)
    answer = client.predict(UP, api_name="/change_prompt")
    at = answer["frame"]
    assert answer["prompt"] == UP and isinstance(at, int), answer
    assert made < at < 120 and f"takes over at frame {at}" in answer["message"], answer
    out = job.result(timeout=120)
    d = out[-1]
    assert d["frames_in_video"] == 120 and not d["stopped"]
    assert d["note"] == f"'{UP}' took over at frame {at}"  # the status line

    schedule = f"0: {RIGHT}\n{at}: {UP}"
    link = settings.query_params(out[5])
    assert link["prompt"] == schedule and link["frames"] == "120"
    meta = json.loads(probe_video(out[1])["tags"]["comment"])
    assert meta["prompt"] == schedule  # the MP4's metadata
    assert FIFOState.load(out[2]).meta["prompt"] == schedule  # the saved state

    # Extend goes on from the steered video with its schedule
    ext = client.predict("", length=12, length_unit="frames", api_name="/extend")
    assert settings.query_params(ext[5])["prompt"] == schedule
    steered, longer = read_video(out[1]), read_video(ext[1])
    assert steered.shape == (120, 64, 64, 3) and np.array_equal(longer[:120], steered)

    # the link remakes the video frame for frame, and the extension's link the longer one
    got = client.predict(out[5], api_name="/settings_from_link")
    again = client.predict(
        got["prompt"], length=got["frames"], length_unit="frames", seed=got["seed"], **FAST, api_name="/generate"
    )
    assert np.array_equal(read_video(again[1]), steered)
    whole = client.predict(schedule, length=132, length_unit="frames", seed=7, **FAST, api_name="/generate")
    assert np.abs(read_video(whole[1]).astype(int) - longer.astype(int)).mean() < 1.0  # up to the encoder's chunk cuts

    # Continue goes on from the saved state with the schedule it records
    cont = client.predict(handle_file(out[2]), "", 12, "frames", api_name="/continue_state")
    assert FIFOState.load(cont[2]).meta["prompt"] == schedule

    # the change made a difference from its frame on, and none to the frames out before it was asked
    plain = read_video(client.predict(RIGHT, length=120, length_unit="frames", seed=7, **FAST, api_name="/generate")[1])
    assert np.array_equal(plain[:made], steered[:made])
    assert not np.array_equal(plain[at:], steered[at:])


def test_refused_changes_get_clear_messages(server, client, monkeypatch):
    with pytest.raises(AppError, match="nothing is running on this page"):
        client.predict(UP, api_name="/change_prompt")
    monkeypatch.setattr(steer, "MAX_PROMPT_CHANGES", 2)
    job = start(client, 3000, seed=3)
    try:
        wait_for_frames(job, 4)
        for prompt, entry, message in [
            ("", "tail", "prompt is empty"),
            ("   ", "tail", "prompt is empty"),
            (f"0: {RIGHT}\n40: {UP}", "tail", "one prompt.*without 'FRAME:' lines"),
            ("a red ball moving sideways", "tail", "unknown word.*sideways"),
            ("a red ball " * 120, "tail", "characters long: at most 1000"),
            ("a red ball\x00moving up", "tail", "control character"),
            (UP, "middle", "entry='middle': allowed are tail, head"),
            (RIGHT, "tail", "already the prompt being made"),
        ]:
            with pytest.raises(AppError, match=message):
                client.predict(prompt, entry, api_name="/change_prompt")
        first = client.predict(UP, "tail", api_name="/change_prompt")
        second = client.predict(LEFT, "head", api_name="/change_prompt")
        assert first["frame"] is not None and second["frame"] is not None and second["frame"] >= 1
        with pytest.raises(AppError, match="2 prompt changes, the most one run may take"):
            client.predict(UP, api_name="/change_prompt")
        assert client.predict(api_name="/stop") == "stopping"
        out = job.result(timeout=60)
        assert "0: " + RIGHT in settings.query_params(out[5])["prompt"]
    finally:
        client.predict(api_name="/stop")
    assert server[0].SERVICE.store.get(client.session_hash).steer is None  # the run's steering went with it


def test_the_endpoint_is_listed_with_its_parameters(client):
    api = client.view_api(print_info=False, return_format="dict")
    params = [p["parameter_name"] for p in api["named_endpoints"]["/change_prompt"]["parameters"]]
    assert params == ["prompt", "entry"]


# -- the hand-off into leases (ZeroGPU: each lease another process) ----------------------------------


def _job(folder: Path, s: settings.RunSettings, frames: int) -> jobs.Job:
    job = jobs.Job([jobs.TrackSpec("main", s)], frames, 12, folder, "v", lambda n: replace(s, frames=n))
    job.steer = steer.Steering(folder / "steer", s, 0, frames)
    return job


def test_changes_cross_lease_boundaries_exactly_once_and_remake_the_video(tmp_path):
    """A run forced into several leases; one change sent mid-lease, one between two leases."""
    s = settings.parse_inputs(RIGHT, "", "toy", 72, "frames", 9, False, 1, "on", height=64, width=64)
    calls: list[int] = []
    leased = fake_spaces(max_duration=30, calls=calls).GPU(duration=jobs.lease_duration)(jobs.lease)
    rates = estimate.RateBook()
    rates.record("toy", 16 * 16, 16, 0.3)  # pretend the toy is slow: 72 frames need several leases
    (tmp_path / "a").mkdir()
    job = _job(tmp_path / "a", s, 72)
    sent: dict[str, int] = {}
    works: list[jobs.LeaseWork] = []

    def lease_fn(work: jobs.LeaseWork):
        works.append(work)
        for ev in leased(work):
            if isinstance(ev, jobs.StepEvent) and ev.frames is not None and ev.frames_emitted >= 6 and "mid" not in sent:
                sent["mid"] = job.steer.request(UP, "tail")  # taken after the lease's next step
            if isinstance(ev, jobs.LeaseEnd) and len(calls) == 1:
                sent["between"] = job.steer.request(LEFT, "tail")  # no lease runs: the next one takes it
            yield ev

    ups = list(jobs.run_job(job, lease_fn, sessions.StopFlag(tmp_path / "STOP"), rates, 30.0))
    result = ups[-1].result
    assert result.leases == len(calls) >= 2
    assert [w.steer.after for w in works[:2]] == [0, 1]  # the second lease starts after the first's reported change
    taken = {c.id: c for c in job.steer.taken}
    assert sorted(taken) == [sent["mid"], sent["between"]] and len(job.steer.outcomes) == 2  # each taken once
    mid, between = taken[sent["mid"]].frame, taken[sent["between"]].frame
    assert 6 < mid < between < 72
    schedule = f"0: {RIGHT}\n{mid}: {UP}\n{between}: {LEFT}"
    assert result.settings.prompt == schedule and result.settings.frames == 72
    assert json.loads(probe_video(result.mp4)["tags"]["comment"])["prompt"] == schedule
    assert FIFOState.load(result.state_path).meta["prompt"] == schedule
    assert not (tmp_path / "a" / "steer").exists()  # the requests went with the run

    # one unlimited lease of the recorded schedule makes the same frames
    (tmp_path / "b").mkdir()
    again = replace(s, prompt=schedule)
    fresh = jobs.Job([jobs.TrackSpec("main", again)], 72, 12, tmp_path / "b", "v", lambda n: again)
    remade = list(jobs.run_job(fresh, jobs.lease, sessions.StopFlag(tmp_path / "STOP2"), estimate.RateBook()))[-1].result
    assert np.array_equal(read_video(remade.mp4), read_video(result.mp4))


def test_a_change_racing_the_end_of_the_run_is_refused_and_said_so(tmp_path):
    s = settings.parse_inputs(RIGHT, "", "toy", 12, "frames", 2, False, 1, "off", height=64, width=64)

    # sent before the first step: at the tail it would take over after the run's 12 frames
    job = _job(tmp_path, s, 12)
    rid = job.steer.request(UP, "tail")
    ups = list(jobs.run_job(job, jobs.lease, sessions.StopFlag(tmp_path / "STOP"), estimate.RateBook()))
    refused = job.steer.outcomes[rid]
    assert refused.frame is None and "too late for this run" in refused.refused and "ends at frame 11" in refused.refused
    assert ups[-1].result.settings.prompt == RIGHT  # nothing recorded

    # sent after the lease's last step: no lease takes it; the run's last status says so
    job = _job(tmp_path, s, 12)
    late: list[int] = []

    def lease_fn(work):
        for ev in jobs.lease(work):
            if isinstance(ev, jobs.LeaseEnd):
                late.append(job.steer.request(UP, "tail"))
            yield ev

    ups = list(jobs.run_job(job, lease_fn, sessions.StopFlag(tmp_path / "STOP"), estimate.RateBook()))
    assert late and job.steer.wait(late[0], timeout=0.1) is None and job.steer.closed
    assert f"'{UP}' came as the run ended and was not used" in ups[-1].note
    assert ups[-1].result.settings.prompt == RIGHT
    with pytest.raises(settings.InputError, match="run has ended"):
        job.steer.request(LEFT, "tail")

    # sent while the run's last lease ends: the visitor waiting on it is told
    waiting = steer.Steering(tmp_path / "other", s, 0, 12)
    threading.Timer(0.3, waiting.close).start()
    with pytest.raises(settings.InputError, match=f"the run ended before '{UP}' could enter it: press Extend"):
        steer.ask(waiting, UP, "tail", lambda text: None)


def test_requests_are_read_whole_and_in_order(tmp_path):
    s = settings.parse_inputs(RIGHT, "", "toy", 12, "frames", 2, False)
    st = steer.Steering(tmp_path / "steer", s, 0, 12)
    assert [st.request(p, "tail") for p in (UP, LEFT)] == [1, 2]
    (tmp_path / "steer" / ".000003.abcd.part").write_text("{")  # a write in progress is not a request
    (tmp_path / "steer" / "000004.json").write_text("not json")
    assert steer.read_requests(str(tmp_path / "steer"), 0) == [(1, UP, "tail"), (2, LEFT, "tail")]
    assert steer.read_requests(str(tmp_path / "steer"), 1) == [(2, LEFT, "tail")]
    assert steer.read_requests(str(tmp_path / "missing"), 0) == []


def test_entry_frame_is_the_frame_a_change_takes():
    import fifo
    from fifo.backbones.toy import ToyBackbone

    s = fifo.FIFOStream(ToyBackbone(height=64, width=64), RIGHT, fifo.FIFOConfig(partitions=1), seed=1)
    list(s.frames(10))
    head, tail = s.entry_frame("head"), s.entry_frame("tail")
    assert 10 < head < tail == 10 + 16 - 1  # the tail: the newest frame of the next step's queue (L = 16)
    assert s.change_prompt(UP, entry="head") == head and s.change_prompt(LEFT) == tail
    with pytest.raises(ValueError, match="entry='middle'"):
        s.entry_frame("middle")


def test_the_status_line_follows_the_latest_change(tmp_path):
    s = settings.parse_inputs(RIGHT, "", "toy", 100, "frames", 2, False)
    st = steer.Steering(tmp_path / "steer", s, 0, 100)
    st.request(UP, "tail")
    st.record((steer.PromptChange(1, UP, 40, f"0: {RIGHT}\n40: {UP}"),), 20, 0.5, True)
    assert st.messages[1] == f"'{UP}' takes over at frame 40 (in about 10 s at the current speed)"
    assert st.status(30, 0.25, False) == f"'{UP}' takes over at frame 40 (in about 2.5 s by the estimate)"
    assert st.status(40, 0.25, True) == f"'{UP}' took over at frame 40"
    with pytest.raises(settings.InputError, match="already the prompt being made"):
        st.request(UP, "tail")
    st.request(LEFT, "tail")
    st.record((steer.PromptChange(2, LEFT, None, st.prompt, "too late for this run"),), 95, 0.5, True)
    assert st.status(95, 0.5, True) == f"'{LEFT}' was not used: too late for this run"
    assert st.prompt == f"0: {RIGHT}\n40: {UP}" and st.settings(s).prompt == st.prompt

    # stopped before the change showed: it stays recorded, and Extend goes on with it
    stopped = steer.Steering(tmp_path / "stopped", s, 0, 100)
    stopped.request(UP, "tail")
    stopped.record((steer.PromptChange(1, UP, 40, f"0: {RIGHT}\n40: {UP}"),), 20, 0.5, True)
    stopped.close()
    assert stopped.status(30, 0.5, True) == f"'{UP}' takes over at frame 40, after this video's end: Extend goes on with it"


def test_a_change_in_a_run_from_an_upload_counts_the_frames_the_schedule_counts(tmp_path):
    """A run that continues an uploaded clip plays the clip first; a change's frame counts new frames only
    (as the share link's schedule does), so the page says it is still to come and names both numbers."""
    import fifo
    from fifo.video import write_video
    from fifo_app import uploads

    s = settings.parse_inputs(RIGHT, "", "toy", 40, "frames", 3, False, 1, "on", height=64, width=64)
    clip = np.stack(list(fifo.generate(fifo.load_backbone("toy"), RIGHT, 32, s.config(), seed=0)))
    write_video(tmp_path / "clip.mp4", clip, 12)
    up = uploads.read_upload(tmp_path / "clip.mp4", 64, 64, queue_length=16)
    folder = tmp_path / "run"
    folder.mkdir()
    base = sessions.VideoRecord(folder, uploads.write_chunks(up.shown, folder, 12, jobs.CHUNK_SECONDS), 32, 12, s, None,
                                folder / "x.mp4", reproducible=False)  # fmt: skip
    job = jobs.Job([jobs.TrackSpec("main", s, known=up.known)], 40, 12, folder, "v", lambda n: s, base=base,
                   origin="clip", lead_frames=32)  # fmt: skip
    job.steer = steer.Steering(folder / "steer", s, 0, 40, lead=32)
    notes: list[tuple[int, str]] = []

    def lease_fn(work):
        for ev in jobs.lease(work):
            if isinstance(ev, jobs.StepEvent) and ev.frames is not None and not job.steer.sent:
                job.steer.request(UP, "tail")
            yield ev

    for u in jobs.run_job(job, lease_fn, sessions.StopFlag(folder / "STOP"), estimate.RateBook()):
        if u.note and UP in u.note:
            notes.append((u.frames_done, u.note))
    (change,) = job.steer.taken
    assert 0 < change.frame < 40
    first_done, first = notes[0]
    assert first_done < change.frame  # recorded before it shows ...
    assert f"takes over at new frame {change.frame} (video frame {change.frame + 32})" in first and "in about" in first
    assert f"took over at new frame {change.frame}" in notes[-1][1]  # ... and shown as done by the end
    assert job.steer.settings(s).prompt == f"0: {RIGHT}\n{change.frame}: {UP}"
