"""Dataset catalog: official names and classes, $DETECTRON2_DATASETS, custom datasets, errors."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from san.assets import read_classes, read_dataset_ids
from san.data.catalog import (
    DatasetSpec,
    dataset_root,
    get_dataset,
    list_datasets,
    register_dataset,
    register_datasets_from_yaml,
    unregister_dataset,
)

OFFICIAL = {
    "coco_2017_train_stuff_sem_seg": (171, 255, "coco/train2017", "coco/stuffthingmaps_detectron2/train2017"),
    "coco_2017_test_stuff_sem_seg": (171, 255, "coco/val2017", "coco/stuffthingmaps_detectron2/val2017"),
    "ade20k_sem_seg_val": (
        150,
        255,
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation",
    ),
    "ade20k_full_sem_seg_val": (
        847,
        65535,
        "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation",
    ),
    "pcontext_sem_seg_val": (59, 255, "pcontext/val/image", "pcontext/val/label"),
    "pcontext_full_sem_seg_val": (459, 65535, "pcontext_full/val/image", "pcontext_full/val/label"),
    "voc_sem_seg_val": (20, 255, "VOC2012/JPEGImages", "VOC2012/annotations_detectron2/val"),
}


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for n in names:
        if n in list_datasets():
            unregister_dataset(n)


def _write(root, image_dir, gt_dir, names, gt_ext=".png", size=(6, 8)):
    os.makedirs(os.path.join(root, image_dir), exist_ok=True)
    os.makedirs(os.path.join(root, gt_dir), exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(os.path.join(root, image_dir, f"{n}.jpg"))
        Image.fromarray(np.zeros(size, np.uint8)).save(os.path.join(root, gt_dir, f"{n}{gt_ext}"))


def test_official_datasets_are_registered_with_their_layout():
    for name, (n, ignore, image_dir, gt_dir) in OFFICIAL.items():
        spec = get_dataset(name)
        assert (spec.num_classes, spec.ignore_label, spec.image_dir, spec.gt_dir) == (n, ignore, image_dir, gt_dir)
        assert spec.gt_ext == (".tif" if ignore == 65535 else ".png") and spec.image_ext == ".jpg"
    for split in ("train", "val"):
        for prefix in (
            "ade20k_sem_seg",
            "ade20k_full_sem_seg",
            "pcontext_sem_seg",
            "pcontext_full_sem_seg",
            "voc_sem_seg",
        ):
            assert f"{prefix}_{split}" in list_datasets()
    assert get_dataset("ade20k_sem_seg_train").gt_dir.endswith("annotations_detectron2/training")
    assert get_dataset("coco_2017_train_stuff_sem_seg").classes == read_classes("coco_stuff_171")
    assert get_dataset("coco_2017_train_stuff_sem_seg").dataset_ids == read_dataset_ids("coco_stuff_171")
    assert get_dataset("ade20k_full_sem_seg_val").dataset_ids == read_dataset_ids("ade20k_847")
    assert get_dataset("voc_sem_seg_val").classes[-1] == "tv" and get_dataset("voc_sem_seg_val").dataset_ids is None


def test_dataset_root_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert dataset_root() == "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert dataset_root() == str(tmp_path)
    spec = get_dataset("voc_sem_seg_val").resolve()
    assert spec.image_dir == os.path.join(str(tmp_path), "VOC2012", "JPEGImages")
    _write(tmp_path, "VOC2012/JPEGImages", "VOC2012/annotations_detectron2/val", ["a", "b"])
    samples = get_dataset("voc_sem_seg_val").list_samples()
    assert [os.path.basename(s["file_name"]) for s in samples] == ["a.jpg", "b.jpg"]
    assert samples[1]["sem_seg_file_name"] == os.path.join(str(tmp_path), "VOC2012/annotations_detectron2/val", "b.png")


def test_pairs_by_name_and_intersects_like_load_sem_seg(tmp_path, caplog):
    _write(tmp_path, "im", "gt", ["x1", "x2", "x3"])
    os.remove(tmp_path / "gt" / "x2.png")  # an image without label (VOC: JPEGImages holds every image)
    spec = DatasetSpec("t", "im", "gt", ["a"], 255)
    with caplog.at_level(logging.WARNING):
        samples = spec.list_samples(tmp_path)
    assert [os.path.basename(s["file_name"]) for s in samples] == ["x1.jpg", "x3.jpg"]
    assert "3 images" in caplog.text and "2 labels" in caplog.text


def test_missing_data_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOC2012/JPEGImages does not exist.*san prepare-data voc"):
        get_dataset("voc_sem_seg_val").list_samples(tmp_path)
    _write(tmp_path, "im", "gt", ["x1"], gt_ext=".tif")
    with pytest.raises(FileNotFoundError, match=r"no image in .*im has a label in .*gt"):
        DatasetSpec("t", "im", "gt", ["a"], 255).list_samples(tmp_path)
    _write(tmp_path, "im2", "gt2", ["x1", "x2"])
    os.rename(tmp_path / "gt2" / "x2.png", tmp_path / "gt2" / "x3.png")  # same count, different names
    with pytest.raises(FileNotFoundError, match=r"no label .*x2.png for image .*x2.jpg"):
        DatasetSpec("t", "im2", "gt2", ["a"], 255).list_samples(tmp_path)


def test_register_in_a_few_lines(cleanup, tmp_path):
    cleanup.append("my_set")
    _write(tmp_path, "images", "labels", ["p", "q"])
    spec = register_dataset(
        name="my_set",
        image_dir=str(tmp_path / "images"),
        gt_dir=str(tmp_path / "labels"),
        classes=["road", "car"],
        ignore_label=255,
    )
    assert get_dataset("my_set") is spec and "my_set" in list_datasets()
    assert len(spec.list_samples("/elsewhere")) == 2  # absolute dirs ignore the root
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_dataset(spec)
    register_dataset({**spec.__dict__, "classes": "voc_20"}, overwrite=True)
    assert get_dataset("my_set").num_classes == 20


def test_register_from_yaml(cleanup, tmp_path):
    cleanup.extend(["y_train", "y_val"])
    (tmp_path / "classes.txt").write_text("sky\nsea\n\n")
    (tmp_path / "d.yaml").write_text(
        "datasets:\n"
        "  - name: y_train\n    image_dir: y/img/train\n    gt_dir: y/lab/train\n    classes_file: classes.txt\n"
        "    ignore_label: 255\n"
        "  - name: y_val\n    image_dir: y/img/val\n    gt_dir: y/lab/val\n    classes: [sky, sea, sand]\n"
        "    ignore_label: 65535\n    gt_ext: tif\n"
    )
    assert register_datasets_from_yaml(tmp_path / "d.yaml") == ["y_train", "y_val"]
    assert get_dataset("y_train").classes == ["sky", "sea"]
    assert get_dataset("y_val").gt_ext == ".tif" and get_dataset("y_val").ignore_label == 65535
    assert get_dataset("y_train").image_dir == "y/img/train"  # not beside the YAML: under the dataset root
    (tmp_path / "y" / "img" / "train").mkdir(parents=True)
    register_datasets_from_yaml(tmp_path / "d.yaml", overwrite=True)
    assert get_dataset("y_train").image_dir == str(tmp_path / "y" / "img" / "train")  # beside the YAML: read there
    assert get_dataset("y_train").gt_dir == "y/lab/train"
    (tmp_path / "bad.yaml").write_text("datasets:\n  - name: z\n    image_dir: a\n    classes: [x]\n    color: red\n")
    with pytest.raises(ValueError, match="unknown dataset field.*color"):
        register_datasets_from_yaml(tmp_path / "bad.yaml")


def test_invalid_specs_and_unknown_names():
    with pytest.raises(KeyError, match="unknown dataset 'nope'.*ade20k_sem_seg_val"):
        get_dataset("nope")
    with pytest.raises(ValueError, match="collides with class id 1"):
        DatasetSpec("t", "a", "b", ["x", "y"], 1)
    with pytest.raises(ValueError, match="non-empty list"):
        DatasetSpec("t", "a", "b", [], 255)
    with pytest.raises(ValueError, match="missing gt_dir"):
        register_dataset(name="t", image_dir="a", classes=["x"], ignore_label=255)
    with pytest.raises(ValueError, match="2 dataset_ids for 1 classes"):
        DatasetSpec("t", "a", "b", ["x"], 255, dataset_ids=[1, 2])
