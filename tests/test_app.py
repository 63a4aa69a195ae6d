"""The app, launched for real on loopback and driven through gradio_client; plus its pure-Python parts.

Small toy settings (64x64, one partition) keep every run to a second or two on a CPU.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from fifo import FIFOState
from fifo.video import probe_video, read_video
from fifo_app import estimate, jobs, sessions, settings, zerogpu

ROOT = Path(__file__).resolve().parent.parent
FAST = {"partitions": 1, "lookahead": "off", "height": 64, "width": 64, "random_seed": False}  # L = 16: no warm-up steps
PROMPT = "a red ball moving right"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def client(server):
    c = Client(server[1], verbose=False)
    yield c
    c.close()  # its heartbeat thread would otherwise outlive the module


def details(outputs) -> dict:
    """The JSON progress output of one generate/extend output tuple."""
    return outputs[-1]


def generate(client: Client, prompt: str = PROMPT, frames: int = 24, seed: int = 7, **kw):
    job = client.submit(prompt, length=frames, length_unit="frames", seed=seed, **{**FAST, **kw}, api_name="/generate")
    return job, job.result(timeout=120)


# -- streaming and the final file ---------------------------------------------------------------


def test_stream_grows_and_final_mp4_has_exact_frames(client):
    job, out = generate(client, frames=40, partitions=2, lookahead="on")  # a warm-up phase to watch too
    progress = [details(o) for o in job.outputs()]
    done = [p["frames_done"] for p in progress]
    assert len(progress) >= 4, progress
    assert done == sorted(done) and done[-1] == 40 and len(set(done)) >= 3, done
    assert any(p["phase"] == "warming up" for p in progress)
    mp4 = out[1]
    info = probe_video(mp4)
    assert info["frames"] == 40 and (info["width"], info["height"]) == (64, 64) and info["fps"] == 12
    frames = read_video(mp4)
    assert frames.shape == (40, 64, 64, 3) and frames.std() > 5  # a picture, not a blank
    meta = json.loads(info["tags"]["comment"])
    assert meta["prompt"] == PROMPT and meta["seed"] == 7 and meta["frames"] == 40 and meta["partitions"] == 2
    assert Path(out[2]).suffix == ".pt"  # the queue state, to continue later
    assert "frames=40" in out[5] and "seed=7" in out[5]


def test_default_call_needs_only_a_prompt(client):
    job = client.submit(
        "a blue square moving left", length=12, length_unit="frames", api_name="/generate"
    )  # random seed, toy defaults
    out = job.result(timeout=120)
    assert probe_video(out[1])["frames"] == 12
    assert isinstance(details(out)["seed"], int)


# -- bad input --------------------------------------------------------------------------------------


BAD = [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "   \n  "}, "prompt is empty"),
    ({"prompt": "a red ball " * 200}, "characters long"),
    ({"length": 0}, "out of range"),
    ({"length": 10**6}, "out of range"),
    ({"length": 2.5}, "not a whole number"),
    ({"seed": 1.5}, "seed=1.5 is not a whole number"),
    ({"seed": -3}, "seed=-3"),
    ({"partitions": 0}, "partitions=0"),
    ({"partitions": 2.5}, "partitions=2.5"),
    ({"eta": 3}, "eta=3"),
    ({"fps": 0}, "fps=0"),
    ({"lookahead": "sometimes"}, "sometimes is not in the list of choices"),  # Gradio's own check of a dropdown
    ({"backbone": "no-such-model"}, "no-such-model is not in the list of choices"),
    ({"height": 63}, "height=63"),
    ({"prompt": "a red ball moving sideways"}, "unknown word.*sideways"),
    ({"prompt": "0: a red ball moving right\nthen up"}, "schedule line"),
    ({"schedule": {"headers": ["from frame", "prompt"], "data": [["abc", "a red ball moving up"]]}}, "schedule row 1"),
]


def test_bad_inputs_are_errors_and_the_server_keeps_serving(client):
    for change, message in BAD:
        kw = dict(prompt=PROMPT, length=12, length_unit="frames", seed=1, **FAST)
        kw.update(change)
        with pytest.raises(AppError, match=message):
            client.predict(**kw, api_name="/generate")
    _, out = generate(client, frames=12)  # and the next good request works
    assert probe_video(out[1])["frames"] == 12


def test_a_gpu_model_on_a_cpu_machine_is_a_clear_error(client):
    from fifo import BACKBONES

    gpu_models = [name for name, spec in BACKBONES.items() if spec.needs_gpu]
    if not gpu_models or torch.cuda.is_available():
        pytest.skip("needs a registered GPU model and a machine without a GPU")
    with pytest.raises(AppError, match="needs a CUDA GPU"):
        client.predict(PROMPT, backbone=gpu_models[0], length=8, length_unit="frames", api_name="/generate")
    assert "needs a GPU" in client.predict(gpu_models[0], 8, "frames", api_name="/estimate")


def test_extend_and_stop_need_something_to_act_on(server):
    fresh = Client(server[1], verbose=False)  # a new session: no video yet
    try:
        with pytest.raises(AppError, match="nothing to extend"):
            fresh.predict(length=12, length_unit="frames", api_name="/extend")
        assert fresh.predict(api_name="/stop") == "nothing to stop"
        with pytest.raises(AppError, match="no state file"):
            fresh.predict(prompt=PROMPT, api_name="/continue_state")
    finally:
        fresh.close()


# -- stop and extend --------------------------------------------------------------------------------


def test_stop_keeps_a_valid_partial_video_and_extend_continues_it(server, client):
    job = client.submit(PROMPT, length=3000, length_unit="frames", seed=11, **FAST, api_name="/generate")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and details(outs[-1])["frames_done"] >= 30:
            break
        time.sleep(0.1)
    assert client.predict(api_name="/stop") == "stopping"
    out = job.result(timeout=60)
    d = details(out)
    assert d["stopped"] is True and 30 <= d["frames_in_video"] < 3000
    old = read_video(out[1])
    assert probe_video(out[1])["frames"] == len(old) == d["frames_in_video"]

    ext = client.predict(length=12, length_unit="frames", api_name="/extend")
    new = read_video(ext[1])
    assert len(new) == len(old) + 12
    assert np.array_equal(new[: len(old)], old)  # the old frames, untouched
    assert details(ext)["frames_in_video"] == len(old) + 12

    # the extension's share link remakes the whole video in one run: the same frames
    link = settings.query_params(ext[5])
    assert int(link["frames"]) == len(old) + 12
    again = client.predict(PROMPT, length=int(link["frames"]), length_unit="frames", seed=11, **FAST, api_name="/generate")
    remade = read_video(again[1])
    assert remade.shape == new.shape
    assert np.abs(remade.astype(int) - new.astype(int)).mean() < 1.0  # equal up to where the encoder cut its chunks

    # a changed prompt takes over from the first frame no finished window has read (the frames in
    # the queue were begun with the old prompt); the link records that schedule and remakes the video
    turn = client.predict("a red ball moving up", length=24, length_unit="frames", api_name="/extend")
    sched = settings.query_params(turn[5])["prompt"]
    head, change = sched.split("\n")
    at = int(change.split(":")[0])
    assert head == f"0: {PROMPT}" and change == f"{at}: a red ball moving up" and len(new) < at < len(new) + 24
    turned = read_video(turn[1])
    assert np.array_equal(turned[: len(remade)], remade)
    again = client.predict(sched, length=len(turned), length_unit="frames", seed=11, **FAST, api_name="/generate")
    assert np.abs(read_video(again[1]).astype(int) - turned.astype(int)).mean() < 1.0


def test_uploaded_state_continues_like_extend(client):
    _, out = generate(client, frames=24, seed=5)
    state = FIFOState.load(out[2])
    assert state.frames_emitted == 24 and state.queue.device.type == "cpu"
    ext = client.predict(length=12, length_unit="frames", api_name="/extend")
    cont = client.predict(handle_file(out[2]), PROMPT, 12, "frames", api_name="/continue_state")
    assert np.array_equal(read_video(cont[1]), read_video(ext[1])[24:])  # the same 12 new frames
    assert "no link" in cont[5]
    # the state records its prompt: an empty prompt box goes on with it
    assert state.meta == {"prompt": PROMPT, "negative_prompt": ""}
    same = client.predict(handle_file(out[2]), "", 12, "frames", api_name="/continue_state")
    assert np.array_equal(read_video(same[1]), read_video(cont[1]))


# -- share links ------------------------------------------------------------------------------------


def test_share_link_round_trips_every_setting(client):
    asked = {
        "negative_prompt": "blurry",
        "eta": 0.5,
        "guidance_scale": 2.0,
        "fps": 10,
        "partitions": 2,
        "lookahead": "off",
        "frames_per_rung": 2,
        "height": 64,
        "width": 96,
    }
    job = client.submit(
        "a green ball moving up",
        length=15,
        length_unit="frames",
        seed=42,
        random_seed=False,
        schedule={"headers": ["from frame", "prompt"], "data": [[8, "a green ball moving down"]]},
        **asked,
        api_name="/generate",
    )
    out = job.result(timeout=120)
    back = client.predict(out[5], api_name="/settings_from_link")
    assert back == {
        "prompt": "0: a green ball moving up\n8: a green ball moving down",
        "backbone": "toy",
        "frames": 15,
        "seed": 42,
        "negative_prompt": "blurry",
        "partitions": 2,
        "lookahead": False,
        "frames_per_rung": 2,
        "eta": 0.5,
        "guidance_scale": 2.0,
        "fps": 10,
        "height": 64,
        "width": 96,
    }
    meta = json.loads(probe_video(out[1])["tags"]["comment"])
    assert settings.query_params(meta["share_query"]) == settings.query_params(out[5])
    with pytest.raises(AppError, match="ignored seed"):
        client.predict("?prompt=a+red+ball&seed=banana", api_name="/settings_from_link")


def test_settings_query_round_trip_offline():
    s = settings.parse_inputs(
        "0: a red ball moving right\n48: a red ball moving up", "", "toy", 96, "frames", 3, False, 2, "on", 0.25
    )
    assert settings.settings_from_query(settings.query_params("https://x.hf.space/?" + s.to_query())) == s.resolved()
    values, notes = settings.from_query({"prompt": "a red ball", "frames": "0", "colour": "red"})
    assert values == {"prompt": "a red ball"} and len(notes) == 2
    assert settings.continue_schedule("a red ball moving right", "", 50) == "a red ball moving right"
    assert settings.continue_schedule("0: a\n100: b", "c", 50) == "0: a\n50: c"
    assert settings.continue_schedule(None, "0: a\n10: b", 50) == "0: a\n60: b"


# -- compare ----------------------------------------------------------------------------------------


def test_compare_puts_two_settings_side_by_side(client):
    out = client.predict(PROMPT, "toy", 12, "frames", 3, 1, "off", None, 2, "on", None, api_name="/compare")
    info = probe_video(out[1])
    assert info["frames"] == 12 and info["width"] > 2 * 128  # two 128-wide videos and a gap
    assert [t["label"][:2] for t in details(out)["timings"]] == ["A:", "B:"]


# -- bounded disk, estimates, start-up ---------------------------------------------------------------


def test_session_keeps_only_its_latest_video(server, client):
    app = server[0]
    for seed in (1, 2, 3):
        generate(client, frames=12, seed=seed)
    folder = app.SERVICE.store.root / client.session_hash
    videos = [p for p in folder.iterdir() if p.is_dir()]
    assert len(videos) == 1, videos
    app.SERVICE.end_session(client.session_hash)
    assert not folder.exists()


def test_disk_use_stays_bounded_over_many_runs(tmp_path):
    from fifo_app.service import Service

    service = Service(jobs.lease, store=sessions.SessionStore(tmp_path / "sessions"))
    s = settings.parse_inputs(PROMPT, "", "toy", 12, "frames", 1, False, 1, "off", height=64, width=64)
    sizes = []
    for i in range(9):  # 9 runs over 3 sessions: the bound holds however many follow
        for _ in service.generate(s, f"session{i % 3}"):
            pass
        sizes.append(service.store.disk_bytes())
    assert max(sizes[3:]) <= 1.5 * sizes[2]  # each session holds its latest video only
    assert len([p for p in (tmp_path / "sessions").rglob("*.mp4")]) == 3
    service.end_session("session0")
    assert not (tmp_path / "sessions" / "session0").exists()
    assert service.store.prune(max_idle_s=0) == 2 and service.store.disk_bytes() == 0  # idle API sessions go too


def test_estimate_endpoint(client):
    text = client.predict("toy", 48, "frames", None, "default", None, None, None, api_name="/estimate")
    assert "48 frames" in text and "≈" in text
    assert "out of range" in client.predict("toy", 0, "frames", None, "default", None, None, None, api_name="/estimate")


def test_python_app_py_starts_on_the_toy_world_and_streams_a_growing_mp4_without_hls():
    """`python app.py`, configured by environment only; FIFO_STREAMING=mp4 is the mode used where ffprobe is missing."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "FIFO_STREAMING": "mp4",
    }
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                    config = json.load(r)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("app.py did not start within 90 s")
        dropdown = next(c for c in config["components"] if c["props"].get("label") == "Backbone")
        assert dropdown["props"]["value"] == "toy"

        sub_client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = sub_client.submit(PROMPT, length=40, length_unit="frames", seed=2, **FAST, api_name="/generate")
        out = job.result(timeout=120)
        sub_client.close()
        videos = [o[0] for o in job.outputs() if isinstance(o[0], str)]
        assert len(videos) >= 2 and all(v.endswith(".mp4") for v in videos)  # a longer MP4 each time
        counts = [probe_video(v)["frames"] for v in videos]
        assert counts == sorted(counts) and counts[-1] == 40
        assert probe_video(out[1])["frames"] == 40
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- ZeroGPU, against a fake `spaces` --------------------------------------------------------------


