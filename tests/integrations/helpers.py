"""Helpers of the detectron2 integration tests (no detectron2 import here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import san

from ..conftest import tiny_cfg


def flat(node, prefix=""):
    """{"A.B": value} for every leaf of a config."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def tiny_overrides(tmp_path, num_classes=5) -> list:
    """The tiny test model (tests/conftest.tiny_cfg) as KEY VALUE overrides of the official defaults."""
    tiny, base = flat(tiny_cfg(tmp_path, num_classes)), flat(san.get_cfg())
    return [x for k, v in tiny.items() if v != base[k] for x in (k, v)]


def write_coco_stuff(root: Path, split: str, n: int, seed: int) -> None:
    """JPEG images under coco/<split> and uint8 PNG labels (ids 0..170, 255 ignore) under
    coco/stuffthingmaps_detectron2/<split>, named like COCO files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "coco" / split).mkdir(parents=True)
    (root / "coco" / "stuffthingmaps_detectron2" / split).mkdir(parents=True)
    for i in range(n):
        h, w = rng.integers(56, 90, size=2)
        label = np.full((h, w), rng.choice([0, 7, 40]), np.uint8)
        label[: h // 2, : w // 3] = 255
        label[h // 2 :, w // 2 :] = rng.choice([12, 150, 170])
        image = (rng.integers(0, 256, (h, w, 3)) // 2 + label[..., None] // 2).astype(np.uint8)
        stem = f"{100000 + seed * 100 + i:012d}"
        Image.fromarray(image).save(root / "coco" / split / f"{stem}.jpg", quality=90)
        Image.fromarray(label).save(root / "coco" / "stuffthingmaps_detectron2" / split / f"{stem}.png")


def load_results(path: Path) -> dict:
    """detectron2's saved ``sem_seg_evaluation.pth`` (NumPy float64 scalars), loaded with weights_only."""
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor
    with torch.serialization.safe_globals([scalar, np.dtype, type(np.dtype(np.float64))]):
        return torch.load(path, weights_only=True)
