"""What a user asked for, validated: prompt schedule, backbone, length, seed and FIFO settings.

Every check raises `InputError` with a message that names the field, the value and what is
allowed, written for the person at the keyboard (the app shows it as is). The same settings
round-trip through a share link (`to_query` / `from_query`) and the MP4's metadata.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, field, make_dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fifo import BACKBONES, FIFOConfig, PromptSchedule
from fifo.config import APP_SETTINGS, SETTING, SETTINGS, Setting, backbone_default


class InputError(ValueError):
    """A bad value from the user; its message is shown to them verbatim."""


from .limits import MAX_FRAMES, MAX_PIXELS, MAX_PROMPT_CHARS, MAX_SCHEDULE_ENTRIES, MAX_SEED

LENGTH_UNITS = ("seconds", "frames")
EXAMPLE_PROMPT = "a red ball moving right"


class _RunSettingsMethods:
    """What every RunSettings can do; the fields come from `fifo.config.APP_SETTINGS` (see `RunSettings`)."""

    @property
    def schedule(self) -> PromptSchedule:
        """The prompt as a schedule (a plain prompt is a one-entry schedule)."""
        return PromptSchedule.parse(self.prompt)

    def options(self) -> dict[str, Any]:
        """The declared settings, by name (None: the backbone's default)."""
        return {s.name: getattr(self, s.name) for s in APP_SETTINGS}

    def config(self) -> FIFOConfig:
        """The FIFOConfig these settings ask for (unset fields left to the backbone)."""
        return FIFOConfig(**{s.name: getattr(self, s.name) for s in APP_SETTINGS if s.config})

    def resolved(self) -> RunSettings:
        """A copy with every `None` replaced by the backbone's default (from the registry, no loading); resolved once per request."""
        d = BACKBONES[self.backbone].defaults
        return replace(self, **{k: backbone_default(k, d) if v is None else v for k, v in self.options().items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)

    def to_query(self) -> str:
        """The query string of a share link that reproduces this run exactly (every setting explicit)."""
        r = self.resolved()
        q: dict[str, Any] = {
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "backbone": r.backbone,
            "frames": r.frames,
            "seed": r.seed,
        }
        if not q["negative_prompt"]:
            del q["negative_prompt"]
        q.update({k: setting_text(SETTING[k], v) for k, v in r.options().items()})
        return urlencode(q)

    def metadata(self) -> dict[str, str]:
        """MP4 tags: `comment` holds every setting as JSON (as `python -m fifo` writes it), `title` the prompt."""
        return {"title": self.schedule.entries[0][1][:200], "comment": json.dumps(self.record())}

    def record(self) -> dict[str, Any]:
        """Every setting, resolved, by its declared name, and the share link's query."""
        r = self.resolved()
        d = BACKBONES[r.backbone].defaults
        meta: dict[str, Any] = {
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "backbone": r.backbone,
            "seed": r.seed,
            "frames": r.frames,
        }
        for s in SETTINGS:
            v = getattr(r, s.name, None)
            meta[s.name] = v if v is not None or not s.app else None
            if meta[s.name] is None:
                meta[s.name] = getattr(d, s.name, s.default)
        meta["share_query"] = self.to_query()
        return meta


# One validated request: the prompt, backbone, length and seed, then one field per declared app
# setting (`None`: the backbone's default). Generated from the declarations, so a new setting is
# added in `fifo.config.SETTINGS` only.
RunSettings = make_dataclass(
    "RunSettings",
    [("prompt", str), ("backbone", str), ("frames", int), ("seed", int), ("negative_prompt", str, field(default=""))]
    + [(s.name, Any, field(default=None)) for s in APP_SETTINGS],
    bases=(_RunSettingsMethods,),
    frozen=True,
)
RunSettings.__module__ = __name__  # pickled by reference into GPU leases


def setting_text(s: Setting, value: Any) -> str:
    """A setting's value as link text: 'on'/'off' for switches, the shortest exact number otherwise."""
    if s.kind is bool:
        return "on" if value else "off"
    return str(value) if s.kind is int else _num(value)


def _num(x: float) -> str:
    """Shortest exact text for a number: 1.0 -> '1', 0.25 -> '0.25', 0.123456789 stays whole."""
    return repr(float(x)).removesuffix(".0")


# -- parsing what the widgets (or an API client) send -------------------------------------------


def _is_blank(v: Any) -> bool:
    """None, empty text, NaN, or 'default' / 'auto': the backbone's default applies."""
    if isinstance(v, str):
        return v.strip().lower() in ("", "default", "auto", "none")
    return v is None or (isinstance(v, float) and math.isnan(v))


def _number(name: str, v: Any, *, integer: bool, allowed: str) -> float | int | None:
    """A number from a widget or API value; None stays None; text is parsed; bools refused."""
    if _is_blank(v):
        return None
    if isinstance(v, bool):
        raise InputError(f"{name}={v!r}: {allowed}")
    if not isinstance(v, (int, float, str)):
        raise InputError(f"{name} must be a number, got {type(v).__name__}: {allowed}")
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name}={str(v)[:40]!r} is not a number in range: {allowed}") from None
    if not math.isfinite(x):
        raise InputError(f"{name}={str(v)[:40]!r} is not a number in range: {allowed}")
    if integer:
        if not x.is_integer():
            raise InputError(f"{name}={v!r} is not a whole number: {allowed}")
        return int(x)
    return x


def _lookahead(v: Any, name: str = "lookahead") -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if _is_blank(s):
        return None
    if s in ("on", "true", "1", "yes"):
        return True
    if s in ("off", "false", "0", "no"):
        return False
    raise InputError(f"{name}={v!r}: allowed are 'default', 'on', 'off'")


def schedule_rows_text(rows: Any) -> list[tuple[int, str]]:
    """Rows of a schedule table ([frame, prompt] pairs, blanks skipped) as (frame, prompt) entries."""
    if rows is None:
        return []
    if isinstance(rows, Mapping):  # gradio_client sends a table as {"headers": ..., "data": ...}
        rows = rows.get("data") or []
    elif hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        rows = rows.values.tolist()
    shape = "schedule must be a table of [frame, prompt] rows (or write 'FRAME: prompt' lines in the prompt)"
    if not isinstance(rows, (list, tuple)) or len(rows) > MAX_SCHEDULE_ENTRIES:
        raise InputError(
            shape if not isinstance(rows, (list, tuple)) else f"schedule has {len(rows)} rows: at most {MAX_SCHEDULE_ENTRIES}"
        )
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, (list, tuple)) or not all(c is None or isinstance(c, (str, int, float)) for c in row):
            raise InputError(f"schedule row {i}: {shape}")
        cells = list(row) + ["", ""]
        frame, prompt = cells[0], cells[1]
        if _is_blank(frame) and _is_blank(prompt):
            continue
        where = f"schedule row {i}"
        if _is_blank(prompt):
            raise InputError(f"{where}: the prompt is empty")
        f = _number(f"{where}: frame", frame, integer=True, allowed="give the first video frame (0, 1, 2, ...) of this prompt")
        if f is None or f < 0:
            raise InputError(f"{where}: frame {frame!r} must be a whole number >= 0")
        out.append((f, str(prompt).strip()))
    return out


