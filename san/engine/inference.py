"""Evaluation on the configured test datasets, with optional test-time augmentation.

:func:`evaluate` runs every ``DATASETS.TEST`` entry through the test loader (each input carries
its dataset's class names as ``"vocabulary"``, so one model is evaluated zero-shot on every
benchmark) and :class:`~san.engine.evaluator.SemSegEvaluator`; results are logged as a table and
as detectron2's ``copypaste:`` lines and written under ``OUTPUT_DIR/inference`` (JSON, table,
per-class IoU chart; with ``SAN_ENGINE.DUMP_PREDICTIONS`` also ``<dataset>/sem_seg_predictions.json``).
With ``tta``, :class:`san.inference.tta.SemSegTTA` averages the semantic scores over ``TEST.AUG``
sizes and horizontal flips, like the official ``SemanticSegmentorWithTTA``.
:func:`evaluate_only` is the whole ``san train --eval-only`` flow (build, load, evaluate).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from san.build import build_model
from san.data.catalog import register_config_data
from san.data.loader import build_test_loader
from san.inference.tta import SemSegTTA

from . import comm
from .evaluator import SemSegEvaluator, format_results
from .events import format_eta
from .results import safe_name

__all__ = ["evaluate", "evaluate_only", "flatten_results", "print_csv_format"]

logger = logging.getLogger(__name__)


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """``{"<dataset>/sem_seg/<metric>": value}`` for finite numbers (detectron2's flattening)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and node == node:
            flat[prefix] = float(node)

    walk("", results)
    return flat


def print_csv_format(results: dict[str, Any]) -> None:
    """detectron2's ``copypaste:`` lines: task, metric names, values (4 decimals)."""
    for task, res in results.items():
        head = [(k, v) for k, v in res.items() if "-" not in k]
        logger.info("copypaste: Task: %s", task)
        logger.info("copypaste: %s", ",".join(k for k, _ in head))
        logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in head))


def _inference_on_dataset(
    model: nn.Module, loader: Any, evaluator: Any, name: str, label_path: bool = True
) -> dict[str, Any]:
    # the metrics need only the arg-max: the exact label path never forms the [C, H, W] scores
    run = model.predict_labels if label_path and hasattr(model, "predict_labels") else model
    evaluator.reset()
    total = len(loader) if hasattr(loader, "__len__") else None
    start = last_log = time.perf_counter()
    n = 0
    with torch.no_grad():
        for inputs in loader:
            outputs = run(inputs, with_scores=False) if run is not model else model(inputs)
            evaluator.process(inputs, outputs)
            n += 1
            now = time.perf_counter()
            if now - last_log > 5 or n == total:
                per = (now - start) / n
                eta = f", ETA {format_eta(per * (total - n))}" if total else ""
                logger.info("%s: %d/%s batches, %.3f s/batch%s", name, n, total if total else "?", per, eta)
                last_log = now
    return evaluator.evaluate()


def evaluate(
    model: nn.Module,
    cfg: Any,
    dataset_names: Sequence[str] | None = None,
    *,
    output_dir: str | None = None,
    tta: bool = False,
    dump_predictions: bool | None = None,
    label_path: bool = True,
) -> OrderedDict:
    """Evaluate ``model`` on ``dataset_names`` (default ``DATASETS.TEST``), every process its shard.

    Returns ``{dataset: {"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<c>", ...}}}``; files go
    to ``output_dir`` (default ``OUTPUT_DIR/inference``, ``inference_TTA`` with ``tta``).
    ``dump_predictions`` (default ``SAN_ENGINE.DUMP_PREDICTIONS``) also writes each dataset's
    predictions to ``<output_dir>/<dataset>/sem_seg_predictions.json`` (detectron2's format).
    ``label_path`` (default) runs ``SAN.predict_labels``: the same arg-max as the score maps of
    ``SAN.forward`` (so the same metrics) without forming them; with TTA the scores are averaged.
    """
    register_config_data(cfg)
    names = list(cfg.DATASETS.TEST if dataset_names is None else dataset_names)
    if not names:
        raise ValueError(
            "nothing to evaluate: DATASETS.TEST is empty (add e.g. DATASETS.TEST \"('ade20k_sem_seg_val',)\")"
        )
    if dump_predictions is None:
        dump_predictions = bool(cfg.SAN_ENGINE.DUMP_PREDICTIONS) if "SAN_ENGINE" in cfg else False
    model = getattr(model, "module", model)
    if tta:
        a = cfg.TEST.AUG
        model = SemSegTTA(model, a.MIN_SIZES, a.MAX_SIZE, a.FLIP)
    out_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "inference_TTA" if tta else "inference")
    was_training = model.training
    model.eval()
    results: OrderedDict = OrderedDict()
    rank, world = comm.get_rank(), comm.get_world_size()
    try:
        for name in names:
            loader = build_test_loader(cfg, name, rank=rank, world_size=world)
            dump = os.path.join(out_dir, safe_name(name), "sem_seg_predictions.json") if dump_predictions else None
            evaluator = SemSegEvaluator.from_dataset(
                name, distributed=True, output_dir=out_dir, dump_predictions=bool(dump), predictions_file=dump
            )
            logger.info("evaluating %s%s on %d process(es)", name, " with TTA" if tta else "", world)
            res = _inference_on_dataset(model, loader, evaluator, name, label_path=label_path and not tta)
            results[name] = res
            if comm.is_main_process():
                logger.info("evaluation results for %s:\n%s", name, format_results(res))
                print_csv_format(res)
    finally:
        model.train(was_training)
    return results


def evaluate_only(cfg: Any, weights: str | None, *, device: torch.device) -> dict[str, Any]:
    """``san train --eval-only``: build the model with ``weights`` (a checkpoint file, URL or
    official name; None: an untrained side adapter) and evaluate it on ``DATASETS.TEST``, also with
    TTA when ``TEST.AUG.ENABLED`` (results keyed ``<dataset>_TTA``)."""
    if weights is None:
        logger.warning("no MODEL.WEIGHTS: evaluating an untrained side adapter")
    model = build_model(cfg, weights).to(device)
    if weights is not None:
        logger.info("evaluating %s", weights)
    results = dict(evaluate(model, cfg))
    if cfg.TEST.AUG.ENABLED:
        results.update({f"{k}_TTA": v for k, v in evaluate(model, cfg, tta=True).items()})
    return results
