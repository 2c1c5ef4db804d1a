"""The pictures of a training run folder, which people would rather look at than read.

- :func:`batch_picture`: training images after augmentation with their labels drawn on them;
- :func:`curves_picture`: the loss curves and the mIoU curve from ``metrics.json``;
- :func:`confusion_picture`: the confusion matrix, each ground-truth row normalised;
- :func:`comparison_picture`: per-class IoU of the starting and the fine-tuned weights side by side;
- :func:`prediction_rows`: image, ground truth and prediction, one row per image.

PIL draws the images; matplotlib (the ``train`` extra) the charts: without it, a chart is skipped with
one warning and the function returns False.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from san.files import atomic_path
from san.inference.visualize import legend, overlay, pixel_fractions
from san.inference.vocabulary import OTHER

from .results import figure_class

__all__ = ["batch_picture", "comparison_picture", "confusion_picture", "curves_picture", "prediction_rows"]

TILE = 256  # the long side of each image in a grid, in pixels


def _figure(width: float, height: float) -> Any:
    figure = figure_class()
    return None if figure is None else figure(figsize=(width, height), dpi=100)


def _save(image_or_fig: Any, path: str) -> None:
    """Write atomically (a picture is complete or absent)."""
    with atomic_path(path) as tmp:
        if isinstance(image_or_fig, Image.Image):
            jpeg = path.lower().endswith((".jpg", ".jpeg"))
            image_or_fig.save(tmp, quality=90) if jpeg else image_or_fig.save(tmp)
        else:
            image_or_fig.savefig(tmp)


def _labelled(image: np.ndarray, label: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``image`` with ``label`` drawn on it; values that are no class id (the ignore value, padding)
    stay almost uncoloured."""
    names = [*classes, OTHER]
    shown = np.where((label >= 0) & (label < len(classes)), label, len(classes))
    return overlay(image, shown.astype(np.int64), names, alpha=0.5)


