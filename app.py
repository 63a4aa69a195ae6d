"""fifo-video: endless text-to-video with FIFO-Diffusion (arXiv 2405.11473), as a Gradio app.

The UI only: widgets, events, streaming and the `@spaces.GPU` lease. What the handlers do lives
in `fifo_app/` (plain Python, no Gradio); the method lives in `fifo/`.

    python app.py                      # the toy world on a CPU, or a real model where a GPU is
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 python app.py
"""

from __future__ import annotations

try:  # ZeroGPU patches CUDA initialisation when `spaces` is imported, so it comes before torch
    import spaces
except ImportError:  # not on Spaces, nor installed: nothing to patch
    spaces = None

import functools
import html
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# cached examples go to a temp folder, not into the repository's working tree
os.environ.setdefault("GRADIO_EXAMPLES_CACHE", os.path.join(tempfile.gettempdir(), "fifo-video-examples"))

import gradio as gr

from fifo import BACKBONES
from fifo.config import APP_SETTINGS, SETTING, backbone_default
from fifo.cpu import keep_freed_memory
from fifo_app import jobs, queueviz, zerogpu
from fifo_app.estimate import format_seconds
from fifo_app.examples import load_examples, usable
from fifo_app.jobs import RunError, Update
from fifo_app.models import MANAGER, LoadError
from fifo_app.service import Service
from fifo_app.settings import (
    LENGTH_UNITS,
    InputError,
    from_query,
    parse_inputs,
    query_params,
    schedule_table,
    setting_text,
    settings_from_query,
)

log = logging.getLogger("fifo_app")

# Streaming: HLS chunks where Gradio can mux them (it calls ffmpeg and ffprobe from PATH), else a
# growing MP4. FIFO_STREAMING=hls|mp4 overrides.
_mode = os.environ.get("FIFO_STREAMING", "auto").lower()
STREAMING = _mode == "hls" or (_mode != "mp4" and bool(shutil.which("ffmpeg") and shutil.which("ffprobe")))
GPU_SLOTS = int(os.environ.get("FIFO_GPU_SLOTS", "1"))  # jobs at once; each needs its own GPU
QUEUE_SIZE = int(os.environ.get("FIFO_QUEUE_SIZE", "16"))
DEFAULT_SECONDS = 6.0


@zerogpu.GPU(duration=jobs.lease_duration)
def gpu_lease(work: jobs.LeaseWork) -> Iterator[jobs.LeaseEvent]:
    """One GPU lease: step the queue(s) of `work`, yielding frames and queue snapshots (CPU data only)."""
    yield from jobs.lease(work)


SERVICE = Service(gpu_lease, progressive_mp4=not STREAMING)


def _load_default() -> str:
    """Load the default backbone at start-up; fall back to the toy world if it cannot load."""
    name = MANAGER.default_name()
    try:
        MANAGER.get(name)
    except LoadError as e:
        log.warning("%s; starting on the toy world instead", e)
        name = "toy"
        MANAGER.get(name)
    return name


DEFAULT_BACKBONE = _load_default()


def _calibrate() -> None:
    """Time a few toy steps so the first estimates are measured, not guessed (this also warms the toy's caches)."""
    try:
        s = parse_inputs("a red ball moving right", "", "toy", 10, "frames", 0, False, 1, "off")
        work = jobs.LeaseWork([jobs.TrackSpec("calibration", s)], [10], None, 0, os.devnull + ".none")
        steps = sorted(e.step_s / e.windows for e in jobs.lease(work) if isinstance(e, jobs.StepEvent) and e.windows)
        bb = MANAGER.get("toy")
        r = s.resolved()
        lh, lw = bb.latent_size(r.height, r.width)
        SERVICE.rates.record(
            "toy", lh * lw, bb.defaults.frames_per_window, steps[len(steps) // 2]
        )  # the median: a busy moment skews less
    except Exception:  # an estimate is a nicety; never fail start-up over it
        log.exception("calibration failed")


_calibrate()  # about a second; the toy world is always loaded


# -- presentation helpers -------------------------------------------------------------------------


def _user_errors(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Turn every exception of a generator handler into a gr.Error with a plain message (no stack trace)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(str(e), title="Please check the settings", print_exception=False) from None
        except RunError as e:
            raise gr.Error(str(e), title="The run stopped", print_exception=False) from None
        except Exception as e:  # a bug or a broken machine: logged in full, shown in one line
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(e).__name__}: {e}). The app is still running: try again or change the settings.",
                title="Error",
                print_exception=False,
            ) from None

    return wrapper


