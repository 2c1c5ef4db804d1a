"""Readers of the on-disk formats: RGB images and integer label maps (8-bit PNG, 16-bit PNG/TIFF).

:func:`read_image` gives ``[H, W, 3]`` uint8 RGB with EXIF orientation applied (grayscale, palette,
RGBA, CMYK and 16-bit images converted; see :mod:`san.data.images`). :func:`read_label` gives the label
values unchanged: ``uint8`` for 8-bit files (palette PNGs give their indices, as the VOC files
store classes), ``uint16`` for 16-bit PNG/TIFF (ADE-847 and PC-459, ignore 65535), ``int64`` for
32-bit integer files. Every failure is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .images import ImageError
from .images import read_image as _read_rgb

__all__ = ["DataError", "read_image", "read_label", "write_label"]


class DataError(ValueError):
    """A dataset file is missing, unreadable or holds unexpected values; the message names it."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``[H, W, 3]`` uint8 RGB (EXIF orientation applied)."""
    try:
        return _read_rgb(path, max_pixels=None)
    except ImageError as e:
        raise DataError(str(e)) from None


_LABEL_MODES = {
    "L": np.uint8,
    "P": np.uint8,
    "1": np.uint8,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I;16N": np.uint16,
    "I": np.int64,
}


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label map ``[H, W]`` (uint8, uint16 or int64), values unchanged."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: label file does not exist" if not os.path.isdir(path) else f"{path}: is a directory")
    mode = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)  # as detectron2's read_image, labels follow the photo
                if img.mode not in _LABEL_MODES:
                    raise DataError(
                        f"{path}: a label map must be a single-channel integer image, got PIL mode {img.mode!r}"
                        + (
                            " (a colour-coded annotation? convert it with `san prepare-data`)"
                            if img.mode in ("RGB", "RGBA")
                            else ""
                        )
                    )
                mode, arr = img.mode, np.asarray(img)
    except DataError:
        raise
    except UnidentifiedImageError:
        arr = _read_tiff_fallback(path)
    except (OSError, SyntaxError, ValueError) as e:
        hint = " (the file is truncated or corrupt)" if "truncated" in str(e) or "broken" in str(e) else ""
        raise DataError(f"{path}: cannot decode the label map{hint}: {e}") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: a label map must be 2-D, got shape {list(arr.shape)}")
    dtype = _LABEL_MODES[mode] if mode is not None else arr.dtype
    if dtype == np.int64 and arr.size and (arr.min() < 0):
        raise DataError(f"{path}: negative label values (min {arr.min()})")
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _read_tiff_fallback(path: str) -> np.ndarray:
    """TIFF variants PIL cannot open (e.g. some compressions) through tifffile when installed."""
    if not path.lower().endswith((".tif", ".tiff")):
        raise DataError(f"{path}: not a label image, or truncated/corrupt (PIL cannot identify its format)")
    try:
        import tifffile
    except ImportError:
        raise DataError(f"{path}: PIL cannot read this TIFF; `pip install tifffile` may") from None
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for bad files
        raise DataError(f"{path}: cannot decode the TIFF label map: {e}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: label values must be integers, got {arr.dtype}")
    return arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.int64)


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a label map: uint8 to PNG, uint16 to PNG or TIFF (by extension), atomically."""
    path = os.fspath(path)
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_label takes a 2-D uint8 or uint16 array, got {label.dtype} {list(label.shape)}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".tif", ".tiff"):
        raise ValueError(f"{path}: label maps are written as .png or .tif")
    tmp = f"{path}.tmp{os.getpid()}{ext}"
    try:
        Image.fromarray(label).save(tmp, format="PNG" if ext == ".png" else "TIFF")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
