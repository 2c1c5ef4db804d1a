"""`san prepare-data` on synthetic raw files in each dataset's real raw format."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from san.apps.prepare_data import main
from san.assets import read_classes, read_dataset_ids
from san.data.catalog import get_dataset
from san.data.io import read_label
from san.data.prepare import PC59_IDS, PrepareError, prepare, safe_load_index
from san.data.transforms import resize_label


def _jpg(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def test_coco_stuff(tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "datasets"
    # stuffthingmaps hold the 0-based COCO id: 0 person, 11 (id 12) unused, 12 stop sign, 181 the last, 255 unlabeled
    maps = {"a": [[0, 11], [12, 181], [255, 0]], "b": [[11, 255], [255, 11], [11, 11]]}  # b: nothing valid
    for split in ("train2017", "val2017"):
        for name, m in maps.items():
            _jpg(raw / split / f"{name}.jpg", 3, 2)
            _png(raw / "stuffthingmaps" / split / f"{name}.png", np.array(m, np.uint8))
    summary = prepare("coco_stuff", str(raw), str(root), workers=2)
    assert summary["train2017"] == {"written": 1, "empty": 1}
    out = read_label(root / "coco/stuffthingmaps_detectron2/val2017/a.png")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255], [11, 170], [255, 0]]
    assert not (root / "coco/stuffthingmaps_detectron2/val2017/b.png").exists()
    samples = get_dataset("coco_2017_test_stuff_sem_seg").list_samples(root)  # images linked, unlabeled one dropped
    assert [os.path.basename(s["file_name"]) for s in samples] == ["a.jpg"]
    # idempotent: a second run keeps (and verifies) what is there; a damaged output is rewritten
    assert prepare("coco_stuff", str(raw), str(root))["val2017"] == {"kept": 1, "empty": 1}
    _png(root / "coco/stuffthingmaps_detectron2/val2017/a.png", np.full((3, 2), 200, np.uint8))
    assert prepare("coco_stuff", str(raw), str(root))["val2017"]["written"] == 1
    assert read_label(root / "coco/stuffthingmaps_detectron2/val2017/a.png").tolist() == out.tolist()


def test_ade20k_150(tmp_path):
    raw, root = tmp_path / "ADEChallengeData2016", tmp_path / "datasets"
    for split in ("training", "validation"):
        _jpg(raw / "images" / split / "ADE_x.jpg", 2, 3)
        _png(raw / "annotations" / split / "ADE_x.png", np.array([[0, 1, 150], [2, 0, 149]], np.uint8))
    prepare("ade20k_150", str(raw), str(root))
    out = read_label(root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_x.png")
    assert out.tolist() == [[255, 0, 149], [1, 255, 148]]
    assert len(get_dataset("ade20k_sem_seg_train").list_samples(root)) == 1


def _ade_seg(ids: np.ndarray) -> np.ndarray:
    """ADE20K *_seg.png colours for class ids: R = (id // 256) * 10 (+ noise below 10), G = id % 256."""
    r = (ids // 256) * 10 + np.random.default_rng(0).integers(0, 10, ids.shape)
    return np.stack([r, ids % 256, np.full_like(ids, 7)], axis=-1).astype(np.uint8)


def test_ade20k_847(tmp_path):
    raw, root = tmp_path / "raw" / "ADE20K_2021_17_01", tmp_path / "datasets"
    ids = read_dataset_ids("ade20k_847")
    wall, building, other = ids[0], ids[1], 5
    assert other not in ids
    rng = np.random.default_rng(1)
    folders = {"ADE_train_00000001.jpg": "training/home", "ADE_val_00000001.jpg": "validation/street"}
    sizes = {"ADE_train_00000001.jpg": (300, 400), "ADE_val_00000001.jpg": (600, 700)}
    class_maps = {}
    for name, sub in folders.items():
        h, w = sizes[name]
        folder = raw / "images" / "ADE" / sub
        _jpg(folder / name, h, w)
        class_maps[name] = rng.choice([wall, building, other], size=(h, w))
        _png(folder / name.replace(".jpg", "_seg.png"), _ade_seg(class_maps[name]))
    index = {
        "folder": [f"ADE20K_2021_17_01/images/ADE/{s}" for s in folders.values()],
        "filename": list(folders),
        "objectPresence": np.zeros((3, 2), np.int64),
        "objectnames": ["wall", "building", "x"],
    }
    with open(raw / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    prepare("ade20k_847", str(raw), str(root))
    base = root / "ADE20K_2021_17_01"
    small = read_label(base / "annotations_detectron2/training/ADE_train_00000001.tif")
    expected = np.select(
        [class_maps["ADE_train_00000001.jpg"] == wall, class_maps["ADE_train_00000001.jpg"] == building], [0, 1], 65535
    )
    assert small.dtype == np.uint16 and np.array_equal(small, expected)
    big = read_label(base / "annotations_detectron2/validation/ADE_val_00000001.tif")
    assert big.shape == (512, 597)  # short side 600 > 512 -> 512, long side round(700 / 600 * 512)
    full = np.select(
        [class_maps["ADE_val_00000001.jpg"] == wall, class_maps["ADE_val_00000001.jpg"] == building], [0, 1], 65535
    ).astype(np.uint16)
    assert np.array_equal(big, resize_label(full, 512, 597))  # nearest
    with Image.open(base / "images_detectron2/validation/ADE_val_00000001.jpg") as img:
        assert img.size == (597, 512)
    assert len(get_dataset("ade20k_full_sem_seg_val").list_samples(root)) == 1


@pytest.mark.parametrize(
    "size, want",
    [
        ((400, 900), (400, 900)),  # short side 400 <= 512: kept, however long the long side
        ((900, 400), (900, 400)),
        ((512, 2000), (512, 2000)),  # exactly 512: kept
        ((513, 700), (512, round(700 / 513 * 512))),  # short side just over: short side -> 512
        ((700, 600), (round(700 / 600 * 512), 512)),  # portrait: the width is the short side
        ((600, 600), (512, 512)),
    ],
)
def test_ade20k_847_resizes_by_the_short_side_only(size, want):
    from san.data.prepare.ade20k import resize_to_512

    h, w = size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.random.default_rng(1).integers(0, 847, (h, w)).astype(np.uint16)
    out, lab = resize_to_512(image, label)
    assert out.shape == (*want, 3) and lab.shape == want and lab.dtype == np.uint16
    if want == size:
        assert out is image and lab is label  # untouched, not resampled
    else:
        assert np.array_equal(lab, resize_label(label, *want))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch hacked",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_index_unpickler_reads_numpy_pickles(tmp_path, protocol):
    index = {"folder": ["f"], "filename": ["ADE_train_1.jpg"], "objectPresence": np.arange(6).reshape(2, 3)}
    data = pickle.dumps(index, protocol=protocol)
    if protocol == 2:  # as NumPy 1.x wrote it (the ADE20K 2021 index predates NumPy 2)
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "i.pkl").write_bytes(data)
    loaded = safe_load_index(str(tmp_path / "i.pkl"))
    assert loaded["filename"] == ["ADE_train_1.jpg"] and loaded["objectPresence"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_index_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pkl", "wb") as f:
        pickle.dump({"folder": [], "filename": [], "x": _Evil()}, f)
    with pytest.raises(PrepareError, match="refusing to load .*system"):
        safe_load_index("evil.pkl")
    assert not os.path.exists("hacked")


def _pcontext_raw(raw):
    label_maps = {"2008_000002": [[0, 2, 9], [458, 1, 459]], "2008_000003": [[2, 2, 0], [0, 115, 104]]}
    for i, m in label_maps.items():
        _jpg(raw / "JPEGImages" / f"{i}.jpg", 2, 3)
        os.makedirs(raw / "trainval", exist_ok=True)
        scipy.io.savemat(raw / "trainval" / f"{i}.mat", {"LabelMap": np.array(m, np.uint16)})
    images = [{"file_name": "2008_000002.jpg", "phase": "train"}, {"file_name": "2008_000003.jpg", "phase": "val"}]
    (raw / "trainval_merged.json").write_text(json.dumps({"images": images}))


def test_pcontext_59_and_459(tmp_path):
    raw, root = tmp_path / "VOC2010", tmp_path / "datasets"
    _pcontext_raw(raw)
    prepare("pcontext_59", str(raw), str(root))
    prepare("pcontext_459", str(raw), str(root))
    pc59 = read_label(root / "pcontext/train/label/2008_000002.png")
    assert pc59.dtype == np.uint8 and pc59.tolist() == [[255, 0, 1], [58, 255, 255]]  # 1 "accordion" is not in 59
    assert read_label(root / "pcontext/val/label/2008_000003.png").tolist() == [[0, 0, 255], [255, 23, 20]]
    pc459 = read_label(root / "pcontext_full/train/label/2008_000002.tif")
    assert pc459.dtype == np.uint16 and pc459.tolist() == [[65535, 1, 8], [457, 0, 458]]
    assert len(get_dataset("pcontext_full_sem_seg_val").list_samples(root)) == 1
    assert len(get_dataset("pcontext_sem_seg_train").list_samples(root)) == 1
    # the 59 ids name the 59 classes (the 459 list calls the dining table "table")
    names459 = read_classes("pcontext_459")
    assert [names459[i - 1] for i in PC59_IDS] == [
        n if n != "diningtable" else "table" for n in read_classes("pcontext_59")
    ]


def test_voc_and_the_command_line(tmp_path, capsys):
    raw, root = tmp_path / "VOC2012", tmp_path / "datasets"
    for i in ("x1", "x2", "x3", "x4"):
        _jpg(raw / "JPEGImages" / f"{i}.jpg", 2, 2)
    _png(raw / "SegmentationClassAug" / "x1.png", np.array([[0, 1], [20, 255]], np.uint8))
    _png(raw / "SegmentationClassAug" / "x2.png", np.array([[0, 0], [255, 0]], np.uint8))  # background only
    _png(raw / "SegmentationClassAug" / "x3.png", np.array([[15, 15], [15, 0]], np.uint8))
    (raw / "train.txt").write_text("x1\nx2\n")
    (raw / "val.txt").write_text("x3\n")
    argv = ["prepare-data", "voc", "--raw", str(raw), "--root", str(root), "--workers", "0"]
    r = subprocess.run([sys.executable, "-m", "san", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said = [line for line in (r.stdout + r.stderr).splitlines() if "train" in line]
    assert said == ["voc train: 1 written, 0 already there (verified), 1 skipped (no valid pixel)"], said  # once
    assert read_label(root / "VOC2012/annotations_detectron2/train/x1.png").tolist() == [[255, 0], [19, 255]]
    assert read_label(root / "VOC2012/annotations_detectron2/val/x3.png").tolist() == [[14, 14], [14, 255]]
    samples = get_dataset("voc_sem_seg_train").list_samples(root)  # JPEGImages holds every image: intersection
    assert [os.path.basename(s["file_name"]) for s in samples] == ["x1.jpg"]
    os.remove(raw / "SegmentationClassAug" / "x3.png")
    assert main(["voc", "--raw", str(raw), "--root", str(root), "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "annotation" in err and "x3.png is missing" in err
    assert main(["pcontext_59", "--raw", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
