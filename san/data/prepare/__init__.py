"""Raw dataset downloads -> the benchmark layout the catalog reads (``san prepare-data``).

One module per dataset holds its label conversion (those of the official release and its
predecessor) and the raw layout it expects (see docs/training.md, Datasets):
:mod:`.coco_stuff`, :mod:`.ade20k` (150 and 847), :mod:`.pcontext` (59 and 459), :mod:`.voc`.
Outputs are written atomically; existing outputs are verified and kept, so a run can be interrupted
and restarted. Every label written or kept is read back and checked (value range, size equal to
its image's).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from san.data.catalog import dataset_root
from san.data.io import DataError, read_image, write_label

from . import ade20k, coco_stuff, pcontext, voc
from .common import PrepareError, PrepareOptions, Task, place_image, save_jpeg, verify
from .pcontext import PC59_IDS

__all__ = ["DATASETS", "PC59_IDS", "PrepareError", "PrepareOptions", "prepare", "safe_load_index"]

logger = logging.getLogger(__name__)

safe_load_index = ade20k.safe_load_index


@dataclass(frozen=True)
class _Dataset:
    tasks: Callable[[str, str, PrepareOptions], dict[str, list[Task]]]
    convert: Callable[[str], np.ndarray | None]  # raw label file -> label map, or None: no valid pixel
    ignore: int
    num_classes: int


DATASETS: dict[str, _Dataset] = {
    "coco_stuff": _Dataset(coco_stuff.tasks, coco_stuff.convert, coco_stuff.IGNORE, coco_stuff.NUM_CLASSES),
    "ade20k_150": _Dataset(ade20k.tasks_150, ade20k.convert_150, ade20k.IGNORE_150, ade20k.NUM_150),
    "ade20k_847": _Dataset(ade20k.tasks_847, ade20k.convert_847, ade20k.IGNORE_847, ade20k.NUM_847),
    "pcontext_59": _Dataset(
        lambda raw, root, o: pcontext.tasks("pcontext_59", raw, root, o),
        pcontext.convert_59,
        pcontext.IGNORE_59,
        pcontext.NUM_59,
    ),
    "pcontext_459": _Dataset(
        lambda raw, root, o: pcontext.tasks("pcontext_459", raw, root, o),
        pcontext.convert_459,
        pcontext.IGNORE_459,
        pcontext.NUM_459,
    ),
    "voc": _Dataset(voc.tasks, voc.convert, voc.IGNORE, voc.NUM_CLASSES),
}


def _run(task: Task) -> str:
    """Convert one sample; returns 'written', 'kept' (verified existing output) or 'empty'."""
    ds = DATASETS[task.kind]
    if os.path.exists(task.label_dst) and (task.image_dst is None or os.path.exists(task.image_dst)):
        try:
            verify(task, ds.ignore, ds.num_classes)
            return "kept"
        except (DataError, OSError):
            os.remove(task.label_dst)  # a bad leftover: convert again
    label = ds.convert(task.label_src)
    if label is None:
        return "empty"
    if task.image_dst is not None:
        if task.image_mode == "resize512":
            image = read_image(task.image_src)
            if image.shape[:2] != label.shape:
                raise DataError(f"{task.image_src} and its annotation {task.label_src} differ in size")
            image, label = ade20k.resize_to_512(image, label)
            if not os.path.exists(task.image_dst):
                save_jpeg(image, task.image_dst)
        else:
            place_image(task.image_src, task.image_dst, task.image_mode)
    write_label(task.label_dst, label)
    verify(task, ds.ignore, ds.num_classes)
    return "written"


def prepare(
    name: str, raw: str, root: str | None = None, *, workers: int = 0, options: PrepareOptions | None = None
) -> dict[str, Counter]:
    """Prepare dataset ``name`` from ``raw`` under ``root`` (default: the dataset root); returns
    per-split counts of ``written``, ``kept`` and ``empty`` samples. ``workers > 1`` converts in
    that many processes."""
    if name not in DATASETS:
        raise PrepareError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not os.path.isdir(raw):
        raise PrepareError(f"{name}: raw directory {raw} does not exist")
    root = root if root is not None else dataset_root()
    splits = DATASETS[name].tasks(raw, root, options or PrepareOptions())
    summary: dict[str, Counter] = {}
    for split, tasks in splits.items():
        for t in tasks:
            if not os.path.isfile(t.label_src):
                raise PrepareError(f"{name} {split}: annotation {t.label_src} is missing")
        if tasks:
            os.makedirs(os.path.dirname(tasks[0].label_dst), exist_ok=True)
        counts: Counter = Counter()
        with tqdm(total=len(tasks), desc=f"{name} {split}", unit="img", disable=None) as bar:
            if workers > 1 and len(tasks) > 1:
                with ProcessPoolExecutor(workers) as pool:
                    statuses = pool.map(_run, tasks, chunksize=16)
                    for status in statuses:
                        counts[status] += 1
                        bar.update()
            else:
                for task in tasks:
                    counts[_run(task)] += 1
                    bar.update()
        summary[split] = counts
        logger.debug("%s %s: %s", name, split, dict(counts))  # the command line prints its own line
    return summary
