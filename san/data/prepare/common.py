"""What every dataset preparation shares: the task record, options, label tables and the file steps."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from san.data.io import DataError, read_label

__all__ = [
    "PrepareError",
    "PrepareOptions",
    "Task",
    "checked_u8",
    "first_dir",
    "link_dir",
    "lut",
    "need_dir",
    "place_image",
    "save_jpeg",
    "verify",
]


class PrepareError(RuntimeError):
    """Raw files are missing or malformed; the message names them and what is expected."""


@dataclass(frozen=True)
class PrepareOptions:
    """How a preparation places files: ``copy`` images instead of symlinking them; ``anno_dir``, the
    folder of PASCAL-Context's per-image ``.mat`` files when it is not ``RAW/trainval``."""

    copy: bool = False
    anno_dir: str | None = None


@dataclass(frozen=True)
class Task:
    """One sample to convert: its raw label, its output label and, where this task places the image
    itself, the image's source and destination."""

    kind: str  # dataset preparation name (a key of san.data.prepare.DATASETS)
    label_src: str
    label_dst: str
    image_src: str | None = None
    image_dst: str | None = None
    image_mode: str = "link"  # link | copy | resize512


def lut(size: int, fill: int, dtype: Any, mapping: dict[int, int]) -> np.ndarray:
    """A lookup table of ``size`` entries holding ``fill`` except where ``mapping`` says otherwise."""
    table = np.full(size, fill, dtype=dtype)
    for k, v in mapping.items():
        table[k] = v
    return table


def checked_u8(path: str) -> np.ndarray:
    """An 8-bit label map, or a DataError naming the file."""
    label = read_label(path)
    if label.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit label png, got {label.dtype}")
    return label


def save_jpeg(image: np.ndarray, dst: str) -> None:
    """Write a JPEG atomically, at PIL's default quality (75) as the official scripts do."""
    tmp = f"{dst}.tmp{os.getpid()}.jpg"
    Image.fromarray(image).save(tmp, format="JPEG")
    os.replace(tmp, dst)


def place_image(src: str, dst: str, mode: str) -> None:
    """Make ``dst`` show the image ``src``: a symlink, or a copy (``mode="copy"``); no-op if it exists."""
    if os.path.exists(dst):
        return
    if not os.path.isfile(src):
        raise PrepareError(f"image {src} is missing")
    if mode == "copy":
        tmp = f"{dst}.tmp{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def first_dir(raw: str, names: tuple[str, ...], missing: str) -> str:
    """The first of ``raw/<name>`` that is a directory; a PrepareError saying ``missing`` otherwise."""
    for name in names:
        if os.path.isdir(os.path.join(raw, name)):
            return os.path.join(raw, name)
    raise PrepareError(missing)


def need_dir(path: str, what: str) -> str:
    """``path`` if it is a directory, else a PrepareError saying what was expected there."""
    if not os.path.isdir(path):
        raise PrepareError(f"{what}: directory {path} does not exist")
    return path


def link_dir(src: str, dst: str, copy: bool) -> None:
    """Make the image folder ``dst`` show ``src`` (one symlink, or a copy); no-op if it exists."""
    if os.path.exists(dst) or os.path.realpath(src) == os.path.realpath(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if copy:
        shutil.copytree(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst, target_is_directory=True)


def verify(task: Task, ignore: int, num_classes: int) -> None:
    """Read an output label back: values are class ids or ``ignore``, its size is its image's."""
    label = read_label(task.label_dst)
    bad = (label != ignore) & (label >= num_classes)
    if bad.any():
        raise DataError(f"{task.label_dst}: value {int(label[bad][0])} is not a class id (< {num_classes}) or {ignore}")
    image_path = task.image_dst or task.image_src
    if image_path and os.path.exists(image_path):
        with Image.open(image_path) as img:
            w, h = img.size  # header only
        if (h, w) != label.shape:
            raise DataError(
                f"{task.label_dst} is {label.shape[1]}x{label.shape[0]} but its image {image_path} is {w}x{h}"
            )
