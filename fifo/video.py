"""Video output: MP4 files and MPEG-TS stream chunks, written frame by frame with imageio-ffmpeg's ffmpeg.

Frames are uint8 arrays (H, W, 3), RGB. Nothing accumulates in memory: each frame goes straight
into ffmpeg's stdin. Odd frame sizes are padded to even by repeating the last row / column
(edge padding, so no dark seam bleeds into the 2x2 chroma blocks of yuv420p); never resized.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import IO, Iterable

import imageio_ffmpeg
import numpy as np

__all__ = ["VideoError", "VideoWriter", "ChunkWriter", "write_video", "read_video", "probe_video", "check_metadata",
           "format_ffmetadata", "ffmpeg_popen_options", "retag_video", "write_ffmetadata_file", "mp4_movflags"]


class VideoError(RuntimeError):
    """ffmpeg failed, or the output could not be written."""


def _check_frame(frame: object, size: tuple[int, int] | None) -> tuple[int, int]:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a frame must have shape (H, W, 3), got {frame.shape}")
    h, w = frame.shape[:2]
    if size is not None and (w, h) != size:
        raise ValueError(f"frame size {w}x{h} differs from the video's {size[0]}x{size[1]} (WxH)")
    return w, h


def _fps(fps: float) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not (0 < fps < math.inf):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(100_000)  # exact rationals such as 30000/1001 survive


@cache
def _fps_mode_args() -> tuple[str, ...]:
    # -fps_mode arrived in ffmpeg 5.1 and -vsync is deprecated since; IMAGEIO_FFMPEG_EXE may
    # point at an older build. Unparsable (git) versions are taken to be new.
    m = re.match(r"n?(\d+)\.(\d+)", imageio_ffmpeg.get_ffmpeg_version())
    return ("-vsync" if m and (int(m[1]), int(m[2])) < (5, 1) else "-fps_mode", "passthrough")


# Tags the MP4 muxer writes to iTunes-style atoms; see VideoWriter._format_args.
_MP4_TAGS = {"title", "artist", "album", "album_artist", "comment", "description", "synopsis", "date", "genre",
             "copyright", "composer", "grouping", "lyrics", "encoder"}


def check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """A copy of `metadata` after checking it can be stored; ValueError naming the first bad entry."""
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not k or "=" in k or not isinstance(v, str):
            raise ValueError(f"metadata must map names without '=' to strings, got {k!r}: {v!r:.80}")
        for what, text in (("name", k), ("value", v)):
            if "\0" in text:  # C strings end there: ffmpeg would silently cut the value short
                raise ValueError(f"metadata {k!r:.80}: its {what} holds a NUL byte, which a video's metadata cannot store")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"metadata {k!r:.80}: its {what} is not valid Unicode ({e.reason})") from None
    if sum(v.endswith("\\") for v in (metadata or {}).values()) > 1:  # see format_ffmetadata
        raise ValueError("metadata: at most one value may end with a backslash")
    return dict(metadata or {})


def format_ffmetadata(metadata: dict[str, str]) -> str:
    """The global tags of `metadata` as an ffmetadata file, ffmpeg's side channel for tags of any length.

    Passing tags as `-metadata k=v` arguments puts them in ffmpeg's argv, which the OS caps (about
    128 KiB per argument on Linux) and which cannot hold a NUL byte.
    """
    escape = lambda t: re.sub(r"([=;#\\\n\r])", r"\\\1", t)  # \r too: the reader ends lines there as well
    # ffmpeg's reader takes any newline after a backslash as escaped, even after an escaped
    # backslash, so a value ending in one goes last, ended by the end of the file.
    items = sorted(check_metadata(metadata).items(), key=lambda kv: kv[1].endswith("\\"))
    last = "" if items and items[-1][1].endswith("\\") else "\n"
    return ";FFMETADATA1" + "".join(f"\n{escape(k)}={escape(v)}" for k, v in items) + last


def write_ffmetadata_file(metadata: dict[str, str]) -> Path:
    """The tags in a temporary ffmetadata file, for ffmpeg's `-f ffmetadata -i FILE`; the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix="fifo-meta-", suffix=".txt")
    with open(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(format_ffmetadata(metadata))
    return Path(name)


def mp4_movflags(metadata: dict[str, str]) -> str:
    """`-movflags` for an MP4 carrying these tags."""
    # Known keys go to iTunes-style atoms that most tools read; any other key needs the
    # QuickTime key list, which would also take the known ones out of those atoms.
    return "+faststart" + ("+use_metadata_tags" if any(k not in _MP4_TAGS for k in metadata) else "")


def ffmpeg_popen_options() -> dict:
    """Popen keywords for an ffmpeg child that must outlive a terminal's Ctrl-C to finish its file.

    Ctrl-C signals the terminal's whole foreground process group; in a session of its own, ffmpeg
    only stops when its stdin closes, so the writer can still finish a valid file of what was made.
    """
    return {"start_new_session": True} if os.name == "posix" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}


