"""COCO run-length encoding (pycocotools' format, without pycocotools).

A mask is flattened column-major (Fortran order); runs alternate background/foreground and start
with background. ``counts`` is either the compressed string pycocotools writes (what san's dumped
predictions use) or the plain list of run lengths COCO files hold for crowd regions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rle_decode", "rle_encode"]


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}`` of a 2-D boolean mask, column-major, as pycocotools."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]  # runs start with zeros
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            chars.append(chr(ch + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def _string_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("the compressed RLE string ends inside a number")
            ch = ord(s[p]) - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and ch & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean ``[h, w]`` mask of a COCO RLE: compressed string counts (pycocotools, :func:`rle_encode`)
    or a plain list of run lengths. Counts that do not cover ``h x w`` pixels are a ValueError."""
    h, w = (int(v) for v in rle["size"])
    s = rle["counts"]
    if isinstance(s, (list, tuple)):
        counts = [int(c) for c in s]
    else:
        counts = _string_counts(s.decode() if isinstance(s, bytes) else s)
    if any(c < 0 for c in counts):
        raise ValueError("negative run length in the RLE counts")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, expected {h}x{w}")
    return flat.reshape((h, w), order="F")
