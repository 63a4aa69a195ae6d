"""Disk housekeeping for a server that runs for days: its own scratch folder, old ones, Gradio's cache.

- **Scratch folders.** `claim_scratch()` makes the server's folder (`fifo-app-<random>` under the
  system temp folder) with a lock file that the process holds for its whole life (`flock`: the
  kernel releases it when the process ends, however it ends, kill -9 included). `reclaim_stale()`
  deletes folders of the same prefix whose lock nobody holds: servers that were killed. A folder
  with a held lock belongs to a live server and is never touched; one without a lock file (written
  by an app without this module) is deleted only once nothing in it changed for `legacy_age_s`.
  Only plain folders owned by this user are considered, never links.
- **Gradio's cache** (`GRADIO_TEMP_DIR`, default `<temp>/gradio`) holds every upload and every file
  sent to a browser, one sub-folder per file. `trim_cache()` deletes entries unused for `max_age_s`,
  then the least recently used ones while the cache and the app's own folder together exceed the
  disk budget; entries younger than `min_age_s` (an upload about to be used, a video being served)
  stay.
- **Uploads.** The only upload the app takes is a saved state; `state_file_bytes()` is the size of
  one in closed form (the queue's float32 latents, the decoded frames not yet shown, the decoder's
  cache, pickling overhead) and `MAX_STATE_UPLOAD` the limit that follows for the app's largest
  settings.

What the app calls (three lines; pure Python, Gradio is not imported here):

    reclaimed = housekeeping.reclaim_stale()             # at start-up, before making its own folder
    root = housekeeping.claim_scratch()                  # then SessionStore(root=root)
    housekeeping.trim_cache(budget_bytes, others=[root]) # next to SessionStore.prune, e.g. each run

and `demo.launch(max_file_size=housekeeping.MAX_STATE_UPLOAD, ...)` instead of "512mb".
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "fifo-app-"
LOCK_NAME = ".owner.lock"
_held: list[int] = []  # descriptors of the locks this process holds (kept open for its lifetime)


def _is_own_dir(path: Path) -> bool:
    """A real folder (not a link) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def _lock_free(lock: Path) -> bool:
    """True when no process holds the lock file (its owner has ended); False when one does or it cannot be read."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own lock at once
    return True


def newest_mtime(path: Path) -> float:
    """The latest modification time of `path` and anything under it (not following links)."""
    newest = os.lstat(path).st_mtime
    for dirpath, dirnames, files in os.walk(path):
        for name in dirnames + files:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                pass
    return newest


def claim_scratch(base: str | os.PathLike | None = None, prefix: str = PREFIX) -> Path:
    """A fresh scratch folder under `base` (the system temp folder), locked by this process for its lifetime."""
    import fcntl

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a brand-new file: nobody else can hold it
    os.write(fd, f"{os.getpid()}\n".encode())  # for people; the lock is what counts
    _held.append(fd)
    return folder


def reclaim_stale(base: str | os.PathLike | None = None, prefix: str = PREFIX, legacy_age_s: float = 24 * 3600.0) -> list[Path]:
    """Delete the scratch folders of servers that have ended; the folders deleted.

    A folder counts as ended when its lock file is held by no process, or, lacking a lock file,
    when nothing in it changed for `legacy_age_s` seconds.
    """
    base = Path(base) if base is not None else Path(tempfile.gettempdir())
    if legacy_age_s < 0:
        raise ValueError(f"legacy_age_s={legacy_age_s!r}: must be >= 0")
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        if not p.name.startswith(prefix) or not _is_own_dir(p):
            continue
        lock = p / LOCK_NAME
        if os.path.lexists(lock):
            stale = _lock_free(lock)
        else:
            try:
                stale = now - newest_mtime(p) > legacy_age_s
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# -- Gradio's cache ----------------------------------------------------------------------------------


def gradio_cache_dir() -> Path:
    """Where Gradio keeps uploads and served files (its own default when GRADIO_TEMP_DIR is unset)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under `path` (a file: its size; missing: 0), not following links."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def trim_cache(
    budget_bytes: int,
    others: Sequence[str | os.PathLike] = (),
    cache: str | os.PathLike | None = None,
    max_age_s: float = 3600.0,
    min_age_s: float = 600.0,
) -> int:
    """Delete cache entries unused for `max_age_s`, then the oldest while cache + `others` exceed `budget_bytes`; bytes freed.

    An entry is a top-level item of the cache folder (Gradio makes one sub-folder per file); its
    age is the time since anything in it was last modified. Entries younger than `min_age_s` are
    kept whatever the budget says, so an upload is never deleted before the run that needs it.
    """
    for name, v in (("budget_bytes", budget_bytes), ("max_age_s", max_age_s), ("min_age_s", min_age_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name}={v!r}: must be a number >= 0")
    cache = Path(cache) if cache is not None else gradio_cache_dir()
    try:
        entries = [p for p in cache.iterdir() if _is_own_dir(p) or p.is_file()]
    except OSError:
        return 0
    now = time.time()
    aged = []
    for p in entries:
        try:
            aged.append((now - newest_mtime(p), tree_bytes(p), p))
        except OSError:
            pass
    aged.sort(key=lambda a: -a[0])  # oldest first
    used = sum(b for _, b, _ in aged) + sum(tree_bytes(o) for o in others)
    freed = 0
    for age, size, p in aged:
        if age < min_age_s:
            break
        if age > max_age_s or used > budget_bytes:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            used -= size
            freed += size
    return freed


# -- the upload limit a state file needs ---------------------------------------------------------------


def queue_slots(frames_per_window: int, partitions: int, lookahead: bool) -> int:
    """Latent frames in a FIFO queue: L = f * n main slots plus f // 2 context slots with lookahead."""
    for name, v in (("frames_per_window", frames_per_window), ("partitions", partitions)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a whole number >= 1")
    return frames_per_window * partitions + (frames_per_window // 2 if lookahead else 0)


def state_file_bytes(
    latent_channels: int,
    slots: int,
    latent_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    pending_frames: int,
    decoder_bytes: int = 0,
    overhead: int = 64 * 1024,
) -> int:
    """Upper bound of a saved FIFOState's size: float32 queue (C, slots, lh, lw), uint8 pending frames, the rest."""
    lh, lw = latent_hw
    h, w = frame_hw
    return 4 * latent_channels * slots * lh * lw + 3 * h * w * pending_frames + decoder_bytes + overhead


# The app's largest settings per backbone family: (latent channels, pixels per latent side, largest
# frames per window, largest frames per latent). 8 partitions with lookahead and MAX_PIXELS as in
# `fifo_app.settings` (tests/test_housekeeping.py checks these against the code they mirror).
FAMILIES = {"toy": (3, 4, 16, 1), "unet3d": (4, 8, 24, 1), "wan": (16, 8, 25, 4)}
MAX_PARTITIONS = 8
MAX_PIXELS = 1280 * 720
TOY_MAX_PIXELS = 512 * 512


def upload_limit(decoder_bytes: int = 0) -> int:
    """The largest state file the app can write: any family at its largest settings, plus `decoder_bytes` of decoder cache."""
    sizes = []
    for name, (channels, down, f, per_latent) in FAMILIES.items():
        pixels = TOY_MAX_PIXELS if name == "toy" else MAX_PIXELS
        sizes.append(state_file_bytes(channels, queue_slots(f, MAX_PARTITIONS, True), (pixels // down**2, 1),
                                      (pixels, 1), pending_frames=per_latent, decoder_bytes=decoder_bytes))
    return max(sizes)


# Without a causal VAE's cache: the toy and UNet3D states fit with room to spare. A Wan state also
# carries its decoder's cache, which depends on the VAE: measure it (`len` of the saved
# `decoder_state`) and pass it to `upload_limit`.
MAX_STATE_UPLOAD = upload_limit()
