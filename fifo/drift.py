"""Drift, measured from the frames themselves: plain pixel statistics per second of video.

Long videos drift (colours wash out, the picture blurs or darkens) or go static; these figures let
a viewer see that before watching the whole video. They are pixel statistics, not a learned
quality metric, and make no claim about how good a video looks.

Per second of video (`fps` frames; the last second may be partial):
    flicker      temporal-flickering score, (255 - MAE) / 255 with MAE the mean absolute
                 difference of consecutive frames (1 = nothing changes; the formula VBench uses)
    brightness   mean luma, Y = 0.299 R + 0.587 G + 0.114 B, in 8-bit levels [0, 255]
    saturation   mean HSV saturation, (max - min) / max per pixel, in [0, 1]
    sharpness    variance of the 3x3 Laplacian of the luma, the mean over the second's frames
    colour       the mean (R, G, B); `colour_shift` = its distance from the first second's, in levels

`DriftMeter` is fed frame by frame and keeps only the previous frame, the running sums of the
current second and one small record per finished second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

MEASURES = ("flicker", "brightness", "saturation", "sharpness", "colour_shift")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class SecondStats:
    """The pixel statistics of one second of video (see the module's legend)."""

    second: int  # 0-based
    frames: int  # frames in this second
    flicker: float | None  # None for a one-frame video: no consecutive pair
    brightness: float
    saturation: float
    sharpness: float
    colour: tuple[float, float, float]
    colour_shift: float  # distance of `colour` from the first second's


def frame_stats(frame: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """(brightness, saturation, sharpness, mean RGB (3,)) of one uint8 (H, W, 3) frame."""
    x = np.asarray(frame, np.float32)
    luma = x @ _LUMA  # (H, W)
    hi, lo = x.max(axis=2), x.min(axis=2)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]  # interior pixels
    sharp = float(lap.var()) if lap.size else 0.0
    return float(luma.mean()), float(sat.mean()), sharp, x.reshape(-1, 3).mean(axis=0)


def flicker_score(a: np.ndarray, b: np.ndarray) -> float:
    """(255 - mean |b - a|) / 255 of two consecutive uint8 frames: 1 when nothing changed."""
    mae = float(np.abs(b.astype(np.int16) - a.astype(np.int16)).mean())
    return (255.0 - mae) / 255.0


class DriftMeter:
    """Per-second pixel statistics of a video fed one frame at a time, in constant memory per frame."""

    def __init__(self, fps: int) -> None:
        if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
            raise ValueError(f"fps={fps!r}: must be a positive integer")
        self.fps = fps
        self.seconds: list[SecondStats] = []
        self.frames = 0
        self._prev: np.ndarray | None = None
        self._sums = np.zeros(8)  # flicker, pairs, brightness, saturation, sharpness, R, G, B of this second
        self._in_second = 0

    def add(self, frame: np.ndarray) -> SecondStats | None:
        """Take the next frame; returns the second it completes, if it completes one."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame of shape {frame.shape} and dtype {frame.dtype}: expected uint8 (H, W, 3)")
        if self._prev is not None and frame.shape != self._prev.shape:
            raise ValueError(f"frame of shape {frame.shape} after frames of shape {self._prev.shape}")
        b, s, sh, rgb = frame_stats(frame)
        if self._prev is not None:
            self._sums[0] += flicker_score(self._prev, frame)
            self._sums[1] += 1
        self._sums[2:] += (b, s, sh, *rgb)
        self._prev = frame.copy()
        self._in_second += 1
        self.frames += 1
        return self._close_second() if self._in_second == self.fps else None

    def finish(self) -> list[SecondStats]:
        """Close a partial last second (if any) and return every second's statistics."""
        if self._in_second:
            self._close_second()
        return list(self.seconds)

    def _close_second(self) -> SecondStats:
        n, s = self._in_second, self._sums
        colour = tuple(float(v) for v in s[5:8] / n)
        first = self.seconds[0].colour if self.seconds else colour
        st = SecondStats(
            second=len(self.seconds),
            frames=n,
            flicker=float(s[0] / s[1]) if s[1] else None,
            brightness=float(s[2] / n),
            saturation=float(s[3] / n),
            sharpness=float(s[4] / n),
            colour=colour,  # type: ignore[arg-type]
            colour_shift=math.dist(colour, first),
        )
        self.seconds.append(st)
        self._sums = np.zeros(8)
        self._in_second = 0
        return st

    def summary(self) -> dict[str, tuple[float | None, float | None]]:
        """(first second, last second) of each measure in `MEASURES`, from the finished seconds."""
        if not self.seconds:
            return {}
        a, b = self.seconds[0], self.seconds[-1]
        return {m: (getattr(a, m), getattr(b, m)) for m in MEASURES}

    def summary_line(self) -> str:
        """One line: the first and the last second of each measure, and the change between them."""
        s = self.summary()
        if not s:
            return "pixel statistics: no frames"

        def change(m: str, fmt: str) -> str:
            a, b = s[m]
            if a is None or b is None:
                return f"{m} n/a"
            rel = f" ({(b - a) / a:+.1%})" if a else ""
            return f"{m} {a:{fmt}} -> {b:{fmt}}{rel}"

        parts = [change("flicker", ".4f"), change("brightness", ".1f"), change("saturation", ".3f"), change("sharpness", ".1f")]
        parts.append(f"colour shift {s['colour_shift'][1]:.1f} levels")
        n = len(self.seconds)
        return f"pixel statistics, first vs last of {n} second{'s' * (n != 1)}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        """Every second's figures as plain lists (for run details, JSON and MP4 metadata)."""
        out: dict = {"fps": self.fps, "frames": self.frames, "measures": list(MEASURES)}
        for m in MEASURES:
            out[m] = [None if getattr(st, m) is None else round(getattr(st, m), 5) for st in self.seconds]
        out["colour"] = [[round(v, 3) for v in st.colour] for st in self.seconds]
        return out

    def metadata(self) -> dict[str, str]:
        """MP4 metadata entries: `pixel_stats` (per-second JSON) and `pixel_stats_summary` (the one line)."""
        return {"pixel_stats": json.dumps(self.to_dict(), separators=(",", ":")), "pixel_stats_summary": self.summary_line()}


def measure(frames, fps: int) -> DriftMeter:
    """A finished `DriftMeter` over an iterable of uint8 (H, W, 3) frames."""
    meter = DriftMeter(fps)
    for f in frames:
        meter.add(f)
    meter.finish()
    return meter


__all__ = ["MEASURES", "DriftMeter", "SecondStats", "flicker_score", "frame_stats", "measure"]
