"""``san export``: a model for use outside this package.

    san export hub  --weights san-vit-b-16 --output san-vit-b-16/        # the Hugging Face Hub format
    san export onnx --weights san-vit-b-16 --vocabulary "cat, grass, sky" --output model.onnx

``hub`` converts an official or own checkpoint into the Hub format folder (``model.safetensors``,
``config.yaml``, a model card; :mod:`san.hub`), loadable with ``san.SAN.from_pretrained`` and
``SANPredictor.from_pretrained`` and ready for ``huggingface-cli upload``. ``onnx`` writes an ONNX
graph with the vocabulary frozen in it (:mod:`san.inference.onnx`). Outputs are written to a
temporary name and renamed when complete; an existing output is refused without ``--force``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from san.apps.common import cli_logging, fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san export", description="Export a SAN model (Hub folder or ONNX graph).")
    sub = p.add_subparsers(dest="format", required=True, metavar="{hub,onnx}")
    for name, text in (("hub", "the Hugging Face Hub format folder"), ("onnx", "an ONNX graph, vocabulary frozen in")):
        q = sub.add_parser(name, help=text, description=f"Write {text}.")
        q.add_argument(
            "--weights",
            "-w",
            required=True,
            help="san-vit-b-16 | san-vit-l-14 | a model or training folder (OUTPUT_DIR) | checkpoint file | URL",
        )
        q.add_argument("--config-file", default=None, help="config name or YAML (default: the official model's)")
        q.add_argument("--output", "-o", required=True, help="the folder (hub) or .onnx file to write")
        q.add_argument("--force", action="store_true", help="replace an existing output")
        if name == "onnx":
            voc = q.add_mutually_exclusive_group()
            voc.add_argument(
                "--vocabulary", "-v", help="class names separated by commas (default: the model's training classes)"
            )
            voc.add_argument("--vocabulary-file", help="one class per line")
            voc.add_argument("--dataset-vocabulary", help="a dataset's class list, e.g. ade20k_150, or your --data")
            q.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
            q.add_argument(
                "--adapter", default=None, help="a domain adapter (san adapt): its classes frozen in adapted"
            )
        q.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def _fail(message: str) -> int:
    return fail("export", message)


def _check_target(output: Path, force: bool) -> str | None:
    if output.exists() and not force:
        return f"--output {output} exists; pass --force to replace it"
    parent = output.parent if output.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return f"--output {output}: {probe} is not a writable folder"
    return None


def _replace(tmp: Path, output: Path) -> None:
    """Move a finished ``tmp`` to ``output`` (a file or a folder), taking an old ``output`` away first."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old{os.getpid()}")
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.opts) % 2:
        return _fail(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    output = Path(args.output)
    problem = _check_target(output, args.force)
    if problem:
        return _fail(problem)
    cli_logging()
    import torch

    from san.build import build_model
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.hub import HubFormatError
    from san.model_source import config_and_weights, locate_model
    from san.model_zoo import WeightsError

    names = None
    try:
        if args.format == "onnx":
            from san.apps.predict import default_vocabulary
            from san.inference.vocabulary import build_vocabulary

            voc = default_vocabulary(args, "san export") or build_vocabulary(
                args.vocabulary, file=args.vocabulary_file, dataset=args.dataset_vocabulary
            )
            names = voc.names
        cfg, weights = config_and_weights(locate_model(args.weights, args.config_file))
        cfg.merge_from_list(list(args.opts))
        model = build_model(cfg, weights).eval()
        classifier = None
        if getattr(args, "adapter", None):
            from san.inference.adapter import Adapter

            adapter = Adapter.load(args.adapter)
            adapter.check_model(model)
            with torch.no_grad():
                classifier = adapter.classifier(model, names)
    except (ValueError, TypeError, OSError, WeightsError, CheckpointError, ConfigError, HubFormatError) as e:
        return _fail(str(e))
    parent = output.parent if str(output.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{output.name}.") as work:
        tmp = Path(work) / output.name
        if args.format == "hub":
            model.save_pretrained(tmp)
        else:
            from san.inference.onnx import export_onnx

            sizes = {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST}
            print(f"san export: tracing the model ({len(names)} classes) to ONNX opset {args.opset}, about a minute")
            export_onnx(model, names, tmp, **sizes, opset=args.opset, config_yaml=cfg.dump(), classifier=classifier)
        _replace(tmp, output)
    print(f"san export: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
