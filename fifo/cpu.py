"""CPU speed: glibc's allocator, set for a loop that allocates and frees the same tensors every step.

By default glibc hands blocks over 128 KiB (a threshold that adapts up to 32 MiB) straight from
the kernel with mmap, and gives freed heap memory back as soon as 128 KiB sit free at its top. A
denoising step allocates and frees the same few MiB of tensors every time, so each step pays for
fresh pages: the toy world at its defaults takes ~360 page faults per step, and ~25% of its step
time goes to them (`benchmarks/speed.py --only cpualloc`). Serving blocks up to 64 MiB from the
heap and keeping up to 256 MiB of it once freed brings that to 0. The maths is untouched; the
process keeps at most 256 MiB more than it uses, which is why this is a call and not an import
side effect. GPU runs do not need it; other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Make glibc serve blocks under `mmap_threshold` from the heap and keep `trim_threshold` of freed heap; True if set.

    Process-wide and lasting: call it once, early, in a program that runs the model on the CPU.
    """
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
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
