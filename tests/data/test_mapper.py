"""Mapper contract: shapes and dtypes, per-class masks, padding, test-time resizing, size errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from san.data.catalog import get_dataset, register_dataset, unregister_dataset
from san.data.io import DataError, read_image, read_label
from san.data.mapper import SemanticTestMapper, SemanticTrainMapper

from .conftest import small_cfg, write_dataset


def _check_instances(out: dict, ignore: int) -> None:
    sem, inst = out["sem_seg"], out["instances"]
    labels, masks = inst["labels"], inst["masks"]
    assert labels.dtype == torch.int64 and masks.dtype == torch.bool and masks.shape == (len(labels), *sem.shape)
    present = sorted(set(torch.unique(sem).tolist()) - {ignore})
    assert labels.tolist() == present  # one mask per class present, ignore excluded
    assert torch.equal(masks.sum(0), (sem != ignore).long())  # disjoint, covering exactly the valid pixels
    for k, c in enumerate(labels.tolist()):
        assert torch.equal(masks[k], sem == c)


@pytest.mark.parametrize("seed", range(4))
def test_train_mapper_output_contract(tiny_dataset, seed):
    mapper = SemanticTrainMapper(small_cfg(tiny_dataset))
    record = get_dataset(tiny_dataset).list_samples()[seed]
    out = mapper(dict(record), rng=np.random.default_rng(seed))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 32, 32)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (32, 32)
    assert (out["height"], out["width"]) == (32, 32) and out["vocabulary"] == ["a", "b", "c"]
    assert out["file_name"] == record["file_name"] and "sem_seg_file_name" not in out
    _check_instances(out, 255)
    again = mapper(dict(record), rng=np.random.default_rng(seed))
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["sem_seg"], out["sem_seg"])


def test_train_mapper_pads_image_with_128_and_label_with_ignore(tiny_dataset):
    cfg = small_cfg(
        tiny_dataset,
        "INPUT.MIN_SIZE_TRAIN",
        (20,),
        "INPUT.CROP.ENABLED",
        False,
        "INPUT.COLOR_AUG_SSD",
        False,
        "INPUT.RANDOM_FLIP",
        "none",
    )
    record = get_dataset(tiny_dataset).list_samples()[0]
    out = SemanticTrainMapper(cfg)(dict(record), rng=np.random.default_rng(0))
    assert out["image"].shape == (3, 32, 32)  # 20 x 25 padded to multiples of 32
    assert (out["image"][:, 20:] == 128).all() and (out["image"][:, :, 25:] == 128).all()
    assert (out["sem_seg"][20:] == 255).all() and (out["sem_seg"][:, 25:] == 255).all()
    _check_instances(out, 255)


def test_train_mapper_without_augmentation_keeps_pixels(tiny_dataset):
    cfg = small_cfg(
        tiny_dataset,
        "INPUT.MIN_SIZE_TRAIN",
        (40,),
        "INPUT.CROP.ENABLED",
        False,
        "INPUT.COLOR_AUG_SSD",
        False,
        "INPUT.RANDOM_FLIP",
        "none",
        "INPUT.SIZE_DIVISIBILITY",
        -1,
    )
    record = get_dataset(tiny_dataset).list_samples()[1]
    out = SemanticTrainMapper(cfg)(dict(record))
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), read_image(record["file_name"]))
    assert np.array_equal(out["sem_seg"].numpy(), read_label(record["sem_seg_file_name"]))


def test_sixteen_bit_dataset_ignores_65535(tmp_path):
    write_dataset(tmp_path, n=2, ignore=65535)
    register_dataset(
        name="san_test_u16",
        image_dir=str(tmp_path / "img"),
        gt_dir=str(tmp_path / "gt"),
        classes=["a", "b", "c"],
        ignore_label=65535,
        gt_ext=".tif",
    )
    try:
        cfg = small_cfg("san_test_u16", "INPUT.MIN_SIZE_TRAIN", (24,), "INPUT.SIZE_DIVISIBILITY", 48)
        record = get_dataset("san_test_u16").list_samples()[0]
        out = SemanticTrainMapper(cfg)(record, rng=np.random.default_rng(2))
        cfg.INPUT.SIZE_DIVISIBILITY = -1
        bare = SemanticTrainMapper(cfg)(record, rng=np.random.default_rng(2))  # the same augmentation, unpadded
        h, w = bare["sem_seg"].shape
        assert out["sem_seg"].shape == (48, 48) and (h, w) != (48, 48)
        assert torch.equal(out["sem_seg"][:h, :w], bare["sem_seg"])
        pad = torch.ones(48, 48, dtype=torch.bool)
        pad[:h, :w] = False
        assert (out["sem_seg"][pad] == 65535).all()  # 16-bit labels are padded with their own ignore value
        assert (out["image"][:, pad] == 128).all()
        _check_instances(out, 65535)
        assert out["instances"]["labels"].max() < 3  # no instance for the ignore value or the padding
    finally:
        unregister_dataset("san_test_u16")


def test_test_mapper_resizes_the_image_only(tiny_dataset):
    record = get_dataset(tiny_dataset).list_samples()[2]
    out = SemanticTestMapper(small_cfg(tiny_dataset), tiny_dataset)(dict(record))
    assert out["image"].shape == (3, 20, 25) and out["image"].dtype == torch.uint8  # short side 20
    assert (out["height"], out["width"]) == (40, 50)
    assert np.array_equal(out["sem_seg"].numpy(), read_label(record["sem_seg_file_name"]))
    assert out["vocabulary"] == ["a", "b", "c"] and out["dataset_name"] == tiny_dataset
    assert out["file_name"] == record["file_name"]


def test_size_mismatch_names_both_files(tiny_dataset, tmp_path):
    record = dict(get_dataset(tiny_dataset).list_samples()[0])
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(tmp_path / "small.png")
    record["sem_seg_file_name"] = str(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"im00.jpg is 50x40 but its label .*small.png is 9x7"):
        SemanticTrainMapper(small_cfg(tiny_dataset))(record)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        SemanticTrainMapper(small_cfg(tiny_dataset, "INPUT.FORMAT", "BGR"))
