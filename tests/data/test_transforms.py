"""Augmentations: detectron2's sizes and crop rules, flip/crop consistency, padding, SSD colour jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from san.config import get_cfg, get_config_file
from san.data.transforms import (
    ColorAugSSD,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    bgr_to_hsv,
    build_train_augmentations,
    hsv_to_bgr,
    pad_to_divisible,
    resize_label,
    shortest_edge_size,
)

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix


def _coord_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and label whose values encode the pixel position, to follow geometric transforms."""
    ys, xs = np.mgrid[:h, :w]
    image = np.stack([ys % 256, xs % 256, (ys + xs) % 256], axis=-1).astype(np.uint8)
    return image, (ys * w + xs).astype(np.int64)


def test_resize_shortest_edge_sizes_as_detectron2():
    assert shortest_edge_size(480, 640, 320) == (320, 427)  # 426.67 rounds up
    assert shortest_edge_size(641, 480, 320) == (427, 320)  # 427.33 rounds down
    assert shortest_edge_size(100, 1000, 500, 2000) == (200, 2000)  # long side capped
    assert shortest_edge_size(512, 683, 640, 2560) == (640, 854)  # the ADE example of the official pipeline
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)
    assert shortest_edge_size(100, 5000, 640, 2560) == (51, 2560)  # long side capped
    assert shortest_edge_size(640, 640, 640, 2560) == (640, 640)
    assert shortest_edge_size(1, 10000, 640, 2560) == (1, 2560)  # never an empty side
    rng = np.random.default_rng(0)
    choice = ResizeShortestEdge([320, 640, 960], 2560, "choice")
    assert {choice.sample_length(rng) for _ in range(200)} == {320, 640, 960}
    rng_range = ResizeShortestEdge([10, 13], 100, "range")
    assert {rng_range.sample_length(rng) for _ in range(200)} == {10, 11, 12, 13}
    with pytest.raises(ValueError, match="range"):
        ResizeShortestEdge([1, 2, 3], 10, "range")


def test_resize_keeps_label_values_and_dtype():
    label = np.random.default_rng(1).choice(np.array([0, 7, 846, 65535], np.uint16), size=(37, 23))
    image = np.zeros((37, 23, 3), np.uint8)
    out_img, out_lab = ResizeShortestEdge(50, 1000, "choice")(image, label, np.random.default_rng(0))
    assert out_img.shape == (80, 50, 3) and out_lab.shape == (80, 50) and out_lab.dtype == np.uint16
    assert set(np.unique(out_lab)) <= {0, 7, 846, 65535}
    # nearest sampling as torch's "nearest" on float64 (detectron2's path for labels)
    src = np.floor(np.arange(80) * np.float32(37 / 80)).astype(int)
    assert np.array_equal(resize_label(label, 80, 23)[:, 0], label[src, 0])


@pytest.mark.parametrize("seed", range(5))
def test_crop_and_flip_move_image_and_label_together(seed):
    rng = np.random.default_rng(seed)
    image, label = _coord_image(50, 70)
    img, lab = RandomCrop("absolute", (32, 40))(image, label, rng)
    assert img.shape == (32, 40, 3) and lab.shape == (32, 40)
    y0, x0 = divmod(int(lab[0, 0]), 70)
    assert np.array_equal(img, image[y0 : y0 + 32, x0 : x0 + 40]) and np.array_equal(
        lab, label[y0 : y0 + 32, x0 : x0 + 40]
    )
    small, small_lab = RandomCrop("absolute", (640, 640))(image, label, rng)  # larger than the image: no crop
    assert np.array_equal(small, image) and np.array_equal(small_lab, label)
    flips = [RandomFlip()(img, lab, rng) for _ in range(20)]
    assert any(np.array_equal(f, img[:, ::-1]) for f, _ in flips) and any(np.array_equal(f, img) for f, _ in flips)
    for f_img, f_lab in flips:
        flipped = np.array_equal(f_img, img[:, ::-1])
        assert np.array_equal(f_lab, lab[:, ::-1] if flipped else lab)


