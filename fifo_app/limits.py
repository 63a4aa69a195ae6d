"""Every limit the public app puts on a visitor, in one place (each can be set by an environment variable).

The method itself has no such bounds (FIFO-Diffusion makes videos of any length); these keep one
process serving strangers for days. Each is enforced where the work happens: the length, size and
prompt limits when a request is parsed, the run-time budget before a run starts (from its
estimate) and again in the run loop (a run past it stops like Stop, keeping what was made).

    FIFO_MAX_FRAMES       3600   video frames per run
    FIFO_MAX_RUN_S        900    estimated seconds per run; a run stops at 1.5x this
    FIFO_SESSION_IDLE_S   3600   an API client's files go after this long without a request
    FIFO_MAX_DISK_MB      2048   every session's files together
    FIFO_QUEUE_SIZE       16     requests waiting for the GPU, all visitors together
    FIFO_MAX_WAITING      2      requests waiting, per page (session)
    FIFO_GPU_SLOTS        1      runs at once (each needs its own GPU)
    FIFO_MAX_PROMPT_CHANGES 16   prompt changes a visitor may send into one running video
    FIFO_MAX_UPLOAD_MB    64     a picture or clip to start from: the file
    FIFO_MAX_UPLOAD_S     30     ... a clip's seconds
    FIFO_MAX_UPLOAD_FRAMES 300   ... a clip's frames
"""

from __future__ import annotations

import os


def _env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


MAX_PROMPT_CHARS = 1000  # per prompt; text encoders truncate far earlier, this only stops abuse
MAX_SCHEDULE_ENTRIES = 64
MAX_FRAMES = int(_env("FIFO_MAX_FRAMES", 3600))  # a demo bound, not the method's: FIFO has none
MAX_SEED = 2**53 - 1  # survives a round trip through JavaScript numbers
MAX_PIXELS = 1280 * 720  # height * width; beyond that a demo machine runs out of memory
MAX_RUN_S = _env("FIFO_MAX_RUN_S", 900)  # a run's estimate must fit; the run loop stops it at HARD_STOP x this
HARD_STOP = 1.5  # estimates err: a run is stopped (its frames kept) only well past the budget
SESSION_IDLE_S = _env("FIFO_SESSION_IDLE_S", 3600)
MAX_DISK_BYTES = int(_env("FIFO_MAX_DISK_MB", 2048) * 2**20)
QUEUE_SIZE = int(_env("FIFO_QUEUE_SIZE", 16))
MAX_WAITING_PER_SESSION = int(_env("FIFO_MAX_WAITING", 2))
GPU_SLOTS = int(_env("FIFO_GPU_SLOTS", 1))
MAX_PROMPT_CHANGES = int(_env("FIFO_MAX_PROMPT_CHANGES", 16))  # each adds a schedule entry and a prompt to encode
# a picture or clip to start from (fifo_app/uploads.py): checked before it is decoded, or while
MAX_UPLOAD_BYTES = int(_env("FIFO_MAX_UPLOAD_MB", 64) * 2**20)
MAX_UPLOAD_PIXELS = 4096 * 4096  # width * height the header declares (a small file can declare a huge picture)
MAX_UPLOAD_FRAMES = int(_env("FIFO_MAX_UPLOAD_FRAMES", 300))  # frames of a clip (all are shown)
MAX_UPLOAD_SECONDS = _env("FIFO_MAX_UPLOAD_S", 30)
