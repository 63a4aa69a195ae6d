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

from fifo import FIFOState, FIFOStream, PromptSchedule
from fifo.backbones.encoders import known_latents
from fifo.engine import Step
from fifo.parallel import PipelinedFIFOStream
from fifo.video import ChunkWriter

from . import driftview, media, zerogpu
from .estimate import LEASE_OVERHEAD_S, RateBook, next_lease, work_for
from .models import MANAGER, LoadError
from .sessions import StopFlag, VideoRecord
from .settings import RunSettings
from .steer import PromptChange, Steerer, Steering, SteerWork
from .uploads import SHARE_NOTE, origin_metadata

log = logging.getLogger("fifo_app")

CHUNK_SECONDS = 1.0  # each streamed piece of video; HLS wants a second or more
END_MARGIN_S = 3.0
MIN_FRAMES_FOR_OVERHEAD = 12  # runs shorter than this leave the per-frame overhead estimate alone  # a lease keeps this much of its budget for handing back its state


class RunError(RuntimeError):
    """A run could not go on; the message says what to change. What was made is kept."""


# -- what crosses a lease boundary (picklable: numpy arrays and CPU tensors only) ----------------


@dataclass
class TrackSpec:
    """One video to make in a lease: its settings, and the queue state to continue from."""

    label: str
    settings: RunSettings
    state: FIFOState | None = None
    known: np.ndarray | None = None  # (N, H, W, 3) uint8 at the run's size: the upload's frames to continue (a new run only)


@dataclass
class LeaseWork:
    """Everything a lease needs; crosses into the GPU worker, so it holds no model and no CUDA tensor."""

    tracks: list[TrackSpec]
    frames: list[int]  # frames still wanted per track; the lease may make fewer
    budget_s: float | None  # wall-clock seconds this lease may run; None: no limit
    duration_s: int  # asked of ZeroGPU (read by `lease_duration`)
    stop_file: str
    preview_every_s: float = 1.0  # the queue picture: often enough to watch, rarely enough to stay cheap
    steer: SteerWork | None = None  # prompt changes sent while the run streams (one-track runs)


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
    prompt_changes: tuple[PromptChange, ...] = ()  # requests taken (or refused) after this step, before the next


@dataclass
class LeaseEnd:
    """The lease is over: the queue states (on CPU) and why it ended: 'done', 'stopped' or 'budget'."""

    states: list[FIFOState | None]  # None: stopped before its warm start was done
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
    """The FIFO stream a track describes (its backbone must be loaded: a lease never loads models).

    A pipelined stream: on a GPU the decode of one step runs while the next denoises (the same
    frames as the plain stream)."""
    s = spec.settings
    bb = MANAGER.get(s.backbone)
    seed = None if spec.state is not None else s.seed
    known = None
    if spec.known is not None and spec.state is None:  # encoded here, where the model is (another process on ZeroGPU)
        r = s.resolved()
        known = known_latents(bb, spec.known, r.height, r.width, max_latents=s.config().resolve(bb).queue_length)
    return PipelinedFIFOStream(bb, s.prompt, s.config(), seed, s.negative_prompt, s.height, s.width, spec.state, known=known)


def _snapshot(stream: FIFOStream) -> QueueSnapshot:
    cfg = stream.config
    return QueueSnapshot(
        preview=stream.preview(),
        timesteps=stream.slot_timesteps.detach().float().cpu().numpy(),
        context=cfg.context,
        frames_per_window=cfg.frames_per_window,
        step=stream.step_index,
        warming_up=stream.warming_up,
    )


def _event(i: int, stream: FIFOStream, st: Step, view: QueueSnapshot | None) -> StepEvent:
    cfg = stream.config
    return StepEvent(
        track=i,
        step=st.index,
        frames_emitted=st.frames_emitted,
        warming_up=st.warming_up,
        warmup_steps=cfg.warmup_steps,
        step_s=st.seconds,
        windows=len(cfg.windows) if st.stepped and not st.warm_start else 0,  # 0: not one typical step's time
        frames=st.frames if len(st.frames) else None,
        queue=view,
    )


