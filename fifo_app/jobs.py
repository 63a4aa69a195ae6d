"""Runs: the GPU side (`lease`: steps the FIFO queue, yields frames and queue snapshots) and the host
side (`run_job`: plans leases, writes chunks, keeps time, assembles the MP4, saves the state).

Off ZeroGPU a run is one lease with no time limit, called directly. On ZeroGPU each lease is a
`@spaces.GPU` call with a duration computed from the work left; the lease watches its own clock
and ends early with the queue state on CPU, and the host starts another lease to continue. Only
numpy frames and CPU tensors ever leave a lease, so nothing on the GPU outlives it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fifo import FIFOState, FIFOStream
from fifo.video import ChunkWriter

from . import media
from .estimate import LEASE_OVERHEAD_S, RateBook, next_lease, work_for
from .models import MANAGER, LoadError
from .sessions import StopFlag, VideoRecord
from .settings import RunSettings

log = logging.getLogger("fifo_app")

CHUNK_SECONDS = 1.0  # each streamed piece of video; HLS wants a second or more
END_MARGIN_S = 3.0  # a lease keeps this much of its budget for handing back its state


class RunError(RuntimeError):
    """A run could not go on; the message says what to change. What was made is kept."""


# -- what crosses a lease boundary (picklable: numpy arrays and CPU tensors only) ----------------


@dataclass
class TrackSpec:
    """One video to make in a lease: its settings, and the queue state to continue from."""

    label: str
    settings: RunSettings
    state: FIFOState | None = None


@dataclass
class LeaseWork:
    """Everything a lease needs; crosses into the GPU worker, so it holds no model and no CUDA tensor."""

    tracks: list[TrackSpec]
    frames: list[int]  # frames still wanted per track; the lease may make fewer
    budget_s: float | None  # wall-clock seconds this lease may run; None: no limit
    duration_s: int  # asked of ZeroGPU (read by `lease_duration`)
    stop_file: str
    preview_every_s: float = 1.0  # the queue picture: often enough to watch, rarely enough to stay cheap


@dataclass
class QueueSnapshot:
    """What the queue holds after a step: cheap previews and each slot's timestep, head first."""

    preview: np.ndarray  # (S, lh, lw, 3) uint8
    timesteps: np.ndarray  # (S,) float
    context: int
    frames_per_window: int
    step: int
    warming_up: bool


@dataclass
class StepEvent:
    """One queue step of one track."""

    track: int
    step: int
    frames_emitted: int
    warming_up: bool
    warmup_steps: int
    step_s: float
    windows: int
    frames: np.ndarray | None  # (N, H, W, 3) uint8 decoded at this step
    queue: QueueSnapshot | None


@dataclass
class LeaseEnd:
    """The lease is over: the queue states (on CPU) and why it ended: 'done', 'stopped' or 'budget'."""

    states: list[FIFOState]
    reason: str


@dataclass
class LeaseFailure:
    """The lease failed: 'oom', 'input' or 'error', with a message for the user."""

    kind: str
    message: str


LeaseEvent = StepEvent | LeaseEnd | LeaseFailure


def lease_duration(work: LeaseWork) -> int:
    """Seconds to ask ZeroGPU for (the `duration=` callable of `@spaces.GPU`)."""
    return int(work.duration_s)


