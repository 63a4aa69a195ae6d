"""A visitor's own picture or clip, as the start of a run: checked, decoded and fitted on the host.

The upload is untrusted. It is refused, with a message that names what is wrong and what is
allowed (never a server path), when it is too large a file, of a type not taken, unreadable, has no
frames or too few to carry motion on, is too long, or declares more pixels than `MAX_PIXELS` (read
from its header, before anything is decoded: a small file can declare a huge picture).

What comes out is plain uint8 frames at the model's size (cover, centre-crop, as `python -m fifo
--init-image / --init-video` fits them): `shown` is what the player plays before the new frames,
`known` the tail the model needs (at most a queue's worth), which crosses into the GPU lease inside
`TrackSpec.known` and is encoded there by the backbone's own VAE.

Legend:
    N       frames of the upload          (N, H, W, 3) uint8, any size
    K       frames shown before the run    (K, height, width, 3) uint8, at the run's size
    L       the queue's length in latent frames (the most known latents the model can use)
    tc      the backbone's temporal compression (video frames per latent frame; 4 for Wan)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fifo.backbones.encoders import causal_count, fit_frames
from fifo.video import ChunkWriter

from .limits import MAX_UPLOAD_BYTES, MAX_UPLOAD_FRAMES, MAX_UPLOAD_PIXELS, MAX_UPLOAD_SECONDS
from .media import CHUNK_ENCODING
from .settings import InputError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CLIP_SUFFIXES = (".mp4", ".webm", ".mov")
ALLOWED = ", ".join(s[1:] for s in PICTURE_SUFFIXES + CLIP_SUFFIXES)


# Module names of the caps in limits.py, read at call time, so a deployment or a test can change them.
MAX_BYTES, MAX_PIXELS = MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS
MAX_CLIP_FRAMES, MAX_CLIP_SECONDS = MAX_UPLOAD_FRAMES, MAX_UPLOAD_SECONDS
FIT_BATCH = 16  # a clip is fitted a few frames at a time: full-size frames are never all held


@dataclass(frozen=True)
class Upload:
    """A checked upload at the run's size: the frames shown first, and the tail the model continues."""

    kind: str  # "image" | "video"
    shown: np.ndarray  # (K, height, width, 3) uint8: the picture, or the whole clip
    known: np.ndarray  # (M, height, width, 3) uint8: the last frames the model encodes (M <= K)
    fps: float | None  # the clip's own frame rate (None for a picture)

    @property
    def what(self) -> str:
        """'picture' or 'clip', for messages and metadata."""
        return "picture" if self.kind == "image" else "clip"


def kind_of(path: str | os.PathLike) -> str:
    """'image' or 'video' from the file's suffix; InputError for any other type."""
    suffix = Path(path).suffix.lower()
    if suffix in PICTURE_SUFFIXES:
        return "image"
    if suffix in CLIP_SUFFIXES:
        return "video"
    shown = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else "(unknown)"  # a file name is the visitor's text
    raise InputError(f"an uploaded file of type {shown!r} is not taken: upload a picture or clip ({ALLOWED})")


def _check_size(path: str | os.PathLike) -> None:
    try:
        size = os.stat(path).st_size
    except OSError:
        raise InputError("the uploaded file could not be read: upload it again") from None
    if size > MAX_BYTES:
        raise InputError(
            f"the uploaded file is {size / 2**20:.1f} MB, over this app's limit of {MAX_BYTES / 2**20:.0f} MB: "
            "upload a shorter clip or a smaller picture"
        )
    if size == 0:
        raise InputError("the uploaded file is empty: upload a picture or clip")


