"""Check a dataset read from any format, then write it as san trains on it.

:func:`check_dataset` reads every image and every label once, before any model exists: a problem the
run cannot survive (a missing or unreadable file, a mask whose size differs from its image, a label
value that is neither a class id nor the ignore value, repeated class names) is one
:class:`~san.data.own.base.FormatError` naming the first file and the count; what it can survive
(classes without pixels, images without labelled pixels, images without annotation files) is a
warning with the count. The report holds each class's pixel share and image count.

:func:`prepare_data` writes ``<out>/data``: ``labels/`` (one PNG of class ids per image), images that
live only in a table, ``classes.txt``, ``split.json`` (the seed and the keys of each split),
``summary.json``/``summary.txt`` and ``dataset.json``, the manifest the ``san`` format reads back
(so the folder is itself a ``--data``). The folder appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import DataError, write_label
from .base import FormatError, OwnDataset
from .readers import MANIFEST

__all__ = ["DataReport", "check_dataset", "make_split", "prepare_data", "summary_table"]

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What :func:`check_dataset` found: per-class pixels and images, and the survivable findings."""

    classes: list[str]
    pixels: np.ndarray  # [N] labelled pixels per class
    images: np.ndarray  # [N] images holding each class
    num_images: int
    ignored_pixels: int
    empty_images: list[str] = field(default_factory=list)  # keys of images with no labelled pixel
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        total = max(int(self.pixels.sum()), 1)
        return {
            "images": self.num_images,
            "labelled_pixels": int(self.pixels.sum()),
            "ignored_pixels": self.ignored_pixels,
            "images_without_labels": len(self.empty_images),
            "classes": [
                {"name": n, "pixel_share": float(p) / total, "pixels": int(p), "images": int(i)}
                for n, p, i in zip(self.classes, self.pixels, self.images)
            ],
            "warnings": list(self.warnings),
        }


def summary_table(report: DataReport, title: str = "") -> str:
    """Each class's pixel share and image count, as aligned text."""
    d = report.to_dict()
    width = max([len(c["name"]) for c in d["classes"]] + [5])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  pixels %  images")
    for c in d["classes"]:
        lines.append(f"{c['name']:<{width}}  {100 * c['pixel_share']:8.2f}  {c['images']:6d}")
    lines.append(f"{report.num_images} images, {len(report.empty_images)} without labelled pixels")
    return "\n".join(lines)