def _assert_cpu_only(x, where: str) -> None:
    """Nothing that crosses a lease may hold a CUDA tensor or a model."""
    if isinstance(x, torch.Tensor):
        assert x.device.type == "cpu", where
    elif isinstance(x, torch.nn.Module):
        pytest.fail(f"a model crosses a lease at {where}")
    elif isinstance(x, dict):
        for k, v in x.items():
            _assert_cpu_only(v, f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _assert_cpu_only(v, f"{where}[{i}]")
    elif hasattr(x, "__dataclass_fields__"):
        for k in x.__dataclass_fields__:
            _assert_cpu_only(getattr(x, k), f"{where}.{k}")


def fake_spaces(max_duration: int, calls: list[int]) -> types.ModuleType:
    """A stand-in for the `spaces` package on a ZeroGPU Space: a lease is a separate process."""
    mod = types.ModuleType("spaces")
    mod.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True))

    def GPU(task=None, *, duration=None, size=None):
        def decorate(fn):
            def leased(*args, **kwargs):
                d = duration(*args, **kwargs) if callable(duration) else duration
                assert 0 < d <= max_duration, d  # ZeroGPU refuses a longer lease
                calls.append(d)
                _assert_cpu_only(args, "args")
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))  # into the worker process ...
                for event in fn(*args, **kwargs):
                    _assert_cpu_only(event, type(event).__name__)
                    yield pickle.loads(pickle.dumps(event))  # ... and back

            return leased

        return decorate(task) if callable(task) else decorate

    mod.GPU = GPU
    return mod


