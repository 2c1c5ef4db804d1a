"""``san prepare-data NAME --raw RAW_DIR [--root ROOT]``: raw downloads -> the benchmark layout.

The label conversions are those of the official release and its predecessor (see the README's
Datasets section for the raw layouts each NAME expects):

- ``coco_stuff``: ``stuffthingmaps/{train2017,val2017}/*.png`` hold the 0-based COCO id (0..181,
  255 unlabeled); id+1 is looked up in the 171 dataset ids, the 11 unused ids and 255 become 255.
- ``ade20k_150``: ``annotations/*.png`` minus 1 in uint8 (0 "other" wraps to 255).
- ``ade20k_847``: images of ``index_ade20k.pkl`` (read with a restricted unpickler: plain
  containers and NumPy arrays only); class = int(R / 10) * 256 + G of ``*_seg.png``, mapped to the 847
  train ids, everything else 65535 (16-bit TIFF); images and labels whose short side exceeds 512
  are resized to 512 (image bilinear, label nearest).
- ``pcontext_59``: the 459-class ``LabelMap`` of the per-image ``.mat`` files; the 59 context ids
  map to 0..58 in id order, everything else (0 included) to 255.
- ``pcontext_459``: ``LabelMap - 1`` in uint16 (0 wraps to 65535), 16-bit TIFF.
- ``voc``: ``SegmentationClassAug/*.png``: 0 -> 255, k -> k - 1, 255 stays.

Images without a single valid pixel get no label (COCO-Stuff, VOC: as the official scripts; the
catalog pairs images with labels by name). Outputs are written atomically; existing outputs are
verified and kept, so a run can be interrupted and restarted. Every label written or kept is read
back and checked (value range, size equal to its image's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from san.assets import read_dataset_ids

from .catalog import dataset_root
from .io import DataError, read_image, read_label, write_label
from .transforms import resize_label

__all__ = ["PC59_IDS", "PREPARERS", "main", "safe_load_index"]

logger = logging.getLogger(__name__)

# the 59 PASCAL-Context classes as ids of the 459-class LabelMap, ascending (= contiguous order)
PC59_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144,
            158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355,
            360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)  # fmt: skip


class PrepareError(RuntimeError):
    """Raw files are missing or malformed; the message names them and what is expected."""


@dataclass(frozen=True)
class _Task:
    kind: str  # converter name in _CONVERT
    label_src: str
    label_dst: str
    image_src: str | None = None  # set when this task places the image itself
    image_dst: str | None = None
    image_mode: str = "link"  # link | copy | resize512


def _lut(size: int, fill: int, dtype: Any, mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(size, fill, dtype=dtype)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def _coco_lut() -> np.ndarray:
    ids = read_dataset_ids("coco_stuff_171")  # 1-based COCO ids in contiguous order
    return _lut(256, 255, np.uint8, {i - 1: c for c, i in enumerate(ids)})


def _ade847_lut() -> np.ndarray:
    return _lut(65536, 65535, np.uint16, {i: c for c, i in enumerate(read_dataset_ids("ade20k_847"))})


def _load_mat_labelmap(path: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for bad files
        raise DataError(f"{path}: cannot read the .mat file: {e}") from None
    if "LabelMap" not in mat:
        raise DataError(
            f"{path}: no 'LabelMap' in the .mat file (keys: {sorted(k for k in mat if not k.startswith('__'))})"
        )
    return np.asarray(mat["LabelMap"]).astype(np.int64)


def _ade847_class_map(path: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            seg = np.asarray(img.convert("RGB")).astype(np.int64)
    except Exception as e:  # PIL raises several types for bad files
        raise DataError(f"{path}: cannot read the ADE20K segmentation png: {e}") from None
    return (seg[..., 0] // 10) * 256 + seg[..., 1]


# converter: source label file -> (output label array or None to skip, ignore value, number of classes)
def _convert(kind: str, src: str) -> tuple[np.ndarray | None, int, int]:
    if kind == "coco_stuff":
        out = _coco_lut()[_checked_u8(src)]
        return (None if (out == 255).all() else out), 255, 171
    if kind == "ade20k_150":
        return _checked_u8(src) - np.uint8(1), 255, 150  # uint8 wrap: 0 -> 255
    if kind == "ade20k_847":
        return _ade847_lut()[np.clip(_ade847_class_map(src), 0, 65535)], 65535, 847
    if kind == "pcontext_59":
        lut = _lut(65536, 255, np.uint8, {i: c for c, i in enumerate(PC59_IDS)})
        return lut[np.clip(_load_mat_labelmap(src), 0, 65535)], 255, 59
    if kind == "pcontext_459":
        m = _load_mat_labelmap(src)
        if m.min(initial=0) < 0 or m.max(initial=0) > 459:
            raise DataError(f"{src}: LabelMap values must be 0..459, found {m.min()}..{m.max()}")
        return (m.astype(np.uint16) - np.uint16(1)), 65535, 459  # uint16 wrap: 0 -> 65535
    if kind == "voc":
        out = _lut(256, 255, np.uint8, {0: 255, **{k: k - 1 for k in range(1, 21)}})[_checked_u8(src)]
        return (None if (out == 255).all() else out), 255, 20
    raise ValueError(f"unknown conversion {kind!r}")


def _checked_u8(path: str) -> np.ndarray:
    label = read_label(path)
    if label.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit label png, got {label.dtype}")
    return label


def _atomic_save_jpeg(image: np.ndarray, dst: str) -> None:
    tmp = f"{dst}.tmp{os.getpid()}.jpg"
    Image.fromarray(image).save(tmp, format="JPEG")  # PIL's default quality (75), as the official script
    os.replace(tmp, dst)


def _place_image(src: str, dst: str, mode: str) -> None:
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


def _verify(task: _Task, ignore: int, num_classes: int) -> None:
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


def _run(task: _Task) -> str:
    """Convert one sample; returns 'written', 'kept' (verified existing output) or 'empty'."""
    ignore, n = _IGNORE_N[task.kind]
    if os.path.exists(task.label_dst) and (task.image_dst is None or os.path.exists(task.image_dst)):
        try:
            _verify(task, ignore, n)
            return "kept"
        except (DataError, OSError):
            os.remove(task.label_dst)  # a bad leftover: convert again
    label, ignore, n = _convert(task.kind, task.label_src)
    if label is None:
        return "empty"
    if task.image_dst is not None:
        if task.image_mode == "resize512":
            image = read_image(task.image_src)
            if image.shape[:2] != label.shape:
                raise DataError(f"{task.image_src} and its annotation {task.label_src} differ in size")
            h, w = image.shape[:2]
            if min(h, w) > 512:  # short side -> 512, long side rounded (official)
                nh, nw = (512, round(w / h * 512)) if w >= h else (round(h / w * 512), 512)
                image = _resize_bilinear_nonaa(image, nh, nw)
                label = resize_label(label, nh, nw)
            if not os.path.exists(task.image_dst):
                _atomic_save_jpeg(image, task.image_dst)
        else:
            _place_image(task.image_src, task.image_dst, task.image_mode)
    write_label(task.label_dst, label)
    _verify(task, ignore, n)
    return "written"


def _resize_bilinear_nonaa(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear without antialiasing, as OpenCV's INTER_LINEAR in the official ADE-847 script.

    OpenCV rounds its fixed-point weights differently: some pixels differ by 1 (before JPEG coding).
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


# conversion -> (ignore value, number of classes) of its output
_IGNORE_N = {"coco_stuff": (255, 171), "ade20k_150": (255, 150), "ade20k_847": (65535, 847),
             "pcontext_59": (255, 59), "pcontext_459": (65535, 459), "voc": (255, 20)}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Raw layouts -> tasks
# --------------------------------------------------------------------------------------------
def _need_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise PrepareError(f"{what}: directory {path} does not exist")
    return path


def _link_dir(src: str, dst: str, copy: bool) -> None:
    """Make the image folder ``dst`` show ``src`` (one symlink, or a copy); no-op if it exists."""
    if os.path.exists(dst) or os.path.realpath(src) == os.path.realpath(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if copy:
        shutil.copytree(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst, target_is_directory=True)


def _tasks_coco(raw: str, root: str, args: argparse.Namespace) -> dict[str, list[_Task]]:
    maps = next((os.path.join(raw, d) for d in ("stuffthingmaps", "stuffthingmaps_trainval2017")
                 if os.path.isdir(os.path.join(raw, d))), None)  # fmt: skip
    if maps is None:
        raise PrepareError(f"coco_stuff: no {raw}/stuffthingmaps/ (unzip stuffthingmaps_trainval2017.zip there)")
    out: dict[str, list[_Task]] = {}
    for split in ("train2017", "val2017"):
        if not os.path.isdir(os.path.join(maps, split)):
            continue
        _link_dir(_need_dir(os.path.join(raw, split), f"coco_stuff {split} images"),
                  os.path.join(root, "coco", split), args.copy)  # fmt: skip
        dst = os.path.join(root, "coco", "stuffthingmaps_detectron2", split)
        files = sorted(f for f in os.listdir(os.path.join(maps, split)) if f.endswith(".png"))
        out[split] = [_Task("coco_stuff", os.path.join(maps, split, f), os.path.join(dst, f),
                            os.path.join(root, "coco", split, f[:-4] + ".jpg")) for f in files]  # fmt: skip
    return out


def _tasks_ade150(raw: str, root: str, args: argparse.Namespace) -> dict[str, list[_Task]]:
    out: dict[str, list[_Task]] = {}
    for split in ("training", "validation"):
        ann = _need_dir(os.path.join(raw, "annotations", split), "ade20k_150 annotations (ADEChallengeData2016)")
        _link_dir(_need_dir(os.path.join(raw, "images", split), "ade20k_150 images"),
                  os.path.join(root, "ADEChallengeData2016", "images", split), args.copy)  # fmt: skip
        dst = os.path.join(root, "ADEChallengeData2016", "annotations_detectron2", split)
        out[split] = [_Task("ade20k_150", os.path.join(ann, f), os.path.join(dst, f),
                            os.path.join(root, "ADEChallengeData2016", "images", split, f[:-4] + ".jpg"))
                      for f in sorted(os.listdir(ann)) if f.endswith(".png")]  # fmt: skip
    return out


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    # array reconstruction helpers of NumPy 1.x/2.x (protocols 2-5) and _codecs.encode, which
    # protocol 2 uses to store bytes; none of them can run code
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
               ("_codecs", "encode")}  # fmt: skip

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


def _tasks_ade847(raw: str, root: str, args: argparse.Namespace) -> dict[str, list[_Task]]:
    index_path = os.path.join(raw, "index_ade20k.pkl")
    if not os.path.isfile(index_path):
        raise PrepareError(f"ade20k_847: {index_path} is missing (RAW must be the ADE20K_2021_17_01 folder)")
    index = safe_load_index(index_path)
    base = os.path.join(root, "ADE20K_2021_17_01")
    out: dict[str, list[_Task]] = {"training": [], "validation": []}
    for folder, name in zip(index["folder"], index["filename"]):
        split = "validation" if name.split("_")[1] == "val" else "training"
        image = _resolve_ade_folder(raw, str(folder), str(name))
        os.makedirs(os.path.join(base, "images_detectron2", split), exist_ok=True)
        out[split].append(_Task("ade20k_847", image[:-4] + "_seg.png",
                                os.path.join(base, "annotations_detectron2", split, name[:-4] + ".tif"),
                                image, os.path.join(base, "images_detectron2", split, name), "resize512"))  # fmt: skip
    return out


def _resolve_ade_folder(raw: str, folder: str, name: str) -> str:
    """Index folders are relative to the parent of ADE20K_2021_17_01 (or absolute)."""
    parts = folder.replace("\\", "/").split("/")
    candidates = [os.path.join(folder, name), os.path.join(os.path.dirname(os.path.abspath(raw)), folder, name),
                  os.path.join(raw, folder, name)]  # fmt: skip
    if "ADE20K_2021_17_01" in parts:
        candidates.append(os.path.join(raw, *parts[parts.index("ADE20K_2021_17_01") + 1 :], name))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise PrepareError(f"ade20k_847: image {name} of folder {folder!r} not found (tried {', '.join(candidates)})")


def _pcontext_split(raw: str, split: str) -> list[str]:
    merged = os.path.join(raw, "trainval_merged.json")
    if os.path.isfile(merged):
        with open(merged, encoding="utf-8") as f:
            images = json.load(f).get("images", [])
        return sorted(os.path.splitext(im["file_name"])[0] for im in images if im.get("phase") == split)
    listing = os.path.join(raw, "ImageSets", "SegmentationContext", f"{split}.txt")
    if os.path.isfile(listing):
        with open(listing, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    raise PrepareError(f"pcontext: neither {merged} nor {listing} exists (the train/val split of PASCAL-Context)")


def _tasks_pcontext(kind: str, raw: str, root: str, args: argparse.Namespace) -> dict[str, list[_Task]]:
    anno = args.anno_dir or os.path.join(raw, "trainval")
    _need_dir(anno, "pcontext .mat annotations (trainval.tar.gz; or pass --anno-dir)")
    jpegs = _need_dir(os.path.join(raw, "JPEGImages"), "pcontext images (VOC2010)")
    base = os.path.join(root, "pcontext" if kind == "pcontext_59" else "pcontext_full")
    ext = ".png" if kind == "pcontext_59" else ".tif"
    out: dict[str, list[_Task]] = {}
    for split in ("train", "val"):
        for sub in ("image", "label"):
            os.makedirs(os.path.join(base, split, sub), exist_ok=True)
        out[split] = [_Task(kind, os.path.join(anno, f"{i}.mat"), os.path.join(base, split, "label", i + ext),
                            os.path.join(jpegs, f"{i}.jpg"), os.path.join(base, split, "image", f"{i}.jpg"),
                            "copy" if args.copy else "link") for i in _pcontext_split(raw, split)]  # fmt: skip
    return out


def _voc_split(raw: str, split: str) -> list[str]:
    for listing in (os.path.join(raw, f"{split}.txt"), os.path.join(raw, "ImageSets", "Segmentation", f"{split}.txt")):
        if os.path.isfile(listing):
            with open(listing, encoding="utf-8") as f:
                return [line.split()[0] for line in f if line.strip()]
    raise PrepareError(f"voc: no {split}.txt in {raw} or {raw}/ImageSets/Segmentation")


def _tasks_voc(raw: str, root: str, args: argparse.Namespace) -> dict[str, list[_Task]]:
    labels = next((os.path.join(raw, d) for d in ("SegmentationClassAug", "SegmentationClass")
                   if os.path.isdir(os.path.join(raw, d))), None)  # fmt: skip
    if labels is None:
        raise PrepareError(f"voc: no {raw}/SegmentationClassAug (or SegmentationClass)")
    _link_dir(_need_dir(os.path.join(raw, "JPEGImages"), "voc images"), os.path.join(root, "VOC2012", "JPEGImages"),
              args.copy)  # fmt: skip
    out: dict[str, list[_Task]] = {}
    for split in ("train", "val"):
        dst = os.path.join(root, "VOC2012", "annotations_detectron2", split)
        out[split] = [_Task("voc", os.path.join(labels, f"{i}.png"), os.path.join(dst, f"{i}.png"),
                            os.path.join(root, "VOC2012", "JPEGImages", f"{i}.jpg")) for i in _voc_split(raw, split)]  # fmt: skip
    return out


PREPARERS = {
    "coco_stuff": _tasks_coco,
    "ade20k_150": _tasks_ade150,
    "ade20k_847": _tasks_ade847,
    "pcontext_59": lambda raw, root, args: _tasks_pcontext("pcontext_59", raw, root, args),
    "pcontext_459": lambda raw, root, args: _tasks_pcontext("pcontext_459", raw, root, args),
    "voc": _tasks_voc,
}


def prepare(name: str, raw: str, root: str | None = None, *, workers: int = 0, copy: bool = False,
            anno_dir: str | None = None) -> dict[str, Counter]:  # fmt: skip
    """Prepare dataset ``name`` from ``raw`` under ``root``; returns per-split status counts."""
    if name not in PREPARERS:
        raise PrepareError(f"unknown dataset {name!r}; choose one of {', '.join(PREPARERS)}")
    if not os.path.isdir(raw):
        raise PrepareError(f"{name}: raw directory {raw} does not exist")
    root = root if root is not None else dataset_root()
    args = argparse.Namespace(copy=copy, anno_dir=anno_dir)
    splits = PREPARERS[name](raw, root, args)
    summary: dict[str, Counter] = {}
    for split, tasks in splits.items():
        for t in tasks:
            if not os.path.isfile(t.label_src):
                raise PrepareError(f"{name} {split}: annotation {t.label_src} is missing")
        if tasks:
            os.makedirs(os.path.dirname(tasks[0].label_dst), exist_ok=True)
        counts: Counter = Counter()
        bar = tqdm(total=len(tasks), desc=f"{name} {split}", unit="img", disable=None)
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for status in pool.map(_run, tasks, chunksize=16):
                    counts[status] += 1
                    bar.update()
        else:
            for task in tasks:
                counts[_run(task)] += 1
                bar.update()
        bar.close()
        summary[split] = counts
        logger.info("%s %s: %s", name, split, dict(counts))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line: ``san prepare-data NAME --raw RAW_DIR [--root ROOT] [--workers N] [--copy]``."""
    p = argparse.ArgumentParser(prog="san prepare-data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("name", choices=sorted(PREPARERS), help="which benchmark to prepare")
    p.add_argument("--raw", required=True, help="the raw download (see README, Datasets)")
    p.add_argument("--root", default=None, help="dataset root (default $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes (0/1: none)")
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--anno-dir", default=None, help="pcontext: folder of the per-image .mat files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = prepare(args.name, args.raw, args.root, workers=args.workers, copy=args.copy, anno_dir=args.anno_dir)
    except (PrepareError, DataError) as e:
        print(f"san prepare-data: error: {e}", file=sys.stderr)
        return 1
    for split, counts in summary.items():
        print(f"{args.name} {split}: {counts['written']} written, {counts['kept']} already there (verified), "
              f"{counts['empty']} skipped (no valid pixel)")  # fmt: skip
    return 0
