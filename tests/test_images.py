"""Image inputs -> HxWx3 uint8 RGB: conversions and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from san.images import ImageError, read_image, to_rgb_array


def test_conversions() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb_array(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_array(np.dstack([rgb, gray])), rgb)  # alpha dropped
    np.testing.assert_array_equal(to_rgb_array(rgb.astype(np.uint16) * 257), rgb)  # 16-bit scaled
    np.testing.assert_array_equal(to_rgb_array(rgb / 255.0), rgb)  # float 0..1
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(rgb).permute(2, 0, 1).double()), rgb)  # 0..255
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(gray)[None]), to_rgb_array(gray))
    np.testing.assert_array_equal(
        to_rgb_array(Image.fromarray(rgb).convert("P")), np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
    )
    assert to_rgb_array(np.ones((3, 4), dtype=bool)).max() == 255


def test_errors(tmp_path) -> None:
    with pytest.raises(ImageError, match="unsupported image type list"):
        to_rgb_array([[1, 2]])
    with pytest.raises(ImageError, match=r"channels last\), got shape \[5, 7, 2\]"):
        to_rgb_array(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        to_rgb_array(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageError, match="empty"):
        to_rgb_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    big = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(big)
    with pytest.raises(ImageError, match=r"200x100 = 0.0 megapixels, above the limit"):
        read_image(big, max_pixels=19_999)
    assert read_image(big, max_pixels=20_000).shape == (100, 200, 3)