def _out_of_time(work: LeaseWork, start: float, recent: deque[float]) -> bool:
    """The next round of steps might not fit the lease: hand the state back while there is time."""
    return (
        work.budget_s is not None and bool(recent) and time.monotonic() - start + 2 * max(recent) + END_MARGIN_S > work.budget_s
    )


def _step_tracks(work: LeaseWork, streams: list[FIFOStream], steps: list[Iterator[Step]]) -> Iterator[StepEvent]:
    """Step the tracks in turn, one pass each per round; returns why it ended ('done', 'stopped', 'budget')."""
    start = time.monotonic()
    live = list(range(len(streams)))
    last_view = [-math.inf] * len(streams)
    recent: deque[float] = deque(maxlen=8)  # seconds of the latest rounds (all tracks together)
    steerer = Steerer(work.steer) if work.steer is not None else None
    while live:
        if _stopped(work.stop_file):
            return "stopped"
        if _out_of_time(work, start, recent):
            return "budget"
        round_s = 0.0
        for i in list(live):
            st = next(steps[i], None)
            if st is None:
                live.remove(i)
                continue
            round_s += 0.0 if st.warm_start else st.seconds
            view = None
            if st.stepped and time.monotonic() - last_view[i] >= work.preview_every_s:
                last_view[i] = time.monotonic()
                view = _snapshot(streams[i])
            ev = _event(i, streams[i], st, view)
            if steerer is not None and i == 0:  # between two steps of the stream, on its own thread
                ev.prompt_changes = steerer.poll(streams[0])
            yield ev
        if round_s:
            recent.append(round_s)
    return "done"


def _failure(e: Exception) -> LeaseFailure:
    if _is_oom(e):
        return LeaseFailure("oom", "the GPU ran out of memory")
    if isinstance(e, (ValueError, LoadError)):
        return LeaseFailure("input", str(e))
    log.exception("a lease failed")
    return LeaseFailure("error", f"{type(e).__name__}: {e}")


def lease(work: LeaseWork) -> Iterator[LeaseEvent]:
    """Step every track's queue until its frames are made, Stop is pressed, or the budget runs low."""
    streams: list[FIFOStream] = []
    steps: list[Iterator[Step]] = []
    try:
        streams = [make_stream(t) for t in work.tracks]
        stop = lambda: _stopped(work.stop_file)  # also read between the warm start's model calls
        steps = [s.steps(n, interrupt=stop) for s, n in zip(streams, work.frames)]
        wanted = [s.frames_emitted + n for s, n in zip(streams, work.frames)]
        reason = yield from _step_tracks(work, streams, steps)
        for it in reversed(steps):  # decodes in flight join the pending frames: the states are exact
            it.close()
        for i, s in enumerate(streams):  # frames decoded by the end are part of this lease's video
            rest = s.hand_out(wanted[i] - s.frames_emitted)
            if len(rest):
                yield StepEvent(i, s.step_index, s.frames_emitted, s.warming_up, s.config.warmup_steps, 0.0, 0, rest, None)
        if reason == "done" and stop():
            reason = "stopped"  # Stop during a warm start ends its stream early
        # a stream stopped before its warm start ended has nothing to continue from
        yield LeaseEnd([cpu_copy(s.state()) if s.queue is not None else None for s in streams], reason)
    except Exception as e:  # noqa: BLE001  (reported as data: an exception from a ZeroGPU worker loses its message)
        yield _failure(e)
    finally:
        for it in reversed(steps):
            it.close()
        streams.clear()
        MANAGER.free_memory()


