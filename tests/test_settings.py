"""Each setting declared once (`fifo.config.SETTINGS`): the CLI, the app, share links and metadata follow it."""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from fifo import FIFOConfig
from fifo.__main__ import _parser
from fifo.config import APP_SETTINGS, SETTINGS, Setting
from fifo_app import settings


def test_every_declared_setting_reaches_cli_config_link_and_metadata():
    flags = {a.dest for a in _parser()._actions}
    assert {s.name for s in SETTINGS} <= flags
    assert {s.name for s in SETTINGS if s.config} == set(FIFOConfig().to_dict())
    s = settings.parse_inputs("a red ball moving right", "", "toy", 12, "frames", 3, False)
    query = settings.query_params(s.to_query())
    assert {x.name for x in APP_SETTINGS} <= set(query)
    assert {x.name for x in SETTINGS} <= set(s.record())
    assert set(s.options()) == {x.name for x in APP_SETTINGS}


def test_the_generate_endpoint_publishes_one_parameter_per_declared_setting():
    import app

    names = list(inspect.signature(app.generate).parameters)
    at = names.index("random_seed") + 1
    assert names[at : at + len(APP_SETTINGS)] == [x.name for x in APP_SETTINGS]
    assert names[-3:] == ["schedule", "start_from", "request"]


def test_a_new_declaration_is_a_new_checked_field():
    extra = Setting("flow_shift", float, "flow shift", "a test knob", 0, 10, config=False)
    assert extra.flag == "--flow-shift" and extra.check(3.0) == 3.0
    with pytest.raises(ValueError, match=r"flow_shift=11: must be a number in \[0, 10\]"):
        extra.check(11)


def test_links_made_before_the_names_were_unified_still_load_and_page_parameters_are_no_mistake():
    values, notes = settings.from_query(
        {"prompt": "a red ball", "guidance": "3", "negative": "blur", "__theme": "dark", "view": "api"}
    )
    assert values["guidance_scale"] == 3.0 and values["negative_prompt"] == "blur"
    assert notes == []
