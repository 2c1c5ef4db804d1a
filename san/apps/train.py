"""``san train``: train on your own data in one command, or train and evaluate SAN with the official
``train_net.py`` command line.

Examples::

    san train --data my_dataset/ --output runs/mine                      # any supported format
    san train --data coco.json --val val.json --output runs/mine --weights san-vit-b-16 --iters 2000

    san train --config-file configs/san_clip_vit_res4_coco.yaml --num-gpus 8 OUTPUT_DIR output/san_b16
    san train --config-file configs/san_clip_vit_res4_coco.yaml --num-gpus 8 --resume OUTPUT_DIR output/san_b16
    san train --config-file configs/san_clip_vit_res4_coco.yaml --eval-only MODEL.WEIGHTS san_vit_b_16.pth
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m san train --config-file configs/san_clip_vit_res4_coco.yaml OUTPUT_DIR output/san_b16

Under ``torchrun`` (RANK/WORLD_SIZE in the environment) each process joins that group; otherwise
``--num-gpus N`` (> 1) starts N local processes itself, and ``--num-machines``/``--machine-rank``/
``--dist-url`` connect several machines as detectron2's ``launch`` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import Any

from san.apps.common import fail
from san.data.formats import FORMATS
from san.devices import PRECISIONS, amp_settings
from san.engine.launch import add_launch_arguments, check_launch_arguments, launch, needs_launch

__all__ = ["build_config", "build_parser", "main", "preflight", "setup"]

logger = logging.getLogger("san.train")


def build_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` flags, plus ``--datasets-yaml``, ``--precision`` and
    ``--dump-predictions``."""
    p = argparse.ArgumentParser(
        prog="san train",
        description="Train SAN or evaluate it on DATASETS.TEST (the official train_net.py command line).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs override config keys, e.g. SOLVER.IMS_PER_BATCH 16 OUTPUT_DIR out/",
    )
    p.add_argument("--config-file", default="", metavar="FILE", help="path to a config file (or a bundled config name)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint if it exists")
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)"
    )
    add_launch_arguments(p)
    p.add_argument(
        "--datasets-yaml",
        action="append",
        default=[],
        metavar="FILE",
        help="register your own datasets from a YAML file (san.data.register_datasets_from_yaml); repeatable",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="override SOLVER.AMP: fp32 (no autocast), fp16 (autocast + GradScaler), bf16 (autocast, no scaler)",
    )
    p.add_argument(
        "--dump-predictions",
        action="store_true",
        help="write every evaluated image's prediction to OUTPUT_DIR/inference/<dataset>/sem_seg_predictions.json "
        "(COCO-style RLE, detectron2's format); the same as SAN_ENGINE.DUMP_PREDICTIONS True",
    )
    own = p.add_argument_group(
        "your own data (san train --data DATA --output DIR): the format is detected, the classes come from the "
        "data, the schedule fits its size; KEY VALUE overrides still apply"
    )
    own.add_argument("--data", metavar="DATA", help="a dataset folder, COCO JSON, YOLO data.yaml or HF dataset")
    own.add_argument("--val", metavar="DATA", help="validation data (default: a seeded split of --data)")
    own.add_argument("--output", metavar="DIR", help="the run folder (OUTPUT_DIR)")
    own.add_argument(
        "--weights",
        default=None,
        help="starting model: san-vit-b-16 (default), a model or training folder, a checkpoint",
    )
    own.add_argument("--iters", type=int, default=None, help="iterations (default: ~30 passes, 100 to 10000)")
    own.add_argument("--format", choices=FORMATS, default=None, help="force the format of --data")
    own.add_argument("--val-format", choices=FORMATS, default=None, help="force the format of --val")
    own.add_argument("--background", default=None, metavar="NAME", help="class name of unannotated pixels")
    own.add_argument("--classes", default=None, metavar="FILE", help="class names of a dataset that lacks them")
    own.add_argument("--val-fraction", type=float, default=0.2, help="share split off for validation (default 0.2)")
    own.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    own.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the trained model at the end")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p


_DATA_ONLY = ("val", "output", "weights", "iters", "format", "val_format", "background", "classes", "push_to_hub")


def data_run(args: argparse.Namespace) -> Any:
    """The :class:`san.engine.finetune.DataRun` of ``--data`` and its flags (None without ``--data``)."""
    from san.engine.finetune import DEFAULT_WEIGHTS, DataRun

    if not args.data:
        return None
    return DataRun(
        data=args.data,
        output=args.output,
        val=args.val,
        weights=args.weights or DEFAULT_WEIGHTS,
        config_file=args.config_file or None,
        iters=args.iters,
        format=args.format,
        val_format=args.val_format,
        background=args.background,
        classes_file=args.classes,
        val_fraction=args.val_fraction,
        seed=args.seed,
        push_to_hub=args.push_to_hub,
    )


def _data_problem(args: argparse.Namespace) -> str | None:
    if not args.data:
        given = [f"--{k.replace('_', '-')}" for k in _DATA_ONLY if getattr(args, k) is not None]
        return f"{given[0]} goes with --data DATA (training on your own data)" if given else None
    if not args.output:
        return "--data needs --output DIR, the run folder"
    if args.eval_only:
        return "--eval-only evaluates a config's DATASETS.TEST; with --data, training evaluates on the validation data"
    if not 0.0 < args.val_fraction < 1.0:
        return f"--val-fraction must be between 0 and 1, got {args.val_fraction}"
    return None


