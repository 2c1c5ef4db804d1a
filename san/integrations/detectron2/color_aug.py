"""SSD colour jitter (``INPUT.COLOR_AUG_SSD``) as a detectron2 transform, without OpenCV.

The official mapper uses ``detectron2.projects.point_rend.ColorAugSSDTransform``, which needs
OpenCV for its HSV round trips and draws its random numbers from Python's ``random``. This is
san's own jitter (:class:`san.data.transforms.ColorAugSSD`, whose NumPy ports of OpenCV's 8-bit
HSV conversions agree with OpenCV on every pixel) fed from Python's ``random`` in the official
order, so a seeded detectron2 run gives the official pixels.
"""

from __future__ import annotations

import random

import numpy as np
from detectron2.data import transforms as T

from san.data.transforms import ColorAugSSD as _ColorJitter
from san.data.transforms import bgr_to_hsv, hsv_to_bgr

__all__ = ["ColorAugSSD", "bgr_to_hsv", "build_color_aug_ssd", "hsv_to_bgr"]


class _PythonRandom:
    """The two draws :class:`san.data.transforms.ColorAugSSD` makes, taken from Python's ``random``
    as the official transform takes them (``randrange``, ``uniform``, ``randint``)."""

    def integers(self, low: int, high: int | None = None) -> int:
        if high is None:
            return random.randrange(low)
        return random.randint(low, high - 1)

    def uniform(self, low: float, high: float) -> float:
        return random.uniform(low, high)


class ColorAugSSD(T.Transform):
    """Random brightness, then contrast/saturation/hue in one of two orders, each with p=0.5."""

    def __init__(self, img_format: str, **jitter: float) -> None:
        """``jitter``: the ranges of :class:`san.data.transforms.ColorAugSSD` (official defaults)."""
        super().__init__()
        if img_format not in ("BGR", "RGB"):
            raise ValueError(f"ColorAugSSD supports RGB or BGR images, got {img_format!r}")
        self.is_rgb = img_format == "RGB"
        self.jitter = _ColorJitter(**jitter)

    def __repr__(self) -> str:
        return f"ColorAugSSD(rgb={self.is_rgb}, {self.jitter!r})"

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_image(self, img: np.ndarray, interp: object = None) -> np.ndarray:
        rgb = img if self.is_rgb else img[:, :, ::-1]
        out = self.jitter.apply(rgb, _PythonRandom())
        return out if self.is_rgb else np.ascontiguousarray(out[:, :, ::-1])


def build_color_aug_ssd(img_format: str) -> T.Transform:
    """The official SSD colour jitter for images in ``img_format`` ("RGB" or "BGR")."""
    return ColorAugSSD(img_format)
