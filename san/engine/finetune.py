"""Your own data in one command: ``san train --data DATA --output DIR`` (and :func:`finetune` in Python).

The steps, each before the next:

1. read the data in any supported format (:mod:`san.data.own`), check every file and write the
   prepared copy to ``DIR/data`` (nothing is written when the data cannot be trained on);
2. the config: the starting model's own config (an official name, a model folder, a training folder
   or a checkpoint with ``--config-file``), the classes from the data, and a schedule sized to it
   (:func:`small_data_schedule`); trailing ``KEY VALUE`` overrides win;
3. training, which evaluates the starting weights first (the zero-shot row) and draws the first
   batches;
4. the report: loss and mIoU curves, validation predictions beside their ground truth, the zero-shot
   versus fine-tuned table and chart, and the model in the Hub format (``DIR/pretrained``) with its
   training classes and the data summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from san import hub
from san.config import ConfigError
from san.files import atomic_path

__all__ = ["DataRun", "finetune", "prepare_run", "small_data_schedule", "write_report"]

logger = logging.getLogger("san.train")

DEFAULT_WEIGHTS = "san-vit-b-16"
REPORT = "zero_shot_vs_finetuned"


@dataclass(frozen=True)
class DataRun:
    """What ``san train --data`` was given (the flags beside the config overrides)."""

    data: str
    output: str
    val: str | None = None
    weights: str = DEFAULT_WEIGHTS
    config_file: str | None = None
    iters: int | None = None
    format: str | None = None
    val_format: str | None = None
    background: str | None = None
    classes_file: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    push_to_hub: str | None = None


def small_data_schedule(n_train: int, world_size: int, iters: int | None = None) -> dict[str, Any]:
    """The schedule of a run on ``n_train`` images: batches of up to 8 images (a multiple of the process
    count), about 30 passes over the data (100 to 10 000 iterations) unless ``iters`` is given, a
    warm-up of a tenth (at most 100), five evaluations and checkpoints, a log line every 5 % of the run."""
    batch = min(8, n_train) // world_size * world_size
    if batch < 1:
        raise ConfigError(
            f"the training data holds {n_train} image(s), fewer than the {world_size} processes: each needs one"
        )
    if iters is None:
        iters = min(10_000, max(100, math.ceil(30 * n_train / batch)))
    if iters < 1:
        raise ConfigError(f"--iters must be >= 1, got {iters}")
    period = max(1, iters // 5)
    return {
        "SOLVER.IMS_PER_BATCH": batch,
        "SOLVER.MAX_ITER": iters,
        "SOLVER.WARMUP_ITERS": min(100, iters // 10),
        "SOLVER.CHECKPOINT_PERIOD": period,
        "TEST.EVAL_PERIOD": period,
        "SAN_ENGINE.LOG_PERIOD": max(1, min(20, iters // 20)),
    }


def _dataset_name(path: str) -> str:
    base = Path(path.rstrip("/")).name or "data"
    base = re.sub(r"\.(json|ya?ml)$", "", base)
    return re.sub(r"[^\w-]+", "_", base) or "data"


def _read(run: DataRun) -> tuple[Any, Any]:
    from san.data.own import read_dataset
    from san.data.own.base import read_class_lines

    classes = read_class_lines(run.classes_file) if run.classes_file else None
    train = read_dataset(run.data, run.format, background=run.background, classes=classes)
    val = None
    if run.val:
        val = read_dataset(run.val, run.val_format or run.format, background=run.background, classes=classes)
    return train, val


def _base_config(run: DataRun) -> Any:
    from san.model_source import locate_model, model_config

    source = locate_model(run.weights, run.config_file)
    cfg = model_config(source)
    cfg.MODEL.WEIGHTS = source.weights
    return cfg


def prepare_run(run: DataRun, opts: list[str], world_size: int, *, write: bool = True, resume: bool = False) -> Any:
    """Steps 1 and 2 (module docstring): the frozen config of the run. With ``write`` the data folder is
    written (the main process; with ``resume`` an existing one is kept); without, it must exist (other
    processes wait for it)."""
    from san.data.catalog import register_prepared
    from san.data.own import MANIFEST, prepare_data

    out = os.path.abspath(run.output)
    data_dir = os.path.join(out, "data")
    name = _dataset_name(run.data)
    cfg = _base_config(run)  # a bad --weights is said before the data is read
    if write and not (resume and os.path.isfile(os.path.join(data_dir, MANIFEST))):
        train, val = _read(run)
        manifest = prepare_data(train, out, val=val, val_fraction=run.val_fraction, seed=run.seed, name=name)
        _say_summary(data_dir, manifest)
    else:
        if not os.path.isfile(os.path.join(data_dir, MANIFEST)):  # torchrun: every process checks, one writes
            train, val = _read(run)
            prepare_data(train, out, val=val, val_fraction=run.val_fraction, seed=run.seed, progress=False, write=False)
        manifest = _wait_for(os.path.join(data_dir, MANIFEST))
    register_prepared(data_dir, name)
    classes = list(manifest["classes"])
    schedule = small_data_schedule(len(manifest["train"]), world_size, run.iters)
    values: dict[str, Any] = {
        "OUTPUT_DIR": out,
        "SEED": run.seed,
        "DATASETS.TRAIN": (f"{name}_train",),
        "DATASETS.TEST": (f"{name}_val",),
        "MODEL.SAN.NUM_CLASSES": len(classes),
        "SAN_ENGINE.DATA": data_dir,
        "SAN_ENGINE.CLASS_NAMES": classes,
        "SAN_ENGINE.SAVE_PRETRAINED": True,
        "SAN_ENGINE.EVAL_AT_START": True,
        "SAN_ENGINE.SAMPLE_BATCHES": 2,
        "INPUT.FORMAT": "RGB",
        **schedule,
    }
    clip = str(cfg.MODEL.SAN.CLIP_MODEL_NAME)
    if clip.endswith(".json") and os.path.isfile(clip):  # a custom CLIP: the run folder keeps its own copy
        values["MODEL.SAN.CLIP_MODEL_NAME"] = os.path.join(out, hub.CLIP_CONFIG_FILE)
        if write:
            shutil.copyfile(clip, os.path.join(out, hub.CLIP_CONFIG_FILE))
    cfg.merge_from_list([x for kv in values.items() for x in kv] + list(opts))  # the user's overrides win
    cfg.freeze()
    return cfg


def _say_summary(data_dir: str, manifest: dict[str, Any]) -> None:
    """The data summary (each class's pixel share and image count) and the split, on the console."""
    with open(os.path.join(data_dir, "summary.txt"), encoding="utf-8") as f:
        table = f.read().rstrip()
    print(
        f"san train: {manifest['source']['format']} data, {len(manifest['classes'])} classes, "
        f"{len(manifest['train'])} training and {len(manifest['val'])} validation images "
        f"({manifest['split']['from']}); written to {data_dir}\n{table}",
        flush=True,
    )


def _wait_for(path: str, timeout: float = 3600.0) -> dict[str, Any]:
    start = time.monotonic()
    while not os.path.isfile(path):
        if time.monotonic() - start > timeout:
            raise FileNotFoundError(f"{path} did not appear within {timeout:.0f} s (the main process prepares it)")
        time.sleep(0.5)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -- the report ---------------------------------------------------------------------------------------------
def _iou_rows(start: dict[str, Any], end: dict[str, Any], classes: list[str]) -> list[tuple[str, Any, Any]]:
    def get(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None

    return [(c, get(start, f"IoU-{c}"), get(end, f"IoU-{c}")) for c in classes]


def comparison(start: dict[str, Any], end: dict[str, Any], dataset: str, classes: list[str]) -> dict[str, Any]:
    """The zero-shot and fine-tuned metrics of ``dataset`` side by side, from the evaluations of the starting
    and the final weights (``{dataset: {"sem_seg": metrics}}``): overall (mIoU, fwIoU, mACC, pACC) and per class."""
    start = (start.get(dataset) or {}).get("sem_seg", {})
    end = (end.get(dataset) or {}).get("sem_seg", {})
    overall = {k: {"zero_shot": start.get(k), "fine_tuned": end.get(k)} for k in ("mIoU", "fwIoU", "mACC", "pACC")}
    per_class = {c: {"zero_shot": a, "fine_tuned": b} for c, a, b in _iou_rows(start, end, classes)}
    return {"overall": overall, "per_class_iou": per_class}


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def comparison_markdown(table: dict[str, Any], dataset: str) -> str:
    """The comparison as a Markdown table (what ``zero_shot_vs_finetuned.md`` holds)."""
    lines = [
        f"# Zero-shot vs fine-tuned on {dataset}",
        "",
        "| metric | zero-shot | fine-tuned | change |",
        "|---|---|---|---|",
    ]
    rows = [(k, v) for k, v in table["overall"].items()] + [(f"IoU {c}", v) for c, v in table["per_class_iou"].items()]
    for k, v in rows:
        a, b = v["zero_shot"], v["fine_tuned"]
        change = f"{b - a:+.2f}" if a is not None and b is not None else "n/a"
        lines.append(f"| {k} | {_fmt(a)} | {_fmt(b)} | {change} |")
    return "\n".join(lines) + "\n"


def write_report(model: Any, cfg: Any, start: dict[str, Any], end: dict[str, Any], *, num_pictures: int = 6) -> dict:
    """Step 4 (module docstring), on the main process after training; returns the comparison."""
    from san.engine.pictures import comparison_picture, curves_picture

    out = cfg.OUTPUT_DIR
    name = cfg.DATASETS.TEST[0]
    classes = list(cfg.SAN_ENGINE.CLASS_NAMES)
    metrics = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics):
        from san.engine.inference import flatten_results

        curves_picture(metrics, os.path.join(out, "curves.png"), flatten_results(start))
    table = comparison(start, end, name, classes)
    with atomic_path(os.path.join(out, f"{REPORT}.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump({"dataset": name, **table}, f, indent=1)
    with atomic_path(os.path.join(out, f"{REPORT}.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(comparison_markdown(table, name))
    miou = table["overall"]["mIoU"]
    title = f"{name}: mIoU {_fmt(miou['zero_shot'])} zero-shot -> {_fmt(miou['fine_tuned'])} fine-tuned"
    rows = [(c, v["zero_shot"], v["fine_tuned"]) for c, v in table["per_class_iou"].items()]
    comparison_picture(rows, os.path.join(out, f"{REPORT}.png"), title)
    validation_pictures(model, cfg, os.path.join(out, "val_predictions.jpg"), num_pictures)
    pretrained = os.path.join(out, "pretrained")
    if os.path.isdir(pretrained):
        for f in ("summary.json", "summary.txt", "classes.txt"):
            shutil.copyfile(os.path.join(cfg.SAN_ENGINE.DATA, f), os.path.join(pretrained, f"training_data_{f}"))
    logger.info("zero-shot vs fine-tuned on %s:\n%s", name, comparison_markdown(table, name))
    return table


def validation_pictures(model: Any, cfg: Any, path: str, n: int) -> None:
    """The first ``n`` validation images: the photo, its ground truth and the model's labels."""
    import torch

    from san.data.catalog import get_dataset
    from san.data.io import read_image, read_label
    from san.data.loader import build_test_loader
    from san.engine.pictures import prediction_rows

    spec = get_dataset(cfg.DATASETS.TEST[0])
    loader = build_test_loader(cfg, spec.name)
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            for inputs in loader:
                outputs = model.predict_labels(inputs, with_scores=False)
                for inp, out in zip(inputs, outputs):
                    pred = out["labels"].cpu().numpy()
                    rows.append(
                        (
                            read_image(inp["file_name"]),
                            read_label(inp["sem_seg_file_name"]).astype(np.int64),
                            pred,
                            os.path.basename(inp["file_name"]),
                        )
                    )
                if len(rows) >= n:
                    break
    finally:
        model.train(was_training)
    if rows:
        prediction_rows(rows[:n], spec.classes, path)


def finetune(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    weights: str = DEFAULT_WEIGHTS,
    iters: int | None = None,
    opts: list[Any] | tuple[Any, ...] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """Train on your own data in one call, in this process: ``san train --data DATA --output DIR`` (same
    steps, same folder). ``kwargs``: the other :class:`DataRun` fields (config_file, format, background,
    seed, push_to_hub, ...). Returns the zero-shot vs fine-tuned comparison."""
    from san.engine.trainer import Trainer, save_run_config

    run = DataRun(
        os.fspath(data), os.fspath(output), val=os.fspath(val) if val else None, weights=weights, iters=iters, **kwargs
    )
    check_output(run, resume=False)
    cfg = prepare_run(run, [str(o) for o in opts], world_size=1)
    save_run_config(cfg)
    trainer = Trainer(cfg)
    return finish(trainer, run)


def check_output(run: DataRun, resume: bool) -> None:
    """A finished or started run in ``--output`` is continued only with ``--resume``."""
    out = Path(run.output)
    if not resume and ((out / "last_checkpoint").exists() or (out / "data").exists()):
        raise ConfigError(f"{out} already holds a run: add --resume to continue it, or choose another --output")


def finish(trainer: Any, run: DataRun) -> dict[str, Any]:
    """Train, then (main process) the report and the optional upload; returns the comparison."""
    from san.engine import comm

    end = trainer.train()
    start = _start_results(trainer)
    table: dict[str, Any] = {}
    if comm.is_main_process():
        table = write_report(trainer.model, trainer.cfg, start, end or _saved_results(trainer.cfg))
        if run.push_to_hub:
            url = trainer.model.push_to_hub(run.push_to_hub, results=end or None)
            logger.info("pushed the model to %s", url)
    comm.barrier()
    return table


def _saved_results(cfg: Any, folder: str = "inference") -> dict[str, Any]:
    """The evaluation results a run wrote (``<folder>/<dataset>.json``), e.g. of the starting weights."""
    from san.engine.results import safe_name

    out = {}
    for name in cfg.DATASETS.TEST:
        path = os.path.join(cfg.OUTPUT_DIR, folder, f"{safe_name(name)}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out[name] = json.load(f)
    return out


def _start_results(trainer: Any) -> dict[str, Any]:
    from san.engine.trainer import START_RESULTS

    return _saved_results(trainer.cfg, START_RESULTS)
