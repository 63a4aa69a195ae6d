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
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# cached examples go to a temp folder, not into the repository's working tree
os.environ.setdefault("GRADIO_EXAMPLES_CACHE", os.path.join(tempfile.gettempdir(), "fifo-video-examples"))

import gradio as gr
from gradio import route_utils
from gradio.components.dataframe import DataframeData

from fifo import BACKBONES
from fifo.config import APP_SETTINGS, SETTING, backbone_default
from fifo.cpu import keep_freed_memory
from fifo_app import driftview, housekeeping, queueviz, uploads, zerogpu
from fifo_app.estimate import format_seconds
from fifo_app.examples import load_examples, usable
from fifo_app.jobs import RunError, Update
from fifo_app.limits import GPU_SLOTS, MAX_WAITING_PER_SESSION, QUEUE_SIZE
from fifo_app.models import MANAGER, LoadError
from fifo_app.service import Service
from fifo_app.settings import (
    LENGTH_UNITS,
    InputError,
    from_query,
    parse_inputs,
    preset_choices,
    presets,
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
DEFAULT_SECONDS = 6.0


SERVICE = Service(progressive_mp4=not STREAMING)  # its lease function carries ZeroGPU's decorator (fifo_app/jobs.py)
DEFAULT_BACKBONE = MANAGER.default_name()  # loaded by `launch`, not on import


def _load_default() -> None:
    """Load the default backbone before serving (minutes for a real model); a failure leaves a clear error for its runs."""
    try:
        MANAGER.get(DEFAULT_BACKBONE)
    except LoadError as e:
        log.warning("%s; choose the toy world on the page", e)


# -- presentation helpers -------------------------------------------------------------------------


_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+-]+){2,}/?")  # an absolute path of two parts or more


def plain_message(text: str) -> str:
    """A message fit for a visitor: its first line, server paths replaced by '<file>', at most 400 characters."""
    line = (str(text).strip().splitlines() or [""])[0]
    line = _PATH.sub("<file>", line)
    return line if len(line) <= 400 else line[:397] + "..."


def _user_errors(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Turn every exception of a generator handler into a gr.Error with a plain message (no stack trace, no path)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(plain_message(str(e)), title="Please check the settings", print_exception=False) from None
        except RunError as e:
            raise gr.Error(plain_message(str(e)), title="The run stopped", print_exception=False) from None
        except Exception as e:  # a bug or a broken machine: logged in full, shown in one line
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(e).__name__}: {plain_message(str(e))}). The app is still running: try again or change the settings.",
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


SHARE_LABEL = "Share link: remakes this video exactly"


def share_label(details: Any) -> Any:
    """The share box's label after a run: what its link does (for a run from an upload: the prompt alone)."""
    note = details.get("share_note") if isinstance(details, dict) else None
    return gr.update(label=f"Share link: {note}" if isinstance(note, str) else SHARE_LABEL)


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
        f'<div class="fifo-line fifo-muted">{" · ".join(bits)}</div>{_drift_summary(u)}</div>'
    )


def _drift_summary(u: Update) -> str:
    """The finished video's pixel statistics in one line (first vs last second), or nothing."""
    drift = u.result.drift if u.result is not None else None
    if drift is None:
        return ""
    return f'<div class="fifo-line fifo-muted" id="drift-summary">{html.escape(drift.summary_line())}</div>'


