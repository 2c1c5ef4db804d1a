"""Ray Data (``san.integrations.ray.segment_images``) against ``san predict --workers`` on the same CPUs.

    python scripts/bench_ray.py --model vit-b --images 24 --json docs/benchmarks/cpu_ray.json

The model is SAN ViT-B/16 with random weights (``--model vit-b``; the time does not depend on the values) or
the tiny test-sized one, built by scripts/bench_own_data.py's ``write_model``. The images: ``--images`` copies
of scikit-image photos (astronaut, coffee, chelsea, rocket, in turn) as PNG files, 10 names. Each path is timed
end to end as a user runs it (start-up, model load and the text tower included): ``san predict`` in a
subprocess; Ray in a fresh subprocess that starts a local Ray instance on this machine's CPUs
(``ray.init()``), with one actor of all threads and with one actor per core. Every path writes ``san
predict``'s files; the label maps of each Ray run are compared with ``san predict``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_own_data import write_model
from bench_tools import machine_meta
from PIL import Image

VOCABULARY = "person, sky, rocket, flag, helmet, glove, suit, window, wall, grass"
RAY_RUN = """
import json, sys
from san.integrations.ray import segment_images
summary = segment_images(sys.argv[1], output=sys.argv[2], weights=sys.argv[3], vocabulary=sys.argv[4],
                         actors=int(sys.argv[5]), batch_size=int(sys.argv[6]))
print(json.dumps(summary))
"""


def _images(folder: Path, n: int) -> None:
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(photos[i % len(photos)]).save(folder / f"{i:04d}.png")


def _timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def _agreement(a: Path, b: Path) -> float:
    same = total = 0
    for f in sorted(a.glob("*_labels.png")):
        x, y = np.asarray(Image.open(f)), np.asarray(Image.open(b / f.name))
        same += int((x == y).sum())
        total += x.size
    return same / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "vit-b"], default="vit-b")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--batch", type=int, default=1, help="images per forward, both paths")
    p.add_argument("--json", default="")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        write_model(args.model, model)
        _images(tmp / "images", args.images)
        predict = [sys.executable, "-m", "san", "predict", "--input", str(tmp / "images"), "--weights", str(model)]
        predict += ["--vocabulary", VOCABULARY, "--workers", str(cpus), "--batch-size", str(args.batch)]
        wall = _timed([*predict, "--output", str(tmp / "predict")], tmp / "predict.log")
        summary = json.loads((tmp / "predict" / "san_predict_summary.json").read_text())
        rows.append(
            {
                "path": f"san predict --workers {cpus}",
                "wall_s": wall,
                "images_per_s": args.images / wall,
                "images_per_s_after_load": summary["images_per_s"],
                "labels_equal": 1.0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for actors in sorted({1, cpus}):
            out = tmp / f"ray{actors}"
            cmd = [sys.executable, "-c", RAY_RUN, str(tmp / "images"), str(out), str(model), VOCABULARY]
            wall = _timed([*cmd, str(actors), str(args.batch)], tmp / f"ray{actors}.log")
            rows.append(
                {
                    "path": f"Ray Data, {actors} actor(s) x {max(1, cpus // actors)} thread(s)",
                    "wall_s": wall,
                    "images_per_s": args.images / wall,
                    "labels_equal": _agreement(tmp / "predict", out),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = machine_meta(model=args.model, images=args.images, batch=args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
