"""The drift plot: per-second pixel statistics of the app's video, live, in the details and in the MP4.

Closed-form checks of the plot's table, then the app launched for real on loopback and driven
through its HTTP API (gradio_client), with the small toy settings of tests/test_app.py.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


from fifo.drift import MEASURES, measure
from fifo.video import probe_video, read_video
from fifo_app import driftview
from fifo_app.driftview import COLOUR, FLICKER, RATIO_CAP, SERIES, LiveDrift, plot_rows

from test_app import FAST, PROMPT

FPS = 4


def ramp(seconds: int, start: int = 50, step: int = 10, fps: int = FPS, size: int = 8) -> list[np.ndarray]:
    """Grey frames whose level is `start + step * s` through second s (flat within each second)."""
    return [np.full((size, size, 3), start + step * s, np.uint8) for s in range(seconds) for _ in range(fps)]


# -- the plot's table, in closed form ----------------------------------------------------------------


def test_a_brightness_ramp_gives_closed_form_rows():
    d = LiveDrift(FPS)
    d.add(np.stack(ramp(5)))
    d.finish()
    rows = plot_rows(d.meter.seconds)
    assert len(rows) == 5 * len(SERIES)
    by = {(x, m): v for x, m, v in rows}
    for s in range(5):
        assert by[(s, "brightness")] == pytest.approx((50 + 10 * s) / 50, rel=1e-6)
        # grey: saturation and sharpness are 0 throughout, so their ratio stays 1 (0 / 0)
        assert by[(s, "saturation")] == 1.0 and by[(s, "sharpness")] == 1.0
        # the mean colour moves 10 levels on each channel per second
        assert by[(s, COLOUR)] == pytest.approx(1 - math.sqrt(3) * 10 * s / 255, rel=1e-6)
        # within a second nothing changes; the pair across a second's start differs by 10 levels
        flick = 1.0 if s == 0 else ((FPS - 1) * 1.0 + (255 - 10) / 255) / FPS
        assert by[(s, FLICKER)] == pytest.approx(flick, rel=1e-6)


def test_ratios_are_capped_and_a_zero_start_is_handled():
    assert driftview.ratio(3.0, 2.0) == 1.5
    assert driftview.ratio(100.0, 1.0) == RATIO_CAP
    assert driftview.ratio(0.0, 0.0) == 1.0 and driftview.ratio(5.0, 0.0) == RATIO_CAP
    # black, then grey: brightness from 0 has no ratio, the plot shows the cap
    frames = [np.zeros((4, 4, 3), np.uint8)] * FPS + [np.full((4, 4, 3), 9, np.uint8)] * FPS
    d = LiveDrift(FPS)
    d.add(np.stack(frames))
    t = d.plot()
    assert list(t.columns) == ["second", "measure", "value"]
    b = t[t.measure == "brightness"].value.tolist()
    assert b == [1.0, RATIO_CAP]


def test_a_one_frame_video_has_no_flicker_row():
    d = LiveDrift(FPS)
    d.add(np.zeros((1, 4, 4, 3), np.uint8))
    d.finish()
    assert [m for _, m, _ in plot_rows(d.meter.seconds)] == [s for s in SERIES if s != FLICKER]


def test_the_plot_is_handed_out_only_when_a_second_completes():
    d = LiveDrift(FPS)
    assert d.first_plot() is None and d.plot().empty
    frames = np.stack(ramp(3))
    d.add(frames[: FPS - 1])
    assert d.new_plot() is None
    d.add(frames[FPS - 1 : FPS + 1])
    assert len(d.new_plot()) == len(SERIES)
    assert d.new_plot() is None
    d.add(frames[FPS + 1 :])
    assert len(d.new_plot()) == 3 * len(SERIES)


def test_an_extension_continues_the_whole_videos_figures():
    """Figures of a video made in parts (stopped mid-second, then extended twice) equal one pass over all of it."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (23, 6, 6, 3), dtype=np.uint8)
    whole = measure(frames, FPS)
    part = LiveDrift(FPS)
    part.add(frames[:6])  # a second and a half
    part.finish()
    assert len(part.meter.seconds) == 2  # the half second closed for this video's own figures
    for a, b in ((6, 13), (13, 23)):
        part = driftview.for_video(FPS, 1, a, part)
        part.add(frames[a:b])
        part.finish()
    assert part.meter.seconds == whole.seconds
    assert part.details()["from_frame"] == 0
    assert driftview.for_video(FPS, 2) is None  # a comparison has no plot
    # a base without figures (or at another fps): the new frames' figures, placed after the base's
    late = driftview.for_video(FPS, 1, 8, None)
    late.add(frames[8:])
    assert late.plot().second.min() == 2.0 and late.details()["from_frame"] == 8


# -- through the app's HTTP API ----------------------------------------------------------------------


from test_app_visitor import client  # noqa: E402,F401  (the fixture: the app on loopback, one client)


def plot_of(outputs) -> dict | None:
    """The drift plot output of one generate/extend output tuple (the one before the details)."""
    return outputs[-2]