def _drift_value(u: Update, first: bool = False) -> Any:
    """The drift plot's table when it gained a second; a new run's first update clears the old plot."""
    if u.drift_plot is not None:
        return u.drift_plot
    return None if first else gr.skip()


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
    """Map a run's Updates onto the generate outputs: video, mp4, state, status, queue, link, drift plot, details."""
    first = True
    for u in updates:
        if first:  # a new run: clear the previous one's results
            first = False
            yield _cleared(u), None, None, _status_html(u), gr.skip(), "", _drift_value(u, first=True), u.as_dict()
            continue
        r = u.result
        if r is None:
            yield _video_value(u), gr.skip(), gr.skip(), _status_html(u), _queue_image(u), gr.skip(), _drift_value(u), u.as_dict()
        else:
            link = (
                _share_url(request, r.link.to_query())
                if r.link is not None
                else "(continued from an uploaded state: no link can remake it)"
            )
            yield (
                _video_value(u),
                str(r.mp4),
                str(r.state_path) if r.state_path else None,
                _status_html(u),
                _queue_image(u),
                link,
                _drift_value(u),
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
    start_from: str | None = None,
    request: gr.Request = None,
    **options: Any,
) -> Iterator[tuple]:
    """Make a video of `length` (seconds or frames) from a prompt or a prompt schedule ('FRAME: prompt' lines).

    Advanced settings (partitions, lookahead, eta, guidance_scale, fps, height, width) left at "default" take the
    backbone's own values. Streams the video while it grows; the last output carries the whole MP4 (with its
    settings in the metadata), the queue state and a share link. `start_from`, an uploaded picture or clip
    (png, jpg, webp, mp4, webm, mov), starts the video from it: the video shows it, then `length` new frames.
    """
    settings = parse_inputs(
        prompt, negative_prompt, backbone, length, length_unit, seed, random_seed, schedule_rows=schedule, **options
    )
    if start_from:
        yield from _stream(SERVICE.generate_from_upload(settings, _sid(request), start_from), request)
        return
    yield from _stream(SERVICE.generate(settings, _sid(request)), request)


@_user_errors
def extend(
    prompt: str | None = None, length: float = 2.0, length_unit: str = "seconds", schedule: Any = None, request: gr.Request = None
) -> Iterator[tuple]:
    """Continue this page's last video by `length` more, seamlessly; a changed prompt takes over once the
    frames already begun in the queue are out (the share link then remakes the whole video)."""
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


def stop(request: gr.Request = None) -> str:
    """Stop this page's run after its current step; what was made is kept as a complete video."""
    if SERVICE.stop(_sid(request)):
        gr.Info("Stopping after this step; the video made so far is kept.")
        return "stopping"
    return "nothing to stop"


def change_prompt(prompt: str, entry: str = "tail", request: gr.Request = None) -> dict:
    """Change the prompt of this page's running video (Generate, Extend or Continue) without a restart.

    The new prompt enters the queue at its `entry` ("tail": the newest frame, so it sweeps through the
    whole queue; "head": the earliest frame no window has read, about half a window sooner) and is
    recorded in the run's prompt schedule at the frame it takes over from, so the share link remakes
    the video. Returns {"prompt", "frame", "message"}; "frame" is None while the change is on its way.
    """
    try:
        return SERVICE.change_prompt(_sid(request), prompt, entry)
    except InputError as e:
        raise gr.Error(plain_message(str(e)), title="The prompt was not changed", print_exception=False) from None


def change_prompt_button(prompt: str, request: gr.Request = None) -> None:
    """The 'Change prompt' button: `change_prompt` at the tail, answered in a toast."""
    gr.Info(change_prompt(prompt, "tail", request)["message"])


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
    frames_per_rung: float | str = "default",
) -> str:
    """How long a run with these settings should take here (Markdown)."""
    return SERVICE.estimate(backbone, length, length_unit, partitions, lookahead, fps, height, width, frames_per_rung=frames_per_rung)


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


def _gen_inputs(ui: SimpleNamespace) -> list:
    """Generate's inputs, in the order of its published parameters: core, each declared setting, the schedule."""
    return [ui.prompt, ui.negative, ui.backbone, ui.length, ui.length_unit, ui.seed, ui.random_seed, *ui.options.values(), ui.schedule]


def _est_inputs(ui: SimpleNamespace) -> list:
    """The estimate's inputs, in the order of `estimate`'s parameters."""
    keys = ("partitions", "lookahead", "fps", "height", "width", "frames_per_rung")
    return [ui.backbone, ui.length, ui.length_unit, *(ui.options[k] for k in keys)]