class VideoWriter:
    """An H.264 / yuv420p MP4 written incrementally and renamed into place on a successful close."""

    def __init__(self, path: str | os.PathLike, fps: float, metadata: dict[str, str] | None = None,
                 crf: int = 18, preset: str = "medium") -> None:
        """Open a writer (the folder must exist); the frame size is fixed by the first frame."""
        self.path, self.fps, self.metadata = Path(path), _fps(fps), check_metadata(metadata)
        self.crf, self.preset, self.frames_written = int(crf), preset, 0
        self._size: tuple[int, int] | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe stalls ffmpeg
        self._state = "aborted"  # until the temp file exists, so __del__ has nothing to clean
        self._meta_file: Path | None = None
        if self.path.is_dir():  # found now, not at the final rename after the whole run
            raise VideoError(f"cannot write a video to {self.path}: it is a folder")
        # Same folder, so the final rename is atomic; created now so an unwritable folder fails here.
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        try:
            open(self._tmp, "xb").close()
        except OSError as e:
            raise VideoError(f"cannot write a video into {self.path.parent}: {e}") from e
        self._state = "open"

    def _format_args(self) -> list[str]:
        return ["-movflags", mp4_movflags(self.metadata), "-f", "mp4"]

    def _complete(self, tmp: Path) -> None:
        """Last touches to the finished file before it moves into place."""

    def _start(self, w: int, h: int) -> None:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", str(self.fps), "-i", "pipe:0"]
        if self.metadata:  # a side file, never argv: see format_ffmetadata
            self._meta_file = write_ffmetadata_file(self.metadata)
            cmd += ["-f", "ffmetadata", "-i", str(self._meta_file), "-map", "0:v", "-map_metadata", "1"]
        cmd += ["-an", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                *_fps_mode_args()]
        try:
            self._proc = subprocess.Popen(cmd + self._format_args() + [str(self._tmp)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=self._stderr, **ffmpeg_popen_options())
        except OSError as e:
            self._fail(f"cannot start ffmpeg: {e}")

    def _fail(self, msg: str) -> None:
        self._kill()
        tail = self._stderr.seek(0) or self._stderr.read().decode(errors="replace")[-2000:].strip()
        self.abort()
        raise VideoError(f"{msg} (writing {self.path})" + (f"\nffmpeg stderr:\n{tail}" if tail else ""))

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            with contextlib.suppress(OSError):  # the pipe is broken if ffmpeg died; nothing to flush
                self._proc.stdin.close()
        self._drop_meta_file()

    def _drop_meta_file(self) -> None:
        if self._meta_file is not None:
            self._meta_file.unlink(missing_ok=True)
            self._meta_file = None

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 (H, W, 3) RGB frame."""
        if self._state != "open":
            raise VideoError(f"{self.path}: the writer is {self._state}")
        w, h = _check_frame(frame, self._size)
        if self._size is None:
            self._size = (w, h)
            self._start(w + w % 2, h + h % 2)
        if w % 2 or h % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except OSError as e:
            self._fail(f"ffmpeg stopped taking frames: {e}")
        self.frames_written += 1

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path."""
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise VideoError(f"{self.path}: the writer was aborted, no video was written")
        if self._proc is None:
            self.abort()
            raise VideoError(f"{self.path}: no frames were written")
        with contextlib.suppress(OSError):  # a broken pipe shows up as ffmpeg's exit status below
            self._proc.stdin.close()
        rc = self._proc.wait()
        self._drop_meta_file()
        if rc != 0:
            self._fail(f"ffmpeg exited with status {rc}")
        try:
            self._complete(self._tmp)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._fail(f"cannot move the finished video into place: {e}")
        self._stderr.close()
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; leaves no output."""
        if self._state == "open":
            self._state = "aborted"
            self._kill()
            self._stderr.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close() if exc_type is None else self.abort()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":  # dropped unclosed: leave no half-written file
            self.abort()


_TS_NULL_PACKET = b"\x47\x1f\xff\x10" + b"\xff" * 184  # sync byte, PID 0x1FFF, payload only
_TS_MIN_PACKETS = 16


class _TSChunk(VideoWriter):
    def __init__(self, path: Path, fps: float, offset: float, crf: int, preset: str) -> None:
        super().__init__(path, fps, crf=crf, preset=preset)
        self.offset = offset

    def _format_args(self) -> list[str]:
        # No B-frames and no mux delay, so a chunk's first frame sits exactly at its offset (with
        # B-frames the first chunk's negative DTS gets shifted) and consecutive chunks abut.
        return ["-bf", "0", "-output_ts_offset", f"{self.offset:.6f}", "-muxdelay", "0", "-muxpreload", "0",
                "-f", "mpegts"]

    def _complete(self, tmp: Path) -> None:
        # Readers that guess the container from the bytes (ffprobe and ffmpeg without -f, as Gradio's
        # streaming player calls them) take a TS of under 11 * 204 bytes (libavformat's mpegts probe
        # wants more than 10 packets of its largest, 204-byte kind) for MPEG-PS, then fail with "End of
        # file": a chunk of one or two flat frames is that small. Null packets (PID 0x1FFF), which
        # every demuxer drops, bring it up to a size no probe misreads; frames and timestamps are untouched.
        size = tmp.stat().st_size
        if size < _TS_MIN_PACKETS * 188:
            with open(tmp, "ab") as f:
                f.write(_TS_NULL_PACKET * (_TS_MIN_PACKETS - size // 188))


def retag_video(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Replace a finished MP4's global tags (streams copied, file replaced atomically; tags never on argv)."""
    path, metadata = Path(path), check_metadata(metadata)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    meta_file = write_ffmetadata_file(metadata)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(path),
           "-f", "ffmetadata", "-i", str(meta_file), "-map", "0", "-c", "copy", "-map_metadata", "1",
           "-movflags", mp4_movflags(metadata), "-f", "mp4", str(tmp)]
    try:
        res = subprocess.run(cmd, capture_output=True, **ffmpeg_popen_options())
        if res.returncode != 0:
            raise VideoError(f"cannot add tags to {path.name}: " + res.stderr.decode(errors="replace").strip()[-300:])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float,
                metadata: dict[str, str] | None = None, crf: int = 18) -> int:
    """Write frames to an MP4 at path; returns the number of frames written."""
    with VideoWriter(path, fps, metadata, crf=crf) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


