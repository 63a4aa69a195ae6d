"""FIFOConfig: the settings of one FIFO-Diffusion run, frozen and validated; and `SETTINGS`, the one
declaration of each knob from which the command line, the app's controls, share links, MP4 metadata
and estimates are derived.

`None` means "the backbone's default"; `config.resolve(backbone)` returns a copy with every such
field filled in from `backbone.defaults`. Derived values (queue length `L = f * n`, rungs `R = L / b`,
context slots, windows per step) are properties of a resolved config.

Legend (code name -> paper notation):
    frames_per_window  f    latent frames the model sees per call
    partitions         n    the queue holds L = f * n latent frames
    frames_per_rung    b    latent frames per noise level (1 in the paper): R = L / b rungs
    lookahead          -    lookahead denoising: 2n windows, h = f // 2 context frames
    eta                eta  DDIM stochasticity
    guidance_scale     w    classifier-free guidance weight
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .schedule import allowed_frames_per_rung, check_frames_per_rung, context_slots, num_rungs, windows

WARMUP_POLICIES = ("discard", "keep")


@dataclass(frozen=True)
class Setting:
    """One knob, declared once. Its `name` is the FIFOConfig field (or run field), the CLI flag
    (`--frames-per-window`), the app's API parameter, the share-link key and the MP4 metadata key."""

    name: str
    kind: type  # int, float, bool or str
    label: str  # the app control's label
    help: str  # one line, for the CLI and the app
    low: float | None = None  # numbers: the allowed range, inclusive
    high: float | None = None
    choices: tuple[Any, ...] = ()  # str: the allowed values; numbers: common values the app offers
    default: Any = None  # None: the backbone's own (`BackboneDefaults.<name>`)
    note: str = ""  # appended to the allowed range in messages
    config: bool = True  # a FIFOConfig field; False: a run field (the video's size)
    app: bool = True  # an advanced control in the app (and so a share-link key)

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return "--" + self.name.replace("_", "-")

    @property
    def allowed(self) -> str:
        """What is allowed, in words: 'must be an integer in [1, 64]'."""
        if self.kind is bool:
            text = "must be True or False"
        elif self.kind is str:
            text = f"allowed are {self.choices}"
        else:
            noun = "an integer" if self.kind is int else "a number"
            hi = "" if self.high is None else f", {self.high:g}]"
            text = f"must be {noun} in [{self.low:g}{hi}" if hi else f"must be {noun} >= {self.low:g}"
        return text + (f" {self.note}" if self.note else "")

    def check(self, value: Any) -> Any:
        """`value` if it is allowed (None always is), else ValueError naming the setting and the value."""
        if value is None:
            return None
        ok = _is_kind(value, self.kind)
        if ok and self.kind is str:
            ok = value in self.choices
        elif ok and self.kind in (int, float):
            ok = math.isfinite(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            raise ValueError(f"{self.name}={value!r}: {self.allowed}")
        return value


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


# The one declaration of each setting. Order is the order of the CLI group, the app's controls and
# the app's API parameters.
SETTINGS: tuple[Setting, ...] = (
    Setting("frames_per_window", int, "frames per window", "f: latent frames per model call", 2, 256, app=False),
    Setting("partitions", int, "partitions", "n: the queue holds f*n rungs (more: slower, smoother)", 1, 64, (1, 2, 3, 4, 6, 8)),
    Setting("lookahead", bool, "lookahead", "lookahead denoising (twice the compute, better frames)", choices=(True, False)),
    Setting("eta", float, "eta", "DDIM stochasticity; 0 for flow models", 0, 1, (0, 0.25, 0.5, 1)),
    Setting("guidance_scale", float, "guidance scale", "classifier-free guidance", 1, 50, (1, 3, 5, 7.5, 9, 12, 15), note="(1 turns guidance off)"),
    Setting("fps", int, "fps", "frames per second of the video", 1, 120, (8, 12, 16, 24, 30)),
    Setting("height", int, "height", "pixels", 8, 4096, (64, 96, 128, 256, 320, 480, 512, 544), config=False),
    Setting("width", int, "width", "pixels", 8, 4096, (64, 96, 128, 256, 512, 576, 832, 960), config=False),
    Setting("frames_per_rung", int, "frames per rung", "b: latent frames per noise level; divides f (f//2 with lookahead); b times fewer calls per frame", 1, 256, (1, 2, 4, 8)),
    Setting("warmup", str, "warm-up frames", "keep the L-f warm-up frames in the video?", choices=WARMUP_POLICIES, default="discard", app=False),
    Setting("window_batch", int, "windows per call", "windows per forward call (default: all of a step in one call)", 1, note="(None: all windows in one call)", app=False),
)  # fmt: skip
SETTING: dict[str, Setting] = {s.name: s for s in SETTINGS}
APP_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.app)
CONFIG_FIELDS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.config)
# fields left to the backbone when None (window_batch's None means "all windows"; frames_per_rung is resolved on its own)
_DEFAULTED = tuple(s.name for s in SETTINGS if s.config and s.default is None and s.name not in ("window_batch", "frames_per_rung"))


