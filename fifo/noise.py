"""Keyed randomness: every draw is a function of (seed, frame, step, stream), never of call order.

So batching windows, splitting them over ranks, or stopping and resuming give the same frames.
Draws are made on the CPU in float32 and then moved, so they are the same on every device.
"""

from __future__ import annotations

import torch

# Streams: what a draw is for, so two purposes never share noise.
TAIL, ETA, BASE, FILL = 1, 2, 3, 4
_MASK = (1 << 64) - 1


def _mix(*keys: int) -> int:
    """splitmix64 over the keys: a well-spread 63-bit seed for torch.Generator."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (k & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def keyed_normal(shape: tuple[int, ...], seed: int, stream: int, frame: int, step: int = 0) -> torch.Tensor:
    """Standard normal noise of `shape` (float32, CPU) determined by (seed, stream, frame, step)."""
    g = torch.Generator().manual_seed(_mix(seed, stream, frame, step))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def keyed_normal_frames(shape: tuple[int, ...], seed: int, stream: int, frames: list[int], steps: list[int]) -> torch.Tensor:
    """Noise for several frames stacked on dim 1: (C, len(frames), *shape[1:]) from per-frame keys."""
    return torch.stack([keyed_normal(shape, seed, stream, f, s) for f, s in zip(frames, steps)], dim=1)