class ChunkWriter:
    """MPEG-TS chunks of chunk_seconds each, with continuous timestamps, for HLS-style streaming."""

    def __init__(self, folder: str | os.PathLike, fps: float, chunk_seconds: float = 1.0,
                 crf: int = 23, preset: str = "veryfast", prefix: str = "chunk") -> None:
        """Write chunks named {prefix}{index:05d}.ts into folder (which must exist)."""
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds!r}")
        self.folder, self.fps, self.crf, self.preset, self.prefix = Path(folder), _fps(fps), crf, preset, prefix
        # Rounded first so that float noise (8 * 1.0000000001) does not add a frame.
        self.frames_per_chunk = max(1, math.ceil(round(float(self.fps) * chunk_seconds, 6)))
        self.frames_written, self.chunks = 0, []
        self._size: tuple[int, int] | None = None
        self._chunk: _TSChunk | None = None

    def write(self, frame: np.ndarray) -> Path | None:
        """Add one frame; returns the path of a chunk when this frame completes one."""
        self._size = _check_frame(frame, self._size)
        if self._chunk is None:
            path = self.folder / f"{self.prefix}{len(self.chunks):05d}.ts"
            self._chunk = _TSChunk(path, self.fps, float(self.frames_written / self.fps), self.crf, self.preset)
        self._chunk.write(frame)
        self.frames_written += 1
        return self.flush() if self._chunk.frames_written >= self.frames_per_chunk else None

    def flush(self) -> Path | None:
        """Finish the chunk in progress, if any, and return its path."""
        if self._chunk is None:
            return None
        chunk, self._chunk = self._chunk, None
        self.chunks.append(chunk.close())
        return self.chunks[-1]

    def abort(self) -> None:
        """Drop the chunk in progress; finished chunks stay."""
        if self._chunk is not None:
            self._chunk.abort()
            self._chunk = None

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.flush() if exc_type is None else self.abort()


