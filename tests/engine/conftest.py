"""Engine test fixtures: one thread for tiny models, the toy dataset under a temporary $DETECTRON2_DATASETS."""

from __future__ import annotations

import os

import pytest

from san.data import register_dataset, unregister_dataset

from .toy import CLASSES, write_toy_split


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Runs compared for equality (resumed, accumulated, distributed) on one thread each (see one_thread)."""


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """6 training and 2 validation images, registered as toy_train / toy_val; yields the datasets root."""
    root = str(tmp_path_factory.mktemp("datasets"))
    write_toy_split(root, "train", 6, seed=0)
    write_toy_split(root, "val", 2, seed=1)
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = root
    for split in ("train", "val"):
        register_dataset(
            name=f"toy_{split}",
            image_dir=f"toy/images/{split}",
            gt_dir=f"toy/labels/{split}",
            classes=CLASSES,
            ignore_label=255,
            overwrite=True,
        )
    yield root
    for split in ("train", "val"):
        unregister_dataset(f"toy_{split}")
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old
