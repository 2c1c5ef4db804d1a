"""Training augmentations of the official recipe (detectron2 / Mask2Former semantics), NumPy only.

Every augmentation is a callable ``aug(image, label, rng) -> (image, label)`` on an ``[H, W, 3]``
uint8 RGB image and an ``[H, W]`` integer label (or ``None``), drawing its randomness from the
``numpy.random.Generator`` it is given, so a loader can make every sample reproducible.

- :class:`ResizeShortestEdge`: short side from a list ("choice") or an interval ("range"), long
  side capped at ``max_size``, sizes rounded as detectron2 (``int(x + 0.5)``); image bilinear
  (PIL for uint8, antialiased when downscaling; :func:`resize_image`), label nearest (``torch`` "nearest" on
  float64, detectron2's path for labels).
- :class:`RandomCrop`: detectron2's crop types; with ``single_category_max_area < 1`` up to 10
  windows are tried until no single class (ignore excluded) covers more than that share. The
  ignore value is the training dataset's (the official mapper passes detectron2's
  ``SEM_SEG_HEAD.IGNORE_VALUE``, 255, also for 16-bit datasets; the same for 8-bit labels).
- :class:`ColorAugSSD`: brightness ±32, then contrast [0.5, 1.5] before or after saturation
  [0.5, 1.5] and hue ±18 (random order), each with p=0.5, on BGR values with OpenCV's 8-bit HSV
  conversions (ported to NumPy, checked against OpenCV 5.0 on all 2^24 colours), truncating to uint8 as the
  official transform does.
- :class:`RandomFlip`: horizontal (or vertical) flip with p=0.5.
- :func:`pad_to_divisible`: pad bottom/right to a multiple of ``INPUT.SIZE_DIVISIBILITY``: image
  with 128, label with the ignore value. The official mapper pads to exactly that size (the crop
  never exceeds it); a multiple is the same there and also handles larger inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "ColorAugSSD",
    "Compose",
    "RandomCrop",
    "RandomFlip",
    "ResizeShortestEdge",
    "bgr_to_hsv",
    "build_train_augmentations",
    "hsv_to_bgr",
    "pad_to_divisible",
    "resize_image",
    "resize_label",
    "shortest_edge_size",
]

Label = np.ndarray | None


def resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an ``[H, W, C]`` or ``[H, W]`` image to ``h x w``, as detectron2's ResizeTransform.

    uint8 images go through PIL's bilinear filter (which widens its support when downscaling, i.e.
    antialiases); other dtypes through ``torch`` bilinear interpolation with ``align_corners=False``.
    """
    if image.ndim not in (2, 3) or h <= 0 or w <= 0:
        raise ValueError(
            f"resize_image needs an [H, W, C] or [H, W] image and a positive size, got {list(image.shape)} -> {h}x{w}"
        )
    if image.shape[:2] == (h, w):
        return image
    if image.dtype == np.uint8:
        single = image.ndim == 3 and image.shape[2] == 1
        out = np.asarray(Image.fromarray(image[:, :, 0] if single else image).resize((w, h), Image.BILINEAR))
        return out[:, :, None] if single else out
    t = torch.from_numpy(np.ascontiguousarray(image))
    t = (t[:, :, None] if image.ndim == 2 else t).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    return out[:, :, 0] if image.ndim == 2 else out


def resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest resize of an integer label map, exactly as detectron2 resizes float64 labels."""
    if label.shape == (h, w):
        return label
    t = torch.from_numpy(label.astype(np.float64))[None, None]
    out = F.interpolate(t, size=(h, w), mode="nearest")[0, 0].numpy()
    return out.astype(label.dtype)


def shortest_edge_size(h: int, w: int, short: int, max_size: int = sys.maxsize) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` target size: the short side scaled to ``short``, the long
    side capped at ``max_size``, rounded as detectron2 (``int(x + 0.5)``; at least 1 pixel).

    The one implementation of this rule: training and test mappers, TTA and the predictor use it.
    """
    scale = short * 1.0 / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


