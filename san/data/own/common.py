"""What the format readers share: finding images, the background rule, JSON reading, the manifest name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..formats import IMAGE_EXTENSIONS
from .base import FormatError, ignore_for

__all__ = ["MANIFEST", "images_under", "is_coco", "is_labelme", "load_json", "pick_dir", "with_background"]

MANIFEST = "dataset.json"  # what san writes (san.data.own.prepare): the "san" format
IMAGE_DIRS = ("images", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "labels", "annotations", "gt", "SegmentationClass")


def images_under(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursively) by key: the relative path without extension."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), p)
    return out


def with_background(classes: list[str], background: str | None) -> tuple[list[str], int]:
    """Classes (plus ``background`` last when given) and the value of unannotated pixels."""
    if background is None:
        return classes, ignore_for(len(classes))
    if background in classes:
        return classes, classes.index(background)
    classes = [*classes, background]
    return classes, len(classes) - 1


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e}); re-export it") from None


def pick_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def is_coco(data: Any) -> bool:
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


def is_labelme(path: Path) -> bool:
    try:
        data = load_json(path)
    except (FormatError, OSError):
        return False
    return isinstance(data, dict) and "shapes" in data and "imagePath" in data
