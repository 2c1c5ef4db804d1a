"""Pascal VOC 20: ``SegmentationClassAug/*.png``: 0 (background) -> 255, k -> k - 1, 255 stays.
Images without a single valid pixel get no label (as the official script)."""

from __future__ import annotations

import os

import numpy as np

from .common import PrepareError, PrepareOptions, Task, checked_u8, first_dir, link_dir, lut, need_dir

IGNORE, NUM_CLASSES = 255, 20


def convert(src: str) -> np.ndarray | None:
    out = lut(256, 255, np.uint8, {0: 255, **{k: k - 1 for k in range(1, 21)}})[checked_u8(src)]
    return None if (out == 255).all() else out


def _split(raw: str, split: str) -> list[str]:
    for listing in (os.path.join(raw, f"{split}.txt"), os.path.join(raw, "ImageSets", "Segmentation", f"{split}.txt")):
        if os.path.isfile(listing):
            with open(listing, encoding="utf-8") as f:
                return [line.split()[0] for line in f if line.strip()]
    raise PrepareError(f"voc: no {split}.txt in {raw} or {raw}/ImageSets/Segmentation")


def tasks(raw: str, root: str, options: PrepareOptions) -> dict[str, list[Task]]:
    labels = first_dir(
        raw, ("SegmentationClassAug", "SegmentationClass"), f"voc: no {raw}/SegmentationClassAug (or SegmentationClass)"
    )
    jpegs = need_dir(os.path.join(raw, "JPEGImages"), "voc images")
    link_dir(jpegs, os.path.join(root, "VOC2012", "JPEGImages"), options.copy)
    out: dict[str, list[Task]] = {}
    for split in ("train", "val"):
        dst = os.path.join(root, "VOC2012", "annotations_detectron2", split)
        out[split] = [
            Task(
                "voc",
                os.path.join(labels, f"{i}.png"),
                os.path.join(dst, f"{i}.png"),
                os.path.join(root, "VOC2012", "JPEGImages", f"{i}.jpg"),
            )
            for i in _split(raw, split)
        ]
    return out
