"""scripts/train_net_d2.py end to end: train, checkpoint, resume and evaluate on a synthetic COCO-Stuff tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (python scripts/install_detectron2.py installs it)"
)

import san  # noqa: E402

from .helpers import load_results, tiny_overrides, write_coco_stuff  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_net_d2.py"
COCO_TRAIN, COCO_TEST = "coco_2017_train_stuff_sem_seg", "coco_2017_test_stuff_sem_seg"


def run_train_net(root: Path, out: Path, tmp_path: Path, *args: str, opts: tuple = ()) -> subprocess.CompletedProcess:
    tiny = tiny_overrides(tmp_path, num_classes=171)
    overrides = [
        *tiny,
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.AMP.ENABLED",
        False,
        "SOLVER.IMS_PER_BATCH",
        2,
        "SOLVER.CHECKPOINT_PERIOD",
        1,
        "INPUT.MIN_SIZE_TRAIN",
        (64,),
        "INPUT.MAX_SIZE_TRAIN",
        128,
        "INPUT.CROP.SIZE",
        (64, 64),
        "INPUT.SIZE_DIVISIBILITY",
        64,
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MAX_SIZE_TEST",
        128,
        "DATALOADER.NUM_WORKERS",
        0,
        "DATASETS.TEST",
        (COCO_TEST,),
        "TEST.EVAL_PERIOD",
        0,
        "SEED",
        0,
        "OUTPUT_DIR",
        str(out),
        *opts,
    ]
    config = san.config.get_config_file("san_clip_vit_res4_coco")  # the official YAML, unchanged
    cmd = [sys.executable, str(SCRIPT), "--config-file", config, "--num-gpus", "1", *args, *map(str, overrides)]
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def test_train_net_d2_trains_checkpoints_resumes_and_evaluates(tmp_path):
    root, out = tmp_path / "datasets", tmp_path / "out"
    write_coco_stuff(root, "train2017", 4, seed=1)
    write_coco_stuff(root, "val2017", 2, seed=2)
    result_file = out / "inference" / "sem_seg_evaluation.pth"
    opts = ("SOLVER.MAX_ITER", 3)

    run_train_net(root, out, tmp_path, opts=opts)
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    names = {p.name for p in out.glob("model_*.pth")}
    assert names == {"model_0000000.pth", "model_0000001.pth", "model_0000002.pth", "model_final.pth"}
    ckpt = torch.load(out / "model_0000001.pth", weights_only=True)
    assert ckpt["iteration"] == 1 and {"model", "trainer"} <= set(ckpt)
    adam_steps = {int(s["step"]) for s in ckpt["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert adam_steps == {2}  # the optimizer state is checkpointed (detectron2 0.6 alone would drop it)
    res = load_results(result_file)
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-person", "ACC-person"} <= set(res)
    assert len([k for k in res if k.startswith("IoU-")]) == 171

    # an interrupted run: --resume continues after the last checkpoint with its optimizer and schedule
    (out / "last_checkpoint").write_text("model_0000001.pth")
    (out / "model_final.pth").unlink()
    r = run_train_net(root, out, tmp_path, "--resume", opts=opts)
    assert "Starting training from iteration 2" in r.stdout + r.stderr
    resumed = torch.load(out / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == 2
    assert {int(s["step"]) for s in resumed["trainer"]["_trainer"]["optimizer"]["state"].values()} == {3}
    assert resumed["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
    sd, before = resumed["model"], ckpt["model"]
    frozen = "clip_rec_head.resblocks.0.attn.in_proj_weight"
    assert torch.equal(sd[frozen], before[frozen])  # CLIP stays frozen
    assert not torch.equal(sd["side_adapter_network.query_embed"], before["side_adapter_network.query_embed"])
    final_res = load_results(result_file)

    # --eval-only on the final weights reproduces the end-of-training evaluation exactly
    result_file.unlink()
    r = run_train_net(root, out, tmp_path, "--eval-only", opts=("MODEL.WEIGHTS", str(out / "model_final.pth")))
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in r.stdout + r.stderr
    again = load_results(result_file)
    assert again.keys() == final_res.keys()
    assert all(again[k] == final_res[k] or (np.isnan(again[k]) and np.isnan(final_res[k])) for k in again)
