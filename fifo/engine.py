"""The FIFO queue: warm start, diagonal denoising step, pop and push, state to save and resume.

Symbols as in `schedule.py`: `f` frames per window, `n` partitions, `L = f * n` rungs, `h`
context slots. At step `k` (= latent frames popped so far) main slot `i` holds latent frame
`k + i` at rung `i`; context slot `c` holds the finished frame `k - h + c`. Every random draw is
keyed by (seed, frame, step), so the frames do not depend on how the windows are batched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .backbones.base import Backbone, video_frames_before
from .config import FIFOConfig
from .noise import BASE, ETA, FILL, TAIL, keyed_normal, keyed_normal_frames
from .prompts import PromptLike, PromptSchedule
from .schedule import Window, make_ladder, slot_timesteps, window_batches
from .solvers import step_coefficients

Callback = Callable[[dict[str, Any]], Any]
_LAYOUT_FIELDS = ("frames_per_window", "partitions", "lookahead", "warmup")


@dataclass
class FIFOState:
    """Everything needed to continue a run: the queue, counters, the decoder's cache; on CPU."""

    queue: torch.Tensor  # (C, h + L, lh, lw) float32
    step: int  # latent frames popped so far (warm-up included)
    frames_emitted: int  # video frames yielded so far
    seed: int
    backbone: str
    config: dict  # the resolved FIFOConfig's fields
    height: int
    width: int
    decoder_state: dict = field(default_factory=dict)
    pending: torch.Tensor | None = None  # (N, H, W, 3) uint8: decoded but not yet yielded
    meta: dict = field(default_factory=dict)  # what made it: {"prompt": schedule text, "negative_prompt": str}

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to one file (torch.save of plain tensors, ints and strings)."""
        torch.save(dataclasses.asdict(self), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FIFOState":
        """Read a state written by `save` (weights_only: a state file cannot run code)."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**d)
        except Exception as e:  # a truncated or foreign file: one clear line, not a pickle trace
            raise ValueError(f"{os.fspath(path)!r} is not a fifo state file ({type(e).__name__}: {e})") from None


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

        self.ladder = make_ladder(backbone.noise_schedule, cfg.queue_length)
        self.h, self.L, self.f = cfg.context, cfg.queue_length, cfg.frames_per_window
        dev = backbone.device
        self._batches = window_batches(cfg.windows, cfg.window_batch)
        self._slot_t = slot_timesteps(self.ladder, self.h).float().to(dev)  # (h + L,)
        lad = self.ladder
        self._coef64 = step_coefficients(lad.alphas, lad.sigmas, lad.next_alphas, lad.next_sigmas, backbone.prediction_type, cfg.eta)
        # (1, L, 1, 1) per main slot: x' = c_x x + c_out out (+ c_noise z)
        self._coef = tuple(None if v is None else v.float().to(dev).view(1, -1, 1, 1) for v in self._coef64)
        self._conds: dict[str, Any] = {}
        self._batch_t: dict[tuple[Window, ...], torch.Tensor] = {}
        self._decoder = backbone.decoder()
        self.queue: torch.Tensor | None = None  # (C, h + L, lh, lw) float32, on the backbone's device
        self._interrupt: Callable[[], bool] | None = None  # read during the warm start (see `steps`)
        self.step_index = 0
        self.frames_emitted = 0
        self._pending = np.zeros((0, self.height, self.width, 3), np.uint8)
        if state is not None:
            self.queue = state.queue.to(dev, torch.float32)
            self.step_index, self.frames_emitted = state.step, state.frames_emitted
            self._decoder.load_state_dict(state.decoder_state)
            if state.pending is not None:
                self._pending = state.pending.numpy()

    def _check_resume(self, state: FIFOState, config: FIFOConfig, seed, height, width):
        """Take the layout, seed and size from the state; refuse a request that contradicts it."""
        if state.backbone != self.backbone.name:
            raise ValueError(f"state was made by backbone {state.backbone!r}, not {self.backbone.name!r}")
        for name, given, saved in (("seed", seed, state.seed), ("height", height, state.height), ("width", width, state.width)):
            if given is not None and given != saved:
                raise ValueError(f"{name}={given!r} contradicts the state being continued ({name}={saved!r})")
        fields = {}
        for k in _LAYOUT_FIELDS:
            given, saved = getattr(config, k), state.config[k]
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

    def _prompt_of_latent(self, latent_frame: int) -> str:
        """The prompt of the video frame that latent frame `latent_frame` becomes."""
        j = latent_frame - self.config.warmup_frames
        return self.schedule.prompt_at(video_frames_before(j, self.backbone.temporal_compression))

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
        conds = [self._cond(self._prompt_of_latent(k + (w.start + w.stop) // 2 - self.h)) for w in batch]
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
        if self.config.eta == 0:
            return None
        n = keyed_normal_frames(self.latent_shape, self.seed, ETA, frames, [step] * len(frames))
        return n.to(self.backbone.device)

    def _draw_step_noise(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The keyed draws of step k: eta noise of the L main frames (or None) and the new tail frame."""
        tail = keyed_normal(self.latent_shape, self.seed, TAIL, k + self.L)
        if self.backbone.device.type == "cuda":  # pinned, so the copy overlaps the denoiser
            tail = tail.pin_memory()
        return self._eta_noise(list(range(k, k + self.L)), k), tail.to(self.backbone.device, non_blocking=True)

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
        """Sample one ordinary f-frame clip in L steps, then fill the queue with it, re-noised per rung."""
        f, L, h, lad = self.f, self.L, self.h, self.ladder
        dev = self.backbone.device
        x = keyed_normal_frames(self.latent_shape, self.seed, BASE, list(range(f)), [0] * f).to(dev)  # (C, f, lh, lw)
        cond = [self._cond(self._prompt_of_latent(L - f))]
        for i in reversed(range(L)):  # every frame of the clip from rung i to i - 1
            if self._interrupt is not None and self._interrupt():
                raise _Interrupted
            t = lad.timesteps[i].float().to(dev).expand(1, f)
            out = self._denoise(x[None], t, cond)[0]
            cx, cout, cn = (None if c is None else float(c[i]) for c in self._coef64)
            x = cx * x + cout * out
            if cn is not None:
                x = x + cn * self._eta_noise([-1 - j for j in range(f)], L - i)
        src = [max(0, i - (L - f)) for i in range(L)]  # main slot i holds clip frame src[i]
        noise = keyed_normal_frames(self.latent_shape, self.seed, FILL, list(range(L)), [0] * L).to(dev)
        a, s = (v.float().to(dev).view(1, -1, 1, 1) for v in (lad.alphas, lad.sigmas))
        main = a * x[:, src] + s * noise
        self.queue = torch.cat([x[:, :1].expand(-1, h, -1, -1), main], dim=1)  # (C, h + L, lh, lw)

    def step(self) -> torch.Tensor:
        """One diagonal denoising step: every main frame one rung down; returns the popped latent (C, lh, lw)."""
        if self.queue is None:
            self._warm_start()
        k, h, L = self.step_index, self.h, self.L
        queue = self.queue
        eta_noise, tail = self._step_noise(k)
        pieces = self._main_outputs(queue)
        # The next queue, written in place of a torch.cat: [context h-1 | main L | tail] with
        # lookahead (the popped head becomes the newest context frame), [head | main L-1 | tail] without.
        C, _, lh, lw = queue.shape
        keep = max(h - 1, 0)
        nxt = queue.new_empty((C, keep + L + 1, lh, lw))
        main = nxt[:, keep : keep + L]
        cx, cout, cn = self._coef
        torch.mul(queue[:, h:], cx, out=main)
        for lo, hi, out in pieces:  # straight from the model's output: no (C, L, lh, lw) copy of it
            main[:, lo:hi].addcmul_(out, cout[:, lo:hi])
        if eta_noise is not None:
            main.addcmul_(eta_noise, cn)
        nxt[:, :keep] = queue[:, 1:h]
        nxt[:, keep + L] = tail
        popped = main[:, 0].clone()
        self.queue = nxt if h else nxt[:, 1:]
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
                        popped_index = self.step_index
                        latent = self.step()
                        if popped_index >= self.config.warmup_frames:
                            self._decode_popped(latent, popped_index - self.config.warmup_frames)
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
        return self.step_index <= self.config.warmup_frames

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
        """Decode the popped latent (the video's `video_latent`-th) into the pending frames."""
        self._pending = self._decoder.decode(latent[:, None])

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