def plot_rows_of(value) -> list[dict]:
    """The plot's rows as dicts: {second, measure, value}."""
    if not value:
        return []
    cols = [c if isinstance(c, str) else c.get("name", c) for c in value["columns"]]
    return [dict(zip(cols, row)) for row in value["data"]]


# How far the figures of the frames a run makes lie from those of its MP4 decoded again (H.264 at
# crf 18, yuv420p, 64x64 toy frames), measured on the runs below: flicker 0.0024, brightness 1.1
# levels, saturation 0.024, colour shift 0.17 levels; the encoder's ringing around the sprite more
# than doubles the Laplacian variance of these near-flat frames (4.5 -> 9.9 to 10.6 levels²).
TOLERANCE = {"flicker": 0.006, "brightness": 2.5, "saturation": 0.05, "colour_shift": 0.5}
SHARPNESS_FACTOR = (1.0, 3.0)  # decoded / made


def assert_close_to_the_mp4(stats: dict, mp4: str) -> None:
    """The run's figures against a DriftMeter run on the decoded MP4, within the encoder's tolerance."""
    decoded = measure(read_video(mp4), stats["fps"]).to_dict()
    assert decoded["frames"] == stats["frames"]
    for m in MEASURES:
        got, ref = np.array(stats[m], float), np.array(decoded[m], float)
        assert got.shape == ref.shape, m
        if m == "sharpness":
            lo, hi = SHARPNESS_FACTOR
            assert np.all((ref >= lo * got) & (ref <= hi * got)), (got, ref)
        else:
            assert np.abs(got - ref).max() <= TOLERANCE[m], (m, got, ref)


def made_frames(frames: int, seed: int) -> np.ndarray:
    """The frames the app's toy run makes with these settings, straight from the engine."""
    import fifo

    bb = fifo.load_backbone("toy", height=64, width=64)
    return np.stack(list(fifo.FIFOStream(bb, PROMPT, fifo.FIFOConfig(partitions=1, lookahead=False), seed=seed).frames(frames)))


def test_a_run_measures_its_video_live_and_stores_the_figures(client):
    job = client.submit(PROMPT, length=40, length_unit="frames", seed=3, **FAST, api_name="/generate")
    out = job.result(timeout=120)
    d = out[-1]["pixel_stats"]
    assert d["fps"] == 12 and d["frames"] == 40 and d["from_frame"] == 0
    assert len(d["flicker"]) == 4  # 3 whole seconds and 4 frames
    # the plot grew a second at a time while the video streamed, one row per second and series
    live = [len(plot_rows_of(plot_of(o))) for o in job.outputs() if "columns" in (plot_of(o) or {})]
    assert plot_of(job.outputs()[0]) is None  # a new run clears the old plot
    assert live[0] == len(SERIES) and live[-1] == 4 * len(SERIES), live
    assert live == sorted(live) and len(set(live)) >= 3, live
    rows = plot_rows_of(plot_of(out))
    assert sorted({(r["second"], r["measure"]) for r in rows}) == sorted((float(s), m) for s in range(4) for m in SERIES)
    # the figures are those of the frames the run made, exactly (to the five decimals stored) ...
    exact = measure(made_frames(40, 3), 12).to_dict()
    assert {k: d[k] for k in exact} == exact
    # ... and of the MP4 decoded again, within what the encoder changes
    assert_close_to_the_mp4(d, out[1])
    tags = probe_video(out[1])["tags"]
    assert json.loads(tags["pixel_stats"]) == {k: v for k, v in d.items() if k != "summary"}
    assert tags["pixel_stats_summary"] == d["summary"] and d["summary"].startswith("pixel statistics, first vs last of 4 seconds")
    assert 'id="drift-summary"' in out[3] and "flicker" in out[3]  # the status line at the end


def test_extend_continues_the_plot_over_the_whole_video(client):
    client.predict(PROMPT, length=30, length_unit="frames", seed=4, **FAST, api_name="/generate")
    job = client.submit(length=28, length_unit="frames", api_name="/extend")
    ext = job.result(timeout=120)
    d = ext[-1]["pixel_stats"]
    assert d["frames"] == 58 and len(d["flicker"]) == 5 and d["from_frame"] == 0
    assert {k: d[k] for k in MEASURES} == {k: v for k, v in measure(made_frames(58, 4), 12).to_dict().items() if k in MEASURES}
    assert_close_to_the_mp4(d, ext[1])
    first = next(plot_of(o) for o in job.outputs() if "columns" in (plot_of(o) or {}))
    assert {r["second"] for r in plot_rows_of(first)} == {0.0, 1.0, 2.0}  # the video so far, from the start
    assert {r["second"] for r in plot_rows_of(plot_of(ext))} == {float(s) for s in range(5)}
    assert json.loads(probe_video(ext[1])["tags"]["pixel_stats"])["frames"] == 58


def test_a_comparison_has_no_drift_figures(client):
    out = client.predict(PROMPT, length=12, length_unit="frames", seed=0, a_partitions=1, b_partitions=1, api_name="/compare")
    assert "pixel_stats" not in out[-1] and "pixel_stats" not in probe_video(out[1])["tags"]