# ZeroGPU's decorator sits on the lease itself (a no-op off ZeroGPU); a CPU model's runs call `lease`.
gpu_lease = zerogpu.GPU(duration=lease_duration)(lease)


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
    drift: driftview.LiveDrift | None = None  # per-second pixel statistics of the whole video (None: a comparison)
    origin: str | None = None  # "picture" | "clip": the video starts from an upload
    link: RunSettings | None = None  # what a share link carries: `settings` less the entries no window read

    def __post_init__(self) -> None:
        if self.link is None:
            self.link = self.settings


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
    drift_plot: Any = None  # the drift plot's table when it gained a second (driftview.plot_table); None: unchanged

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
                share_query=r.link.to_query() if r.link else None,
                timings=r.timings,
            )
            if r.drift is not None:
                d["pixel_stats"] = r.drift.details()
        if self.result is not None and self.result.origin:
            d.update(started_from=f"an uploaded {self.result.origin}", share_note=SHARE_NOTE.format(what=self.result.origin))
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
    name: str | Callable[[int], str]  # file name stem of the MP4 and state, or frames it holds -> the stem
    result_settings: Callable[[int], RunSettings | None]  # frames made -> settings that reproduce the MP4
    base: VideoRecord | None = None  # the video this one continues (its frames come first)
    progressive_mp4: bool = False  # also write growing MP4s (for players that cannot stream)
    save_state: bool = True
    labels: list[str] = field(default_factory=list)
    chunk_prefix: str = "chunk-"  # an extension writes into its base's folder, under a new prefix
    steer: Steering | None = None  # prompt changes while it streams (one-track runs)
    origin: str | None = None  # "picture" | "clip": the video starts from an upload (its frames are `base`'s first)
    lead_frames: int = 0  # frames before the queue's first (the upload's), which the prompt schedule does not count


class _Clock:
    """Seconds per frame over the last few seconds (a window, so early or stale rates fade)."""

    def __init__(self) -> None:
        self.marks: deque[tuple[float, int]] = deque()

    def mark(self, t: float, frames: int) -> None:
        self.marks.append((t, frames))
        while len(self.marks) > 2 and t - self.marks[0][0] > 8.0:
            self.marks.popleft()

    MIN_SPAN_S, MIN_FRAMES = 1.0, 4  # a burst of frames decoded together says nothing about the rate

    def seconds_per_frame(self) -> float | None:
        """The measured rate, or None until the window spans at least a second and a few frames."""
        if len(self.marks) < 2:
            return None
        (t0, f0), (t1, f1) = self.marks[0], self.marks[-1]
        if t1 - t0 < self.MIN_SPAN_S or f1 - f0 < self.MIN_FRAMES:
            return None
        return (t1 - t0) / (f1 - f0)


