"""Video files the app hands out, built from the MPEG-TS chunks a run writes.

A run encodes each frame once, into chunks of about a second (`fifo.video.ChunkWriter`, no
B-frames, so chunks join exactly). Every MP4 the app offers is those chunks joined without
re-encoding (ffmpeg's concat demuxer, `-c copy`): the growing preview, the final download with
its metadata, and an extended video (the old chunks, then the new ones: old frames bit-identical).
Each file is written under a temporary name and renamed into place, never seen half-written.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fifo.video import VideoError, check_metadata, mp4_movflags, write_ffmetadata_file

# Every chunk of one video is encoded alike (a run's, an extension's, an upload's shown first), so
# that the concat demuxer joins them with `-c copy`.
CHUNK_ENCODING = {"crf": 18, "preset": "veryfast"}


def _list_file(chunks: Sequence[Path], folder: Path) -> Path:
    lst = folder / f".concat-{os.getpid()}-{id(chunks)}.txt"
    # the concat demuxer's own quoting: a single quote closes, is escaped, and reopens
    lst.write_text("".join("file '" + str(Path(c).resolve()).replace("'", "'\\''") + "'\n" for c in chunks))
    return lst


def join_chunks(chunks: Sequence[Path], out: Path, metadata: dict[str, str] | None = None, container: str = "mp4") -> Path:
    """Join MPEG-TS chunks into one MP4 (or TS) at `out`, without re-encoding; atomic."""
    if not chunks:
        raise VideoError(f"{out}: no frames to write")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.part")
    lst = _list_file(chunks, out.parent)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(lst)]
    meta_file = None
    if metadata:  # a side file, never argv: a long prompt schedule would overflow the command line
        meta_file = write_ffmetadata_file(check_metadata(metadata))
        cmd += ["-f", "ffmetadata", "-i", str(meta_file), "-map_metadata", "1"]
    cmd += ["-map", "0:v:0", "-c", "copy"]
    cmd += ["-movflags", mp4_movflags(metadata or {}), "-f", "mp4"] if container == "mp4" else ["-f", "mpegts", "-muxdelay", "0", "-muxpreload", "0"]
    try:
        res = subprocess.run(cmd + [str(tmp)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise VideoError(f"joining {len(chunks)} chunks into {out.name} failed: {res.stderr[-800:].strip()}")
        os.replace(tmp, out)
    finally:
        lst.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        if meta_file is not None:
            meta_file.unlink(missing_ok=True)
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def label_bar(width: int, text: str, height: int = 20) -> np.ndarray:
    """A dark bar with centred text, uint8 (height, width, 3)."""
    img = Image.new("RGB", (width, height), (17, 24, 39))
    draw = ImageDraw.Draw(img)
    font = _font(max(9, height - 8))
    while font.getlength(text) > width - 6 and len(text) > 4:  # clip, not overflow, on small frames
        text = text[:-2].rstrip() + "…"
    draw.text((width // 2, height // 2), text, fill=(229, 231, 235), font=font, anchor="mm")
    return np.asarray(img)


def side_by_side(frames: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4) -> np.ndarray:
    """Frames of equal height next to each other, each under a label bar; uint8 (H + bar, W..., 3)."""
    h = frames[0].shape[0]
    bar_h = 20 if h >= 200 else 14
    cols = []
    for i, (f, text) in enumerate(zip(frames, labels)):
        col = np.concatenate([label_bar(f.shape[1], text, bar_h), f])
        cols.append(col)
        if i < len(frames) - 1:
            cols.append(np.full((h + bar_h, gap, 3), 17, np.uint8))
    return np.ascontiguousarray(np.concatenate(cols, axis=1))
