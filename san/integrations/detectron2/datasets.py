"""Every named dataset of :mod:`san.data.catalog` in detectron2's ``DatasetCatalog``/``MetadataCatalog``.

Dataset dicts are ``{"file_name", "sem_seg_file_name"}`` (as detectron2's ``load_sem_seg``
makes them); metadata holds ``stuff_classes``, ``ignore_label``, ``evaluator_type`` ("sem_seg"),
``image_root``, ``sem_seg_root`` and, where the catalog knows the raw dataset ids (COCO-Stuff,
ADE-847), ``stuff_dataset_id_to_contiguous_id``, so detectron2's ``SemSegEvaluator`` writes its
JSON with dataset ids as the official release does. Files are listed lazily, when a loader asks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

from san.data.catalog import dataset_root, get_dataset, list_datasets

__all__ = ["register_all_datasets", "register_dataset"]

logger = logging.getLogger(__name__)

# name -> dataset root it was registered with by this module
_REGISTERED: dict[str, str] = {}


def _metadata(name: str, root: str) -> dict[str, Any]:
    spec = get_dataset(name)
    resolved = spec.resolve(root)
    meta: dict[str, Any] = {
        "stuff_classes": list(spec.classes),
        "ignore_label": int(spec.ignore_label),
        "evaluator_type": spec.evaluator_type,
        "image_root": resolved.image_dir,
        "sem_seg_root": resolved.gt_dir,
    }
    if spec.dataset_ids is not None:
        meta["stuff_dataset_id_to_contiguous_id"] = {int(d): i for i, d in enumerate(spec.dataset_ids)}
    return meta


def _load(name: str, root: str) -> list[dict[str, str]]:
    samples = get_dataset(name).list_samples(root)
    logger.info("loaded %d images of %s from %s", len(samples), name, root)
    return [{"file_name": s["file_name"], "sem_seg_file_name": s["sem_seg_file_name"]} for s in samples]


def register_dataset(name: str, root: str | os.PathLike | None = None) -> None:
    """Register one named dataset under ``root`` (default ``$DETECTRON2_DATASETS`` or ``datasets``).

    Registering again with the same root does nothing; with another root, or over a registration
    made elsewhere (detectron2's builtin ``ade20k_sem_seg_*``), it replaces it.
    """
    root = os.fspath(root) if root is not None else dataset_root()
    get_dataset(name)  # unknown names fail here, listing the known ones
    if _REGISTERED.get(name) == root and name in DatasetCatalog.list():
        return
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda n=name, r=root: _load(n, r))
    MetadataCatalog.get(name).set(**_metadata(name, root))
    _REGISTERED[name] = root


def register_all_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Register every named dataset of :func:`san.data.catalog.list_datasets` (idempotent).

    Returns the registered names.
    """
    names = list(list_datasets())
    for name in names:
        register_dataset(name, root)
    return names
