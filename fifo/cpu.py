"""CPU speed: glibc's allocator, set for a loop that allocates and frees the same tensors every step.

By default glibc hands blocks over 128 KiB (a threshold that adapts up to 32 MiB) straight from
the kernel with mmap, and gives freed heap memory back as soon as 128 KiB sit free at its top. A
denoising step allocates and frees the same few MiB of tensors every time, so each step pays for
fresh pages: the toy world at its defaults takes ~360 page faults per step, and ~25% of its step
time goes to them (`benchmarks/speed.py --only cpualloc`). Serving blocks up to 64 MiB from the
heap and keeping up to 256 MiB of it once freed brings that to 0. The maths is untouched; the
process keeps at most 256 MiB more than it uses, which is why this is a call and not an import
side effect. GPU runs do not need it; other C libraries (musl, macOS) are left alone.

Both thresholds hold per malloc arena, and glibc gives each new thread its own arena (up to 8 per
core). A threaded server (Gradio runs each request in a worker thread) would so keep freed memory
once per arena, and its resident size creeps up as requests land on threads with other arenas:
`benchmarks/soak.py --runs 40 --clients 2 --set height=128 --set width=128 --set partitions=4
--set lookahead=on` (the app on the toy, a shared 2-core machine) measured the non-main arenas at
27 -> 66 MiB over 49 runs and RSS +2.1% over the second half; capped at one arena when the app
starts serving, +0.9% (the arenas made during imports stay: 20 -> 30 MiB); capped from the
process's start (`--env MALLOC_ARENA_MAX=1`), +0.7%, no other arena, 26 MiB less RSS at the end.
So the call also caps the arenas (`max_arenas`, default 1: the app runs one job at a time, and
each thread keeps its own lock-free cache of small blocks). glibc fixes its own cap once a process
has made nine arenas, and arenas made before the call stay: call it first thing, before importing
libraries that start threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20, max_arenas: int | None = 1) -> bool:
    """Serve blocks under `mmap_threshold` from the heap, keep `trim_threshold` freed, use `max_arenas` arenas; True if set.

    Process-wide and lasting: call it once, early, in a program that runs the model on the CPU.
    `max_arenas=None` leaves glibc's arena count alone.
    """
    if max_arenas is not None and (isinstance(max_arenas, bool) or not isinstance(max_arenas, int) or max_arenas < 1):
        raise ValueError(f"max_arenas={max_arenas!r}: must be a whole number >= 1, or None for glibc's default")
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt as a no-op stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    if max_arenas is not None:
        ok = ok and mallopt(M_ARENA_MAX, max_arenas)
    return bool(ok)
