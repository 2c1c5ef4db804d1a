"""COCO-Stuff 171: ``stuffthingmaps/{train2017,val2017}/*.png`` hold the 0-based COCO id (0..181,
255 unlabeled); id+1 is looked up in the 171 dataset ids, the 11 unused ids and 255 become 255.
Images without a single valid pixel get no label (as the official script)."""

from __future__ import annotations

import os

import numpy as np

from san.assets import read_dataset_ids

from .common import PrepareOptions, Task, checked_u8, first_dir, link_dir, lut, need_dir

IGNORE, NUM_CLASSES = 255, 171


def convert(src: str) -> np.ndarray | None:
    ids = read_dataset_ids("coco_stuff_171")  # 1-based COCO ids in contiguous order
    out = lut(256, 255, np.uint8, {i - 1: c for c, i in enumerate(ids)})[checked_u8(src)]
    return None if (out == 255).all() else out


def tasks(raw: str, root: str, options: PrepareOptions) -> dict[str, list[Task]]:
    maps = first_dir(
        raw,
        ("stuffthingmaps", "stuffthingmaps_trainval2017"),
        f"coco_stuff: no {raw}/stuffthingmaps/ (unzip stuffthingmaps_trainval2017.zip there)",
    )
    out: dict[str, list[Task]] = {}
    for split in ("train2017", "val2017"):
        if not os.path.isdir(os.path.join(maps, split)):
            continue
        images = need_dir(os.path.join(raw, split), f"coco_stuff {split} images")
        link_dir(images, os.path.join(root, "coco", split), options.copy)
        dst = os.path.join(root, "coco", "stuffthingmaps_detectron2", split)
        files = sorted(f for f in os.listdir(os.path.join(maps, split)) if f.endswith(".png"))
        out[split] = [
            Task(
                "coco_stuff",
                os.path.join(maps, split, f),
                os.path.join(dst, f),
                os.path.join(root, "coco", split, f[:-4] + ".jpg"),
            )
            for f in files
        ]
    return out
