"""fifo.video: exact frame counts, browser-ready MP4s, atomic output, continuous MPEG-TS chunks."""

from __future__ import annotations

import json
import re
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fifo.video as video
from fifo.video import ChunkWriter, VideoError, VideoWriter, probe_video, read_video, write_video

needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not on PATH")
SQUARE = (200, 40, 90)


def frame(i: int = 0, h: int = 64, w: int = 96) -> np.ndarray:
    """Grey background, a coloured square, and a patch whose level encodes the frame index."""
    f = np.full((h, w, 3), 128, np.uint8)
    f[8:24, 8:24] = SQUARE
    f[h - 16:, w - 16:] = 5 * i % 256
    return f


def top_level_atoms(path: Path) -> list[str]:
    data, atoms, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        atoms.append(kind.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return atoms


@pytest.fixture(params=["ffprobe", "decode"])
def probe_mode(request, monkeypatch):
    """Run probe_video both through ffprobe and through the decode-with-ffmpeg fallback."""
    if request.param == "ffprobe" and shutil.which("ffprobe") is None:
        pytest.skip("ffprobe not on PATH")
    if request.param == "decode":
        monkeypatch.setattr(video.shutil, "which", lambda name: None)
    return request.param


def test_mp4_round_trip_exact_frames_and_colours(tmp_path, probe_mode):
    path = tmp_path / "out.mp4"
    assert write_video(path, (frame(i) for i in range(50)), fps=8) == 50
    info = probe_video(path)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (50, 96, 64, 8.0)
    assert info["duration"] == pytest.approx(50 / 8, abs=0.05)
    got = read_video(path)
    assert got.shape == (50, 64, 96, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got[:, 10:22, 10:22].reshape(-1, 3).mean(0), SQUARE, atol=8)
    # Each frame's index patch: no frame dropped, duplicated or reordered.
    levels = got[:, -12:-4, -12:-4].reshape(50, -1).mean(1)
    np.testing.assert_allclose(levels, [5 * i for i in range(50)], atol=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left


@needs_ffprobe
def test_h264_yuv420p_faststart(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, [frame()] * 10, fps=24)
    info = probe_video(path)
    assert (info["codec"], info["pix_fmt"], info["start_time"]) == ("h264", "yuv420p", 0.0)
    atoms = top_level_atoms(path)
    assert atoms.index("moov") < atoms.index("mdat"), atoms


@pytest.mark.parametrize("fps", [23.976, Fraction(30000, 1001), 60])
def test_fractional_and_high_fps_keep_exact_count(tmp_path, fps):
    path = tmp_path / "out.mp4"
    write_video(path, (frame(i, 16, 16) for i in range(37)), fps=fps)
    info = probe_video(path)
    # Without ffprobe the rate is ffmpeg's printed one, rounded to 2 decimals.
    assert info["frames"] == 37 and info["fps"] == pytest.approx(float(fps), rel=1e-3)


def test_odd_size_is_padded_not_resized(tmp_path):
    src = frame(0, h=33, w=65)
    path = tmp_path / "odd.mp4"
    write_video(path, [src] * 5, fps=8)
    got = read_video(path)
    assert got.shape == (5, 34, 66, 3)
    diff = np.abs(got[:, :33, :65].astype(int) - src.astype(int))
    assert diff.mean() < 3 and diff[:, 10:22, 10:22].max() < 16  # same place, same scale
    # Edge padding: the added column and row repeat their neighbours.
    assert np.abs(got[:, :, 65].astype(int) - got[:, :, 64].astype(int)).mean() < 3
    assert np.abs(got[:, 33].astype(int) - got[:, 32].astype(int)).mean() < 3


def test_metadata_round_trips(tmp_path, probe_mode):
    settings = json.dumps({"prompt": 'a "cat" = ; # \\ \n on a mat', "seed": 7, "steps": [1, 2]})
    for name, meta in [("comment.mp4", {"comment": settings}), ("custom.mp4", {"comment": "c", "fifo": settings})]:
        write_video(tmp_path / name, [frame()] * 3, fps=8, metadata=meta)
        tags = probe_video(tmp_path / name)["tags"]
        assert {k: tags.get(k) for k in meta} == meta


def test_exception_inside_with_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with VideoWriter(tmp_path / "out.mp4", fps=8) as w:
            for i in range(5):
                w.write(frame(i))
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_abort_and_zero_frames_leave_nothing(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", fps=8)
    w.write(frame())
    w.abort()
    with pytest.raises(VideoError, match="aborted"):
        w.close()
    with pytest.raises(VideoError, match="no frames"):
        with VideoWriter(tmp_path / "b.mp4", fps=8):
            pass
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "c.mp4", [], fps=8)
    assert list(tmp_path.iterdir()) == []


def test_frame_checks(tmp_path):
    with VideoWriter(tmp_path / "out.mp4", fps=8) as w:
        w.write(frame(h=64, w=96))
        with pytest.raises(ValueError, match="96x64.*96x65|96x65.*96x64"):
            w.write(frame(h=65, w=96))
        for bad, what in [(frame().astype(np.float32), "float32"), (frame()[..., 0], r"\(64, 96\)"),
                          (np.zeros((64, 96, 4), np.uint8), r"\(64, 96, 4\)"), ([[0]], "list")]:
            with pytest.raises(ValueError, match=what):
                w.write(bad)
        w.write(frame(h=64, w=96))
    assert probe_video(tmp_path / "out.mp4")["frames"] == 2
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=0)


def test_unwritable_path_raises(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    for path in [tmp_path / "missing" / "out.mp4", tmp_path / "file" / "out.mp4"]:
        with pytest.raises(RuntimeError, match="cannot write"):
            VideoWriter(path, fps=8)


def test_ffmpeg_failure_raises_with_its_stderr(tmp_path):
    w = VideoWriter(tmp_path / "out.mp4", fps=8, preset="no-such-preset")
    with pytest.raises(VideoError, match="(?s)ffmpeg.*no-such-preset"):
        for _ in range(200):  # ffmpeg dies at start: a broken pipe here, or a bad exit status at close
            w.write(frame())
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_chunks_are_whole_and_continuous(tmp_path, probe_mode):
    cw = ChunkWriter(tmp_path, fps=8)  # 3.5 s: 8 + 8 + 8 + 4 frames
    returned = [cw.write(frame(i, 32, 48)) for i in range(28)]
    assert [i for i, p in enumerate(returned) if p is not None] == [7, 15, 23]
    last = cw.flush()
    assert last is not None and cw.flush() is None
    chunks = [p for p in returned if p is not None] + [last]
    assert chunks == cw.chunks and [p.suffix for p in chunks] == [".ts"] * 4
    infos = [probe_video(p) for p in chunks]
    assert [i["frames"] for i in infos] == [8, 8, 8, 4]
    decoded = np.concatenate([read_video(p) for p in chunks])
    levels = decoded[:, -12:-4, -12:-4].reshape(28, -1).mean(1)
    np.testing.assert_allclose(levels, [5 * i for i in range(28)], atol=6)
    if probe_mode == "ffprobe":
        assert [i["codec"] for i in infos] == ["h264"] * 4 and {i["pix_fmt"] for i in infos} == {"yuv420p"}
        np.testing.assert_allclose([i["start_time"] for i in infos], [0.0, 1.0, 2.0, 3.0], atol=1e-3)


@needs_ffprobe
def test_chunk_offsets_follow_frames_not_nominal_seconds(tmp_path):
    with ChunkWriter(tmp_path, fps=10, chunk_seconds=0.25) as cw:  # ceil(2.5) = 3 frames a chunk
        for i in range(10):
            cw.write(frame(i, 16, 16))
    assert cw.frames_per_chunk == 3 and len(cw.chunks) == 4
    infos = [probe_video(p) for p in cw.chunks]
    assert [i["frames"] for i in infos] == [3, 3, 3, 1]
    np.testing.assert_allclose([i["start_time"] for i in infos], [0.0, 0.3, 0.6, 0.9], atol=1e-3)


def test_chunk_writer_abort_keeps_finished_chunks_only(tmp_path):
    with pytest.raises(KeyError):
        with ChunkWriter(tmp_path, fps=4) as cw:
            for i in range(6):
                cw.write(frame(i, 16, 16))
            raise KeyError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk00000.ts"]
    with pytest.raises(ValueError, match="16x16"):
        cw.write(frame(0, 32, 32))


def test_many_frames_stream_through(tmp_path):
    written = []

    def frames():
        for i in range(600):
            written.append(i)
            yield frame(i, 16, 16)

    w = VideoWriter(tmp_path / "long.mp4", fps=30, crf=28, preset="ultrafast")
    for f in frames():
        w.write(f)
        assert w.frames_written == len(written)  # each frame goes to ffmpeg as it arrives
    w.close()
    assert probe_video(tmp_path / "long.mp4")["frames"] == 600


def test_metadata_of_any_length_travels_outside_argv(tmp_path, monkeypatch):
    schedule = "\n".join(f"{i * 10}: " + "a red ball moving right "[i % 5:] * 60 for i in range(64))  # 64 x ~1,400
    chinese = "\n".join(f"{i * 10}: " + "红色的球向右移动" * 125 for i in range(16))  # 16 x 1,000 Chinese characters
    meta = {"comment": json.dumps({"prompt": schedule, "zh": chinese}, ensure_ascii=False), "fifo": "x" * 300_000,
            "title": chinese, "album": "ends in a backslash \\"}
    argv = []
    real_popen = video.subprocess.Popen
    monkeypatch.setattr(video.subprocess, "Popen", lambda cmd, **kw: argv.append(cmd) or real_popen(cmd, **kw))
    write_video(tmp_path / "long.mp4", [frame(i) for i in range(3)], fps=8, metadata=meta)
    assert sum(len(a) for a in argv[0]) < 2000  # over 128 KiB in one argument fails with E2BIG
    info = probe_video(tmp_path / "long.mp4")
    assert info["frames"] == 3 and {k: info["tags"].get(k) for k in meta} == meta
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]


def test_metadata_that_cannot_be_stored_is_refused_before_any_file(tmp_path):
    for meta, message in [({"comment": "a\0b"}, "'comment': its value holds a NUL byte"),
                          ({"t\0": "x"}, "its name holds a NUL byte"),
                          ({"comment": "\udcff"}, "'comment': its value is not valid Unicode"),
                          ({"title": "a\\", "album": "b\\"}, "at most one value may end with a backslash"),
                          ({"a=b": "x"}, "names without '='")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            VideoWriter(tmp_path / "out.mp4", fps=8, metadata=meta)
    assert list(tmp_path.iterdir()) == []


def test_format_ffmetadata_escapes_and_orders():
    assert video.format_ffmetadata({"title": "a=b;c#d\\e\nf\rg", "comment": "x\\", "k": ""}) == (
        ";FFMETADATA1\ntitle=a\\=b\\;c\\#d\\\\e\\\nf\\\rg\nk=\ncomment=x\\\\"  # ends with the backslash value, no newline
    )


def test_a_folder_as_the_output_is_refused_at_once(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(VideoError, match="it is a folder"):
        VideoWriter(tmp_path / "out.mp4", fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_ffmpeg_runs_in_a_session_of_its_own(tmp_path):
    """Ctrl-C signals the terminal's foreground process group; ffmpeg must not be in it (tests/test_signals.py
    sends that signal to a whole CLI run)."""
    import os

    if os.name != "posix":
        pytest.skip("POSIX sessions")
    w = VideoWriter(tmp_path / "out.mp4", fps=8, metadata={"comment": "c"})
    w.write(frame(0))
    assert os.getsid(w._proc.pid) == w._proc.pid != os.getsid(0)
    assert os.getpgid(w._proc.pid) != os.getpgid(0)
    meta_file = w._meta_file
    assert meta_file.exists()
    w.close()
    assert probe_video(tmp_path / "out.mp4")["frames"] == 1
    assert not meta_file.exists() and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
