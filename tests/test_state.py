"""FIFOState files are untrusted input: every field is checked on load, with one clear message."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from fifo import FIFOConfig, FIFOState, FIFOStream, generate, load_backbone

CFG = FIFOConfig(frames_per_window=4, partitions=2)  # toy: lookahead, so 2 + 8 slots


@pytest.fixture(scope="module")
def toy():
    return load_backbone("toy", device="cpu")


@pytest.fixture(scope="module")
def good(toy) -> dict:
    """The fields of a real state, as `save` writes them."""
    stream = FIFOStream(toy, "a red ball moving right", CFG, seed=4, height=64, width=64)
    list(stream.frames(2))
    return dataclasses.asdict(stream.state())


def saved(tmp_path, d: object, name: str = "s.pt"):
    torch.save(d, tmp_path / name)
    return tmp_path / name


def changed(d: dict, **fields) -> dict:
    d = dict(d)
    for k, v in fields.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return d


def config_with(d: dict, **settings) -> dict:
    cfg = dict(d["config"])
    for k, v in settings.items():
        if v is KeyError:
            del cfg[k]
        else:
            cfg[k] = v
    return changed(d, config=cfg)


BAD = {
    "queue of the wrong length": (lambda d: changed(d, queue=torch.zeros(3, 7, 16, 16)),
                                  "'queue': must have shape (C, 10, lh, lw)"),
    "queue as a string": (lambda d: changed(d, queue="zeros"), "'queue': must be a floating-point tensor, got 'zeros'"),
    "integer queue": (lambda d: changed(d, queue=torch.zeros(3, 10, 16, 16, dtype=torch.int64)),
                      "'queue': must be a floating-point"),
    "3-d queue": (lambda d: changed(d, queue=torch.zeros(3, 10, 16)), "'queue': must have shape"),
    "NaN in the queue": (lambda d: changed(d, queue=torch.full((3, 10, 16, 16), float("nan"))), "'queue': holds NaN"),
    "fps=0": (lambda d: config_with(d, fps=0), "'config': fps=0: must be an integer in [1, 120]"),
    "missing config key": (lambda d: config_with(d, partitions=KeyError), "'config': missing setting 'partitions'"),
    "unknown config key": (lambda d: config_with(d, rungs=3), "'config': unknown setting 'rungs'"),
    "config None": (lambda d: config_with(d, frames_per_window=None), "setting 'frames_per_window' is None"),
    "warmup as a tensor": (lambda d: config_with(d, warmup=torch.zeros(2)), "'config': warmup=tensor("),
    "config as a list": (lambda d: changed(d, config=[1, 2]), "'config': must be a dict of settings, got list"),
    "float pending frames": (lambda d: changed(d, pending=torch.zeros(1, 64, 64, 3)), "'pending': must be a uint8 tensor"),
    "pending of another size": (lambda d: changed(d, pending=torch.zeros(1, 32, 64, 3, dtype=torch.uint8)),
                                "'pending': must have shape (N, 64, 64, 3)"),
    "missing step": (lambda d: changed(d, step=KeyError), "'step': missing"),
    "step as a string": (lambda d: changed(d, step="3"), "'step': must be an integer >= 0, got '3'"),
    "negative frames_emitted": (lambda d: changed(d, frames_emitted=-1), "'frames_emitted': must be an integer >= 0"),
    "boolean seed": (lambda d: changed(d, seed=True), "'seed': must be an integer in [0, 9223372036854775808)"),
    "huge seed": (lambda d: changed(d, seed=10**400), "'seed': must be an integer in [0, "),
    "zero height": (lambda d: changed(d, height=0), "'height': must be an integer in [1, 65536)"),
    "float width": (lambda d: changed(d, width=64.0), "'width': must be an integer in [1, 65536), got 64.0"),
    "backbone as a number": (lambda d: changed(d, backbone=3), "'backbone': must be a backbone name, got 3"),
    "decoder state as a list": (lambda d: changed(d, decoder_state=[1]), "'decoder_state': must be a dict"),
    "meta prompt as a number": (lambda d: changed(d, meta={"prompt": 5}), "'meta': 'prompt' must be a string"),
    "unknown field": (lambda d: changed(d, extra=1), "state field 'extra': unknown"),
    "not a dict": (lambda d: [d["queue"]], "not a fifo state file: it holds a list"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_field_is_one_clear_message_naming_it(tmp_path, good, case):
    make, message = BAD[case]
    path = saved(tmp_path, make(good))
    with pytest.raises(ValueError) as info:
        FIFOState.load(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(tmp_path) not in text


def test_foreign_files_are_refused_without_torch_advice_or_the_path(tmp_path):
    class Runs:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "pickle.pt").write_bytes(pickle.dumps(Runs()))
    torch.save({"queue": Runs()}, tmp_path / "torch.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "torch.pt").read_bytes()[:60])
    (tmp_path / "text.pt").write_text("hello")
    cases = {"pickle.pt": "objects other than tensors", "torch.pt": "objects other than tensors",
             "cut.pt": "not a complete torch.save file", "text.pt": "not a fifo state file",
             "missing.pt": "cannot read the state file: No such file or directory", ".": "cannot read the state file"}
    for name, message in cases.items():
        with pytest.raises(ValueError) as info:
            FIFOState.load(tmp_path / name)
        text = str(info.value)
        assert message in text, (name, text)
        assert "weights_only" not in text and "posix" not in text and str(tmp_path) not in text and "\n" not in text


def test_a_queue_that_does_not_fit_the_backbone_is_refused_before_any_step(tmp_path, toy, good):
    # Right number of slots, wrong latent size: only the backbone can tell (64x64 is 16x16 latents).
    state = FIFOState.load(saved(tmp_path, changed(good, queue=torch.zeros(3, 10, 8, 8))))
    with pytest.raises(ValueError, match=r"'queue': shape \(3, 10, 8, 8\) does not fit toy at 64x64"):
        generate(toy, "a red ball moving right", 2, state=state)
    state = FIFOState.load(saved(tmp_path, changed(good, queue=torch.zeros(4, 10, 16, 16))))
    with pytest.raises(ValueError, match=r"expected \(3, slots, 16, 16\)"):
        generate(toy, "a red ball moving right", 2, state=state)


def test_valid_files_still_load_and_resume_exactly(tmp_path, toy, good):
    whole = np.stack(list(generate(toy, "a red ball moving right", 5, CFG, seed=4, height=64, width=64)))
    # written by `save`, and as files from before states held pending frames, meta or a decoder state
    for d in (good, changed(good, meta=KeyError, decoder_state=KeyError, pending=KeyError)):
        state = FIFOState.load(saved(tmp_path, d))
        rest = np.stack(list(generate(toy, "a red ball moving right", 3, state=state)))
        assert np.array_equal(rest, whole[2:])


def test_save_is_atomic_and_refuses_a_folder(tmp_path, good):
    state = FIFOState(**good)
    state.save(tmp_path / "s.pt")
    state.save(tmp_path / "s.pt")  # over an existing file
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]
    assert FIFOState.load(tmp_path / "s.pt").frames_emitted == 2
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="it is a folder"):
        state.save(tmp_path / "d")
    with pytest.raises(FileNotFoundError):
        state.save(tmp_path / "missing" / "s.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "s.pt"]
