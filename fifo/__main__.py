"""The command line: python -m fifo "a red ball moving right" --frames 300 -o out.mp4"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import threading
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
    k = p.add_argument_group("known frames (start from the user's own media)")
    k.add_argument("--init-video", type=Path, help="continue this clip: the video holds --frames new frames after its last frame")
    k.add_argument("--init-image", type=Path, help="start from this picture: the video is the picture, then --frames new frames")
    r = p.add_argument_group("device and state")
    r.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    r.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="model dtype")
    r.add_argument("--flow-shift", type=float, default=None, help="flow models: sigma shift (default: the backbone's, see --list-backbones)")
    r.add_argument("--fps-condition", type=float, default=None, help="frame-rate input of videocrafter2 / skyreels (default: the backbone's)")
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
        d, dist = spec.defaults, spec.distilled
        steps = "" if dist is None else f"; distilled: {dist.steps} steps at t={'/'.join(f'{t:g}' for t in dist.timesteps)} ({dist.solver})"
        print(
            f"{spec.name:22s} {spec.model_id or '(built in, no weights)'}\n"
            f"{'':22s} {d.width}x{d.height}, f={d.frames_per_window}, n={d.partitions}, lookahead={d.lookahead}, "
            f"b={d.frames_per_rung}, eta={d.eta}, guidance={d.guidance_scale}, fps={d.fps}{steps}; licence: {spec.licence}; "
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


# Beyond any run that could finish; FIFO itself has no bound (a stopped run goes on with --resume).
MAX_FRAMES = 10**9


class _Stopper:
    """SIGINT (Ctrl-C) and SIGTERM (`timeout`, `kill`): what a stop keeps depends on when it comes.

    While frames are being made, the first signal stops the run after the step in progress, so the
    video holds every frame stepped and the saved state continues exactly; a second stops at once
    (the video keeps what was written, the state is not saved). Before that (loading the model),
    a signal stops at once. The handler never interrupts a frame being handed to ffmpeg.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.graceful = False  # True while frames are being made
        self.requested: int | None = None  # the signal that asked for a stop after this step
        self.forced = False
        self.last_signal = signal.SIGINT
        self.critical = False  # inside a frame write or a save: a forced stop waits for its end
        self._old: dict = {}

    def __enter__(self) -> "_Stopper":
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def _handle(self, signum: int, frame) -> None:
        self.last_signal = signum
        if self.graceful and self.requested is None:
            self.requested = signum  # seen by the engine's callback after the step in progress
            return
        self.forced = True
        if not self.critical:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a forced stop came during a critical section."""
        if self.forced:
            raise KeyboardInterrupt

    @property
    def exit_status(self) -> int:
        """128 + the signal, as a shell reports a process the signal ended."""
        return 128 + self.last_signal


def _one_line_parse_error(parser: argparse.ArgumentParser):
    """argparse prints its usage before an error; the command line's errors are one line each."""

    def error(message: str):
        print(f"error: {message} (see {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    return error


def _check_path(flag: str, path: Path) -> None:
    """A file to be written at the end of the run: refuse now what would fail then."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; name a file in it")
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ValueError(f"{flag} {path}: the folder {os.fspath(folder)!r} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {os.fspath(folder)!r} is not writable")
    if path.exists() and not path.is_file():
        raise ValueError(f"{flag} {path}: exists and is not a regular file")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output checked before any work starts: a bad one would otherwise lose the whole run."""
    if args.output.suffix.lower() != ".mp4":
        raise ValueError(f"--output {args.output}: must end in .mp4")
    _check_path("--output", args.output)
    if args.save_state is not None:
        _check_path("--save-state", args.save_state)
        if args.save_state.resolve() == args.output.resolve():
            raise ValueError(f"--save-state {args.save_state}: is also --output; the state would overwrite the video")
        if args.prompt_file is not None and args.save_state.resolve() == args.prompt_file.resolve():
            raise ValueError(f"--save-state {args.save_state}: is also --prompt-file; the state would overwrite it")
    if args.resume is not None and args.resume.resolve() == args.output.resolve():
        raise ValueError(f"--resume {args.resume}: is also --output; the video would overwrite the state")
    if args.frames is not None and not 1 <= args.frames <= MAX_FRAMES:
        digits = str(args.frames)
        shown = digits if len(digits) <= 20 else f"{digits[:12]}... ({len(digits)} digits)"
        raise ValueError(f"--frames {shown}: must be a whole number from 1 to {MAX_FRAMES:,}")


def _check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before a model is loaded onto it."""
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r}: not a device; e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available here (no GPU, or torch built without CUDA); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def _environment_failure(e: BaseException) -> bool:
    """Failures of the machine rather than of the input: ffmpeg, the output folder, missing weights."""
    from .video import VideoError

    unet3d = sys.modules.get("fifo.backbones.unet3d")  # imported only when a real model was asked for
    return isinstance(e, VideoError) or (unet3d is not None and isinstance(e, unet3d.WeightsUnavailableError))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    parser.error = _one_line_parse_error(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    with _Stopper() as stop:
        try:
            return _main(args, stop)
        except KeyboardInterrupt:
            print("error: stopped before the first frame; nothing written", file=sys.stderr)
            return stop.exit_status


def _main(args: argparse.Namespace, stop: _Stopper) -> int:
    import torch

    from . import FIFOConfig, FIFOState, load_backbone
    from .cpu import keep_freed_memory
    from .video import VideoWriter

    if args.list_backbones:
        _list_backbones()
        return 0
    try:
        _check_outputs(args)
        _check_device(args.device)
        state = None
        if args.resume is not None:
            try:
                state = FIFOState.load(args.resume)
            except ValueError as e:
                raise ValueError(f"--resume {args.resume}: {e}") from None
            if state.backbone != args.backbone:  # found before a model is loaded for nothing
                raise ValueError(f"--resume {args.resume}: made by backbone {state.backbone!r}; add --backbone {state.backbone}")
        if args.prompt_file is not None:
            if args.prompt is not None:
                raise ValueError("give a prompt or --prompt-file, not both")
            try:
                prompt = args.prompt_file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                why = getattr(e, "strerror", None) or "not UTF-8 text"
                raise ValueError(f"--prompt-file {args.prompt_file}: {why}") from None
        elif args.prompt is None:
            recorded = state.meta.get("prompt") if state is not None else None
            if recorded is None:
                raise ValueError("no prompt: give one, e.g. python -m fifo \"a red ball moving right\"")
            prompt = recorded  # --resume without a prompt: the state's own schedule goes on
        else:
            prompt = args.prompt
        config = FIFOConfig(**{k: getattr(args, k) for k in CONFIG_FIELDS})
        dtype = getattr(torch, args.dtype) if args.dtype else None
        with _run_context(args.device) as dist:
            backbone = load_backbone(
                args.backbone, device=dist.device, dtype=dtype, flow_shift=args.flow_shift, fps_condition=args.fps_condition
            )
            if backbone.device.type == "cpu":
                keep_freed_memory()  # ~25% faster steps on a CPU (fifo/cpu.py)
            known, first = _known_frames(args, backbone, config)
            try:
                stream = dist.stream_class(
                    backbone, prompt, config, args.seed, args.negative_prompt, args.height, args.width, state, known=known
                )
            except ValueError as e:
                if state is not None and str(e).startswith("state field"):  # the state does not fit the model
                    raise ValueError(f"--resume {args.resume}: {e}") from None
                raise
            cfg = stream.config
            num_frames = args.frames if args.frames is not None else 10 * cfg.fps
            if not dist.is_main:
                for _ in stream.frames(num_frames, lambda info: stop.requested is not None):
                    pass  # other ranks step in lockstep; rank 0 decodes and writes
                return 0
            return _write(stream, num_frames, args, VideoWriter, stop, first)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        if isinstance(e, OSError) or _environment_failure(e):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


def _known_frames(args, backbone, config):
    """The known latents of --init-video / --init-image (or None), and the frames to write before the new ones."""
    from .backbones.encoders import fit_frames, load_known, read_image

    if args.init_video is not None and args.init_image is not None:
        raise ValueError("give --init-video or --init-image, not both")
    path, kind = (args.init_video, "video") if args.init_video is not None else (args.init_image, "image")
    if path is None:
        return None, []
    if args.resume is not None:
        raise ValueError(f"--init-{kind} starts a new video; --resume continues a saved one: give one of them")
    height = args.height if args.height is not None else backbone.defaults.height
    width = args.width if args.width is not None else backbone.defaults.width
    known = load_known(backbone, path, kind, height, width, max_latents=config.resolve(backbone).queue_length)
    first = list(fit_frames(read_image(path), height, width)) if kind == "image" else []
    return known, first


def _write(stream, num_frames: int, args, VideoWriter, stop: _Stopper, first=()) -> int:
    """Stream frames into the MP4 with a progress bar; a stop keeps what was made (see _Stopper)."""
    from tqdm import tqdm

    from .video import VideoError, retag_video

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
    n, noted, interrupted = 0, False, False
    bar = tqdm(total=num_frames, unit="frame", disable=args.quiet, file=sys.stderr, desc="warming up")

    def stop_after_step(info) -> bool:
        nonlocal noted
        if stop.requested is not None and not noted and not args.quiet:
            bar.write("stopping after this step; signal again to stop at once (the state is then not saved)", file=sys.stderr)
            noted = True
        return stop.requested is not None

    frames = stream.frames(num_frames, stop_after_step)
    if args.init_video is not None or args.init_image is not None:
        meta["init"] = "video" if args.init_video is not None else "image"  # the media itself is not recorded
    from .drift import DriftMeter

    meter = DriftMeter(cfg.fps)
    writer = VideoWriter(args.output, cfg.fps, metadata={"comment": json.dumps(meta)})
    for frame in first:  # --init-image: the picture opens the video
        writer.write(frame)
        meter.add(frame)
    try:
        try:
            stop.graceful = True
            for frame in frames:
                meter.add(frame)
                if n == 0:
                    bar.set_description("frames")
                stop.critical = True  # a frame is handed to ffmpeg whole or not at all
                writer.write(frame)
                n += 1
                stop.critical = False
                stop.check()
                bar.update(1)
        except KeyboardInterrupt:  # a second signal: the stream may be mid-step
            interrupted = True
        finally:
            stop.graceful, stop.critical = False, True  # from here on a signal waits: finishing is quick
            frames.close()
        if n:
            writer.close()
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    stopped = n < num_frames
    saved = ""
    if args.save_state:
        if interrupted:
            saved = "; state not saved (stopped in the middle of a step)"
        else:
            try:
                stream.state().save(args.save_state)
            except OSError as e:
                print(f"error: cannot save the state to {args.save_state}: {e.strerror or e}", file=sys.stderr)
                return 1
            saved = f"; state saved to {args.save_state}"
    if n == 0:
        print(f"error: stopped before the first frame; nothing written{saved}", file=sys.stderr)
        return stop.exit_status
    secs = time.perf_counter() - start
    meter.finish()
    try:
        retag_video(args.output, {"comment": json.dumps(meta), **meter.metadata()})
    except VideoError as e:
        print(f"warning: pixel statistics not written into {args.output.name}: {e}", file=sys.stderr)
    note = " (stopped early)" if stopped else ""
    print(f"wrote {args.output}: {n} frames{note} in {secs:.1f} s, {secs / n:.3f} s/frame, {_peak_memory()}{saved}")
    print(meter.summary_line())
    return stop.exit_status if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
