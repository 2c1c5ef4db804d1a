"""Test-time resizing as detectron2's test DatasetMapper: ResizeShortestEdge with PIL bilinear (antialiased
when downscaling) for uint8 images; labels stay at the original resolution, untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from san.data.catalog import get_dataset
from san.data.io import read_image, read_label
from san.data.loader import build_test_loader
from san.data.transforms import resize_image, shortest_edge_size

from .conftest import small_cfg

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: the resize against detectron2's: the same float32 interpolation, measured 0 under
# ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1 and 2 (AMD EPYC, 2026-12); 1e-6 relative
# allows one rounding.

SIZES = [(20, 100), (64, 1000), (40, 45)]  # (MIN_SIZE_TEST, MAX_SIZE_TEST): down, up, long side capped


def _dots(h: int, w: int) -> np.ndarray:
    """White 2x2 dots on black, every 4 pixels: a quarter of the area is white."""
    ys, xs = np.mgrid[:h, :w]
    dots = ((ys % 4 >= 1) & (ys % 4 <= 2) & (xs % 4 >= 1) & (xs % 4 <= 2)).astype(np.uint8) * 255
    return np.repeat(dots[:, :, None], 3, axis=2)


def test_uint8_downscaling_is_pils_antialiased_bilinear():
    image = _dots(64, 96)
    out = resize_image(image, 16, 24)
    with Image.fromarray(image) as pil:
        assert np.array_equal(out, np.asarray(pil.resize((24, 16), Image.BILINEAR)))
    assert out.dtype == np.uint8 and out.shape == (16, 24, 3)
    assert np.abs(out[2:-2, 2:-2].astype(int) - 64).max() <= 16  # antialiased: about the area's mean brightness
    plain = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (16, 24), mode="bilinear")
    assert plain.min() == 255  # a plain bilinear resize samples only the dots' centres: aliasing


def test_float_images_use_bilinear_interpolation_without_corner_alignment():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)[:, :, None].repeat(2, axis=2)
    out = resize_image(image, 6, 8)
    assert out.dtype == np.float32 and out.shape == (6, 8, 2)
    # align_corners=False: output pixel centres at (i + 0.5) / 2 - 0.5, clamped at the border
    assert out[0, :, 0].tolist() == pytest.approx([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
    assert resize_image(image[:, :, 0], 6, 8).shape == (6, 8)
    with pytest.raises(ValueError, match="positive size"):
        resize_image(image, 0, 8)


@pytest.mark.parametrize("min_size,max_size", SIZES)
def test_test_loader_resizes_images_with_pil_and_keeps_labels(tiny_dataset, min_size, max_size):
    cfg = small_cfg(tiny_dataset, "INPUT.MIN_SIZE_TEST", min_size, "INPUT.MAX_SIZE_TEST", max_size)
    records = get_dataset(tiny_dataset).list_samples()
    batches = list(build_test_loader(cfg, tiny_dataset))
    assert len(batches) == len(records)
    for (out,), record in zip(batches, records):
        original = read_image(record["file_name"])
        h, w = original.shape[:2]
        nh, nw = shortest_edge_size(h, w, min_size, max_size)
        with Image.fromarray(original) as pil:
            expected = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
        assert out["image"].dtype == torch.uint8
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected)
        assert (out["height"], out["width"]) == (h, w)
        assert np.array_equal(out["sem_seg"].numpy(), read_label(record["sem_seg_file_name"]))


@pytest.mark.detectron2
@pytest.mark.parametrize("min_size,max_size", SIZES)
def test_test_loader_images_equal_detectron2s_test_mapper(tiny_dataset, min_size, max_size):
    T = pytest.importorskip("detectron2.data.transforms")
    d2_utils = pytest.importorskip("detectron2.data.detection_utils")
    cfg = small_cfg(tiny_dataset, "INPUT.MIN_SIZE_TEST", min_size, "INPUT.MAX_SIZE_TEST", max_size)
    aug = T.ResizeShortestEdge([min_size, min_size], max_size, "choice")  # DatasetMapper(cfg, is_train=False)
    for (out,), record in zip(build_test_loader(cfg, tiny_dataset), get_dataset(tiny_dataset).list_samples()):
        image = d2_utils.read_image(record["file_name"], format="RGB")
        expected = aug.get_transform(image).apply_image(image)
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected), record["file_name"]


@pytest.mark.detectron2
def test_resize_image_equals_detectron2s_resize_transform():
    T = pytest.importorskip("detectron2.data.transforms")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    for h, w in [(12, 17), (19, 26), (80, 115), (37, 120)]:
        tfm = T.ResizeTransform(37, 53, h, w, Image.BILINEAR)
        assert np.array_equal(resize_image(image, h, w), tfm.apply_image(image)), (h, w)
        floats = image.astype(np.float32) / 7
        np.testing.assert_allclose(resize_image(floats, h, w), tfm.apply_image(floats), rtol=1e-6)
