"""Make the README's ``san predict`` picture: skimage's astronaut through the CLI.

Official weights cannot be downloaded where this runs, so the model is the tiny random SAN of the
tests (seeded); the picture shows what the command writes (overlay + legend), not a real
segmentation. With the official weights run instead:
``san predict --input astronaut.png --vocabulary "person, flag, rocket, sky, ..." --weights san-vit-b-16``.

Usage: ``python scripts/make_predict_picture.py [--seed 2] [--out docs/images/predict_astronaut.png]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import skimage.data
import torch
from PIL import Image

import san
from san.apps.cli import main as san_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import tiny_cfg  # noqa: E402

VOCABULARY = "astronaut|person, american flag, space shuttle|rocket, sky, plant, wall"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/images/predict_astronaut.png")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = tiny_cfg(d)
        (d / "tiny.yaml").write_text(cfg.dump())
        torch.manual_seed(args.seed)
        san.save_checkpoint(san.build_model(cfg), d / "tiny-random.pth")
        Image.fromarray(skimage.data.astronaut()).resize((384, 384), Image.LANCZOS).save(
            d / "astronaut.png"
        )  # < 300 KB out
        rc = san_main(
            [
                "predict",
                "--input",
                str(d / "astronaut.png"),
                "--vocabulary",
                VOCABULARY,
                "--weights",
                str(d / "tiny-random.pth"),
                "--config-file",
                str(d / "tiny.yaml"),
                "-o",
                str(d / "out"),
                "INPUT.MIN_SIZE_TEST",
                "384",
            ]
        )
        if rc:
            return rc
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "out" / "astronaut_overlay.png", args.out)
        print((d / "out" / "astronaut.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
