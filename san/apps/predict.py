"""``san predict``: segment image files with any vocabulary and write pictures and numbers.

Each input ``NAME.ext`` gets ``NAME_labels.png``, ``NAME_overlay.png`` (at the photo's size),
``NAME_legend.png`` and ``NAME.json`` in ``--output``, all or none (:mod:`san.inference.outputs`),
and the run a summary (``san_predict_summary.json``: counts, failures with reasons, images/s).
Everything that can be checked before the model loads is: the vocabulary, the inputs, the output
folder (a file, a path below a file, a read-only or unwritable folder), the overlay opacity, the
batch and launch settings. A file that cannot be read, or runs out of memory, is reported and
skipped. Exit codes: 0 all written, 1 some images failed, 2 usage error (nothing written), 130
interrupted (Ctrl-C; finished images keep their outputs). Trailing ``KEY VALUE`` pairs override the
config, as in ``san train``.

At the scale of a dataset (:mod:`san.inference.runner`): decoding and writing run in background
threads (``--workers``), images batch (``--batch-size``), ``--resume`` keeps complete outputs, and
under ``torchrun`` or with ``--num-gpus N`` / ``--num-machines`` each process takes its share of the
sorted inputs, writing what one process would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from san.apps.common import cli_logging, fail
from san.devices import available_cpus
from san.engine.launch import (
    add_launch_arguments,
    check_launch_arguments,
    needs_launch,
    run_launched,
    say,
    worker_group,
)

logger = logging.getLogger("san.predict")
SUMMARY = "san_predict_summary.json"


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
    voc = p.add_mutually_exclusive_group()
    voc.add_argument(
        "--vocabulary",
        "-v",
        help="class names separated by commas; 'road|route' is one class with synonyms (default: the training "
        "classes of a model trained with san train --data)",
    )
    voc.add_argument("--vocabulary-file", help="one class per line (commas inside a line are synonyms)")
    voc.add_argument(
        "--dataset-vocabulary",
        help="a dataset's class list: a benchmark (ade20k_150, coco_stuff_171), a registered dataset, or your "
        "own data (a --data folder/file, or a training folder)",
    )
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
        help="san-vit-b-16 | san-vit-l-14 | a model folder (save_pretrained, san export hub) | a training "
        "folder (san train's OUTPUT_DIR) | checkpoint file | http(s) URL | Hub repo id | none (random side "
        "adapter); default: the official model of the config",
    )
    p.add_argument("--config-file", default=None, help="config name or YAML (default: the official model's)")
    p.add_argument(
        "--adapter", default=None, help="a domain adapter of the model (san adapt's folder): its classes take it"
    )
    p.add_argument("--output", "-o", default="san_predictions", help="output folder (created)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation (TEST.AUG)")
    p.add_argument("--text-cache", default=None, help="folder for cached class-name embeddings")
    p.add_argument(
        "--max-pixels", type=float, default=100e6, help="refuse larger images (default 100e6; raises Pillow's limit)"
    )
    p.add_argument("--alpha", type=_opacity, default=0.55, help="overlay opacity, 0..1 (default 0.55)")
    p.add_argument(
        "--batch-size", type=int, default=1, help="images per model call (those with the same model input size)"
    )
    workers = min(4, available_cpus())
    help_workers = f"threads decoding and writing (default {workers}: 4, at most the CPUs)"
    p.add_argument("--workers", type=int, default=workers, help=help_workers)
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are complete (same settings)")
    p.add_argument(
        "--save-encodings", action="store_true", help="also write NAME.encoding.safetensors (predictor.classify)"
    )
    add_launch_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def split_overrides(inputs: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """``--input a.jpg KEY VALUE``: the first config key (``A.B`` in capitals, not a path) ends the inputs."""
    for i, spec in enumerate(inputs):
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", spec) and not os.path.exists(spec):
            return inputs[:i], inputs[i:] + opts
    return inputs, opts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.input, args.opts = split_overrides(args.input, args.opts)
    return args


def _fail(message: str) -> int:
    return fail("predict", message)


def _prepare(args: argparse.Namespace) -> Any:
    """``(vocabulary, output folder, files, missing inputs)``, or exit code 2 with a message: every
    check that needs no model."""
    from san.devices import check_device_name
    from san.inference.outputs import OutputError, check_output_dir, collect_inputs
    from san.inference.vocabulary import build_vocabulary

    if len(args.opts) % 2:
        return _fail(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    if args.batch_size < 1 or args.workers < 0:
        return _fail(f"need --batch-size >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    problem = check_launch_arguments(args)
    if problem:
        return _fail(problem)
    try:
        check_device_name(args.device)
        voc = default_vocabulary(args, "san predict")
        if voc is None:
            voc = build_vocabulary(
                args.vocabulary, file=args.vocabulary_file, dataset=args.dataset_vocabulary, other=args.other
            )
        out_dir = check_output_dir(args.output)
    except (ValueError, TypeError, OutputError, OSError) as e:
        return _fail(str(e))
    files, missing = collect_inputs(args.input)
    if not files:
        for spec in missing:
            print(f"san predict: {spec}: no such file, folder or matching image", file=sys.stderr)
        return _fail("no input images")
    return voc, out_dir, files, missing


def main(argv: list[str] | None = None) -> int:
    """Run ``san predict``; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cli_logging()
    prepared = _prepare(args)
    if isinstance(prepared, int):
        return prepared
    if not needs_launch(args):
        return _worker(args, prepared)
    return run_launched(_worker, args, "san predict", prepared[1] / SUMMARY, "finished images keep their outputs")


