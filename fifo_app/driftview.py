"""The app's drift plot: per-second pixel statistics of a run's video, measured on the host as frames arrive.

The host already gets every frame a lease makes (to write the chunks), so the figures cost one
`fifo.drift.DriftMeter` pass over them and nothing inside the lease. The same figures go to the
plot, the run details, the joined MP4's metadata and the status line.

The plot puts five series of very different units on one axis, so each is a ratio near 1:

    flicker      the flicker score (255 - MAE) / 255 of consecutive frames, as is (1 = nothing moves)
    brightness   mean luma / the first second's
    saturation   mean HSV saturation / the first second's
    sharpness    Laplacian variance / the first second's
    colour       1 - colour_shift / 255 (1 = the first second's mean colour)

A ratio whose first second is 0 (a black or flat start) is 1 while the measure stays 0, and the
cap otherwise; ratios are capped at `RATIO_CAP` so one runaway measure cannot flatten the others
(the run details and the MP4 keep the raw figures).

Extend continues the whole video's figures: the meter is kept open (with the last frame and the
partial last second) with the session's video, and the extension feeds it on, so the plot and the
figures cover every second of the joined video. A continued upload starts a new video and a new
meter; a comparison (two videos side by side) has no plot.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fifo.drift import DriftMeter, SecondStats

RATIO_CAP = 4.0
FLICKER = "flicker"
RATIOS = (("brightness", "brightness"), ("saturation", "saturation"), ("sharpness", "sharpness"))
COLOUR = "colour"
SERIES = (FLICKER, *(label for _, label in RATIOS), COLOUR)
# the plot's own legend is one line that a phone cuts off: fixed colours and a legend in words instead
COLOURS = {FLICKER: "#2563eb", "brightness": "#f59e0b", "saturation": "#dc2626", "sharpness": "#10b981", COLOUR: "#7c3aed"}
LEGEND = (
    "blue: flicker score, as is (1 = nothing moves) · orange: brightness · red: saturation · green: sharpness "
    "(Laplacian variance) · purple: colour, 1 - shift/255 · all but flicker relative to the first second (1 = unchanged)"
)
COLUMNS = ("second", "measure", "value")


def ratio(value: float, first: float) -> float:
    """`value / first`, 1 for 0 / 0, capped at `RATIO_CAP` (also for x / 0)."""
    if first > 0:
        return min(value / first, RATIO_CAP)
    return 1.0 if value == 0 else RATIO_CAP


def plot_rows(seconds: Sequence[SecondStats], offset_s: float = 0.0) -> list[tuple[float, str, float]]:
    """(second, measure, value) rows of the plot, one per second and series (see the module's legend).

    `offset_s` shifts the seconds (figures that start later than the video's first frame). A second
    without a flicker figure (a one-frame video) has no flicker row.
    """
    if not seconds:
        return []
    first = seconds[0]
    rows = []
    for st in seconds:
        x = offset_s + st.second
        if st.flicker is not None:
            rows.append((x, FLICKER, st.flicker))
        rows += [(x, label, ratio(getattr(st, m), getattr(first, m))) for m, label in RATIOS]
        rows.append((x, COLOUR, max(0.0, 1.0 - st.colour_shift / 255.0)))
    return rows


def plot_table(seconds: Sequence[SecondStats], offset_s: float = 0.0) -> pd.DataFrame:
    """The plot's value: `plot_rows` as a table with columns second, measure, value."""
    # typed even when empty: the plot takes its axes' kinds (numbers, not categories) from the first table
    return pd.DataFrame(plot_rows(seconds, offset_s), columns=list(COLUMNS)).astype({"second": float, "measure": str, "value": float})


class LiveDrift:
    """The drift figures of one run's video, fed on the host with the frames the run writes."""

    def __init__(self, fps: int, base: LiveDrift | None = None, from_frame: int = 0) -> None:
        if base is not None and base.fps != fps:
            raise ValueError(f"fps={fps}: an extension's figures continue its video's, made at {base.fps} fps")
        self.fps = fps
        # an extension continues its video's open meter: the frame before the seam and the partial second
        self.meter = copy.deepcopy(base._open) if base is not None else DriftMeter(fps)
        self.from_frame = base.from_frame if base is not None else from_frame
        self._base_seconds = list(base.meter.seconds) if base is not None else []  # its partial last second closed
        self._open: DriftMeter | None = None
        self._plotted = -1  # seconds in the last plot handed out

    def add(self, frames: np.ndarray) -> None:
        """Measure the next frames, uint8 (N, H, W, 3)."""
        for f in frames:
            self.meter.add(f)

    def plot(self) -> pd.DataFrame:
        """The plot of every second so far."""
        self._plotted = len(self.meter.seconds)
        return plot_table(self.meter.seconds, self.from_frame / self.fps)

    def first_plot(self) -> pd.DataFrame | None:
        """The plot at a run's start: the whole video being extended (its partial last second too), or None.

        None, not an empty table: the browser's plot fixes its colours to the series of the first
        table it draws, so its first table must hold every series.
        """
        self._plotted = len(self.meter.seconds)
        return plot_table(self._base_seconds, self.from_frame / self.fps) if self._base_seconds else None

    def new_plot(self) -> pd.DataFrame | None:
        """The plot, when a second was completed since the last one handed out; else None."""
        return self.plot() if len(self.meter.seconds) != self._plotted else None

    def finish(self) -> None:
        """Close the partial last second; an open copy is kept for an extension to continue."""
        if self._open is None:
            self._open = copy.deepcopy(self.meter)
            self.meter.finish()

    def details(self) -> dict:
        """The per-second figures (`DriftMeter.to_dict`), the first frame they cover and the summary line."""
        return {**self.meter.to_dict(), "from_frame": self.from_frame, "summary": self.summary_line()}

    def summary_line(self) -> str:
        """First vs last second of each measure, in one line."""
        return self.meter.summary_line()

    def metadata(self) -> dict[str, str]:
        """The MP4 entries the command line writes: `pixel_stats` (JSON) and `pixel_stats_summary`."""
        d = self.details()
        d.pop("summary")
        return {"pixel_stats": json.dumps(d, separators=(",", ":")), "pixel_stats_summary": self.summary_line()}


def for_video(fps: int, tracks: int, base_frames: int = 0, base: LiveDrift | None = None) -> LiveDrift | None:
    """The figures of a run: None for a comparison; an extension continues its base video's when it has them."""
    if tracks != 1:
        return None
    if base is not None and base.fps == fps and base._open is not None:
        return LiveDrift(fps, base)
    return LiveDrift(fps, from_frame=base_frames)
