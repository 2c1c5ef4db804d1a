"""Make the README's picture of what ``san predict`` writes: the overlay and the legend of one photo.

No trained weights can be downloaded where this runs, so the network is replaced by the hand-written
colour rule of the tests (``tests/apps/colour_model.py``: each pixel is labelled by its dominant colour
channel); everything else (resizing, post-processing, the CLI, the pictures) is san's own code. The
picture shows the format of the outputs, not what SAN predicts. With the official weights run
``san predict --input astronaut.png --vocabulary "person, flag, rocket, sky, ..." --weights san-vit-b-16``.

Usage: ``python scripts/make_predict_picture.py [--out docs/images/predict_format.png]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import skimage.data
import torch
from PIL import Image

import san
from san.apps.cli import main as san_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.apps.colour_model import colour_classify, colour_encode  # noqa: E402
from tests.conftest import tiny_cfg  # noqa: E402

VOCABULARY = "class 0, class 1, class 2"  # neutral names: the labels come from a colour rule


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs/images/predict_format.png")
    args = p.parse_args()
    san.SAN.encode_images = colour_encode  # the stand-in for the network (see the module docstring)
    san.SAN.classify = staticmethod(colour_classify)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = tiny_cfg(d)
        (d / "tiny.yaml").write_text(cfg.dump())
        torch.manual_seed(0)
        san.save_checkpoint(san.build_model(cfg), d / "tiny.pth")
        Image.fromarray(skimage.data.astronaut()).resize((320, 320), Image.LANCZOS).save(d / "astronaut.png")
        argv = ["predict", "--input", str(d / "astronaut.png"), "--vocabulary", VOCABULARY, "--weights"]
        argv += [str(d / "tiny.pth"), "--config-file", str(d / "tiny.yaml"), "-o", str(d / "out")]
        rc = san_main([*argv, "INPUT.MIN_SIZE_TEST", "320"])
        if rc:
            return rc
        overlay = Image.open(d / "out" / "astronaut_overlay.png").convert("RGB")
        key = Image.open(d / "out" / "astronaut_legend.png").convert("RGB")
        sheet = Image.new("RGB", (overlay.width + key.width + 8, max(overlay.height, key.height)), (255, 255, 255))
        sheet.paste(overlay, (0, 0))
        sheet.paste(key, (overlay.width + 8, 0))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out, optimize=True)
        print((d / "out" / "astronaut.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