def test_zerogpu_spreads_a_long_run_over_leases(tmp_path):
    s = settings.parse_inputs(PROMPT, "", "toy", 60, "frames", 9, False, 1, "on", height=64, width=64)
    calls: list[int] = []
    spaces = fake_spaces(max_duration=30, calls=calls)
    assert zerogpu.on_zerogpu(spaces)
    leased = spaces.GPU(duration=jobs.lease_duration)(jobs.lease)

    def run(lease_fn, limit):
        rates = estimate.RateBook()
        rates.record("toy", 16 * 16, 16, 0.3)  # pretend the toy is slow: 0.6 s per step, so 60 frames need several leases
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        job = jobs.Job([jobs.TrackSpec("main", s)], 60, 12, folder, "v", lambda n: s)
        ups = list(jobs.run_job(job, lease_fn, sessions.StopFlag(folder / "STOP"), rates, limit))
        return ups[-1].result

    split = run(leased, 30.0)
    assert split.leases == len(calls) >= 2 and all(d <= 30 for d in calls)
    whole = run(jobs.lease, None)  # off ZeroGPU: one lease, no limit
    assert whole.leases == 1
    a, b = read_video(split.mp4), read_video(whole.mp4)
    assert a.shape == (60, 64, 64, 3) and np.array_equal(a, b)  # the state carried over leases loses nothing


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: checks that a lease on a real GPU hands back CPU data only"
)
def test_a_cuda_lease_hands_back_cpu_data_only(monkeypatch):
    from fifo import load_backbone
    from fifo_app.models import MANAGER

    monkeypatch.setitem(MANAGER._loaded, "toy", load_backbone("toy", device="cuda"))
    s = settings.parse_inputs(PROMPT, "", "toy", 20, "frames", 1, False, 1, "on", height=64, width=64)
    state = None
    for frames in (12, 8):  # two leases, the second continuing the first's state
        work = jobs.LeaseWork([jobs.TrackSpec("main", s, state)], [frames], 60.0, 60, "/nonexistent/STOP")
        for event in jobs.lease(work):
            _assert_cpu_only(event, type(event).__name__)
            assert not isinstance(event, jobs.LeaseFailure), event
            if isinstance(event, jobs.LeaseEnd):
                state = event.states[0]
    assert state is not None and state.frames_emitted == 20