def _ok(window: np.ndarray, max_area: float, ignore: int) -> bool:
    values, counts = np.unique(window, return_counts=True)
    counts = counts[values != ignore]
    return len(counts) > 1 and counts.max() < counts.sum() * max_area


def test_category_area_constraint_is_honoured():
    label = np.zeros((64, 64), np.int64)
    label[:32, :32] = 1
    label[56:] = 255
    constrained = RandomCrop("absolute", (32, 32), 0.75, 255)
    plain = RandomCrop("absolute", (32, 32), 1.0, 255)
    hits = {"c": 0, "p": 0}
    for seed in range(100):
        for key, crop in (("c", constrained), ("p", plain)):
            y0, x0, ch, cw = crop.window(label, 64, 64, np.random.default_rng(seed))
            assert (ch, cw) == (32, 32)
            hits[key] += _ok(label[y0 : y0 + ch, x0 : x0 + cw], 0.75, 255)
    assert hits["c"] >= 95 and hits["p"] <= 40, hits  # 10 tries vs one window


class _CountingRng:
    """A numpy Generator that counts the windows a crop draws (two ``integers`` calls per window)."""

    def __init__(self, seed: int) -> None:
        self.rng, self.calls = np.random.default_rng(seed), 0

    def integers(self, *args, **kwargs):
        self.calls += 1
        return self.rng.integers(*args, **kwargs)

    def random(self, *args):
        return self.rng.random(*args)


@pytest.mark.parametrize(
    ("case", "max_area", "windows"),
    [
        ("one class everywhere", 0.75, 10),  # every window fails: 10 tries, then the last one is kept
        ("one class everywhere", 1.0, 1),  # no constraint: one window
        ("two classes in every window", 0.75, 1),
        ("70% ignore, two classes of 15%", 0.6, 1),  # the ignore value does not count
    ],
)
def test_category_area_rule_counted_by_its_window_draws(case, max_area, windows):
    label = np.zeros((40, 40), np.int64)
    size = (20, 20)
    if case == "two classes in every window":
        label[:, ::2] = 1  # stripes: every 20 x 20 window holds half of each
    elif case.startswith("70%"):  # the whole image as the window: 50% of the non-ignore pixels per class
        label[:, 12:] = 255
        label[:, 6:12] = 1
        size = (40, 40)
    crop = RandomCrop("absolute", size, max_area, 255)
    rng = _CountingRng(0)
    crop.window(label, 40, 40, rng)
    assert rng.calls == 2 * windows, case


def test_padding_values_and_sizes():
    image = torch.randint(0, 256, (3, 30, 45), dtype=torch.uint8)
    label = torch.randint(0, 5, (30, 45))
    img, lab = pad_to_divisible(image, label, 32, 128, 65535)
    assert img.shape == (3, 32, 64) and lab.shape == (32, 64)
    assert torch.equal(img[:, :30, :45], image) and torch.equal(lab[:30, :45], label)
    assert (img[:, 30:] == 128).all() and (img[:, :, 45:] == 128).all()
    assert (lab[30:] == 65535).all() and (lab[:, 45:] == 65535).all()
    same = pad_to_divisible(image, label, -1)
    assert same[0] is image and same[1] is label


