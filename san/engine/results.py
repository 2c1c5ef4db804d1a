"""Evaluation results on disk: JSON (NaN as null), a plain-text table, a per-class IoU bar chart,
and COCO-style compressed RLE for dumped predictions (pycocotools' format, without pycocotools).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["format_results", "rle_decode", "rle_encode", "save_results", "write_json"]


# --------------------------------------------------------------------------------------------
# COCO-style compressed RLE (pycocotools' format), so predictions dump without pycocotools
# --------------------------------------------------------------------------------------------
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


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean ``[h, w]`` mask of a compressed RLE written by :func:`rle_encode` or pycocotools."""
    h, w = rle["size"]
    s = rle["counts"]
    s = s.decode() if isinstance(s, bytes) else s
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
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
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, expected {h}x{w}")
    return flat.reshape((h, w), order="F")


# --------------------------------------------------------------------------------------------
# Results: JSON, table, bar chart
# --------------------------------------------------------------------------------------------
def _finite_or_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def format_results(results: dict[str, Any], header_only: bool = False) -> str:
    """A plain-text table: the four headline metrics, then per-class IoU and accuracy."""
    r = results.get("sem_seg", results)
    head = ["mIoU", "fwIoU", "mACC", "pACC"]
    line = "  ".join(f"{k} {r[k]:.2f}" for k in head)
    if header_only:
        return line
    names = [k[4:] for k in r if k.startswith("IoU-")]
    width = max([len(n) for n in names] + [5])
    rows = [
        line,
        "copypaste: " + ",".join(f"{r[k]:.4f}" for k in head),
        "",
        f"{'class':<{width}}  {'IoU':>7}  {'ACC':>7}",
    ]
    for n in names:
        iou, acc = r[f"IoU-{n}"], r[f"ACC-{n}"]
        rows.append(f"{n:<{width}}  {_fmt(iou):>7}  {_fmt(acc):>7}")
    return "\n".join(rows) + "\n"


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def save_results(results: dict[str, Any], output_dir: str | os.PathLike, name: str) -> dict[str, str]:
    """Write ``<name>.json`` (NaN as null), ``<name>.txt`` (table) and ``<name>_iou.png`` (bar chart).

    Returns the written paths by kind. Classes without ground truth are listed as n/a and left out
    of the chart; with more than 100 classes the chart shows the best and worst 50.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    paths = {k: os.path.join(output_dir, f"{safe}{ext}") for k, ext in
             (("json", ".json"), ("table", ".txt"), ("chart", "_iou.png"))}  # fmt: skip
    write_json(paths["json"], _finite_or_none(dict(results)))
    with open(paths["table"], "w", encoding="utf-8") as f:
        f.write(f"{name}\n{format_results(results)}")
    _bar_chart(results.get("sem_seg", results), name, paths["chart"])
    return paths


def _bar_chart(r: dict[str, Any], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    items = [(k[4:], float(v)) for k, v in r.items() if k.startswith("IoU-") and v is not None and np.isfinite(v)]
    items.sort(key=lambda kv: -kv[1])
    note = ""
    if len(items) > 100:
        note = f" (best and worst 50 of {len(items)} classes)"
        items = items[:50] + [("...", 0.0)] + items[-50:]
    n = max(len(items), 1)
    fig = Figure(figsize=(8, 1.2 + 0.22 * n), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(items)), [v for _, v in items], color="#3b75af")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"{title}: mIoU {_fmt(r.get('mIoU'))}{note}", fontsize=10)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
