"""The queue arithmetic, in one place: noise schedules, the ladder of rungs, the window layout.

Legend (the paper's notation -> names here):
    f              frames_per_window    latent frames per model call
    n              partitions           blocks of f frames (f / b rungs) in the queue
    b              frames_per_rung      consecutive latent frames sharing one noise level
    L = f * n      queue_length         main-queue slots (latent frames)
    R = L / b      rungs                ladder length, = denoising steps each frame receives
    h = f // 2     context              finished frames before the head (lookahead only)
    tau_i          ladder.timesteps[i]  model timestep of main slot i (0 = head, least noisy)
    alpha-bar      ladder.alphas        signal coefficient a_i of x_t = a_i x_0 + s_i eps
    sigma          ladder.sigmas        noise coefficient s_i

Slot numbering: overall slot `j` in `[0, h + L)`; slots `[0, h)` hold context frames, slot
`h + i` holds the main-queue frame at rung `i // b`. A step moves every main frame one rung down,
the `b` frames at rung 0 to clean, and pops them. With `b = 1` slot and rung coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

SCHEDULE_KINDS = ("vp", "flow")


@dataclass(frozen=True)
class NoiseSchedule:
    """A model's training noise schedule: variance-preserving (`alphas_cumprod`) or flow matching."""

    kind: str  # "vp" | "flow"
    num_train_timesteps: int = 1000
    alphas_cumprod: tuple[float, ...] | None = None  # vp only, length num_train_timesteps
    shift: float = 1.0  # flow only: sigma -> shift * sigma / (1 + (shift - 1) * sigma)
    # vp only, length num_train_timesteps: x_t = sqrt(ac) * signal_scale[t] * x_0 + sqrt(1 - ac) * eps
    # (VideoCrafter2's latent rescale); None: 1 everywhere
    signal_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind={self.kind!r}: allowed are {SCHEDULE_KINDS}")
        if self.kind == "vp":
            if self.alphas_cumprod is None or len(self.alphas_cumprod) != self.num_train_timesteps:
                raise ValueError("a vp schedule needs alphas_cumprod of length num_train_timesteps")
            if self.signal_scale is not None and (
                len(self.signal_scale) != self.num_train_timesteps or not all(v > 0 for v in self.signal_scale)
            ):
                raise ValueError("signal_scale: must be num_train_timesteps values > 0")
        elif self.signal_scale is not None:
            raise ValueError("signal_scale applies to vp schedules only")
        if self.kind == "flow" and self.shift <= 0:
            raise ValueError(f"shift={self.shift}: must be > 0")

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000) -> "NoiseSchedule":
        """Stable Diffusion's (and ModelScope's) `scaled_linear` betas, as a vp schedule."""
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
        return cls("vp", num_train_timesteps, tuple(np.cumprod(1.0 - betas).tolist()))

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """Read a diffusers scheduler; multistep schedulers are refused (FIFO steps each frame alone)."""
        name = type(scheduler).__name__
        if "Multistep" in name or getattr(scheduler, "order", 1) != 1:
            raise ValueError(
                f"{name} is a multistep scheduler: it keeps a history per sample, which a queue of frames "
                "at different noise levels does not have; use a single-step scheduler (DDIMScheduler, "
                "or FlowMatchEulerDiscreteScheduler with the same shift)"
            )
        cfg = scheduler.config
        if hasattr(scheduler, "alphas_cumprod"):
            ac = scheduler.alphas_cumprod
            ac = ac.double().tolist() if torch.is_tensor(ac) else list(map(float, ac))
            return cls("vp", int(cfg.num_train_timesteps), tuple(ac))
        if "shift" in cfg:
            if cfg.get("use_dynamic_shifting", False):
                raise ValueError(f"{name} with use_dynamic_shifting=True: FIFO needs a fixed shift")
            return cls("flow", int(cfg.num_train_timesteps), None, float(cfg.shift))
        raise ValueError(f"{name}: neither alphas_cumprod (DDIM-style) nor a flow shift found")


@dataclass(frozen=True)
class Ladder:
    """The `L` rungs of the main queue, head (least noisy) first, and where each rung steps to.

    `x_t = alphas[i] * x_0 + sigmas[i] * eps` at rung `i`; `next_alphas[i]`, `next_sigmas[i]` are
    rung `i - 1`'s, and clean (1, 0) for rung 0.
    """

    kind: str
    timesteps: torch.Tensor  # (L,) float64, model timestep of each rung
    alphas: torch.Tensor  # (L,) float64
    sigmas: torch.Tensor  # (L,) float64
    next_alphas: torch.Tensor  # (L,) float64
    next_sigmas: torch.Tensor  # (L,) float64

    def __len__(self) -> int:
        return self.timesteps.shape[0]


