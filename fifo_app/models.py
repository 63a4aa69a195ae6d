"""Which backbones this machine offers, and loading them: the default at start-up, others on first use.

One real model sits on the GPU at a time: loading another unloads the previous one first. The toy
world has no weights and stays loaded.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from dataclasses import dataclass

import torch

from fifo import BACKBONES, Backbone, load_backbone

log = logging.getLogger("fifo_app")

# With a GPU and no FIFO_BACKBONE, the first of these that is registered and loads is the default.
PREFERRED_GPU_DEFAULTS = ("wan2.1-1.3b", "videocrafter2", "zeroscope", "modelscope")


class LoadError(RuntimeError):
    """A backbone could not be loaded; the message says what to do instead."""


def has_gpu() -> bool:
    """True when CUDA is usable here (on ZeroGPU, `spaces` makes this true outside leases too)."""
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001  (a broken driver is "no GPU" for a demo)
        return False


@dataclass(frozen=True)
class BackboneChoice:
    """One entry of the backbone menu."""

    name: str
    label: str
    available: bool  # False: listed, but it needs a GPU this machine lacks
    note: str


class BackboneManager:
    """Loads registry backbones on demand and keeps at most one GPU model resident."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._loaded: dict[str, Backbone] = {}
        self._lock = threading.RLock()

    def gpu(self) -> bool:
        """Whether real models can run here."""
        return has_gpu()

    def choices(self) -> list[BackboneChoice]:
        """Every registry entry, in registry order, with a note on what it needs."""
        gpu = self.gpu()
        out = []
        for spec in BACKBONES.values():
            if not spec.needs_gpu:
                note, ok = "CPU", True
            elif gpu:
                note, ok = f"GPU, ~{spec.vram_gb:g} GB" if spec.vram_gb else "GPU", True
            else:
                note, ok = "needs a GPU", False
            out.append(BackboneChoice(spec.name, f"{spec.name} · {note}", ok, spec.summary))
        return out

    def default_name(self) -> str:
        """FIFO_BACKBONE if set and registered; else a real model where a GPU is present; else the toy world."""
        env = os.environ.get("FIFO_BACKBONE", "").strip()
        if env in BACKBONES:
            return env
        if env:
            log.warning("FIFO_BACKBONE=%r is not registered; allowed are %s", env, ", ".join(BACKBONES))
        if self.gpu():
            for name in PREFERRED_GPU_DEFAULTS:
                if name in BACKBONES:
                    return name
        return "toy"

    def is_loaded(self, name: str) -> bool:
        """Whether `name` is in memory already."""
        return name in self._loaded

    def get(self, name: str) -> Backbone:
        """The backbone `name`, loaded on first use (evicting any other GPU model)."""
        with self._lock:
            bb = self._loaded.get(name)
            if bb is not None:
                return bb
            spec = BACKBONES.get(name)
            if spec is None:
                raise LoadError(f"backbone {name!r} is not available here: choose one of {', '.join(BACKBONES)}")
            if spec.needs_gpu and not self.gpu():
                raise LoadError(
                    f"{name} needs a CUDA GPU and this machine has none: choose 'toy', or run the app on a GPU machine or Space"
                )
            if spec.needs_gpu:
                self._evict_gpu_models()
            try:
                bb = load_backbone(name, device=None if spec.needs_gpu else "cpu")
            except torch.cuda.OutOfMemoryError:
                self._free()
                raise LoadError(f"{name} does not fit in this GPU's memory: choose a smaller model") from None
            except Exception as e:
                log.exception("loading %s failed", name)
                raise LoadError(
                    f"could not load {name} ({type(e).__name__}: {e}); its weights may not be downloadable from here"
                ) from None
            self._loaded[name] = bb
            return bb

    def _evict_gpu_models(self) -> None:
        for other in [n for n in self._loaded if BACKBONES[n].needs_gpu]:
            log.info("unloading %s to make room", other)
            del self._loaded[other]
        self._free()

    @staticmethod
    def _free() -> None:
        gc.collect()  # tensors caught in reference cycles (a failed run's traceback) go now, not later
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def free_memory(self) -> None:
        """Give GPU memory back after a run (cancelled, failed or done); on a CPU, reference counting already did."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self._free()


MANAGER = BackboneManager()
"""The process-wide manager: a ZeroGPU lease runs in a forked worker and finds the models here."""