def on_preset(preset: str, backbone: str) -> tuple:
    """A speed preset: its partitions, lookahead and frames per rung, written into the advanced settings."""
    p = presets(backbone).get(preset) if backbone in BACKBONES else None
    if p is None:
        return (gr.skip(),) * 3
    return tuple(setting_text(SETTING[k], p[k]) for k in ("partitions", "lookahead", "frames_per_rung"))


def on_backbone(name: str) -> tuple:
    """A new backbone: advanced settings go back to "default", whose labels now show this backbone's values."""
    if name not in BACKBONES:
        return (gr.skip(),) * (len(OPTION_KEYS) + 1)
    return (*(gr.update(choices=_choices(k, name), value="default") for k in OPTION_KEYS), backbone_defaults(name))


def on_load(request: gr.Request) -> tuple:
    """Fill the widgets from the page's query string (a share link); widgets the link leaves out keep their values.

    What the link could not use is said in a plain-text box: link text never becomes Markdown or HTML.
    """
    params = dict(request.query_params) if request is not None else {}
    plain = ("prompt", "negative_prompt", "backbone", "length", "length_unit", "seed", "random_seed")
    values, notes = from_query(params)
    if not values and not notes:  # no link (or only Gradio's own page parameters)
        return (gr.skip(),) * (len(plain) + len(OPTION_KEYS) + 4)
    schedule_rows: Any = gr.skip()
    if "prompt" in values:
        values["prompt"], rows = schedule_table(values["prompt"])
        schedule_rows = rows or None
    name = values.get("backbone", DEFAULT_BACKBONE)
    options = [
        gr.update(choices=_choices(k, name), value="default" if values.get(k) is None else setting_text(SETTING[k], values[k]))
        for k in OPTION_KEYS
    ]
    note = "Settings loaded from the link: press Generate to make it."
    if notes:
        note = "Settings loaded from the link, except: " + "; ".join(notes)
    box = gr.update(open=True) if isinstance(schedule_rows, list) and schedule_rows else gr.skip()
    return (
        *(values[k] if k in values else gr.skip() for k in plain),
        *options,
        schedule_rows,
        gr.update(value=f'<div class="fifo-note">{html.escape(note)}</div>', visible=True),  # text, never markup
        backbone_defaults(name),
        box,
    )


