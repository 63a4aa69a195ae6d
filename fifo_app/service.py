"""The app's operations, free of Gradio: generate, extend, continue an uploaded state, compare, stop.

Each operation is a generator of `jobs.Update`s; `app.py` turns them into widget values. Bad
input raises `InputError`, a run that cannot go on raises `RunError` (after handing over what it
made); both carry a message meant for the user.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from fifo import BACKBONES, FIFOConfig, FIFOState, PromptSchedule
from fifo.config import APP_SETTINGS

from . import housekeeping, steer, uploads, zerogpu
from .estimate import RateBook, format_seconds, plan_leases, work_for
from .jobs import CHUNK_SECONDS, Job, LeaseEvent, LeaseWork, RunError, StepEvent, TrackSpec, Update, gpu_lease, lease, run_job
from .models import MANAGER, BackboneManager, LoadError
from .sessions import Session, SessionStore, StopFlag, VideoRecord
from .settings import (
    InputError,
    RunSettings,
    build_schedule,
    continue_schedule,
    frames_for_length,
    parse_inputs,
    schedule_rows_text,
)

log = logging.getLogger("fifo_app")

LeaseFn = Callable[[LeaseWork], Iterator[LeaseEvent]]


from .limits import HARD_STOP, MAX_DISK_BYTES, MAX_RUN_S, SESSION_IDLE_S


def _name(settings: RunSettings, frames: int) -> str:
    return f"fifo-{settings.backbone}-seed{settings.seed}-{frames}f"


def describe(settings: RunSettings) -> str:
    """Short label of the FIFO settings, for comparisons: 'n=4, lookahead on, eta 0'."""
    r = settings.resolved()
    return f"n={r.partitions}, lookahead {'on' if r.lookahead else 'off'}, eta {r.eta:g}"


class Service:
    """Sessions, measured rates and the lease function, shared by every request of one server."""

    def __init__(
        self,
        lease_fn: LeaseFn = gpu_lease,
        progressive_mp4: bool = False,
        store: SessionStore | None = None,
        rates: RateBook | None = None,
        models: BackboneManager = MANAGER,
        lease_limit_s: Callable[[], float | None] = zerogpu.max_lease_seconds,
        max_run_s: float = MAX_RUN_S,
    ) -> None:
        self.lease_fn = lease_fn
        self.progressive_mp4 = progressive_mp4
        self.store = store or SessionStore()
        self.rates = rates or RateBook()
        self.models = models
        self.lease_limit_s = lease_limit_s
        self.max_run_s = max_run_s
        self._calibrated = threading.Lock()
        self._calibration_done = False

    def calibrate(self) -> None:
        """Time a few toy steps once, so the first estimates are measured, not guessed (lazily: not on import)."""
        with self._calibrated:
            if self._calibration_done:
                return
            self._calibration_done = True
            try:
                s = parse_inputs("a red ball moving right", "", "toy", 10, "frames", 0, False, partitions=1, lookahead="off")
                work = LeaseWork([TrackSpec("calibration", s)], [10], None, 0, os.devnull + ".none")
                steps = sorted(e.step_s / e.windows for e in lease(work) if isinstance(e, StepEvent) and e.windows)
                bb = self.models.get("toy")
                r = s.resolved()
                lh, lw = bb.latent_size(r.height, r.width)
                self.rates.record("toy", lh * lw, bb.defaults.frames_per_window, steps[len(steps) // 2])  # the median
            except Exception:
                log.exception("calibration failed")

    # -- plumbing -------------------------------------------------------------------------------

    def _limit(self, backbone: str) -> float | None:
        """The longest GPU lease for runs of `backbone`; None: one unlimited lease (off ZeroGPU, or a CPU model)."""
        return self.lease_limit_s() if BACKBONES[backbone].needs_gpu else None

    def _load(self, name: str):
        try:
            return self.models.get(name)
        except LoadError as e:
            raise InputError(str(e)) from None

    def _loading(self, settings: RunSettings) -> Iterator[Update]:
        """Say so before loading a model on first use (minutes for a real one), so the page is not silent."""
        spec = BACKBONES.get(settings.backbone)
        if spec is not None and not self.models.is_loaded(spec.name) and (self.models.gpu() or not spec.needs_gpu):
            yield Update(
                "loading", 0, settings.frames, note=f"Loading {settings.backbone} (first use; a real model takes a while)"
            )

    def _check(self, settings: RunSettings, fresh: bool = True) -> None:
        """Everything that can be checked before a run starts: layout, size, and (for cheap models) the prompts."""
        bb = self._load(settings.backbone)
        try:
            cfg = settings.config().resolve(bb)
            r = settings.resolved()
            bb.latent_size(r.height, r.width)
            _ = cfg.windows  # building the layout checks it
            for p in settings.schedule.prompts:
                self._check_prompt(settings, p)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.calibrate()
        w = work_for(cfg, settings.frames, bb.temporal_compression, fresh)
        est = self.rates.estimate(settings.backbone, _area(bb, r), cfg, w)
        if est.seconds > self.max_run_s:
            raise InputError(
                f"this run would take about {format_seconds(est.seconds)} here, over this app's limit of "
                f"{format_seconds(self.max_run_s)} per run: ask for a shorter length, a smaller size, fewer partitions "
                "or lookahead off, or Extend the video in steps; or run it on your own machine (python -m fifo), without a limit"
            )
        limit = self._limit(settings.backbone)
        if limit is not None:
            try:
                plan_leases(est.seconds, est.warmup_seconds, limit)
            except ValueError as e:
                raise InputError(str(e)) from None

    def _check_prompt(self, settings: RunSettings, prompt: str) -> None:
        """ValueError for a prompt the backbone refuses, where encoding is cheap (a CPU model); a GPU model's lease checks it."""
        if BACKBONES[settings.backbone].needs_gpu:
            return
        if settings.backbone == "toy" and not any(c.isascii() and c.isalpha() for c in prompt):
            raise ValueError(f"the prompt {prompt[:40]!r} has no word the toy world knows: it reads English words only")
        self._load(settings.backbone).encode_prompt(prompt, settings.negative_prompt)

    def _run(self, session: Session, job: Job, record: bool = True) -> Iterator[Update]:
        if not session.lock.acquire(blocking=False):
            raise RunError("this page is already making a video: press Stop, or wait for it to finish")
        try:
            self.store.prune(SESSION_IDLE_S, MAX_DISK_BYTES)
            housekeeping.trim_cache(MAX_DISK_BYTES, others=[self.store.root])  # Gradio's cache counts in the budget
            session.stop = StopFlag(session.folder / "STOP")
            session.steer = job.steer = _steering(job) if len(job.tracks) == 1 else None
            gpu = BACKBONES[job.tracks[0].settings.backbone].needs_gpu
            lease_fn = self.lease_fn if gpu else lease  # a CPU model spends no GPU quota
            limit = self._limit(job.tracks[0].settings.backbone)
            for u in run_job(job, lease_fn, session.stop, self.rates, limit, max_run_s=self.max_run_s * HARD_STOP):
                if u.result is not None and record:
                    r = u.result
                    s = job.tracks[0].settings
                    old = session.last
                    session.last = VideoRecord(
                        folder=job.folder,
                        chunks=list(r.chunks),
                        frames=r.frames,
                        fps=job.fps,
                        settings=r.settings or replace(s, frames=r.frames, prompt=job.steer.prompt if job.steer else s.prompt),
                        state_path=r.state_path,
                        mp4=r.mp4,
                        reproducible=r.settings is not None and job.origin is None,
                        drift=r.drift,
                        origin=job.origin,
                        lead_frames=job.lead_frames,
                    )
                    if old is not None and old.folder == job.folder:  # an extension: the old files are superseded
                        for p in (old.mp4, old.state_path):
                            if p is not None and p not in (r.mp4, r.state_path):
                                p.unlink(missing_ok=True)
                if u.result is not None:
                    session.keep_only(job.folder, *([session.last.folder] if session.last else []))
                yield u
        finally:
            if session.steer is not None:
                session.steer.close()
            session.stop = session.steer = None
            session.lock.release()
            self.models.free_memory()
            if session.dropped:
                shutil.rmtree(session.folder, ignore_errors=True)

    # -- operations -----------------------------------------------------------------------------

    def generate(self, settings: RunSettings, session_id: str | None) -> Iterator[Update]:
        """Make a new video."""
        yield from self._loading(settings)
        self._check(settings)
        check_schedule_fits(settings.prompt, settings.frames, self._reach(settings))
        session = self.store.get(session_id)
        fps = settings.resolved().fps
        job = Job(
            tracks=[TrackSpec("main", settings)],
            frames=settings.frames,
            fps=fps,
            folder=session.new_folder("video-"),
            name=lambda n: _name(settings, n),
            result_settings=lambda n: replace(settings, frames=n),
            progressive_mp4=self.progressive_mp4,
        )
        yield from self._run(session, job)

    def generate_from_upload(self, settings: RunSettings, session_id: str | None, upload: str | os.PathLike) -> Iterator[Update]:
        """Make a new video that continues an uploaded clip (or starts from a picture): the upload's frames, then the new ones."""
        yield from self._loading(settings)
        self._check(settings)
        check_schedule_fits(settings.prompt, settings.frames, self._reach(settings))
        bb = self._load(settings.backbone)
        cfg = settings.config().resolve(bb)
        if cfg.frames_per_rung != 1:
            raise InputError(
                f"frames_per_rung={cfg.frames_per_rung}: a run from an uploaded picture or clip holds its frames one per "
                "rung; set frames per rung to 1 (or remove the upload)"
            )
        r = settings.resolved()
        up = uploads.read_upload(upload, r.height, r.width, cfg.queue_length, bb.temporal_compression)
        session = self.store.get(session_id)
        folder = session.new_folder("video-")
        chunks = uploads.write_chunks(up.shown, folder, r.fps, CHUNK_SECONDS)
        lead = len(up.shown)
        base = VideoRecord(folder, chunks, lead, r.fps, settings, None, folder / "upload.mp4", reproducible=False)
        job = Job(
            tracks=[TrackSpec("main", settings, known=up.known)],
            frames=settings.frames,
            fps=r.fps,
            folder=folder,
            name=lambda n: f"{_name(settings, n)}-from-{up.what}",
            result_settings=lambda n: replace(settings, frames=n - lead),  # the link: the prompt alone
            base=base,
            progressive_mp4=self.progressive_mp4,
            origin=up.what,
            lead_frames=lead,
        )
        yield from self._run(session, job)

    def describe_state(self, state_file: str | os.PathLike | None) -> str:
        """What Continue will do with an uploaded state (its settings, not the page's), as safe Markdown."""
        if not state_file:
            return ""
        try:
            state = FIFOState.load(state_file)
        except ValueError:
            return "⚠️ that file is not a saved FIFO state: upload a .pt file saved by this app (or by python -m fifo --save-state)"
        if state.backbone not in BACKBONES:
            return "⚠️ the state was made by a backbone that is not available here"
        c = state.config
        return (
            f"Continue goes on from frame {state.frames_emitted} of this **{state.backbone}** video at "
            f"{state.width}x{state.height}, {c['fps']} fps, {c['partitions']} partitions, lookahead "
            f"{'on' if c['lookahead'] else 'off'}, seed {state.seed}: the state's settings, not the ones above "
            "(the estimate above is for Generate); it adds **Extend by** more."
        )

    def _reach(self, settings: RunSettings) -> int:
        """Video frames past a video's end whose prompts its queue may still read: the queue and one window."""
        bb = self._load(settings.backbone)
        cfg = settings.config().resolve(bb)
        return (cfg.queue_length + cfg.frames_per_window) * bb.temporal_compression

    def _tc(self, backbone: str) -> int:
        """Video frames per latent frame of a backbone (1 until a model that compresses time is loaded)."""
        bb = self.models._loaded.get(backbone)
        return bb.temporal_compression if bb is not None else 1

    def extend(
        self, session_id: str | None, prompt: str | None, length: Any, unit: str, schedule_rows: Any = None
    ) -> Iterator[Update]:
        """Continue this page's last video by `length` more (seconds or frames), seamlessly."""
        session = self.store.get(session_id)
        base = session.last
        if base is None or base.state_path is None or not base.state_path.exists():
            raise InputError("nothing to extend yet: make a video first (or upload a saved state and press Continue)")
        frames = frames_for_length(length, unit, base.fps)
        text = (
            build_schedule(prompt, schedule_rows).to_text()
            if (prompt or "").strip() or schedule_rows_present(schedule_rows)
            else None
        )
        state = FIFOState.load(base.state_path)
        made = base.frames - base.lead_frames  # the schedule counts the queue's frames, not an upload's before them
        prompt_text = continue_schedule(base.settings.prompt, text, made, state.earliest_change_frame(self._tc(state.backbone)))
        if text is not None:  # the recorded schedule may go on past the end (a stopped run's later prompts): it is kept
            check_schedule_fits(prompt_text, made + frames, self._reach(base.settings))
        new = replace(base.settings, prompt=prompt_text, frames=base.frames + frames)
        self._check(replace(new, frames=frames), fresh=False)
        reproducible = base.reproducible
        job = Job(
            tracks=[TrackSpec("main", new, state)],
            frames=frames,
            fps=base.fps,
            folder=base.folder,
            name=lambda n: _name(new, n),
            result_settings=(lambda n: replace(new, frames=n)) if reproducible else (lambda n: _upload_settings(new, base, n)),
            base=base,
            progressive_mp4=self.progressive_mp4,
            chunk_prefix=f"ext{base.frames:06d}-",
            origin=base.origin,
            lead_frames=base.lead_frames,
        )
        yield from self._run(session, job)

    def continue_state(
        self,
        session_id: str | None,
        state_file: str | os.PathLike | None,
        prompt: str | None,
        length: Any,
        unit: str,
        schedule_rows: Any = None,
    ) -> Iterator[Update]:
        """Continue a queue state saved earlier (uploaded): the new video holds the new frames."""
        if not state_file:
            raise InputError("no state file: upload a .pt file saved by this app (or by python -m fifo --save-state)")
        try:
            state = FIFOState.load(state_file)
        except ValueError as e:
            log.info("an upload is not a state file: %s", e)  # the details (a server path, torch's advice) stay in the log
            raise InputError(
                "that file is not a saved FIFO state: upload a .pt file saved by this app (or by python -m fifo --save-state)"
            ) from None
        if state.backbone not in BACKBONES:
            raise InputError(f"the state was made by backbone {state.backbone!r}, which is not available here")
        c = state.config
        recorded = state.meta.get("prompt")  # None in state files written before states recorded it
        typed = bool((prompt or "").strip()) or schedule_rows_present(schedule_rows)
        if not typed and recorded is None:
            raise InputError("this saved state does not record its prompt: type the prompt to continue with")
        fps = int(c["fps"])
        frames = frames_for_length(length, unit, fps)
        new_text = build_schedule(prompt, schedule_rows).to_text() if typed else None
        text = continue_schedule(recorded, new_text, state.frames_emitted, state.earliest_change_frame(self._tc(state.backbone)))
        recorded_settings = {s.name: c[s.name] if s.config else getattr(state, s.name) for s in APP_SETTINGS}
        settings = parse_inputs(
            text, state.meta.get("negative_prompt", ""), state.backbone, frames, "frames", state.seed, False, **recorded_settings
        )
        yield from self._loading(settings)
        self._check(settings, fresh=False)
        if typed:  # as for Extend: a recorded schedule may go on past the end
            check_schedule_fits(text, state.frames_emitted + frames, self._reach(settings))
        session = self.store.get(session_id)
        job = Job(
            tracks=[TrackSpec("main", settings, state)],
            frames=frames,
            fps=fps,
            folder=session.new_folder("video-"),
            name=lambda n: f"fifo-continued-{state.frames_emitted}-{state.frames_emitted + n}",
            result_settings=lambda n: None,
            progressive_mp4=self.progressive_mp4,
        )
        yield from self._run(session, job)

    def compare(self, a: RunSettings, b: RunSettings, session_id: str | None) -> Iterator[Update]:
        """The same prompt and seed under two settings, side by side in one video."""
        same = ("backbone", "prompt", "seed", "frames", "height", "width")
        if any(getattr(a, k) != getattr(b, k) for k in same):
            raise InputError("a comparison runs one prompt, seed, length and size under two settings")
        yield from self._loading(a)
        self._check(a)
        self._check(b)
        session = self.store.get(session_id)
        labels = [f"A: {describe(a)}", f"B: {describe(b)}"]
        if labels[0][3:] == labels[1][3:]:
            labels = ["A", "B"]
        job = Job(
            tracks=[TrackSpec(labels[0], a), TrackSpec(labels[1], b)],
            frames=a.frames,
            fps=a.resolved().fps,
            folder=session.new_folder("compare-"),
            name=lambda n: f"fifo-compare-seed{a.seed}-{n}f",
            result_settings=lambda n: None,
            progressive_mp4=self.progressive_mp4,
            save_state=False,
            labels=labels,
        )
        yield from self._run(session, job, record=False)

    def stop(self, session_id: str | None) -> bool:
        """Ask this page's run to stop after its current step; False when nothing is running."""
        session = self.store.get(session_id)
        if session.stop is None:
            return False
        session.stop.set()
        return True

    def change_prompt(self, session_id: str | None, prompt: Any, entry: Any = "tail") -> dict[str, Any]:
        """Send a new prompt into this page's running video; returns the frame it takes over from (and a message)."""
        steering = self.store.get(session_id).steer

        def check(text: str) -> None:  # a GPU model's lease encodes it, and reports a refusal back
            try:
                self._check_prompt(steering.run, text)
            except ValueError as e:
                raise InputError(str(e)) from None

        return steer.ask(steering, prompt, entry, check)

    def end_session(self, session_id: str | None) -> None:
        """The page went away: stop its run and delete its files."""
        self.store.drop(session_id)

    # -- estimates --------------------------------------------------------------------------------

    def estimate(
        self,
        backbone: str,
        length: Any,
        unit: str,
        partitions: Any,
        lookahead: Any,
        fps: Any,
        height: Any,
        width: Any,
        tracks: int = 1,
        frames_per_rung: Any = "default",
    ) -> str:
        """One line of Markdown: how long the asked-for run should take (or what is wrong with the input)."""
        self.calibrate()
        try:
            s = parse_inputs(
                "x",
                "",
                backbone,
                length,
                unit,
                0,
                False,
                partitions=partitions,
                lookahead=lookahead,
                fps=fps,
                height=height,
                width=width,
                frames_per_rung=frames_per_rung,
            ).resolved()
        except InputError as e:
            return f"⚠️ {e}"
        spec = BACKBONES[s.backbone]
        d = spec.defaults
        bb = self.models._loaded.get(s.backbone)
        tc = bb.temporal_compression if bb is not None else 1
        sc = bb.spatial_compression if bb is not None else 8
        try:
            cfg = FIFOConfig(
                frames_per_window=d.frames_per_window,
                partitions=s.partitions,
                lookahead=s.lookahead,
                eta=s.eta,
                guidance_scale=s.guidance_scale,
                fps=s.fps,
                frames_per_rung=s.frames_per_rung,
            )
        except ValueError as e:
            return f"⚠️ {e}"
        work = work_for(cfg, s.frames, tc)
        area = max(1, (s.height // sc) * (s.width // sc))
        est = self.rates.estimate(s.backbone, area, cfg, work, tracks)
        if spec.needs_gpu and not self.models.gpu():
            return f"{s.backbone} needs a GPU, and this machine has none: choose **toy** to try the method here"
        load = "" if bb is not None or not spec.needs_gpu else " (+ loading the model first)"
        how = "" if est.measured else " (a rough guess until this model has run here)"
        text = (
            f"**≈ {format_seconds(est.seconds)}**{how}{load} for {s.frames} frames ({s.frames / s.fps:.3g} s at {s.fps} fps): "
            f"warm-up ≈ {format_seconds(est.warmup_seconds)}, then ≈ {format_seconds(est.seconds_per_frame)} per frame · "
            f"queue of {cfg.queue_length} frames, {len(cfg.windows)} windows of {cfg.frames_per_window} per step"
        )
        limit = self._limit(s.backbone)
        if limit is not None:
            try:
                plan = plan_leases(est.seconds, est.warmup_seconds, limit)
                text += f" · ZeroGPU: ≈ {plan.gpu_seconds} GPU-seconds in {plan.leases} lease{'s' * (plan.leases > 1)}"
            except ValueError as e:
                text += f" · ⚠️ {e}"
        return text


def _steering(job: Job) -> steer.Steering:
    """A one-track run's prompt changes: requests go into its folder; frames count from its state's first new one."""
    spec = job.tracks[0]
    start = spec.state.frames_emitted if spec.state is not None else 0
    return steer.Steering(job.folder / "steer", spec.settings, start, job.frames, lead=job.lead_frames)


def _upload_settings(new: RunSettings, base: VideoRecord, frames: int) -> RunSettings | None:
    """A video from an upload: the prompt-alone settings of its new frames (its link says it cannot carry the upload)."""
    return replace(new, frames=frames - base.lead_frames) if base.origin else None


def _area(bb, r: RunSettings) -> int:
    lh, lw = bb.latent_size(r.height, r.width)
    return lh * lw


def check_schedule_fits(prompt: str, end: int, reach: int = 0) -> None:
    """Refuse a prompt that no window of a video of `end` frames would read: one starting at or after
    `end + reach`, where `reach` bounds the frames the queue holds past the video's last frame (a
    window reads its middle frame's prompt, so a prompt starting just after the end may still shape
    the last frames, and a stopped run's link may carry one)."""
    late = [f for f, _ in PromptSchedule.parse(prompt).entries if f >= end + reach and f > 0 and end > 0]
    if late:
        raise InputError(
            f"the prompt at frame {late[0]} starts after the video ends ({end} frames): give it an earlier frame, or a longer length"
        )


def schedule_rows_present(rows: Any) -> bool:
    """Whether a schedule table holds any non-blank row."""
    try:
        return bool(schedule_rows_text(rows))
    except InputError:
        return True  # let the real parse report the problem
