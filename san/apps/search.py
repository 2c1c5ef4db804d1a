"""``san search``: rank the images of a region index by their best match with a phrase.

    san search photos.index "a red umbrella" --top 10
    san search photos.index "umbrella" --vocabulary "sky, person, tree" --output hits/

The phrase is scored against every region of every image with the model that built the index (its
classifier: prompt templates and background row); ``--vocabulary`` makes other names compete with it,
as in a segmentation. Prints ``rank score image``; ``--output`` also writes each hit's image with the
matching region highlighted (``rank01_NAME.png``, ...) and ``results.json``. The model is the index's
(weights and config recorded in it); ``--weights`` points elsewhere when its file moved, and must be the
same model. Exit codes: 0 done, 2 usage error (empty query, not an index, an empty index, another model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from san.apps.common import cli_logging, fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san search", description="Search a san index for a phrase.")
    p.add_argument("index", help="the folder written by san index")
    p.add_argument("query", help="what to look for, e.g. 'a red umbrella'")
    p.add_argument("--top", "-k", type=int, default=10, help="how many images to list (default 10)")
    p.add_argument("--vocabulary", "-v", default=None, help="names that compete with the query (commas)")
    p.add_argument("--output", "-o", default=None, help="write highlighted hits and results.json here")
    p.add_argument("--weights", "-w", default=None, help="the index's model weights, if its file moved")
    p.add_argument("--adapter", default=None, help="a domain adapter of the index's model (san adapt's folder)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _fail(message: str) -> int:
    return fail("search", message)


def load_index_predictor(index: Any, weights: str | None, device: str | None, adapter: str | None = None) -> Any:
    """The predictor of the model that built ``index`` (its config and weights, or ``weights``), with a
    domain adapter of that model when given."""
    from san.build import build_model
    from san.hub import read_config_text
    from san.inference.index import RegionIndexError
    from san.inference.predictor import SANPredictor
    from san.model_zoo import local_weights_missing

    source = weights or index.meta["weights"]
    if weights is None and local_weights_missing(source):
        raise RegionIndexError(
            f"the index was built with the weights {source}, which are no longer there: pass --weights PATH "
            "(the same weights, wherever they are now)"
        )
    cfg = read_config_text(index.meta["config_yaml"])
    model = build_model(cfg, source).eval()
    sizes = {"min_size": index.meta["min_size"], "max_size": index.meta["max_size"]}
    return SANPredictor(model, device=device, adapter=adapter, **sizes)


def main(argv: list[str] | None = None) -> int:
    """Run ``san search``; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cli_logging(logging.WARNING)
    from san.devices import check_device_name
    from san.inference.vocabulary import check_query

    try:  # the checks that need no model, before the heavy imports
        check_query(args.query, args.top)
        check_device_name(args.device)
    except ValueError as e:
        return _fail(str(e))
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.data.images import ImageError, read_image
    from san.files import atomic_path
    from san.hub import HubFormatError
    from san.inference.index import RegionIndex, RegionIndexError
    from san.inference.outputs import OutputError, check_output_dir
    from san.inference.visualize import highlight
    from san.model_zoo import WeightsError

    try:
        index = RegionIndex(args.index)
        index.check_not_empty()
        out = check_output_dir(args.output) if args.output else None
        predictor = load_index_predictor(index, args.weights, args.device, args.adapter)
        hits = index.search(predictor, args.query, vocabulary=args.vocabulary, top=args.top)
    except (RegionIndexError, OutputError, HubFormatError, ConfigError, CheckpointError, WeightsError) as e:
        return _fail(str(e))
    except (ValueError, OSError) as e:  # a bad vocabulary, unreadable weights
        return _fail(f"{type(e).__name__}: {e}")
    rows = []
    for rank, hit in enumerate(hits, 1):
        row = {"rank": rank, "score": round(hit.score, 6), "image": hit.image}
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            name = f"rank{rank:02d}_{Path(hit.image).stem}.png"
            try:
                image, mask = read_image(hit.image), index.region_mask(hit, predictor)
                if image.shape[:2] != mask.shape:
                    raise ImageError(
                        f"now {image.shape[1]}x{image.shape[0]}, indexed at {mask.shape[1]}x{mask.shape[0]}"
                    )
                picture = highlight(image, mask)
            except ImageError as e:  # moved, deleted or changed since it was indexed
                print(f"san search: no picture for {hit.image}: {e}", file=sys.stderr)
            else:
                from PIL import Image

                with atomic_path(out / name) as tmp:
                    Image.fromarray(picture).save(tmp, format="PNG")
                row["picture"] = name
        rows.append(row)
    result = {"index": str(args.index), "query": args.query, "vocabulary": args.vocabulary, "hits": rows}
    if out is not None:
        with atomic_path(out / "results.json") as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            print(f"{row['rank']:>4}  {row['score']:.4f}  {row['image']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
