"""Dataset records -> model inputs, for training (augmented, per-class masks) and for testing.

A record is ``{"file_name", "sem_seg_file_name"}`` (from :meth:`DatasetSpec.list_samples`),
optionally with ``"dataset_name"`` (the loader adds it) naming the catalog entry that gives the
vocabulary and ignore value.

:class:`SemanticTrainMapper` (the official MaskFormerSemanticDatasetMapper): read, augment
(:func:`san.data.transforms.build_train_augmentations`), pad to ``INPUT.SIZE_DIVISIBILITY`` (image
128, label ignore), then one binary mask per class present (ignore excluded)::

    {"image": uint8 [3, H, W] RGB, "sem_seg": long [H, W],
     "instances": {"labels": long [K], "masks": bool [K, H, W]},
     "vocabulary": [names], "height": H, "width": W, "file_name", "dataset_name"}

``height``/``width`` are those of the returned (augmented, padded) image.

:class:`SemanticTestMapper` (detectron2's test DatasetMapper): the image resized so its short side
is ``INPUT.MIN_SIZE_TEST`` (long side at most ``INPUT.MAX_SIZE_TEST``; PIL bilinear, antialiased when
downscaling, as detectron2's ResizeTransform does for uint8 images), ``height``/``width`` the
original size (the model predicts at that size) and ``sem_seg`` the original-resolution labels.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from san.config import ConfigError

from .catalog import DatasetSpec, get_dataset
from .io import DataError, read_image, read_label
from .transforms import Compose, build_train_augmentations, pad_to_divisible, resize_image, shortest_edge_size

__all__ = ["SemanticTestMapper", "SemanticTrainMapper", "check_rgb_format", "per_class_masks"]

logger = logging.getLogger(__name__)


def check_rgb_format(cfg: Any) -> None:
    """SAN normalises with CLIP's RGB statistics: refuse ``INPUT.FORMAT`` other than RGB."""
    if cfg.INPUT.FORMAT != "RGB":
        raise ConfigError(
            f"SAN expects RGB images but INPUT.FORMAT is {cfg.INPUT.FORMAT!r}; set INPUT.FORMAT RGB (the official "
            "configs do)"
        )


def per_class_masks(sem_seg: torch.Tensor, ignore_label: int) -> dict[str, torch.Tensor]:
    """``{"labels": long [K], "masks": bool [K, H, W]}``: one mask per class in ``sem_seg``, ignore excluded."""
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_label].to(torch.int64)
    return {"labels": labels, "masks": sem_seg[None] == labels[:, None, None]}


def _read_pair(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if "sem_seg_file_name" not in record:
        raise KeyError(f"{record.get('file_name', '<record>')}: the record has no 'sem_seg_file_name'")
    image = read_image(record["file_name"])
    label = read_label(record["sem_seg_file_name"])
    if image.shape[:2] != label.shape:
        raise DataError(
            f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} but its label "
            f"{record['sem_seg_file_name']} is {label.shape[1]}x{label.shape[0]} (width x height)"
        )
    return image, label


class _DatasetLookup:
    """Vocabulary and ignore value from the record's dataset, or fixed ones given to the mapper."""

    def __init__(self, vocabulary: list[str] | None, ignore_label: int | None, dataset_name: str | None) -> None:
        if dataset_name is not None and (vocabulary is None or ignore_label is None):
            spec = get_dataset(dataset_name)
            vocabulary = spec.classes if vocabulary is None else vocabulary
            ignore_label = spec.ignore_label if ignore_label is None else ignore_label
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.ignore_label = ignore_label
        self.dataset_name = dataset_name

    def spec_for(self, record: dict[str, Any]) -> tuple[list[str], int, str | None]:
        name = record.get("dataset_name", self.dataset_name)
        if name is not None and name != self.dataset_name:
            spec: DatasetSpec = get_dataset(name)
            return spec.classes, spec.ignore_label, name
        if self.vocabulary is None or self.ignore_label is None:
            raise ValueError(
                "the mapper knows no vocabulary/ignore value: give dataset_name (or vocabulary and "
                "ignore_label), or records with 'dataset_name'"
            )
        return self.vocabulary, self.ignore_label, name


