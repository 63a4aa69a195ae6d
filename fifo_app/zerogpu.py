"""ZeroGPU (Hugging Face Spaces) support, inert everywhere else.

On a ZeroGPU Space a CUDA device exists only inside a function decorated with `@spaces.GPU`,
for the duration it asked for. `GPU` below is that decorator where the `spaces` package is
installed (it returns the function unchanged off ZeroGPU), and a do-nothing stand-in where it is
not. `app.py` imports `spaces` before anything imports torch, as ZeroGPU requires.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

try:  # on ZeroGPU this must run before torch is imported; app.py imports it first for that reason
    import spaces  # type: ignore[import-not-found]
except ImportError:  # off Spaces the package may be absent: then there is nothing to decorate
    spaces = None


def on_zerogpu(module: Any = None) -> bool:
    """True on a ZeroGPU Space (the `spaces` package says so), else False."""
    module = module if module is not None else sys.modules.get("spaces", spaces)
    if module is None:
        return False
    config = getattr(module, "config", None) or sys.modules.get(f"{getattr(module, '__name__', 'spaces')}.config")
    cfg = getattr(config, "Config", None)
    if cfg is not None and hasattr(cfg, "zero_gpu"):
        return bool(cfg.zero_gpu)
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def _identity_gpu(task: Callable | None = None, **kwargs: Any) -> Any:
    """`@spaces.GPU` where the package is missing: returns the function unchanged."""
    if callable(task):
        return task
    return lambda fn: fn


GPU: Callable[..., Any] = spaces.GPU if spaces is not None else _identity_gpu


def max_lease_seconds() -> float | None:
    """Longest single ZeroGPU lease we ask for (FIFO_MAX_LEASE_S, default 120); None off ZeroGPU."""
    if not on_zerogpu():
        return None
    try:
        return max(20.0, float(os.environ.get("FIFO_MAX_LEASE_S", "120")))
    except ValueError:
        return 120.0
