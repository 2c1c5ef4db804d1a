"""Polygon readers: YOLO segmentation (``data.yaml`` + normalised polygon txt files) and labelme folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FormatError, OwnDataset, Sample, ShapeLabel, ignore_for, read_class_lines
from .common import images_under, is_labelme, load_json, with_background
from .shapes import circle_points, rectangle_points

__all__ = ["read_labelme", "read_yolo"]


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
    classes, fill = with_background(names, background)
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
                files = images_under(folder)
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
    files = sorted(j for j in root.rglob("*.json") if is_labelme(j))
    if not files:
        raise FormatError(f"{root}: no labelme JSON files (with 'shapes' and 'imagePath')")
    docs = [(j, load_json(j)) for j in files]
    listed = next((root / n for n in ("classes.txt", "labels.txt") if (root / n).is_file()), None)
    if listed is not None:
        names = [n for n in read_class_lines(str(listed)) if n not in ("__ignore__", "_background_")]
    else:
        names = sorted({str(s["label"]) for _, d in docs for s in d.get("shapes", [])})
        if not names:
            raise FormatError(f"{root}: the labelme files hold no shapes")
    classes, fill = with_background(names, background)
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
