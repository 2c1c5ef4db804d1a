"""``san index``: encode an image collection into a region index that ``san search`` queries.

    san index /data/photos --output photos.index --weights san-vit-b-16 --batch-size 8
    torchrun --nproc_per_node 8 -m san index /data/photos --output photos.index

Each image's mask proposals and mask embeddings go into the index (:mod:`san.inference.index`) once;
any phrase can then be searched for without the image path. Running the command again on the same
folder adds what is missing (a killed build resumes; new images are added); an index made by another
model is refused. Decoding threads, batching, sharding over processes (``torchrun``, ``--num-gpus``)
and the progress bar are ``san predict``'s (:mod:`san.inference.runner`). Exit codes: 0 all indexed,
1 some images failed (reported, and listed in ``INDEX/build_summary.json``), 2 usage error, 130 Ctrl-C
(the images encoded so far are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from san.apps.common import cli_logging, fail
from san.devices import available_cpus
from san.engine.launch import add_launch_arguments, check_launch_arguments, needs_launch, run_launched, worker_group

SUMMARY = "build_summary.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san index", description="Encode images into a region index for san search.")
    p.add_argument("items", nargs="*", metavar="INPUT", help="image files, folders or globs; then KEY VALUE overrides")
    p.add_argument("--input", "-i", nargs="+", default=[], help="more image files, folders or glob patterns")
    p.add_argument("--output", "-o", required=True, help="the index folder (created, or extended)")
    p.add_argument(
        "--table",
        default=None,
        help="build from a region table (Parquet, san.integrations.ray) instead of images: no image is encoded",
    )
    p.add_argument("--weights", "-w", default=None, help="san-vit-b-16 | san-vit-l-14 | checkpoint file | URL")
    p.add_argument("--config-file", default=None, help="config name or YAML (default: the official model's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--max-pixels", type=float, default=100e6, help="refuse larger images (default 100e6)")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call (same model input size)")
    workers = min(4, available_cpus())
    p.add_argument(
        "--workers", type=int, default=workers, help=f"decoding threads (default {workers}: 4, at most the CPUs)"
    )
    p.add_argument("--part-size", type=int, default=256, help="images per index part (the unit written at once)")
    p.add_argument(
        "--no-masks",
        action="store_true",
        help="do not store mask logits (5x smaller index; san search --output then re-encodes each hit)",
    )
    add_launch_arguments(p)
    p.set_defaults(tta=False, text_cache=None)
    return p


def _fail(message: str) -> int:
    return fail("index", message)


def _prepare(args: argparse.Namespace) -> Any:
    """``(index folder, files, missing)`` or exit code 2: every check that needs no model."""
    from san.devices import check_device_name

    try:  # before the heavy imports
        check_device_name(args.device)
    except ValueError as e:
        return _fail(str(e))
    from san.inference.index import INDEX_FILE, RegionIndex, RegionIndexError
    from san.inference.outputs import OutputError, check_output_dir, collect_inputs

    from .predict import split_overrides

    items, opts = split_overrides(args.items, [])  # the first A.B key ends the inputs
    more, opts_after_input = split_overrides(args.input, [])
    args.input, args.opts = [*items, *more], [*opts, *opts_after_input]
    if not args.input and not args.table:
        return _fail("give the images to index: san index INPUT [INPUT ...] --output INDEX (or --table TABLE)")
    if args.input and args.table:
        return _fail("give images or --table, not both")
    if len(args.opts) % 2:
        return _fail(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    if args.batch_size < 1 or args.workers < 0 or args.part_size < 1:
        return _fail("need --batch-size >= 1, --workers >= 0 and --part-size >= 1")
    problem = check_launch_arguments(args)
    if problem:
        return _fail(problem)
    try:
        out = check_output_dir(args.output)
        if out.is_dir() and any(out.iterdir()) and not (out / INDEX_FILE).exists():
            return _fail(f"--output {out} is a folder that holds other files, not a san index: choose another")
        if (out / INDEX_FILE).exists():
            RegionIndex(out)  # a corrupt or foreign index fails here, before the model loads
    except (OutputError, RegionIndexError) as e:
        return _fail(str(e))
    if args.table:
        from san.inference.table import TableError, read_rows

        if needs_launch(args):
            return _fail("--table needs no model runs: drop --num-gpus/--num-machines")
        try:
            read_rows(args.table, columns=["path", "error"])  # a missing or foreign table fails before the model
        except TableError as e:
            return _fail(str(e))
        return out, [], []
    files, missing = collect_inputs(args.input)
    if not files:
        for spec in missing:
            print(f"san index: {spec}: no such file, folder or matching image", file=sys.stderr)
        return _fail("no input images")
    return out, files, missing


def main(argv: list[str] | None = None) -> int:
    """Run ``san index``; returns the exit code."""
    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    cli_logging()
    prepared = _prepare(args)
    if isinstance(prepared, int):
        return prepared
    if not needs_launch(args):
        return _worker(args, prepared)
    return run_launched(_worker, args, "san index", prepared[0] / SUMMARY, "the images encoded so far are kept")


def _worker(args: argparse.Namespace, prepared: Any = None) -> int:
    prepared = prepared or _prepare(args)
    if isinstance(prepared, int):
        return prepared
    out, files, missing = prepared
    with worker_group(args) as (rank, world):
        try:
            return _build(args, out, files, missing, rank, world)
        except KeyboardInterrupt:
            print("san index: interrupted before any image was encoded", file=sys.stderr)
            return 130


def _build(args: argparse.Namespace, out: Path, files: list, missing: list, rank: int, world: int) -> int:
    from san.engine import comm
    from san.files import atomic_path
    from san.inference.index import RegionIndex, RegionIndexError
    from san.inference.index_run import IndexRun
    from san.inference.runner import OutputFolderGone, RunInterrupted, merge_reports

    from .predict import load_predictor

    loaded = load_predictor(args, "san index")
    if isinstance(loaded, int):
        return loaded
    predictor, meta = loaded
    weights = meta["weights"]
    weights = os.path.abspath(weights) if os.path.exists(weights) else weights
    spec = {
        "weights": weights,
        "config_yaml": predictor.model.config_yaml or "",
        "masks": False if args.no_masks else None,
    }
    try:
        if rank == 0:
            RegionIndex.create(out, predictor, **spec)
        comm.barrier()
        index = RegionIndex.create(out, predictor, **spec)
    except RegionIndexError as e:
        return _fail(str(e))
    before = len(index)
    if args.table:
        return _from_table(args.table, index, args.part_size)
    run = IndexRun(
        predictor,
        index,
        part_size=args.part_size,
        batch_size=args.batch_size,
        workers=args.workers,
        rank=rank,
        world_size=world,
    )
    jobs = run.shard(files, IndexRun.keys(files))
    try:
        report = run.run(jobs, progress=rank == 0)
    except RunInterrupted as e:
        print(
            f"san index: interrupted after {e.report.written} new image(s); they are in the index (run the same "
            "command again to go on)",
            file=sys.stderr,
        )
        return 130
    except OutputFolderGone as e:
        print(f"san index: {e}; nothing more was written. Give an --output that stays, and run again", file=sys.stderr)
        return 1
    summary = merge_reports(comm.all_gather_object(report.as_dict()), missing=missing)
    if rank == 0:
        total = RegionIndex(out)
        summary.update(index=str(out), indexed_before=before, indexed=len(total), bytes=total.size_bytes())
        with atomic_path(out / SUMMARY) as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(
            f"san index: {summary['written']} image(s) added ({summary['resumed']} already there) to {out}: "
            f"{len(total)} image(s), {summary['bytes'] / 2**20:.1f} MB"
            + (f", {summary['failed']} failed" if summary["failed"] else "")
        )
    return 1 if summary["failed"] else 0


def _from_table(table: str, index: Any, part_size: int) -> int:
    from san.inference.index import RegionIndexError
    from san.inference.table import TableError, index_table

    try:
        counts = index_table(table, index, part_size=part_size)
    except (TableError, RegionIndexError) as e:
        return _fail(str(e))
    print(
        f"san index: {counts['added']} image(s) added from {table} ({counts['already']} already there, "
        f"{counts['failed']} failed rows skipped) to {index.directory}: {len(index)} image(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
