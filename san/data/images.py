"""Every image input the predictor accepts -> one ``[H, W, 3]`` uint8 RGB array.

Accepted: a file path, a ``PIL.Image``, a numpy array (``HxW``, ``HxWx1/3/4``; uint8, uint16 or
bool, or float), a torch tensor (``[3, H, W]``/``[1, H, W]`` channels first, else ``[H, W, C]``;
uint8, or floating point on the 0..255 scale of the model contract). Conversions, all documented choices:

- EXIF orientation is applied (files and PIL images), so labels follow the photo as it is shown.
- Grayscale is repeated into three channels; palette images are expanded; alpha is dropped
  (as ``PIL.Image.convert("RGB")`` does); CMYK is converted with PIL's conversion.
- 16-bit images are scaled to 8 bits (value // 257), 32-bit integer images too when they hold
  16-bit data (48-bit RGB files are reduced by Pillow itself, which keeps the high byte: within 1); float
  arrays and PIL mode ``F`` images are read on the 0..1 scale if their maximum
  is <= 1, else on the 0..255 scale (float tensors: always 0..255, the model's scale).
- Files with several frames (animated GIF, multi-page TIFF) give their first frame, with a warning
  that names the file and the frame count.
- Images above ``max_pixels`` are refused before they are decoded (a clear error); the limit is an
  argument. While a file is decoded, Pillow's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
  about 89 MP, refusing above twice that) is raised to ``max_pixels`` when that is higher, and put back
  afterwards; ``max_pixels=None`` lifts both limits.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "read_image", "read_image_bytes", "to_rgb_array"]

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels

logger = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image cannot be read or converted; the message says what was wrong."""


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


def _too_large(what: str, size: str, max_pixels: int) -> ImageError:
    return ImageError(
        f"{what}: the image is {size}, above the limit of {_pixels(max_pixels)}; downscale it first or raise the "
        "limit (max_pixels / --max-pixels)"
    )


def _check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{what}: the image is empty ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise _too_large(what, f"{width}x{height} = {_pixels(width * height)}", max_pixels)


_LIMIT_LOCK = threading.Lock()
_ACTIVE: list[int | None] = []  # max_pixels of the decodes in progress (any thread)
_SAVED: list[int | None] = []  # Pillow's limit before the first of them began


def _raised_limit() -> int | None:
    saved = _SAVED[0]
    if saved is None or None in _ACTIVE:
        return None
    return max(saved, *_ACTIVE)  # type: ignore[type-var]


@contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Raise (never lower) ``Image.MAX_IMAGE_PIXELS`` to ``max_pixels`` while decoding; restore it after."""
    with _LIMIT_LOCK:
        if not _ACTIVE:
            _SAVED[:] = [Image.MAX_IMAGE_PIXELS]
        _ACTIVE.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = _raised_limit()
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _ACTIVE.remove(max_pixels)
            Image.MAX_IMAGE_PIXELS = _raised_limit() if _ACTIVE else _SAVED[0]


def _scale_high_bit_depth(a: np.ndarray, signed_16: bool = False) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype in (np.uint16, np.int16) or signed_16 or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
        return (np.clip(a.astype(np.int64), 0, 65535) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("the image holds NaN or infinite values")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {a.dtype}")


def _pil_to_array(img: Image.Image, what: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a malformed EXIF block must not lose the image
        warnings.warn(f"{what}: ignoring unreadable EXIF orientation ({e})", stacklevel=3)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = _scale_high_bit_depth(np.asarray(img), signed_16=img.mode.startswith("I;16"))
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageError(f"{what}: cannot convert PIL mode {img.mode!r} to RGB ({e})") from None
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to ``[H, W, 3]`` uint8 RGB with EXIF orientation applied."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    return _decode(path, path, max_pixels)


def read_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image held in memory (an upload) as :func:`read_image` decodes a file; errors
    name it ``name``."""
    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Any, path: str, max_pixels: int | None) -> np.ndarray:
    with warnings.catch_warnings(), _pillow_limit(max_pixels):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
        try:
            with Image.open(source) as img:
                _check_size(*img.size, max_pixels, path)
                frames = getattr(img, "n_frames", 1)
                if frames > 1:  # animated GIF/WebP/PNG, multi-page TIFF: the first frame, said out loud
                    logger.warning("%s has %d frames (pages); using the first one", path, frames)
                img.load()
                return _pil_to_array(img, path)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image file (PIL cannot identify its format)") from None
        except Image.DecompressionBombError as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            if found and max_pixels is not None and int(found.group(1)) > max_pixels:  # Pillow's check came first
                raise _too_large(path, _pixels(int(found.group(1))), max_pixels) from None
            limit = "no limit" if max_pixels is None else f"the limit of {max_pixels / 1e6:.1f} MP"
            raise ImageError(
                f"{path}: Pillow refused it as a possible decompression bomb ({e}); with {limit}, if you trust "
                "the file, raise the limit (max_pixels= in Python, --max-pixels N for san predict)"
            ) from None
        except (OSError, SyntaxError, ValueError) as e:
            hint = " (the file is truncated or corrupt)" if "truncated" in str(e) or "broken" in str(e) else ""
            raise ImageError(f"{path}: cannot decode the image{hint}: {e}") from None


def to_rgb_array(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported image input -> ``[H, W, 3]`` uint8 RGB (see the module docstring)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels)
    if isinstance(image, Image.Image):
        _check_size(*image.size, max_pixels, "PIL image")
        return _pil_to_array(image, "PIL image")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)  # tensors are channels first ([3, H, W]), as the model takes them
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ImageError("tensor image holds NaN or infinite values")
            t = t.float().clamp(0, 255).round().to(torch.uint8)  # the model's 0..255 scale
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise ImageError(
            f"unsupported image type {type(image).__name__}: give a path, a PIL image, an HxWx3 uint8 numpy array "
            "or a [3, H, W] tensor"
        )
    a = image
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"image array must be HxW or HxWxC with C in 1, 3, 4 (channels last), got shape {list(image.shape)}"
        )
    _check_size(a.shape[1], a.shape[0], max_pixels, "image array")
    a = _scale_high_bit_depth(a)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])
