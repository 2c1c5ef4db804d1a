"""COCO readers: instance/stuff JSON (polygons, RLE) and panoptic (PNG + JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import FormatError, OwnDataset, PanopticLabel, Sample, ShapeLabel, ignore_for
from .common import is_coco, load_json, with_background

__all__ = ["read_coco", "read_coco_panoptic"]


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
    data = load_json(json_path)
    if not is_coco(data):
        raise FormatError(f"{json_path}: not a COCO JSON (needs images, annotations and categories)")
    cat_index = _categories(data, json_path)
    classes, fill = with_background([str(c["name"]) for c in data["categories"]], background)
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
    data = load_json(json_path)
    cat_index = _categories(data, json_path)
    classes, fill = with_background([str(c["name"]) for c in data["categories"]], background)
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