def cpu_copy(x: Any) -> Any:
    """`x` with every tensor inside (dicts, lists, dataclass states) moved to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, FIFOState):
        return replace(x, queue=cpu_copy(x.queue), decoder_state=cpu_copy(x.decoder_state), pending=cpu_copy(x.pending))
    if isinstance(x, dict):
        return {k: cpu_copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(cpu_copy(v) for v in x)
    return x


def _stopped(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:
        return False


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def make_stream(spec: TrackSpec) -> FIFOStream:
    """The FIFO stream a track describes (its backbone must be loaded: a lease never loads models)."""
    s = spec.settings
    bb = MANAGER.get(s.backbone)
    seed = None if spec.state is not None else s.seed
    return FIFOStream(bb, s.prompt, s.config(), seed, s.negative_prompt, s.height, s.width, spec.state)


def lease(work: LeaseWork) -> Iterator[LeaseEvent]:
    """Step every track's queue until its frames are made, Stop is pressed, or the budget runs low."""
    start = time.monotonic()
    streams: list[FIFOStream] = []
    try:
        streams = [make_stream(t) for t in work.tracks]
        made = [0] * len(streams)
        first_step = [t.state is None for t in work.tracks]  # the first step also runs the warm start
        last_view = [-math.inf] * len(streams)
        recent: deque[float] = deque(maxlen=8)  # seconds of the latest steps (all tracks together)
        reason = "done"
        while True:
            active = [i for i, s in enumerate(streams) if made[i] < work.frames[i]]
            if not active:
                break
            if _stopped(work.stop_file):
                reason = "stopped"
                break
            if work.budget_s is not None and recent and time.monotonic() - start + 2 * max(recent) + END_MARGIN_S > work.budget_s:
                reason = "budget"  # the next step might not fit: hand the state back while there is time
                break
            round_s = 0.0
            for i in active:
                stream, info = streams[i], {}
                t0 = time.monotonic()
                out = list(stream.frames(work.frames[i] - made[i], lambda d, info=info: info.update(d) or True))  # True: one step
                dt = time.monotonic() - t0
                round_s += 0 if first_step[i] else dt
                made[i] += len(out)
                cfg = stream.config
                view = None
                now = time.monotonic()
                if info and now - last_view[i] >= work.preview_every_s:
                    last_view[i] = now
                    view = QueueSnapshot(
                        preview=np.asarray(info["preview"]()),
                        timesteps=info["timesteps"].detach().float().cpu().numpy(),
                        context=cfg.context,
                        frames_per_window=cfg.frames_per_window,
                        step=info["step"],
                        warming_up=info["warming_up"],
                    )
                yield StepEvent(
                    track=i,
                    step=stream.step_index,
                    frames_emitted=stream.frames_emitted,
                    warming_up=stream.step_index <= cfg.warmup_frames,
                    warmup_steps=cfg.warmup_frames,
                    step_s=dt,
                    windows=len(cfg.windows) if not first_step[i] else 0,  # 0: this step's time includes the warm start
                    frames=np.stack(out) if out else None,
                    queue=view,
                )
                first_step[i] = False
            if round_s:
                recent.append(round_s)
        yield LeaseEnd([cpu_copy(s.state()) for s in streams], reason)
    except Exception as e:  # reported as data: an exception from a ZeroGPU worker loses its message
        if _is_oom(e):
            yield LeaseFailure("oom", "the GPU ran out of memory")
        elif isinstance(e, (ValueError, LoadError)):
            yield LeaseFailure("input", str(e))
        else:
            log.exception("a lease failed")
            yield LeaseFailure("error", f"{type(e).__name__}: {e}")
    finally:
        streams.clear()
        MANAGER.free_memory()


# -- the host side --------------------------------------------------------------------------------


@dataclass
class Result:
    """A finished (or stopped) run's files and facts."""

    mp4: Path
    frames: int  # frames in the MP4
    new_frames: int  # frames made by this run
    settings: RunSettings | None  # reproduces the MP4; None when it cannot (continued from an upload)
    state_path: Path | None
    stopped: bool
    seconds: float
    leases: int
    timings: list[dict[str, Any]]  # per track: label, seconds per frame
    chunks: list[Path] = field(default_factory=list)  # the MP4's chunks, in order (what Extend builds on)