def test_zerogpu_planning_and_decorator_selection():
    est = estimate.Estimate(seconds=500.0, measured=True, seconds_per_frame=2.0, warmup_seconds=20.0)
    frames, seconds = estimate.next_lease(est, frames_left=240, max_lease_s=120)
    assert seconds == 120 and 1 <= frames < 240
    assert estimate.next_lease(estimate.Estimate(10.0, True, 0.1, 2.0), 100, 120) == (100, 24)
    with pytest.raises(ValueError, match="warm start"):
        estimate.plan_leases(compute_s=500, warm_start_s=200, max_lease_s=120)
    assert not zerogpu.on_zerogpu(
        types.SimpleNamespace(config=types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=False)))
    )
    assert zerogpu.max_lease_seconds() is None  # not on ZeroGPU here
    import spaces as real_spaces

    assert zerogpu.GPU is real_spaces.GPU  # the real decorator: a no-op off ZeroGPU
    fn = lambda: 1
    assert zerogpu.GPU(duration=5)(fn) is fn


def test_cpu_copy_moves_every_tensor():
    st = FIFOState(
        torch.zeros(3, 4, 2, 2),
        5,
        3,
        1,
        "toy",
        {},
        64,
        64,
        {"cache": [torch.ones(2)]},
        torch.zeros(0, 8, 8, 3, dtype=torch.uint8),
    )
    _assert_cpu_only(jobs.cpu_copy(st), "state")


