"""Evaluation results on disk: JSON (NaN as null), a plain-text table, a per-class IoU bar chart,
and COCO-style compressed RLE for dumped predictions (pycocotools' format, without pycocotools).
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
from typing import Any

import numpy as np

from san.data.rle import rle_decode, rle_encode

__all__ = ["bar_chart", "format_results", "rle_decode", "rle_encode", "safe_name", "save_results", "write_json"]

logger = logging.getLogger(__name__)


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


def _finite(v: Any) -> bool:
    return v is not None and bool(np.isfinite(v))


def _with_ground_truth(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Class names with ground truth in the evaluated images, and those without: a class has ground
    truth where its accuracy is finite (its IoU, where no accuracy is given)."""
    names = [k[4:] for k in r if k.startswith("IoU-")]
    has = [n for n in names if _finite(r.get(f"ACC-{n}", r[f"IoU-{n}"]))]
    seen = set(has)
    return has, [n for n in names if n not in seen]


def format_results(results: dict[str, Any], header_only: bool = False) -> str:
    """A plain-text table: the four headline metrics, then per-class IoU and accuracy of the classes
    with ground truth (the others are counted in one line; the JSON keeps every class)."""
    r = results.get("sem_seg", results)
    head = ["mIoU", "fwIoU", "mACC", "pACC"]
    line = "  ".join(f"{k} {r[k]:.2f}" for k in head)
    if header_only:
        return line
    names, absent = _with_ground_truth(r)
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
    if absent:
        predicted = sum(1 for n in absent if _finite(r[f"IoU-{n}"]))
        also = f", {predicted} of them predicted somewhere (IoU 0)" if predicted else ""
        rows += ["", f"{len(absent)} class(es) without ground truth in these images are not listed{also}"]
    return "\n".join(rows) + "\n"


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def save_results(results: dict[str, Any], output_dir: str | os.PathLike, name: str) -> dict[str, str]:
    """Write ``<name>.json`` (NaN as null), ``<name>.txt`` (table) and ``<name>_iou.png`` (bar chart).

    Returns the written paths by kind. Classes without ground truth are counted, not listed, in the
    table and left out of the chart, which draws every other class, sorted by IoU, in up to four
    columns; the JSON keeps every class.
    Without matplotlib the chart is skipped (one warning per process) and ``"chart"`` is absent.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    safe = safe_name(name)
    paths = {
        k: os.path.join(output_dir, f"{safe}{ext}")
        for k, ext in (("json", ".json"), ("table", ".txt"), ("chart", "_iou.png"))
    }
    write_json(paths["json"], _finite_or_none(dict(results)))
    with open(paths["table"], "w", encoding="utf-8") as f:
        f.write(f"{name}\n{format_results(results)}")
    if not bar_chart(results.get("sem_seg", results), name, paths["chart"]):
        del paths["chart"]
    return paths


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (a file name)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


_warned_no_matplotlib = False
BARS_PER_COLUMN = 50  # a chart grows a column per 50 classes, up to MAX_COLUMNS, then grows taller
MAX_COLUMNS = 4
BAR_PITCH_INCH = 0.2
CHART_DPI = 80
_LABEL_CHARS = 32


def figure_class() -> Any:
    """matplotlib's ``Figure``, or None (said once per process, for every chart) when it is not installed."""
    global _warned_no_matplotlib
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned_no_matplotlib:
            logger.warning(
                "charts skipped (per-class IoU, confusion, curves): matplotlib is not installed "
                "(pip install matplotlib)"
            )
            _warned_no_matplotlib = True
        return None
    return Figure


def bar_chart(r: dict[str, Any], title: str, path: str) -> bool:
    """Draw every class's IoU (``IoU-<c>`` entries of ``r``) as sorted horizontal bars into a PNG.

    With more than :data:`BARS_PER_COLUMN` classes the bars continue in further columns (at most
    :data:`MAX_COLUMNS`; beyond that the columns get taller), best class top left. Returns False,
    writing nothing, when matplotlib is not installed.
    """
    Figure = figure_class()
    if Figure is None:
        return False
    shown, absent = _with_ground_truth(r)
    ious = [(n, r[f"IoU-{n}"]) for n in shown]
    items = sorted(((n, float(v)) for n, v in ious if _finite(v)), key=lambda kv: -kv[1])
    cols = min(MAX_COLUMNS, max(1, -(-len(items) // BARS_PER_COLUMN)))
    rows = max(1, -(-len(items) // cols))
    names = [n if len(n) <= _LABEL_CHARS else n[: _LABEL_CHARS - 1] + "…" for n, _ in items]
    label_inch = 0.06 * max([len(n) for n in names] + [4])  # ~7 pt characters
    col_inch = label_inch + 2.7  # labels, 2.2 in of bars, room for the value and the gap to the next column
    fig_w = cols * col_inch
    note = f", {len(absent)} without ground truth not shown" if absent else ""
    heading = f"{title}: mIoU {_fmt(r.get('mIoU'))} ({len(items)} classes{note})"
    # 9 pt title characters are at most ~0.075 in wide: wrap it to the figure, with room for its lines
    lines = textwrap.wrap(heading, width=max(20, int((fig_w - 0.2) / 0.075)), break_long_words=True)
    title_inch = 0.15 * len(lines)
    fig_h = 1.1 + title_inch + rows * BAR_PITCH_INCH
    fig = Figure(figsize=(fig_w, fig_h), dpi=CHART_DPI)
    for c in range(cols):
        chunk = list(zip(names, items))[c * rows : (c + 1) * rows]
        left = (c * col_inch + label_inch + 0.15) / fig_w
        ax = fig.add_axes((left, 0.55 / fig_h, 2.2 / fig_w, rows * BAR_PITCH_INCH / fig_h))
        bars = ax.barh(range(len(chunk)), [v for _, (_, v) in chunk], height=0.7, color="#3b75af")
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_yticks(range(len(chunk)), [n for n, _ in chunk], fontsize=7)
        ax.set_ylim(rows - 0.5, -0.5)  # the same scale in every column, best class on top
        ax.set_xlim(0, 100)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("IoU (%)", fontsize=7)
    fig.suptitle("\n".join(lines), fontsize=9, y=1 - 0.15 / fig_h, va="top")
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True
