"""``san adapt``: adapt a model's classifier to a domain from a few labelled images per class.

    san adapt --data my_data/ --shots 5 --weights san-vit-b-16 --output my_adapter/
    san predict --input photos/ --weights san-vit-b-16 --adapter my_adapter/ --vocabulary "crack, sky, person"

The base model stays frozen; the adapter folder (``adapter.safetensors``, ``report.json``,
``report.jpg``; :mod:`san.engine.adapt_run`) plugs in wherever ``--adapter`` is taken. Exit codes: 0
done, 2 usage or data error (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from san.apps.common import cli_logging, fail


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san adapt", description="Adapt SAN's classifier to a domain from a few shots.")
    p.add_argument("--data", required=True, help="labelled images in any format of san train --data")
    p.add_argument("--output", "-o", required=True, help="the adapter folder (new)")
    p.add_argument("--shots", type=int, default=5, help="labelled images per class (default 5)")
    p.add_argument("--seed", type=int, default=0, help="which shots are drawn")
    p.add_argument(
        "--mode",
        choices=["prototype", "tuned"],
        default="prototype",
        help="prototype (training-free; default) or tuned",
    )
    p.add_argument("--weights", "-w", default=None, help="the base model, as san predict takes it")
    p.add_argument("--config-file", default=None, help="config name or YAML (default: the model's)")
    p.add_argument("--val", default=None, help="held-out labelled images for the report (default: unused images)")
    p.add_argument("--held-out", type=int, default=32, help="held-out images measured (default 32)")
    p.add_argument("--format", default=None, help="the data format (default: detected)")
    p.add_argument("--background", default=None, help="the class name of unannotated pixels (else ignored)")
    p.add_argument("--alpha", type=float, default=0.8, help="prototype share of an adapted embedding (default 0.8)")
    p.add_argument("--steps", type=int, default=300, help="tuned: gradient steps (default 300)")
    p.add_argument("--objective", choices=["labels", "matched", "both"], default="labels", help="tuned: the loss")
    p.add_argument("--no-prototypes", action="store_true", help="tuned: start from the text embeddings alone")
    p.add_argument("--adapt-background", action="store_true", help="also learn the background (no-object) row")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``san adapt``; returns the exit code."""
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.data.own import FormatError
    from san.engine.adapt_run import adapt
    from san.inference.outputs import OutputError
    from san.model_zoo import WeightsError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cli_logging()
    if len(args.opts) % 2:
        return fail("adapt", f"config overrides come in KEY VALUE pairs, got {args.opts}")
    try:
        report = adapt(
            args.data,
            args.output,
            shots=args.shots,
            seed=args.seed,
            mode=args.mode,
            weights=args.weights,
            config_file=args.config_file,
            opts=args.opts,
            val=args.val,
            data_format=args.format,
            background=args.background,
            held_out=args.held_out,
            device=args.device,
            alpha=args.alpha,
            steps=args.steps,
            objective=args.objective,
            prototypes=not args.no_prototypes,
            background_row=args.adapt_background,
        )
    except (FormatError, OutputError, FileExistsError, WeightsError, CheckpointError, ConfigError, ValueError) as e:
        return fail("adapt", str(e))
    line = f"san adapt: {len(report['classes'])} class(es) from {len(report['shot_images'])} image(s) -> {args.output}"
    if "gap_closed" in report:
        closed = report["gap_closed"]
        line += (
            f"; held-out mIoU {report['zero_shot']['mIoU']:.1f} zero-shot -> {report['adapted']['mIoU']:.1f} adapted"
            f" (cap {report['cap']['mIoU']:.1f}" + ("" if closed is None else f", {100 * closed:.0f}% of the gap") + ")"
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
