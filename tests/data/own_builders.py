"""Small datasets written in each real annotation format, with their label maps computed independently.

Every builder writes the same kind of scene: a few photos-like images of different sizes, each with
random star-shaped polygons of the classes. The expected label map of each image is rasterised here
by matplotlib's point-in-path test at the pixel centres the format's coordinates put them (COCO and
YOLO: ``col + 0.5``; labelme: ``col``), painted in the format's order, unannotated pixels 255: an
algorithm independent of ``san.data.own.shapes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.path import Path as MplPath
from PIL import Image

CLASSES = ["crack", "rust", "wet paint"]
SIZES = [(40, 48), (36, 52), (44, 40), (40, 48), (38, 46)]  # (height, width) per image
COLORS = {0: (220, 40, 40), 1: (40, 200, 60), 2: (30, 60, 220)}  # CVAT / palette colours of the classes
IGNORE = 255


def star(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``[P, 2]`` (x, y) points of a random star-shaped polygon inside an ``h x w`` image."""
    n = int(rng.integers(3, 9))
    c = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(3, 0.45 * min(h, w), n)
    return np.stack([c[0] + r * np.cos(angles), c[1] + r * np.sin(angles)], axis=1)


def raster(poly: np.ndarray, h: int, w: int, offset: float) -> np.ndarray:
    """Pixels whose centre ``(col + offset, row + offset)`` matplotlib finds inside ``poly``."""
    yy, xx = np.mgrid[:h, :w]
    pts = np.stack([xx.ravel() + offset, yy.ravel() + offset], axis=1)
    return MplPath(poly).contains_points(pts).reshape(h, w)


