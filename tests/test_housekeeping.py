"""fifo_app.housekeeping: ended servers' scratch folders reclaimed (never a live one's), Gradio's cache trimmed, upload limit."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fifo_app import housekeeping as hk

ROOT = Path(__file__).resolve().parent.parent
DAY = 24 * 3600.0


def age(path: Path, seconds: float) -> None:
    """Set the modification time of `path` and everything under it to `seconds` ago."""
    t = time.time() - seconds
    for dirpath, dirnames, files in os.walk(path):
        for name in dirnames + files:
            os.utime(os.path.join(dirpath, name), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)


def other_server(base: Path) -> tuple[subprocess.Popen, Path]:
    """A separate process that claims a scratch folder under `base` and then waits."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from fifo_app import housekeeping as hk; "
            f"print(hk.claim_scratch({str(base)!r}), flush=True); import time; time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_live_servers_folders_are_kept_and_killed_ones_reclaimed(tmp_path):
    live, live_dir = other_server(tmp_path)
    dead, dead_dir = other_server(tmp_path)
    try:
        (dead_dir / "session" / "video").mkdir(parents=True)
        (dead_dir / "session" / "video" / "a.mp4").write_bytes(b"x" * 1000)
        dead.send_signal(signal.SIGKILL)  # no clean-up of its own
        dead.wait()
        mine = hk.claim_scratch(tmp_path)
        age(live_dir, 10 * DAY)  # old contents do not make a live server's folder stale

        removed = hk.reclaim_stale(tmp_path)

        assert removed == [dead_dir]
        assert not dead_dir.exists()
        assert live_dir.is_dir() and mine.is_dir()  # held locks: another live process's, and this one's
    finally:
        live.kill()
        live.wait()
    assert hk.reclaim_stale(tmp_path) == [live_dir]  # once it has ended


def test_folders_without_a_lock_go_only_when_old(tmp_path):
    old, recent = tmp_path / "fifo-app-old", tmp_path / "fifo-app-recent"
    for d in (old, recent):
        (d / "s").mkdir(parents=True)
        (d / "s" / "f.ts").write_bytes(b"x")
    age(old, 2 * DAY)
    age(recent, 2 * DAY)
    (recent / "s" / "f.ts").write_bytes(b"y")  # something inside still changes

    assert hk.reclaim_stale(tmp_path, legacy_age_s=DAY) == [old]
    assert recent.is_dir()


def test_only_own_folders_are_considered(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not ours")
    os.symlink(target, tmp_path / "fifo-app-link")  # a link with our prefix
    (tmp_path / "fifo-app-file").write_text("a file")
    other = tmp_path / "gradio-old"
    other.mkdir()
    for p in (target, other, tmp_path / "fifo-app-file"):
        age(p, 10 * DAY)

    assert hk.reclaim_stale(tmp_path, legacy_age_s=0) == []
    assert (target / "keep.txt").exists() and other.exists() and (tmp_path / "fifo-app-file").exists()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="legacy_age_s=-1"):
        hk.reclaim_stale(tmp_path, legacy_age_s=-1)
    with pytest.raises(ValueError, match="budget_bytes=-5"):
        hk.trim_cache(-5, cache=tmp_path)
    with pytest.raises(ValueError, match="partitions=0"):
        hk.queue_slots(16, 0, True)


def make_entry(cache: Path, name: str, size: int, seconds_ago: float) -> Path:
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "file.bin").write_bytes(b"\0" * size)
    age(entry, seconds_ago)
    return entry


def test_cache_entries_unused_for_an_hour_go(tmp_path):
    old = make_entry(tmp_path, "a" * 40, 1000, 2 * 3600)
    new = make_entry(tmp_path, "b" * 40, 1000, 60)

    assert hk.trim_cache(10**9, cache=tmp_path, max_age_s=3600) == 1000
    assert not old.exists() and new.exists()


def test_cache_trimmed_oldest_first_to_the_budget_counting_the_apps_folder(tmp_path):
    cache, app_dir = tmp_path / "gradio", tmp_path / "fifo-app-x"
    app_dir.mkdir()
    (app_dir / "video.mp4").write_bytes(b"\0" * 3000)
    e1 = make_entry(cache, "e1", 1000, 3000)
    e2 = make_entry(cache, "e2", 1000, 2000)
    e3 = make_entry(cache, "e3", 1000, 1000)
    young = make_entry(cache, "young", 5000, 10)  # younger than min_age_s: kept over budget

    freed = hk.trim_cache(9000, others=[app_dir], cache=cache, max_age_s=3600, min_age_s=600)

    # 3000 (app) + 8000 (cache) = 11000 > 9000: the two oldest go, then 9000 fits
    assert freed == 2000
    assert not e1.exists() and not e2.exists() and e3.exists() and young.exists()
    assert hk.tree_bytes(cache) + hk.tree_bytes(app_dir) == 9000


def test_cache_dir_follows_gradio_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "g"))
    assert hk.gradio_cache_dir() == tmp_path / "g"
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    assert hk.gradio_cache_dir().name == "gradio"
    assert hk.trim_cache(0, cache=tmp_path / "missing") == 0


def test_state_file_size_matches_a_saved_state():
    import torch

    from fifo import FIFOConfig, load_backbone
    from fifo.engine import FIFOStream

    bb = load_backbone("toy")
    stream = FIFOStream(bb, "a red ball moving right", FIFOConfig(partitions=2, lookahead=True), seed=3, height=96, width=64)
    for _ in stream.frames(3):
        pass
    state = stream.state()
    buf = io.BytesIO()
    state.save(buf)
    slots = hk.queue_slots(bb.native_frames, 2, True)
    pending = 0 if state.pending is None else len(state.pending)
    assert tuple(state.queue.shape) == (bb.latent_channels, slots, *bb.latent_size(96, 64))

    bound = hk.state_file_bytes(bb.latent_channels, slots, bb.latent_size(96, 64), (96, 64), pending)
    tensors = 4 * state.queue.numel() + (0 if state.pending is None else state.pending.numel())
    assert tensors <= len(buf.getvalue()) <= bound
    assert bound - len(buf.getvalue()) < 64 * 1024  # the overhead allowance is all the slack
    assert torch.equal(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["queue"], state.queue)


def test_upload_limit_mirrors_the_code():
    from fifo import BACKBONES
    from fifo.backbones import toy
    from fifo_app import settings

    assert hk.MAX_PIXELS == settings.MAX_PIXELS
    assert hk.TOY_MAX_PIXELS == toy.MAX_SIZE**2
    assert hk.FAMILIES["toy"] == (toy.ToyBackbone.latent_channels, toy.COMPRESSION, toy.ToyBackbone.native_frames, 1)
    for family, cls in (("unet3d", "unet3d:"), ("wan", "wan:")):
        largest = max(s.defaults.frames_per_window for s in BACKBONES.values() if s.cls.startswith(cls))
        assert hk.FAMILIES[family][2] == largest
    assert hk.MAX_STATE_UPLOAD == hk.upload_limit() < 512 * 2**20
    assert hk.upload_limit(decoder_bytes=10**6) == hk.MAX_STATE_UPLOAD + 10**6
