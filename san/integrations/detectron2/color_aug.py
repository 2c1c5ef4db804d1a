"""SSD colour jitter (``INPUT.COLOR_AUG_SSD``) as a detectron2 transform, without OpenCV.

The official mapper uses ``detectron2.projects.point_rend.ColorAugSSDTransform``, which needs
OpenCV for its HSV round trips. :class:`ColorAugSSD` draws the same random numbers in the same
order (Python's ``random``) and ports OpenCV's 8-bit BGR<->HSV conversions to NumPy: the
fixed-point forward conversion, and the vectorised backward one (float32, fused multiply-add,
truncation; H in 0..179). Both agree bit for bit with OpenCV 5.0 on all 2^24 colours, so a seeded
run gives the official pixels (OpenCV converts the last few pixels of an image whose pixel count is
not a multiple of its SIMD block with a rounding scalar path; those may differ by one).
"""

from __future__ import annotations

import random

import numpy as np
from detectron2.data import transforms as T

__all__ = ["ColorAugSSD", "bgr_to_hsv", "build_color_aug_ssd", "hsv_to_bgr"]

_SHIFT = 12
_I = np.arange(1, 256, dtype=np.float64)
_SDIV = np.concatenate([[0], np.rint((255 << _SHIFT) / _I)]).astype(np.int64)
_HDIV = np.concatenate([[0], np.rint((180 << _SHIFT) / (6.0 * _I))]).astype(np.int64)
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])  # tab index of b, g, r


def bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV's ``COLOR_BGR2HSV`` for uint8 ``[H, W, 3]`` (H in 0..179, S and V in 0..255)."""
    b, g, r = (img[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    half = 1 << (_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's ``COLOR_HSV2BGR`` for uint8 ``[H, W, 3]`` (float32 arithmetic, rounded)."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.mod(h, np.float32(6.0))
    sector = np.floor(h).astype(np.int64)
    h = h - sector.astype(np.float32)
    bad = (sector < 0) | (sector >= 6)
    sector = np.where(bad, 0, sector)
    h = np.where(bad, np.float32(0), h)
    one = np.float32(1.0)

    def one_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # 1 - a*b rounded once (OpenCV's fused SIMD)
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)

    tab = np.stack([v, v * (one - s), v * one_minus(s, h), v * one_minus(s, one - h)], axis=-1)
    idx = _SECTORS[sector]  # [H, W, 3] indices into tab for b, g, r
    bgr = np.take_along_axis(tab, idx, axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    return np.clip(np.floor(bgr * np.float32(255.0)), 0, 255).astype(np.uint8)


class ColorAugSSD(T.Transform):
    """Random brightness, then contrast/saturation/hue in one of two orders, each with p=0.5."""

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        if img_format not in ("BGR", "RGB"):
            raise ValueError(f"ColorAugSSD supports RGB or BGR images, got {img_format!r}")
        self.is_rgb = img_format == "RGB"
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range = (contrast_low, contrast_high)
        self.saturation_range = (saturation_low, saturation_high)

    def __repr__(self) -> str:
        return (
            f"ColorAugSSD(rgb={self.is_rgb}, brightness_delta={self.brightness_delta}, "
            f"contrast={self.contrast_range}, saturation={self.saturation_range}, hue_delta={self.hue_delta})"
        )

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_image(self, img: np.ndarray, interp: object = None) -> np.ndarray:
        if self.is_rgb:
            img = img[:, :, [2, 1, 0]]
        img = self._brightness(img)
        if random.randrange(2):
            img = self._hue(self._saturation(self._contrast(img)))
        else:
            img = self._contrast(self._hue(self._saturation(img)))
        if self.is_rgb:
            img = img[:, :, [2, 1, 0]]
        return img

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _brightness(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            return self._convert(img, beta=random.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            return self._convert(img, alpha=random.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            hsv = bgr_to_hsv(img)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=random.uniform(*self.saturation_range))
            return hsv_to_bgr(hsv)
        return img

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            hsv = bgr_to_hsv(img)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + random.randint(-self.hue_delta, self.hue_delta)) % 180
            return hsv_to_bgr(hsv)
        return img


def build_color_aug_ssd(img_format: str) -> T.Transform:
    """The official SSD colour jitter for images in ``img_format`` ("RGB" or "BGR")."""
    return ColorAugSSD(img_format)