def build_schedule(prompt: Any, rows: Any = None) -> PromptSchedule:
    """The prompt box (a prompt or 'FRAME: prompt' lines) merged with schedule-table rows."""
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be text, got {type(prompt).__name__}")
    text = (prompt or "").strip()
    extra = schedule_rows_text(rows)
    if not text and not extra:
        raise InputError(f"prompt is empty: describe the video, e.g. '{EXAMPLE_PROMPT}'")
    try:
        entries = list(PromptSchedule.parse(text).entries) if text else []
    except ValueError as e:
        raise InputError(str(e)) from None
    entries += extra
    entries.sort(key=lambda e: e[0])
    starts = [s for s, _ in entries]
    dup = next((s for s, t in itertools.pairwise(starts) if s == t), None)
    if dup is not None:
        raise InputError(f"two prompts start at frame {dup}: give each frame one prompt")
    if len(entries) > MAX_SCHEDULE_ENTRIES:
        raise InputError(f"the prompt schedule has {len(entries)} entries: at most {MAX_SCHEDULE_ENTRIES} are allowed")
    for s, p in entries:
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt at frame {s} is {len(p)} characters long: at most {MAX_PROMPT_CHARS} are allowed")
        if _unprintable(p):
            raise InputError(f"the prompt at frame {s} holds a control character (such as a NUL byte): use plain text")
    try:
        return PromptSchedule(tuple(entries))
    except ValueError as e:
        raise InputError(str(e)) from None


