"""Speed and scale: a pipelined stream, windows split over ranks with torch.distributed, GPU options.

Three layers, each a drop-in for `FIFOStream` (same constructor, same frames, same state files):

`PipelinedFIFOStream`
    The engine's loop with nothing on the denoiser's critical path that need not be there: the
    decode of step k runs in a worker thread while step k+1 denoises (`decode_ahead`); the keyed
    noise of step k+1 (the tail frame and, for eta > 0 or the renoise solver, one draw per main slot) is drawn in a
    second worker meanwhile. The step itself is the engine's. It never steps further than the
    frames asked for need, and `state()` first waits for decodes in flight, so resume is exact and
    the frames are bit-identical to `FIFOStream`'s.

`DistributedFIFOStream`
    Every rank holds a full model replica and the whole queue. Each step, rank r denoises a
    contiguous share of the step's windows (in batches of `config.window_batch`), the model outputs
    of the written slots are all-gathered, and every rank takes the same solver step, so all queues
    stay identical (the noise is keyed by (seed, frame, step), so every rank draws the same).
    Only the decoding rank (rank 0 by default) decodes and yields frames; the others step in
    lockstep and yield nothing. Without an initialised process group it runs as one process.

GPU options (`apply_gpu_options`): channels-last, `torch.compile`, the attention kernel; the dtype
is `load_backbone(..., dtype=)`. Safe defaults: all off except PyTorch SDPA attention, which
diffusers already uses on torch >= 2.

Command line and Python:

    torchrun --nproc_per_node 4 -m fifo "a red ball moving right" --frames 300 -o out.mp4

    info = fifo.parallel.init_from_env()            # under torchrun; no-op for one process
    bb = fifo.load_backbone("zeroscope", device=info.device)
    for frame in fifo.parallel.generate_distributed(bb, "a red ball", 300):
        ...                                         # only rank 0 receives frames

    fifo.parallel.spawn(fn, world_size=2)          # K local processes, gloo on CPU (tests, benchmarks)
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from .backbones.base import Backbone, video_frames_before
from .engine import Callback, FIFOState, FIFOStream, generate
from .schedule import Window, window_batches

__all__ = [
    "PipelinedFIFOStream",
    "DistributedFIFOStream",
    "DistInfo",
    "init_from_env",
    "distributed_context",
    "generate_fast",
    "generate_distributed",
    "spawn",
    "free_port",
    "share_windows",
    "apply_gpu_options",
]


def _frames_of_latent(j: int, temporal_compression: int) -> int:
    """Video frames that the j-th decoded latent gives (causal VAEs: 1, then 4 each)."""
    return video_frames_before(j + 1, temporal_compression) - video_frames_before(j, temporal_compression)


def _done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


# -- the pipelined stream ------------------------------------------------------------------------


class PipelinedFIFOStream(FIFOStream):
    """`FIFOStream` with decoding and noise drawing off the denoiser's path; the same frames.

    Extra keyword arguments (all with safe defaults):
      decode_ahead   decode popped latents in a worker thread while the next step denoises.
                     None (default): on for CUDA devices, where the decoder's copy to the host
                     would otherwise stall the GPU between steps; off on a CPU, where the thread
                     hand-off (the GIL) costs about what a cheap decode saves
      prefetch_noise draw the next step's keyed noise in a worker thread meanwhile. None: on
                     for CUDA, and where steps add noise (eta > 0, the renoise solver: L draws per step, 1-5 ms of CPU work)
    """

    def __init__(self, *args: Any, decode_ahead: bool | None = None, prefetch_noise: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cuda = torch.device(self.backbone.device).type == "cuda"
        self.decode_ahead = cuda if decode_ahead is None else bool(decode_ahead)
        self.prefetch_noise = (cuda or self._coef64[2] is not None) if prefetch_noise is None else bool(prefetch_noise)
        self._inflight: deque[tuple[Future, int]] = deque()  # decodes submitted, not yet collected
        self._inflight_frames = 0
        self._decode_pool: ThreadPoolExecutor | None = None
        self._noise_pool: ThreadPoolExecutor | None = None
        self._noise_next: tuple[int, Future] | None = None  # (step, future of its noise)

    # -- noise ------------------------------------------------------------------------------------

    def _step_noise(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Step k's noise, drawn one step ahead in a worker when `prefetch_noise` is on."""
        nxt, self._noise_next = self._noise_next, None
        noise = nxt[1].result() if nxt is not None and nxt[0] == k else self._draw_step_noise(k)
        if self._noise_pool is not None:
            self._noise_next = (k + 1, self._noise_pool.submit(self._draw_step_noise, k + 1))
        return noise

    # -- frames out -------------------------------------------------------------------------------

    def _decode_job(self, latent: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._decoder.decode(latent[:, None])

    def _decode_popped(self, latent: torch.Tensor, j: int) -> None:
        n = _frames_of_latent(j, self.backbone.temporal_compression)
        if not self.decodes:  # a zero-byte placeholder that only counts the frames
            fut = _done(np.empty((n, 0, 0, 3), np.uint8))
        elif self._decode_pool is not None:
            fut = self._decode_pool.submit(self._decode_job, latent)
        elif not self._inflight:  # decoded here and now: straight to the frames to hand out, as the plain stream does
            frames = self._decoder.decode(latent[:, None])
            self._pending = frames if not len(self._pending) else np.concatenate([self._pending, frames])
            return
        else:
            fut = _done(self._decoder.decode(latent[:, None]))
        self._inflight.append((fut, n))
        self._inflight_frames += n

    def _collect_one(self) -> None:
        fut, n = self._inflight.popleft()
        self._inflight_frames -= n
        frames = fut.result()
        if len(frames) != n:
            raise RuntimeError(f"the decoder gave {len(frames)} frames for one latent where {n} were expected")
        self._pending = frames if not len(self._pending) else np.concatenate([self._pending, frames])

    def _drain(self) -> None:
        """Wait for every decode in flight; their frames join the pending ones, in order."""
        while self._inflight:
            self._collect_one()

    def _open_pools(self, device: torch.device) -> None:
        def init() -> None:
            if device.type == "cuda":
                torch.cuda.set_device(device)

        if self.decode_ahead and self.decodes:
            self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="fifo-decode", initializer=init)
        if self.prefetch_noise:
            self._noise_pool = ThreadPoolExecutor(1, thread_name_prefix="fifo-noise", initializer=init)

    def _close_pools(self) -> None:
        for pool in (self._decode_pool, self._noise_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool = self._noise_pool = None
        self._noise_next = None

    def _collect_ready(self, left: int) -> bool:
        # wait for a decode only when it is done, or when the frames in flight are all we need
        if self._inflight and (self._inflight_frames >= left or self._inflight[0][0].done()):
            self._collect_one()
            return True
        return False

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        self._open_pools(self.backbone.device)
        try:
            yield
        finally:
            self._drain_quietly()
            self._close_pools()

    def _drain_quietly(self) -> None:
        try:
            self._drain()
        except Exception:  # the error is raised where the frames were asked for; do not mask it here
            self._inflight.clear()
            self._inflight_frames = 0

    def state(self) -> FIFOState:
        """A CPU snapshot from which a new stream continues exactly where this one is (decodes in flight included)."""
        self._drain()
        return super().state()


def generate_fast(*args: Any, **kwargs: Any) -> Iterator[np.ndarray]:
    """`fifo.generate` on a `PipelinedFIFOStream` (options: decode_ahead, prefetch_noise)."""
    return generate(*args, stream_class=PipelinedFIFOStream, **kwargs)


# -- several ranks -------------------------------------------------------------------------------


def share_windows(wins: list[Window], world_size: int) -> list[list[Window]]:
    """Contiguous shares of a step's windows, one per rank, sizes differing by at most one.

    Contiguous shares write contiguous runs of main slots, so each rank sends one slab.
    """
    base, extra = divmod(len(wins), world_size)
    out, i = [], 0
    for r in range(world_size):
        size = base + (r < extra)
        out.append(wins[i : i + size])
        i += size
    return out


class DistributedFIFOStream(PipelinedFIFOStream):
    """The windows of each step split over the ranks of a process group; rank 0 decodes.

    Same constructor as `FIFOStream` plus `group` (default: the world), `decode_rank` (0) and the
    `PipelinedFIFOStream` options. Every rank must create the stream with the same arguments and
    iterate `frames(n)` to its end: the decoding rank receives the frames, the others nothing.
    A callback given on any rank may stop the run; the ranks agree by an all-reduce each step.

    `comm_seconds` / `comm_steps` / `comm_bytes`: time spent in the all-gather of model outputs
    (waiting for the slowest rank included), how many steps, bytes sent per rank.
    """

    def __init__(self, *args: Any, group: Any = None, decode_rank: int = 0, time_comm: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if on else 0
        self.world_size = dist.get_world_size(group) if on else 1
        if not 0 <= decode_rank < self.world_size:
            raise ValueError(f"decode_rank={decode_rank}: must be a rank in [0, {self.world_size})")
        self.decode_rank = decode_rank
        self.decodes = self.rank == decode_rank
        backend = dist.get_backend(group) if on else "none"
        dev = self.backbone.device
        # gloo moves CPU tensors; NCCL moves the device's own
        self._comm_device = dev if backend == "nccl" else torch.device("cpu")
        self.time_comm = (dev.type != "cuda") if time_comm is None else bool(time_comm)
        shares = share_windows(self.config.windows, self.world_size)
        h = self.h
        self._slabs = [(s[0].write_from - h, s[-1].stop - h) if s else (0, 0) for s in shares]  # main slots per rank
        self._slab = max(hi - lo for lo, hi in self._slabs)
        self._my_batches = window_batches(shares[self.rank], self.config.window_batch) if shares[self.rank] else []
        self.comm_seconds, self.comm_steps, self.comm_bytes = 0.0, 0, 0

    @property
    def is_main(self) -> bool:
        """True on the rank that decodes and yields frames."""
        return self.decodes

    def _main_outputs(self, queue: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        if self.world_size == 1:
            return super()._main_outputs(queue)
        h = self.h
        C, _, lh, lw = queue.shape
        lo = self._slabs[self.rank][0]
        send = torch.zeros((self._slab, C, lh, lw), dtype=torch.float32, device=queue.device)  # slots first: contiguous
        for w, o in self._window_outputs(queue, self._my_batches):
            send[w.write_from - h - lo : w.stop - h - lo] = o.transpose(0, 1)
        send = send.to(self._comm_device)
        recv = [torch.empty_like(send) for _ in range(self.world_size)]
        if self.time_comm and queue.device.type == "cuda":
            torch.cuda.synchronize(queue.device)
        t = time.perf_counter()
        dist.all_gather(recv, send, group=self.group)
        if self.time_comm and queue.device.type == "cuda":
            torch.cuda.synchronize(queue.device)
        self.comm_seconds += time.perf_counter() - t
        self.comm_steps += 1
        self.comm_bytes += send.numel() * send.element_size()
        return [(a, b, r[: b - a].to(queue.device).transpose(0, 1)) for (a, b), r in zip(self._slabs, recv) if b > a]

    def _all_reduce_max(self, value: int) -> int:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def _agree_on_callback(self, callback: Callback | None) -> Callback | None:
        """All ranks learn whether any has a callback; if so, each step ends with an all-reduce."""
        self._any_callback = bool(self._all_reduce_max(int(callback is not None)))
        return callback

    def _stop_requested(self, callback: Callback | None, done: int) -> bool:
        if not self._any_callback:
            return False
        local = callback is not None and bool(callback(self._info(done)))
        return bool(self._all_reduce_max(int(local)))


def generate_distributed(*args: Any, group: Any = None, **kwargs: Any) -> Iterator[np.ndarray]:
    """`fifo.generate` with the windows of each step split over the ranks (call it on every rank).

    The decoding rank (0) receives the `num_frames` frames; every other rank receives none but must
    iterate the generator to its end, stepping in lockstep. One process if no group is initialised.
    """
    return generate(*args, stream_class=DistributedFIFOStream, group=group, **kwargs)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world, its device, the backend in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None for one process without a group
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str | torch.device | None = None, backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    The device: `device` if given (a bare "cuda" means cuda:LOCAL_RANK), else cuda:LOCAL_RANK when
    CUDA is present, else the CPU; the CUDA device is made current. The backend: NCCL for CUDA,
    gloo otherwise. WORLD_SIZE unset or 1 and no group: one process, nothing initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend(), False)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, False)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kw = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kw)
    return DistInfo(rank, world, local, dev, backend, True)


