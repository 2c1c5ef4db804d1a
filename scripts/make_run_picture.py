"""Draw docs/images/run_folder.jpg: what a ``san train --data`` run folder holds, from a real run.

    python scripts/make_run_picture.py --output docs/images/run_folder.jpg

The run: the tiny test-sized model (random start: no trained weights can be downloaded where these docs
are built) fine-tuned by the real command for ``--iters`` iterations on scikit-image's photos labelled by
brightness (the data of scripts/bench_own_data.py), at small sizes so that it takes a minute on a CPU. The
picture puts the folder's listing beside its pictures, scaled down, each under its file name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from bench_own_data import train_command, write_data, write_model
from PIL import Image, ImageDraw

SMALL = [
    "INPUT.MIN_SIZE_TRAIN",
    "(160,)",
    "INPUT.MAX_SIZE_TRAIN",
    "320",
    "INPUT.CROP.SIZE",
    "(160,160)",
    "INPUT.MIN_SIZE_TEST",
    "160",
    "INPUT.MAX_SIZE_TEST",
    "320",
    "SOLVER.BASE_LR",
    "0.01",
    "MODEL.DEVICE",
    "cpu",
]
SHOWN = [
    "train_batch0.jpg",
    "curves.png",
    "zero_shot_vs_finetuned.png",
    "inference/data_confusion.png",
    "val_predictions.jpg",
]
WIDTH = 1400


def listing(out: Path) -> list[str]:
    lines = [f"{out.name}/"]
    for p in sorted(out.iterdir()):
        if p.is_dir():
            n = sum(1 for _ in p.rglob("*") if _.is_file())
            lines.append(f"  {p.name}/  ({n} files)")
        elif not p.name.startswith("events.out"):
            lines.append(f"  {p.name}")
    return lines


def compose(out: Path, path: Path, dataset: str) -> None:
    tiles = []
    for name in SHOWN:
        f = out / name.replace("data_", f"{dataset}_")
        img = Image.open(f).convert("RGB")
        tiles.append((name.replace("data_", f"{dataset}_"), img))
    text = listing(out)
    left = 300
    right = WIDTH - left
    scaled = []
    for name, img in tiles:
        w = right if name in ("val_predictions.jpg", "curves.png") else right // 2 - 6
        h = round(img.height * w / img.width)
        scaled.append((name, img.resize((w, h), Image.LANCZOS)))
    rows: list[list[tuple[str, Image.Image]]] = []
    for item in scaled:
        if rows and sum(i.width for _, i in rows[-1]) + item[1].width <= right and len(rows[-1]) < 2:
            rows[-1].append(item)
        else:
            rows.append([item])
    height = max(20 + 16 * len(text), sum(max(i.height for _, i in r) + 24 for r in rows)) + 10
    canvas = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(text):
        draw.text((10, 10 + 16 * k), line, fill=(0, 0, 0))
    y = 0
    for r in rows:
        x = left
        for name, img in r:
            draw.text((x + 4, y + 4), name, fill=(40, 40, 160))
            canvas.paste(img, (x, y + 20))
            x += img.width + 12
        y += max(i.height for _, i in r) + 24
    canvas.save(path, quality=85, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="docs/images/run_folder.jpg")
    p.add_argument("--iters", type=int, default=150)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_data(t / "data")
        write_model("tiny", t / "model")
        out = t / "runs" / "mine"
        cmd = train_command(t / "data", out, t / "model", args.iters, *SMALL)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
        compose(out, Path(args.output), "data_val")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