def seed_used(details: Any, seed: Any) -> Any:
    """The Seed box after a run: the seed the run used (a random one included), so it can be remade."""
    used = details.get("seed") if isinstance(details, dict) else None
    return used if isinstance(used, int) else gr.skip()


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
.fifo-note {padding: 6px 10px; border-radius: 8px; background: var(--background-fill-secondary); white-space: pre-wrap;}
@media (max-width: 640px) {#fifo-title p {display: none;} #fifo-title h1 {font-size: 1.5em;}}
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


def _inputs(ui: SimpleNamespace, choices: list[tuple[str, str]]) -> None:
    """The left column of the main tab: prompt, examples, length, seed, buttons, then the finer settings."""
    ui.prompt = gr.Textbox(
        label="Prompt",
        lines=2,
        max_lines=8,
        placeholder="a red ball moving right   (or lines like '0: …' and '48: …' for a prompt that changes over time)",
        elem_id="prompt",
    )
    with gr.Row():
        ui.generate_btn = gr.Button("Generate", variant="primary", scale=3, elem_id="generate", min_width=100)
        ui.steer_btn = gr.Button("Change prompt", scale=2, elem_id="change-prompt", interactive=False, min_width=100)
        ui.stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False, min_width=60)
    ui.examples_row = gr.Column(elem_id="examples")
    _upload_box(ui)
    with gr.Row():
        ui.backbone = gr.Dropdown(choices, value=DEFAULT_BACKBONE, label="Backbone", scale=3, min_width=120)
        ui.length = gr.Number(DEFAULT_SECONDS, label="Length", scale=2, min_width=80, elem_id="length")
        ui.length_unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2, min_width=120)
    with gr.Row():
        ui.seed = gr.Number(0, label="Seed", precision=None, scale=3, min_width=100, elem_id="seed")
        ui.random_seed = gr.Checkbox(True, label="random seed", scale=2, min_width=100)
    ui.estimate_md = gr.Markdown(label="estimate", show_label=False, elem_id="estimate")
    ui.link_note = gr.HTML(visible=False, elem_id="link-note")  # filled with escaped text only: see on_load
    with gr.Row():
        ui.extend_len = gr.Number(2.0, label="Extend by", scale=2, min_width=80)
        ui.extend_unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2, min_width=120)
        ui.extend_btn = gr.Button("Extend", scale=2, elem_id="extend", min_width=80)
    with gr.Accordion("Prompt changes over time (schedule table)", open=False, elem_id="schedule-box") as ui.schedule_box:
        gr.Markdown("Later prompts and the video frame each starts at; the prompt box holds frame 0.")
        ui.schedule = gr.Dataframe(
            headers=["from frame", "prompt"],
            datatype=["number", "str"],
            column_count=2,
            row_count=1,
            type="array",
            interactive=True,
            label="Schedule",
            elem_id="schedule",
        )
        ui.schedule.data_model = _ScheduleData
    ui.preset = gr.Radio(
        preset_choices(DEFAULT_BACKBONE), value=None, label="Speed preset (sets partitions, lookahead, frames per rung)", elem_id="preset"
    )
    with gr.Accordion("Negative prompt and advanced settings", open=False):
        ui.negative = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from (ignored by the toy world)")
        ui.defaults_md = gr.Markdown(backbone_defaults(DEFAULT_BACKBONE))
        ui.options = {}
        rows = (("partitions", "lookahead", "frames_per_rung"), ("eta", "guidance_scale"), ("fps", "height", "width"))
        rest = tuple(k for k in OPTION_KEYS if not any(k in r for r in rows))  # a new setting: a row of its own
        for row in (*rows, rest) if rest else rows:
            with gr.Row():
                ui.options.update({k: _option(k, DEFAULT_BACKBONE) for k in row})
    with gr.Accordion("Continue a saved queue state", open=False):
        gr.Markdown(
            "Upload a state file saved after a run (here or by `python -m fifo --save-state`) and press Continue: the new "
            "video starts where that one ended, with the fps, size and settings the state records, the length from "
            "**Extend by**, and the prompt the state records (or the prompt typed above from its first new frame on)."
        )
        ui.state_upload = gr.File(label="Saved state (.pt)", file_types=[".pt"], type="filepath")
        ui.state_note = gr.Markdown(elem_id="state-note")
        ui.continue_btn = gr.Button("Continue")


UPLOAD_HELP = (
    "**Generate** continues your clip, or starts from your picture: the player shows it first, cropped to the model's "
    "size, then **Length** new frames (the upload is not counted in the length). Up to {frames} frames, {seconds:g} s, "
    "{mb:.0f} MB. Frames per rung must be 1. **A share link cannot carry your upload**: the link of such a run makes a "
    "video from the prompt alone."
)


def _upload_box(ui: SimpleNamespace) -> None:
    """The accordion of the visitor's own picture or clip, which Generate starts from."""
    with gr.Accordion("Start from your own picture or clip", open=False, elem_id="upload-box"):
        limits = {"frames": uploads.MAX_CLIP_FRAMES, "seconds": uploads.MAX_CLIP_SECONDS, "mb": uploads.MAX_BYTES / 2**20}
        gr.Markdown(UPLOAD_HELP.format(**limits))
        ui.upload = gr.File(
            label=f"Picture or clip ({uploads.ALLOWED}); remove it to start from the prompt alone",
            file_types=[*uploads.PICTURE_SUFFIXES, *uploads.CLIP_SUFFIXES],
            type="filepath",
            elem_id="upload",
            height=90,
        )
        ui.upload_note = gr.Markdown(elem_id="upload-note")