class distributed_context:  # noqa: N801  (used as a function: `with distributed_context(device) as d:`)
    """For the command line under torchrun: joins the group on enter, leaves it on exit.

    Attributes: `device` (this rank's), `stream_class` (DistributedFIFOStream), `is_main` (rank 0
    writes the video), `rank`, `world_size`, `info` (DistInfo).
    """

    stream_class = DistributedFIFOStream

    def __init__(self, device: str | None = None, backend: str | None = None) -> None:
        self._device, self._backend = device, backend
        self.info: DistInfo | None = None

    def __enter__(self) -> "distributed_context":
        self.info = init_from_env(self._device, self._backend)
        self.device, self.rank, self.world_size = self.info.device, self.info.rank, self.info.world_size
        self.is_main = self.info.is_main
        return self

    def __exit__(self, *exc) -> None:
        if self.info is not None and self.info.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(index: int, fn: Callable, args: tuple, world_size: int, port: int, device: str | None, threads: int | None) -> None:
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    with distributed_context(device) as ctx:
        fn(ctx, *args)


def spawn(fn: Callable, world_size: int, args: tuple = (), device: str | None = "cpu", threads: int | None = None) -> None:
    """Run `fn(ctx, *args)` in `world_size` local processes joined in one group (gloo on CPU).

    What torchrun does, from Python: each process gets RANK, WORLD_SIZE, MASTER_ADDR/PORT (a free
    port on 127.0.0.1) and a `distributed_context`; `fn` must be importable (a module-level
    function). Raises if any process fails.
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(fn, args, world_size, free_port(), device, threads), nprocs=world_size, join=True)


# -- GPU options ---------------------------------------------------------------------------------


def _modules(backbone: Backbone) -> dict[str, torch.nn.Module]:
    """The backbone's torch modules by attribute name: the denoiser (unet / transformer) and the VAE."""
    found = {}
    for name in ("unet", "transformer", "vae"):
        m = getattr(backbone, name, None)
        if isinstance(m, torch.nn.Module):
            found[name] = m
    return found