def test_toy_examples_use_the_toy_vocabulary():
    from fifo.backbones.toy import parse_prompt
    from fifo_app.examples import load_examples

    exs = load_examples()
    assert any(e.backbone != "toy" for e in exs) and any("\n" in e.prompt for e in exs)
    for e in exs:
        sched = settings.build_schedule(e.prompt)
        if e.backbone == "toy":
            for p in sched.prompts:
                parse_prompt(p)


def test_queue_picture_and_stop_flag(tmp_path):
    from fifo_app.queueviz import render_queue

    S, context = 72, 8
    preview = np.random.default_rng(0).integers(0, 255, (S, 32, 32, 3), dtype=np.uint8)
    t = np.concatenate([np.full(context, 15.0), np.linspace(15, 999, S - context)])
    img = render_queue(preview, t, context, 16, step=120, warming_up=True)
    assert img.dtype == np.uint8 and img.shape[1] == 960 and img.shape[2] == 3 and 150 < img.shape[0] < 400
    with pytest.raises(ValueError, match="does not match"):
        render_queue(preview[:5], t, context, 16, step=0)

    flag = sessions.StopFlag(tmp_path / "STOP")
    assert not flag.is_set()
    flag.set()
    assert flag.is_set() and (tmp_path / "STOP").exists()  # a file, so a forked ZeroGPU worker sees it too