def scene(seed: int) -> list[tuple[int, int, list[tuple[int, np.ndarray]]]]:
    """Per image: height, width and its polygons ``(class id, points)`` (each class at least once overall)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(SIZES):
        classes = [i % 3, (i + 1) % 3] if i % 2 == 0 else [i % 3]
        out.append((h, w, [(c, star(rng, h, w)) for c in classes]))
    return out


def paint(h: int, w: int, polys: list[tuple[int, np.ndarray]], offset: float) -> np.ndarray:
    label = np.full((h, w), IGNORE, dtype=np.int64)
    for cid, poly in polys:
        label[raster(poly, h, w, offset)] = cid
    return label


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# -- the formats ------------------------------------------------------------------------------------------
def write_folder(root: Path, seed: int = 0, coloured: bool = False) -> dict[str, np.ndarray]:
    """images/*.jpg, masks/*.png (class ids, 255 unlabelled), classes.txt; ``coloured``: each class painted
    in its colour in the photo (something a model can learn in a few steps)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    expected = {}
    for i, (h, w, polys) in enumerate(scene(seed)):
        label = paint(h, w, polys, 0.5)
        rgb = photo(h, w, i)
        if coloured:
            for c, col in COLORS.items():
                rgb[label == c] = (0.8 * np.asarray(col) + 0.2 * rgb[label == c]).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"img{i}.jpg")
        Image.fromarray(label.astype(np.uint8)).save(root / "masks" / f"img{i}.png")
        expected[f"img{i}"] = label
    return expected


def write_coco(root: Path, seed: int = 0, rle_every: int = 3) -> dict[str, np.ndarray]:
    """A COCO instances JSON in annotations/ with the images in images/: polygons, and every
    ``rle_every``-th annotation as a pycocotools-made RLE (alternately compressed and plain counts)."""
    import pycocotools.mask as mask_utils

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns, expected = [], [], {}
    k = 0
    for i, (h, w, polys) in enumerate(scene(seed)):
        Image.fromarray(photo(h, w, i)).save(root / "images" / f"img{i}.jpg")
        images.append({"id": 10 + i, "file_name": f"img{i}.jpg", "height": h, "width": w})
        shapes = []
        for cid, poly in polys:
            k += 1
            area = shoelace(poly)
            if k % rle_every == 0:
                mask = raster(poly, h, w, 0.5)
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                if k % (2 * rle_every) == 0:
                    seg = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:  # the plain run lengths of crowd regions
                    flat = mask.reshape(-1, order="F")
                    runs, cur, n = [], False, 0
                    for v in flat:
                        if v == cur:
                            n += 1
                        else:
                            runs.append(n)
                            cur, n = v, 1
                    runs.append(n)
                    seg = {"size": [h, w], "counts": runs}
                anns.append(
                    {
                        "id": k,
                        "image_id": 10 + i,
                        "category_id": 5 + cid,
                        "segmentation": seg,
                        "area": area,
                        "iscrowd": 1,
                    }
                )
            else:
                anns.append(
                    {
                        "id": k,
                        "image_id": 10 + i,
                        "category_id": 5 + cid,
                        "segmentation": [poly.ravel().tolist()],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
            shapes.append((area, cid, poly))
        label = np.full((h, w), IGNORE, dtype=np.int64)
        for _, cid, poly in sorted(shapes, key=lambda s: -s[0]):  # the larger first, as the reader paints
            label[raster(poly, h, w, 0.5)] = cid
        expected[f"img{i}"] = label
    cats = [{"id": 5 + c, "name": n, "supercategory": "defect"} for c, n in enumerate(CLASSES)]
    (root / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return expected


def write_coco_panoptic(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """annotations/panoptic_train.json + annotations/panoptic_train/*.png (segment id = R + 256 G + 256² B)."""
    (root / "images").mkdir(parents=True)
    png_dir = root / "annotations" / "panoptic_train"
    png_dir.mkdir(parents=True)
    images, anns, expected = [], [], {}
    for i, (h, w, polys) in enumerate(scene(seed)):
        Image.fromarray(photo(h, w, i)).save(root / "images" / f"img{i}.jpg")
        ids = np.zeros((h, w), dtype=np.int64)
        label = np.full((h, w), IGNORE, dtype=np.int64)
        segments = []
        for j, (cid, poly) in enumerate(polys):
            seg_id = 300 + 70000 * j + i  # uses all three colour channels
            inside = raster(poly, h, w, 0.5)
            ids[inside], label[inside] = seg_id, cid
            segments.append({"id": seg_id, "category_id": 5 + cid})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(png_dir / f"img{i}.png")
        images.append({"id": i, "file_name": f"img{i}.jpg", "height": h, "width": w})
        anns.append({"image_id": i, "file_name": f"img{i}.png", "segments_info": segments})
        expected[f"img{i}"] = label
    cats = [{"id": 5 + c, "name": n, "isthing": 1} for c, n in enumerate(CLASSES)]
    (root / "annotations" / "panoptic_train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return expected


def write_yolo(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """data.yaml + images/{train,val}/*.jpg + labels/{train,val}/*.txt (normalised polygons)."""
    expected = {}
    for i, (h, w, polys) in enumerate(scene(seed)):
        split = "val" if i == len(SIZES) - 1 else "train"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(h, w, i)).save(root / "images" / split / f"img{i}.jpg")
        lines = [f"{cid} " + " ".join(f"{v:.6f}" for v in (poly / [w, h]).ravel()) for cid, poly in polys]
        (root / "labels" / split / f"img{i}.txt").write_text("\n".join(lines) + "\n")
        rounded = [(cid, np.round(poly / [w, h], 6) * [w, h]) for cid, poly in polys]
        expected[f"{split}/img{i}"] = paint(h, w, rounded, 0.5)
    names = "\n".join(f"  {c}: {n}" for c, n in enumerate(CLASSES))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return expected


def write_labelme(root: Path, seed: int = 0, classes_txt: bool = True) -> dict[str, np.ndarray]:
    """A labelme folder: *.jpg with *.json beside each (labelme 5's schema), optional classes.txt."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i, (h, w, polys) in enumerate(scene(seed)):
        Image.fromarray(photo(h, w, i)).save(root / f"img{i}.jpg")
        shapes = [
            {
                "label": CLASSES[c],
                "points": p.tolist(),
                "group_id": None,
                "description": "",
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for c, p in polys
        ]
        doc = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"img{i}.jpg",
            "imageData": None,
            "imageHeight": h,
            "imageWidth": w,
        }
        (root / f"img{i}.json").write_text(json.dumps(doc))
        expected[f"img{i}"] = paint(h, w, polys, 0.0)
    if classes_txt:
        (root / "classes.txt").write_text("__ignore__\n_background_\n" + "\n".join(CLASSES) + "\n")
    return expected


def write_cvat(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """CVAT's Segmentation mask 1.1 export: labelmap.txt, SegmentationClass/*.png (colours),
    SegmentationObject/, ImageSets/Segmentation/default.txt and JPEGImages/."""
    for d in ("SegmentationClass", "SegmentationObject", "ImageSets/Segmentation", "JPEGImages"):
        (root / d).mkdir(parents=True)
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    lines += [f"{n}:{','.join(map(str, COLORS[c]))}::" for c, n in enumerate(CLASSES)]
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    expected, names = {}, []
    for i, (h, w, polys) in enumerate(scene(seed)):
        label = paint(h, w, polys, 0.5)
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        for c, col in COLORS.items():
            rgb[label == c] = col
        Image.fromarray(rgb).save(root / "SegmentationClass" / f"img{i}.png")
        Image.fromarray(photo(h, w, i)).save(root / "JPEGImages" / f"img{i}.jpg")
        expected[f"img{i}"] = label
        names.append(f"img{i}")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(names) + "\n")
    return expected


def write_hf(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``datasets.DatasetDict`` (train, validation) with Image columns image/label, saved to disk, and
    classes.txt in its folder."""
    import datasets

    rows: dict[str, dict[str, list]] = {"train": {"image": [], "label": []}, "validation": {"image": [], "label": []}}
    expected = {}
    index = {"train": 0, "validation": 0}
    for i, (h, w, polys) in enumerate(scene(seed)):
        split = "validation" if i >= len(SIZES) - 2 else "train"
        label = paint(h, w, polys, 0.5)
        rows[split]["image"].append(Image.fromarray(photo(h, w, i)))
        rows[split]["label"].append(Image.fromarray(label.astype(np.uint8)))
        expected[f"{split}/{index[split]:06d}"] = label
        index[split] += 1
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in rows.items()})
    dd.save_to_disk(str(root))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return expected


BUILDERS = {
    "folder": write_folder,
    "coco": write_coco,
    "coco-panoptic": write_coco_panoptic,
    "yolo": write_yolo,
    "labelme": write_labelme,
    "cvat": write_cvat,
    "hf": write_hf,
}
