"""``san prepare-data NAME --raw RAW_DIR [--root ROOT]``: raw downloads -> the benchmark layout.

The conversions live in :mod:`san.data.prepare`; this module is only the command line.
"""

from __future__ import annotations

import argparse
import sys

from san.apps.common import cli_logging
from san.devices import available_cpus

__all__ = ["build_parser", "main"]

DATASET_NAMES = ("ade20k_150", "ade20k_847", "coco_stuff", "pcontext_459", "pcontext_59", "voc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="san prepare-data", description="Turn a raw dataset download into the benchmark layout san reads."
    )
    p.add_argument("name", choices=DATASET_NAMES, help="which benchmark to prepare")
    p.add_argument("--raw", required=True, help="the raw download (see docs/training.md, Datasets)")
    p.add_argument("--root", default=None, help="dataset root (default $DETECTRON2_DATASETS or ./datasets)")
    workers = min(8, available_cpus())
    p.add_argument("--workers", type=int, default=workers, help=f"processes (default {workers}; 0/1: none)")
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--anno-dir", default=None, help="pcontext: folder of the per-image .mat files")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: ``san prepare-data NAME --raw RAW_DIR [--root ROOT] [--workers N] [--copy]``."""
    args = build_parser().parse_args(argv)
    cli_logging()
    from san.data.io import DataError
    from san.data.prepare import PrepareError, PrepareOptions, prepare

    options = PrepareOptions(copy=args.copy, anno_dir=args.anno_dir)
    try:
        summary = prepare(args.name, args.raw, args.root, workers=args.workers, options=options)
    except (PrepareError, DataError) as e:
        print(f"san prepare-data: error: {e}", file=sys.stderr)
        return 1
    for split, counts in summary.items():
        print(
            f"{args.name} {split}: {counts['written']} written, {counts['kept']} already there (verified), "
            f"{counts['empty']} skipped (no valid pixel)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
