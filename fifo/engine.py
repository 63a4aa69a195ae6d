"""The FIFO queue: warm start, diagonal denoising step, pop and push, state to save and resume.

Symbols as in `schedule.py`: `f` frames per window, `n` partitions, `b` frames per rung, `L = f * n`
main slots, `R = L / b` rungs, `h` context slots. At step `k` (`k * b` latent frames popped so far)
main slot `i` holds latent frame `k * b + i` at rung `i // b`; context slot `c` holds the finished
frame `k * b - h + c`. Every random draw is keyed by (seed, frame, step), so the frames do not
depend on how the windows are batched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .backbones.base import Backbone, video_frames_before
from .config import FIFOConfig
from .noise import BASE, ETA, FILL, TAIL, keyed_normal_frames
from .prompts import PromptLike, PromptSchedule
from .schedule import Ladder, Window, distilled_ladder, make_ladder, per_slot, slot_timesteps, window_batches
from .solvers import step_coefficients

Callback = Callable[[dict[str, Any]], Any]
KNOWN = 5  # noise stream of the known frames' re-noising (fifo.noise's streams are 1-4)
ENTRY_POINTS = ("tail", "head")  # where `FIFOStream.change_prompt` enters a change by default
_LAYOUT_FIELDS = ("frames_per_window", "partitions", "lookahead", "warmup", "frames_per_rung")


@dataclass
class FIFOState:
    """Everything needed to continue a run: the queue, counters, the decoder's cache; on CPU."""

    queue: torch.Tensor  # (C, h + L, lh, lw) float32
    step: int  # steps taken (warm-up included); latent frames popped = step * frames_per_rung
    frames_emitted: int  # video frames yielded so far
    seed: int
    backbone: str
    config: dict  # the resolved FIFOConfig's fields
    height: int
    width: int
    decoder_state: dict = field(default_factory=dict)
    pending: torch.Tensor | None = None  # (N, H, W, 3) uint8: decoded but not yet yielded
    meta: dict = field(default_factory=dict)  # what made it: {"prompt": schedule text, "negative_prompt": str}
    known: dict = field(default_factory=dict)  # a run from known frames: {"latents": (C, K, lh, lw), "video_start", "primed": int}

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to one file (torch.save of plain tensors, ints and strings), atomically; or to a
        binary file object."""
        if hasattr(path, "write"):
            torch.save(dataclasses.asdict(self), path)
            return
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"cannot save a state to {os.fspath(path)!r}: it is a folder")
        # A temporary file in the same folder, renamed into place: a kill mid-save leaves the old
        # file (or none), never a truncated one.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        with open(tmp, "xb") as fh:  # an OSError (no such folder, no permission) before anything is written
            try:
                torch.save(dataclasses.asdict(self), fh)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FIFOState":
        """Read and check a state written by `save` (weights_only: a state file cannot run code).

        Raises ValueError naming the first bad field; the message never holds the file's path.
        """
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols: not the reader's concern
                warnings.simplefilter("ignore")
                d = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            raise ValueError(f"cannot read the state file: {e.strerror or type(e).__name__}") from None
        except pickle.UnpicklingError:  # torch's own text here advises allow-listing globals: never
            raise ValueError("not a fifo state file: it holds objects other than tensors and plain values") from None
        except Exception as e:  # a truncated or foreign file: one clear line, not a pickle trace
            raise ValueError(f"not a fifo state file: it is not a complete torch.save file ({type(e).__name__})") from None
        return cls(**_checked_state_fields(d))

    def earliest_change_frame(self, temporal_compression: int = 1) -> int:
        """The first video frame a prompt change can take effect from when this state is continued.

        Frames still in the queue were denoised in windows whose prompt was read from the schedule
        of the run so far (a window reads its middle frame's prompt). A change placed at or after the
        frame returned here touches no window that already ran, so a fresh run of the recorded
        schedule remakes the continued video exactly (`FIFOStream.earliest_change_frame` on a
        stream resumed from this state gives the same frame).
        """
        cfg = FIFOConfig(**self.config)
        warmup = int(self.known["video_start"]) if self.known else cfg.warmup_frames
        primed = int(self.known.get("primed", 0)) if self.known else 0
        return _first_unread_frame(cfg, self.step - 1, warmup, primed, temporal_compression)

    def check_fits(self, backbone: Backbone) -> None:
        """Raise ValueError unless this state's queue and frames fit `backbone` at the state's size."""
        if self.backbone != backbone.name:
            raise ValueError(f"state was made by backbone {self.backbone!r}, not {backbone.name!r}")
        lh, lw = backbone.latent_size(self.height, self.width)
        c = backbone.latent_channels
        if tuple(self.queue.shape[:1]) + tuple(self.queue.shape[2:]) != (c, lh, lw):
            raise ValueError(
                f"state field 'queue': shape {tuple(self.queue.shape)} does not fit {backbone.name} at "
                f"{self.width}x{self.height} (expected ({c}, slots, {lh}, {lw}))"
            )


_STATE_REQUIRED = ("queue", "step", "frames_emitted", "seed", "backbone", "config", "height", "width")
_STATE_OPTIONAL = ("decoder_state", "pending", "meta", "known")  # files from older versions may lack them
# Config keys a state needs: the queue layout, and the video's frame rate.
_STATE_CONFIG_REQUIRED = ("frames_per_window", "partitions", "lookahead", "eta", "guidance_scale", "fps", "warmup")


def _checked_state_fields(d: object) -> dict[str, Any]:
    """The fields of an untrusted state dict, each checked; ValueError naming the first bad one."""

    def bad(name: str, problem: str) -> ValueError:
        return ValueError(f"state field {name!r}: {problem}")

    def int_in(name: str, lo: int, hi: int | None = None) -> int:
        v = d[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v >= hi):
            allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi})"
            raise bad(name, f"must be {allowed}, got {_short(v)}")
        return v

    if not isinstance(d, dict):
        raise ValueError(f"not a fifo state file: it holds a {type(d).__name__}, not a dict of fields")
    if missing := [k for k in _STATE_REQUIRED if k not in d]:
        raise bad(missing[0], "missing")
    if unknown := sorted(str(k) for k in d if k not in _STATE_REQUIRED + _STATE_OPTIONAL):
        raise ValueError(f"state field {unknown[0][:80]!r}: unknown; allowed are {list(_STATE_REQUIRED + _STATE_OPTIONAL)}")
    int_in("step", 0)
    int_in("frames_emitted", 0)
    int_in("seed", 0, 2**63)
    height, width = int_in("height", 1, 2**16), int_in("width", 1, 2**16)
    if not isinstance(d["backbone"], str) or not d["backbone"]:
        raise bad("backbone", f"must be a backbone name, got {_short(d['backbone'])}")

    cfg = d["config"]
    if not isinstance(cfg, dict):
        raise bad("config", f"must be a dict of settings, got {type(cfg).__name__}")
    if missing := [k for k in _STATE_CONFIG_REQUIRED if k not in cfg]:
        raise bad("config", f"missing setting {missing[0]!r}")
    known = {f.name for f in dataclasses.fields(FIFOConfig)}
    if unknown := sorted(str(k) for k in cfg if k not in known):
        raise bad("config", f"unknown setting {unknown[0][:80]!r}")
    try:
        config = FIFOConfig(**cfg)
    except ValueError as e:
        raise bad("config", str(e)) from None
    except Exception as e:  # a value whose comparisons fail (a tensor where a string belongs)
        raise bad("config", f"holds a value of the wrong type ({type(e).__name__})") from None
    if missing := [k for k in _STATE_CONFIG_REQUIRED if getattr(config, k) is None]:
        raise bad("config", f"setting {missing[0]!r} is None; a state records resolved settings")
    try:
        slots = config.num_slots
    except ValueError as e:  # a setting that joined the layout after this file was written
        raise bad("config", str(e)) from None

    q = d["queue"]
    if not isinstance(q, torch.Tensor) or not q.is_floating_point():
        raise bad("queue", f"must be a floating-point tensor, got {_short(q)}")
    if q.ndim != 4 or q.shape[1] != slots or 0 in q.shape:
        raise bad(
            "queue",
            f"must have shape (C, {slots}, lh, lw) for frames_per_window={config.frames_per_window}, "
            f"partitions={config.partitions}, lookahead={config.lookahead}; got {tuple(q.shape)}",
        )
    if not torch.isfinite(q).all():
        raise bad("queue", "holds NaN or infinite values")

    out = {k: d[k] for k in _STATE_REQUIRED}
    dec = d.get("decoder_state", {})
    if not isinstance(dec, dict) or not all(isinstance(k, str) for k in dec):
        raise bad("decoder_state", f"must be a dict with string keys, got {_short(dec)}")
    out["decoder_state"] = dec
    pending = d.get("pending")
    if pending is not None:
        if not isinstance(pending, torch.Tensor) or pending.dtype != torch.uint8:
            raise bad("pending", f"must be a uint8 tensor of frames, got {_short(pending)}")
        if pending.ndim != 4 or pending.shape[1:] != (height, width, 3):
            raise bad("pending", f"must have shape (N, {height}, {width}, 3), got {tuple(pending.shape)}")
    out["pending"] = pending
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        raise bad("meta", f"must be a dict, got {type(meta).__name__}")
    for k in ("prompt", "negative_prompt"):
        if k in meta and not isinstance(meta[k], str):
            raise bad("meta", f"{k!r} must be a string, got {_short(meta[k])}")
    out["meta"] = meta
    known = d.get("known", {})
    if not isinstance(known, dict):
        raise bad("known", f"must be a dict, got {type(known).__name__}")
    if known:
        lat = known.get("latents")
        if not isinstance(lat, torch.Tensor) or not lat.is_floating_point() or lat.ndim != 4 or 0 in lat.shape:
            raise bad("known", f"'latents' must be a floating-point tensor (C, K, lh, lw), got {_short(lat)}")
        if (lat.shape[0], *lat.shape[2:]) != (q.shape[0], *q.shape[2:]) or not torch.isfinite(lat).all():
            raise bad("known", f"'latents' of shape {tuple(lat.shape)} do not fit the queue {tuple(q.shape)}")
        for k in ("video_start", "primed"):
            v = known.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= lat.shape[1] + slots:
                raise bad("known", f"{k!r} must be an integer in [0, {lat.shape[1] + slots}], got {_short(v)}")
    out["known"] = known
    return out


def _video_frame(latent_frame: int, warmup: int, primed: int, temporal_compression: int) -> int:
    """The first video frame latent frame `latent_frame` decodes to (0 for warm-up and known frames)."""
    tc, j = temporal_compression, max(latent_frame - warmup, 0)
    return video_frames_before(j + primed, tc) - video_frames_before(primed, tc)  # after known frames a causal latent gives tc


def _first_unread_frame(config: FIFOConfig, claimed_step: int, warmup: int, primed: int, temporal_compression: int) -> int:
    """The first video frame whose prompt no window of the steps up to `claimed_step` (nor the warm start) read.

    A window reads its middle frame's prompt; a prompt change from this frame on is remade exactly
    by a fresh run of the recorded schedule.
    """
    mid = max((w.start + w.stop) // 2 for w in config.windows) - config.context
    b = config.frames_per_rung or 1  # older state files lack it: one frame per rung
    consulted = max(claimed_step * b + mid, config.queue_length - config.frames_per_window)
    return max(1, _video_frame(consulted + 1, warmup, primed, temporal_compression))


def _short(v: object) -> str:
    """A value for a message: tensors by dtype and shape, anything else as a clipped repr."""
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:57]}..."


class _Interrupted(Exception):
    """The warm start was asked to stop between its model calls."""


@dataclass(frozen=True)
class Step:
    """One pass of a stream's loop: at most one queue step, and the video frames handed out by then."""

    index: int  # latent frames popped so far (warm-up included), after this pass
    frames: np.ndarray  # (N, H, W, 3) uint8, in video order; N may be 0 (warm-up, or a decode still in flight)
    frames_emitted: int  # video frames handed out so far, these included
    warming_up: bool  # no video frame popped yet
    stepped: bool  # the queue moved (False: only frames decoded earlier were handed out)
    seconds: float  # wall time of this pass
    warm_start: bool  # this pass ran the warm start (its time is not a typical step's)


def backbone_ladder(backbone: Backbone, rungs: int) -> Ladder:
    """The ladder a run samples on: a step-distilled model's own timesteps, else `rungs` spread over the schedule."""
    distilled = getattr(backbone, "distilled", None)
    if distilled is None:
        return make_ladder(backbone.noise_schedule, rungs)
    if rungs != distilled.steps:  # FIFOConfig.resolve refuses such a layout first, with the layouts that work
        raise ValueError(f"rungs={rungs}: {backbone.name} samples at its {distilled.steps} distilled timesteps only")
    return distilled_ladder(backbone.noise_schedule, distilled.timesteps)


def backbone_solver(backbone: Backbone) -> str:
    """The update rule of a backbone: "ode" (DDIM / flow Euler) unless a distilled model brings its own."""
    distilled = getattr(backbone, "distilled", None)
    return "ode" if distilled is None else distilled.solver


def latents_for_frames(num_frames: int, temporal_compression: int) -> int:
    """Latent frames needed to decode `num_frames` video frames (causal VAEs: 1 + 4k)."""
    if temporal_compression == 1 or num_frames <= 0:
        return max(num_frames, 0)
    return 1 + -(-(num_frames - 1) // temporal_compression)


class FIFOStream:
    """One video in the making: `frames(n)` yields the next `n` frames; `state()` snapshots it."""

    def __init__(
        self,
        backbone: Backbone,
        prompt: PromptLike,
        config: FIFOConfig | None = None,
        seed: int | None = None,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        state: FIFOState | None = None,
        known: torch.Tensor | None = None,
    ) -> None:
        self.backbone = backbone
        self.schedule = PromptSchedule.coerce(prompt)
        self.negative_prompt = negative_prompt
        config = config or FIFOConfig()
        if state is not None:
            config, seed, height, width = self._check_resume(state, config, seed, height, width)
        self.config = cfg = config.resolve(backbone)
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed!r}: must be an integer in [0, 2**63)")
        self.seed = seed
        self.height = backbone.defaults.height if height is None else height
        self.width = backbone.defaults.width if width is None else width
        lh, lw = backbone.latent_size(self.height, self.width)
        self.latent_shape = (backbone.latent_channels, lh, lw)  # (C, lh, lw) of one latent frame

        self.ladder = backbone_ladder(backbone, cfg.rungs)
        self.h, self.L, self.f = cfg.context, cfg.queue_length, cfg.frames_per_window
        self.b = cfg.frames_per_rung
        dev = backbone.device
        self._batches = window_batches(cfg.windows, cfg.window_batch)
        self._slot_t = slot_timesteps(self.ladder, self.h, self.b).float().to(dev)  # (h + L,)
        lad = self.ladder
        self._coef64 = step_coefficients(  # (R,) per rung
            lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas, backbone.prediction_type, cfg.eta, backbone_solver(backbone)
        )
        # (1, L, 1, 1) per main slot: x' = c_x x + c_out out (+ c_noise z)
        self._coef = tuple(None if v is None else per_slot(v, self.b).float().to(dev).view(1, -1, 1, 1) for v in self._coef64)
        self._conds: dict[str, Any] = {}
        self._batch_t: dict[tuple[Window, ...], torch.Tensor] = {}
        self._decoder = backbone.decoder()
        self.queue: torch.Tensor | None = None  # (C, h + L, lh, lw) float32, on the backbone's device
        self._interrupt: Callable[[], bool] | None = None  # read during the warm start (see `steps`)
        self.step_index = 0
        self.frames_emitted = 0
        self._pending = np.zeros((0, self.height, self.width, 3), np.uint8)
        self._steer_lock = threading.Lock()
        self._claimed = self.step_index - 1  # the last step that may have read the schedule
        self.warmup = cfg.warmup_frames  # latent frames popped before the video starts
        self._primed = 0  # latents a causal decoder decoded before the video's first (known frames)
        self._known: torch.Tensor | None = None  # (C, Kt, lh, lw): latent frames 0..Kt-1 of the run, known
        if known is not None:
            if state is not None:
                raise ValueError("known frames start a new run: give known frames or a state to continue, not both")
            if self.b != 1:
                raise ValueError(f"frames_per_rung={self.b}: known frames are held one per rung; use frames_per_rung=1")
            self._set_known(known)
        for (_, a), (_, b), n in zip(self.schedule.entries, self.schedule.entries[1:], self.schedule.blends[1:]):
            if n:  # a schedule with fades the backbone cannot blend fails here, not mid-run
                self._blended(a, b, 0.5)
        if state is not None:
            self.queue = state.queue.to(dev, torch.float32)
            self.step_index, self.frames_emitted = state.step, state.frames_emitted
            self._claimed = self.step_index - 1  # the steps of the run so far read the schedule too
            self._decoder.load_state_dict(state.decoder_state)
            if state.pending is not None:
                self._pending = state.pending.numpy()
            if state.known:
                self._known = state.known["latents"].to(dev, torch.float32)
                self.warmup = int(state.known["video_start"])
                self._primed = int(state.known["primed"])

    def _check_resume(self, state: FIFOState, config: FIFOConfig, seed, height, width):
        """Take the layout, seed and size from the state; refuse a request that contradicts it."""
        state.check_fits(self.backbone)
        for name, given, saved in (("seed", seed, state.seed), ("height", height, state.height), ("width", width, state.width)):
            if given is not None and given != saved:
                raise ValueError(f"{name}={given!r} contradicts the state being continued ({name}={saved!r})")
        fields = {}
        for k in _LAYOUT_FIELDS:
            # a state saved before frames_per_rung existed has one frame per rung
            given, saved = getattr(config, k), state.config.get(k, 1) if k == "frames_per_rung" else state.config[k]
            if given is not None and k != "warmup" and given != saved:
                raise ValueError(f"{k}={given!r} contradicts the state being continued ({k}={saved!r}): the queue layout is fixed")
            fields[k] = saved
        return dataclasses.replace(config, **fields), state.seed, state.height, state.width

    # -- conditioning ---------------------------------------------------------------------------

    def _cond(self, prompt: str) -> Any:
        """Each distinct prompt is encoded once per stream."""
        if prompt not in self._conds:
            self._conds[prompt] = self.backbone.encode_prompt(prompt, self.negative_prompt)
        return self._conds[prompt]

    def _cond_of_latent(self, latent_frame: int) -> Any:
        """The conditioning of latent frame `latent_frame`: its prompt's, or a blend of two inside a fade."""
        schedule = self.schedule  # read once: a prompt change swaps the reference
        if not schedule.blends:
            return self._cond(schedule.prompt_at(self._video_frame_of(latent_frame)))
        a, b, w = schedule.blend_at(self._video_frame_of(latent_frame))
        return self._cond(b) if a == b or w >= 1 else self._blended(a, b, w)

    def _blended(self, a: str, b: str, w: float) -> Any:
        """`(1 - w) cond(a) + w cond(b)`, field by field, for conditioning made of same-shape tensors; cached."""
        key = (a, b, w)
        if key not in self._conds:
            ca, cb = self._cond(a), self._cond(b)
            names = [f.name for f in dataclasses.fields(ca)] if dataclasses.is_dataclass(ca) and type(ca) is type(cb) else []
            ok = names and all(
                torch.is_tensor(getattr(ca, n)) and getattr(ca, n).shape == getattr(cb, n).shape for n in names
            )
            if not ok:
                raise ValueError(f"{self.backbone.name} cannot blend prompts (its conditioning is not text embeddings): use blend=0")
            self._conds[key] = dataclasses.replace(ca, **{n: torch.lerp(getattr(ca, n), getattr(cb, n), w) for n in names})
        return self._conds[key]

    def _video_frame_of(self, latent_frame: int) -> int:
        """The first video frame latent frame `latent_frame` decodes to (0 for warm-up and known frames)."""
        return _video_frame(latent_frame, self.warmup, self._primed, self.backbone.temporal_compression)

    # -- steering: prompt changes while the stream runs --------------------------------------------

    def _claim_step(self) -> None:
        """Mark the step about to run; a prompt change made after this point cannot reach its windows."""
        with self._steer_lock:
            self._claimed = self.step_index

    def earliest_change_frame(self) -> int:
        """The first video frame a prompt change made now can take effect from, exactly reproducibly."""
        with self._steer_lock:
            return self._earliest_frame()

    def _earliest_frame(self) -> int:
        return _first_unread_frame(self.config, self._claimed, self.warmup, self._primed, self.backbone.temporal_compression)

    def entry_frame(self, entry: str = "tail") -> int:
        """The video frame a `change_prompt(..., entry=entry)` made now would take effect from."""
        if entry not in ENTRY_POINTS:
            raise ValueError(f"entry={entry!r}: allowed are {ENTRY_POINTS}")
        with self._steer_lock:
            return self._entry_frame(entry)

    def _entry_frame(self, entry: str) -> int:
        earliest = self._earliest_frame()
        if entry == "head":
            return earliest
        tail = (self._claimed + 1) * self.b + self.L - 1  # the newest frame of the next step's queue
        return max(earliest, self._video_frame_of(tail))

    def change_prompt(self, prompt: str, frame: int | None = None, entry: str = "tail", blend: int = 0) -> int:
        """Add a schedule entry while the stream runs (thread-safe, between steps); returns its video frame.

        `prompt` holds from video frame `frame` on (entries at or after it are replaced). Without
        `frame`, `entry` picks it: "tail" is the newest frame in the queue, so the change reaches
        the screen about one queue length (`L` latent frames) after it is made and sweeps through
        the whole queue; "head" is the earliest frame no window has read a prompt for yet, about
        `f / 2` latent frames sooner than "tail" and seen only by the noisier half of the windows.
        `blend > 0` fades the new prompt in over that many video frames, interpolating the two
        prompts' conditioning (text-embedding backbones only; the toy world refuses).
        The entry lands in `self.schedule`, so a fresh run with the recorded schedule (same seed
        and settings) remakes the video frame for frame.
        """
        if entry not in ENTRY_POINTS:
            raise ValueError(f"entry={entry!r}: allowed are {ENTRY_POINTS}")
        if not isinstance(prompt, str) or not prompt.strip() or "\n" in prompt:
            raise ValueError(f"prompt={prompt!r}: must be one non-empty line")
        if isinstance(blend, bool) or not isinstance(blend, int) or blend < 0:
            raise ValueError(f"blend={blend!r}: must be a non-negative integer (video frames)")
        with torch.no_grad():  # called from the app's thread, outside the stream's inference mode
            self._cond(prompt.strip())  # a prompt the backbone refuses fails here, not mid-run
            if blend:
                self._blended(self.schedule.entries[-1][1], prompt.strip(), 0.5)  # a backbone that cannot blend fails here
        with self._steer_lock:
            earliest = self._earliest_frame()
            if frame is None:
                frame = self._entry_frame(entry)
            elif isinstance(frame, bool) or not isinstance(frame, int) or frame < earliest:
                read = earliest - 1
                raise ValueError(f"frame={frame!r}: the run has read the prompts up to frame {read}; give a frame >= {earliest}")
            self.schedule = self.schedule.with_change(frame, prompt, blend)  # one reference swap: steps read old or new, same prompts
        return frame

    # -- known frames: a run that continues the user's clip ----------------------------------------

    def _set_known(self, known: torch.Tensor) -> None:
        """Lay the known latents (C, K, lh, lw) at the start of the run; the video starts after them.

        The last `U = min(K, L)` of them are latent frames `P..P+U-1` of the run, `P` frames of
        pre-roll (copies of the first, never shown) before them so that the queue's first state is
        all known (`U >= f`: `P = L - U`) or the warm-start clip starts with them (`P = L - f`).
        """
        C, lh, lw = self.latent_shape
        ok = torch.is_tensor(known) and known.dim() == 4 and known.shape[1] >= 1
        if not ok or (known.shape[0], *known.shape[2:]) != (C, lh, lw) or not torch.isfinite(known).all():
            shape = tuple(known.shape) if torch.is_tensor(known) else type(known).__name__
            size = f"{self.height}x{self.width}"
            raise ValueError(f"known latents of shape {shape}: expected finite values of shape ({C}, K >= 1, {lh}, {lw}) for {size}")
        known = known.detach().to(self.backbone.device, torch.float32)
        if self._decoder.state_dict():  # a causal decoder: carry its cache through the known frames, output unused
            self._decoder.decode(known)
            self._primed = known.shape[1]
        U = min(known.shape[1], self.L)
        pre = self.L - max(U, self.f)
        used = known[:, -U:]  # (C, U, lh, lw)
        self._known = torch.cat([used[:, :1].expand(-1, pre, -1, -1), used], dim=1)  # (C, Kt, lh, lw)
        self.warmup = self._known.shape[1]

    def _renoised_known(self, latents: list[int], alphas: torch.Tensor, sigmas: torch.Tensor, step: int) -> torch.Tensor:
        """Known latent frames re-noised to the given levels with keyed noise, (C, len(latents), lh, lw)."""
        dev = self.backbone.device
        noise = keyed_normal_frames(self.latent_shape, self.seed, KNOWN, latents, [step] * len(latents)).to(dev)
        a, s = (v.float().to(dev).view(1, -1, 1, 1) for v in (alphas, sigmas))
        return a * self._known[:, latents] + s * noise

    def _hold_known(self, main: torch.Tensor, k: int, stepped: bool = True) -> None:
        """Set the main slots holding known frames (slot i: latent k + i) to the known frame at the slot's level.

        After a step (`stepped`) slot i sits at rung i - 1 (slot 0: clean, so the known frame itself
        is popped and becomes context); at the warm start at rung i.
        """
        if self._known is None or k >= self._known.shape[1]:
            return
        n = min(self._known.shape[1] - k, main.shape[1])
        lad = self.ladder
        a, s = (lad.next_alphas[:n], lad.next_sigmas[:n]) if stepped else (lad.alphas[:n], lad.sigmas[:n])
        main[:, :n] = self._renoised_known(list(range(k, k + n)), a, s, k + 1 if stepped else 0)

    def _known_clip_frames(self, x: torch.Tensor, t: torch.Tensor, first_latent: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The warm-start clip (C, f, lh, lw), latent frames `first_latent..`, and its timesteps (1, f), with
        the known frames in it clean at timestep 0: context, as lookahead gives finished frames.

        (Known frames re-noised to the clip's level instead leave the clip free to pick another
        path while the noise is high: a picture's sprite then jumps; see docs/known-frames.md.)
        """
        n = 0 if self._known is None else min(self._known.shape[1] - first_latent, x.shape[1])
        if n <= 0:
            return x, t
        x, t = x.clone(), t.clone()
        x[:, :n] = self._known[:, first_latent : first_latent + n]
        t[:, :n] = 0
        return x, t

    def _fill_known(self) -> None:
        """The first queue when all L main frames are known: each at its rung's level; context: the first one."""
        L, h, lad = self.L, self.h, self.ladder
        main = self._renoised_known(list(range(L)), lad.alphas, lad.sigmas, 0)
        self.queue = torch.cat([self._known[:, :1].expand(-1, h, -1, -1), main], dim=1)  # (C, h + L, lh, lw)

    # -- the model ------------------------------------------------------------------------------

    def _denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        """One forward call (B, C, F, lh, lw) -> model output in float32."""
        bb = self.backbone
        out = bb.denoise(latents.to(bb.dtype), timesteps, conds, float(self.config.guidance_scale))
        return out.float()

    def _batch_inputs(self, batch: list[Window], k: int) -> tuple[torch.Tensor, Any]:
        """A batch's model timesteps (B, f), fixed per stream, and its conditioning at step k."""
        key = tuple(batch)
        if key not in self._batch_t:
            self._batch_t[key] = torch.stack([self._slot_t[w.start : w.stop] for w in batch])
        if len(self.schedule.entries) == 1:  # one prompt: one cond for the whole batch
            return self._batch_t[key], self._cond(self.schedule.entries[0][1])
        conds = [self._cond_of_latent(k * self.b + (w.start + w.stop) // 2 - self.h) for w in batch]
        return self._batch_t[key], conds

    def _window_outputs(self, queue: torch.Tensor, batches: list[list[Window]]) -> list[tuple[Window, torch.Tensor]]:
        """Model outputs of the written slots of each window, (C, span, lh, lw) views, one forward call per batch."""
        results = []
        for batch in batches:
            lat = torch.stack([queue[:, w.start : w.stop] for w in batch])  # (B, C, f, lh, lw)
            out = self._denoise(lat, *self._batch_inputs(batch, self.step_index))
            results += [(w, out[b, :, w.write_from - w.start :]) for b, w in enumerate(batch)]
        return results

    def _main_outputs(self, queue: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """Model output for main slots `[lo, hi)` as pieces `(lo, hi, (C, hi - lo, lh, lw))` that tile the
        main queue; windows read the queue as it was before the step."""
        return [(w.write_from - self.h, w.stop - self.h, o) for w, o in self._window_outputs(queue, self._batches)]

    # -- warm start, step -----------------------------------------------------------------------

    def _eta_noise(self, frames: list[int], step: int) -> torch.Tensor | None:
        """The keyed noise a step adds to these frames (eta > 0, or the renoise solver); None when it adds none."""
        if self._coef64[2] is None:
            return None
        n = keyed_normal_frames(self.latent_shape, self.seed, ETA, frames, [step] * len(frames))
        return n.to(self.backbone.device)

    def _draw_step_noise(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The keyed draws of step k: eta noise of the L main frames (or None) and the b new tail frames (C, b, lh, lw)."""
        first = k * self.b  # latent frame at the head
        new = list(range(first + self.L, first + self.L + self.b))
        tail = keyed_normal_frames(self.latent_shape, self.seed, TAIL, new, [0] * self.b)
        if self.backbone.device.type == "cuda":  # pinned, so the copy overlaps the denoiser
            tail = tail.pin_memory()
        return self._eta_noise(list(range(first, first + self.L)), k), tail.to(self.backbone.device, non_blocking=True)

    def _step_noise(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The noise step k uses (a hook: `parallel.PipelinedFIFOStream` draws it one step ahead)."""
        return self._draw_step_noise(k)

    def _warm_start_or_interrupt(self) -> bool:
        """Run the warm start, unless `interrupt` (of `steps`) says stop between its model calls; True if done."""
        try:
            with torch.inference_mode():
                self._warm_start()
        except _Interrupted:
            return False
        return True

    def _warm_start(self) -> None:
        """Sample one ordinary f-frame clip in R steps, then fill the queue with it, re-noised per rung."""
        f, L, h, lad = self.f, self.L, self.h, self.ladder
        R = len(lad)
        dev = self.backbone.device
        if self._known is not None and self._known.shape[1] >= L:  # the whole queue is known: no clip to sample
            self._fill_known()
            return
        x = keyed_normal_frames(self.latent_shape, self.seed, BASE, list(range(f)), [0] * f).to(dev)  # (C, f, lh, lw)
        cond = [self._cond_of_latent(L - f)]
        for i in reversed(range(R)):  # every frame of the clip from rung i to i - 1
            if self._interrupt is not None and self._interrupt():
                raise _Interrupted
            t = lad.timesteps[i].float().to(dev).expand(1, f)
            x, t = self._known_clip_frames(x, t, L - f)
            out = self._denoise(x[None], t, cond)[0]
            cx, cout, cn = (None if c is None else float(c[i]) for c in self._coef64)
            x = cx * x + cout * out
            if cn is not None:
                x = x + cn * self._eta_noise([-1 - j for j in range(f)], R - i)
            x, _ = self._known_clip_frames(x, t, L - f)
        src = [max(0, i - (L - f)) for i in range(L)]  # main slot i holds clip frame src[i]
        noise = keyed_normal_frames(self.latent_shape, self.seed, FILL, list(range(L)), [0] * L).to(dev)
        a, s = (per_slot(v, self.b).float().to(dev).view(1, -1, 1, 1) for v in (lad.alphas, lad.sigmas))  # slot i: rung i // b
        main = a * x[:, src] + s * noise
        self.queue = torch.cat([x[:, :1].expand(-1, h, -1, -1), main], dim=1)  # (C, h + L, lh, lw)
        if self._known is not None:  # the clip's copies of known frames, re-noised, are replaced by the known ones
            self._hold_known(self.queue[:, h:], 0, stepped=False)

    def step(self) -> torch.Tensor:
        """One diagonal denoising step with one frame per rung; returns the popped latent (C, lh, lw)."""
        if self.b != 1:
            raise ValueError(f"frames_per_rung={self.b}: a step pops {self.b} latent frames; use step_frames()")
        return self.step_frames()[:, 0]

    def step_frames(self) -> torch.Tensor:
        """One diagonal denoising step: every main frame one rung down; returns the b popped latents (C, b, lh, lw)."""
        self._claim_step()
        if self.queue is None:
            self._warm_start()
        k, h, L, b = self.step_index, self.h, self.L, self.b
        queue = self.queue
        eta_noise, tail = self._step_noise(k)
        pieces = self._main_outputs(queue)
        # The next queue, written in place of a torch.cat: [the last h - b context | main L | tail b];
        # the popped head rung becomes the newest context (lookahead), or is cut off (b > h drops the
        # first b - h slots, h = 0 all b).
        C, _, lh, lw = queue.shape
        keep = max(h - b, 0)
        nxt = queue.new_empty((C, keep + L + b, lh, lw))
        main = nxt[:, keep : keep + L]
        cx, cout, cn = self._coef
        torch.mul(queue[:, h:], cx, out=main)
        for lo, hi, out in pieces:  # straight from the model's output: no (C, L, lh, lw) copy of it
            main[:, lo:hi].addcmul_(out, cout[:, lo:hi])
        if eta_noise is not None:
            main.addcmul_(eta_noise, cn)
        self._hold_known(main, k)
        nxt[:, :keep] = queue[:, h - keep : h]
        nxt[:, keep + L :] = tail
        popped = main[:, :b].clone()
        drop = keep + b - h
        self.queue = nxt[:, drop:] if drop else nxt
        self.step_index = k + 1
        return popped

    # -- frames out -----------------------------------------------------------------------------

    def steps(self, num_frames: int, callback: Callback | None = None, interrupt: Callable[[], bool] | None = None) -> Iterator[Step]:
        """Step the queue until `num_frames` more video frames are handed out, yielding each pass of the loop.

        A pass runs at most one queue step and hands out the frames decoded by then (with decode-ahead
        they come a step later). It never steps further than the frames asked for need.
        `callback(info)` runs after every queue step; a truthy return stops after that step, with
        the frames made so far handed out. Closing the iterator early keeps the stream resumable.
        `interrupt()` is read between the warm start's model calls: true ends the iteration with
        the queue still empty (the warm start is the one long stretch without a step boundary).
        """
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 0:
            raise ValueError(f"num_frames={num_frames!r}: must be a non-negative integer")
        self._interrupt = interrupt
        return self._steps(num_frames, callback)

    def frames(self, num_frames: int, callback: Callback | None = None) -> Iterator[np.ndarray]:
        """Yield the next `num_frames` video frames, uint8 (H, W, 3), each as soon as it is decoded.

        `callback(info)` runs after every step; a truthy return stops the run after that step.
        """
        steps = self.steps(num_frames, callback)
        return self._frames_of(steps)

    def _frames_of(self, steps: Iterator[Step]) -> Iterator[np.ndarray]:
        with contextlib.closing(steps):
            for st in steps:
                for i in range(len(st.frames) if self.decodes else 0):
                    try:
                        yield st.frames[i]
                    except GeneratorExit:  # closed mid-step: the frames not taken stay the stream's
                        self._give_back(st.frames[i + 1 :])
                        raise

    def _give_back(self, frames: np.ndarray) -> None:
        """Frames handed out but not taken go back to the front of the pending ones, uncounted."""
        if len(frames):
            self._pending = np.concatenate([frames, self._pending]) if len(self._pending) else frames
            self.frames_emitted -= len(frames)

    def hand_out(self, left: int) -> np.ndarray:
        """Up to `left` frames decoded but not yet handed out, now counted as emitted (after a stop)."""
        self._drain()
        return self._hand_out(max(left, 0))

    def _hand_out(self, left: int) -> np.ndarray:
        """Up to `left` pending frames, counted as emitted."""
        take, self._pending = self._pending[:left], self._pending[left:]
        self.frames_emitted += len(take)
        return take

    def _steps(self, num_frames: int, callback: Callback | None) -> Iterator[Step]:
        left = num_frames
        callback = self._agree_on_callback(callback)
        with self._running():
            while left > 0:
                t0 = time.perf_counter()
                warm_start = stepped = False
                if not len(self._pending) and not self._collect_ready(left):
                    warm_start, stepped = self.queue is None, True
                    if warm_start and not self._warm_start_or_interrupt():
                        return
                    with torch.inference_mode():  # entered per pass: nothing leaks to the caller between passes
                        first = self.step_index * self.b  # latent index of the first popped frame
                        latents = self.step_frames()  # (C, b, lh, lw)
                        for j in range(self.b):
                            if first + j >= self.warmup:
                                self._decode_popped(latents[:, j], first + j - self.warmup + self._primed)
                    if self._stop_requested(callback, num_frames - left):
                        self._drain()
                        left = min(left, len(self._pending))  # stop: hand out what was stepped
                out = self._hand_out(left)
                left -= len(out)
                if stepped or len(out):
                    yield Step(self.step_index, out, self.frames_emitted, self.warming_up, stepped, time.perf_counter() - t0, warm_start)

    @property
    def warming_up(self) -> bool:
        """True until the first frame of the video has been popped."""
        return self.step_index * self.b <= self.warmup

    def preview(self) -> np.ndarray:
        """A cheap RGB picture of every slot of the queue (no VAE), (h + L, lh, lw, 3) uint8."""
        return np.asarray(self.backbone.preview(self.queue))

    @property
    def slot_timesteps(self) -> torch.Tensor:
        """(h + L,) the model timestep of each slot, head first."""
        return self._slot_t

    # Hooks of the frames loop: `parallel.PipelinedFIFOStream` decodes in a worker thread,
    # `parallel.DistributedFIFOStream` agrees on stopping across ranks and decodes on one rank.
    decodes = True  # False on ranks that only step

    def _decode_popped(self, latent: torch.Tensor, video_latent: int) -> None:
        """Decode the popped latent (the decoder's `video_latent`-th, known latents it was primed with counted);
        its frames join the pending ones."""
        frames = self._decoder.decode(latent[:, None])
        self._pending = frames if not len(self._pending) else np.concatenate([self._pending, frames])

    def _collect_ready(self, left: int) -> bool:
        """Move frames decoded elsewhere into the pending ones; True if any were."""
        return False

    def _drain(self) -> None:
        """Wait for every decode in flight."""

    def _running(self) -> contextlib.AbstractContextManager:
        """What a `frames()` call holds open (worker threads) until it ends or is closed."""
        return contextlib.nullcontext()

    def _agree_on_callback(self, callback: Callback | None) -> Callback | None:
        return callback

    def _stop_requested(self, callback: Callback | None, done: int) -> bool:
        return callback is not None and bool(callback(self._info(done)))

    def _info(self, done: int) -> dict[str, Any]:
        return {
            "step": self.step_index,
            "frames_emitted": self.frames_emitted,
            "warming_up": self.warming_up,
            "timesteps": self._slot_t,  # (h + L,) model timestep of each slot, head first
            "queue": self.queue,  # (C, h + L, lh, lw), read only
            "preview": lambda: self.backbone.preview(self.queue),
            "state": self.state,
        }

    def state(self) -> FIFOState:
        """A CPU snapshot from which a new stream continues exactly where this one is."""
        if self.queue is None:
            self._warm_start()
        return FIFOState(
            queue=self.queue.detach().to("cpu", copy=True),
            step=self.step_index,
            frames_emitted=self.frames_emitted,
            seed=self.seed,
            backbone=self.backbone.name,
            config=self.config.to_dict(),
            height=self.height,
            width=self.width,
            decoder_state=self._decoder.state_dict(),
            pending=torch.from_numpy(self._pending.copy()),
            meta={"prompt": self.schedule.to_text(), "negative_prompt": self.negative_prompt},
            known={} if self._known is None else {
                "latents": self._known.detach().to("cpu", copy=True), "video_start": self.warmup, "primed": self._primed
            },
        )


def generate(
    backbone: Backbone,
    prompt: PromptLike,
    num_frames: int,
    config: FIFOConfig | None = None,
    seed: int | None = None,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    state: FIFOState | None = None,
    callback: Callback | None = None,
    *,
    stream_class: type[FIFOStream] = FIFOStream,
    **options: Any,
) -> Iterator[np.ndarray]:
    """Yield `num_frames` uint8 video frames (H, W, 3) of an unbounded FIFO-Diffusion video.

    `prompt` is a string or a prompt schedule; `state` continues an earlier run (its seed, size and
    queue layout apply; `seed=None` means 0, or the state's). Bad arguments raise ValueError
    here, before any work starts. `stream_class` and `options` pick another stream (see
    `fifo.parallel`), e.g. `stream_class=PipelinedFIFOStream, decode_ahead=True`.
    """
    stream = stream_class(backbone, prompt, config, seed, negative_prompt, height, width, state, **options)
    return stream.frames(num_frames, callback)
