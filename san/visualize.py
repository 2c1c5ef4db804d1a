"""Pictures of label maps with PIL only: a fixed palette, an overlay and a legend.

``palette(n)`` gives the same colours for the same class index in every run (the official demo
reseeded numpy's global random state). ``overlay`` blends class colours into the photo at its own
size; ``legend`` lists the classes present with their pixel share; ``render`` puts the two side
by side (what ``san predict`` writes). The class called ``"other"`` (distractor pixels) is drawn
in grey and left almost transparent, as the official demo left it uncoloured.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from san.vocabulary import OTHER

__all__ = ["legend", "overlay", "palette", "pixel_fractions", "render"]

_OTHER_COLOR = (128, 128, 128)


def palette(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 colours: hues spaced by the golden ratio, three brightness levels."""
    cols = np.zeros((max(n, 0), 3), dtype=np.uint8)
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if i % 3 == 0 else (0.65, 0.80) if i % 3 == 1 else (0.95, 0.60)
        cols[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)]
    return cols


def _colors(class_names: Sequence[str]) -> np.ndarray:
    cols = palette(len(class_names))
    for i, name in enumerate(class_names):
        if name == OTHER and i == len(class_names) - 1:
            cols[i] = _OTHER_COLOR
    return cols


def pixel_fractions(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Share of pixels per class present in ``labels`` (indices into ``class_names``), largest first."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels hold values outside 0..{len(class_names) - 1}")
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return {class_names[i]: float(counts[i]) / max(1, labels.size) for i in order if counts[i]}


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.55) -> np.ndarray:
    """``[H, W, 3]`` uint8: the image with each class's colour blended in (``other`` barely tinted)
    and dark region boundaries; same size as the image."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    cols = _colors(class_names).astype(np.float32)
    a = np.full(len(class_names), alpha, dtype=np.float32)
    if class_names and class_names[-1] == OTHER:
        a[-1] = 0.15
    lab = labels.astype(np.int64)
    w = a[lab][..., None]  # [H, W, 1]
    out = image.astype(np.float32) * (1 - w) + cols[lab] * w
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    out[edge] *= 0.35
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def legend(
    fractions: dict[str, float], class_names: Sequence[str], height: int | None = None, font_size: int = 14
) -> Image.Image:
    """A white panel listing ``fractions`` (class -> share) with colour swatches, largest first."""
    cols = _colors(class_names)
    index = {n: i for i, n in enumerate(class_names)}
    font = _font(font_size)
    row = font_size + 8
    lines = [(f"{name}  {100 * f:.1f}%", tuple(int(c) for c in cols[index[name]])) for name, f in fractions.items()]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((draw.textlength(t, font=font) for t, _ in lines), default=0)
    width = int(text_w) + row + 24
    shown = lines
    if height is not None and len(lines) * row + 16 > height:
        keep = max(1, (height - 16) // row - 1)
        shown = [*lines[:keep], (f"... {len(lines) - keep} more", (255, 255, 255))]
    panel = Image.new("RGB", (width, max(height or 0, len(shown) * row + 16)), (255, 255, 255))
    d = ImageDraw.Draw(panel)
    for k, (text, color) in enumerate(shown):
        y = 8 + k * row
        d.rectangle([8, y + 2, 8 + row - 6, y + row - 4], fill=color, outline=(0, 0, 0))
        d.text((8 + row, y + 1), text, fill=(0, 0, 0), font=font)
    return panel


def render(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.55) -> Image.Image:
    """The overlay with a legend of the classes present to its right."""
    over = Image.fromarray(overlay(image, labels, class_names, alpha))
    font_size = int(np.clip(over.height / 40, 12, 28))
    panel = legend(pixel_fractions(labels, class_names), class_names, height=over.height, font_size=font_size)
    canvas = Image.new("RGB", (over.width + panel.width, max(over.height, panel.height)), (255, 255, 255))
    canvas.paste(over, (0, 0))
    canvas.paste(panel, (over.width, 0))
    return canvas
