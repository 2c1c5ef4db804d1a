"""Time ``san train --data`` per iteration on this machine: the whole command on a folder of photos, with
the tiny test-sized model and with SAN ViT-B/16 (random weights: the time does not depend on their values).

    python scripts/bench_own_data.py --models tiny vit-b --iters 4 --json docs/benchmarks/cpu_own_data.json

The data: scikit-image's photos (10 of them: 8 for training, 2 for validation by the seeded split), labels
from their brightness in 4 classes. Each model runs the real command in a fresh process with the default
schedule of 8 images per iteration and the official augmentation (640 x 640 crops), and
``SAN_ENGINE.METRICS_WINDOW 1`` so that ``metrics.json`` holds each iteration's own time. Reported: the
median iteration time (the first iteration, which warms up, left out), per image, and the time of the
whole command (data check, zero-shot evaluation, training, report).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_tools import machine_meta
from PIL import Image

from san.engine.finetune import small_data_schedule

PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "coins",
    "hubble_deep_field",
    "cat",
    "retina",
    "colorwheel",
]
CLASSES = ["shadow", "dark", "bright", "highlight"]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY = [
    "MODEL.SAN.FEATURE_LAST_LAYER_IDX",
    2,
    "MODEL.SIDE_ADAPTER.VIT_NAME",
    "vit_w48n2d4_patch16",
    "MODEL.SIDE_ADAPTER.IMAGE_SIZE",
    160,
    "MODEL.SIDE_ADAPTER.NUM_QUERIES",
    10,
    "MODEL.SIDE_ADAPTER.FUSION_MAP",
    ["0->0", "1->1", "2->2"],
    "MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS",
    [3, 4],
    "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS",
    2,
    "MODEL.SIDE_ADAPTER.ATTN_BIAS.EMBED_CHANNELS",
    16,
    "MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_CHANNELS",
    32,
]


def write_data(root: Path) -> None:
    import skimage.data

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        grey = rgb.astype(np.float32).mean(-1)
        label = np.digitize(grey, np.quantile(grey, [0.25, 0.5, 0.75])).astype(np.uint8)
        Image.fromarray(rgb.astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "masks" / f"{name}.png")


def write_model(kind: str, folder: Path) -> None:
    import torch

    import san

    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
    if kind == "tiny":
        clip = folder.parent / "tiny-clip.json"
        clip.write_text(json.dumps(TINY_CLIP))
        cfg.merge_from_list(["MODEL.SAN.CLIP_MODEL_NAME", str(clip), *TINY])
    torch.manual_seed(0)
    san.build_model(cfg).save_pretrained(folder)


def train_command(data: Path, out: Path, weights: Path, iters: int, *opts: str) -> list[str]:
    """``san train --data`` as this machine's Python runs it."""
    return [
        sys.executable,
        "-m",
        "san",
        "train",
        "--data",
        str(data),
        "--output",
        str(out),
        "--weights",
        str(weights),
        "--iters",
        str(iters),
        *opts,
    ]


def run(kind: str, tmp: Path, iters: int) -> dict:
    write_model(kind, tmp / f"{kind}_model")
    out = tmp / f"{kind}_run"
    cmd = train_command(
        tmp / "data", out, tmp / f"{kind}_model", iters, "MODEL.DEVICE", "cpu", "SAN_ENGINE.METRICS_WINDOW", "1"
    )
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    entries = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    times = [e["time"] for e in entries if "time" in e][1:]
    n_train = len(json.loads((out / "data" / "split.json").read_text())["train"])
    batch = small_data_schedule(n_train, 1)["SOLVER.IMS_PER_BATCH"]  # what the command chose
    median = statistics.median(times)
    return {
        "model": kind,
        "iterations": iters,
        "images_per_iteration": batch,
        "iteration_s": median,
        "per_image_s": median / batch,
        "iteration_times_s": times,
        "command_s": total,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "vit-b"], choices=["tiny", "vit-b"])
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--json", default="")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp) / "data")
        for kind in args.models:
            rows.append(run(kind, Path(tmp), args.iters))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "iteration_times_s"}), flush=True)
    meta = machine_meta()
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