class SemanticTrainMapper:
    """Training mapper; build it from a config (``SemanticTrainMapper(cfg)``) or plain arguments."""

    def __init__(
        self,
        cfg: Any = None,
        *,
        augmentations: Compose | list | None = None,
        ignore_label: int | None = None,
        size_divisibility: int | None = None,
        vocabulary: list[str] | None = None,
        dataset_name: str | None = None,
    ) -> None:
        if cfg is not None:
            check_rgb_format(cfg)
            if dataset_name is None:
                if not cfg.DATASETS.TRAIN:
                    raise ValueError("DATASETS.TRAIN is empty: name the training dataset(s)")
                dataset_name = cfg.DATASETS.TRAIN[0]
        self._lookup = _DatasetLookup(vocabulary, ignore_label, dataset_name)
        if augmentations is None:
            if cfg is None:
                raise ValueError("give a config or augmentations")
            augmentations = build_train_augmentations(cfg, self._lookup.ignore_label)
        self.augmentations = augmentations if isinstance(augmentations, Compose) else Compose(augmentations)
        if size_divisibility is None:
            size_divisibility = cfg.INPUT.SIZE_DIVISIBILITY if cfg is not None else -1
        self.size_divisibility = int(size_divisibility)
        logger.info("training augmentations: %s; pad to multiples of %d", self.augmentations, self.size_divisibility)

    def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Map one record; ``rng`` makes the augmentation reproducible (default: fresh entropy)."""
        rng = rng if rng is not None else np.random.default_rng()
        vocabulary, ignore_label, name = self._lookup.spec_for(record)
        image, label = _read_pair(record)
        image, label = self.augmentations(image, label, rng)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # [3, H, W] uint8
        label_t = torch.from_numpy(label.astype(np.int64))  # [H, W]
        image_t, label_t = pad_to_divisible(image_t, label_t, self.size_divisibility, 128, ignore_label)
        out = {k: v for k, v in record.items() if k not in ("sem_seg_file_name",)}
        out.update(
            image=image_t,
            sem_seg=label_t,
            instances=per_class_masks(label_t, ignore_label),
            vocabulary=list(vocabulary),
            height=int(image_t.shape[-2]),
            width=int(image_t.shape[-1]),
            dataset_name=name,
        )
        return out


class SemanticTestMapper:
    """Test mapper; ``SemanticTestMapper(cfg, dataset_name)`` or plain arguments."""

    def __init__(
        self,
        cfg: Any = None,
        dataset_name: str | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        vocabulary: list[str] | None = None,
        ignore_label: int | None = None,
    ) -> None:
        if cfg is not None:
            check_rgb_format(cfg)
            min_size = cfg.INPUT.MIN_SIZE_TEST if min_size is None else min_size
            max_size = cfg.INPUT.MAX_SIZE_TEST if max_size is None else max_size
        if min_size is None or max_size is None:
            raise ValueError("give a config or min_size and max_size")
        self.min_size, self.max_size = int(min_size), int(max_size)
        self._lookup = _DatasetLookup(vocabulary, ignore_label, dataset_name)

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        vocabulary, _, name = self._lookup.spec_for(record)
        image, label = _read_pair(record)
        h, w = image.shape[:2]
        if self.min_size > 0:
            image = resize_image(image, *shortest_edge_size(h, w, self.min_size, self.max_size))
        out = dict(record)
        out.update(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # [3, h', w'] uint8
            sem_seg=torch.from_numpy(label.astype(np.int64)),  # [H, W] original resolution
            height=int(h),
            width=int(w),
            vocabulary=list(vocabulary),
            dataset_name=name,
        )
        return out
