"""``san predict``: segment image files with any vocabulary and write pictures and numbers.

For each input ``NAME.ext`` three files appear in ``--output``: ``NAME_labels.png`` (class index per
pixel; 8-bit when there are fewer than 256 classes, else 16-bit), ``NAME_overlay.png`` (colours and
a legend) and ``NAME.json`` (vocabulary, class names, per-class pixel fractions, the settings
used). All three are written to temporary files first and renamed once all exist; if a rename fails,
the ones already renamed are taken back (earlier outputs of the same name restored), so an image
gets its three files or none. (A power cut between two renames can still leave a mix; a killed
process can leave a hidden ``.NAME*.tmpPID`` file.) A file that cannot be read, or runs out of
memory, is reported and skipped; the exit code is 1 when any file failed, 2 for a usage error.
Trailing ``KEY VALUE`` pairs override the config, as in ``san train``.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

logger = logging.getLogger("san.predict")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p.parse_args(argv)


def collect_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named by paths, folders (their image files, sorted) and globs; plus specs matching nothing."""
    files: list[Path] = []
    missing = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif os.path.exists(spec):
            found = [Path(spec)]
        else:
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            missing.append(spec)
        files += found
    return list(dict.fromkeys(files)), missing


def output_stems(files: list[Path]) -> list[str]:
    """``photo`` for ``photo.jpg``; ``photo_jpg`` when two inputs share a stem; a counter if still equal."""
    stems = [f.stem for f in files]
    clash = {s for s in stems if stems.count(s) > 1}
    out, seen = [], set()
    for f, s in zip(files, stems):
        name = f"{s}_{f.suffix.lstrip('.').lower()}" if s in clash else s
        base, k = name, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        out.append(name)
    return out


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG")


def commit_files(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, final)`` pair; if one fails, undo the renames already done
    (restoring what the final names held before) and re-raise."""
    done: list[tuple[Path, Path | None]] = []  # (final name, backup of its earlier content)
    try:
        for tmp, final in pairs:
            backup = None
            if final.exists():
                backup = final.with_name(f".{final.name}.old{os.getpid()}")
                os.replace(final, backup)
            done.append((final, backup))
            os.replace(tmp, final)
    except BaseException:
        for final, backup in reversed(done):
            try:
                if backup is not None:
                    os.replace(backup, final)
                elif final.exists():
                    final.unlink()
            except OSError as e:  # report, and keep undoing the others
                logger.error("could not undo the partial output %s: %s", final, e)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, pred, meta: dict, alpha: float) -> list[Path]:
    """Write the label PNG, overlay PNG and JSON: all three, or none (see the module docstring)."""
    from san.inference.visualize import render

    n = len(pred.class_names)
    labels = pred.labels.astype(np.uint8 if n < 256 else np.uint16)
    fractions = pred.pixel_fractions()
    final = [out_dir / f"{stem}_labels.png", out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json"]
    record = {
        **meta,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "vocabulary": list(pred.vocabulary.user) if pred.vocabulary else pred.class_names,
        "class_names": pred.class_names,
        "pixel_fractions": fractions,
        "label_png": final[0].name,
        "overlay_png": final[1].name,
    }
    tmps = [p.with_name(f".{p.name}.tmp{os.getpid()}") for p in final]
    try:
        _save_png(Image.fromarray(labels), tmps[0])
        _save_png(render(image, pred.labels, pred.class_names, alpha), tmps[1])
        tmps[2].write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        commit_files(list(zip(tmps, final)))
    finally:
        for t in tmps:
            if t.exists():
                t.unlink()
    return final


def main(argv: list[str] | None = None) -> int:
    """Run ``san predict``; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for i, spec in enumerate(args.input):  # `--input a.jpg KEY VALUE`: the overrides end the input list
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", spec) and not os.path.exists(spec):
            args.input, args.opts = args.input[:i], args.input[i:] + args.opts
            break
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(args.opts) % 2:
        print(f"san predict: config overrides come in KEY VALUE pairs, got {args.opts}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from san.data.images import ImageError, read_image
    from san.inference.predictor import SANPredictor
    from san.inference.vocabulary import build_vocabulary
    from san.model_zoo import WeightsError, get_model_info

    try:
        voc = build_vocabulary(
            args.vocabulary, file=args.vocabulary_file, dataset=args.dataset_vocabulary, other=args.other
        )
    except (ValueError, TypeError) as e:
        print(f"san predict: {e}", file=sys.stderr)
        return 2
    files, missing = collect_inputs(args.input)
    for spec in missing:
        print(f"san predict: {spec}: no such file, folder or matching image", file=sys.stderr)
    if not files:
        print("san predict: no input images", file=sys.stderr)
        return 2
    model = args.config_file or "san-vit-b-16"
    weights = args.weights
    if args.config_file is None and weights is not None and get_model_info(weights) is not None:
        model = weights  # `--weights san-vit-l-14` also picks its config
    try:
        predictor = SANPredictor.from_pretrained(
            model,
            weights=weights,
            device=args.device,
            precision=args.precision,
            opts=args.opts,
            tta=args.tta or None,
            text_cache_dir=args.text_cache,
            max_pixels=int(args.max_pixels),
        )
        voc = predictor.vocabulary(voc)
    except (WeightsError, OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"san predict: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "weights": str(weights or model),
        "config": model,
        "min_size": predictor.min_size,
        "max_size": predictor.max_size,
        "tta": predictor.tta,
        **({"tta_min_sizes": list(predictor.tta_min_sizes), "tta_flip": predictor.tta_flip} if predictor.tta else {}),
        "precision": predictor.precision,
        "device": str(predictor.device),
        "text_cache": args.text_cache,
        **({"vocabulary_file": args.vocabulary_file} if args.vocabulary_file else {}),
    }
    failed = len(missing)
    for path, stem in tqdm(
        list(zip(files, output_stems(files))), desc="san predict", unit="img", disable=len(files) < 2
    ):
        image = pred = None
        try:
            image = read_image(path, predictor.max_pixels)
            pred = predictor.predict(image, voc)
            write_outputs(out_dir, stem, image, pred, {"image": str(path), **meta}, args.alpha)
        except ImageError as e:  # the message names the file
            failed += 1
            tqdm.write(f"san predict: FAILED {e}", file=sys.stderr)
        except MemoryError:
            size = "" if image is None else f" ({image.shape[1]}x{image.shape[0]})"
            image = pred = None  # let go of the big arrays before going on
            failed += 1
            tqdm.write(
                f"san predict: FAILED {path}{size}: out of memory; downscale the image, or lower --max-pixels "
                "to refuse such images up front",
                file=sys.stderr,
            )
        except (ValueError, OSError, RuntimeError) as e:  # e.g. out of (GPU) memory, disk full: go on
            failed += 1
            tqdm.write(f"san predict: FAILED {path}: {type(e).__name__}: {e}", file=sys.stderr)
    done = len(files) - (failed - len(missing))
    print(
        f"san predict: {done}/{len(files)} image(s) segmented into {out_dir}" + (f", {failed} failed" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