def _check_pixels(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise InputError(
            f"the uploaded {what} is {width}x{height} pixels; this app takes at most {MAX_PIXELS:,} pixels "
            "(e.g. 4096x4096): make it smaller"
        )


def read_picture(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """A picture file -> (1, height, width, 3) uint8, its declared size checked before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            _check_pixels(*im.size, "picture")
            im.seek(0)  # an animated WebP: its first frame
            rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, for sizes far past ours
        raise InputError(
            f"the uploaded picture declares more than {MAX_PIXELS:,} pixels, this app's limit: make it smaller"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError):
        raise InputError("the uploaded picture is not a readable image: upload a PNG, JPEG or WebP") from None
    return fit_frames(rgb[None], height, width)


def _clip_error(err: Exception) -> InputError:
    text = str(err)
    if "Video:" in text:  # ffmpeg found a video stream, but nothing in it to decode
        return InputError("the uploaded clip has no frames: upload a clip with at least 2 frames (MP4, WebM or MOV)")
    if "Audio:" in text:
        return InputError("the uploaded clip has sound but no picture: upload a video (MP4, WebM or MOV)")
    return InputError("the uploaded clip is not a readable video: upload an MP4, WebM or MOV")


def _checked_clip_header(meta: dict) -> tuple[int, int, float]:
    """A clip's width, height and seconds from ffmpeg's stream header, refused past the pixel or duration cap."""
    w, h = (int(v) for v in meta["size"])
    _check_pixels(w, h, "clip")
    duration = float(meta.get("duration") or 0.0)
    if duration > MAX_CLIP_SECONDS:
        raise InputError(
            f"the uploaded clip is {duration:.1f} s long; this app takes at most {MAX_CLIP_SECONDS:g} s "
            f"and {MAX_CLIP_FRAMES} frames: cut it shorter (its end is what the video continues)"
        )
    return w, h, duration


def read_clip(path: str | os.PathLike, height: int, width: int) -> tuple[np.ndarray, float]:
    """A clip file -> all its frames fitted to (K, height, width, 3) uint8, and its fps; caps checked as it is read."""
    import imageio_ffmpeg

    fitted: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(gen)
            w, h, _ = _checked_clip_header(meta)
            count = 0
            for b in gen:
                count += 1
                if count > MAX_CLIP_FRAMES:
                    raise InputError(
                        f"the uploaded clip has more than {MAX_CLIP_FRAMES} frames, this app's limit: "
                        "cut it shorter (its end is what the video continues)"
                    )
                batch.append(np.frombuffer(b, np.uint8).reshape(h, w, 3))
                if len(batch) == FIT_BATCH:
                    fitted.append(fit_frames(np.stack(batch), height, width))
                    batch = []
        finally:
            gen.close()  # ends ffmpeg at once when a cap is hit
    except InputError:
        raise
    except (RuntimeError, OSError, StopIteration, ValueError, KeyError, TypeError) as e:
        raise _clip_error(e) from None
    if batch:
        fitted.append(fit_frames(np.stack(batch), height, width))
    if not fitted:
        raise InputError("the uploaded clip has no frames: upload a clip with at least 2 frames (MP4, WebM or MOV)")
    return np.concatenate(fitted), float(meta.get("fps") or 0.0) or None


def read_upload(path: str | os.PathLike, height: int, width: int, queue_length: int, temporal_compression: int = 1) -> Upload:
    """Check and decode an uploaded picture or clip for a height x width run whose queue holds `queue_length` latents."""
    kind = kind_of(path)
    _check_size(path)
    tc = temporal_compression
    if kind == "image":
        shown = read_picture(path, height, width)
        return Upload("image", shown, shown, None)
    shown, fps = read_clip(path, height, width)
    need = 1 + tc  # two latent frames: a direction and a speed to carry on
    if len(shown) < need:
        raise InputError(
            f"the uploaded clip has {len(shown)} frame(s); this model needs at least {need} to carry its motion on: "
            "upload a longer clip, or a picture to start from"
        )
    keep = queue_length if tc == 1 else 1 + tc * (queue_length - 1)  # the most the queue can use
    n = min(len(shown), keep) if tc == 1 else causal_count(min(len(shown), keep), tc)
    return Upload("video", shown, np.ascontiguousarray(shown[len(shown) - n :]), fps)


def write_chunks(frames: np.ndarray, folder: Path, fps: int, chunk_seconds: float, prefix: str = "upload-") -> list[Path]:
    """The shown frames as MPEG-TS chunks encoded like the run's own, so the two join without re-encoding."""
    writer = ChunkWriter(folder, fps, chunk_seconds, prefix=prefix, **CHUNK_ENCODING)
    try:
        for f in frames:
            writer.write(f)
        writer.flush()
    except BaseException:
        writer.abort()
        raise
    return list(writer.chunks)


def origin_metadata(meta: dict[str, str], origin: str, lead_frames: int, reproducible: bool) -> dict[str, str]:
    """MP4 tags of a video that starts from an upload: the settings' JSON says so, and how many frames it brought."""
    note = (
        f"started from an uploaded {origin}: the first {lead_frames} frame(s) are that {origin}, fitted to the model's size; "
        + ("the settings remake only the new frames, from the prompt alone" if reproducible else "no settings remake it")
    )
    try:
        record = json.loads(meta.get("comment", "")) if reproducible else {}
    except ValueError:
        record = {}
    if not isinstance(record, dict) or not record:
        return {**meta, "comment": f"made by the fifo-video app, {note}"}
    record.update(init="video" if origin == "clip" else "image", init_frames=lead_frames, note=note)
    return {**meta, "comment": json.dumps(record)}


SHARE_NOTE = "makes a video from the prompt alone (a link cannot carry the uploaded {what})"  # what a run's link does


def describe(path: str | os.PathLike | None) -> str:
    """One line of Markdown on a chosen upload, from its header alone (nothing is decoded): what Generate will do, or why not."""
    if not path:
        return ""
    try:
        kind = kind_of(path)
        _check_size(path)
        if kind == "image":
            from PIL import Image

            try:
                with Image.open(path) as im:
                    w, h = im.size
            except Exception:  # noqa: BLE001  (any failure to read a header is the same answer for a visitor)
                raise InputError("the uploaded picture is not a readable image: upload a PNG, JPEG or WebP") from None
            _check_pixels(w, h, "picture")
            return f"A {w}x{h} picture: **Generate** starts the video from it, then adds **Length** new frames."
        import imageio_ffmpeg

        gen = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(gen)  # the stream's header: nothing decoded yet
        except Exception as e:  # noqa: BLE001
            raise _clip_error(e) from None
        finally:
            gen.close()
        w, h, secs = _checked_clip_header(meta)
        fps = float(meta.get("fps") or 0.0)
    except InputError as e:
        return f"⚠️ {e}"
    return (
        f"A {w}x{h} clip of {secs:.1f} s (about {round(secs * fps)} frames): **Generate** shows it, then continues it "
        "for **Length** new frames."
    )