def make_ladder(schedule: NoiseSchedule, length: int) -> Ladder:
    """`length` rungs over the schedule's whole range: the last pure noise, the first one step from clean."""
    if length < 1:
        raise ValueError(f"length={length}: must be >= 1")
    T = schedule.num_train_timesteps
    if length > T:
        raise ValueError(f"length={length}: at most num_train_timesteps={T} rungs")
    if schedule.kind == "vp":
        t = trailing_timesteps(T, length)
        idx = torch.from_numpy(t)
        ac = torch.tensor(schedule.alphas_cumprod, dtype=torch.float64)[idx]
        timesteps = torch.from_numpy(t).double()
        alphas, sigmas = ac.sqrt(), (1 - ac).sqrt()
        if schedule.signal_scale is not None:
            alphas = alphas * torch.tensor(schedule.signal_scale, dtype=torch.float64)[idx]
    else:
        # FlowMatchEulerDiscreteScheduler.set_timesteps: linspace in timestep between the
        # (shifted) training extremes, then the shift applied to the sigmas.
        sigma_min = _shift(1.0 / T, schedule.shift)
        s = np.linspace(1.0 * T, sigma_min * T, length)[::-1].copy() / T
        s = torch.from_numpy(_shift(s, schedule.shift)).double()
        timesteps, alphas, sigmas = s * T, 1 - s, s
    return _ladder(schedule.kind, timesteps, alphas, sigmas)


def distilled_ladder(schedule: NoiseSchedule, timesteps) -> Ladder:
    """A step-distilled model's ladder: exactly its sampling timesteps (given noisiest first), rung 0 the least noisy.

    Flow models: sigma = t / T, the relation the model was trained with (a flow scheduler's
    timesteps are its shifted sigmas times T, so no shift enters). VP models: `alphas_cumprod[t]`,
    integer t only.
    """
    t = [float(v) for v in timesteps]
    T = schedule.num_train_timesteps
    if not t or any(not a > b for a, b in zip(t, t[1:])) or not 0 < t[-1] <= t[0] <= T:
        raise ValueError(f"timesteps={tuple(t)!r}: must be strictly decreasing, in (0, {T}]")
    ts = torch.tensor(t[::-1], dtype=torch.float64)  # (R,) ascending: rung 0 first
    if schedule.kind == "flow":
        sigmas = ts / T
        return _ladder("flow", ts, 1 - sigmas, sigmas)
    if any(v != int(v) or v >= T for v in t):
        raise ValueError(f"timesteps={tuple(t)!r}: a vp schedule takes integer timesteps in [0, {T - 1}]")
    idx = ts.long()
    ac = torch.tensor(schedule.alphas_cumprod, dtype=torch.float64)[idx]
    alphas = ac.sqrt()
    if schedule.signal_scale is not None:
        alphas = alphas * torch.tensor(schedule.signal_scale, dtype=torch.float64)[idx]
    return _ladder("vp", ts, alphas, (1 - ac).sqrt())


def _ladder(kind: str, timesteps: torch.Tensor, alphas: torch.Tensor, sigmas: torch.Tensor) -> Ladder:
    """A Ladder from per-rung values, head first; each rung steps to the one before, rung 0 to clean (1, 0)."""
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return Ladder(kind, timesteps, alphas, sigmas, torch.cat([one, alphas[:-1]]), torch.cat([zero, sigmas[:-1]]))


def videocrafter_signal_scale(
    num_train_timesteps: int = 1000, scale_a: float = 1.0, scale_b: float = 0.7, mid_step: int = 400
) -> tuple[float, ...]:
    """VideoCrafter's `use_scale` factors per timestep: `scale_a` to `scale_b` linearly over the first
    `mid_step` timesteps (`np.linspace`, both ends included), `scale_b` above."""
    if not 1 <= mid_step <= num_train_timesteps:
        raise ValueError(f"mid_step={mid_step}: must be in [1, {num_train_timesteps}]")
    ramp = np.linspace(scale_a, scale_b, mid_step)
    return tuple(np.concatenate([ramp, np.full(num_train_timesteps - mid_step, scale_b)]).tolist())