def frames_for_length(length: Any, unit: str, fps: int) -> int:
    """Video frames for a length in seconds (at `fps`) or in frames; InputError outside [1, MAX_FRAMES]."""
    if unit is not None and not isinstance(unit, str):
        raise InputError(f"length unit must be text, one of {', '.join(LENGTH_UNITS)}")
    unit = (unit or "seconds").strip().lower()
    if unit not in LENGTH_UNITS:
        raise InputError(f"length unit {unit!r}: allowed are {', '.join(LENGTH_UNITS)}")
    limit = f"between 1 frame and {MAX_FRAMES} frames ({MAX_FRAMES / fps:g} s at {fps} fps)"
    x = _number("length", length, integer=unit == "frames", allowed=f"give a length {limit}")
    if x is None:
        raise InputError(f"length is empty: give a length {limit}")
    if not 0 < x <= MAX_FRAMES:  # before any arithmetic: 1e308 seconds must not overflow
        raise InputError(f"length {x:g} {unit} is out of range: give a length {limit}")
    frames = round(x * fps) if unit == "seconds" else int(x)
    if not 1 <= frames <= MAX_FRAMES:
        asked = f"{x:g} s = {frames} frames" if unit == "seconds" else f"{frames} frames"
        raise InputError(f"length {asked} is out of range: give a length {limit}")
    return frames


def parse_seed(seed: Any, random_seed: bool = False) -> int:
    """The seed to use: a fresh random one when asked, else the given whole number in [0, MAX_SEED]."""
    if not isinstance(random_seed, (bool, int, type(None))):
        raise InputError(f"random_seed={random_seed!r}: allowed are true and false")
    if random_seed:
        return secrets.randbelow(2**31)
    allowed = f"give a whole number from 0 to {MAX_SEED}, or tick 'random seed'"
    s = _number("seed", seed, integer=True, allowed=allowed)
    if s is None:
        raise InputError(f"seed is empty: {allowed}")
    if not 0 <= s <= MAX_SEED:
        raise InputError(f"seed={s}: {allowed}")
    return s


