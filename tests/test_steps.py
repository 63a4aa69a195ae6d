"""The stream's step iterator: `steps()` hands out the frames `frames()` yields, bit for bit, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import CausalGauss, GaussianBackbone

from fifo import FIFOStream
from fifo.parallel import PipelinedFIFOStream

MU, STD = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8), 0.5


@pytest.mark.parametrize("stream_class", [FIFOStream, PipelinedFIFOStream])
def test_steps_hand_out_the_frames_of_frames(stream_class):
    bb = GaussianBackbone(MU, STD, frames=4, partitions=2, lookahead=True, eta=1.0)
    want = np.stack(list(FIFOStream(bb, "p", seed=3).frames(20)))
    kw = {"decode_ahead": True} if stream_class is PipelinedFIFOStream else {}
    stream = stream_class(bb, "p", seed=3, **kw)
    steps = list(stream.steps(20))
    got = np.concatenate([s.frames for s in steps])
    assert np.array_equal(got, want)
    moved = [s for s in steps if s.stepped]
    warm = stream.config.warmup_frames
    assert len(moved) == warm + 20 and moved[0].warm_start and not any(s.warm_start for s in moved[1:])
    assert [s.warming_up for s in moved[:warm]] == [True] * warm and not moved[-1].warming_up
    assert steps[-1].frames_emitted == stream.frames_emitted == 20
    assert all(s.seconds >= 0 for s in steps)


def test_closing_mid_step_keeps_the_frames_not_taken():
    bb = CausalGauss(MU, STD, frames=4, partitions=2)  # a latent decodes to 4 frames
    whole = [int(f[0, 0, 0]) for f in FIFOStream(bb, "p").frames(13)]
    stream = FIFOStream(bb, "p")
    it = stream.frames(13)
    first = [int(next(it)[0, 0, 0]) for _ in range(3)]  # 1 + 2 of the next latent's 4
    it.close()
    assert stream.frames_emitted == 3
    rest = [int(f[0, 0, 0]) for f in stream.frames(10)]
    assert first + rest == whole


def test_steps_check_their_argument():
    bb = GaussianBackbone(MU, STD, frames=4, partitions=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_frames"):
            FIFOStream(bb, "p").steps(bad)