class ResizeShortestEdge:
    """Resize so the short side is a sampled length, the long side at most ``max_size``."""

    def __init__(
        self, short_edge_length: int | Sequence[int], max_size: int = sys.maxsize, sample_style: str = "range"
    ) -> None:
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        lengths = (
            [int(short_edge_length)] * 2
            if isinstance(short_edge_length, (int, np.integer))
            else [int(x) for x in short_edge_length]
        )
        if not lengths or (sample_style == "range" and len(lengths) != 2):
            raise ValueError(f"'range' sampling needs [min, max] short-edge lengths, got {list(lengths)}")
        self.short_edge_length = lengths
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def sample_length(self, rng: np.random.Generator) -> int:
        if self.sample_style == "range":
            return int(rng.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        return int(self.short_edge_length[int(rng.integers(len(self.short_edge_length)))])

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        size = self.sample_length(rng)
        if size == 0:
            return image, label
        h, w = shortest_edge_size(*image.shape[:2], size, self.max_size)
        return resize_image(image, h, w), (None if label is None else resize_label(label, h, w))

    def __repr__(self) -> str:
        return f"ResizeShortestEdge({self.short_edge_length}, max_size={self.max_size}, {self.sample_style!r})"


class RandomCrop:
    """detectron2's RandomCrop / RandomCrop_CategoryAreaConstraint (``crop_size`` is (h, w))."""

    TYPES = ("relative_range", "relative", "absolute", "absolute_range")

    def __init__(
        self,
        crop_type: str,
        crop_size: Sequence[float],
        single_category_max_area: float = 1.0,
        ignore_value: int | None = None,
    ) -> None:
        if crop_type not in self.TYPES:
            raise ValueError(f"crop_type must be one of {self.TYPES}, got {crop_type!r}")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size must hold two values, got {list(crop_size)}")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)
        self.single_category_max_area = float(single_category_max_area)
        self.ignore_value = ignore_value

    def crop_hw(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        a, b = self.crop_size
        if self.crop_type == "relative":
            return int(h * a + 0.5), int(w * b + 0.5)
        if self.crop_type == "relative_range":
            ch, cw = np.asarray(self.crop_size, dtype=np.float32) + rng.random(2) * (1 - np.asarray(self.crop_size))
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(a), h), min(int(b), w)
        if a > b:
            raise ValueError(f"absolute_range crop needs min <= max, got {self.crop_size}")
        return (int(rng.integers(min(h, a), min(h, b) + 1)), int(rng.integers(min(w, a), min(w, b) + 1)))

    def window(self, label: Label, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(y0, x0, crop_h, crop_w)``; honours the category-area constraint when a label is given."""
        tries = 1 if self.single_category_max_area >= 1.0 or label is None else 10
        for _ in range(tries):
            ch, cw = self.crop_hw(h, w, rng)
            y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            if tries == 1:
                break
            values, counts = np.unique(label[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
            if self.ignore_value is not None:
                counts = counts[values != self.ignore_value]
            if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                break
        return y0, x0, ch, cw

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        y0, x0, ch, cw = self.window(label, *image.shape[:2], rng)
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        return image, (None if label is None else label[y0 : y0 + ch, x0 : x0 + cw])

    def __repr__(self) -> str:
        return (
            f"RandomCrop({self.crop_type!r}, {self.crop_size}, single_category_max_area="
            f"{self.single_category_max_area}, ignore_value={self.ignore_value})"
        )


# --------------------------------------------------------------------------------------------
# OpenCV's 8-bit BGR <-> HSV (H in 0..179), ported to NumPy
# --------------------------------------------------------------------------------------------
_HSV_SHIFT = 12
_ONE_TO_255 = np.arange(1, 256, dtype=np.float64)
_S_DIV = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / _ONE_TO_255)]).astype(np.int64)
_H_DIV = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6.0 * _ONE_TO_255))]).astype(np.int64)
# for each hue sector: which of (v, v(1-s), v(1-sf), v(1-s(1-f))) is blue, green, red
_SECTOR_TAB = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def bgr_to_hsv(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR ``[..., 3]`` -> uint8 HSV with OpenCV's fixed-point arithmetic (``COLOR_BGR2HSV``)."""
    b, g, r = (bgr[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    rnd = 1 << (_HSV_SHIFT - 1)
    s = (diff * _S_DIV[v] + rnd) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _H_DIV[diff] + rnd) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr(hsv: np.ndarray, lanes: int = 32) -> np.ndarray:
    """uint8 HSV ``[H, W, 3]`` (H 0..179) -> uint8 BGR as OpenCV 5's ``COLOR_HSV2BGR`` with ``lanes``-pixel SIMD.

    float32 sector arithmetic with ``1 - a*b`` rounded once (a fused multiply-add). OpenCV converts
    each row in SIMD blocks of ``lanes`` pixels that truncate to uint8, and the last ``W % lanes``
    pixels of a row with a scalar path that rounds. The block width is the CPU's: 32 with AVX2, 64
    with AVX-512, so OpenCV itself gives different pixels on different CPUs (by at most 1). san always
    computes the AVX2 layout (the default), so its jitter is the same on every machine; with the lanes
    of the machine it runs on, it equals that machine's OpenCV on every pixel.
    """
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.mod(h, np.float32(6.0))
    sector = np.floor(h).astype(np.int64)
    f = (h - sector).astype(np.float32)
    out_of_range = (sector < 0) | (sector > 5)
    sector, f = np.where(out_of_range, 0, sector), np.where(out_of_range, np.float32(0), f)
    one = np.float32(1.0)

    def one_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)

    tab = np.stack([v, v * (one - s), v * one_minus(s, f), v * one_minus(s, one - f)], axis=-1)
    bgr = np.take_along_axis(tab, _SECTOR_TAB[sector], axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    scaled = bgr * np.float32(255.0)
    width = hsv.shape[-2] if hsv.ndim >= 2 else 1
    tail = (np.arange(width) >= width // lanes * lanes)[:, None]  # [W, 1]: pixels of the scalar path
    return np.clip(np.where(tail, np.rint(scaled), np.floor(scaled)), 0, 255).astype(np.uint8)


class ColorAugSSD:
    """SSD colour jitter (detectron2's ColorAugSSDTransform) on an RGB uint8 image; labels untouched."""

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast = (contrast_low, contrast_high)
        self.saturation = (saturation_low, saturation_high)
        self.hue_delta = int(hue_delta)

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The jittered copy of ``rgb`` ``[H, W, 3]`` uint8."""
        img = rgb[:, :, ::-1]  # BGR, as the official transform works
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        if rng.integers(2):
            img = self._saturation_hue(self._contrast(img, rng), rng)
        else:
            img = self._contrast(self._saturation_hue(img, rng), rng)
        return np.ascontiguousarray(img[:, :, ::-1])

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._convert(img, alpha=rng.uniform(*self.contrast)) if rng.integers(2) else img

    def _saturation_hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = bgr_to_hsv(img)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation))
            img = hsv_to_bgr(hsv)
        if rng.integers(2):
            hsv = bgr_to_hsv(img)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            img = hsv_to_bgr(hsv)
        return img

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        return self.apply(image, rng), label

    def __repr__(self) -> str:
        return (
            f"ColorAugSSD(brightness ±{self.brightness_delta}, contrast {self.contrast}, "
            f"saturation {self.saturation}, hue ±{self.hue_delta})"
        )


class RandomFlip:
    """Flip image and label together with probability ``prob`` (horizontal by default)."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip flips either horizontally or vertically (exactly one)")
        self.prob = float(prob)
        self.axis = 1 if horizontal else 0

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        if rng.uniform() < self.prob:
            image = np.flip(image, axis=self.axis)
            label = None if label is None else np.flip(label, axis=self.axis)
        return image, label

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, {'horizontal' if self.axis == 1 else 'vertical'})"


class Compose:
    """Apply augmentations in order."""

    def __init__(self, augmentations: Sequence[Any]) -> None:
        self.augmentations = list(augmentations)

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        for aug in self.augmentations:
            image, label = aug(image, label, rng)
        return np.ascontiguousarray(image), (None if label is None else np.ascontiguousarray(label))

    def __repr__(self) -> str:
        return f"Compose({self.augmentations})"


def pad_to_divisible(
    image: torch.Tensor,
    label: torch.Tensor | None,
    size_divisibility: int,
    image_value: float = 128,
    label_value: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad ``[C, H, W]`` and ``[H, W]`` bottom/right up to multiples of ``size_divisibility`` (<= 0: no-op)."""
    if size_divisibility <= 0:
        return image, label
    h, w = image.shape[-2:]
    s = int(size_divisibility)
    pad = [0, -(-w // s) * s - w, 0, -(-h // s) * s - h]
    if pad[1] == 0 and pad[3] == 0:
        return image, label
    image = F.pad(image, pad, value=image_value).contiguous()
    if label is not None:
        label = F.pad(label, pad, value=label_value).contiguous()
    return image, label


def build_train_augmentations(cfg: Any, ignore_value: int) -> Compose:
    """The official training augmentations from a config (``INPUT.*``)."""
    augs: list[Any] = [
        ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            RandomCrop(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.get("SINGLE_CATEGORY_MAX_AREA", 1.0),
                ignore_value,
            )
        )
    if cfg.INPUT.get("COLOR_AUG_SSD", False):
        augs.append(ColorAugSSD())
    flip = str(cfg.INPUT.get("RANDOM_FLIP", "horizontal")).lower()
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}")
    if flip != "none":
        augs.append(RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    return Compose(augs)