@dataclass
class Update:
    """What the UI shows at one moment of a run."""

    phase: str  # warming up | generating | finishing | done | stopped
    frames_done: int  # made by this run
    frames_total: int  # asked of this run
    warmup_done: int = 0
    warmup_total: int = 0
    seconds_per_frame: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    leases: int = 0
    chunk: Path | None = None  # a new MPEG-TS piece for a streaming player
    preview_mp4: Path | None = None  # the whole video so far, for a plain player
    queue: QueueSnapshot | None = None
    result: Result | None = None
    note: str = ""
    base_frames: int = 0  # frames of the video this run continues (Extend)

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable progress an API client sees."""
        d = {
            "phase": self.phase,
            "frames_done": self.frames_done,
            "video_frames": self.base_frames + self.frames_done,
            "frames_total": self.frames_total,
            "warmup_steps_done": self.warmup_done,
            "warmup_steps_total": self.warmup_total,
            "seconds_per_frame": None if self.seconds_per_frame is None else round(self.seconds_per_frame, 4),
            "eta_seconds": None if self.eta_s is None else round(self.eta_s, 1),
            "elapsed_seconds": round(self.elapsed_s, 2),
            "gpu_leases": self.leases,
        }
        if self.result is not None:
            r = self.result
            d.update(
                frames_in_video=r.frames,
                stopped=r.stopped,
                seed=r.settings.seed if r.settings else None,
                share_query=r.settings.to_query() if r.settings else None,
                timings=r.timings,
            )
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class Job:
    """One request: make `frames` more frames of each track (two tracks: a side-by-side comparison)."""

    tracks: list[TrackSpec]
    frames: int
    fps: int
    folder: Path
    name: str  # file name stem of the MP4 and state
    result_settings: Callable[[int], RunSettings | None]  # frames made -> settings that reproduce the MP4
    base: VideoRecord | None = None  # the video this one continues (its frames come first)
    progressive_mp4: bool = False  # also write growing MP4s (for players that cannot stream)
    save_state: bool = True
    labels: list[str] = field(default_factory=list)
    chunk_prefix: str = "chunk-"  # an extension writes into its base's folder, under a new prefix


class _Clock:
    """Seconds per frame over the last few seconds, and an ETA."""

    def __init__(self) -> None:
        self.marks: deque[tuple[float, int]] = deque()

    def mark(self, t: float, frames: int) -> None:
        self.marks.append((t, frames))
        while len(self.marks) > 2 and t - self.marks[0][0] > 8.0:
            self.marks.popleft()

    def seconds_per_frame(self) -> float | None:
        if len(self.marks) < 2 or self.marks[-1][1] == self.marks[0][1]:
            return None
        (t0, f0), (t1, f1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (f1 - f0)


def run_job(
    job: Job,
    lease_fn: Callable[[LeaseWork], Iterator[LeaseEvent]],
    stop: StopFlag,
    rates: RateBook,
    lease_limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    update_every_s: float = 0.4,
) -> Iterator[Update]:
    """Make the job's frames, yielding Updates; the last one carries the Result.

    Raises RunError (after yielding a Result for whatever was made) when a lease fails.
    `lease_limit_s` is ZeroGPU's longest lease; None runs everything in one unlimited lease.
    """
    t_start = clock()
    n_tracks = len(job.tracks)
    specs = [TrackSpec(t.label, t.settings, t.state) for t in job.tracks]
    backbone = specs[0].settings.backbone
    bb = MANAGER.get(backbone)
    cfg = specs[0].settings.config().resolve(bb)
    s0 = specs[0].settings.resolved()
    lh, lw = bb.latent_size(s0.height, s0.width)
    fresh = specs[0].state is None
    work = work_for(cfg, job.frames, bb.temporal_compression, fresh)

    writer = ChunkWriter(job.folder, job.fps, CHUNK_SECONDS, crf=18, preset="veryfast", prefix=job.chunk_prefix)
    base_chunks = list(job.base.chunks) if job.base else []
    base_frames = job.base.frames if job.base else 0
    made = [0] * n_tracks  # frames received per track
    pending: list[list[np.ndarray]] = [[] for _ in range(n_tracks)]  # compare: frames waiting for their pair
    written = 0
    warm_done, warm_total = 0, work.warmup_steps
    model_s, model_windows = 0.0, 0
    leases = 0
    stopped = False
    failure: LeaseFailure | None = None
    tick = _Clock()
    last_update = -math.inf
    last_queue: QueueSnapshot | None = None
    previews: list[Path] = []
    chunks_at_preview = 0

    def update(phase: str, chunk: Path | None = None, force: bool = False) -> Update | None:
        nonlocal last_update, last_queue
        now = clock()
        if not force and chunk is None and now - last_update < update_every_s:
            return None
        last_update = now
        spf = tick.seconds_per_frame()
        left = job.frames - written
        if spf is None:
            est = rates.estimate(backbone, lh * lw, cfg, work, n_tracks)
            spf_eta = est.seconds_per_frame
            warm_left = est.warmup_seconds * (1 - warm_done / warm_total) if warm_total else 0.0
        else:
            spf_eta, warm_left = spf, 0.0
        preview = None
        if job.progressive_mp4 and chunk is not None:
            preview = _progressive(chunk_list_len=len(writer.chunks))
        q, last_queue = last_queue, None
        return Update(
            phase=phase,
            frames_done=written,
            frames_total=job.frames,
            warmup_done=warm_done,
            warmup_total=warm_total,
            seconds_per_frame=spf,
            eta_s=max(0.0, left * spf_eta + warm_left),
            elapsed_s=now - t_start,
            leases=leases,
            chunk=None if job.progressive_mp4 else chunk,
            preview_mp4=preview,
            queue=q,
            base_frames=base_frames,
        )

    def _progressive(chunk_list_len: int) -> Path | None:
        # a growing MP4 costs its whole length per refresh, so refresh at a geometric pace
        nonlocal chunks_at_preview
        if chunk_list_len - chunks_at_preview < max(1, chunks_at_preview // 4):
            return None
        chunks_at_preview = chunk_list_len
        out = media.join_chunks(base_chunks + writer.chunks, job.folder / f"preview-{chunk_list_len:05d}.mp4")
        previews.append(out)
        while len(previews) > 2:  # the player has fetched the older ones by now
            previews.pop(0).unlink(missing_ok=True)
        return out

    def write(frame: np.ndarray) -> Path | None:
        nonlocal written
        written += 1
        tick.mark(clock(), written)
        return writer.write(frame)

    try:
        first = Update("warming up" if fresh else "generating", 0, job.frames, 0, warm_total, base_frames=base_frames)
        if job.base is not None and not job.progressive_mp4:
            first.chunk = media.join_chunks(base_chunks, job.folder / "base.ts", container="ts")  # the old video, in one piece
        yield first
        while any(m < job.frames for m in made) and not stopped:
            if stop.is_set():
                stopped = True
                break
            wanted = [job.frames - m for m in made]
            budget, duration = None, 0
            if lease_limit_s is not None:  # ZeroGPU: a lease of at most lease_limit_s, sized from the work left
                left = max(wanted)
                w = work_for(cfg, left, bb.temporal_compression, specs[0].state is None)
                n, duration = next_lease(rates.estimate(backbone, lh * lw, cfg, w, n_tracks), left, lease_limit_s, END_MARGIN_S)
                wanted = [min(x, n) for x in wanted]
                budget = duration - LEASE_OVERHEAD_S
            lw_ = LeaseWork([replace(s) for s in specs], wanted, budget, duration, str(stop.path))
            progressed = False
            events = lease_fn(lw_)
            try:
                for ev in events:
                    if isinstance(ev, StepEvent):
                        progressed = True
                        if ev.windows:
                            model_s += ev.step_s
                            model_windows += ev.windows
                        if ev.track == 0:
                            warm_done = min(warm_total, ev.step) if fresh else 0
                        if ev.queue is not None and ev.track == 0:
                            last_queue = ev.queue
                        chunk = None
                        if ev.frames is not None:
                            made[ev.track] += len(ev.frames)
                            if n_tracks == 1:
                                for f in ev.frames:
                                    chunk = write(f) or chunk
                            else:
                                pending[ev.track].extend(ev.frames)
                                while all(pending):
                                    pair = [p.pop(0) for p in pending]
                                    chunk = write(media.side_by_side(pair, job.labels)) or chunk
                        phase = "warming up" if ev.warming_up and written == 0 else "generating"
                        u = update(phase, chunk)
                        if u is not None:
                            yield u
                    elif isinstance(ev, LeaseEnd):
                        for i, st in enumerate(ev.states):
                            specs[i].state = st
                        stopped = ev.reason == "stopped"
                    elif isinstance(ev, LeaseFailure):
                        failure = ev
                        break
            except Exception as e:  # noqa: BLE001  (ZeroGPU refuses or aborts a lease: quota, queue timeout, duration)
                text = str(e) or type(e).__name__
                log.warning("a GPU lease failed: %s", text)
                failure = LeaseFailure("quota" if "quota" in text.lower() or "zerogpu" in text.lower() else "error", text)
            finally:
                close = getattr(events, "close", None)
                if close is not None:  # a cancelled run ends its lease now, freeing the GPU
                    close()
            leases += 1
            if failure is not None:
                break
            if not progressed and not stopped:
                failure = LeaseFailure(
                    "error", "a GPU lease ended before the first step; its time limit is too short for this model"
                )
                break

        # the end: whatever was made becomes a complete MP4
        if model_windows:
            rates.record(backbone, lh * lw, cfg.frames_per_window, model_s / model_windows)
        last = writer.flush()
        if last is not None and not job.progressive_mp4:
            u = update("finishing", last, force=True)
            yield u
        total = base_frames + written
        if written == 0 and job.base is None:
            if failure is not None:
                raise RunError(_failure_message(failure, job, 0))
            raise RunError("stopped before the first frame: nothing was made")
        elapsed = clock() - t_start
        if written:
            rates.record_overhead(backbone, max(0.0, (elapsed - model_s) / written / n_tracks))
        settings_out = job.result_settings(total)
        meta = (
            settings_out.metadata()
            if settings_out is not None
            else {"comment": "made by the fifo-video app, continued from an uploaded state"}
        )
        mp4 = media.join_chunks(base_chunks + writer.chunks, job.folder / f"{job.name}.mp4", meta)
        for p in previews:
            p.unlink(missing_ok=True)
        state_path = None
        if job.save_state and n_tracks == 1 and specs[0].state is not None:
            state_path = job.folder / f"{job.name}-state.pt"
            specs[0].state.save(state_path)
        timings = [{"label": t.label, "seconds_per_frame": round(elapsed / max(written, 1) / n_tracks, 4)} for t in specs]
        result = Result(
            mp4, total, written, settings_out, state_path, stopped, elapsed, leases, timings, base_chunks + writer.chunks
        )
        phase = "stopped" if stopped else "done"
        yield Update(
            phase,
            written,
            job.frames,
            warm_done,
            warm_total,
            tick.seconds_per_frame(),
            0.0,
            elapsed,
            leases,
            preview_mp4=mp4 if job.progressive_mp4 else None,
            result=result,
            base_frames=base_frames,
        )
        if failure is not None:
            raise RunError(_failure_message(failure, job, written))
    except BaseException:
        writer.abort()
        raise


def _failure_message(f: LeaseFailure, job: Job, written: int) -> str:
    kept = f" The {written} frames made so far are kept: download them, or press Extend later." if written else ""
    if f.kind == "oom":
        return f"The GPU ran out of memory.{kept} Ask for a smaller size, fewer partitions, or lookahead off."
    if f.kind == "quota":
        return f"The GPU time ran out ({f.message}).{kept} Ask for fewer frames, or try again later."
    if f.kind == "input":
        return f.message
    return f"The run failed: {f.message}.{kept}"