class _Output:
    """The run's video on disk: frames into chunks (pairs side by side for a comparison), growing
    previews for players that cannot stream, and the final MP4 of the base video's chunks and these."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.writer = ChunkWriter(job.folder, job.fps, CHUNK_SECONDS, prefix=job.chunk_prefix, **media.CHUNK_ENCODING)
        self.base_chunks = list(job.base.chunks) if job.base else []
        self.pending: list[list[np.ndarray]] = [[] for _ in job.tracks]  # compare: frames waiting for their pair
        self.written = 0
        self.previews: list[Path] = []
        self._chunks_at_preview = 0
        base = job.base
        self.drift = driftview.for_video(job.fps, len(job.tracks), base.frames if base else 0, getattr(base, "drift", None))

    def add(self, track: int, frames: np.ndarray) -> Path | None:
        """Write a track's new frames; returns the last chunk they completed, if any."""
        chunk = None
        if len(self.job.tracks) == 1:
            if self.drift is not None:
                self.drift.add(frames)
            for f in frames:
                chunk = self._write(f) or chunk
            return chunk
        self.pending[track].extend(frames)
        while all(self.pending):
            chunk = self._write(media.side_by_side([p.pop(0) for p in self.pending], self.job.labels)) or chunk
        return chunk

    def _write(self, frame: np.ndarray) -> Path | None:
        self.written += 1
        return self.writer.write(frame)

    def base_stream(self) -> Path | None:
        """The old video in one piece, the first thing an extension streams."""
        if self.job.base is None or self.job.progressive_mp4:
            return None
        return media.join_chunks(self.base_chunks, self.job.folder / "base.ts", container="ts")

    def progressive(self) -> Path | None:
        """A growing MP4 costs its whole length per refresh, so it is refreshed at a geometric pace."""
        n = len(self.writer.chunks)
        if n - self._chunks_at_preview < max(1, self._chunks_at_preview // 4):
            return None
        self._chunks_at_preview = n
        out = media.join_chunks(self.base_chunks + self.writer.chunks, self.job.folder / f"preview-{n:05d}.mp4")
        self.previews.append(out)
        while len(self.previews) > 2:  # the player has fetched the older ones by now
            self.previews.pop(0).unlink(missing_ok=True)
        return out

    def finish(self, name: str, meta: dict[str, str]) -> Path:
        """The whole MP4, with its metadata; the previews go."""
        mp4 = media.join_chunks(self.base_chunks + self.writer.chunks, self.job.folder / f"{name}.mp4", meta)
        for p in self.previews:
            p.unlink(missing_ok=True)
        return mp4

    @property
    def chunks(self) -> list[Path]:
        return self.base_chunks + self.writer.chunks


class _Progress:
    """What the page shows while a run goes: counts, the clock, an ETA (measured rate, else the estimate)."""

    def __init__(self, job: Job, rates: RateBook, plan: _Plan, clock: Callable[[], float], every_s: float) -> None:
        self.job, self.rates, self.plan, self.clock, self.every_s = job, rates, plan, clock, every_s
        self.t_start = clock()
        self.tick = _Clock()
        self.warm_done = 0
        self.leases = 0
        self.last_update = -math.inf
        self.queue: QueueSnapshot | None = None
        self.model_s, self.model_windows = 0.0, 0
        self.stepping_s = 0.0  # every pass of the streams, warm start included
        self.base_frames = job.base.frames if job.base else 0

    def step(self, ev: StepEvent, leases: int) -> None:
        self.leases = leases
        self.stepping_s += ev.step_s
        if ev.windows:
            self.model_s += ev.step_s
            self.model_windows += ev.windows
        if ev.track == 0:
            self.warm_done = min(self.plan.work.warmup_steps, ev.step) if self.plan.fresh else 0
            self.queue = ev.queue or self.queue

    def frames(self, written: int) -> None:
        self.tick.mark(self.clock(), written)

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def _estimate(self):
        p = self.plan
        return self.rates.estimate(p.backbone, p.area, p.config, p.work, len(self.job.tracks))

    def pace(self) -> tuple[float, bool]:
        """Seconds per frame: measured (True) once the clock has seen enough frames, else the estimate's."""
        spf = self.tick.seconds_per_frame()
        return (spf, True) if spf is not None else (self._estimate().seconds_per_frame, False)

    def _eta(self, written: int) -> float:
        spf = self.tick.seconds_per_frame()
        warm_total = self.plan.work.warmup_steps
        if spf is not None:
            return max(0.0, (self.job.frames - written) * spf)
        est = self._estimate()
        warm_left = est.warmup_seconds * (1 - self.warm_done / warm_total) if warm_total else 0.0
        return max(0.0, (self.job.frames - written) * est.seconds_per_frame + warm_left)

    def update(
        self, phase: str, written: int, chunk: Path | None = None, preview: Path | None = None, force: bool = False
    ) -> Update | None:
        """An Update, at most every `every_s` unless a chunk or preview is new or `force`."""
        now = self.clock()
        if not force and chunk is None and preview is None and now - self.last_update < self.every_s:
            return None
        self.last_update = now
        q, self.queue = self.queue, None
        return Update(
            phase=phase,
            frames_done=written,
            frames_total=self.job.frames,
            warmup_done=self.warm_done,
            warmup_total=self.plan.work.warmup_steps,
            seconds_per_frame=self.tick.seconds_per_frame(),
            eta_s=self._eta(written),
            elapsed_s=now - self.t_start,
            leases=self.leases,
            chunk=None if self.job.progressive_mp4 else chunk,
            preview_mp4=preview,
            queue=q,
            base_frames=self.base_frames,
        )

    def record_rates(self, written: int) -> None:
        """Fold this run's measured times into the rate book (for later estimates)."""
        p = self.plan
        if self.model_windows:
            self.rates.record(p.backbone, p.area, p.config.frames_per_window, self.model_s / self.model_windows)
        if written >= MIN_FRAMES_FOR_OVERHEAD:  # a few frames measure start-up, not the per-frame cost
            per = max(0.0, (self.elapsed() - self.stepping_s) / written / len(self.job.tracks))
            self.rates.record_overhead(p.backbone, per)


@dataclass
class _Plan:
    """The run's backbone, resolved config, latent area and work, resolved once."""

    backbone: str
    config: Any
    area: int
    temporal_compression: int
    fresh: bool
    work: Any


def _plan(job: Job) -> _Plan:
    s = job.tracks[0].settings
    bb = MANAGER.get(s.backbone)
    cfg = s.config().resolve(bb)
    r = s.resolved()
    lh, lw = bb.latent_size(r.height, r.width)
    fresh = job.tracks[0].state is None
    return _Plan(
        s.backbone, cfg, lh * lw, bb.temporal_compression, fresh, work_for(cfg, job.frames, bb.temporal_compression, fresh)
    )


def _lease_work(
    job: Job, specs: list[TrackSpec], made: list[int], plan: _Plan, rates: RateBook, stop: StopFlag, lease_limit_s: float | None
) -> LeaseWork:
    """The next lease's work: everything left, or on ZeroGPU what fits one lease of at most `lease_limit_s`."""
    wanted = [job.frames - m for m in made]
    budget, duration = None, 0
    if lease_limit_s is not None:
        left = max(wanted)
        w = work_for(plan.config, left, plan.temporal_compression, specs[0].state is None)
        est = rates.estimate(plan.backbone, plan.area, plan.config, w, len(specs))
        n, duration = next_lease(est, left, lease_limit_s, END_MARGIN_S)
        wanted = [min(x, n) for x in wanted]
        budget = duration - LEASE_OVERHEAD_S
    steer = job.steer.work() if job.steer is not None else None
    return LeaseWork([replace(s) for s in specs], wanted, budget, duration, str(stop.path), steer=steer)


def _quota_or_error(e: Exception) -> LeaseFailure:
    text = str(e) or type(e).__name__
    log.warning("a GPU lease failed: %s", text)
    return LeaseFailure("quota" if "quota" in text.lower() or "zerogpu" in text.lower() else "error", text)


class _Leases:
    """The host's lease loop: leases one after another until the frames are made, Stop, or a failure."""

    def __init__(self, job: Job, lease_fn: Callable[[LeaseWork], Iterator[LeaseEvent]], stop: StopFlag) -> None:
        self.job, self.lease_fn, self.stop = job, lease_fn, stop
        self.specs = [replace(t) for t in job.tracks]
        self.made = [0] * len(self.specs)
        self.stopped = False
        self.failure: LeaseFailure | None = None
        self.count = 0  # leases started

    def events(self, work_of: Callable[[], LeaseWork]) -> Iterator[StepEvent]:
        """Every StepEvent of every lease, in order; the lease ends' states are kept in `specs`."""
        while any(m < self.job.frames for m in self.made) and not self.stopped and self.failure is None:
            if self.stop.is_set():
                self.stopped = True
                break
            progressed = yield from self._one(work_of())
            if self.failure is None and not progressed and not self.stopped:
                self.failure = LeaseFailure(
                    "error", "a GPU lease ended before the first step; its time limit is too short for this model"
                )

    def _one(self, work: LeaseWork) -> Iterator[StepEvent]:
        progressed = False
        self.count += 1
        events = self.lease_fn(work)
        try:
            for ev in events:
                if isinstance(ev, StepEvent):
                    progressed = True
                    if ev.frames is not None:
                        self.made[ev.track] += len(ev.frames)
                    yield ev
                elif isinstance(ev, LeaseEnd):
                    for i, st in enumerate(ev.states):
                        self.specs[i].state = st if st is not None else self.specs[i].state
                    self.stopped = ev.reason == "stopped"
                elif isinstance(ev, LeaseFailure):
                    self.failure = ev
                    break
        except Exception as e:  # noqa: BLE001  (ZeroGPU refuses or aborts a lease: quota, queue timeout, duration)
            self.failure = _quota_or_error(e)
        finally:
            close = getattr(events, "close", None)
            if close is not None:  # a cancelled run ends its lease now, freeing the GPU
                close()
        return progressed


def run_job(
    job: Job,
    lease_fn: Callable[[LeaseWork], Iterator[LeaseEvent]],
    stop: StopFlag,
    rates: RateBook,
    lease_limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    update_every_s: float = 0.4,
    max_run_s: float | None = None,
) -> Iterator[Update]:
    """Make the job's frames, yielding Updates; the last one carries the Result.

    A run past `max_run_s` seconds is stopped as if Stop were pressed (what was made is kept).
    Raises RunError (after yielding a Result for whatever was made) when a lease fails.
    `lease_limit_s` is ZeroGPU's longest lease; None runs everything in one unlimited lease.
    """
    plan = _plan(job)
    out = _Output(job)
    progress = _Progress(job, rates, plan, clock, update_every_s)
    leases = _Leases(job, lease_fn, stop)
    try:
        first = Update(
            "warming up" if plan.fresh else "generating",
            0,
            job.frames,
            0,
            plan.work.warmup_steps,
            base_frames=progress.base_frames,
        )
        first.chunk = out.base_stream()
        first.drift_plot = out.drift.first_plot() if out.drift is not None else None
        yield first
        work_of = lambda: _lease_work(job, leases.specs, leases.made, plan, rates, stop, lease_limit_s)
        for ev in leases.events(work_of):
            if max_run_s is not None and progress.elapsed() > max_run_s and not stop.is_set():
                log.info("a run passed the app's time limit of %.0f s: stopping it", max_run_s)
                stop.set()
            progress.step(ev, leases.count)
            chunk = None
            if ev.frames is not None:
                chunk = out.add(ev.track, ev.frames)
                progress.frames(out.written)
            preview = out.progressive() if job.progressive_mp4 and chunk is not None else None
            phase = "warming up" if ev.warming_up and out.written == 0 else "generating"
            steered = _steered(job, leases, ev, progress, out.written)
            u = progress.update(phase, out.written, chunk, preview, force=steered)
            if u is not None:
                u.drift_plot = out.drift.new_plot() if out.drift is not None else None
                u.note = _steer_note(job, progress, out.written)
                yield u
        yield from _finish(job, out, progress, leases)
    except BaseException:
        out.writer.abort()
        raise


def _steered(job: Job, leases: _Leases, ev: StepEvent, progress: _Progress, written: int) -> bool:
    """Record the prompt changes a lease reports; the next lease makes its stream from the recorded schedule."""
    if job.steer is None or not ev.prompt_changes:
        return False
    job.steer.record(ev.prompt_changes, _queue_frames(job, progress, written), *progress.pace())
    spec = leases.specs[ev.track]
    spec.settings = replace(spec.settings, prompt=job.steer.prompt)
    return True


def _steer_note(job: Job, progress: _Progress, written: int) -> str:
    return job.steer.status(_queue_frames(job, progress, written), *progress.pace()) if job.steer else ""


def _queue_frames(job: Job, progress: _Progress, written: int) -> int:
    """Frames made so far as a prompt schedule counts them: an uploaded clip's frames at the start are not the queue's."""
    return progress.base_frames - job.lead_frames + written


def _finish(job: Job, out: _Output, progress: _Progress, leases: _Leases) -> Iterator[Update]:
    """Whatever was made becomes a complete MP4 (and a state to continue from); the last Update carries it."""
    progress.record_rates(out.written)
    progress.leases = leases.count
    last = out.writer.flush()
    if last is not None and not job.progressive_mp4:
        yield progress.update("finishing", out.written, last, force=True)
    written, failure = out.written, leases.failure
    if written == 0 and job.base is None:
        if failure is not None:
            raise RunError(_failure_message(failure, job, 0))
        raise RunError("stopped before the first frame: nothing was made")
    total = progress.base_frames + written
    settings_out = job.result_settings(total)
    if job.steer is not None:  # the run is over: a change that no lease took is too late
        job.steer.close()
        settings_out = job.steer.settings(settings_out)
    link = _read_part(settings_out, leases.specs) if leases.stopped else settings_out
    meta = (
        link.metadata()
        if link is not None
        else {"comment": "made by the fifo-video app, continued from an uploaded state"}
    )
    if out.drift is not None:
        out.drift.finish()
        meta.update(out.drift.metadata())
    if job.origin:
        meta = origin_metadata(meta, job.origin, job.lead_frames, settings_out is not None)
    name = job.name(total) if callable(job.name) else job.name
    mp4 = out.finish(name, meta)
    specs = leases.specs
    state_path = None
    if job.save_state and len(specs) == 1 and specs[0].state is not None:
        state_path = job.folder / f"{name}-state.pt"
        specs[0].state.save(state_path)
    elapsed = progress.elapsed()
    timings = [{"label": t.label, "seconds_per_frame": round(elapsed / max(written, 1) / len(specs), 4)} for t in specs]
    result = Result(
        mp4, total, written, settings_out, state_path, leases.stopped, elapsed, progress.leases, timings, out.chunks, out.drift,
        job.origin, link,
    )
    yield Update(
        "stopped" if leases.stopped else "done",
        written,
        job.frames,
        progress.warm_done,
        progress.plan.work.warmup_steps,
        progress.tick.seconds_per_frame(),
        0.0,
        elapsed,
        progress.leases,
        preview_mp4=mp4 if job.progressive_mp4 else None,
        result=result,
        note=_steer_note(job, progress, written),
        base_frames=progress.base_frames,
        drift_plot=out.drift.plot() if out.drift is not None else None,
    )
    if failure is not None:
        raise RunError(_failure_message(failure, job, written))


def _read_part(settings: RunSettings | None, specs: list[TrackSpec]) -> RunSettings | None:
    """A stopped run's settings less the schedule entries that no window read before the stop.

    Such an entry (a prompt typed for later, a change still on its way) shaped no frame of the
    video, so the settings without it remake the video exactly, and a link to them asks for no
    prompt after the video's end. Extend still goes on with it (from the run's own settings)."""
    state = specs[0].state if len(specs) == 1 else None
    if settings is None or state is None:
        return settings
    unread = state.earliest_change_frame(MANAGER.get(state.backbone).temporal_compression)
    kept = PromptSchedule.parse(settings.prompt).before(unread)
    return replace(settings, prompt=kept.to_text())


def _failure_message(f: LeaseFailure, job: Job, written: int) -> str:
    kept = f" The {written} frames made so far are kept: download them, or press Extend later." if written else ""
    if f.kind == "oom":
        return f"The GPU ran out of memory.{kept} Ask for a smaller size, fewer partitions, or lookahead off."
    if f.kind == "quota":
        return f"The GPU time ran out ({f.message}).{kept} Ask for fewer frames, or try again later."
    if f.kind == "input":
        return f.message
    return f"The run failed: {f.message}.{kept}"