def check_backbone(name: Any) -> str:
    """A registry name, or InputError listing the names."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise InputError(f"backbone={name!r} is not available here: choose one of {', '.join(BACKBONES)}")
    return name


def parse_setting(s: Setting, v: Any) -> Any:
    """One declared setting from a widget, link or API value: None for 'default', else the checked value."""
    if s.kind is bool:
        x = _lookahead(v, s.name)
    else:
        x = _number(s.name, v, integer=s.kind is int, allowed=f"{s.allowed}, or 'default'")
    try:
        return s.check(x)
    except ValueError as e:
        raise InputError(str(e)) from None


def parse_inputs(
    prompt: Any,
    negative_prompt: Any = "",
    backbone: Any = "toy",
    length: Any = 4.0,
    length_unit: str = "seconds",
    seed: Any = 0,
    random_seed: bool = False,
    *options: Any,
    schedule_rows: Any = None,
    **named: Any,
) -> RunSettings:
    """Validate raw widget / API values into RunSettings; InputError names the first problem.

    `options` are the declared app settings in order (`APP_SETTINGS`: partitions, lookahead, ...);
    `named` the same by name.
    """
    if len(options) > len(APP_SETTINGS) or set(named) - set(SETTING):
        raise TypeError(f"parse_inputs takes the settings {[s.name for s in APP_SETTINGS]}")
    raw = {**dict(zip((s.name for s in APP_SETTINGS), options)), **named}
    schedule = build_schedule(prompt, schedule_rows)
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError(f"negative_prompt must be text, got {type(negative_prompt).__name__}")
    negative = (negative_prompt or "").strip()
    if len(negative) > MAX_PROMPT_CHARS:
        raise InputError(f"negative prompt is {len(negative)} characters long: at most {MAX_PROMPT_CHARS} are allowed")
    if _unprintable(negative):
        raise InputError("the negative prompt holds a control character (such as a NUL byte): use plain text")
    name = check_backbone(backbone)
    fields = {s.name: parse_setting(s, raw.get(s.name)) for s in APP_SETTINGS}
    d = BACKBONES[name].defaults
    h, w = (fields[k] or backbone_default(k, d) for k in ("height", "width"))
    if h * w > MAX_PIXELS:
        raise InputError(f"size {w}x{h}: width x height must be at most {MAX_PIXELS} pixels here")
    frames = frames_for_length(length, length_unit, fields["fps"] or d.fps)
    return RunSettings(
        prompt=schedule.to_text(),
        backbone=name,
        frames=frames,
        seed=parse_seed(seed, random_seed),
        negative_prompt=negative,
        **fields,
    )


# -- share links --------------------------------------------------------------------------------

LINK_ALIASES = {"negative": "negative_prompt", "guidance": "guidance_scale"}  # links made before the names were unified
QUERY_KEYS = ("prompt", "negative_prompt", "backbone", "frames", "seconds", "seed", *(s.name for s in APP_SETTINGS))
# Gradio's own page parameters (the Hub adds some to a Space's iframe): not settings, not mistakes
PAGE_KEYS = ("__theme", "view", "__sign", "embed", "logs", "__dark-theme")


def query_params(link_or_query: str) -> dict[str, str]:
    """The parameters of a share link, a bare query string, or '?a=b' text."""
    text = (link_or_query or "").strip() if isinstance(link_or_query, str) else ""
    query = urlsplit(text).query if "://" in text or text.startswith("/") else text.lstrip("?")
    return dict(parse_qsl(query, keep_blank_values=True))


def from_query(params: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Widget values from a link's parameters, and notes on what was ignored (links come from anywhere).

    Returns only the widgets the link sets; a value that fails its check is left out and noted, so
    a half-broken link still fills in what it can. Notes are plain text: show them as such.
    """
    params = {LINK_ALIASES.get(k, k): v for k, v in params.items()}
    values: dict[str, Any] = {}
    notes: list[str] = []

    def take(key: str, fn) -> None:
        if key in params:
            try:
                fn(params[key])
            except InputError as e:
                notes.append(f"ignored {key}: {e}")

    def prompt(v: str) -> None:
        values["prompt"] = build_schedule(v).to_text()

    def frames(v: str) -> None:
        n = _number("frames", v, integer=True, allowed=f"a whole number from 1 to {MAX_FRAMES}")
        if n is None or not 1 <= n <= MAX_FRAMES:
            raise InputError(f"frames={v!r}: allowed are 1 to {MAX_FRAMES}")
        values["length"], values["length_unit"] = n, "frames"

    def seconds(v: str) -> None:
        x = _number("seconds", v, integer=False, allowed="give a number of seconds")
        if x is None or not 0 < x <= MAX_FRAMES:
            raise InputError(f"seconds={v!r}: give a positive number of seconds")
        values["length"], values["length_unit"] = x, "seconds"

    def seed(v: str) -> None:
        if v.strip().lower() == "random":
            values["random_seed"] = True
        else:
            values["seed"], values["random_seed"] = parse_seed(v), False

    def negative(v: str) -> None:
        values["negative_prompt"] = v[:MAX_PROMPT_CHARS]

    take("prompt", prompt)
    take("negative_prompt", negative)
    take("backbone", lambda v: values.__setitem__("backbone", check_backbone(v)))
    take("seconds", seconds)
    take("frames", frames)  # frames win over seconds: they are exact
    take("seed", seed)
    for s in APP_SETTINGS:
        take(s.name, lambda v, s=s: values.__setitem__(s.name, parse_setting(s, v)))
    unknown = sorted(set(params) - set(QUERY_KEYS) - set(PAGE_KEYS))
    if unknown:
        notes.append(f"ignored unknown parameter(s): {', '.join(unknown)}")
    return values, notes


def settings_from_query(params: Mapping[str, str]) -> RunSettings:
    """Strictly parse a share link into the RunSettings it reproduces (InputError on any bad value)."""
    values, notes = from_query(params)
    if notes:
        raise InputError("; ".join(notes))
    if "prompt" not in values:
        raise InputError("the link has no prompt")
    return parse_inputs(
        values["prompt"],
        values.get("negative_prompt", ""),
        values.get("backbone", "toy"),
        values.get("length", 4.0),
        values.get("length_unit", "seconds"),
        values.get("seed", 0),
        values.get("random_seed", False),
        **{s.name: values.get(s.name) for s in APP_SETTINGS},
    )


def schedule_table(prompt: str) -> tuple[str, list[list[Any]]]:
    """Split schedule text into the first prompt and table rows [frame, prompt] for the later ones."""
    try:
        entries = PromptSchedule.parse(prompt).entries
    except ValueError:
        return prompt, []
    return entries[0][1], [[s, p] for s, p in entries[1:]]


def describe_length(frames: int, fps: int) -> str:
    """'48 frames (4 s at 12 fps)'."""
    return f"{frames} frames ({frames / fps:.3g} s at {fps} fps)"