TABLE_SHAPE = "schedule must be a table of [frame, prompt] rows (or write 'FRAME: prompt' lines in the prompt)"


class _ScheduleData(DataframeData):
    """The schedule table's payload, refused with one clear message when it is not a table (an API client's)."""

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> DataframeData:  # type: ignore[override]
        try:
            return DataframeData.model_validate(obj, **kwargs)
        except ValueError:  # pydantic's ValidationError names no field a visitor knows
            raise gr.Error(TABLE_SHAPE, title="Please check the settings", print_exception=False) from None


def _outputs(ui: SimpleNamespace) -> None:
    """The right column: the video, its progress and the queue picture together, then the files and the link."""
    ui.video = gr.Video(
        label="Video (grows while it is made)",
        streaming=STREAMING,
        autoplay=True,
        loop=True,
        height=300,
        interactive=False,
        elem_id="live",
        buttons=[] if STREAMING else ["download"],
    )
    ui.status = gr.HTML(_status_html(None), label="Status", elem_id="status")
    ui.queue_img = gr.Image(
        queueviz.placeholder(),
        label="The FIFO queue, live",
        show_label=False,
        interactive=False,
        type="numpy",
        format="webp",
        elem_id="queue",
        height=170,
        buttons=["fullscreen"],
    )
    ui.drift_plot = gr.LinePlot(
        None,
        x="second",
        y="value",
        color="measure",
        label="Drift: pixel statistics per second",
        x_title="second of video",
        y_title="vs 1st second (flicker: as is)",
        color_map=driftview.COLOURS,
        colors_in_legend=[],  # the legend is the caption: vega's one-line legend does not fit a phone
        caption=driftview.LEGEND,
        elem_id="drift",
        min_width=160,
    )
    with gr.Row():
        ui.mp4_file = gr.File(label="Whole video (MP4)", interactive=False, elem_id="mp4", height=90)
        ui.state_file = gr.File(label="Queue state, to continue later", interactive=False, height=90)
    ui.share = gr.Textbox(label=SHARE_LABEL, interactive=False, buttons=["copy"], elem_id="share")
    with gr.Accordion("Run details (JSON)", open=False):
        ui.details = gr.JSON(label="progress", elem_id="details")


def _examples(ui: SimpleNamespace) -> list[Any]:
    """Examples under the prompt: a click fills in the settings; a toy example also starts it, streaming."""
    exs = usable(load_examples(), MANAGER.gpu())
    ex_inputs = [ui.prompt, ui.backbone, ui.length, ui.length_unit, ui.seed, ui.random_seed]
    groups = []
    with ui.examples_row:
        for gpu, label in (
            (False, "Toy-world examples (click one to watch it being made)"),
            (True, "Examples for the pretrained models (click one, then Generate)"),
        ):
            chosen = [e for e in exs if BACKBONES[e.backbone].needs_gpu == gpu]
            if chosen:
                groups.append((gpu, gr.Examples(
                    examples=[[e.prompt, e.backbone, e.seconds, "seconds", e.seed, False] for e in chosen],
                    example_labels=[e.label for e in chosen],
                    inputs=ex_inputs,
                    label=label,
                    examples_per_page=8,
                )))  # fmt: skip
    return groups


