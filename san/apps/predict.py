"""``san predict``: segment image files with any vocabulary and write pictures and numbers.

Each input ``NAME.ext`` gets ``NAME_labels.png``, ``NAME_overlay.png`` (at the photo's size),
``NAME_legend.png`` and ``NAME.json`` in ``--output``, all or none (:mod:`san.inference.outputs`).
Everything that can be checked before the model loads is: the vocabulary, the inputs, the output
folder (a file, a path below a file, a read-only or unwritable folder), the overlay opacity. A file
that cannot be read, or runs out of memory, is reported and skipped. Exit codes: 0 all written, 1
some images failed, 2 usage error (nothing written), 130 interrupted (Ctrl-C; finished images keep
their outputs). Trailing ``KEY VALUE`` pairs override the config, as in ``san train``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

logger = logging.getLogger("san.predict")


def _opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1 (0: the photo only, 1: colours only)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san predict", description="Segment images with any vocabulary (SAN).")
    p.add_argument("--input", "-i", nargs="+", required=True, help="image files, folders or glob patterns")
    voc = p.add_mutually_exclusive_group(required=True)
    voc.add_argument(
        "--vocabulary", "-v", help="class names separated by commas; 'road|route' is one class with synonyms"
    )
    voc.add_argument("--vocabulary-file", help="one class per line (commas inside a line are synonyms)")
    voc.add_argument("--dataset-vocabulary", help="a benchmark's class list, e.g. ade20k_150, coco_stuff_171")
    p.add_argument(
        "--other",
        default="none",
        choices=["none", "coco-all", "coco-stuff"],
        help="add COCO-Stuff names as distractors whose pixels are reported as 'other' (the official demo's "
        "vocabulary expansion)",
    )
    p.add_argument(
        "--weights",
        "-w",
        default=None,
        help="san-vit-b-16 | san-vit-l-14 | checkpoint file | http(s) URL | none (random side adapter); "
        "default: the official model of the config",
    )
    p.add_argument("--config-file", default=None, help="config name or YAML (default: the official model's)")
    p.add_argument("--output", "-o", default="san_predictions", help="output folder (created)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation (TEST.AUG)")
    p.add_argument("--text-cache", default=None, help="folder for cached class-name embeddings")
    p.add_argument(
        "--max-pixels", type=float, default=100e6, help="refuse larger images (default 100e6; raises Pillow's limit)"
    )
    p.add_argument("--alpha", type=_opacity, default=0.55, help="overlay opacity, 0..1 (default 0.55)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for i, spec in enumerate(args.input):  # `--input a.jpg KEY VALUE`: the overrides end the input list
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", spec) and not os.path.exists(spec):
            args.input, args.opts = args.input[:i], args.input[i:] + args.opts
            break
    return args


def _fail(message: str) -> int:
    print(f"san predict: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run ``san predict``; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.opts) % 2:
        return _fail(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from san.inference.outputs import OutputError, check_output_dir, collect_inputs
    from san.inference.vocabulary import build_vocabulary

    try:
        voc = build_vocabulary(
            args.vocabulary, file=args.vocabulary_file, dataset=args.dataset_vocabulary, other=args.other
        )
        out_dir = check_output_dir(args.output)
    except (ValueError, TypeError, OutputError) as e:
        return _fail(str(e))
    files, missing = collect_inputs(args.input)
    for spec in missing:
        print(f"san predict: {spec}: no such file, folder or matching image", file=sys.stderr)
    if not files:
        return _fail("no input images")
    done = 0
    try:
        loaded = _load(args)
        if isinstance(loaded, int):
            return loaded
        predictor, meta = loaded
        voc = predictor.vocabulary(voc)
        out_dir.mkdir(parents=True, exist_ok=True)
        failed = len(missing)
        for ok in _segment(files, out_dir, predictor, voc, meta, args):
            done += ok
            failed += not ok
    except KeyboardInterrupt:
        print(
            f"san predict: interrupted after {done} of {len(files)} image(s); their outputs are complete, "
            "no partial files were left",
            file=sys.stderr,
        )
        return 130
    print(
        f"san predict: {done}/{len(files)} image(s) segmented into {out_dir}" + (f", {failed} failed" if failed else "")
    )
    return 1 if failed else 0


def _load(args: argparse.Namespace) -> Any:
    """``(predictor, what to record of it)``, or exit code 2 with a message when the model or its
    weights cannot be had."""
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.inference.predictor import SANPredictor
    from san.model_zoo import WeightsError, get_model_info

    model = args.config_file or "san-vit-b-16"
    if args.config_file is None and args.weights is not None and get_model_info(args.weights) is not None:
        model = args.weights  # `--weights san-vit-l-14` also picks its config
    try:
        predictor = SANPredictor.from_pretrained(
            model,
            weights=args.weights,
            device=args.device,
            precision=args.precision,
            opts=args.opts,
            tta=args.tta or None,
            text_cache_dir=args.text_cache,
            max_pixels=int(args.max_pixels),
        )
    except (WeightsError, CheckpointError, ConfigError, OSError, ValueError, KeyError, RuntimeError) as e:
        return _fail(str(e))
    return predictor, {"weights": str(args.weights or model), "config": model}


def _segment(files: list, out_dir, predictor: Any, voc: Any, meta: dict, args: argparse.Namespace):
    """Segment and write every file, yielding True (written) or False (failed, reported) for each."""
    from tqdm import tqdm

    from san.data.images import ImageError, read_image
    from san.inference.outputs import output_stems, write_outputs

    meta = {
        **meta,
        "min_size": predictor.min_size,
        "max_size": predictor.max_size,
        "tta": predictor.tta,
        **({"tta_min_sizes": list(predictor.tta_min_sizes), "tta_flip": predictor.tta_flip} if predictor.tta else {}),
        "precision": predictor.precision,
        "device": str(predictor.device),
        "text_cache": args.text_cache,
        **({"vocabulary_file": args.vocabulary_file} if args.vocabulary_file else {}),
    }
    for path, stem in tqdm(
        list(zip(files, output_stems(files))), desc="san predict", unit="img", disable=len(files) < 2
    ):
        image = pred = None
        try:
            image = read_image(path, predictor.max_pixels)
            pred = predictor.predict(image, voc)
            write_outputs(out_dir, stem, image, pred, {"image": str(path), **meta}, args.alpha)
            yield True
        except ImageError as e:  # the message names the file
            tqdm.write(f"san predict: FAILED {e}", file=sys.stderr)
            yield False
        except MemoryError:
            size = "" if image is None else f" ({image.shape[1]}x{image.shape[0]})"
            image = pred = None  # let go of the big arrays before going on
            tqdm.write(
                f"san predict: FAILED {path}{size}: out of memory; downscale the image, or lower --max-pixels "
                "to refuse such images up front",
                file=sys.stderr,
            )
            yield False
        except (ValueError, OSError, RuntimeError) as e:  # e.g. out of (GPU) memory, disk full: go on
            tqdm.write(f"san predict: FAILED {path}: {type(e).__name__}: {e}", file=sys.stderr)
            yield False


if __name__ == "__main__":
    sys.exit(main())
