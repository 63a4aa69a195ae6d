"""The command line: python -m fifo "a red ball moving right" --frames 300 -o out.mp4"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from .config import CONFIG_FIELDS, SETTINGS, Setting


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fifo",
        description="Unbounded text-to-video with FIFO-Diffusion. Frames are written as they are made; "
        "Ctrl-C stops early and keeps a valid video of what was made.",
    )
    p.add_argument("prompt", nargs="?", help="the prompt (or use --prompt-file for a schedule)")
    p.add_argument("--prompt-file", type=Path, help="a prompt schedule: lines 'FRAME: prompt' (frames count video frames)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (ignored by the toy world)")
    p.add_argument("--backbone", default="toy", help="a registry name (see --list-backbones); default: toy")
    p.add_argument("--list-backbones", action="store_true", help="print the registry and exit")
    p.add_argument("--frames", type=int, default=None, help="video frames to emit after warm-up (default: 10 s)")
    p.add_argument("-o", "--output", type=Path, default=Path("out.mp4"), help="MP4 to write (default: out.mp4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0, or the resumed state's)")
    g = p.add_argument_group("FIFO settings (default: the backbone's own)")
    for setting in SETTINGS:  # each flag derives from the setting's one declaration
        _add_setting(g, setting)
    r = p.add_argument_group("device and state")
    r.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    r.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="model dtype")
    r.add_argument("--save-state", type=Path, help="save the queue state here at the end, to continue later")
    r.add_argument("--resume", type=Path, help="continue from a saved state (its seed, size and layout apply)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _add_setting(group: argparse._ArgumentGroup, s: Setting) -> None:
    """The flag of one declared setting: --name, typed; its range is checked with the others by FIFOConfig."""
    if s.kind is bool:
        group.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=None, help=s.help)
        return
    default = "the backbone's" if s.default is None else s.default
    text = s.help if "default:" in s.help else f"{s.help} (default: {default})"
    choices = s.choices if s.kind is str else None
    group.add_argument(s.flag, type=s.kind, choices=choices, default=s.default, help=text)


def _list_backbones() -> None:
    from . import BACKBONES

    for spec in BACKBONES.values():
        d = spec.defaults
        print(
            f"{spec.name:22s} {spec.model_id or '(built in, no weights)'}\n"
            f"{'':22s} {d.width}x{d.height}, f={d.frames_per_window}, n={d.partitions}, lookahead={d.lookahead}, "
            f"eta={d.eta}, guidance={d.guidance_scale}, fps={d.fps}; licence: {spec.licence}; "
            f"{'needs a GPU' if spec.needs_gpu else 'runs on a CPU'}"
        )


def _peak_memory() -> str:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = f"peak memory {rss:.0f} MiB (process RSS)"
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        text += f", {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB CUDA"
    return text


class _SingleProcess:
    """One process, one device, this process writes; the engine's frames, decoded ahead on CUDA."""

    is_main = True

    def __init__(self, device: str | None) -> None:
        from .parallel import PipelinedFIFOStream  # its defaults: decode-ahead on CUDA only, same frames

        self.device, self.stream_class = device, PipelinedFIFOStream

    def __enter__(self) -> "_SingleProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None


def _run_context(device: str | None):
    """Under torchrun (WORLD_SIZE > 1) the windows of each step are split over the ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .parallel import distributed_context

        return distributed_context(device)
    return _SingleProcess(device)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    from . import FIFOConfig, FIFOState, load_backbone
    from .cpu import keep_freed_memory
    from .video import VideoWriter

    if args.list_backbones:
        _list_backbones()
        return 0
    try:
        state = FIFOState.load(args.resume) if args.resume else None
        if args.prompt_file is not None:
            if args.prompt is not None:
                raise ValueError("give a prompt or --prompt-file, not both")
            try:
                prompt = args.prompt_file.read_text()
            except OSError as e:
                raise ValueError(f"--prompt-file {args.prompt_file}: {e.strerror}") from None
        elif args.prompt is None:
            recorded = state.meta.get("prompt") if state is not None else None
            if recorded is None:
                raise ValueError("no prompt: give one, e.g. python -m fifo \"a red ball moving right\"")
            prompt = recorded  # --resume without a prompt: the state's own schedule goes on
        else:
            prompt = args.prompt
        config = FIFOConfig(**{k: getattr(args, k) for k in CONFIG_FIELDS})
        if args.output.suffix.lower() != ".mp4":
            raise ValueError(f"--output {args.output}: must end in .mp4")
        dtype = getattr(torch, args.dtype) if args.dtype else None
        with _run_context(args.device) as dist:
            backbone = load_backbone(args.backbone, device=dist.device, dtype=dtype)
            if backbone.device.type == "cpu":
                keep_freed_memory()  # ~25% faster steps on a CPU (fifo/cpu.py)
            stream = dist.stream_class(backbone, prompt, config, args.seed, args.negative_prompt, args.height, args.width, state)
            cfg = stream.config
            num_frames = args.frames if args.frames is not None else 10 * cfg.fps
            if num_frames < 1:
                raise ValueError(f"--frames {num_frames}: must be >= 1")
            frames = stream.frames(num_frames)
            if not dist.is_main:
                for _ in frames:  # other ranks step in lockstep; rank 0 decodes and writes
                    pass
                return 0
            return _write(stream, frames, num_frames, args, VideoWriter)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _write(stream, frames, num_frames: int, args, VideoWriter) -> int:
    """Stream frames into the MP4 with a progress bar; Ctrl-C keeps what was made."""
    from tqdm import tqdm

    cfg = stream.config
    meta = {
        "prompt": stream.schedule.to_text(),
        "negative_prompt": stream.negative_prompt,
        "backbone": stream.backbone.name,
        "seed": stream.seed,
        "height": stream.height,
        "width": stream.width,
        **cfg.to_dict(),
    }
    start = time.perf_counter()
    n, stopped = 0, False
    bar = tqdm(total=num_frames, unit="frame", disable=args.quiet, file=sys.stderr, desc="warming up")
    writer = VideoWriter(args.output, cfg.fps, metadata={"comment": json.dumps(meta)})
    try:
        try:
            for frame in frames:
                if n == 0:
                    bar.set_description("frames")
                writer.write(frame)
                n += 1
                bar.update(1)
        except KeyboardInterrupt:
            stopped = True
        if n == 0:
            writer.abort()
            print("error: stopped before the first frame; nothing written", file=sys.stderr)
            return 130
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    if args.save_state:
        stream.state().save(args.save_state)
    secs = time.perf_counter() - start
    note = " (stopped early)" if stopped else ""
    print(f"wrote {args.output}: {n} frames{note} in {secs:.1f} s, {secs / n:.3f} s/frame, {_peak_memory()}")
    return 130 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