class _StdoutHandler(logging.StreamHandler):
    """A console handler that writes to ``sys.stdout`` as it is when a record is emitted, so a caller
    that swaps stdout (pytest, notebooks, ``contextlib.redirect_stdout``) never leaves it a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(output_dir: str | None, rank: int) -> None:
    """Console (rank 0: INFO, others: WARNING) and ``OUTPUT_DIR/log.txt`` handlers on the ``san`` logger.

    Records still propagate to the root logger, so handlers a caller installed there (``caplog``, an
    application's own logging) keep seeing ``san`` messages after a run in the same process."""
    root = logging.getLogger("san")
    for h in list(root.handlers):
        if getattr(h, "_san_train", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    stream = _StdoutHandler()
    stream.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [stream]
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h._san_train = True  # type: ignore[attr-defined]
        root.addHandler(h)


def build_config(args: argparse.Namespace) -> Any:
    """The frozen config of the file, the overrides and the flags; writes nothing."""
    from san.config import get_cfg, get_config_file
    from san.data import register_datasets_from_yaml
    from san.data.catalog import register_config_data

    for path in args.datasets_yaml:
        register_datasets_from_yaml(path, overwrite=True)
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(get_config_file(args.config_file))
    cfg.merge_from_list(list(args.opts))
    if args.precision:
        cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION = amp_settings(args.precision)
    if args.dump_predictions:
        cfg.SAN_ENGINE.DUMP_PREDICTIONS = True
    register_config_data(cfg)
    cfg.freeze()
    return cfg


def preflight(args: argparse.Namespace, world_size: int) -> Any:
    """The config, after the checks that need no model (batch split, training data size, class count):
    run before any process is spawned and before ``OUTPUT_DIR`` gets a file, so that bad input ends
    with one line, exit code 2 and nothing written."""
    from san.engine.finetune import check_output, prepare_run
    from san.engine.trainer import check_batch, check_training_classes

    run = data_run(args)
    if run is not None:
        main = int(os.environ.get("RANK", "0")) == 0
        if main:  # under torchrun the others may already see the folder the main process is writing
            check_output(run, args.resume)
        cfg = prepare_run(run, list(args.opts), world_size, write=main, resume=args.resume)
    else:
        cfg = build_config(args)
    if not args.eval_only:
        check_batch(cfg, world_size)
        check_training_classes(cfg)
    return cfg


def setup(args: argparse.Namespace) -> Any:
    """Config from the file, overrides and flags (frozen); logging; ``OUTPUT_DIR/config.yaml``."""
    from san.engine import comm
    from san.engine.finetune import prepare_run
    from san.engine.trainer import save_run_config

    run = data_run(args)
    cfg = prepare_run(run, list(args.opts), args.world, write=False) if run else build_config(args)
    rank = int(os.environ.get("RANK", comm.get_rank()))
    _setup_logging(cfg.OUTPUT_DIR, rank)
    if rank == 0:
        logger.info("command line: %s", vars(args))
        logger.info("full config saved to %s", save_run_config(cfg))
    return cfg


def _evaluate_only(cfg: Any, resume: bool) -> dict[str, Any]:
    from san.engine import comm
    from san.engine.inference import evaluate_only
    from san.engine.trainer import last_checkpoint_path, resolve_device

    device = resolve_device(cfg)
    comm.init_distributed(device.type)
    weights = (last_checkpoint_path(cfg.OUTPUT_DIR) if resume else None) or cfg.MODEL.WEIGHTS or None
    return evaluate_only(cfg, weights, device=device)


def _fixable_errors() -> tuple[type[Exception], ...]:
    """What a user can fix (config, files, weights, data): said in one line, not a traceback."""
    from san.checkpoint import CheckpointError
    from san.config import ConfigError
    from san.data.io import DataError
    from san.hub import HubFormatError
    from san.model_zoo import WeightsError

    return FileNotFoundError, ConfigError, CheckpointError, WeightsError, DataError, HubFormatError


def _main_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch.distributed as dist

    from san.engine.finetune import finish
    from san.engine.trainer import Trainer

    try:
        cfg = setup(args)
        if args.eval_only:
            return _evaluate_only(cfg, args.resume)
        run = data_run(args)
        if run is not None:
            return finish(Trainer(cfg, resume=args.resume), run)
        return Trainer(cfg, resume=args.resume).train()
    except _fixable_errors() as e:
        raise SystemExit(f"san train: {e}") from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _flags_among_overrides(opts: list[str]) -> str | None:
    """A hint when a flag was given after the KEY VALUE overrides (argparse takes it as a key)."""
    flags = [o for o in opts if str(o).startswith("--")]
    if not flags:
        return None
    return (
        f"{flags[0]} comes after the KEY VALUE config overrides, where only config keys go: put the flags "
        f"first, e.g. san train --config-file FILE {flags[0]} ... KEY VALUE ..."
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``san train`` and ``python -m san train``; returns the exit code: 0 done,
    2 bad input (one line on stderr, nothing written), 1 a process failed unexpectedly."""
    from san.engine.launch import LaunchFailed

    args = build_parser().parse_args(argv)
    problem = _flags_among_overrides(args.opts) or check_launch_arguments(args) or _data_problem(args)
    if problem:
        return fail("train", problem)
    world = int(os.environ.get("WORLD_SIZE", args.num_gpus * args.num_machines))
    args.world = world
    main_rank = int(os.environ.get("RANK", "0")) == 0
    run = data_run(args)
    existed = run is not None and os.path.exists(run.output)
    try:
        preflight(args, world)
    except _fixable_errors() as e:
        if main_rank:  # under torchrun every process checks; one says so
            if run is not None and not existed:  # nothing left behind: the prepared data goes too
                shutil.rmtree(run.output, ignore_errors=True)
            fail("train", str(e))
        return 2
    if needs_launch(args):
        try:
            launch(_main_worker, args, "san train")
        except LaunchFailed as e:
            for message in e.messages:
                print(message, file=sys.stderr)
            return 2 if e.refused else 1
        return 0
    try:
        _main_worker(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
