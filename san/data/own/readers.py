"""Readers of the annotation formats people have, each to an :class:`OwnDataset`.

Every path is resolved relative to the data (the folder, JSON or YAML given), never to an
environment variable. Unannotated pixels are the ignore value unless ``background`` names a class
for them (then it is the last class). Each reader refuses its format's typical breakage with a
:class:`FormatError` that names the file and what to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..formats import FORMATS
from .base import FormatError, LabelFile, OwnDataset, Sample, ignore_for, read_class_lines
from .coco import read_coco, read_coco_panoptic
from .common import IMAGE_DIRS, MANIFEST, MASK_DIRS, images_under, is_coco, is_labelme, load_json, pick_dir
from .polygons import read_labelme, read_yolo
from .tables import read_cvat, read_hf, read_manifest

__all__ = ["FORMATS", "MANIFEST", "detect_format", "read_dataset", "read_folder"]

logger = logging.getLogger(__name__)


# -- detection ---------------------------------------------------------------------------------------
def _coco_kind(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 20)
    except OSError:
        return None
    if '"categories"' not in head and '"annotations"' not in head:
        return None
    data = load_json(path)
    if not is_coco(data):
        return None
    anns = data.get("annotations") or []
    return "coco-panoptic" if anns and "segments_info" in anns[0] else "coco"


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`), from its files; FormatError when none fits."""
    p = Path(path)
    if not p.exists():
        if _looks_like_hub_name(str(path)):
            return "hf"
        raise FormatError(f"{path}: no such file or folder")
    if p.is_file():
        if p.name == MANIFEST:
            return "san"
        if p.suffix.lower() == ".json":
            kind = _coco_kind(p)
            if kind:
                return kind
            raise FormatError(f"{p}: a JSON file but not COCO (it needs images, annotations and categories)")
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise FormatError(f"{p}: give a dataset folder, a COCO JSON or a YOLO data.yaml")
    if (p / MANIFEST).is_file():
        return "san"
    if any((p / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return "hf"
    if (p / "labelmap.txt").is_file() and (p / "SegmentationClass").is_dir():
        return "cvat"
    if (p / "data.yaml").is_file():
        return "yolo"
    if _coco_json_in(p) is not None:
        return _coco_kind(_coco_json_in(p))  # type: ignore[return-value]
    if any(is_labelme(j) for j in sorted(p.glob("*.json"))[:5]):
        return "labelme"
    if pick_dir(p, IMAGE_DIRS) and pick_dir(p, MASK_DIRS):
        return "folder"
    raise FormatError(
        f"{p}: cannot tell the dataset format. san reads: a folder with images/, masks/ and classes.txt; a COCO "
        "or COCO panoptic JSON; a YOLO data.yaml; a labelme folder; a CVAT 'Segmentation mask 1.1' export; a "
        "Hugging Face dataset saved with save_to_disk (--format forces one)"
    )


def _looks_like_hub_name(name: str) -> bool:
    import re

    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and "." not in name.split("/")[-1][:1]


def _coco_json_in(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    found = [c for c in candidates if _coco_kind(c)]
    return found[0] if len(found) == 1 else None


# -- folder: images/ + masks/ + classes.txt ---------------------------------------------------------
def read_folder(root: Path, background: str | None = None) -> OwnDataset:
    """``images/`` and ``masks/`` (or labels/, annotations/) matched by path without extension, and
    ``classes.txt``; ``images/train`` + ``images/val`` subfolders are taken as the splits."""
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise FormatError(
            f"{root}: no classes.txt; write the class names there, one per line, in the order of their ids in "
            "the masks (line 1 = id 0)"
        )
    classes = read_class_lines(str(classes_file))
    if background is not None:
        logger.warning("the folder format's masks name every pixel already: --background is not used")
    image_dir, mask_dir = pick_dir(root, IMAGE_DIRS), pick_dir(root, MASK_DIRS)
    if image_dir is None or mask_dir is None:
        raise FormatError(f"{root}: needs an images/ folder and a masks/ (or labels/) folder beside classes.txt")
    images = images_under(image_dir)
    masks = {k: v for k, v in images_under(mask_dir).items()}
    samples = [Sample(k, str(images[k]), LabelFile(str(masks[k]), len(classes))) for k in sorted(images) if k in masks]
    ds = OwnDataset(str(root), "folder", classes, ignore_for(len(classes)), samples)
    ds.unlabelled_images = sum(1 for k in images if k not in masks)
    orphans = [k for k in masks if k not in images]
    if orphans:
        raise FormatError(
            f"{mask_dir / orphans[0]}: a mask without an image ({len(orphans)} such masks); the image "
            f"{image_dir / orphans[0]}.<ext> is missing: restore it or delete the mask"
        )
    subdirs = {k.split("/", 1)[0] for k in images}
    if {"train", "val"} <= subdirs:
        ds.splits = {s: [x.key for x in samples if x.key.startswith(s + "/")] for s in ("train", "val")}
    return ds


def read_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    background: str | None = None,
    classes: list[str] | None = None,
) -> OwnDataset:
    """Read a dataset in any supported format (detected from its files unless ``format`` is given).

    ``background``: the class name of unannotated pixels (else they are ignored); ``classes``: the
    class names of a Hugging Face dataset that does not carry them."""
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    p = Path(path)
    if fmt == "hf":
        return read_hf(str(path), background, classes)
    if not p.exists():
        raise FormatError(f"{path}: no such file or folder")
    if fmt == "san":
        return read_manifest(p)
    if fmt in ("coco", "coco-panoptic"):
        json_path = p if p.is_file() else _coco_json_in(p)
        if json_path is None:
            raise FormatError(f"{p}: no single COCO JSON in the folder or its annotations/; pass the JSON file")
        return (read_coco if fmt == "coco" else read_coco_panoptic)(json_path, background)
    if fmt == "yolo":
        return read_yolo(p, background)
    if not p.is_dir():
        raise FormatError(f"{p}: the {fmt} format is a folder")
    return {"folder": read_folder, "labelme": read_labelme, "cvat": read_cvat}[fmt](p, background)
