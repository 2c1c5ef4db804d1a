"""Readers of the annotation formats people have, each to an :class:`OwnDataset`.

Every path is resolved relative to the data (the folder, JSON or YAML given), never to an
environment variable. Unannotated pixels are the ignore value unless ``background`` names a class
for them (then it is the last class). Each reader refuses its format's typical breakage with a
:class:`FormatError` that names the file and what to do.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import FORMATS
from ..images import IMAGE_EXTENSIONS
from .base import (
    ArrayLabel,
    ColorLabel,
    FormatError,
    LabelFile,
    OwnDataset,
    PanopticLabel,
    Sample,
    ShapeLabel,
    decode_image_value,
    ignore_for,
    read_class_lines,
)
from .shapes import circle_points, rectangle_points

__all__ = ["FORMATS", "detect_format", "read_dataset"]

logger = logging.getLogger(__name__)

MANIFEST = "dataset.json"  # what san writes (san.data.own.prepare): the "san" format
_IMAGE_DIRS = ("images", "imgs", "img", "JPEGImages")
_MASK_DIRS = ("masks", "labels", "annotations", "gt", "SegmentationClass")


def _images_under(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursively) by key: the relative path without extension."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), p)
    return out


def _with_background(classes: list[str], background: str | None) -> tuple[list[str], int]:
    """Classes (plus ``background`` last when given) and the value of unannotated pixels."""
    if background is None:
        return classes, ignore_for(len(classes))
    if background in classes:
        return classes, classes.index(background)
    classes = [*classes, background]
    return classes, len(classes) - 1


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e}); re-export it") from None


# -- detection ---------------------------------------------------------------------------------------
def _is_coco(data: Any) -> bool:
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


def _coco_kind(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 20)
    except OSError:
        return None
    if '"categories"' not in head and '"annotations"' not in head:
        return None
    data = _load_json(path)
    if not _is_coco(data):
        return None
    anns = data.get("annotations") or []
    return "coco-panoptic" if anns and "segments_info" in anns[0] else "coco"


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`), from its files; FormatError when none fits."""
    p = Path(path)
    if not p.exists():
        if _looks_like_hub_name(str(path)):
            return "hf"
        raise FormatError(f"{path}: no such file or folder")
    if p.is_file():
        if p.name == MANIFEST:
            return "san"
        if p.suffix.lower() == ".json":
            kind = _coco_kind(p)
            if kind:
                return kind
            raise FormatError(f"{p}: a JSON file but not COCO (it needs images, annotations and categories)")
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise FormatError(f"{p}: give a dataset folder, a COCO JSON or a YOLO data.yaml")
    if (p / MANIFEST).is_file():
        return "san"
    if any((p / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return "hf"
    if (p / "labelmap.txt").is_file() and (p / "SegmentationClass").is_dir():
        return "cvat"
    if (p / "data.yaml").is_file():
        return "yolo"
    if _coco_json_in(p) is not None:
        return _coco_kind(_coco_json_in(p))  # type: ignore[return-value]
    if any(_is_labelme(j) for j in sorted(p.glob("*.json"))[:5]):
        return "labelme"
    if _pick_dir(p, _IMAGE_DIRS) and _pick_dir(p, _MASK_DIRS):
        return "folder"
    raise FormatError(
        f"{p}: cannot tell the dataset format. san reads: a folder with images/, masks/ and classes.txt; a COCO "
        "or COCO panoptic JSON; a YOLO data.yaml; a labelme folder; a CVAT 'Segmentation mask 1.1' export; a "
        "Hugging Face dataset saved with save_to_disk (--format forces one)"
    )


def _looks_like_hub_name(name: str) -> bool:
    import re

    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and "." not in name.split("/")[-1][:1]


def _coco_json_in(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    found = [c for c in candidates if _coco_kind(c)]
    return found[0] if len(found) == 1 else None


def _is_labelme(path: Path) -> bool:
    try:
        data = _load_json(path)
    except (FormatError, OSError):
        return False
    return isinstance(data, dict) and "shapes" in data and "imagePath" in data


def _pick_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


# -- folder: images/ + masks/ + classes.txt ---------------------------------------------------------
def read_folder(root: Path, background: str | None = None) -> OwnDataset:
    """``images/`` and ``masks/`` (or labels/, annotations/) matched by path without extension, and
    ``classes.txt``; ``images/train`` + ``images/val`` subfolders are taken as the splits."""
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise FormatError(
            f"{root}: no classes.txt; write the class names there, one per line, in the order of their ids in "
            "the masks (line 1 = id 0)"
        )
    classes = read_class_lines(str(classes_file))
    if background is not None:
        logger.warning("the folder format's masks name every pixel already: --background is not used")
    image_dir, mask_dir = _pick_dir(root, _IMAGE_DIRS), _pick_dir(root, _MASK_DIRS)
    if image_dir is None or mask_dir is None:
        raise FormatError(f"{root}: needs an images/ folder and a masks/ (or labels/) folder beside classes.txt")
    images = _images_under(image_dir)
    masks = {k: v for k, v in _images_under(mask_dir).items()}
    samples = [Sample(k, str(images[k]), LabelFile(str(masks[k]), len(classes))) for k in sorted(images) if k in masks]
    ds = OwnDataset(str(root), "folder", classes, ignore_for(len(classes)), samples)
    ds.unlabelled_images = sum(1 for k in images if k not in masks)
    orphans = [k for k in masks if k not in images]
    if orphans:
        raise FormatError(
            f"{mask_dir / orphans[0]}: a mask without an image ({len(orphans)} such masks); the image "
            f"{image_dir / orphans[0]}.<ext> is missing: restore it or delete the mask"
        )
    subdirs = {k.split("/", 1)[0] for k in images}
    if {"train", "val"} <= subdirs:
        ds.splits = {s: [x.key for x in samples if x.key.startswith(s + "/")] for s in ("train", "val")}
    return ds


# -- COCO instances / stuff JSON --------------------------------------------------------------------------
def _image_root(json_path: Path, file_names: list[str], stem: str) -> Path:
    """The folder the JSON's ``file_name`` entries are relative to (checked on the first one)."""
    here = json_path.parent
    candidates = [here, here / "images", here.parent, here.parent / "images"]
    split = stem.split("_", 1)[-1]
    candidates += [here.parent / split, here.parent / "images" / split, here / split]
    if not file_names:
        return here
    for c in candidates:
        if (c / file_names[0]).is_file():
            return c
    raise FormatError(
        f"{json_path}: the image {file_names[0]} it names is missing; looked in "
        + ", ".join(str(c) for c in candidates[:4])
        + ". Put the images beside the JSON (or in images/ next to it)"
    )


def _categories(data: dict, path: Path) -> dict[int, int]:
    cats = data.get("categories") or []
    if not cats:
        raise FormatError(f"{path}: 'categories' is empty; list the classes there")
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise FormatError(f"{path}: category ids repeat ({sorted(ids)}); each category needs its own id")
    return {cid: i for i, cid in enumerate(ids)}


def _class_id(cat_index: dict[int, int], cid: Any, path: Path, what: str) -> int:
    if cid not in cat_index:
        raise FormatError(
            f"{path}: {what} has category_id {cid}, which is not in 'categories' (ids "
            f"{', '.join(str(i) for i in sorted(cat_index))}); add the category or fix the id"
        )
    return cat_index[cid]


def read_coco(json_path: Path, background: str | None = None) -> OwnDataset:
    """COCO instance/stuff annotations: polygons or RLE (compressed or not), ``category_id`` -> class in the
    order of ``categories``. Larger annotations are painted first, so smaller ones stay visible on top."""
    data = _load_json(json_path)
    if not _is_coco(data):
        raise FormatError(f"{json_path}: not a COCO JSON (needs images, annotations and categories)")
    cat_index = _categories(data, json_path)
    classes, fill = _with_background([str(c["name"]) for c in data["categories"]], background)
    images = {int(im["id"]): im for im in data["images"]}
    root = _image_root(json_path, [im["file_name"] for im in data["images"]], json_path.stem)
    shapes: dict[int, list[tuple[float, int, str, Any]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        img_id = int(ann.get("image_id", -1))
        what = f"annotation {ann.get('id', '?')} (image {img_id})"
        if img_id not in images:
            raise FormatError(f"{json_path}: {what} names an image id missing from 'images'; fix the image_id")
        cls = _class_id(cat_index, ann.get("category_id"), json_path, what)
        seg = ann.get("segmentation")
        im = images[img_id]
        area = float(ann.get("area", 0.0))
        if isinstance(seg, list):
            for poly in seg:
                pts = np.asarray(poly, dtype=np.float64)
                if pts.size % 2 or pts.size < 6:
                    raise FormatError(
                        f"{json_path}: {what} has a polygon with {pts.size // 2} point(s)"
                        + (" and an odd number of coordinates" if pts.size % 2 else "")
                        + "; a polygon needs at least 3 (x, y) points: fix it or delete the annotation"
                    )
                shapes[img_id].append((area, cls, "polygon", pts.reshape(-1, 2)))
        elif isinstance(seg, dict) and "counts" in seg:
            rle = dict(seg)
            if "size" not in rle:
                rle["size"] = [im["height"], im["width"]]
            shapes[img_id].append((area, cls, "rle", rle))
        else:
            raise FormatError(f"{json_path}: {what} has no segmentation (polygons or RLE); san trains on masks")
    samples = []
    for img_id, im in images.items():
        painted = [(c, k, d) for _, c, k, d in sorted(shapes[img_id], key=lambda s: -s[0])]
        label = ShapeLabel(f"{json_path} (image {im['file_name']})", int(im["height"]), int(im["width"]), painted, fill)
        key = Path(im["file_name"]).with_suffix("").as_posix()
        samples.append(Sample(key, str(root / im["file_name"]), label))
    samples.sort(key=lambda s: s.key)
    return OwnDataset(str(json_path), "coco", classes, ignore_for(len(classes)), samples)


def read_coco_panoptic(json_path: Path, background: str | None = None) -> OwnDataset:
    """COCO panoptic: a PNG per image (in the folder named like the JSON, beside it) whose colours are
    segment ids, with each segment's ``category_id`` in the JSON."""
    data = _load_json(json_path)
    cat_index = _categories(data, json_path)
    classes, fill = _with_background([str(c["name"]) for c in data["categories"]], background)
    root = _image_root(json_path, [im["file_name"] for im in data["images"]], json_path.stem.replace("panoptic_", ""))
    png_dir = json_path.parent / json_path.stem
    by_id = {int(im["id"]): im for im in data["images"]}
    samples = []
    for ann in data["annotations"]:
        im = by_id.get(int(ann["image_id"]))
        if im is None:
            raise FormatError(f"{json_path}: annotation {ann.get('file_name')} names an image id missing from 'images'")
        segments = {
            int(s["id"]): _class_id(
                cat_index, s.get("category_id"), json_path, f"segment {s['id']} of {ann['file_name']}"
            )
            for s in ann["segments_info"]
        }
        key = Path(im["file_name"]).with_suffix("").as_posix()
        samples.append(
            Sample(key, str(root / im["file_name"]), PanopticLabel(str(png_dir / ann["file_name"]), segments, fill))
        )
    samples.sort(key=lambda s: s.key)
    return OwnDataset(str(json_path), "coco-panoptic", classes, ignore_for(len(classes)), samples)


# -- YOLO segmentation ------------------------------------------------------------------------------------
def _yolo_names(data: dict, path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        ids = sorted(int(k) for k in names)
        if ids != list(range(len(ids))):
            raise FormatError(f"{path}: names must have the ids 0..{len(ids) - 1}, got {ids}")
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise FormatError(f"{path}: 'names' is missing; list the class names (a list, or a mapping id: name)")


def _yolo_label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_polygons(txt: Path, n_classes: int) -> list[tuple[int, np.ndarray]]:
    out = []
    with open(txt, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls, coords = int(fields[0]), np.asarray([float(v) for v in fields[1:]])
            except ValueError:
                raise FormatError(f"{txt}: line {n} is not 'class x1 y1 x2 y2 ...' (numbers)") from None
            if not 0 <= cls < n_classes:
                raise FormatError(
                    f"{txt}: line {n} has class {cls}, but data.yaml names {n_classes} classes (0..{n_classes - 1})"
                )
            if coords.size % 2 or coords.size < 6:
                raise FormatError(
                    f"{txt}: line {n} has a polygon with {coords.size // 2} point(s); a segmentation line needs at "
                    "least 3 (x, y) points (a 4-number line is a detection box, not a mask)"
                )
            out.append((cls, coords.reshape(-1, 2)))
    return out


class _YoloLabel:
    """YOLO polygons (normalised coordinates) rasterised at the image's size (read from its header)."""

    def __init__(self, image: Path, txt: Path | None, n_classes: int, fill: int) -> None:
        self.image, self.txt, self.n_classes, self.fill = image, txt, n_classes, fill
        self.where = str(txt or image)

    def read(self) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(self.image) as img:
            w, h = ImageOps.exif_transpose(img).size
        polys = _yolo_polygons(self.txt, self.n_classes) if self.txt is not None else []
        shapes = [(c, "polygon", p * np.array([w, h])) for c, p in polys]
        return ShapeLabel(self.where, h, w, shapes, self.fill).read()


def read_yolo(yaml_path: Path, background: str | None = None) -> OwnDataset:
    """Ultralytics segmentation: ``data.yaml`` (``path``, ``train``, ``val``, ``names``) and a polygon
    ``.txt`` per image under ``labels/`` mirroring ``images/``."""
    import yaml

    if yaml_path.is_dir():
        yaml_path = yaml_path / "data.yaml"
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FormatError(f"{yaml_path}: invalid YAML: {e}") from None
    names = _yolo_names(data, yaml_path)
    classes, fill = _with_background(names, background)
    base = yaml_path.parent / str(data.get("path") or ".")
    samples: list[Sample] = []
    splits: dict[str, list[str]] = {}
    unlabelled = 0
    for split in ("train", "val"):
        entries = data.get(split)
        if entries is None:
            continue
        keys = []
        for entry in entries if isinstance(entries, list) else [entries]:
            folder = base / str(entry)
            if folder.is_file() and folder.suffix == ".txt":  # a list of image paths
                files = {
                    Path(line.strip()).with_suffix("").as_posix(): base / line.strip()
                    for line in folder.read_text().splitlines()
                    if line.strip()
                }
            elif folder.is_dir():
                files = _images_under(folder)
            else:
                raise FormatError(f"{yaml_path}: {split}: {folder} does not exist (paths are relative to 'path')")
            for rel, img in files.items():
                txt = _yolo_label_path(img)
                if not txt.is_file():
                    unlabelled += 1
                key = f"{split}/{rel}"
                samples.append(Sample(key, str(img), _YoloLabel(img, txt if txt.is_file() else None, len(names), fill)))
                keys.append(key)
        splits[split] = keys
    if not samples:
        raise FormatError(f"{yaml_path}: neither 'train' nor 'val' names an image folder")
    ds = OwnDataset(str(yaml_path), "yolo", classes, ignore_for(len(classes)), samples)
    ds.splits = splits if len(splits) == 2 and all(splits.values()) else None
    ds.unlabelled_images = unlabelled
    return ds


# -- labelme --------------------------------------------------------------------------------------------
def read_labelme(root: Path, background: str | None = None) -> OwnDataset:
    """A folder of labelme JSON files (polygon, rectangle and circle shapes; ``imagePath`` relative to the
    JSON). Classes from ``classes.txt`` (or labelme's ``labels.txt``; ``__ignore__`` and
    ``_background_`` lines skipped) when present, else the sorted shape labels."""
    files = sorted(j for j in root.rglob("*.json") if _is_labelme(j))
    if not files:
        raise FormatError(f"{root}: no labelme JSON files (with 'shapes' and 'imagePath')")
    docs = [(j, _load_json(j)) for j in files]
    listed = next((root / n for n in ("classes.txt", "labels.txt") if (root / n).is_file()), None)
    if listed is not None:
        names = [n for n in read_class_lines(str(listed)) if n not in ("__ignore__", "_background_")]
    else:
        names = sorted({str(s["label"]) for _, d in docs for s in d.get("shapes", [])})
        if not names:
            raise FormatError(f"{root}: the labelme files hold no shapes")
    classes, fill = _with_background(names, background)
    index = {n: i for i, n in enumerate(classes)}
    samples = []
    for j, d in docs:
        shapes = []
        for k, s in enumerate(d.get("shapes", [])):
            label, kind, pts = str(s.get("label")), s.get("shape_type") or "polygon", s.get("points") or []
            if label not in index:
                raise FormatError(
                    f"{j}: shape {k} has label {label!r}, which is not in {listed.name if listed else 'the classes'} "
                    f"({', '.join(names)}); add it there or rename the shape"
                )
            if kind == "polygon":
                if len(pts) < 3:
                    raise FormatError(
                        f"{j}: shape {k} ({label!r}) is a polygon with {len(pts)} point(s); it needs at least 3: "
                        "fix or delete it"
                    )
                poly = np.asarray(pts, dtype=np.float64)
            elif kind == "rectangle" and len(pts) == 2:
                poly = rectangle_points(pts)
            elif kind == "circle" and len(pts) == 2:
                poly = circle_points(pts[0], pts[1])
            else:
                raise FormatError(
                    f"{j}: shape {k} ({label!r}) is a {kind!r} with {len(pts)} point(s); masks need polygons, "
                    "rectangles or circles: redraw it or delete it"
                )
            shapes.append((index[label], "polygon", poly))
        image = (j.parent / str(d["imagePath"])).resolve()
        if not image.is_file():
            raise FormatError(
                f"{j}: imagePath {d['imagePath']} ({image}) is missing; put the image there or fix the path"
            )
        h, w = int(d.get("imageHeight") or 0), int(d.get("imageWidth") or 0)
        samples.append(
            Sample(
                j.relative_to(root).with_suffix("").as_posix(),
                str(image),
                _LabelmeLabel(str(j), image, h, w, shapes, fill),
            )
        )
    return OwnDataset(str(root), "labelme", classes, ignore_for(len(classes)), samples)


class _LabelmeLabel:
    def __init__(self, where: str, image: Path, h: int, w: int, shapes: list, fill: int) -> None:
        self.where, self.image, self.h, self.w, self.shapes, self.fill = where, image, h, w, shapes, fill

    def read(self) -> np.ndarray:
        h, w = self.h, self.w
        if not (h and w):
            from PIL import Image

            with Image.open(self.image) as img:
                w, h = img.size
        return ShapeLabel(self.where, h, w, self.shapes, self.fill, offset=0.0).read()


# -- CVAT "Segmentation mask 1.1" ---------------------------------------------------------------------------
def read_cvat(root: Path, background: str | None = None) -> OwnDataset:
    """CVAT's Segmentation mask 1.1 export: ``labelmap.txt`` (``name:r,g,b:parts:actions``),
    ``SegmentationClass/*.png`` (colours) and the images in ``JPEGImages/`` (export with images).
    The ``background`` entry is unannotated (ignore) unless ``background`` names a class for it."""
    colors: dict[tuple[int, int, int], str] = {}
    for n, line in enumerate((root / "labelmap.txt").read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        try:
            rgb = tuple(int(v) for v in fields[1].split(","))
            assert len(rgb) == 3
        except (IndexError, ValueError, AssertionError):
            raise FormatError(f"{root / 'labelmap.txt'}: line {n} is not 'name:r,g,b::'") from None
        colors[rgb] = fields[0].strip()  # type: ignore[index]
    names = [n for n in colors.values() if n != "background"]
    classes, fill = _with_background(names, background)
    ignore = ignore_for(len(classes))
    ids = {
        rgb: (classes.index(n) if n in classes else (fill if n == "background" else ignore))
        for rgb, n in colors.items()
    }
    images = _images_under(root / "JPEGImages") if (root / "JPEGImages").is_dir() else {}
    samples = []
    for key, mask in _images_under(root / "SegmentationClass").items():
        if key not in images:
            raise FormatError(
                f"{mask}: no image {key}.* in {root / 'JPEGImages'}; export from CVAT with 'Save images' on, or put "
                "the images there"
            )
        samples.append(Sample(key, str(images[key]), ColorLabel(str(mask), ids, ignore)))
    return OwnDataset(str(root), "cvat", classes, ignore, samples)


# -- Hugging Face datasets ------------------------------------------------------------------------------------
_HF_IMAGE = ("image", "img", "pixel_values")
_HF_LABEL = ("label", "annotation", "mask", "semantic_map", "segmentation_mask", "gt", "labels")


def _hf_load(path: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise FormatError(f"{path}: reading a Hugging Face dataset needs `pip install datasets`") from None
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    try:  # a name already in the local cache; nothing is downloaded
        datasets.config.HF_HUB_OFFLINE = True
        return datasets.load_dataset(path)
    except Exception as e:  # offline misses raise several types
        raise FormatError(
            f"{path}: not a local folder and not a dataset in the local Hugging Face cache ({type(e).__name__}); "
            "download it first (datasets.load_dataset) or save it with save_to_disk and pass the folder"
        ) from None


def _hf_classes(path: str, table: Any, classes: list[str] | None) -> list[str]:
    if classes:
        return list(classes)
    for name in ("classes.txt", "id2label.json"):
        f = Path(path) / name
        if f.is_file():
            if name.endswith(".txt"):
                return read_class_lines(str(f))
            mapping = _load_json(f)
            return [str(mapping[str(i)]) for i in range(len(mapping))]
    raise FormatError(
        f"{path}: the dataset does not name its classes; put classes.txt (one name per line, line order = "
        "label id) or id2label.json in its folder, or pass --classes FILE"
    )


def read_hf(path: str, background: str | None = None, classes: list[str] | None = None) -> OwnDataset:
    """A ``datasets`` Dataset or DatasetDict (``save_to_disk`` folder or a name in the local cache) with an
    image column and a label column of class-id maps; its train/validation splits are kept."""
    obj = _hf_load(path)
    parts = dict(obj) if hasattr(obj, "keys") else {"train": obj}
    first = next(iter(parts.values()))
    image_col = next((c for c in _HF_IMAGE if c in first.column_names), None)
    label_col = next((c for c in _HF_LABEL if c in first.column_names), None)
    if image_col is None or label_col is None:
        raise FormatError(
            f"{path}: needs an image column ({'/'.join(_HF_IMAGE)}) and a label column ({'/'.join(_HF_LABEL)}); "
            f"it has {first.column_names}"
        )
    names = _hf_classes(path, first, classes)
    if background is not None:
        logger.warning("a dataset's label maps name every pixel already: --background is not used")
    samples, splits = [], {}
    for split, table in parts.items():
        raw = table.cast_column(image_col, _no_decode(table, image_col))
        keys = []
        for i in range(len(table)):
            key = f"{split}/{i:06d}"
            samples.append(
                Sample(
                    key,
                    None,
                    ArrayLabel(f"{path} [{split}][{i}].{label_col}", _row_getter(table, i, label_col), len(names)),
                    load_image=_row_getter(raw, i, image_col, decode_image_value),
                )
            )
            keys.append(key)
        splits["val" if split in ("validation", "val", "test") and "val" not in splits else split] = keys
    ds = OwnDataset(str(path), "hf", names, ignore_for(len(names)), samples)
    ds.splits = {"train": splits["train"], "val": splits["val"]} if {"train", "val"} <= set(splits) else None
    return ds


def _no_decode(table: Any, column: str) -> Any:
    from datasets import Image as HFImage

    feature = table.features[column]
    return HFImage(decode=False) if isinstance(feature, HFImage) else feature


def _row_getter(table: Any, i: int, column: str, convert: Callable[[Any], Any] | None = None) -> Callable[[], Any]:
    def get() -> Any:
        value = table[i][column]
        return convert(value) if convert else value

    return get


# -- san's own manifest (what `san train --data` writes) ---------------------------------------------------
def read_manifest(path: Path) -> OwnDataset:
    """``dataset.json`` written by :func:`san.data.own.prepare.prepare_data`: classes, ignore value and the
    train/val samples (paths relative to the JSON's folder unless absolute)."""
    path = path / MANIFEST if path.is_dir() else path
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != "san-dataset":
        raise FormatError(f'{path}: not a san dataset manifest (no "format": "san-dataset")')
    base = path.parent
    samples, splits = [], {}
    for split in ("train", "val"):
        keys = []
        for rec in data.get(split, []):
            key = f"{split}/{rec['key']}"
            label = LabelFile(str(base / rec["label"]), len(data["classes"]))
            samples.append(Sample(key, str(base / rec["image"]), label))
            keys.append(key)
        splits[split] = keys
    ds = OwnDataset(str(path), "san", list(data["classes"]), int(data["ignore_label"]), samples, splits)
    return ds


def read_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    background: str | None = None,
    classes: list[str] | None = None,
) -> OwnDataset:
    """Read a dataset in any supported format (detected from its files unless ``format`` is given).

    ``background``: the class name of unannotated pixels (else they are ignored); ``classes``: the
    class names of a Hugging Face dataset that does not carry them."""
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    p = Path(path)
    if fmt == "hf":
        return read_hf(str(path), background, classes)
    if not p.exists():
        raise FormatError(f"{path}: no such file or folder")
    if fmt == "san":
        return read_manifest(p)
    if fmt in ("coco", "coco-panoptic"):
        json_path = p if p.is_file() else _coco_json_in(p)
        if json_path is None:
            raise FormatError(f"{p}: no single COCO JSON in the folder or its annotations/; pass the JSON file")
        return (read_coco if fmt == "coco" else read_coco_panoptic)(json_path, background)
    if fmt == "yolo":
        return read_yolo(p, background)
    if not p.is_dir():
        raise FormatError(f"{p}: the {fmt} format is a folder")
    return {"folder": read_folder, "labelme": read_labelme, "cvat": read_cvat}[fmt](p, background)