def trailing_timesteps(num_train_timesteps: int, length: int) -> np.ndarray:
    """diffusers' "trailing" spacing in exact integers: rung i (1-based) at round(i T / L) - 1, ascending.

    diffusers computes `np.round(np.arange(T, 0, -T / L)) - 1`; with a float step, `arange` can
    yield one value too many (e.g. T = 1000, L = 122: 123 rungs, the last at t = -1). Here
    `round(i T / L)` is computed on integers, halves to even like `np.round`, so there are always
    exactly L rungs, the top one at T - 1.
    """
    T, L = num_train_timesteps, length
    num = np.arange(1, L + 1, dtype=np.int64) * T  # i * T, exact
    q, r = num // L, num % L
    up = (2 * r > L) | ((2 * r == L) & (q % 2 == 1))  # round half to even
    return q + up.astype(np.int64) - 1


def _shift(sigma, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


class Window(NamedTuple):
    """One model call's slots: it reads overall slots `[start, stop)` and writes `[write_from, stop)`."""

    start: int
    write_from: int
    stop: int


def context_slots(frames_per_window: int, lookahead: bool) -> int:
    """`h`: finished frames kept before the head, `f // 2` with lookahead, 0 without."""
    return frames_per_window // 2 if lookahead else 0


def allowed_frames_per_rung(frames_per_window: int, lookahead: bool) -> tuple[int, ...]:
    """The `b` that `f` and lookahead allow: those whose rungs no window's written span splits.

    Without lookahead a window writes all `f` of its slots, so `b` divides `f`. With lookahead the
    written spans are `ceil(f/2)` and `floor(f/2)`, so `b` divides `f // 2` for even `f`; for odd
    `f` the two spans are coprime and only `b = 1` remains.
    """
    f = frames_per_window
    span = f if not lookahead else (f // 2 if f % 2 == 0 else 1)
    return tuple(d for d in range(1, span + 1) if span % d == 0)


def check_frames_per_rung(frames_per_window: int, lookahead: bool, frames_per_rung: int) -> None:
    """Raise ValueError unless `frames_per_rung` is one of `allowed_frames_per_rung(f, lookahead)`."""
    allowed = allowed_frames_per_rung(frames_per_window, lookahead)
    if frames_per_rung not in allowed:
        rule = "must divide f" if not lookahead else "must divide f // 2 (1 for odd f)"
        raise ValueError(
            f"frames_per_rung={frames_per_rung!r}: with frames_per_window={frames_per_window} and "
            f"lookahead={lookahead} it {rule}; allowed are {list(allowed)}"
        )


def num_rungs(frames_per_window: int, partitions: int, frames_per_rung: int = 1) -> int:
    """`R = f * n / b`: rungs of the ladder, = denoising steps each frame receives."""
    return frames_per_window * partitions // frames_per_rung


def per_slot(values: torch.Tensor, frames_per_rung: int) -> torch.Tensor:
    """A per-rung tensor `(R, ...)` spread to the main slots `(R * b, ...)`: slot `i` takes rung `i // b`."""
    return values if frames_per_rung == 1 else values.repeat_interleave(frames_per_rung, dim=0)


def windows(frames_per_window: int, partitions: int, lookahead: bool, frames_per_rung: int = 1) -> list[Window]:
    """The windows of one step, in queue order; their written spans tile the main queue once.

    Without lookahead: `n` windows of `f` slots, each written whole. With lookahead: `2n` windows
    over the `h + L` slots; written spans alternate `ceil(f/2)` and `floor(f/2)` slots, and each
    window reads the `f` slots ending with its span, so every frame sees at least `h` cleaner
    frames in front of it. The layout in slots does not depend on `b`; `b` must keep every rung
    inside one written span (see `allowed_frames_per_rung`), so a rung's frames share a call.
    """
    f, n = frames_per_window, partitions
    if f < 2:
        raise ValueError(f"frames_per_window={f}: must be >= 2")
    if n < 1:
        raise ValueError(f"partitions={n}: must be >= 1")
    check_frames_per_rung(f, lookahead, frames_per_rung)
    h = context_slots(f, lookahead)
    spans = [f] * n if not lookahead else [math.ceil(f / 2), f // 2] * n
    out, stop = [], h
    for span in spans:
        write_from, stop = stop, stop + span
        out.append(Window(stop - f, write_from, stop))
    return out


def slot_timesteps(ladder: Ladder, context: int, frames_per_rung: int = 1) -> torch.Tensor:
    """Model timestep of every overall slot: context slots at 0 (finished, clean frames), main slot `i` at rung `i // b`."""
    return torch.cat([ladder.timesteps.new_zeros(context), per_slot(ladder.timesteps, frames_per_rung)])


def window_batches(wins: list[Window], max_batch: int | None) -> list[list[Window]]:
    """Group windows into forward calls of at most `max_batch` windows (None: all in one call)."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: must be >= 1 or None")
    size = len(wins) if max_batch is None else max_batch
    return [wins[i : i + size] for i in range(0, len(wins), size)]
