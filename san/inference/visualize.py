"""Pictures of label maps with PIL only: a fixed palette, an overlay and a legend.

``palette(n)`` gives the same colours for the same class index in every run (the official demo
reseeded numpy's global random state). ``overlay`` blends class colours into the photo at its own
size; ``legend`` lists the classes present with their pixel share, each name in a font that has
its characters (:mod:`san.inference.fonts`). The class called ``"other"`` (distractor pixels) is
drawn in grey and left almost transparent, as the official demo left it uncoloured.

Memory: blending is integer arithmetic (weights in 1/256 steps, uint16 intermediates) over bands of
about a million pixels, so drawing an ``H x W`` image needs its ``H x W x 3`` uint8 result plus a
few megabytes, not float copies of the photo.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .fonts import font_for
from .vocabulary import OTHER

__all__ = ["highlight", "legend", "overlay", "palette", "pixel_fractions"]

_OTHER_COLOR = (128, 128, 128)
_BAND_PIXELS = 1 << 20
_EDGE = 90  # boundaries keep 90/256 (about 0.35) of their brightness


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


def _check_labels(labels: np.ndarray, n: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"labels hold values outside 0..{n - 1}")


def _rows_per_band(width: int) -> int:
    return max(1, _BAND_PIXELS // max(1, width))


def pixel_fractions(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Share of pixels per class present in ``labels`` (indices into ``class_names``), largest first."""
    _check_labels(labels, len(class_names))
    counts = np.zeros(len(class_names), dtype=np.int64)
    flat = labels.reshape(-1)
    step = _BAND_PIXELS
    for i in range(0, flat.size, step):  # counted in chunks: no int64 copy of the whole map
        counts += np.bincount(flat[i : i + step], minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return {class_names[i]: float(counts[i]) / max(1, labels.size) for i in order if counts[i]}


def _overlay_bands(
    image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, [rows, W, 3] uint8)`` bands of the overlay, top to bottom."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got {image.dtype} {list(image.shape)}")
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    _check_labels(labels, len(class_names))
    cols = _colors(class_names).astype(np.uint16)
    weight = np.full(len(class_names), round(alpha * 256), dtype=np.uint16)
    if class_names and class_names[-1] == OTHER:
        weight[-1] = round(0.15 * 256)
    h, w = labels.shape
    rows = _rows_per_band(w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        lab = labels[y0 : min(h, y1 + 1)]  # one row more: the boundary with the next band
        band = lab[: y1 - y0]
        wt = weight[band][..., None]  # [rows, W, 1]
        out = image[y0:y1].astype(np.uint16) * (256 - wt)  # <= 255 * 256: no uint16 overflow
        out += cols[band] * wt
        out += 128
        out >>= 8
        edge = np.zeros(band.shape, dtype=bool)
        edge[:, :-1] = band[:, :-1] != band[:, 1:]
        edge[: lab.shape[0] - 1] |= lab[:-1] != lab[1:]
        out[edge] = (out[edge] * _EDGE + 128) >> 8
        yield y0, out.astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.55) -> np.ndarray:
    """``[H, W, 3]`` uint8: the image with each class's colour blended in (``other`` barely tinted)
    and dark region boundaries; same size as the image."""
    out = np.empty(image.shape, dtype=np.uint8)
    for y0, band in _overlay_bands(image, labels, class_names, alpha):
        out[y0 : y0 + band.shape[0]] = band
    return out


def legend(
    fractions: dict[str, float], class_names: Sequence[str], height: int | None = None, font_size: int = 14
) -> Image.Image:
    """A white panel listing ``fractions`` (class -> share) with colour swatches, largest first.

    With ``height``, lines that do not fit are summed up in a last line ``... N more``.
    """
    cols = _colors(class_names)
    index = {n: i for i, n in enumerate(class_names)}
    row = font_size + 8
    lines = [(f"{name}  {100 * f:.1f}%", tuple(int(c) for c in cols[index[name]])) for name, f in fractions.items()]
    shown = lines
    if height is not None and len(lines) * row + 16 > height:
        keep = max(1, (height - 16) // row - 1)
        if keep < len(lines):
            shown = [*lines[:keep], (f"... {len(lines) - keep} more", (255, 255, 255))]
    fonts = [font_for(text, font_size) for text, _ in shown]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((draw.textlength(t, font=f) for (t, _), f in zip(shown, fonts)), default=0)
    width = int(text_w) + row + 24
    panel = Image.new("RGB", (width, max(height or 0, len(shown) * row + 16)), (255, 255, 255))
    d = ImageDraw.Draw(panel)
    for k, ((text, color), font) in enumerate(zip(shown, fonts)):
        y = 8 + k * row
        d.rectangle([8, y + 2, 8 + row - 6, y + row - 4], fill=color, outline=(0, 0, 0))
        d.text((8 + row, y + 1), text, fill=(0, 0, 0), font=font)
    return panel


def highlight(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 64, 32)) -> np.ndarray:
    """``image`` ``[H, W, 3]`` uint8 with ``mask`` tinted and everything else dimmed."""
    out = image.astype(np.float32)
    tint = np.asarray(color, np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * tint
    out[~mask] *= 0.4
    return out.round().clip(0, 255).astype(np.uint8)