# Reference values computed with OpenCV 5.0 (cv2.cvtColor), the conversions the official jitter uses.
_BGR = [
    [0, 0, 0],
    [255, 255, 255],
    [10, 200, 30],
    [13, 71, 98],
    [146, 104, 33],
    [11, 0, 12],
    [38, 255, 48],
    [167, 192, 60],
    [72, 111, 67],
    [249, 45, 229],
    [204, 216, 29],
    [100, 160, 126],
]
_HSV = [
    [0, 0, 0],
    [0, 0, 255],
    [57, 242, 200],
    [20, 221, 98],
    [101, 197, 146],
    [153, 255, 12],
    [59, 217, 255],
    [84, 175, 192],
    [63, 101, 111],
    [147, 209, 249],
    [88, 221, 216],
    [47, 96, 160],
]
_HSV2 = [
    [170, 173, 169],
    [15, 245, 142],
    [51, 69, 92],
    [45, 47, 16],
    [95, 173, 31],
    [42, 87, 58],
    [139, 229, 226],
    [43, 78, 4],
    [19, 181, 197],
    [0, 9, 128],
    [85, 111, 238],
    [52, 135, 83],
]
_BACK = [
    [93, 54, 169],
    [6, 74, 142],
    [67, 92, 75],
    [13, 16, 15],
    [31, 27, 10],
    [38, 58, 50],
    [226, 23, 152],
    [3, 4, 3],
    [57, 146, 197],
    [123, 123, 128],
    [221, 238, 134],
    [39, 83, 51],
]
# the same 12 HSV values as the first pixels of a 32-pixel row: OpenCV's block path, which truncates
_BACK_BLOCK = [
    [92, 54, 169],
    [5, 73, 142],
    [67, 92, 74],
    [13, 16, 14],
    [31, 27, 9],
    [38, 58, 50],
    [226, 23, 151],
    [2, 4, 3],
    [57, 145, 197],
    [123, 123, 128],
    [220, 238, 134],
    [39, 83, 50],
]


def test_hsv_conversions_match_opencv():
    assert bgr_to_hsv(np.array([_BGR], np.uint8)).tolist() == [_HSV]
    assert hsv_to_bgr(np.array([_HSV2], np.uint8)).tolist() == [_BACK]  # a 12-pixel row: OpenCV's scalar path
    row = np.array([(_HSV2 * 3)[:32]], np.uint8)
    assert hsv_to_bgr(row)[0, :12].tolist() == _BACK_BLOCK


class _Script:
    """A stand-in generator returning scripted draws, to pin each branch of the jitter."""

    def __init__(self, ints, floats):
        self.ints, self.floats = list(ints), list(floats)

    def integers(self, *a, **k):
        return self.ints.pop(0)

    def uniform(self, *a, **k):
        return self.floats.pop(0)


def test_color_aug_ssd_branches():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    jitter = ColorAugSSD()
    bright = jitter.apply(image, _Script([1, 1, 0, 0, 0], [10.7]))  # brightness only (+10.7, truncated)
    assert np.array_equal(bright, np.clip(image.astype(np.float32) + 10.7, 0, 255).astype(np.uint8))
    contrast = jitter.apply(image, _Script([0, 0, 0, 0, 1], [0.5]))  # saturation/hue skipped, then contrast x0.5
    assert np.array_equal(contrast, (image.astype(np.float32) * 0.5).astype(np.uint8))
    gray = np.repeat(rng.integers(0, 256, (6, 7, 1)), 3, axis=2).astype(np.uint8)
    hue = jitter.apply(gray, _Script([0, 1, 0, 0, 1, 9], []))  # a hue shift of 9 leaves grey unchanged
    assert np.array_equal(hue, gray)
    none = jitter.apply(image, _Script([0, 0, 0, 0, 0], []))
    assert np.array_equal(none, image)
    out, lab = jitter(image, np.ones((6, 7), np.int64), np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == image.shape and (lab == 1).all()


def test_official_config_builds_the_official_pipeline():
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("san_clip_vit_res4_coco"))
    augs = build_train_augmentations(cfg, 255).augmentations
    assert [type(a).__name__ for a in augs] == ["ResizeShortestEdge", "RandomCrop", "ColorAugSSD", "RandomFlip"]
    assert augs[0].short_edge_length == list(range(320, 961, 64)) and augs[0].max_size == 2560
    assert augs[1].crop_size == (640, 640) and augs[1].crop_type == "absolute" and augs[1].ignore_value == 255
