"""``san train --data``: one command from your own data to a run folder full of pictures, and everything it
writes plugs back into san (``--weights OUTPUT_DIR``, the Hub folder, the checkpoint, ``--dataset-vocabulary``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import san
from san.config import ConfigError
from san.data.io import read_label
from san.engine.finetune import finetune, small_data_schedule

from ..data.own_builders import BUILDERS, CLASSES, IGNORE, raster, star, write_coco, write_folder

SMALL = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.CROP.SIZE",
    "(64,64)",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.DEVICE",
    "cpu",
]
_ENTRY = {"coco": "annotations/instances_train.json", "coco-panoptic": "annotations/panoptic_train.json"}


def _san(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "san", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def _golden_folder(root: Path, golden: dict) -> list[str]:
    """A folder dataset of the golden photos (and their mirror images) with the golden vocabulary as its
    classes and random polygons as labels: the golden model labels these photos with several classes."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    classes = list(golden["vocabulary"])
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    photos = [img.permute(1, 2, 0).numpy().astype(np.uint8) for img in golden["images"]]
    for i, rgb in enumerate([*photos, *[p[:, ::-1] for p in photos], photos[0][::-1]]):
        h, w = rgb.shape[:2]
        label = np.full((h, w), IGNORE, np.uint8)
        for c in rng.choice(len(classes), 3, replace=False):
            label[raster(star(rng, h, w), h, w, 0.5)] = c
        Image.fromarray(np.ascontiguousarray(rgb)).save(root / "images" / f"img{i}.png")
        Image.fromarray(label).save(root / "masks" / f"img{i}.png")
    return classes