def _compare_tab(choices: list[tuple[str, str]]) -> None:
    """The second tab: one prompt and seed under settings A and B, side by side."""
    gr.Markdown(
        "The same prompt and seed under two settings, side by side in one video, frame for frame: "
        "e.g. lookahead off and on, or 1 and 4 partitions."
    )
    c = SimpleNamespace()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            c.prompt = gr.Textbox("a red ball moving right", label="Prompt", lines=2)
            with gr.Row():
                c.backbone = gr.Dropdown(choices, value=DEFAULT_BACKBONE, label="Backbone", scale=3, min_width=120)
                c.length = gr.Number(4.0, label="Length", scale=2, min_width=80)
                c.unit = gr.Radio(list(LENGTH_UNITS), value="seconds", label="in", scale=2, min_width=120)
                c.seed = gr.Number(0, label="Seed", precision=None, scale=2, min_width=80)
            c.preset = gr.Radio(list(PRESETS), value="lookahead off vs on", label="Preset")
            c.ab = []
            for side, look in (("A", "off"), ("B", "on")):
                with gr.Row():
                    c.ab += [_option("partitions", DEFAULT_BACKBONE, f"{side}: partitions"),
                             _option("lookahead", DEFAULT_BACKBONE, f"{side}: lookahead", look),
                             _option("eta", DEFAULT_BACKBONE, f"{side}: eta")]  # fmt: skip
            c.estimate = gr.Markdown(label="estimate", show_label=False)
            with gr.Row():
                c.run = gr.Button("Compare", variant="primary", scale=3)
                c.stop = gr.Button("Stop", variant="stop", scale=1, interactive=False)
        with gr.Column(scale=6, min_width=300):
            c.video = gr.Video(
                label="A | B",
                show_label=False,  # the frames carry their own labels; the badge would cover A's
                height=300,
                streaming=STREAMING,
                autoplay=True,
                loop=True,
                interactive=False,
                buttons=[] if STREAMING else ["download"],
            )
            c.status = gr.HTML(_status_html(None, "Press <b>Compare</b>."), label="Status")
            c.file = gr.File(label="Side-by-side video (MP4)", interactive=False)
            with gr.Accordion("Run details (JSON)", open=False):
                c.details = gr.JSON(label="progress")
    _wire_compare(c)
    return c


PRESETS = {
    "lookahead off vs on": ("default", "off", "default", "default", "on", "default"),
    "1 vs 4 partitions": (1, "default", "default", 4, "default", "default"),
    "eta 0 vs 1": ("default", "default", 0, "default", "default", 1),
}
PRIVATE = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}


def compare_estimate(name: str, n: float, unit: str, ap: Any, al: str, bp: Any, bl: str) -> str:
    """The estimate lines of a comparison's two runs."""
    a = SERVICE.estimate(name, n, unit, ap, al, None, None, None)
    b = SERVICE.estimate(name, n, unit, bp, bl, None, None, None)
    return f"A: {a}  \nB: {b}"


def _running(run: gr.Button, stop: gr.Button, *others: gr.Button) -> tuple[dict, Callable[..., Any]]:
    """Button states while a run goes (its button and the others off, Stop on) and a function that restores them."""
    busy = lambda: (gr.update(interactive=False), gr.update(interactive=True), *(gr.update(interactive=False) for _ in others))
    idle = lambda: (gr.update(interactive=True), gr.update(interactive=False), *(gr.update(interactive=True) for _ in others))
    outs = [run, stop, *others]
    return {"fn": busy, "outputs": outs, **PRIVATE}, {"fn": idle, "outputs": outs, **PRIVATE}


def _with_steer(busy: dict, idle: dict, steer_btn: gr.Button) -> tuple[dict, dict]:
    """The run buttons' states, with the prompt-change button on only while a run goes."""
    on, off = busy["fn"], idle["fn"]
    return (
        {**busy, "fn": lambda: (*on(), gr.update(interactive=True)), "outputs": [*busy["outputs"], steer_btn]},
        {**idle, "fn": lambda: (*off(), gr.update(interactive=False)), "outputs": [*idle["outputs"], steer_btn]},
    )


def _wire_compare(c: SimpleNamespace) -> None:
    busy, idle = _running(c.run, c.stop)
    gpu = {"concurrency_id": "gpu", "concurrency_limit": GPU_SLOTS, "show_progress": "minimal", "show_progress_on": [c.status]}
    c.run.click(**busy).then(
        compare,
        [c.prompt, c.backbone, c.length, c.unit, c.seed, *c.ab],
        [c.video, c.file, c.status, c.details],
        api_name="compare",
        **gpu,
    ).then(**idle)
    c.stop.click(stop_button, None, None, api_name="stop_button_1", **PRIVATE)
    est_inputs = [c.backbone, c.length, c.unit, c.ab[0], c.ab[1], c.ab[3], c.ab[4]]
    gr.on([x.change for x in est_inputs], compare_estimate, est_inputs, c.estimate, **PRIVATE)
    c.preset.input(lambda p: PRESETS.get(p, (gr.skip(),) * 6), c.preset, c.ab, **PRIVATE)
    c.backbone.input(
        lambda name: tuple(gr.update(choices=_choices(k, name)) for k in ("partitions", "lookahead", "eta") * 2),
        c.backbone,
        c.ab,
        **PRIVATE,
    )


