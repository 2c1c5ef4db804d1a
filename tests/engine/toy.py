"""A toy dataset in the real on-disk format (JPEG images, 8-bit PNG labels, 255 ignored) and its config."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

import san

from ..conftest import tiny_cfg

CLASSES = ["red paint", "green grass", "blue water"]
COLOURS = np.array([[200, 30, 30], [30, 190, 40], [20, 40, 210]], dtype=np.uint8)


def write_toy_split(root: str, split: str, n: int, seed: int) -> None:
    """``root/toy/{images,labels}/<split>/NNN.{jpg,png}``: three regions per image, a few ignored pixels."""
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


def datasets_yaml(path: str) -> str:
    """Write the YAML (JSON) that registers toy_train/toy_val in a ``san train`` process; returns ``path``."""
    entries = [
        {
            "name": f"toy_{s}",
            "image_dir": f"toy/images/{s}",
            "gt_dir": f"toy/labels/{s}",
            "classes": CLASSES,
            "ignore_label": 255,
        }
        for s in ("train", "val")
    ]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"datasets": entries}, f)  # JSON is YAML
    return path


def toy_cfg(tmp: str, out: str, **extra) -> san.CfgNode:
    """The tiny model on the toy dataset: 10 iterations of 2 images, checkpoints every 4, evaluation every 5."""
    cfg = tiny_cfg(tmp, num_classes=len(CLASSES))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR",
            out,
            "SEED",
            7,
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.TRAIN",
            ("toy_train",),
            "DATASETS.TEST",
            ("toy_val",),
            "INPUT.FORMAT",
            "RGB",
            "INPUT.MIN_SIZE_TRAIN",
            (64, 80, 96),
            "INPUT.MAX_SIZE_TRAIN",
            160,
            "INPUT.CROP.ENABLED",
            True,
            "INPUT.CROP.TYPE",
            "absolute",
            "INPUT.CROP.SIZE",
            (64, 64),
            "INPUT.SIZE_DIVISIBILITY",
            64,
            "INPUT.COLOR_AUG_SSD",
            True,
            "INPUT.MIN_SIZE_TEST",
            64,
            "INPUT.MAX_SIZE_TEST",
            128,
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.MAX_ITER",
            10,
            "SOLVER.BASE_LR",
            2e-3,
            "SOLVER.LR_SCHEDULER_NAME",
            "WarmupPolyLR",
            "SOLVER.WARMUP_ITERS",
            0,
            "SOLVER.CLIP_GRADIENTS.ENABLED",
            True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
            "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
            1.0,
            "SOLVER.CHECKPOINT_PERIOD",
            4,
            "TEST.EVAL_PERIOD",
            5,
            *[x for kv in extra.items() for x in kv],
        ]
    )
    return cfg


def metrics(out: str) -> list[dict]:
    """The lines of ``out/metrics.json``."""
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def final(out: str) -> dict:
    """``out/model_final.pth``."""
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