def _parse_ffmetadata(text: str) -> dict[str, str]:
    # ffmetadata backslash-escapes '=', ';', '#', '\\' and newlines, so lines and keys split on unescaped ones.
    tags, unescape = {}, lambda t: re.sub(r"\\(.)", r"\1", t, flags=re.S)
    for line in re.findall(r"(?:\\.|[^\\\n])+", text, flags=re.S):
        if line.startswith("["):
            break  # stream and chapter sections follow the global tags
        if not line.startswith((";", "#")) and (m := re.fullmatch(r"((?:\\.|[^\\=])+)=(.*)", line, flags=re.S)):
            tags[unescape(m[1])] = unescape(m[2])
    return tags


def probe_video(path: str | os.PathLike) -> dict:
    """Exact frame count, fps, width, height, duration, codec, pix_fmt, start_time and metadata tags.

    Without ffprobe, frames are counted by decoding; fps is then ffmpeg's rounded printout, and
    pix_fmt and start_time are None.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    if ffprobe := shutil.which("ffprobe"):
        res = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json",
                              "-show_entries", "stream=nb_read_frames,width,height,avg_frame_rate,codec_name,pix_fmt,"
                              "start_time:format=duration:format_tags", path], capture_output=True, text=True)
        info = json.loads(res.stdout or "{}") if res.returncode == 0 else {}
        if not info.get("streams"):
            raise VideoError(f"ffprobe found no video stream in {path}: {res.stderr[-2000:].strip()}")
        s, fmt = info["streams"][0], info.get("format", {})
        num, _, den = s.get("avg_frame_rate", "0/0").partition("/")
        return {"frames": int(s.get("nb_read_frames", 0)), "fps": float(num) / float(den) if float(den or 0) else 0.0,
                "width": s["width"], "height": s["height"], "duration": float(fmt.get("duration", 0.0)),
                "codec": s.get("codec_name"), "pix_fmt": s.get("pix_fmt"),
                "start_time": float(s.get("start_time", 0.0)), "tags": dict(fmt.get("tags", {}))}
    # No ffprobe: decode with the bundled ffmpeg to count frames; tags come from its ffmetadata dump.
    meta = next(gen := imageio_ffmpeg.read_frames(path))
    gen.close()
    frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-f", "ffmetadata", "-"],
                         capture_output=True, text=True)
    return {"frames": frames, "fps": float(meta["fps"]), "width": meta["size"][0], "height": meta["size"][1],
            "duration": float(meta["duration"]), "codec": meta.get("codec"), "pix_fmt": None,
            "start_time": None, "tags": _parse_ffmetadata(res.stdout)}


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a whole video into a uint8 array (N, H, W, 3); meant for tests and short clips."""
    gen = imageio_ffmpeg.read_frames(str(path), output_params=list(_fps_mode_args()))
    w, h = next(gen)["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