def distilled_layouts(frames_per_window: int, steps: int, max_partitions: int = 64) -> list[tuple[int, int, bool]]:
    """The (partitions, frames_per_rung, lookahead) that give a window of `f` frames exactly `steps` rungs."""
    f = frames_per_window
    out = []
    for lookahead in (False, True):
        for b in allowed_frames_per_rung(f, lookahead):
            if (steps * b) % f == 0 and 1 <= steps * b // f <= max_partitions:
                out.append((steps * b // f, b, lookahead))
    return out


def _check_distilled(f: int, n: int, b: int, la: bool, guidance_scale: float, backbone) -> None:
    """A step-distilled backbone: the queue's rungs must be its steps, and guidance off where it was distilled in."""
    dist, name = backbone.distilled, backbone.name
    ok = num_rungs(f, n, b) == dist.steps and (f * n) % b == 0 and b in allowed_frames_per_rung(f, la)
    if not ok:
        ways = distilled_layouts(f, dist.steps)
        blocks = " (one level a window: independent blocks)"
        said = "; ".join(
            f"partitions={p}, frames_per_rung={r}, lookahead={'on' if l else 'off'}" + (blocks if r == f else "") for p, r, l in ways
        )
        raise ValueError(
            f"frames_per_window={f}, partitions={n}, frames_per_rung={b}, lookahead={'on' if la else 'off'}: "
            f"{name} was distilled for {dist.steps} denoising steps (timesteps {', '.join(f'{t:g}' for t in dist.timesteps)}) "
            f"and samples at no other level, so f * n / b must be {dist.steps}; "
            + (f"with f={f} that is {said}" if ways else f"no layout gives that with f={f}")
        )
    if not dist.guidance and guidance_scale != 1:
        raise ValueError(f"guidance_scale={guidance_scale!r}: {name} has classifier-free guidance distilled into it; use 1")


def backbone_default(name: str, defaults: Any) -> Any:
    """The value setting `name` takes when left unset, with these backbone defaults."""
    s = SETTING[name]
    return getattr(defaults, name) if s.default is None else s.default


@dataclass(frozen=True)
class FIFOConfig:
    """Settings of a run; a `None` field takes the backbone's default in `resolve` (see `SETTINGS`)."""

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
        if self.warmup is None:
            raise ValueError(f"warmup=None: {SETTING['warmup'].allowed}")
        for name in CONFIG_FIELDS:
            SETTING[name].check(getattr(self, name))
        if self.frames_per_rung is not None and self.frames_per_window is not None and self.lookahead is not None:
            check_frames_per_rung(self.frames_per_window, self.lookahead, self.frames_per_rung)

    @property
    def is_resolved(self) -> bool:
        """True when no field is left to the backbone's default."""
        return all(getattr(self, k) is not None for k in _DEFAULTED)

    def resolve(self, backbone) -> "FIFOConfig":
        """A copy with every `None` field taken from `backbone.defaults`; checks the backbone's limits."""
        d = backbone.defaults
        cfg = dataclasses.replace(self, **{k: getattr(d, k) for k in _DEFAULTED if getattr(self, k) is None})
        b = getattr(d, "frames_per_rung", 1) if cfg.frames_per_rung is None else cfg.frames_per_rung
        if getattr(backbone, "distilled", None) is not None:  # before the layout check: its message names the layouts that work
            _check_distilled(cfg.frames_per_window, cfg.partitions, b, cfg.lookahead, cfg.guidance_scale, backbone)
        if cfg.frames_per_rung is None:  # a backbone without the field: one frame per rung, the paper's FIFO
            cfg = dataclasses.replace(cfg, frames_per_rung=b)
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