def _worker(args: argparse.Namespace, prepared: Any = None) -> int:
    """One process of the run (the only one, or a rank under torchrun / ``--num-gpus``)."""
    prepared = prepared or _prepare(args)
    if isinstance(prepared, int):
        return prepared
    voc, out_dir, files, missing = prepared
    with worker_group(args) as (rank, world):
        try:
            if rank == 0:
                for spec in missing:
                    print(f"san predict: {spec}: no such file, folder or matching image", file=sys.stderr)
            return _run(args, voc, out_dir, files, missing, rank, world)
        except KeyboardInterrupt:  # while the model loaded: nothing was written
            print("san predict: interrupted before any image was written", file=sys.stderr)
            return 130


def _run(args: argparse.Namespace, voc: Any, out_dir: Any, files: list, missing: list, rank: int, world: int) -> int:
    from san.engine import comm
    from san.files import atomic_path
    from san.inference.outputs import output_stems
    from san.inference.runner import OutputFolderGone, PredictionRun, RunInterrupted, merge_reports, run_settings

    loaded = load_predictor(args)
    if isinstance(loaded, int):
        return loaded
    predictor, meta = loaded
    voc = predictor.vocabulary(voc)
    run = PredictionRun(
        predictor,
        voc,
        out_dir,
        meta=run_settings(predictor, meta, text_cache=args.text_cache, vocabulary_file=args.vocabulary_file),
        alpha=args.alpha,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        save_encodings=args.save_encodings,
        rank=rank,
        world_size=world,
    )
    jobs = run.shard(files, output_stems(files))
    try:
        report = run.run(jobs, progress=rank == 0)
    except RunInterrupted as e:
        done = e.report.written + e.report.resumed
        print(
            f"san predict: interrupted after {done} of {len(jobs)} image(s); their outputs are complete, no "
            "partial files were left (run again with --resume to go on)",
            file=sys.stderr,
        )
        return 130
    except OutputFolderGone as e:
        print(
            f"san predict: {e}, after {e.report.written} image(s) had been written into it; nothing more was "
            "written. Give an --output that stays, and run again (with --resume to keep what remains)",
            file=sys.stderr,
        )
        return 1
    summary = merge_reports(comm.all_gather_object(report.as_dict()), missing=missing)
    summary.update(
        output=str(out_dir),
        vocabulary=list(voc.user),
        batch_size=args.batch_size,
        workers=args.workers,
        weights=meta["weights"],
    )
    if rank == 0:
        try:
            with atomic_path(out_dir / SUMMARY) as tmp:
                Path(tmp).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as e:
            print(f"san predict: could not write {out_dir / SUMMARY}: {e}", file=sys.stderr)
            summary["failed"] += 1
        done = summary["written"] + summary["resumed"]
        print(
            f"san predict: {done}/{summary['images']} image(s) segmented into {out_dir}"
            + (f" ({summary['resumed']} already complete)" if summary["resumed"] else "")
            + (f", {summary['failed']} failed" if summary["failed"] else "")
            + (f"; {summary['images_per_s']} img/s" if summary["images_per_s"] else "")
        )
    return 1 if summary["failed"] else 0


def default_vocabulary(args: argparse.Namespace, prog: str) -> Any:
    """With no vocabulary flag: the model's training classes (said in one line), read from its config
    before it is built; a model that records none is a ValueError saying what to give. None when a
    vocabulary flag was given."""
    from san.inference.vocabulary import build_vocabulary
    from san.model_source import model_classes

    if any(getattr(args, k, None) is not None for k in ("vocabulary", "vocabulary_file", "dataset_vocabulary")):
        return None
    model = args.weights if args.config_file is None or args.weights is not None else None
    classes = model_classes(model or "san-vit-b-16", args.config_file) if model else []
    if not classes:
        raise ValueError(
            "give a vocabulary (--vocabulary 'cat, grass, sky', --vocabulary-file or --dataset-vocabulary): this "
            "model does not record training classes (models trained with san train --data do)"
        )
    shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
    print(f"{prog}: no vocabulary given: using the model's {len(classes)} training classes ({shown})")
    return build_vocabulary(classes, other=getattr(args, "other", "none"))


def load_predictor(args: argparse.Namespace, prog: str = "san predict") -> Any:
    """:func:`open_predictor` of the command line's model flags (``--config-file``, ``--weights``,
    ``--device``, ``--precision``, ``--tta``, ``--text-cache``, ``--max-pixels``, overrides); or exit code 2
    with a message when it cannot be had."""
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.inference.adapter import AdapterError
    from san.inference.runner import open_predictor
    from san.model_zoo import WeightsError

    try:
        return open_predictor(
            args.weights,
            args.config_file,
            device=args.device,
            precision=args.precision,
            opts=args.opts,
            tta=args.tta,
            text_cache=args.text_cache,
            max_pixels=args.max_pixels,
            adapter=getattr(args, "adapter", None),
        )
    except (WeightsError, CheckpointError, ConfigError, AdapterError, OSError, ValueError, KeyError, RuntimeError) as e:
        say(f"{prog}: {e}")  # once, however many processes meet it
        return 2


if __name__ == "__main__":
    sys.exit(main())
