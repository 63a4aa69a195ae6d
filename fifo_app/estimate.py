"""How long a run will take: model calls counted from the queue layout, timed by measured rates.

The unit of work is one window: `f` latent frames through the model once. A fresh run costs `L`
of them for the warm start (one clip sampled in `L` steps), then `windows` per step for the
`L - f` warm-up steps and one step per latent frame of video. Rates are learned per backbone,
latent size and window length from the runs themselves, so estimates sharpen with use.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from fifo import FIFOConfig, latents_for_frames

# Before a model has run here, its seconds per window are a guess: the toy world is calibrated at
# start-up; for real models this is a rough figure for one fp16 window on a datacentre GPU.
GUESS_SECONDS_PER_WINDOW = 0.5
GUESS_SECONDS_PER_FRAME_OVERHEAD = 0.004  # decoding, encoding, streaming per video frame
LEASE_OVERHEAD_S = 8.0  # ZeroGPU: attaching a GPU and moving weights onto it, per lease
LOAD_GUESS_S = 60.0  # loading a real model that is not loaded yet


@dataclass(frozen=True)
class Work:
    """Model calls a run makes."""

    warm_start_windows: int  # one window per warm-start step, R = L / b steps (0 when continuing)
    warmup_steps: int  # queue steps before the first video frame (0 when continuing)
    frame_steps: int  # queue steps that emit video: one per b latent frames
    windows_per_step: int
    frames: int  # video frames

    @property
    def windows(self) -> int:
        """Total windows through the model."""
        return self.warm_start_windows + (self.warmup_steps + self.frame_steps) * self.windows_per_step


def work_for(config: FIFOConfig, frames: int, temporal_compression: int = 1, fresh: bool = True) -> Work:
    """The work of making `frames` video frames with a resolved config, from scratch or continuing."""
    latents = latents_for_frames(frames, temporal_compression) if fresh else math.ceil(frames / temporal_compression)
    return Work(
        warm_start_windows=config.rungs if fresh else 0,
        warmup_steps=config.warmup_steps if fresh else 0,
        frame_steps=math.ceil(latents / (config.frames_per_rung or 1)),
        windows_per_step=len(config.windows),
        frames=frames,
    )


@dataclass(frozen=True)
class Estimate:
    """Seconds a run should take, and how sure we are."""

    seconds: float
    measured: bool  # from rates measured on this machine (else a guess)
    seconds_per_frame: float
    warmup_seconds: float


class RateBook:
    """Seconds per window, measured per (backbone, latent area, window length); thread-safe."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, int, int], float] = {}
        self._overhead: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, backbone: str, latent_area: int, frames_per_window: int, seconds_per_window: float) -> None:
        """Fold one measurement into the running average (recent runs weigh more)."""
        if not (seconds_per_window > 0 and math.isfinite(seconds_per_window)):
            return
        key = (backbone, latent_area, frames_per_window)
        with self._lock:
            old = self._rates.get(key)
            self._rates[key] = seconds_per_window if old is None else 0.5 * (old + seconds_per_window)

    def record_overhead(self, backbone: str, seconds_per_frame: float) -> None:
        """Per-frame time outside the model (decode, encode, stream), measured over a run."""
        if seconds_per_frame >= 0 and math.isfinite(seconds_per_frame):
            with self._lock:
                old = self._overhead.get(backbone)
                self._overhead[backbone] = seconds_per_frame if old is None else 0.5 * (old + seconds_per_frame)

    def rate(self, backbone: str, latent_area: int, frames_per_window: int) -> tuple[float, bool]:
        """Seconds per window and whether it was measured; unmeasured sizes scale from the nearest measured one."""
        with self._lock:
            exact = self._rates.get((backbone, latent_area, frames_per_window))
            if exact is not None:
                return exact, True
            near = [
                (abs(math.log(a / latent_area)), r * (latent_area / a) * (frames_per_window / f))
                for (b, a, f), r in self._rates.items()
                if b == backbone
            ]
        if near:
            return min(near)[1], True
        return GUESS_SECONDS_PER_WINDOW * (latent_area / 4096) * (frames_per_window / 16), False

    def overhead(self, backbone: str) -> float:
        """Seconds per video frame outside the model."""
        with self._lock:
            return self._overhead.get(backbone, GUESS_SECONDS_PER_FRAME_OVERHEAD)

    def estimate(self, backbone: str, latent_area: int, config: FIFOConfig, work: Work, tracks: int = 1) -> Estimate:
        """Seconds for `work` (times `tracks` videos made side by side)."""
        rate, measured = self.rate(backbone, latent_area, config.frames_per_window)
        step = rate * work.windows_per_step
        warmup = rate * work.warm_start_windows + step * work.warmup_steps
        per_frame = step * work.frame_steps / max(work.frames, 1) + self.overhead(backbone)
        return Estimate(
            seconds=tracks * (warmup + per_frame * work.frames),
            measured=measured,
            seconds_per_frame=tracks * per_frame,
            warmup_seconds=tracks * warmup,
        )


@dataclass(frozen=True)
class LeasePlan:
    """How a run is spread over ZeroGPU leases."""

    leases: int
    seconds_each: int  # asked of ZeroGPU per lease
    gpu_seconds: int  # total asked


def plan_leases(
    compute_s: float, warm_start_s: float, max_lease_s: float, overhead_s: float = LEASE_OVERHEAD_S, margin: float = 1.3
) -> LeasePlan:
    """Leases of at most `max_lease_s` that cover `compute_s` (with a safety margin), or ValueError.

    The warm start is one uninterruptible model call sequence, so it has to fit one lease.
    """
    usable = max_lease_s - overhead_s
    if usable <= 0:
        raise ValueError(f"a ZeroGPU lease of {max_lease_s:g} s leaves no time after its {overhead_s:g} s start-up")
    if warm_start_s * margin > usable:
        raise ValueError(
            f"the warm start alone needs about {warm_start_s * margin:.0f} s, more than one ZeroGPU lease "
            f"({max_lease_s:g} s) allows: use fewer partitions, lookahead off, or a smaller size"
        )
    need = compute_s * margin
    leases = max(1, math.ceil(need / usable))
    each = min(max_lease_s, math.ceil(need / leases + overhead_s))
    return LeasePlan(leases=leases, seconds_each=int(each), gpu_seconds=int(each) * leases)


def next_lease(
    est: Estimate,
    frames_left: int,
    max_lease_s: float,
    end_margin_s: float = 3.0,
    overhead_s: float = LEASE_OVERHEAD_S,
    margin: float = 1.3,
) -> tuple[int, int]:
    """(frames to make, seconds to ask for) for the next ZeroGPU lease of a run with `est` for what is left.

    Everything left when it fits one lease (asking only for what it needs); else as many frames as
    fit the longest lease after the warm-up still to do (at least one: the lease also stops itself
    when its clock runs low, handing back the queue state).
    """
    need = est.seconds * margin + overhead_s + end_margin_s
    if need <= max_lease_s:
        return frames_left, math.ceil(need)
    usable = (max_lease_s - overhead_s - end_margin_s) / margin - est.warmup_seconds
    frames = int(usable // est.seconds_per_frame) if est.seconds_per_frame > 0 else frames_left
    return max(1, min(frames_left, frames)), int(max_lease_s)


def format_seconds(s: float) -> str:
    """Human duration: '8 ms', '0.4 s', '12 s', '3 min 5 s', '1 h 2 min'."""
    if not math.isfinite(s):
        return "?"
    if s < 0.1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    s = round(s)
    if s < 60:
        return f"{s} s"
    m, sec = divmod(s, 60)
    if m < 60:
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"
