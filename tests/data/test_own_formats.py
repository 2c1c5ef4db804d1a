"""Your own data in every format: each converts to the label maps an independent rasterisation gives,
the prepared folder reads back the same, and each format's typical breakage is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from san.data.own import FormatError, check_dataset, detect_format, make_split, prepare_data, read_dataset
from san.data.own.shapes import polygon_mask

from .own_builders import BUILDERS, CLASSES, IGNORE, raster, star, write_coco, write_folder, write_labelme, write_yolo

# where each builder's data is passed: the folder, or the JSON / YAML file inside it
_ENTRY = {"coco": "annotations/instances_train.json", "coco-panoptic": "annotations/panoptic_train.json"}


def _built(tmp_path: Path, fmt: str, **kw) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / fmt
    expected = BUILDERS[fmt](root, **kw)
    return root / _ENTRY.get(fmt, ""), expected


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_each_format_reads_to_the_independent_label_maps(tmp_path, fmt):
    path, expected = _built(tmp_path, fmt)
    assert detect_format(path) == fmt
    assert detect_format(path.parent if fmt in _ENTRY else path) == fmt  # the folder holding it, too
    ds = read_dataset(path)
    assert ds.format == fmt and ds.classes == CLASSES and ds.ignore_label == IGNORE
    got = {s.key: s.label.read() for s in ds.samples}
    assert sorted(got) == sorted(expected)
    for key, label in expected.items():
        np.testing.assert_array_equal(got[key], label, err_msg=f"{fmt}: {key}")
    assert any(len(np.unique(v[v != IGNORE])) > 1 for v in got.values())  # several classes in one map


@pytest.mark.parametrize("fmt", ["coco", "yolo", "hf", "labelme"])
def test_the_prepared_folder_reads_back_the_same_labels_and_records_its_split(tmp_path, fmt):
    path, expected = _built(tmp_path, fmt)
    manifest = prepare_data(read_dataset(path), tmp_path / "run", seed=3, progress=False)
    data = tmp_path / "run" / "data"
    again = read_dataset(data)  # what san writes, san reads: the folder is a --data
    assert again.format == "san" and again.classes == CLASSES
    for s in again.samples:
        split, key = s.key.split("/", 1)
        np.testing.assert_array_equal(s.label.read(), expected[key])
        assert np.asarray(Image.open(s.image)).shape[:2] == expected[key].shape
    split = json.loads((data / "split.json").read_text())
    assert split["seed"] == 3 and sorted(split["train"] + split["val"]) == sorted(expected)
    if fmt in ("yolo", "hf"):  # the data's own splits are kept
        assert split["from"] == "the data's own splits"
        assert all(k.startswith(("val/", "validation/")) for k in split["val"])
    else:
        assert (split["train"], split["val"]) == make_split(sorted(expected), 0.2, 3)
    assert manifest["classes"] == (data / "classes.txt").read_text().split("\n")[:-1]


def test_seeded_split_is_repeatable_disjoint_and_sized():
    keys = [f"k{i:02d}" for i in range(23)]
    train, val = make_split(keys, 0.2, seed=5)
    assert make_split(list(reversed(keys)), 0.2, seed=5) == (train, val)  # the input order does not matter
    assert len(val) == round(0.2 * 23) and not set(train) & set(val) and sorted(train + val) == keys
    assert make_split(keys, 0.2, seed=6) != (train, val)
    assert make_split(["only"], 0.2, 0) == (["only"], ["only"])  # one image: trained and validated on


def test_check_reports_each_class_pixels_and_images_from_the_labels(tmp_path):
    expected = write_folder(tmp_path / "d")
    report = check_dataset(read_dataset(tmp_path / "d"), progress=False)
    labels = list(expected.values())
    ref_pixels = sum(np.bincount(v[v != IGNORE], minlength=3) for v in labels)
    ref_images = sum((np.bincount(v[v != IGNORE], minlength=3) > 0).astype(int) for v in labels)
    np.testing.assert_array_equal(report.pixels, ref_pixels)
    np.testing.assert_array_equal(report.images, ref_images)
    assert report.ignored_pixels == sum(int((v == IGNORE).sum()) for v in labels)
    shares = [c["pixel_share"] for c in report.to_dict()["classes"]]
    assert shares == pytest.approx(list(ref_pixels / ref_pixels.sum()))


def test_survivable_findings_are_warnings_with_counts(tmp_path):
    root = tmp_path / "d"
    write_folder(root)
    (root / "classes.txt").write_text("\n".join([*CLASSES, "mould"]) + "\n")  # a class without pixels
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(root / "masks" / "img0.png")  # no labelled pixel
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "images" / "extra.jpg")  # no mask
    ds = read_dataset(root)
    report = check_dataset(ds, progress=False)
    text = " | ".join(report.warnings)
    assert "1 class(es) have no pixel" in text and "mould" in text
    assert "1 image(s) have no labelled pixel (e.g. img0)" in text
    assert "1 image(s) have no annotation file" in text


def test_coco_rle_decodes_as_pycocotools_and_polygons_agree_with_it(tmp_path):
    import pycocotools.mask as mask_utils

    from san.data.rle import rle_decode

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((17, 23)) > 0.6
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"]}), mask)
    # polygons: san's rule (pixel centre inside) and pycocotools' own rasteriser differ only along edges
    differ = total = 0
    for _ in range(30):
        poly = star(rng, 50, 60)
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly.ravel().tolist()], 50, 60))).astype(bool)
        ours = polygon_mask(poly, 50, 60, 0.5)
        differ, total = differ + int((ours != ref).sum()), total + int(ref.sum())
    assert differ / total < 0.03, (differ, total)


def test_polygon_rule_matches_point_in_path_for_both_conventions():
    rng = np.random.default_rng(2)
    for offset in (0.5, 0.0):
        for _ in range(30):
            poly = star(rng, 30, 40)
            np.testing.assert_array_equal(polygon_mask(poly, 30, 40, offset), raster(poly, 30, 40, offset))


# -- bad input: one clear error naming the file -----------------------------------------------------------
def _coco_json(tmp_path: Path) -> tuple[Path, dict]:
    write_coco(tmp_path / "c", rle_every=100)
    path = tmp_path / "c" / "annotations" / "instances_train.json"
    return path, json.loads(path.read_text())


def test_a_coco_polygon_with_fewer_than_three_points_is_refused(tmp_path):
    path, data = _coco_json(tmp_path)
    data["annotations"][2]["segmentation"] = [[1.0, 2.0, 10.0, 3.0]]
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"instances_train.json: annotation 3 \(image 11\) has a polygon with 2 "):
        read_dataset(path)


def test_a_category_id_missing_from_the_categories_is_refused(tmp_path):
    path, data = _coco_json(tmp_path)
    data["annotations"][0]["category_id"] = 42
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"has category_id 42, which is not in 'categories' \(ids 5, 6, 7\)"):
        read_dataset(path)


def test_an_image_the_json_names_but_that_is_missing_is_refused(tmp_path):
    path, _ = _coco_json(tmp_path)
    (tmp_path / "c" / "images" / "img3.jpg").unlink()
    with pytest.raises(FormatError, match=r"img3.jpg"):
        check_dataset(read_dataset(path), progress=False)
    (tmp_path / "c" / "images" / "img0.jpg").unlink()  # the first image: no image folder found at all
    with pytest.raises(FormatError, match=r"the image img0.jpg it names is missing"):
        read_dataset(path)


def test_a_colour_mask_instead_of_ids_is_refused(tmp_path):
    root = tmp_path / "d"
    write_folder(root)
    Image.fromarray(np.zeros((38, 46, 3), np.uint8)).save(root / "masks" / "img4.png")
    with pytest.raises(FormatError, match=r"img4.png: the mask is an RGB image \(colours\) but masks must hold class"):
        check_dataset(read_dataset(root), progress=False)


def test_a_16_bit_mask_with_ids_above_the_class_count_is_refused(tmp_path):
    root = tmp_path / "d"
    write_folder(root)
    mask = np.zeros((40, 48), np.uint16)
    mask[5, 5] = 300
    Image.fromarray(mask).save(root / "masks" / "img3.png")
    with pytest.raises(FormatError, match=r"img3.png: holds id 300, but there are 3 classes \(ids 0..2, 255 ="):
        check_dataset(read_dataset(root), progress=False)


def test_a_labelme_label_missing_from_classes_txt_is_refused(tmp_path):
    root = tmp_path / "l"
    write_labelme(root)
    doc = json.loads((root / "img2.json").read_text())
    doc["shapes"][0]["label"] = "dent"
    (root / "img2.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"img2.json: shape 0 has label 'dent', which is not in classes.txt"):
        read_dataset(root)


def test_other_breakage_names_the_file(tmp_path):
    root = tmp_path / "d"
    write_folder(root)
    (root / "classes.txt").write_text("crack\nrust\nCrack\n")
    with pytest.raises(FormatError, match=r"class name 'Crack' appears twice"):
        check_dataset(read_dataset(root), progress=False)
    (root / "classes.txt").write_text("crack\n\nrust\n")
    with pytest.raises(FormatError, match=r"classes.txt: line 2 is empty"):
        read_dataset(root)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img1.png")
    with pytest.raises(FormatError, match=r"img1.png: the mask is 10x10 but its image .*img1.jpg is 52x36"):
        check_dataset(read_dataset(root), progress=False)
    y = tmp_path / "y"
    write_yolo(y)
    (y / "labels" / "train" / "img1.txt").write_text("7 0.1 0.1 0.5 0.1 0.3 0.6\n")
    with pytest.raises(FormatError, match=r"img1.txt: line 1 has class 7, but data.yaml names 3 classes"):
        check_dataset(read_dataset(y), progress=False)
    with pytest.raises(FormatError, match="cannot tell the dataset format"):
        detect_format(tmp_path)