def test_joined_mp4_takes_metadata_of_any_length_outside_argv(tmp_path):
    """A long schedule (64 x 1,000 characters, Chinese and ASCII) reaches the joined MP4 intact."""
    from fifo.video import ChunkWriter
    from fifo_app.media import join_chunks

    with ChunkWriter(tmp_path, 8, 1.0) as w:
        for i in range(20):
            w.write(np.full((16, 16, 3), 10 * i, np.uint8))
    schedule = "\n".join(f"{i * 10}: " + ("红球向右移动" * 166 if i % 2 else "a red ball " * 90) for i in range(64))
    out = join_chunks(w.chunks, tmp_path / "v.mp4", {"comment": json.dumps({"prompt": schedule})})
    info = probe_video(out)
    assert info["frames"] == 20
    assert json.loads(info["tags"]["comment"])["prompt"] == schedule
    assert not list(tmp_path.glob("*meta*"))  # no side file left beside the video


# -- speed presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", settings.PRESETS)
def test_each_preset_runs_at_the_calls_a_frame_it_states(preset):
    """The window calls a frame that the preset's label states, counted at the backbone over a toy run."""
    from fifo import FIFOConfig, FIFOStream
    from fifo.backbones.toy import ToyBackbone

    p = settings.presets("toy")[preset]
    bb = ToyBackbone(64, 64)
    calls = []
    real = bb.denoise
    bb.denoise = lambda latents, *a, **k: (calls.append(latents.shape[0]), real(latents, *a, **k))[1]
    cfg = FIFOConfig(partitions=p["partitions"], lookahead=p["lookahead"], frames_per_rung=p["frames_per_rung"])
    s = FIFOStream(bb, PROMPT, cfg, seed=1)
    list(s.frames(1))  # the warm start and the warm-up behind us
    before, emitted = sum(calls), s.frames_emitted
    list(s.frames(16 * p["frames_per_rung"]))
    per_frame = (sum(calls) - before) / (s.frames_emitted - emitted)  # windows per (toy: latent = video) frame
    assert per_frame == p["calls_per_frame"]  # the toy has no guidance: calls are windows
    assert {"paper": 8, "quality": 2, "fast": 1}[preset] == per_frame


def test_each_preset_makes_a_video_through_the_app(client):
    for name, p in settings.presets("toy").items():
        out = client.predict(PROMPT, length=12, length_unit="frames", seed=4, random_seed=False, height=64, width=64,
                             partitions=p["partitions"], lookahead="on", frames_per_rung=p["frames_per_rung"],
                             api_name="/generate")  # fmt: skip
        assert probe_video(out[1])["frames"] == 12, name
        assert settings.query_params(out[5])["frames_per_rung"] == str(p["frames_per_rung"])


def test_a_speed_preset_fills_in_the_advanced_settings():
    import app

    for name, p in settings.presets("toy").items():
        assert app.on_preset(name, "toy") == (str(p["partitions"]), "on", str(p["frames_per_rung"]))
    assert app.on_preset("fast", "toy") == ("2", "on", "4")
    assert all(isinstance(x, type(app.gr.skip())) for x in app.on_preset("lookahead off vs on", "toy"))
