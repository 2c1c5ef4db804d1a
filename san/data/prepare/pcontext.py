"""Pascal Context 59 and 459 from the per-image ``.mat`` files (``LabelMap``, 459 classes, 0 unlabeled).

- ``pcontext_59``: the 59 context ids map to 0..58 in id order, everything else (0 included) to 255.
- ``pcontext_459``: ``LabelMap - 1`` in uint16 (0 wraps to 65535), written as 16-bit TIFF.
"""

from __future__ import annotations

import json
import os

import numpy as np

from san.data.io import DataError

from .common import PrepareError, PrepareOptions, Task, lut, need_dir

# the 59 PASCAL-Context classes as ids of the 459-class LabelMap, ascending (= contiguous order);
# a table (fmt: skip below): one id per line would not read better
PC59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

IGNORE_59, NUM_59 = 255, 59
IGNORE_459, NUM_459 = 65535, 459


def _labelmap(path: str) -> np.ndarray:
    from scipy.io import loadmat  # SciPy is a training extra; only this preparation needs it

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for bad files
        raise DataError(f"{path}: cannot read the .mat file: {e}") from None
    if "LabelMap" not in mat:
        raise DataError(
            f"{path}: no 'LabelMap' in the .mat file (keys: {sorted(k for k in mat if not k.startswith('__'))})"
        )
    return np.asarray(mat["LabelMap"]).astype(np.int64)


def convert_59(src: str) -> np.ndarray:
    table = lut(65536, 255, np.uint8, {i: c for c, i in enumerate(PC59_IDS)})
    return table[np.clip(_labelmap(src), 0, 65535)]


def convert_459(src: str) -> np.ndarray:
    m = _labelmap(src)
    if m.min(initial=0) < 0 or m.max(initial=0) > 459:
        raise DataError(f"{src}: LabelMap values must be 0..459, found {m.min()}..{m.max()}")
    return m.astype(np.uint16) - np.uint16(1)  # uint16 wrap: 0 -> 65535


def _split(raw: str, split: str) -> list[str]:
    merged = os.path.join(raw, "trainval_merged.json")
    if os.path.isfile(merged):
        with open(merged, encoding="utf-8") as f:
            images = json.load(f).get("images", [])
        return sorted(os.path.splitext(im["file_name"])[0] for im in images if im.get("phase") == split)
    listing = os.path.join(raw, "ImageSets", "SegmentationContext", f"{split}.txt")
    if os.path.isfile(listing):
        with open(listing, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    raise PrepareError(f"pcontext: neither {merged} nor {listing} exists (the train/val split of PASCAL-Context)")


def tasks(kind: str, raw: str, root: str, options: PrepareOptions) -> dict[str, list[Task]]:
    """Tasks of ``pcontext_59`` or ``pcontext_459``."""
    anno = options.anno_dir or os.path.join(raw, "trainval")
    need_dir(anno, "pcontext .mat annotations (trainval.tar.gz; or pass --anno-dir)")
    jpegs = need_dir(os.path.join(raw, "JPEGImages"), "pcontext images (VOC2010)")
    base = os.path.join(root, "pcontext" if kind == "pcontext_59" else "pcontext_full")
    ext = ".png" if kind == "pcontext_59" else ".tif"
    out: dict[str, list[Task]] = {}
    for split in ("train", "val"):
        for sub in ("image", "label"):
            os.makedirs(os.path.join(base, split, sub), exist_ok=True)
        out[split] = [
            Task(
                kind,
                os.path.join(anno, f"{i}.mat"),
                os.path.join(base, split, "label", i + ext),
                os.path.join(jpegs, f"{i}.jpg"),
                os.path.join(base, split, "image", f"{i}.jpg"),
                "copy" if options.copy else "link",
            )
            for i in _split(raw, split)
        ]
    return out
