"""Polygons and RLE masks painted into a label map.

Rule: a pixel belongs to a polygon when its centre lies inside it (even-odd rule). Where the centre
of pixel ``(row, col)`` is depends on the format's coordinates: COCO and YOLO coordinates are
continuous (pixel ``col`` spans ``[col, col + 1)``, centre ``col + 0.5``: ``offset=0.5``); labelme
stores pixel indices (centre ``col``: ``offset=0``). Edges follow the rule exactly, so a label map
never depends on a drawing library's anti-aliasing or outline width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["polygon_mask", "rectangle_points", "circle_points"]


def polygon_mask(points: np.ndarray, height: int, width: int, offset: float = 0.5) -> np.ndarray:
    """``[height, width]`` bool: the pixels whose centre ``(col + offset, row + offset)`` lies inside the
    polygon ``points`` (``[P, 2]`` as x, y; P >= 3), by the even-odd rule."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=bool)
    if len(pts) < 3 or height <= 0 or width <= 0:
        return mask
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    top = max(0, int(np.ceil(y0.min() - offset)))
    bottom = min(height - 1, int(np.floor(y0.max() - offset)))
    if bottom < top:
        return mask
    rows = np.arange(top, bottom + 1)
    yc = (rows + offset)[:, None]  # [R, 1]
    # an edge crosses the row's centre line when one end is on or below it and the other above
    crosses = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))  # [R, E]
    r_idx, e_idx = np.nonzero(crosses)
    if r_idx.size == 0:
        return mask
    t = (yc[r_idx, 0] - y0[e_idx]) / (y1[e_idx] - y0[e_idx])
    x = x0[e_idx] + t * (x1[e_idx] - x0[e_idx])
    # each crossing at x flips the inside-ness of every pixel whose centre is at or right of x
    start = np.clip(np.ceil(x - offset), 0, width).astype(np.int64)
    flips = np.zeros((rows.size, width + 1), dtype=np.int32)
    np.add.at(flips, (r_idx, start), 1)
    mask[top : bottom + 1] = (np.cumsum(flips[:, :width], axis=1) & 1).astype(bool)
    return mask


def rectangle_points(corners: Sequence[Sequence[float]]) -> np.ndarray:
    """The 4 corners of the axis-aligned rectangle spanned by two opposite corners (labelme's rectangle)."""
    (xa, ya), (xb, yb) = corners[0], corners[1]
    return np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=np.float64)


def circle_points(centre: Sequence[float], on_circle: Sequence[float], sides: int = 64) -> np.ndarray:
    """A ``sides``-gon inscribed in the circle through ``on_circle`` around ``centre`` (labelme's circle)."""
    cx, cy = centre
    r = float(np.hypot(on_circle[0] - cx, on_circle[1] - cy))
    angles = np.linspace(0.0, 2.0 * np.pi, sides, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
