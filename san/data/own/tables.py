"""Mask readers: CVAT's Segmentation mask 1.1 (colours), Hugging Face ``datasets`` tables (id maps) and
san's own manifest (``dataset.json``, what ``san train --data`` writes)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import (
    ArrayLabel,
    ColorLabel,
    FormatError,
    LabelFile,
    OwnDataset,
    Sample,
    decode_image_value,
    ignore_for,
    read_class_lines,
)
from .common import MANIFEST, images_under, load_json, with_background

__all__ = ["read_cvat", "read_hf", "read_manifest"]

logger = logging.getLogger(__name__)


# -- CVAT "Segmentation mask 1.1" ---------------------------------------------------------------------------
def read_cvat(root: Path, background: str | None = None) -> OwnDataset:
    """CVAT's Segmentation mask 1.1 export: ``labelmap.txt`` (``name:r,g,b:parts:actions``),
    ``SegmentationClass/*.png`` (colours) and the images in ``JPEGImages/`` (export with images).
    The ``background`` entry is unannotated (ignore) unless ``background`` names a class for it."""
    colors: dict[tuple[int, int, int], str] = {}
    for n, line in enumerate((root / "labelmap.txt").read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        try:
            rgb = tuple(int(v) for v in fields[1].split(","))
            assert len(rgb) == 3
        except (IndexError, ValueError, AssertionError):
            raise FormatError(f"{root / 'labelmap.txt'}: line {n} is not 'name:r,g,b::'") from None
        colors[rgb] = fields[0].strip()  # type: ignore[index]
    names = [n for n in colors.values() if n != "background"]
    classes, fill = with_background(names, background)
    ignore = ignore_for(len(classes))
    ids = {
        rgb: (classes.index(n) if n in classes else (fill if n == "background" else ignore))
        for rgb, n in colors.items()
    }
    images = images_under(root / "JPEGImages") if (root / "JPEGImages").is_dir() else {}
    samples = []
    for key, mask in images_under(root / "SegmentationClass").items():
        if key not in images:
            raise FormatError(
                f"{mask}: no image {key}.* in {root / 'JPEGImages'}; export from CVAT with 'Save images' on, or put "
                "the images there"
            )
        samples.append(Sample(key, str(images[key]), ColorLabel(str(mask), ids, ignore)))
    return OwnDataset(str(root), "cvat", classes, ignore, samples)


# -- Hugging Face datasets ------------------------------------------------------------------------------------
_HF_IMAGE = ("image", "img", "pixel_values")
_HF_LABEL = ("label", "annotation", "mask", "semantic_map", "segmentation_mask", "gt", "labels")


def _hf_load(path: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise FormatError(f"{path}: reading a Hugging Face dataset needs `pip install datasets`") from None
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    try:  # a name already in the local cache; nothing is downloaded
        datasets.config.HF_HUB_OFFLINE = True
        return datasets.load_dataset(path)
    except Exception as e:  # offline misses raise several types
        raise FormatError(
            f"{path}: not a local folder and not a dataset in the local Hugging Face cache ({type(e).__name__}); "
            "download it first (datasets.load_dataset) or save it with save_to_disk and pass the folder"
        ) from None


def _hf_classes(path: str, table: Any, classes: list[str] | None) -> list[str]:
    if classes:
        return list(classes)
    for name in ("classes.txt", "id2label.json"):
        f = Path(path) / name
        if f.is_file():
            if name.endswith(".txt"):
                return read_class_lines(str(f))
            mapping = load_json(f)
            return [str(mapping[str(i)]) for i in range(len(mapping))]
    raise FormatError(
        f"{path}: the dataset does not name its classes; put classes.txt (one name per line, line order = "
        "label id) or id2label.json in its folder, or pass --classes FILE"
    )


def read_hf(path: str, background: str | None = None, classes: list[str] | None = None) -> OwnDataset:
    """A ``datasets`` Dataset or DatasetDict (``save_to_disk`` folder or a name in the local cache) with an
    image column and a label column of class-id maps; its train/validation splits are kept."""
    obj = _hf_load(path)
    parts = dict(obj) if hasattr(obj, "keys") else {"train": obj}
    first = next(iter(parts.values()))
    image_col = next((c for c in _HF_IMAGE if c in first.column_names), None)
    label_col = next((c for c in _HF_LABEL if c in first.column_names), None)
    if image_col is None or label_col is None:
        raise FormatError(
            f"{path}: needs an image column ({'/'.join(_HF_IMAGE)}) and a label column ({'/'.join(_HF_LABEL)}); "
            f"it has {first.column_names}"
        )
    names = _hf_classes(path, first, classes)
    if background is not None:
        logger.warning("a dataset's label maps name every pixel already: --background is not used")
    samples, splits = [], {}
    for split, table in parts.items():
        raw = table.cast_column(image_col, _no_decode(table, image_col))
        keys = []
        for i in range(len(table)):
            key = f"{split}/{i:06d}"
            samples.append(
                Sample(
                    key,
                    None,
                    ArrayLabel(f"{path} [{split}][{i}].{label_col}", _row_getter(table, i, label_col), len(names)),
                    load_image=_row_getter(raw, i, image_col, decode_image_value),
                )
            )
            keys.append(key)
        splits["val" if split in ("validation", "val", "test") and "val" not in splits else split] = keys
    ds = OwnDataset(str(path), "hf", names, ignore_for(len(names)), samples)
    ds.splits = {"train": splits["train"], "val": splits["val"]} if {"train", "val"} <= set(splits) else None
    return ds


def _no_decode(table: Any, column: str) -> Any:
    from datasets import Image as HFImage

    feature = table.features[column]
    return HFImage(decode=False) if isinstance(feature, HFImage) else feature


def _row_getter(table: Any, i: int, column: str, convert: Callable[[Any], Any] | None = None) -> Callable[[], Any]:
    def get() -> Any:
        value = table[i][column]
        return convert(value) if convert else value

    return get


# -- san's own manifest (what `san train --data` writes) ---------------------------------------------------
def read_manifest(path: Path) -> OwnDataset:
    """``dataset.json`` written by :func:`san.data.own.prepare.prepare_data`: classes, ignore value and the
    train/val samples (paths relative to the JSON's folder unless absolute)."""
    path = path / MANIFEST if path.is_dir() else path
    data = load_json(path)
    if not isinstance(data, dict) or data.get("format") != "san-dataset":
        raise FormatError(f'{path}: not a san dataset manifest (no "format": "san-dataset")')
    base = path.parent
    samples, splits = [], {}
    for split in ("train", "val"):
        keys = []
        for rec in data.get(split, []):
            key = f"{split}/{rec['key']}"
            label = LabelFile(str(base / rec["label"]), len(data["classes"]))
            samples.append(Sample(key, str(base / rec["image"]), label))
            keys.append(key)
        splits[split] = keys
    ds = OwnDataset(str(path), "san", list(data["classes"]), int(data["ignore_label"]), samples, splits)
    return ds
