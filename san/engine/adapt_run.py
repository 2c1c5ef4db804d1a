"""``san adapt`` / :func:`adapt`: a few labelled images of any own-data format -> an adapter folder.

The folder holds ``adapter.safetensors`` (:class:`~san.inference.adapter.Adapter`, what ``--adapter``
takes), ``report.json`` (zero-shot, adapted and cap mIoU with per-class IoU on held-out labelled
images, the share of the gap closed, the shots, the time taken) and ``report.jpg`` (held-out images:
the photo, its labels, zero-shot and adapted predictions) and ``report_iou.png`` (per-class IoU, zero-shot
against adapted). Everything that needs no model is checked
first (the output folder, the data, the shots per class); the folder is written whole (complete or
absent).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import numpy as np

from san.data.own import FormatError, read_dataset
from san.inference.adapter import ADAPTER_FILE

from .adapt import MODES, adapt_encodings, encode_shots, evaluate, sample_shots

__all__ = ["adapt"]

REPORT, PICTURE, CHART = "report.json", "report.jpg", "report_iou.png"


def _labels(ds: Any) -> dict[str, np.ndarray]:
    return {s.key: s.label.read() for s in ds.samples}


def adapt(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    shots: int = 5,
    seed: int = 0,
    mode: str = "prototype",
    weights: str | None = "san-vit-b-16",
    config_file: str | None = None,
    opts: list[str] | tuple[str, ...] = (),
    val: str | os.PathLike | None = None,
    data_format: str | None = None,
    background: str | None = None,
    held_out: int = 32,
    device: str | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Adapt a model to the domain of ``data`` from ``shots`` labelled images per class (drawn with
    ``seed``); ``val`` (or up to ``held_out`` of the remaining images) measures it. ``options``: the
    :func:`~san.engine.adapt.adapt_encodings` settings (``alpha``, ``steps``, ``lr``, ``weight``,
    ``objective``, ``prototypes``, ``background_row``). Returns the report."""
    from san.inference.outputs import check_output_dir
    from san.inference.runner import open_predictor

    t0 = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = check_output_dir(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--output {out} already holds files: give a new folder for the adapter")
    ds = read_dataset(data, data_format, background=background)
    labels = _labels(ds)
    chosen = sample_shots(ds, labels, shots, seed)
    if val is not None:
        val_ds = read_dataset(val, data_format, background=background)
        if val_ds.classes != ds.classes:
            raise FormatError(f"{val} has the classes {val_ds.classes}, {data} has {ds.classes}: give matching data")
        val_labels, val_keys = _labels(val_ds), sorted(s.key for s in val_ds.samples)[:held_out]
    else:
        val_ds, val_labels = ds, labels
        val_keys = [k for k in sorted(labels) if k not in chosen][:held_out]
    predictor, meta = open_predictor(weights, config_file, device=device, opts=list(opts))
    shot_list = encode_shots(predictor, ds, chosen, labels)
    held = encode_shots(predictor, val_ds, val_keys, val_labels) if val_keys else []
    provenance = {
        "base": meta,
        "data": os.path.abspath(os.fspath(data)),
        "shots": shots,
        "seed": seed,
        "images": [s.image or s.key for s in ds.subset(chosen).samples],  # the files (a table's rows: keys)
    }
    row = options.pop("background_row", False)
    adapter = adapt_encodings(predictor, shot_list, ds.classes, mode=mode, background=row, meta=provenance, **options)
    adapter.base = str(meta["weights"])
    predictor.adapter = adapter
    report: dict[str, Any] = {
        "mode": mode,
        "classes": ds.classes,
        "shots": shots,
        "seed": seed,
        "shot_images": provenance["images"],
        "adapt_seconds": adapter.meta["seconds"],
    }
    if held:
        report.update(evaluate(predictor, held, ds.classes))
    report["seconds"] = round(time.perf_counter() - t0, 3)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        adapter.save(tmp / ADAPTER_FILE)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if held:
            _picture(predictor, held[:3], val_ds, ds.classes).save(tmp / PICTURE, quality=90)
            _chart(report, str(tmp / CHART))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _chart(report: dict[str, Any], path: str) -> None:
    """Per-class IoU bars, zero-shot against adapted (skipped, said once, without matplotlib)."""
    from .pictures import comparison_picture

    zero, adapted = report["zero_shot"], report["adapted"]
    rows = [(c, zero["IoU"][c], adapted["IoU"][c]) for c in report["classes"]]
    title = (
        f"held-out mIoU {zero['mIoU']:.1f} zero-shot -> {adapted['mIoU']:.1f} adapted (cap {report['cap']['mIoU']:.1f})"
    )
    comparison_picture(rows, path, title, after="adapted")


def _picture(predictor: Any, held: list, ds: Any, classes: list[str]) -> Any:
    """Rows of [photo | labels | zero-shot | adapted] for a few held-out images."""
    from PIL import Image, ImageDraw

    from san.inference.visualize import overlay

    samples = {s.key: s for s in ds.samples}
    rows = []
    for shot in held:
        image = samples[shot.key].read_image()
        truth = np.where(shot.labels < len(classes), shot.labels, 0)
        zero = predictor.classify(shot.encoding, classes, adapted=False).labels
        adapted = predictor.classify(shot.encoding, classes).labels
        tiles = [image, overlay(image, truth, classes), overlay(image, zero, classes), overlay(image, adapted, classes)]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    canvas = np.full((sum(r.shape[0] for r in rows) + 24, width, 3), 255, np.uint8)
    y = 24
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    tile = rows[0].shape[1] // 4
    for i, title in enumerate(["photo", "labels", "zero-shot", "adapted"]):
        draw.text((i * tile + 6, 6), title, fill=(0, 0, 0))
    return picture
