"""FIFOConfig validation and resolution; prompt schedules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fakes import GaussianBackbone
from fifo import FIFOConfig, PromptSchedule


@pytest.mark.parametrize(
    "field, value",
    [
        ("frames_per_window", 1),
        ("frames_per_window", 4.0),
        ("partitions", 0),
        ("partitions", True),
        ("lookahead", 1),
        ("eta", 1.5),
        ("eta", -0.1),
        ("guidance_scale", 0.5),
        ("fps", 0),
        ("warmup", "skip"),
        ("window_batch", 0),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r}: .*(must|allowed)"):
        FIFOConfig(**{field: value})


def test_resolve_fills_only_none_fields_and_derives():
    bb = GaussianBackbone(torch.zeros(1, 2, 2), 1.0, frames=4, partitions=2, lookahead=True, eta=0.3)
    cfg = FIFOConfig(partitions=3)
    with pytest.raises(ValueError, match="resolve"):
        cfg.queue_length
    r = cfg.resolve(bb)
    assert cfg.partitions == 3 and cfg.eta is None  # frozen: resolve returns a copy
    assert (r.frames_per_window, r.partitions, r.lookahead, r.eta) == (4, 3, True, 0.3)
    assert (r.queue_length, r.steps, r.context, r.num_slots, r.warmup_frames) == (12, 12, 2, 14, 8)
    assert len(r.windows) == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.partitions = 5


def test_flow_backbones_refuse_eta():
    bb = GaussianBackbone(torch.zeros(1, 2, 2), 1.0, prediction_type="flow")
    with pytest.raises(ValueError, match="eta=0.5.*flow-matching"):
        FIFOConfig(eta=0.5).resolve(bb)


def test_prompt_schedule_parsing():
    s = PromptSchedule.parse("# comment\n0: a red ball moving right\n\n48: a red ball moving up\n")
    assert s.entries == ((0, "a red ball moving right"), (48, "a red ball moving up"))
    assert [s.prompt_at(i) for i in (-5, 0, 47, 48, 1000)] == ["a red ball moving right"] * 3 + ["a red ball moving up"] * 2
    assert PromptSchedule.parse(s.to_text()) == s
    assert PromptSchedule.coerce("a ball: red").entries == ((0, "a ball: red"),)
    assert PromptSchedule.coerce([(0, "a"), (5, "b")]).prompts == ["a", "b"]
    with pytest.raises(ValueError, match="expected 'FRAME: prompt'"):
        PromptSchedule.parse("0: a\nb")
    with pytest.raises(ValueError, match="must increase: 9 is followed by 3"):
        PromptSchedule.parse("0: a\n9: b\n3: c")
    with pytest.raises(ValueError, match="prompt at frame 4 is empty"):
        PromptSchedule.coerce({0: "a", 4: " "})


def test_a_schedule_before_a_frame_keeps_earlier_entries_and_their_fades():
    s = PromptSchedule.parse("0: a\n10~4: b\n20: c\n30~2: d")
    assert s.before(20).to_text() == "0: a\n10~4: b"
    assert s.before(31).to_text() == "0: a\n10~4: b\n20: c\n30~2: d"
    assert s.before(0).to_text() == "a"  # the first prompt always stays
    assert PromptSchedule.parse("0: a\n10: b").before(10).to_text() == "a"
