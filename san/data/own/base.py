"""What every format reader gives: the classes, the ignore value and the samples (image + label source).

A label source turns one annotation into a label map ``[H, W]`` int64 of class ids (``0..N-1``) and
the dataset's ignore value; it is read twice (once to check, once to write), so it holds only file
names and shapes, never pixels.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import DataError, read_label
from .shapes import polygon_mask

__all__ = [
    "ColorLabel",
    "FormatError",
    "LabelFile",
    "OwnDataset",
    "PanopticLabel",
    "Sample",
    "ShapeLabel",
    "ArrayLabel",
    "ignore_for",
    "read_class_lines",
]


class FormatError(DataError):
    """A dataset file breaks its format; the message names the file and says what to do."""


def ignore_for(num_classes: int) -> int:
    """The ignore value of a dataset of ``num_classes`` classes: 255 when ids fit 8-bit labels, else 65535."""
    return 255 if num_classes < 255 else 65535


def read_class_lines(path: str) -> list[str]:
    """Class names, one per line (ids = line order). Trailing blank lines are allowed; a blank line
    between names would shift every later id, so it is refused."""
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.rstrip("\r\n").strip() for line in f]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, name in enumerate(lines) if not name]
    if blank:
        raise FormatError(
            f"{path}: line {blank[0]} is empty; class ids are line numbers, so every line must name a class "
            "(delete the empty line or name the class)"
        )
    if not lines:
        raise FormatError(f"{path}: no class names (write one name per line; the line order gives the ids)")
    return lines


@dataclass
class Sample:
    """One training image: ``key`` (unique, the file's path under the dataset without extension), the
    image file (or ``load_image`` for images held in a dataset table) and its label source."""

    key: str
    image: str | None
    label: Any
    load_image: Callable[[], Any] | None = None

    def read_image(self) -> np.ndarray:
        """The image as ``[H, W, 3]`` uint8 RGB (a file, or a table cell)."""
        from ..io import read_image

        if self.image is not None:
            return read_image(self.image)
        from PIL import Image, UnidentifiedImageError

        from ..images import to_rgb_array

        value = self.load_image()
        try:
            img = Image.open(value) if not hasattr(value, "mode") else value
            return to_rgb_array(img)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise FormatError(f"{self.key}: cannot decode the image: {e}") from None


@dataclass
class OwnDataset:
    """A dataset read from one of the supported formats (:mod:`san.data.own`)."""

    path: str
    format: str
    classes: list[str]
    ignore_label: int
    samples: list[Sample]
    splits: dict[str, list[str]] | None = None  # split -> keys, when the format has its own splits
    notes: list[str] = field(default_factory=list)  # survivable findings of the reader (said as warnings)
    unlabelled_images: int = 0  # images the reader found without any annotation file

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, keys: list[str]) -> OwnDataset:
        """The same dataset restricted to ``keys`` (in that order)."""
        by_key = {s.key: s for s in self.samples}
        return OwnDataset(
            self.path, self.format, self.classes, self.ignore_label, [by_key[k] for k in keys], None, list(self.notes)
        )


# -- label sources -------------------------------------------------------------------------------------
@dataclass
class LabelFile:
    """A single-channel mask of class ids (the folder format): values are used as they are."""

    path: str
    num_classes: int

    where = property(lambda self: self.path)

    def read(self) -> np.ndarray:
        try:
            return read_label(self.path).astype(np.int64)
        except DataError as e:
            if "PIL mode 'RGB" in str(e) or "PIL mode 'RGBA" in str(e):
                raise FormatError(
                    f"{self.path}: the mask is an RGB image (colours) but masks must hold class ids: save it as a "
                    f"single-channel PNG whose values are the ids 0..{self.num_classes - 1} of classes.txt (and 255 "
                    "where unlabelled); or, if each colour is a class, give the colours in a CVAT labelmap.txt "
                    "('name:r,g,b::' per line) beside a SegmentationClass/ folder"
                ) from None
            raise


@dataclass
class ColorLabel:
    """An RGB mask whose colours stand for classes (CVAT's SegmentationClass)."""

    path: str
    colors: dict[tuple[int, int, int], int]  # colour -> class id (or the ignore value)
    ignore_label: int

    where = property(lambda self: self.path)

    def read(self) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as e:
            raise FormatError(f"{self.path}: cannot decode the mask: {e}") from None
        code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        values, inverse = np.unique(code, return_inverse=True)
        table = {(r << 16) | (g << 8) | b: cid for (r, g, b), cid in self.colors.items()}
        unknown = [int(v) for v in values if int(v) not in table]
        if unknown:
            v = unknown[0]
            raise FormatError(
                f"{self.path}: colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) is not in labelmap.txt "
                f"({len(unknown)} unknown colour(s)); add it to labelmap.txt with its class name, or repaint it"
            )
        return np.array([table[int(v)] for v in values], dtype=np.int64)[inverse.reshape(code.shape)]


@dataclass
class ShapeLabel:
    """Polygons and RLE masks painted in order into an ``height x width`` map (unpainted: ``fill``).

    ``shapes``: ``(class_id, kind, data)`` with kind ``"polygon"`` (``[P, 2]`` points) or ``"rle"``
    (a COCO RLE dict); later shapes paint over earlier ones."""

    where: str
    height: int
    width: int
    shapes: list[tuple[int, str, Any]]
    fill: int
    offset: float = 0.5

    def read(self) -> np.ndarray:
        from ..rle import rle_decode

        out = np.full((self.height, self.width), self.fill, dtype=np.int64)
        for cid, kind, data in self.shapes:
            if kind == "polygon":
                out[polygon_mask(data, self.height, self.width, self.offset)] = cid
            else:
                try:
                    mask = rle_decode(data)
                except (ValueError, KeyError, TypeError) as e:
                    raise FormatError(f"{self.where}: an RLE mask cannot be decoded ({e})") from None
                if mask.shape != out.shape:
                    raise FormatError(
                        f"{self.where}: an RLE mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                        f"{self.width}x{self.height} (width x height)"
                    )
                out[mask] = cid
        return out


@dataclass
class PanopticLabel:
    """A COCO panoptic PNG (segment id = R + 256 G + 256² B) and its segments' class ids."""

    path: str
    segments: dict[int, int]  # segment id -> class id
    fill: int

    where = property(lambda self: self.path)

    def read(self) -> np.ndarray:
        from PIL import Image

        if not os.path.isfile(self.path):
            raise FormatError(f"{self.path}: the panoptic PNG the JSON names is missing; restore it or drop its entry")
        try:
            with Image.open(self.path) as img:
                rgb = np.asarray(img.convert("RGB")).astype(np.int64)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot decode the panoptic PNG: {e}") from None
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        values, inverse = np.unique(ids, return_inverse=True)
        unknown = [int(v) for v in values if v != 0 and int(v) not in self.segments]
        if unknown:
            raise FormatError(
                f"{self.path}: segment id {unknown[0]} has no entry in the JSON's segments_info "
                f"({len(unknown)} such segment(s)); re-export the panoptic annotations"
            )
        table = np.array([self.segments.get(int(v), self.fill) for v in values], dtype=np.int64)
        return table[inverse.reshape(ids.shape)]


@dataclass
class ArrayLabel:
    """A label held in a table (Hugging Face ``datasets``): ``load()`` gives a PIL image or an array."""

    where: str
    load: Callable[[], Any]
    num_classes: int

    def read(self) -> np.ndarray:
        value = self.load()
        if hasattr(value, "mode"):  # a PIL image
            if value.mode in ("RGB", "RGBA"):
                raise FormatError(
                    f"{self.where}: the label is an RGB image (colours) but must hold class ids "
                    f"0..{self.num_classes - 1}; convert the column to single-channel id maps"
                )
            value = np.asarray(value)
        arr = np.asarray(value)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise FormatError(f"{self.where}: the label must be a 2-D integer map, got {arr.dtype} {list(arr.shape)}")
        return arr.astype(np.int64)


def decode_image_value(value: Any) -> Any:
    """A table's image cell (PIL image, ``{"bytes", "path"}`` or bytes) as something PIL/``read_image`` take."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        return value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    return value
