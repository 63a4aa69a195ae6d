"""A picture of the FIFO queue at work: each slot's cheap latent preview over a bar of its noise level.

Head (next frame out, clean) on the left, tail (fresh noise in) on the right; lookahead's context
slots (finished frames the model sees but never writes) in grey; a thin line between partitions.
Rendered with numpy and PIL only, from `Backbone.preview` (no VAE decode per slot).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH = 960
PAD = 12
BG = (17, 24, 39)
FG = (229, 231, 235)
MUTED = (156, 163, 175)
CONTEXT = (107, 114, 128)
BAR_H = 84
ZOOM_W = 64  # pixels per zoomed slot


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _noise_colour(level: float) -> tuple[int, int, int]:
    """Clean (teal) to pure noise (magenta)."""
    a = np.array([45, 212, 191], float)
    b = np.array([236, 72, 153], float)
    return tuple(int(v) for v in (a + (b - a) * float(np.clip(level, 0, 1))).round())


def _draw_bars(
    draw: ImageDraw.ImageDraw,
    x0: int,
    y_strip: int,
    y_bar: int,
    cell: int,
    level: np.ndarray,
    context: int,
    frames_per_window: int,
) -> None:
    """The noise-level bar of each slot, partition boundaries, and the head/tail labels."""
    S = len(level)
    small = _font(12)
    # the bars: noise level per slot
    draw.rectangle([x0, y_bar, x0 + cell * S - 1, y_bar + BAR_H - 1], fill=(31, 41, 55))
    gap = 1 if cell >= 4 else 0
    for i in range(S):
        h = max(1, round(float(level[i]) * (BAR_H - 2)))
        colour = CONTEXT if i < context else _noise_colour(level[i])
        draw.rectangle([x0 + i * cell, y_bar + BAR_H - h, x0 + (i + 1) * cell - 1 - gap, y_bar + BAR_H - 1], fill=colour)

    # partition boundaries and the context edge
    for j in range(context, S + 1, max(frames_per_window, 1)):
        x = x0 + j * cell
        draw.line([x, y_strip, x, y_bar + BAR_H], fill=FG if j == context and context else MUTED, width=1)

    y_lab = y_bar + BAR_H + 4
    draw.text((x0, y_lab), "head: next frame out (clean)", fill=MUTED, font=small)
    draw.text((x0 + cell * S, y_lab), "tail: fresh noise in", fill=MUTED, font=small, anchor="ra")
    draw.text((WIDTH // 2, y_lab + 16), "bar = noise level of each slot", fill=MUTED, font=small, anchor="ma")


def render_queue(
    preview: np.ndarray,
    timesteps: np.ndarray,
    context: int,
    frames_per_window: int,
    step: int,
    warming_up: bool = False,
    max_timestep: float = 1000.0,
    title: str | None = None,
) -> np.ndarray:
    """The queue picture, uint8 (H, WIDTH, 3), from previews (S, lh, lw, 3) and timesteps (S,), head first."""
    preview = np.asarray(preview)
    t = np.asarray(timesteps, dtype=float).reshape(-1)
    S = len(t)
    if preview.ndim != 4 or preview.shape[0] != S or preview.shape[-1] != 3:
        raise ValueError(f"preview of shape {preview.shape} does not match {S} slots")
    lh, lw = preview.shape[1:3]
    L = S - context
    inner = WIDTH - 2 * PAD
    cell = max(1, inner // S)  # horizontal pixels per slot
    x0 = PAD + (inner - cell * S) // 2
    level = np.clip(t / max(max_timestep, float(t.max(initial=0)), 1e-9), 0, 1)

    # a few slots at a readable size (head to tail), then every slot as a narrow strip
    k = int(min(S, max(2, inner // (ZOOM_W + 8))))
    picks = np.unique(np.linspace(0, S - 1, k).round().astype(int))
    zw = ZOOM_W
    zh = int(np.clip(round(zw * lh / lw), 24, 96))
    zgap = (inner - zw * len(picks)) // max(len(picks) - 1, 1)
    strip_h = int(np.clip(round(cell * lh / lw), 10, 24))

    title_h, caption_h, label_h = 24, 18, 34
    H = title_h + zh + caption_h + 8 + strip_h + 4 + BAR_H + label_h
    img = Image.new("RGB", (WIDTH, H), BG)
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    if title is None:
        parts = L // frames_per_window if frames_per_window else 0
        title = f"FIFO queue at step {step}: {L} slots = {parts} partition{'s' * (parts != 1)} x {frames_per_window} frames"
        if context:
            title += f" + {context} lookahead context"
    draw.text((PAD, 5), title, fill=FG, font=font)
    if warming_up:
        draw.text((WIDTH - PAD, 5), "warming up", fill=(251, 191, 36), font=font, anchor="ra")

    y_zoom = title_h
    zoom_x = []
    for n, i in enumerate(picks):
        x = PAD + n * (zw + zgap)
        zoom_x.append(x + zw // 2)
        tile = Image.fromarray(np.ascontiguousarray(preview[i])).resize((zw, zh), Image.NEAREST)
        img.paste(tile, (x, y_zoom))
        edge = CONTEXT if i < context else _noise_colour(level[i])
        draw.rectangle([x - 1, y_zoom - 1, x + zw, y_zoom + zh], outline=edge, width=1)
        caption = "context" if i < context else f"t={t[i]:.0f}"
        draw.text((x + zw // 2, y_zoom + zh + 3), caption, fill=MUTED, font=small, anchor="ma")

    y_strip = y_zoom + zh + caption_h + 8
    strip = np.zeros((strip_h, cell * S, 3), np.uint8)
    for i in range(S):
        tile = Image.fromarray(np.ascontiguousarray(preview[i])).resize((cell, strip_h), Image.BOX)
        strip[:, i * cell : (i + 1) * cell] = np.asarray(tile)
    img.paste(Image.fromarray(strip), (x0, y_strip))
    for n, i in enumerate(picks):  # tie each zoomed slot to its place in the strip
        draw.line([zoom_x[n], y_zoom + zh + caption_h, x0 + i * cell + cell // 2, y_strip - 1], fill=(75, 85, 99), width=1)

    _draw_bars(draw, x0, y_strip, y_strip + strip_h + 4, cell, level, context, frames_per_window)
    return np.asarray(img)


def placeholder(text: str = "the queue appears here while a video is made") -> np.ndarray:
    """An empty panel with a line of text, before the first run."""
    img = Image.new("RGB", (WIDTH, 120), BG)
    ImageDraw.Draw(img).text((WIDTH // 2, 60), text, fill=MUTED, font=_font(14), anchor="mm")
    return np.asarray(img)