def _tile(array: np.ndarray, caption: str = "") -> Image.Image:
    img = Image.fromarray(array)
    scale = TILE / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    if caption:
        ImageDraw.Draw(img).text((4, 2), caption[:40], fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return img


def _grid(tiles: list[Image.Image], columns: int, panel: Image.Image | None = None) -> Image.Image:
    rows = -(-len(tiles) // columns)
    width = columns * (TILE + 4) + (panel.width if panel else 0)
    height = max(rows * (TILE + 4), panel.height if panel else 0)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, ((i % columns) * (TILE + 4), (i // columns) * (TILE + 4)))
    if panel:
        out.paste(panel, (columns * (TILE + 4), 0))
    return out


def _unpadded(image: np.ndarray, label: np.ndarray, n: int) -> tuple[int, int]:
    """The size of a training image before the mapper padded it at the bottom and right (image 128, label
    ignore): the last row and column holding a class id or a pixel that is not the pad value."""
    content = (label < n) | (image != 128).any(axis=-1)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    return (int(rows[-1]) + 1, int(cols[-1]) + 1) if rows.size else label.shape


def batch_picture(batch: Sequence[dict[str, Any]], path: str, columns: int = 4) -> None:
    """A grid of a training batch as the model sees it (augmented, padded), labels drawn, with a legend."""
    tiles, counts, names = [], {}, list(batch[0]["vocabulary"])
    for x in batch:
        image = x["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        label = x["sem_seg"].cpu().numpy()
        h, w = _unpadded(image, label, len(names))
        image, label = image[:h, :w], label[:h, :w]
        tiles.append(_tile(_labelled(image, label, names), os.path.basename(str(x.get("file_name", "")))))
        for cid, share in pixel_fractions(np.where(label < len(names), label, len(names)), [*names, OTHER]).items():
            counts[cid] = counts.get(cid, 0.0) + share / len(batch)
    shares = {k: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if k != OTHER}
    panel = legend(shares, [*names, OTHER], height=-(-len(tiles) // columns) * (TILE + 4))
    _save(_grid(tiles, min(columns, len(tiles)), panel), path)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The entries of a ``metrics.json`` (one JSON object per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def curves_picture(metrics_path: str, path: str, start: dict[str, float] | None = None) -> bool:
    """Losses (total and each term) and the learning rate per logged iteration, and every evaluated
    dataset's mIoU per evaluation, from ``metrics.json``; ``start`` (``{"<dataset>/sem_seg/mIoU": value}``)
    adds the evaluation of the starting weights at iteration 0."""
    entries = read_metrics(metrics_path)
    fig = _figure(11, 3.4)
    if fig is None or not entries:
        return False
    loss_keys = sorted({k for e in entries for k in e if k.startswith("loss") or k == "total_loss"})
    miou_keys = sorted({k for e in entries for k in e if k.endswith("/mIoU")})
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for k in loss_keys:
        pts = [(e["iteration"] + 1, e[k]) for e in entries if k in e]
        ax1.plot(*zip(*pts), label=k, linewidth=2 if k == "total_loss" else 1)
    ax1.set_title("losses")
    ax1.legend(fontsize=6)
    pts = [(e["iteration"] + 1, e["lr"]) for e in entries if "lr" in e]
    if pts:
        ax2.plot(*zip(*pts))
    ax2.set_title("learning rate")
    start = start or {}
    for k in miou_keys:
        pts = ([(0, start[k])] if k in start else []) + [(e["iteration"] + 1, e[k]) for e in entries if k in e]
        ax3.plot(*zip(*pts), marker="o", label=k.split("/")[0])
    ax3.set_title("validation mIoU (%)" + (" (0: start)" if start else ""))
    if miou_keys:
        ax3.legend(fontsize=6)
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("iterations done", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def confusion_picture(conf: np.ndarray, classes: Sequence[str], path: str, max_classes: int = 40) -> bool:
    """The confusion matrix ``conf`` (``[gt, pred]`` pixel counts) with each row divided by its sum, so a
    row shows where a class's pixels went; above ``max_classes``, the classes with most pixels."""
    totals = conf.sum(axis=1)
    keep = np.flatnonzero(totals > 0)
    if keep.size > max_classes:
        keep = np.sort(keep[np.argsort(-totals[keep], kind="stable")[:max_classes]])
    n = max(keep.size, 1)
    fig = _figure(2.5 + 0.22 * n, 2 + 0.22 * n)
    if fig is None:
        return False
    sub = conf[np.ix_(keep, keep)].astype(np.float64)
    rows = np.maximum(totals[keep, None].astype(np.float64), 1.0)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(sub / rows, vmin=0, vmax=1, cmap="Blues")
    names = [classes[i][:20] for i in keep]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if len(names) <= 15:
        for i in range(len(names)):
            for j in range(len(names)):
                v = sub[i, j] / rows[i, 0]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"confusion (rows sum to 1; {int(conf.sum())} pixels)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def comparison_picture(
    rows: list[tuple[str, float | None, float | None]], path: str, title: str, after: str = "fine-tuned"
) -> bool:
    """Grouped bars: per class (``rows``: name, before, after IoU in %), the starting model and the one after
    (``after`` names it in the legend)."""
    fig = _figure(max(5.0, 0.45 * len(rows) + 2), 3.6)
    if fig is None:
        return False
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    before = [r[1] if r[1] is not None else 0.0 for r in rows]
    later = [r[2] if r[2] is not None else 0.0 for r in rows]
    ax.bar(x - 0.2, before, 0.4, label="zero-shot (start)", color="#b0b0b0")
    ax.bar(x + 0.2, later, 0.4, label=after, color="#3b75af")
    ax.set_xticks(x, [r[0][:18] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def prediction_rows(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], classes: Sequence[str], path: str
) -> None:
    """One row per ``(image, ground truth, prediction, name)``: the photo, its labels, the model's labels;
    the legend lists the classes of either map (share: of the two maps' pixels together)."""
    tiles: list[Image.Image] = []
    present: dict[str, float] = {}
    for image, gt, pred, name in items:
        tiles += [
            _tile(image, name),
            _tile(_labelled(image, gt, classes), "ground truth"),
            _tile(_labelled(image, pred, classes), "prediction"),
        ]
        both = np.concatenate([gt[(gt >= 0) & (gt < len(classes))], pred.ravel()])  # classes of either map
        for k, v in pixel_fractions(both.reshape(1, -1), classes).items():
            present[k] = present.get(k, 0.0) + v / len(items)
    shares = dict(sorted(present.items(), key=lambda kv: -kv[1]))
    panel = legend(shares, list(classes), height=len(items) * (TILE + 4))
    _save(_grid(tiles, 3, panel), path)
