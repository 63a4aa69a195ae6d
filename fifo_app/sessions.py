"""Per-browser-session scratch space: a temp folder, the Stop flag, and the last video (for Extend).

Disk use stays bounded: a session keeps only its latest video's files, a session's folder goes
when its page unloads, and `prune` removes folders idle for too long or beyond a size budget
(API clients never unload).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import RunSettings

from . import housekeeping


class StopFlag:
    """Set by the Stop button, read by a run between steps.

    It is a file as well as an event: on ZeroGPU the run's steps execute in a forked worker
    process, which sees files but not this process's memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._event = threading.Event()
        self.path.unlink(missing_ok=True)

    def set(self) -> None:
        """Ask the run to stop after its current step."""
        self._event.set()
        try:
            self.path.touch()
        except OSError:  # the folder went with its session; the event still stops this process's run
            pass

    def is_set(self) -> bool:
        """True once Stop was pressed (in this process or another)."""
        return self._event.is_set() or self.path.exists()


@dataclass
class VideoRecord:
    """A finished (or stopped) video that Extend can continue."""

    folder: Path
    chunks: list[Path]  # MPEG-TS chunks, in order: the video's encoded frames
    frames: int
    fps: int
    settings: RunSettings  # what reproduces it (frames = all frames so far)
    state_path: Path | None  # the FIFOState after its last frame
    mp4: Path
    reproducible: bool = True  # its settings remake it from scratch (not so when continued from an upload)
    drift: Any = None  # its per-second pixel statistics, kept open for Extend (fifo_app.driftview.LiveDrift)
    origin: str | None = None  # "picture" | "clip": it starts from a visitor's upload
    lead_frames: int = 0  # the upload's frames at its start, before the queue's first


@dataclass
class Session:
    """One browser tab (or API client)."""

    id: str
    folder: Path
    lock: threading.Lock = field(default_factory=threading.Lock)  # one run per session at a time
    stop: StopFlag | None = None  # the running job's flag
    steer: Any = None  # the running job's prompt changes (a `steer.Steering`), while one runs
    last: VideoRecord | None = None
    touched: float = field(default_factory=time.monotonic)
    dropped: bool = False  # its page went away; a job still running deletes the folder when it ends

    def new_folder(self, prefix: str) -> Path:
        """A fresh folder for one video's files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.folder))

    def keep_only(self, *keep: Path) -> None:
        """Delete the session's video folders except `keep` (older videos already went to the browser)."""
        keep_set = {Path(k).resolve() for k in keep}
        for p in self.folder.iterdir() if self.folder.exists() else ():
            if p.is_dir() and p.resolve() not in keep_set:
                shutil.rmtree(p, ignore_errors=True)


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class SessionStore:
    """All sessions of this server, each with a folder under `root`."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        # our own folder, locked for this process's life so that a later server can reclaim it after a kill
        self.root = Path(root) if root is not None else housekeeping.claim_scratch()
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Session:
        """The session for this id (created on first use); a missing id gets a private one-off session."""
        sid = _SAFE.sub("", session_id or "")[:64] or f"anon-{os.urandom(6).hex()}"
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                s = self._sessions[sid] = Session(sid, self.root / sid)
            s.touched = time.monotonic()
            return s

    def drop(self, session_id: str | None) -> None:
        """Forget a session and delete its files (its page was closed); a running job is stopped first."""
        sid = _SAFE.sub("", session_id or "")[:64]
        with self._lock:
            s = self._sessions.pop(sid, None)
        if s is not None:
            s.dropped = True
            if s.stop is not None:
                s.stop.set()
            if s.lock.acquire(timeout=0):  # a job still running cleans up after itself
                try:
                    shutil.rmtree(s.folder, ignore_errors=True)
                finally:
                    s.lock.release()

    def sessions(self) -> list[Session]:
        """A snapshot of the live sessions."""
        with self._lock:
            return list(self._sessions.values())

    def disk_bytes(self) -> int:
        """Bytes under the root."""
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        return total

    def prune(self, max_idle_s: float = 3600.0, max_bytes: int = 2 * 2**30) -> int:
        """Drop sessions idle longer than `max_idle_s`, then the least recently used ones while over `max_bytes`.

        Sessions with a run in progress are never touched. Returns how many were dropped.
        """
        now = time.monotonic()
        dropped = 0
        idle = sorted((s for s in self.sessions() if not s.lock.locked()), key=lambda s: s.touched)
        for s in idle:
            if now - s.touched > max_idle_s:
                self.drop(s.id)
                dropped += 1
        for s in idle:
            if s.id not in self._sessions:
                continue
            if self.disk_bytes() <= max_bytes:
                break
            self.drop(s.id)
            dropped += 1
        return dropped

    def close(self) -> None:
        """Delete everything (server shutdown)."""
        with self._lock:
            self._sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)