def _wire_make(ui: SimpleNamespace, examples: list[Any]) -> None:
    """The main tab's events: generate, extend, continue and stop, estimates, backbone changes, examples."""
    # the order of generate's published parameters: core, each declared setting, the schedule table
    gen_inputs = _gen_inputs(ui)
    gen_outputs = [ui.video, ui.mp4_file, ui.state_file, ui.status, ui.queue_img, ui.share, ui.drift_plot, ui.details]
    # while queued, Gradio's own "queue: 2/3" line shows on the progress panel
    gpu = {"concurrency_id": "gpu", "concurrency_limit": GPU_SLOTS, "show_progress": "minimal", "show_progress_on": [ui.status]}
    est_inputs = _est_inputs(ui)
    gr.on(
        [c.change for c in est_inputs],
        estimate,
        est_inputs,
        ui.estimate_md,
        api_name="estimate",
        queue=False,
        show_progress="hidden",
    )
    refresh = {"fn": estimate, "inputs": est_inputs, "outputs": ui.estimate_md, **PRIVATE}
    seed_back = {"fn": seed_used, "inputs": [ui.details, ui.seed], "outputs": ui.seed, **PRIVATE}
    label_back = {"fn": share_label, "inputs": ui.details, "outputs": ui.share, **PRIVATE}
    busy, idle = _with_steer(*_running(ui.generate_btn, ui.stop_btn, ui.extend_btn, ui.continue_btn), ui.steer_btn)
    runs = [
        (ui.generate_btn.click, generate, [*gen_inputs, ui.upload], "generate"),
        (ui.extend_btn.click, extend, [ui.prompt, ui.extend_len, ui.extend_unit, ui.schedule], "extend"),
        (
            ui.continue_btn.click,
            continue_state,
            [ui.state_upload, ui.prompt, ui.extend_len, ui.extend_unit, ui.schedule],
            "continue_state",
        ),
    ]
    for trigger, fn, inputs, name in runs:  # after a run the estimate is refreshed: its rates were just measured
        run = trigger(**busy).then(fn, inputs, gen_outputs, api_name=name, **gpu).then(**idle).then(**seed_back)
        run.then(**label_back).then(**refresh)
    for gpu_ex, ex in examples:
        if not gpu_ex:  # a toy example runs at once, streaming like Generate
            ex.load_input_event.then(**busy).then(generate, gen_inputs, gen_outputs, api_visibility="private", **gpu).then(**idle)
    ui.stop_btn.click(stop_button, None, None, api_name="stop_button_0", **PRIVATE)
    gr.api(stop, api_name="stop", queue=False)
    ui.steer_btn.click(change_prompt_button, ui.prompt, None, api_name="change_prompt_button", **PRIVATE)
    gr.api(change_prompt, api_name="change_prompt", queue=False)
    ui.backbone.input(on_backbone, ui.backbone, [*ui.options.values(), ui.defaults_md], **PRIVATE)
    ui.backbone.input(lambda name: gr.update(choices=preset_choices(name), value=None) if name in BACKBONES else gr.skip(),
                      ui.backbone, ui.preset, **PRIVATE)  # fmt: skip
    ui.state_upload.change(SERVICE.describe_state, ui.state_upload, ui.state_note, **PRIVATE)
    ui.upload.change(uploads.describe, ui.upload, ui.upload_note, **PRIVATE)
    preset_keys = ("partitions", "lookahead", "frames_per_rung")
    ui.preset.input(on_preset, [ui.preset, ui.backbone], [ui.options[k] for k in preset_keys], **PRIVATE)