def _duplicates(classes: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    dups = []
    for name in classes:
        k = name.strip().lower()
        if k in seen:
            dups.append(name)
        seen[k] = name
    return dups


def check_dataset(ds: OwnDataset, *, what: str = "", progress: bool = True) -> DataReport:
    """Read every image and label of ``ds`` and check them (see the module docstring)."""
    from tqdm import tqdm

    if not ds.classes:
        raise FormatError(f"{ds.path}: the dataset names no class")
    dups = _duplicates(ds.classes)
    if dups:
        raise FormatError(
            f"{ds.path}: class name {dups[0]!r} appears twice ({len(dups)} repeat(s)); each class needs its own "
            "name (the vocabulary is the class names): merge or rename them"
        )
    if not ds.samples:
        raise FormatError(f"{ds.path}: no annotated image found")
    n = ds.num_classes
    pixels = np.zeros(n, dtype=np.int64)
    images = np.zeros(n, dtype=np.int64)
    ignored = 0
    problems: list[str] = []
    empty: list[str] = []
    bar = tqdm(ds.samples, desc=f"checking {what or ds.format} data", unit="img", disable=not progress, leave=False)
    try:
        for s in bar:
            try:
                img = s.read_image()
                label = s.label.read()
            except (DataError, OSError) as e:
                problems.append(str(e) if s.image is not None or isinstance(e, FormatError) else f"{s.key}: {e}")
                continue
            if img.shape[:2] != label.shape:
                problems.append(
                    f"{s.label.where}: the mask is {label.shape[1]}x{label.shape[0]} but its image "
                    f"{s.image or s.key} is {img.shape[1]}x{img.shape[0]} (width x height); masks must match their "
                    "images"
                )
                continue
            valid = label != ds.ignore_label
            bad = valid & ((label < 0) | (label >= n))
            if bad.any():
                v = int(label[bad].max())
                problems.append(
                    f"{s.label.where}: holds id {v}, but there are {n} classes (ids 0..{n - 1}, {ds.ignore_label} = "
                    "unlabelled); fix the mask or add the missing class names"
                )
                continue
            counts = np.bincount(label[valid], minlength=n)
            pixels += counts
            images += counts > 0
            ignored += int((~valid).sum())
            if not valid.any():
                empty.append(s.key)
    finally:
        bar.close()  # the bar goes before any message is said
    if problems:
        more = (
            f" ({len(problems)} of {len(ds.samples)} images have problems; the first is shown)"
            if len(problems) > 1
            else ""
        )
        raise FormatError(problems[0] + more)
    report = DataReport(list(ds.classes), pixels, images, len(ds.samples), ignored, empty)
    absent = [c for c, p in zip(ds.classes, pixels) if p == 0]
    if absent:
        report.warnings.append(
            f"{len(absent)} class(es) have no pixel in the {what or 'data'}: {', '.join(absent[:10])}"
            + (" ..." if len(absent) > 10 else "")
        )
    if empty:
        report.warnings.append(f"{len(empty)} image(s) have no labelled pixel (e.g. {empty[0]}); training skips them")
    if ds.unlabelled_images:
        report.warnings.append(f"{ds.unlabelled_images} image(s) have no annotation file and are not used")
    return report


def make_split(keys: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded train/val split of ``keys``: ``round(val_fraction x n)`` images (at least 1 when there are
    2 or more) to validation; a single image is both."""
    keys = sorted(keys)
    if len(keys) < 2:
        return keys, list(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
    val = sorted(keys[i] for i in order[:n_val])
    return [k for k in keys if k not in set(val)], val


def _file_name(key: str) -> str:
    return key.replace("/", "__")


def prepare_data(
    train: OwnDataset,
    out_dir: str | os.PathLike,
    *,
    val: OwnDataset | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    name: str = "own",
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any] | None:
    """Check ``train`` (and ``val``), split when needed, and write ``<out_dir>/data`` (module docstring).

    Returns the manifest (None with ``write=False``: the checks alone). Raises :class:`FormatError` before
    writing anything when the data cannot be trained on; ``val`` must have the same classes."""
    if val is not None and list(val.classes) != list(train.classes):
        raise FormatError(
            f"--val {val.path} has the classes {val.classes[:5]}... but --data {train.path} has "
            f"{train.classes[:5]}...; both must name the same classes in the same order"
        )
    if val is not None:
        split_from, train_keys, val_keys = "--val", [s.key for s in train.samples], [s.key for s in val.samples]
        parts = {"train": train, "val": val}
    elif train.splits:
        split_from, train_keys, val_keys = "the data's own splits", train.splits["train"], train.splits["val"]
        parts = {"train": train.subset(train_keys), "val": train.subset(val_keys)}
    else:
        split_from = f"seeded split (seed {seed}, {val_fraction:g} to validation)"
        train_keys, val_keys = make_split([s.key for s in train.samples], val_fraction, seed)
        parts = {"train": train.subset(train_keys), "val": train.subset(val_keys)}
    reports = {split: check_dataset(ds, what=split, progress=progress) for split, ds in parts.items()}
    for split, report in reports.items():
        for w in report.warnings:
            logger.warning("%s data: %s", split, w)
    if len(train_keys) == len(reports["train"].empty_images):
        raise FormatError(f"{train.path}: no training image has a labelled pixel; nothing to learn from")
    if not write:
        return None

    out = Path(out_dir) / "data"
    tmp = Path(out_dir) / f".data.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _write(parts, reports, tmp, progress)
        manifest.update(
            name=name,
            source={"data": train.path, "format": train.format, **({"val": val.path} if val is not None else {})},
            split={"from": split_from, "seed": seed, "val_fraction": val_fraction},
        )
        _write_json(tmp / MANIFEST, manifest)
        _write_json(tmp / "split.json", {**manifest["split"], "train": train_keys, "val": val_keys})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def _write(parts: dict[str, OwnDataset], reports: dict[str, DataReport], tmp: Path, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    first = next(iter(parts.values()))
    (tmp / "labels").mkdir(parents=True)
    dtype = np.uint8 if first.ignore_label <= 255 else np.uint16
    manifest: dict[str, Any] = {
        "format": "san-dataset",
        "version": 1,
        "classes": list(first.classes),
        "ignore_label": first.ignore_label,
    }
    for name, ds in parts.items():
        records = []
        empty = set(reports[name].empty_images) if name == "train" else set()
        for s in tqdm(ds.samples, desc=f"writing {name} labels", unit="img", disable=not progress, leave=False):
            if s.key in empty:
                continue
            fname = _file_name(f"{name}/{s.key}")
            label_rel = f"labels/{fname}.png"
            write_label(str(tmp / label_rel), s.label.read().astype(dtype))
            if s.image is None:  # an image held in a table: written beside the labels
                (tmp / "images").mkdir(exist_ok=True)
                image_rel = f"images/{fname}.png"
                from PIL import Image

                Image.fromarray(s.read_image()).save(tmp / image_rel)
                image = image_rel
            else:
                image = os.path.abspath(s.image)
            records.append({"key": s.key, "image": image, "label": label_rel})
        manifest[name] = records
    (tmp / "classes.txt").write_text("\n".join(first.classes) + "\n", encoding="utf-8")
    summary = {name: r.to_dict() for name, r in reports.items()}
    _write_json(tmp / "summary.json", summary)
    text = "\n\n".join(summary_table(r, f"{name} ({len(parts[name].samples)} images)") for name, r in reports.items())
    (tmp / "summary.txt").write_text(text + "\n", encoding="utf-8")
    return manifest
