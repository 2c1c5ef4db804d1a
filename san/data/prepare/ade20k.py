"""ADE20K: the 150-class challenge (ADEChallengeData2016) and the 847-class full dataset (2021).

- ``ade20k_150``: ``annotations/*.png`` minus 1 in uint8 (0 "other" wraps to 255).
- ``ade20k_847``: the images of ``index_ade20k.pkl`` (read with a restricted unpickler: plain
  containers and NumPy arrays only); class = int(R / 10) * 256 + G of ``*_seg.png``, mapped to the
  847 train ids, everything else 65535 (16-bit TIFF); images and labels whose short side exceeds
  512 are resized to 512 (image bilinear without antialiasing, as OpenCV's INTER_LINEAR in the
  official script; label nearest).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
from PIL import Image

from san.assets import read_dataset_ids
from san.data.io import DataError
from san.data.transforms import resize_label

from .common import PrepareError, PrepareOptions, Task, checked_u8, link_dir, lut, need_dir

IGNORE_150, NUM_150 = 255, 150
IGNORE_847, NUM_847 = 65535, 847


def convert_150(src: str) -> np.ndarray:
    return checked_u8(src) - np.uint8(1)  # uint8 wrap: 0 -> 255


def tasks_150(raw: str, root: str, options: PrepareOptions) -> dict[str, list[Task]]:
    out: dict[str, list[Task]] = {}
    for split in ("training", "validation"):
        ann = need_dir(os.path.join(raw, "annotations", split), "ade20k_150 annotations (ADEChallengeData2016)")
        images = need_dir(os.path.join(raw, "images", split), "ade20k_150 images")
        link_dir(images, os.path.join(root, "ADEChallengeData2016", "images", split), options.copy)
        dst = os.path.join(root, "ADEChallengeData2016", "annotations_detectron2", split)
        out[split] = [
            Task(
                "ade20k_150",
                os.path.join(ann, f),
                os.path.join(dst, f),
                os.path.join(root, "ADEChallengeData2016", "images", split, f[:-4] + ".jpg"),
            )
            for f in sorted(os.listdir(ann))
            if f.endswith(".png")
        ]
    return out


def _class_map(path: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            seg = np.asarray(img.convert("RGB")).astype(np.int64)
    except Exception as e:  # PIL raises several types for bad files
        raise DataError(f"{path}: cannot read the ADE20K segmentation png: {e}") from None
    return (seg[..., 0] // 10) * 256 + seg[..., 1]


def convert_847(src: str) -> np.ndarray:
    table = lut(65536, 65535, np.uint16, {i: c for c, i in enumerate(read_dataset_ids("ade20k_847"))})
    return table[np.clip(_class_map(src), 0, 65535)]


def resize_bilinear_nonaa(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear without antialiasing, as OpenCV's INTER_LINEAR in the official ADE-847 script.

    OpenCV rounds its fixed-point weights differently: some pixels differ by 1 (before JPEG coding).
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def resize_to_512(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Short side -> 512 (long side rounded) when it is longer, as the official script."""
    h, w = image.shape[:2]
    if min(h, w) <= 512:
        return image, label
    nh, nw = (512, round(w / h * 512)) if w >= h else (round(h / w * 512), 512)
    return resize_bilinear_nonaa(image, nh, nw), resize_label(label, nh, nw)


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    # array reconstruction helpers of NumPy 1.x/2.x (protocols 2-5) and _codecs.encode, which
    # protocol 2 uses to store bytes; none of them can run code
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from the index: only containers and NumPy arrays are allowed"
            )
        return super().find_class(module, name)


def safe_load_index(path: str) -> dict[str, Any]:
    """Read ``index_ade20k.pkl`` without running code from it (restricted unpickler)."""
    with open(path, "rb") as f:
        try:
            index = _IndexUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise PrepareError(f"{path}: {e}") from None
        except Exception as e:  # truncated or not a pickle
            raise PrepareError(f"{path}: cannot read the ADE20K index: {e}") from None
    if not isinstance(index, dict) or "folder" not in index or "filename" not in index:
        raise PrepareError(f"{path}: expected a dict with 'folder' and 'filename' lists (ADE20K 2021 index)")
    return index


def _resolve_folder(raw: str, folder: str, name: str) -> str:
    """Index folders are relative to the parent of ADE20K_2021_17_01 (or absolute)."""
    parts = folder.replace("\\", "/").split("/")
    candidates = [
        os.path.join(folder, name),
        os.path.join(os.path.dirname(os.path.abspath(raw)), folder, name),
        os.path.join(raw, folder, name),
    ]
    if "ADE20K_2021_17_01" in parts:
        candidates.append(os.path.join(raw, *parts[parts.index("ADE20K_2021_17_01") + 1 :], name))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise PrepareError(f"ade20k_847: image {name} of folder {folder!r} not found (tried {', '.join(candidates)})")


def tasks_847(raw: str, root: str, options: PrepareOptions) -> dict[str, list[Task]]:
    index_path = os.path.join(raw, "index_ade20k.pkl")
    if not os.path.isfile(index_path):
        raise PrepareError(f"ade20k_847: {index_path} is missing (RAW must be the ADE20K_2021_17_01 folder)")
    index = safe_load_index(index_path)
    base = os.path.join(root, "ADE20K_2021_17_01")
    out: dict[str, list[Task]] = {"training": [], "validation": []}
    for folder, name in zip(index["folder"], index["filename"]):
        split = "validation" if name.split("_")[1] == "val" else "training"
        image = _resolve_folder(raw, str(folder), str(name))
        os.makedirs(os.path.join(base, "images_detectron2", split), exist_ok=True)
        out[split].append(
            Task(
                "ade20k_847",
                image[:-4] + "_seg.png",
                os.path.join(base, "annotations_detectron2", split, name[:-4] + ".tif"),
                image,
                os.path.join(base, "images_detectron2", split, name),
                "resize512",
            )
        )
    return out
