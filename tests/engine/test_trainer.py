"""End to end on CPU: a toy dataset on disk -> train -> checkpoint -> "kill" -> resume -> same weights -> evaluate.

The dataset is written in the real on-disk format (JPEG images, 8-bit PNG label maps with 255 as
ignore) under a temporary ``$DETECTRON2_DATASETS`` and registered through the catalog; the real
loader, mapper (resize, crop, flip, colour jitter, padding), model, criterion, optimizer and
trainer run for a few iterations of a tiny model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import san
from san.data import register_dataset, unregister_dataset
from san.engine.trainer import Trainer, last_checkpoint_path
from san.train import build_parser
from san.train import main as train_main

from ..conftest import tiny_cfg

CLASSES = ["red paint", "green grass", "blue water"]
COLOURS = np.array([[200, 30, 30], [30, 190, 40], [20, 40, 210]], dtype=np.uint8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not stall when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_toy_split(root: str, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "toy", "images", split), exist_ok=True)
    os.makedirs(os.path.join(root, "toy", "labels", split), exist_ok=True)
    for i in range(n):
        h, w = 72 + 8 * (i % 3), 96
        label = np.zeros((h, w), dtype=np.uint8)
        label[:, int(rng.integers(30, 60)) :] = 1
        label[int(rng.integers(40, 60)) :, :] = 2
        label[:3, :3] = 255  # a few ignored pixels
        image = COLOURS[np.minimum(label, 2)].astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            os.path.join(root, "toy", "images", split, f"{i:03d}.jpg"), quality=95
        )
        Image.fromarray(label).save(os.path.join(root, "toy", "labels", split, f"{i:03d}.png"))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    _write_toy_split(root, "train", 6, seed=0)
    _write_toy_split(root, "val", 2, seed=1)
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = root
    for split in ("train", "val"):
        register_dataset(
            name=f"toy_{split}",
            image_dir=f"toy/images/{split}",
            gt_dir=f"toy/labels/{split}",
            classes=CLASSES,
            ignore_label=255,
            overwrite=True,
        )
    yield root
    for split in ("train", "val"):
        unregister_dataset(f"toy_{split}")
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old


def toy_cfg(tmp: str, out: str, **extra) -> san.CfgNode:
    cfg = tiny_cfg(tmp, num_classes=len(CLASSES))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR", out, "SEED", 7, "MODEL.DEVICE", "cpu",
            "DATASETS.TRAIN", ("toy_train",), "DATASETS.TEST", ("toy_val",),
            "INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TRAIN", (64, 80, 96), "INPUT.MAX_SIZE_TRAIN", 160,
            "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", (64, 64),
            "INPUT.SIZE_DIVISIBILITY", 64, "INPUT.COLOR_AUG_SSD", True,
            "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128, "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 10, "SOLVER.BASE_LR", 2e-3,
            "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.WARMUP_ITERS", 0,
            "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0, "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 5,
            *[x for kv in extra.items() for x in kv],
        ]
    )  # fmt: skip
    return cfg


def _metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _final(out: str) -> dict:
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_a")
    out = str(tmp / "out")
    Trainer(toy_cfg(str(tmp), out), log_period=1, window=1).train()
    return out


def test_training_lowers_the_loss_and_writes_checkpoints_and_metrics(uninterrupted):
    out = uninterrupted
    files = set(os.listdir(out))
    assert {"model_0000003.pth", "model_0000007.pth", "model_final.pth", "last_checkpoint", "metrics.json"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert last_checkpoint_path(out) == os.path.join(out, "model_final.pth")
    train = [m for m in _metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in train] == list(range(10))
    first, last = np.mean([m["total_loss"] for m in train[:3]]), np.mean([m["total_loss"] for m in train[-3:]])
    assert last < 0.8 * first, (first, last)
    lr = [m["lr"] for m in train]
    assert lr == pytest.approx([2e-3 * (1 - i / 10) ** 0.9 for i in range(10)])
    assert all(m["eta_seconds"] >= 0 and m["time"] > 0 and m["data_time"] >= 0 for m in train)
    evals = [m for m in _metrics(out) if "toy_val/sem_seg/mIoU" in m]
    assert [m["iteration"] for m in evals] == [4, 9]
    ckpt = _final(out)
    assert ckpt["iteration"] == 9 and ckpt["seed"] == 7 and ckpt["world_size"] == 1
    assert {"model", "optimizer", "scheduler", "rng"} <= set(ckpt) and len(ckpt["rng"]) == 1
    assert ckpt["scheduler"]["last_epoch"] == 10
    assert ckpt["model"]["criterion.empty_weight"].tolist() == pytest.approx([1, 1, 1, 0.1])


def test_resume_after_a_kill_gives_the_uninterrupted_run_exactly(uninterrupted, tmp_path):
    out = str(tmp_path / "out")
    cfg = toy_cfg(str(tmp_path), out)
    Trainer(cfg, log_period=1, window=1).train(stop_at=6)  # "killed" during iteration 6: 4 and 5 are lost
    assert last_checkpoint_path(out) == os.path.join(out, "model_0000003.pth")
    resumed = Trainer(cfg, resume=True, log_period=1, window=1)
    assert resumed.start_iter == 4
    resumed.train()
    a, b = _final(uninterrupted), _final(out)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    # the loss curve after the resume equals the uninterrupted one (iterations 4..9, raw values)
    curve = {m["iteration"]: m["total_loss"] for m in _metrics(uninterrupted) if "total_loss" in m}
    after = [m for m in _metrics(out) if "total_loss" in m and m["iteration"] >= 4]
    assert [m["iteration"] for m in after][-6:] == list(range(4, 10))
    assert [m["total_loss"] for m in after][-6:] == [curve[i] for i in range(4, 10)]
    # resuming a finished run does nothing
    done = Trainer(cfg, resume=True)
    assert done.start_iter == 10 and done.train() == {}


def test_eval_only_command_line_reports_metrics(uninterrupted, tmp_path, capsys):
    cfg = toy_cfg(str(tmp_path), str(tmp_path / "unused"))
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(cfg.dump())
    out = tmp_path / "eval"
    weights = os.path.join(uninterrupted, "model_final.pth")
    assert (
        train_main(["--config-file", str(cfg_file), "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)])
        == 0
    )
    res = json.loads((out / "inference" / "toy_val.json").read_text())["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-red paint"} <= set(res)
    assert 0 <= res["mIoU"] <= 100 and 0 < res["pACC"] <= 100
    log = (out / "log.txt").read_text()
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in log
    assert (out / "config.yaml").is_file() and "toy_val" in (out / "config.yaml").read_text()
    assert "copypaste:" in capsys.readouterr().out


def test_command_line_flags_follow_the_official_train_net():
    args = build_parser().parse_args(
        ["--config-file", "c.yaml", "--num-gpus", "8", "--resume", "SOLVER.IMS_PER_BATCH", "16", "OUTPUT_DIR", "o"]
    )
    assert (args.config_file, args.num_gpus, args.resume, args.eval_only) == ("c.yaml", 8, True, False)
    assert (args.num_machines, args.machine_rank) == (1, 0) and args.dist_url.startswith("tcp://127.0.0.1:")
    assert args.opts == ["SOLVER.IMS_PER_BATCH", "16", "OUTPUT_DIR", "o"]
    with pytest.raises(SystemExit):
        train_main(["--num-gpus", "2", "--num-machines", "2", "--machine-rank", "2"])