def _sid(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _share_url(request: gr.Request | None, query: str) -> str:
    """An absolute link to this page with `query` (the page's own address when the browser sent it)."""
    base = ""
    if request is not None:
        try:
            ref = request.headers.get("referer") or ""
            base = ref.split("?")[0].split("#")[0] if ref.startswith("http") else str(request.request.base_url)
        except Exception:  # noqa: BLE001  (no headers on this request: a relative link still works in a browser)
            base = ""
    return f"{base}?{query}"


def _status_html(u: Update | None, idle: str = "Press <b>Generate</b> to make a video.") -> str:
    """The progress panel: a bar and one line of numbers."""
    if u is None:
        return f'<div class="fifo-status"><div class="fifo-line">{idle}</div></div>'
    if u.phase == "loading":
        return f'<div class="fifo-status"><div class="fifo-line"><b>{html.escape(u.note)}</b></div></div>'
    if u.phase == "warming up" and u.frames_done == 0:
        frac = u.warmup_done / u.warmup_total if u.warmup_total else 0.0
        head = f"Warming up the queue: step {u.warmup_done} of {u.warmup_total} (these frames are not part of the video)"
        colour = "#f59e0b"
    else:
        frac = u.frames_done / u.frames_total if u.frames_total else 1.0
        head = {"done": "Done", "stopped": "Stopped", "finishing": "Finishing"}.get(u.phase, "Generating")
        head += f": frame {u.base_frames + u.frames_done} of {u.base_frames + u.frames_total}"
        if u.base_frames:
            head += f" ({u.frames_done} of {u.frames_total} new)"
        colour = {"done": "#10b981", "stopped": "#6b7280"}.get(u.phase, "#6366f1")
    bits = []
    if u.seconds_per_frame:
        bits.append(f"{u.seconds_per_frame:.3g} s per frame")
    if u.phase not in ("done", "stopped") and u.eta_s is not None:
        bits.append(f"about {format_seconds(u.eta_s)} left")
    bits.append(f"{format_seconds(u.elapsed_s)} elapsed")
    if u.leases > 1 or zerogpu.on_zerogpu():
        bits.append(f"{u.leases} GPU lease{'s' * (u.leases != 1)}")
    if u.note:
        bits.append(html.escape(u.note))
    return (
        f'<div class="fifo-status"><div class="fifo-line"><b>{head}</b></div>'
        f'<div class="fifo-bar"><div style="width:{100 * min(max(frac, 0), 1):.1f}%;background:{colour}"></div></div>'
        f'<div class="fifo-line fifo-muted">{" · ".join(bits)}</div></div>'
    )


def _queue_image(u: Update) -> Any:
    q = u.queue
    if q is None:
        return gr.skip()
    return queueviz.render_queue(q.preview, q.timesteps, q.context, q.frames_per_window, q.step, q.warming_up)


def _video_value(u: Update) -> Any:
    if u.chunk is not None:
        return str(u.chunk)
    if u.preview_mp4 is not None:
        return str(u.preview_mp4)
    return gr.skip()


def _cleared(u: Update) -> Any:
    """The video output at the start of a run: the old video goes (a streaming player must not get an empty stream)."""
    if u.chunk is not None:
        return str(u.chunk)
    return gr.update(value=None) if STREAMING else None


def _stream(updates: Iterator[Update], request: gr.Request | None) -> Iterator[tuple]:
    """Map a run's Updates onto the generate outputs: video, mp4, state, status, queue, link, details."""
    first = True
    for u in updates:
        if first:  # a new run: clear the previous one's results
            first = False
            yield _cleared(u), None, None, _status_html(u), gr.skip(), "", u.as_dict()
            continue
        r = u.result
        if r is None:
            yield _video_value(u), gr.skip(), gr.skip(), _status_html(u), _queue_image(u), gr.skip(), u.as_dict()
        else:
            link = (
                _share_url(request, r.settings.to_query())
                if r.settings is not None
                else "(continued from an uploaded state: no link can remake it)"
            )
            yield (
                _video_value(u),
                str(r.mp4),
                str(r.state_path) if r.state_path else None,
                _status_html(u),
                _queue_image(u),
                link,
                u.as_dict(),
            )


# -- handlers ---------------------------------------------------------------------------------------


def with_declared_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(..., random_seed, schedule, request, **options)` published with one parameter per declared app
    setting between `random_seed` and `schedule`: Gradio passes the controls' values positionally in
    that order, and its API (and MCP tool) lists them by name."""
    inner = inspect.signature(fn)
    params = [p for p in inner.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = [p.name for p in params].index("random_seed") + 1
    declared = [
        inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default="default", annotation=float | str)
        for s in APP_SETTINGS
    ]
    public = inspect.Signature(params[:at] + declared + params[at:], return_annotation=inner.return_annotation)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = public.bind(*args, **kwargs)
        bound.apply_defaults()
        return fn(**bound.arguments)

    wrapper.__signature__ = public  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in public.parameters.values()},
        "request": gr.Request,
        "return": Iterator[tuple],
    }
    return wrapper


@_user_errors
@with_declared_settings
def generate(
    prompt: str,
    negative_prompt: str = "",
    backbone: str = DEFAULT_BACKBONE,
    length: float = DEFAULT_SECONDS,
    length_unit: str = "seconds",
    seed: float = 0,
    random_seed: bool = True,
    schedule: Any = None,
    request: gr.Request = None,
    **options: Any,
) -> Iterator[tuple]:
    """Make a video of `length` (seconds or frames) from a prompt or a prompt schedule ('FRAME: prompt' lines).

    Advanced settings (partitions, lookahead, eta, guidance_scale, fps, height, width) left at "default" take the
    backbone's own values. Streams the video while it grows; the last output carries the whole MP4 (with its
    settings in the metadata), the queue state and a share link.
    """
    settings = parse_inputs(
        prompt, negative_prompt, backbone, length, length_unit, seed, random_seed, schedule_rows=schedule, **options
    )
    yield from _stream(SERVICE.generate(settings, _sid(request)), request)


@_user_errors
def extend(
    prompt: str | None = None, length: float = 2.0, length_unit: str = "seconds", schedule: Any = None, request: gr.Request = None
) -> Iterator[tuple]:
    """Continue this session's last video by `length` more, seamlessly; a changed prompt takes over from where it ends."""
    yield from _stream(SERVICE.extend(_sid(request), prompt, length, length_unit, schedule), request)


@_user_errors
def continue_state(
    state_file: str | None = None,
    prompt: str | None = None,
    length: float = 2.0,
    length_unit: str = "seconds",
    schedule: Any = None,
    request: gr.Request = None,
) -> Iterator[tuple]:
    """Continue a queue state saved earlier (a .pt file from this app or `python -m fifo --save-state`)."""
    yield from _stream(SERVICE.continue_state(_sid(request), state_file, prompt, length, length_unit, schedule), request)


@_user_errors
def compare(
    prompt: str,
    backbone: str = DEFAULT_BACKBONE,
    length: float = 4.0,
    length_unit: str = "seconds",
    seed: float = 0,
    a_partitions: float | str = "default",
    a_lookahead: str = "off",
    a_eta: float | str = "default",
    b_partitions: float | str = "default",
    b_lookahead: str = "on",
    b_eta: float | str = "default",
    negative_prompt: str = "",
    request: gr.Request = None,
) -> Iterator[tuple]:
    """The same prompt and seed under settings A and B, side by side in one video."""
    common = (prompt, negative_prompt, backbone, length, length_unit, seed, False)
    a = parse_inputs(*common, partitions=a_partitions, lookahead=a_lookahead, eta=a_eta)
    b = parse_inputs(*common, partitions=b_partitions, lookahead=b_lookahead, eta=b_eta)
    first = True
    for u in SERVICE.compare(a, b, _sid(request)):
        video = _cleared(u) if first else _video_value(u)
        mp4 = str(u.result.mp4) if u.result is not None else (None if first else gr.skip())
        first = False
        yield video, mp4, _status_html(u), u.as_dict()


def example_video(prompt: str, backbone: str, length: float, length_unit: str, seed: float, random_seed: bool) -> Iterator[tuple]:
    """An example's video, for the lazy example cache: only chunk paths (or the MP4) for the video output."""
    try:
        settings = parse_inputs(prompt, "", backbone, length, length_unit, seed, random_seed)
        for u in SERVICE.generate(settings, f"examples-{abs(hash(prompt)) % 10**8}"):
            video = str(u.chunk) if u.chunk is not None else (str(u.preview_mp4) if u.preview_mp4 is not None else None)
            yield video, (str(u.result.mp4) if u.result else None), _status_html(u), u.as_dict()
    except (InputError, RunError) as e:
        raise gr.Error(str(e), print_exception=False) from None


def stop(request: gr.Request = None) -> str:
    """Stop this session's run after its current step; what was made is kept as a complete video."""
    if SERVICE.stop(_sid(request)):
        gr.Info("Stopping after this step; the video made so far is kept.")
        return "stopping"
    return "nothing to stop"


def stop_button(request: gr.Request = None) -> None:
    """The Stop buttons: `stop`, with nothing to show but a toast."""
    if stop(request) != "stopping":
        gr.Info("Nothing is running.")


def estimate(
    backbone: str,
    length: float,
    length_unit: str,
    partitions: float | str = "default",
    lookahead: str = "default",
    fps: float | str = "default",
    height: float | str = "default",
    width: float | str = "default",
) -> str:
    """How long a run with these settings should take here (Markdown)."""
    return SERVICE.estimate(backbone, length, length_unit, partitions, lookahead, fps, height, width)


def settings_from_link(link: str) -> dict:
    """The settings a share link (or its query string) stands for, validated."""
    try:
        return settings_from_query(query_params(link)).to_dict()
    except InputError as e:
        raise gr.Error(str(e), title="That link does not work here", print_exception=False) from None


def backbone_defaults(name: str) -> str:
    """A line on the backbone and its defaults (which advanced settings left at "default" take)."""
    spec = BACKBONES.get(name)
    if spec is None:
        return ""
    d = spec.defaults
    note = "" if not spec.needs_gpu or MANAGER.gpu() else " **It needs a GPU, which this machine lacks.**"
    return (
        f"**{name}**: {spec.summary}.{note}  \nDefaults: {d.partitions} partitions, lookahead {'on' if d.lookahead else 'off'}, "
        f"eta {d.eta:g}, guidance {d.guidance_scale:g}, {d.fps} fps, {d.width}x{d.height}, {d.frames_per_window} frames per window. "
        f"Licence: {spec.licence}."
    )


# Advanced settings are dropdowns whose first choice is "default" (the backbone's own value, shown in
# its label); other values can be typed in. A number box cannot be empty in the browser. Each is
# derived from the setting's declaration in `fifo.config.SETTINGS`.
OPTION_KEYS = tuple(s.name for s in APP_SETTINGS)


def _backbone_default(key: str, backbone: str | None) -> str:
    if backbone not in BACKBONES:
        return ""
    return setting_text(SETTING[key], backbone_default(key, BACKBONES[backbone].defaults))


def _choices(key: str, backbone: str | None) -> list[tuple[str, Any]]:
    default = _backbone_default(key, backbone)
    first = (f"default ({default})" if default else "default", "default")
    s = SETTING[key]
    return [first, *((setting_text(s, v),) * 2 for v in s.choices)]


def _option(key: str, backbone: str | None, label: str | None = None, value: Any = "default") -> gr.Dropdown:
    """A dropdown for one advanced setting: 'default' first, common values, any other value typed in."""
    s = SETTING[key]
    return gr.Dropdown(
        _choices(key, backbone),
        value=value,
        label=label or s.label,
        info=None,
        allow_custom_value=s.kind is not bool,
        filterable=True,
        min_width=110,
    )


def on_backbone(name: str) -> tuple:
    """A new backbone: advanced settings go back to "default", whose labels now show this backbone's values."""
    if name not in BACKBONES:
        return (gr.skip(),) * (len(OPTION_KEYS) + 1)
    return (*(gr.update(choices=_choices(k, name), value="default") for k in OPTION_KEYS), backbone_defaults(name))


def on_load(request: gr.Request) -> tuple:
    """Fill the widgets from the page's query string (a share link); widgets the link leaves out keep their values."""
    params = dict(request.query_params) if request is not None else {}
    plain = ("prompt", "negative_prompt", "backbone", "length", "length_unit", "seed", "random_seed")
    if not params:
        return (gr.skip(),) * (len(plain) + len(OPTION_KEYS) + 3)
    values, notes = from_query(params)
    schedule_rows: Any = gr.skip()
    if "prompt" in values:
        values["prompt"], rows = schedule_table(values["prompt"])
        schedule_rows = rows or None
    name = values.get("backbone", DEFAULT_BACKBONE)
    options = [
        gr.update(choices=_choices(k, name), value="default" if values.get(k) is None else setting_text(SETTING[k], values[k]))
        for k in OPTION_KEYS
    ]
    note = "Settings loaded from the link: press **Generate** to make it."
    if notes:
        note = "Settings loaded from the link, except: " + "; ".join(notes)
    return (*(values[k] if k in values else gr.skip() for k in plain), *options, schedule_rows, note, backbone_defaults(name))


def end_session(request: gr.Request) -> None:
    """The page closed: stop its run and delete its files."""
    SERVICE.end_session(_sid(request))


# -- the page -------------------------------------------------------------------------------------

CSS = """
.fifo-status {padding: 10px 12px; border-radius: 10px; background: var(--block-background-fill); border: 1px solid var(--border-color-primary);}
.fifo-bar {height: 10px; border-radius: 5px; background: var(--background-fill-secondary); overflow: hidden; margin: 6px 0;}
.fifo-bar > div {height: 100%; transition: width .3s ease;}
.fifo-line {font-size: 0.95em;}
.fifo-muted {opacity: .75; font-size: .88em;}
#fifo-title h1 {margin-bottom: 0;}
"""

INTRO = """
<div id="fifo-title">

# FIFO-Diffusion: endless text-to-video

A video model that only knows short clips, made to go on for as long as you like: a queue of frames at
increasing noise levels, one clean frame out of the head and one fresh noise frame into the tail at every
step ([Kim et al., NeurIPS 2024](https://arxiv.org/abs/2405.11473)). The video streams in while it is made;
**Stop** keeps what is done, **Extend** carries on from where it ended.
</div>
"""

HOW = """
**How it works.** The queue holds `L = f × n` latent frames (`f` frames per model call, `n` partitions),
the frame at the head nearly clean, the one at the tail pure noise. Each step the model denoises windows of
`f` neighbouring frames, each frame at its own noise level, and every frame moves one rung cleaner: the head
leaves as a finished video frame and fresh noise enters at the tail. More partitions mean more denoising
steps per frame (slower, smoother); *lookahead* lets each frame see `f/2` cleaner frames ahead of it
(twice the compute, better frames). The picture under the video shows the queue live: the top row samples
a few slots (head on the left), the strip below shows every slot, the bars their noise levels.

**The toy world** (backbone `toy`) is built in and runs on a CPU: one sprite bouncing in a box, denoised
exactly in closed form, so you can watch the method without a GPU. Its prompts use these words:
{vocabulary}. Guidance and negative prompts do nothing there.

**Prompts that change over time**: write lines `FRAME: prompt` in the prompt box (e.g. `0: a red ball moving
right` and `48: a red ball moving up`) or add rows to the schedule table; frames count video frames.

**Share**: after a run, the link under the video remakes it exactly (every setting and the seed); the MP4
carries the same settings in its metadata (`ffprobe -show_format`).
"""


def _vocabulary() -> str:
    try:
        from fifo.backbones.toy import vocabulary

        return vocabulary()
    except Exception:  # noqa: BLE001  (the help text is optional)
        return "shapes, colours, speeds and directions"


def build() -> gr.Blocks:
    """The whole page."""
    choices = [(c.label, c.name) for c in MANAGER.choices()]
    with gr.Blocks(title="FIFO-Diffusion: endless text-to-video", delete_cache=(900, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Make a video"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=340):
                        prompt = gr.Textbox(
                            label="Prompt",
                            lines=2,
                            max_lines=8,
                            placeholder="a red ball moving right   (or lines like '0: …' and '48: …' for a prompt that changes over time)",
                            elem_id="prompt",
                        )
                        with gr.Row():
                            backbone = gr.Dropdown(choices, value=DEFAULT_BACKBONE, label="Backbone", scale=3)
                            length = gr.Number(DEFAULT_SECONDS, label="Length", scale=2)
                            length_unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2)
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=None, scale=3)
                            random_seed = gr.Checkbox(True, label="random seed", scale=2)
                        with gr.Accordion("Prompt changes over time (schedule table)", open=False):
                            gr.Markdown("Later prompts and the video frame each starts at; the prompt box holds frame 0.")
                            schedule = gr.Dataframe(
                                headers=["from frame", "prompt"],
                                datatype=["number", "str"],
                                column_count=2,
                                row_count=1,
                                type="array",
                                interactive=True,
                                label="Schedule",
                            )
                        with gr.Accordion("Negative prompt and advanced settings", open=False):
                            negative = gr.Textbox(
                                "", label="Negative prompt", placeholder="what to steer away from (ignored by the toy world)"
                            )
                            defaults_md = gr.Markdown(backbone_defaults(DEFAULT_BACKBONE))
                            options: dict[str, gr.Dropdown] = {}
                            for row in (OPTION_KEYS[:3], OPTION_KEYS[3:]):
                                with gr.Row():
                                    options.update({k: _option(k, DEFAULT_BACKBONE) for k in row})
                        estimate_md = gr.Markdown(label="estimate", show_label=False, elem_id="estimate")
                        link_note = gr.Markdown()
                        with gr.Row():
                            generate_btn = gr.Button("Generate", variant="primary", scale=3, elem_id="generate")
                            stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                        with gr.Row():
                            extend_len = gr.Number(2.0, label="Extend by", scale=2)
                            extend_unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2)
                            extend_btn = gr.Button("Extend", scale=2, elem_id="extend")
                        with gr.Accordion("Continue a saved queue state", open=False):
                            gr.Markdown(
                                "Upload a state file saved after a run (here or by `python -m fifo --save-state`) and press "
                                "Continue: the new video starts where that one ended, with the prompt the state records, or "
                                "with the prompt typed above from its first new frame on."
                            )
                            state_upload = gr.File(label="Saved state (.pt)", file_types=[".pt"], type="filepath")
                            continue_btn = gr.Button("Continue")
                    with gr.Column(scale=6, min_width=360):
                        video = gr.Video(
                            label="Video (grows while it is made)",
                            streaming=STREAMING,
                            autoplay=True,
                            loop=False,
                            height=380,
                            interactive=False,
                            elem_id="live",
                            buttons=[] if STREAMING else ["download"],
                        )
                        status = gr.HTML(_status_html(None), label="Status", elem_id="status")
                        with gr.Row():
                            mp4_file = gr.File(label="Whole video (MP4)", interactive=False, elem_id="mp4", height=90)
                            state_file = gr.File(label="Queue state, to continue later", interactive=False, height=90)
                        share = gr.Textbox(
                            label="Share link: remakes this video exactly", interactive=False, buttons=["copy"], elem_id="share"
                        )
                        with gr.Accordion("Run details (JSON)", open=False):
                            details = gr.JSON(label="progress", elem_id="details")
                queue_img = gr.Image(
                    queueviz.placeholder(),
                    label="The FIFO queue, live",
                    show_label=False,
                    interactive=False,
                    type="numpy",
                    format="webp",
                    elem_id="queue",
                    buttons=["fullscreen"],
                )

                exs = usable(load_examples(), MANAGER.gpu())
                toy_exs = [e for e in exs if not BACKBONES[e.backbone].needs_gpu]
                real_exs = [e for e in exs if BACKBONES[e.backbone].needs_gpu]
                ex_inputs = [prompt, backbone, length, length_unit, seed, random_seed]
                if toy_exs:  # cheap to run, so their videos are cached on first use
                    gr.Examples(
                        examples=[[e.prompt, e.backbone, e.seconds, "seconds", e.seed, False] for e in toy_exs],
                        example_labels=[e.label for e in toy_exs],
                        inputs=ex_inputs,
                        outputs=[video, mp4_file, status, details],
                        fn=example_video,
                        cache_examples=True,
                        cache_mode="lazy",
                        label="Toy-world examples (click one to see it; Generate to watch it being made)",
                        examples_per_page=8,
                    )
                if real_exs:  # a GPU model per click would queue behind runs: these only fill in the settings
                    gr.Examples(
                        examples=[[e.prompt, e.backbone, e.seconds, "seconds", e.seed, False] for e in real_exs],
                        example_labels=[e.label for e in real_exs],
                        inputs=ex_inputs,
                        label="Examples for the pretrained models (click one, then Generate)",
                        examples_per_page=8,
                    )

            with gr.Tab("Compare settings"):
                gr.Markdown(
                    "The same prompt and seed under two settings, side by side in one video, frame for frame: "
                    "e.g. lookahead off and on, or 1 and 4 partitions."
                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=340):
                        c_prompt = gr.Textbox("a red ball moving right", label="Prompt", lines=2)
                        with gr.Row():
                            c_backbone = gr.Dropdown(choices, value=DEFAULT_BACKBONE, label="Backbone", scale=3)
                            c_length = gr.Number(4.0, label="Length", scale=2)
                            c_unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2)
                            c_seed = gr.Number(0, label="Seed", precision=None, scale=2)
                        preset = gr.Radio(
                            ["lookahead off vs on", "1 vs 4 partitions", "eta 0 vs 1"],
                            value="lookahead off vs on",
                            label="Preset",
                        )
                        with gr.Row():
                            a_part = _option("partitions", DEFAULT_BACKBONE, "A: partitions")
                            a_look = _option("lookahead", DEFAULT_BACKBONE, "A: lookahead", "off")
                            a_eta = _option("eta", DEFAULT_BACKBONE, "A: eta")
                        with gr.Row():
                            b_part = _option("partitions", DEFAULT_BACKBONE, "B: partitions")
                            b_look = _option("lookahead", DEFAULT_BACKBONE, "B: lookahead", "on")
                            b_eta = _option("eta", DEFAULT_BACKBONE, "B: eta")
                        c_estimate = gr.Markdown(label="estimate", show_label=False)
                        with gr.Row():
                            compare_btn = gr.Button("Compare", variant="primary", scale=3)
                            c_stop = gr.Button("Stop", variant="stop", scale=1)
                    with gr.Column(scale=6, min_width=360):
                        c_video = gr.Video(
                            label="A | B",
                            show_label=False,  # the frames carry their own labels; the badge would cover A's
                            height=380,
                            streaming=STREAMING,
                            autoplay=True,
                            interactive=False,
                            buttons=[] if STREAMING else ["download"],
                        )
                        c_status = gr.HTML(_status_html(None, "Press <b>Compare</b>."), label="Status")
                        c_file = gr.File(label="Side-by-side video (MP4)", interactive=False)
                        with gr.Accordion("Run details (JSON)", open=False):
                            c_details = gr.JSON(label="progress")

        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW.replace("{vocabulary}", _vocabulary()))

        # -- events ------------------------------------------------------------------------------
        # the order of generate's published parameters: core, each declared setting, the schedule table
        gen_inputs = [prompt, negative, backbone, length, length_unit, seed, random_seed, *options.values(), schedule]
        gen_outputs = [video, mp4_file, state_file, status, queue_img, share, details]
        gpu = {"concurrency_id": "gpu", "concurrency_limit": GPU_SLOTS, "show_progress": "hidden"}
        est_inputs = [backbone, length, length_unit, *(options[k] for k in ("partitions", "lookahead", "fps", "height", "width"))]
        gr.on(
            [c.change for c in est_inputs],
            estimate,
            est_inputs,
            estimate_md,
            api_name="estimate",
            queue=False,
            show_progress="hidden",
        )
        refresh = {
            "fn": estimate,
            "inputs": est_inputs,
            "outputs": estimate_md,
            "api_visibility": "private",
            "queue": False,
            "show_progress": "hidden",
        }
        # after a run the estimate line is refreshed: the rates it uses were just measured
        generate_btn.click(generate, gen_inputs, gen_outputs, api_name="generate", **gpu).then(**refresh)
        extend_btn.click(extend, [prompt, extend_len, extend_unit, schedule], gen_outputs, api_name="extend", **gpu).then(
            **refresh
        )
        continue_btn.click(
            continue_state,
            [state_upload, prompt, extend_len, extend_unit, schedule],
            gen_outputs,
            api_name="continue_state",
            **gpu,
        ).then(**refresh)
        for i, button in enumerate((stop_btn, c_stop)):
            button.click(stop_button, None, None, api_name=f"stop_button_{i}", api_visibility="private", queue=False)
        gr.api(stop, api_name="stop", queue=False)
        compare_btn.click(
            compare,
            [c_prompt, c_backbone, c_length, c_unit, c_seed, a_part, a_look, a_eta, b_part, b_look, b_eta],
            [c_video, c_file, c_status, c_details],
            api_name="compare",
            **gpu,
        )

        def compare_estimate(name: str, n: float, unit: str, ap: Any, al: str, bp: Any, bl: str) -> str:
            a = SERVICE.estimate(name, n, unit, ap, al, None, None, None)
            b = SERVICE.estimate(name, n, unit, bp, bl, None, None, None)
            return f"A: {a}  \nB: {b}"

        c_est_inputs = [c_backbone, c_length, c_unit, a_part, a_look, b_part, b_look]
        gr.on(
            [c.change for c in c_est_inputs],
            compare_estimate,
            c_est_inputs,
            c_estimate,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )

        presets = {
            "lookahead off vs on": ("default", "off", "default", "default", "on", "default"),
            "1 vs 4 partitions": (1, "default", "default", 4, "default", "default"),
            "eta 0 vs 1": ("default", "default", 0, "default", "default", 1),
        }
        preset.input(
            lambda p: presets.get(p, (gr.skip(),) * 6),
            preset,
            [a_part, a_look, a_eta, b_part, b_look, b_eta],
            api_visibility="private",
            queue=False,
        )

        c_backbone.input(
            lambda name: tuple(gr.update(choices=_choices(k, name)) for k in ("partitions", "lookahead", "eta") * 2),
            c_backbone,
            [a_part, a_look, a_eta, b_part, b_look, b_eta],
            api_visibility="private",
            queue=False,
        )
        backbone.input(
            on_backbone,
            backbone,
            [*options.values(), defaults_md],
            api_visibility="private",
            queue=False,
        )
        gr.api(settings_from_link, api_name="settings_from_link")
        demo.load(
            on_load,
            None,
            [*gen_inputs, link_note, defaults_md],  # a share link sets every input of /generate
            api_visibility="private",
        ).then(estimate, est_inputs, estimate_md, api_visibility="private", queue=False).then(
            compare_estimate, c_est_inputs, c_estimate, api_visibility="private", queue=False
        )
        demo.unload(end_session)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


demo = build()


def launch(**kwargs: Any) -> Any:
    """Start the server (host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT unless given)."""
    kwargs.setdefault("theme", gr.themes.Soft(primary_hue="indigo", secondary_hue="pink"))
    kwargs.setdefault("css", CSS)
    kwargs.setdefault("max_file_size", "512mb")
    kwargs.setdefault("footer_links", ["api", "gradio"])
    keep_freed_memory()  # the toy (and any model without a GPU) steps on this process's CPU: fifo/cpu.py
    return demo.launch(**kwargs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch()