@pytest.fixture(scope="module")
def run(tmp_path_factory, golden_v2, golden_v2_model):
    """The golden v2 model fine-tuned for 3 iterations on a folder dataset by the command line."""
    tmp = tmp_path_factory.mktemp("finetune")
    classes = _golden_folder(tmp / "data", golden_v2)
    golden_v2_model.save_pretrained(tmp / "start")
    # a small learning rate: three steps keep the golden model's several classes per photo
    sizes = [*SMALL, "INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000", "SOLVER.BASE_LR", "1e-6"]
    r = _san("train", "--data", "data", "--output", "run", "--weights", "start", "--iters", "3", *sizes, cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, r, classes


def test_the_data_table_is_said_before_training(run):
    tmp, r, classes = run
    head = r.stdout[: r.stdout.index("command line")]
    assert "folder data, 5 classes, 4 training and 1 validation images (seeded split (seed 0" in head
    assert "class          pixels %  images" in head and "traffic light" in head


def test_the_run_folder_holds_each_picture_and_they_are_what_they_claim(run):
    tmp, _, classes = run
    out = tmp / "run"
    pictures = [
        "train_batch0.jpg",
        "train_batch1.jpg",
        "curves.png",
        "val_predictions.jpg",
        "zero_shot_vs_finetuned.png",
        "inference/data_val_iou.png",
        "inference/data_val_confusion.png",
        "inference_start/data_val_confusion.png",
    ]
    for name in pictures:
        with Image.open(out / name) as img:
            img.verify()
    # the confusion matrix counts exactly the validation pixels with a label, read from the source masks
    split = json.loads((out / "data" / "split.json").read_text())
    gt = [read_label(tmp / "data" / "masks" / f"{k}.png") for k in split["val"]]
    conf = np.load(out / "inference" / "data_val_confusion.npy")
    assert conf.shape == (5, 5) and conf.sum() == sum(int((g != IGNORE).sum()) for g in gt)
    np.testing.assert_array_equal(conf.sum(axis=1), sum(np.bincount(g[g != IGNORE], minlength=5) for g in gt))
    # ... and gives the IoU the results report
    res = json.loads((out / "inference" / "data_val.json").read_text())["sem_seg"]
    for c, name in enumerate(classes):
        union = conf[c].sum() + conf[:, c].sum() - conf[c, c]
        if union:
            assert res[f"IoU-{name}"] == pytest.approx(100.0 * conf[c, c] / union, abs=1e-9)
    # every evaluation is on the mIoU curve's source
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [e["iteration"] for e in lines if "data_val/sem_seg/mIoU" in e] == [0, 1, 2]


def test_the_zero_shot_row_is_an_evaluation_of_the_starting_weights(run, tmp_path):
    from san.engine.inference import evaluate

    tmp, _, classes = run
    table = json.loads((tmp / "run" / "zero_shot_vs_finetuned.json").read_text())
    cfg = san.get_cfg()
    cfg.merge_from_file(str(tmp / "run" / "config.yaml"))
    cfg.OUTPUT_DIR = str(tmp_path)
    start = san.SAN.from_pretrained(tmp / "start")
    ours = evaluate(start, cfg, output_dir=str(tmp_path))["data_val"]["sem_seg"]
    assert table["overall"]["mIoU"]["zero_shot"] == pytest.approx(ours["mIoU"], abs=1e-9)
    for name in classes:
        want = ours[f"IoU-{name}"]
        got = table["per_class_iou"][name]["zero_shot"]
        assert (got is None and not np.isfinite(want)) or got == pytest.approx(want, abs=1e-9)
    end = json.loads((tmp / "run" / "inference" / "data_val.json").read_text())["sem_seg"]
    assert table["overall"]["mIoU"]["fine_tuned"] == pytest.approx(end["mIoU"], abs=1e-9)
    assert "| mIoU |" in (tmp / "run" / "zero_shot_vs_finetuned.md").read_text()


def test_a_trained_output_dir_predicts_with_its_classes_as_from_pretrained(run):
    tmp, _, classes = run
    image = tmp / "data" / "images" / "img0.png"
    r = _san("predict", "-i", str(image), "--weights", "run", "--output", "pred", "--device", "cpu", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert f"no vocabulary given: using the model's 5 training classes ({', '.join(classes)})" in r.stdout
    labels = np.asarray(Image.open(tmp / "pred" / "img0_labels.png"))
    reference = san.SANPredictor.from_pretrained(tmp / "run", device="cpu").predict(str(image))
    assert reference.class_names == classes
    np.testing.assert_array_equal(labels, reference.labels)
    assert len(np.unique(labels)) > 1
    # the Hub folder inside it, the final checkpoint (its config beside it) and an exported folder: same model
    r = _san("export", "hub", "--weights", "run", "--output", "exported", cwd=tmp)
    assert r.returncode == 0, r.stderr
    for weights in ("run/pretrained", "run/model_final.pth", "exported"):
        other = san.SANPredictor.from_pretrained(tmp / weights, device="cpu")
        assert other.class_names == classes, weights
        np.testing.assert_array_equal(other.predict(str(image)).labels, reference.labels, err_msg=weights)


def test_index_and_the_dataset_vocabulary_take_what_train_wrote(run, capsys):
    from san.apps import index
    from san.inference.vocabulary import build_vocabulary

    tmp, _, classes = run
    code = index.main(
        [
            str(tmp / "data" / "images"),
            "--output",
            str(tmp / "photos.index"),
            "--weights",
            str(tmp / "run"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp / "photos.index").exists()
    for source in (tmp / "data", tmp / "run", tmp / "run" / "data"):
        assert build_vocabulary(dataset=str(source)).user == tuple(classes), source
    with pytest.raises(ValueError, match="unknown dataset vocabulary 'no_such'"):
        build_vocabulary(dataset="no_such")


def test_the_model_card_holds_the_real_evaluation(run):
    tmp, _, classes = run
    card = (tmp / "run" / "pretrained" / "README.md").read_text()
    miou = json.loads((tmp / "run" / "inference" / "data_val.json").read_text())["sem_seg"]["mIoU"]
    assert f"| data_val | {miou:.2f} |" in card and "data_train" in card
    assert "ADE20K" not in card and "COCO-Stuff" not in card
    assert (tmp / "run" / "pretrained" / "training_data_summary.txt").read_text().startswith("train (4 images)")


def test_bad_data_is_one_line_exit_2_and_nothing_written_whatever_the_process_count(tmp_path):
    write_coco(tmp_path / "c", rle_every=100)
    path = tmp_path / "c" / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentation"] = [[1, 1, 5, 5]]
    path.write_text(json.dumps(data))
    r = _san(
        "train",
        "--data",
        str(path),
        "--output",
        "out",
        "--weights",
        "san-vit-b-16",
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        cwd=tmp_path,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("san train: ") and "annotation 2 (image 10) has a polygon with 2 point(s)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_flags_and_outputs_are_checked_before_anything(tmp_path):
    r = _san("train", "--weights", "x", cwd=tmp_path)
    assert r.returncode == 2 and "--weights goes with --data DATA" in r.stderr
    r = _san("train", "--data", "d", cwd=tmp_path)
    assert r.returncode == 2 and "--data needs --output DIR" in r.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last_checkpoint").write_text("model_final.pth")
    write_folder(tmp_path / "d")
    r = _san("train", "--data", "d", "--output", "out", cwd=tmp_path)
    assert r.returncode == 2 and "out already holds a run: add --resume" in r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["last_checkpoint"]


def test_the_schedule_fits_the_data():
    assert small_data_schedule(100, 1) == {
        "SOLVER.IMS_PER_BATCH": 8,
        "SOLVER.MAX_ITER": 375,
        "SOLVER.WARMUP_ITERS": 37,
        "SOLVER.CHECKPOINT_PERIOD": 75,
        "TEST.EVAL_PERIOD": 75,
        "SAN_ENGINE.LOG_PERIOD": 18,
    }
    assert small_data_schedule(5, 2)["SOLVER.IMS_PER_BATCH"] == 4  # a multiple of the processes
    assert small_data_schedule(3, 1)["SOLVER.MAX_ITER"] == 100  # at least 100 iterations
    assert small_data_schedule(10**6, 1)["SOLVER.MAX_ITER"] == 10_000
    assert small_data_schedule(50, 1, iters=7)["TEST.EVAL_PERIOD"] == 1
    with pytest.raises(ConfigError, match="fewer than the 4 processes"):
        small_data_schedule(3, 4)


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_two_iterations_train_from_each_format(tmp_path, fmt, monkeypatch):
    from tests.conftest import tiny_cfg

    BUILDERS[fmt](tmp_path / fmt)
    start = tmp_path / "start"
    san.build_model(tiny_cfg(tmp_path, num_classes=3)).save_pretrained(start)
    pushed = {}
    monkeypatch.setattr(
        san.SAN,
        "push_to_hub",
        lambda self, repo, results=None, **kw: (
            pushed.update(repo=repo, results=results) or f"https://huggingface.co/{repo}"
        ),
    )
    table = finetune(
        tmp_path / fmt / _ENTRY.get(fmt, ""),
        tmp_path / "out",
        weights=str(start),
        iters=2,
        opts=SMALL,
        push_to_hub="me/crack-san",
    )
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file() and (out / "pretrained" / "model.safetensors").is_file()
    assert set(table["per_class_iou"]) == set(CLASSES)
    metrics = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 1
    (val,) = pushed["results"]  # the upload carries the run's own evaluation
    saved = json.loads((out / "inference" / f"{val}.json").read_text())["sem_seg"]["mIoU"]
    assert pushed["repo"] == "me/crack-san" and pushed["results"][val]["sem_seg"]["mIoU"] == saved


def test_the_two_rows_are_evaluations_of_the_start_and_the_end_weights(tmp_path):
    from san.engine.inference import evaluate
    from tests.conftest import tiny_cfg

    write_folder(tmp_path / "d", coloured=True)
    start = tmp_path / "start"
    san.build_model(tiny_cfg(tmp_path, num_classes=3)).save_pretrained(start)
    table = finetune(
        tmp_path / "d", tmp_path / "out", weights=str(start), iters=3, opts=[*SMALL, "SOLVER.BASE_LR", 0.01]
    )
    cfg = san.get_cfg()
    cfg.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    rows = {}
    for row, model in (
        ("zero_shot", san.SAN.from_pretrained(start)),
        ("fine_tuned", san.SAN.from_pretrained(tmp_path / "out" / "pretrained")),
    ):
        rows[row] = evaluate(model, cfg, output_dir=str(tmp_path / row))["d_val"]["sem_seg"]
        assert table["overall"]["mIoU"][row] == pytest.approx(rows[row]["mIoU"], abs=1e-9), row
        for name in CLASSES:
            got, want = table["per_class_iou"][name][row], rows[row][f"IoU-{name}"]
            assert (got is None and not np.isfinite(want)) or got == pytest.approx(want, abs=1e-9), (row, name)


def test_the_table_puts_each_evaluation_in_its_column():
    from san.engine.finetune import comparison, comparison_markdown

    start = {"v": {"sem_seg": {"mIoU": 10.0, "pACC": 50.0, "IoU-a": 5.0, "IoU-b": float("nan")}}}
    end = {"v": {"sem_seg": {"mIoU": 30.0, "pACC": 70.0, "IoU-a": 25.0, "IoU-b": 40.0}}}
    table = comparison(start, end, "v", ["a", "b"])
    assert table["overall"]["mIoU"] == {"zero_shot": 10.0, "fine_tuned": 30.0}
    assert table["per_class_iou"] == {
        "a": {"zero_shot": 5.0, "fine_tuned": 25.0},
        "b": {"zero_shot": None, "fine_tuned": 40.0},
    }
    md = comparison_markdown(table, "v")
    assert "| mIoU | 10.00 | 30.00 | +20.00 |" in md and "| IoU b | n/a | 40.00 | n/a |" in md


def test_the_batch_picture_shows_each_image_without_its_padding():
    from san.engine.pictures import _unpadded

    rng = np.random.default_rng(0)
    image = np.full((64, 96, 3), 128, np.uint8)
    label = np.full((64, 96), 255, np.int64)
    image[:40, :70] = rng.integers(0, 255, (40, 70, 3))
    label[:40, :70] = rng.integers(0, 3, (40, 70))
    label[:5, :5] = 255  # ignored pixels inside the image stay inside
    assert _unpadded(image, label, 3) == (40, 70)
    image[:40, :70] = 128  # a grey photo: its labels still mark its extent
    assert _unpadded(image, label, 3) == (40, 70)