def continue_schedule(base_prompt: str | None, new_prompt: str | None, at: int, takes_effect: int | None = None) -> str:
    """The schedule of a video continued from frame `at`: the old prompts before it, the new text from it on.

    New entries count frames from `takes_effect` (default `at`): the first frame a change can reach
    once the queue's frames have been begun with the old prompts (`FIFOState.earliest_change_frame`),
    so that the recorded schedule remakes the continued video exactly. Without new text, or with the
    same text as before, the old schedule simply goes on.
    """
    start = at if takes_effect is None else max(at, takes_effect)
    new = (new_prompt or "").strip()
    if base_prompt is not None and (not new or new == base_prompt.strip()):
        return PromptSchedule.parse(base_prompt).to_text()
    added = build_schedule(new).entries
    if base_prompt is None:
        entries = [(0 if i == 0 else at + s, p) for i, (s, p) in enumerate(added)]
    else:
        old = PromptSchedule.parse(base_prompt)
        entries = [(s, p) for s, p in old.entries if s < start]
        for s, p in added:
            if not (s == 0 and p == old.prompt_at(start)):  # the same prompt going on is no change
                entries.append((start + s, p))
    return PromptSchedule(tuple(entries)).to_text()


def _unprintable(text: str) -> bool:
    """Control characters (a NUL byte, escape sequences) that no prompt needs and a video's metadata cannot hold."""
    return any(ord(c) < 32 and c not in "\t" or 0x7F <= ord(c) < 0xA0 for c in text)


# -- speed presets ----------------------------------------------------------------------------------

PRESETS = ("paper", "quality", "fast")
DISTILLED_PRESET = "distilled"  # the one preset of a step-distilled backbone


def presets(backbone: str) -> dict[str, dict[str, Any]]:
    """The speed presets for a backbone: partitions, lookahead and frames per rung, and model calls a frame.

    From the frontier measured on the toy world (docs/frontier.md): "quality" holds `b` frames per
    rung (the largest the window allows up to f/4, with lookahead), "fast" also halves the partitions;
    "paper" is the paper's FIFO (b = 1) at the backbone's partitions. Calls a frame count window
    calls per latent frame, doubled where the backbone's default guidance runs two passes.
    A step-distilled backbone has one preset, "distilled": the only layouts it runs have as many
    rungs as it has steps, and its defaults are the one with diagonal windows (docs/few-step.md).
    """
    from fifo.schedule import allowed_frames_per_rung

    spec = BACKBONES[check_backbone(backbone)]
    d = spec.defaults
    if spec.distilled is not None:
        return {DISTILLED_PRESET: _preset(d, d.partitions, d.lookahead, d.frames_per_rung, 2 if spec.distilled.guidance else 1)}
    b = max(x for x in allowed_frames_per_rung(d.frames_per_window, True) if x <= max(1, d.frames_per_window // 4))
    layouts = {"paper": (d.partitions, 1), "quality": (d.partitions, b), "fast": (max(1, d.partitions // 2), b)}
    guided = 2 if d.guidance_scale > 1 else 1
    return {name: _preset(d, n, True, rung, guided) for name, (n, rung) in layouts.items()}


def _preset(d: Any, partitions: int, lookahead: bool, frames_per_rung: int, guided: int) -> dict[str, Any]:
    """One preset's settings and its cost: window calls a latent frame (times the guidance passes) and steps a frame."""
    cfg = FIFOConfig(frames_per_window=d.frames_per_window, partitions=partitions, lookahead=lookahead, eta=d.eta,
                     guidance_scale=d.guidance_scale, fps=d.fps, frames_per_rung=frames_per_rung)  # fmt: skip
    return {"partitions": partitions, "lookahead": lookahead, "frames_per_rung": frames_per_rung,
            "calls_per_frame": cfg.windows_per_frame * guided, "steps_per_frame": cfg.rungs}  # fmt: skip


def preset_choices(backbone: str) -> list[tuple[str, str]]:
    """(label, name) of each preset, the label giving its cost a frame against the paper's."""
    p = presets(backbone)
    if "paper" not in p:  # a step-distilled backbone: no b = 1 layout to compare with
        return [(f"{name}: {v['calls_per_frame']:g} calls/frame, {v['steps_per_frame']} steps", name) for name, v in p.items()]
    paper = p["paper"]["calls_per_frame"]
    return [
        (f"{name}: {v['calls_per_frame']:g} calls/frame, {100 * v['calls_per_frame'] / paper:.3g}% of the paper's", name)
        for name, v in p.items()
    ]
