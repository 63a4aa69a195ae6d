"""FIFOConfig: the settings of one FIFO-Diffusion run, frozen and validated.

`None` means "the backbone's default"; `config.resolve(backbone)` returns a copy with every such
field filled in from `backbone.defaults`. Derived values (queue length `L = f * n`, rungs `R = L / b`,
context slots, windows per step) are properties of a resolved config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .schedule import check_frames_per_rung, context_slots, num_rungs, windows

WARMUP_POLICIES = ("discard", "keep")
_DEFAULTED = ("frames_per_window", "partitions", "lookahead", "eta", "guidance_scale", "fps")


@dataclass(frozen=True)
class FIFOConfig:
    """Settings of a run; a `None` field takes the backbone's default in `resolve`."""

    frames_per_window: int | None = None  # f: latent frames per model call
    partitions: int | None = None  # n: the queue holds L = f * n rungs
    lookahead: bool | None = None  # lookahead denoising: 2n windows, f // 2 context frames
    eta: float | None = None  # DDIM stochasticity in [0, 1]; 0 for flow models
    guidance_scale: float | None = None  # classifier-free guidance; 1 turns it off
    fps: int | None = None  # frames per second of the written video
    warmup: str = "discard"  # the first L - f popped frames: "discard" or "keep" in the video
    window_batch: int | None = None  # windows per forward call; None: all of a step in one call
    frames_per_rung: int | None = None  # b: latent frames per noise level; None: the backbone's (1 unless it says)

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"{field}={getattr(self, field)!r}: {allowed}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.frames_per_window is not None and (not is_int(self.frames_per_window) or not 2 <= self.frames_per_window <= 256):
            raise bad("frames_per_window", "must be an integer in [2, 256]")
        if self.partitions is not None and (not is_int(self.partitions) or not 1 <= self.partitions <= 64):
            raise bad("partitions", "must be an integer in [1, 64]")
        if self.lookahead is not None and not isinstance(self.lookahead, bool):
            raise bad("lookahead", "must be True or False")
        if self.eta is not None and (isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0):
            raise bad("eta", "must be a number in [0, 1]")
        if self.guidance_scale is not None and (
            isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or not 1.0 <= self.guidance_scale <= 50.0
        ):
            raise bad("guidance_scale", "must be a number in [1, 50] (1 turns guidance off)")
        if self.fps is not None and (not is_int(self.fps) or not 1 <= self.fps <= 120):
            raise bad("fps", "must be an integer in [1, 120]")
        if self.warmup not in WARMUP_POLICIES:
            raise bad("warmup", f"allowed are {WARMUP_POLICIES}")
        if self.window_batch is not None and (not is_int(self.window_batch) or self.window_batch < 1):
            raise bad("window_batch", "must be an integer >= 1, or None for all windows in one call")
        if self.frames_per_rung is not None:
            if not is_int(self.frames_per_rung) or not 1 <= self.frames_per_rung <= 256:
                raise bad("frames_per_rung", "must be an integer in [1, 256]")
            if self.frames_per_window is not None and self.lookahead is not None:
                check_frames_per_rung(self.frames_per_window, self.lookahead, self.frames_per_rung)

    @property
    def is_resolved(self) -> bool:
        """True when no field is left to the backbone's default."""
        return all(getattr(self, k) is not None for k in _DEFAULTED)

    def resolve(self, backbone) -> "FIFOConfig":
        """A copy with every `None` field taken from `backbone.defaults`; checks the backbone's limits."""
        d = backbone.defaults
        cfg = dataclasses.replace(self, **{k: getattr(d, k) for k in _DEFAULTED if getattr(self, k) is None})
        if cfg.frames_per_rung is None:  # a backbone without the field: one frame per rung, the paper's FIFO
            cfg = dataclasses.replace(cfg, frames_per_rung=getattr(d, "frames_per_rung", 1))
        check_frames_per_rung(cfg.frames_per_window, cfg.lookahead, cfg.frames_per_rung)
        if backbone.prediction_type == "flow" and cfg.eta != 0:
            raise ValueError(f"eta={cfg.eta!r}: {backbone.name} is a flow-matching model, whose Euler step is deterministic; use eta=0")
        return cfg

    def _need_resolved(self) -> None:
        if not self.is_resolved:
            missing = [k for k in _DEFAULTED if getattr(self, k) is None]
            raise ValueError(f"this FIFOConfig leaves {missing} to the backbone: call config.resolve(backbone) first")

    @property
    def _b(self) -> int:
        # frames_per_rung left as None outside `resolve` means what every backbone without the field gets: 1
        return 1 if self.frames_per_rung is None else self.frames_per_rung

    @property
    def queue_length(self) -> int:
        """`L = f * n`: latent frames (slots) in the main queue."""
        self._need_resolved()
        return self.frames_per_window * self.partitions

    @property
    def rungs(self) -> int:
        """`R = f * n / b`: noise levels in the main queue, = denoising steps each frame receives."""
        self._need_resolved()
        return num_rungs(self.frames_per_window, self.partitions, self._b)

    @property
    def steps(self) -> int:
        """Denoising steps each frame receives (= rungs; = queue length when b = 1)."""
        return self.rungs

    @property
    def windows_per_frame(self) -> float:
        """Window calls per emitted latent frame: `n / b`, `2n / b` with lookahead (guidance doubles each)."""
        return len(self.windows) / self._b

    @property
    def context(self) -> int:
        """`h`: finished frames kept before the head (f // 2 with lookahead, else 0)."""
        self._need_resolved()
        return context_slots(self.frames_per_window, self.lookahead)

    @property
    def num_slots(self) -> int:
        """Context plus main slots, `h + L`."""
        return self.context + self.queue_length

    @property
    def warmup_frames(self) -> int:
        """Latent frames popped before the video starts: `L - f` with warmup='discard', else 0."""
        return self.queue_length - self.frames_per_window if self.warmup == "discard" else 0

    @property
    def warmup_steps(self) -> int:
        """Steps whose popped frames are all warm-up: `warmup_frames / b`."""
        return self.warmup_frames // self._b

    @property
    def windows(self):
        """The windows of one step (see `schedule.windows`)."""
        self._need_resolved()
        return windows(self.frames_per_window, self.partitions, self.lookahead, self._b)

    def to_dict(self) -> dict:
        """Plain dict of the fields (for metadata, share links and saved states)."""
        return dataclasses.asdict(self)