def apply_gpu_options(
    backbone: Backbone,
    *,
    channels_last: bool = False,
    compile: bool = False,  # noqa: A002
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    attention: str = "sdpa",
) -> dict[str, str]:
    """Switch a backbone's denoiser to faster kernels, in place; returns what was done per module.

    `attention`: "sdpa" (PyTorch `scaled_dot_product_attention`: flash / memory-efficient kernels
    on CUDA; diffusers' default on torch >= 2, so this only makes it explicit) or "default" (leave
    the model's processors). `channels_last`: 4-D weights in NHWC (helps cuDNN convolutions in
    fp16/bf16 on tensor-core GPUs; 5-D temporal convolutions stay as they are). `compile`:
    `torch.compile` the denoiser's forward (the per-frame timestep hooks are traced with it; the
    first calls compile, for minutes on a large UNet). The toy backbone has no modules: nothing to do.
    """
    done: dict[str, str] = {}
    mods = _modules(backbone)
    den = mods.get("unet") or mods.get("transformer")
    if attention not in ("sdpa", "default"):
        raise ValueError(f"attention={attention!r}: allowed are 'sdpa', 'default'")
    if den is None:
        return done
    name = "unet" if "unet" in mods else "transformer"
    notes = []
    if attention == "sdpa" and hasattr(den, "attn_processors"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        procs = den.attn_processors.values()
        if procs and all(type(p) in (AttnProcessor, AttnProcessor2_0) for p in procs):
            den.set_attn_processor(AttnProcessor2_0())
            notes.append("sdpa")
        else:  # a family with processors of its own (Wan: WanAttnProcessor, SDPA already): keep them
            notes.append("sdpa: kept the model's own processors")
    if channels_last:
        for m in den.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        notes.append("channels_last")
    if compile and not getattr(den, "_fifo_compiled", False):
        # dynamic=False: one graph per batch shape (warm start, full steps, a last partial batch)
        den.forward = torch.compile(den.forward, mode=compile_mode, backend=compile_backend, dynamic=False)
        den._fifo_compiled = True
        notes.append(f"compiled ({compile_backend})")
    done[name] = ", ".join(notes)
    return done