def build() -> gr.Blocks:
    """The whole page: the main tab (inputs left; video, progress and queue right), the comparison tab, events."""
    choices = [(c.label, c.name) for c in MANAGER.choices()]
    ui = SimpleNamespace()
    with gr.Blocks(title="FIFO-Diffusion: endless text-to-video", delete_cache=(900, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Make a video"):
                with gr.Row(equal_height=False, elem_id="main-row"):
                    with gr.Column(scale=5, min_width=300):
                        _inputs(ui, choices)
                    with gr.Column(scale=6, min_width=300):
                        _outputs(ui)
                examples = _examples(ui)
            with gr.Tab("Compare settings"):
                c = _compare_tab(choices)
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW.replace("{vocabulary}", _vocabulary()))
        _wire_make(ui, examples)
        gen_inputs = _gen_inputs(ui)
        gr.api(settings_from_link, api_name="settings_from_link")
        est_inputs = _est_inputs(ui)
        c_est = [c.backbone, c.length, c.unit, c.ab[0], c.ab[1], c.ab[3], c.ab[4]]
        demo.load(on_load, None, [*gen_inputs, ui.link_note, ui.defaults_md, ui.schedule_box], api_visibility="private").then(
            estimate, est_inputs, ui.estimate_md, **PRIVATE
        ).then(compare_estimate, c_est, c.estimate, **PRIVATE)
        demo.unload(end_session)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    limit_waiting_per_session(demo._queue, MAX_WAITING_PER_SESSION)
    return demo


def limit_waiting_per_session(queue: Any, limit: int) -> None:
    """Refuse a request when its page already has `limit` requests waiting, so one visitor cannot fill the queue."""
    push = queue.push

    async def limited(body: Any, request: Any, username: Any) -> Any:
        sid = getattr(body, "session_hash", None)
        try:
            is_run = route_utils.get_fn(queue.blocks, None, body).concurrency_id == "gpu"  # Stop and the rest always pass
        except Exception:  # noqa: BLE001  (Gradio's own push reports a bad request)
            is_run = False
        waiting = sum(e.session_hash == sid for q in queue.event_queue_per_concurrency_id.values() for e in q.queue)
        if is_run and sid is not None and waiting >= limit:
            return (
                False,
                f"This page already has {waiting} requests waiting, the most one visitor may queue: wait for them, or press Stop.",
                "queue_full",
            )
        return await push(body, request, username)

    queue.push = limited


demo = build()


def mcp_supported() -> bool:
    """Whether this Gradio can serve its endpoints as MCP tools (`pip install "gradio[mcp]"`)."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        return False
    return "mcp_server" in inspect.signature(gr.Blocks.launch).parameters


def launch(**kwargs: Any) -> Any:
    """Start the server (host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT unless given).

    Where Gradio's MCP server is installed, the documented endpoints (generate, extend, stop, ...)
    are also MCP tools, each described by its handler's docstring; FIFO_MCP=0 turns that off.
    """
    if mcp_supported() and os.environ.get("FIFO_MCP", "1") != "0":
        kwargs.setdefault("mcp_server", True)
    kwargs.setdefault("theme", gr.themes.Soft(primary_hue="indigo", secondary_hue="pink"))
    kwargs.setdefault("css", CSS)
    # the largest upload: a saved state, or a picture or clip (which has its own, lower, limit)
    kwargs.setdefault("max_file_size", max(housekeeping.MAX_STATE_UPLOAD, uploads.MAX_BYTES))
    kwargs.setdefault("footer_links", ["api", "gradio"])
    keep_freed_memory()  # the toy (and any model without a GPU) steps on this process's CPU: fifo/cpu.py
    housekeeping.reclaim_stale()  # scratch folders of servers that were killed (never a live one's)
    _load_default()
    return demo.launch(**kwargs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch()
