"""A run stopped before its prompt schedule ends: its share link remakes it, and Extend goes on.

A schedule entry past the stop that no window read shaped no frame: the link leaves it out (it
would ask Generate for a prompt after the video's end). One that windows read already (a window
reads its middle frame's prompt, up to about a queue past the last frame made) stays, and Generate
takes it. Extend goes on with the run's whole schedule.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fifo import FIFOState
from fifo.prompts import PromptSchedule
from fifo.video import probe_video, read_video
from fifo_app import settings
from fifo_app.service import Service, check_schedule_fits
from fifo_app.sessions import SessionStore

RIGHT, UP, LEFT = "a red ball moving right", "a red ball moving up", "a red ball moving left"


def run_until_stopped(svc: Service, sid: str, s: settings.RunSettings, stop_at: int):
    """Generate, pressing Stop once `stop_at` frames are out; the last Update."""
    stopped = False
    for u in svc.generate(s, sid):
        if not stopped and u.frames_done >= stop_at:
            stopped = svc.stop(sid)
    assert u.result is not None and u.result.stopped
    return u


@pytest.mark.parametrize("later", [200, 40])  # 200: no window reads it before the stop; 40: just past it, read by windows or not
def test_a_stopped_schedule_runs_link_remakes_it_and_extend_goes_on(tmp_path, later):
    svc = Service(progressive_mp4=True, store=SessionStore(tmp_path / "sessions"))
    typed = f"0: {RIGHT}\n{later}: {UP}\n250: {LEFT}"
    s = settings.parse_inputs(typed, "", "toy", 300, "frames", 4, False, 1, "on", height=64, width=64)
    u = run_until_stopped(svc, "a", s, 30)
    r = u.result
    made = r.frames
    unread = FIFOState.load(r.state_path).earliest_change_frame()
    assert made < 250 <= unread or made < unread  # the stop came long before frame 250
    link = settings.settings_from_query(settings.query_params(u.as_dict()["share_query"]))
    expected = PromptSchedule.parse(typed).before(unread).to_text()
    assert link.prompt == expected and link.frames == made
    assert (f"{later}: {UP}" in link.prompt) == (later < unread)  # read before the stop: kept
    assert f"250: {LEFT}" not in link.prompt
    assert json.loads(probe_video(r.mp4)["tags"]["comment"])["prompt"] == expected  # the MP4 says the same
    assert r.settings.prompt == typed  # what Extend goes on with

    # the link, pressed Generate on: accepted, and the same frames
    again = list(svc.generate(link, "b"))[-1].result
    assert np.array_equal(read_video(again.mp4), read_video(r.mp4))

    # Extend without a new prompt goes on with the whole schedule (it was refused: 'frame 200 starts after the end')
    ext = list(svc.extend("a", None, 12, "frames"))[-1].result
    assert ext.frames == made + 12 and ext.settings.prompt == typed


def test_a_typed_prompt_no_window_would_read_is_still_refused():
    check_schedule_fits(f"0: {RIGHT}\n40: {UP}", 36, reach=32)  # 40 < 36 + 32: the queue may read it
    with pytest.raises(settings.InputError, match="the prompt at frame 68 starts after the video ends \\(36 frames\\)"):
        check_schedule_fits(f"0: {RIGHT}\n68: {UP}", 36, reach=32)
