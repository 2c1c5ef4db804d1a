"""A tiny registered dataset in the real on-disk format (JPEG images, PNG or 16-bit TIFF labels)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import san
from san.data.catalog import list_datasets, register_dataset, unregister_dataset

_UID = itertools.count()


def write_dataset(root: Path, n: int = 6, size: tuple[int, int] = (40, 50), ignore: int = 255, seed: int = 0) -> None:
    """``root/img/*.jpg`` and ``root/gt/*.png|tif``: 3 classes (blocks) plus ignore pixels."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / "img" / f"im{i:02d}.jpg")
        label = np.zeros((h, w), np.uint16 if ignore > 255 else np.uint8)
        label[:, w // 3 :] = 1
        label[h // 2 :, 2 * w // 3 :] = 2 if i % 3 else 0  # class 2 missing from every third image
        label[rng.random((h, w)) < 0.1] = ignore
        Image.fromarray(label).save(root / "gt" / f"im{i:02d}{'.tif' if ignore > 255 else '.png'}")


@pytest.fixture
def tiny_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Registers a 6-image, 3-class dataset under a temporary ``$DETECTRON2_DATASETS``; yields its name."""
    root = tmp_path / "datasets"
    write_dataset(root / "tiny")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    name = f"san_test_tiny_{next(_UID)}"
    register_dataset(name=name, image_dir="tiny/img", gt_dir="tiny/gt", classes=["a", "b", "c"], ignore_label=255)
    yield name
    if name in list_datasets():
        unregister_dataset(name)


def small_cfg(dataset: str, *overrides: object) -> san.CfgNode:
    """The official recipe's data keys, scaled down: short side 24..40, 32x32 crops padded to 32."""
    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            (dataset,),
            "SOLVER.IMS_PER_BATCH",
            4,
            "INPUT.MIN_SIZE_TRAIN",
            (24, 32, 40),
            "INPUT.MAX_SIZE_TRAIN",
            160,
            "INPUT.CROP.SIZE",
            (32, 32),
            "INPUT.SIZE_DIVISIBILITY",
            32,
            "INPUT.MIN_SIZE_TEST",
            20,
            "INPUT.MAX_SIZE_TEST",
            100,
            "DATALOADER.NUM_WORKERS",
            0,
            *overrides,
        ]
    )
    return cfg
