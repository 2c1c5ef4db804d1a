"""The semantic training mapper for detectron2's data loader (official MaskFormerSemanticDatasetMapper).

A dataset dict ``{"file_name", "sem_seg_file_name", ...}`` becomes the model input
``{"image": uint8 [3, H, W] RGB, "sem_seg": long [H, W], "instances": Instances(gt_classes,
gt_masks), "height", "width", ...}``. Augmentations, in the official order: resize the shortest
edge (``INPUT.MIN_SIZE_TRAIN``), random crop with the category-area constraint, SSD colour
jitter (``INPUT.COLOR_AUG_SSD``), horizontal flip; then the image is padded with 128 and the label
with the ignore value up to a multiple of ``INPUT.SIZE_DIVISIBILITY`` (640: the official crop size,
so every crop becomes 640 x 640). One binary mask per class present (the
ignore value belongs to none).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from san.data.mapper import check_rgb_format, per_class_masks
from san.data.transforms import pad_to_divisible

from .color_aug import build_color_aug_ssd

__all__ = ["MaskFormerSemanticDatasetMapper"]

logger = logging.getLogger(__name__)


class MaskFormerSemanticDatasetMapper:
    """Callable mapping one semantic-segmentation dataset dict to a SAN training input."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation | T.Transform],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
    ) -> None:
        if not is_train:
            raise ValueError("MaskFormerSemanticDatasetMapper is for training; test with detectron2's DatasetMapper")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logger.info("[%s] training augmentations: %s", type(self).__name__, list(augmentations))

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        check_rgb_format(cfg)
        augs: list[Any] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        ]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                )
            )
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(build_color_aug_ssd(cfg.INPUT.FORMAT))
        augs.append(T.RandomFlip())
        if not cfg.DATASETS.TRAIN:
            raise ValueError("DATASETS.TRAIN is empty: name the training dataset(s)")
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        if not hasattr(meta, "ignore_label"):
            raise ValueError(
                f"training dataset {cfg.DATASETS.TRAIN[0]!r} has no ignore_label in MetadataCatalog; is it registered?"
            )
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": meta.ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        """Read, augment and pad one sample; add per-class ``Instances``."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(f"{dataset_dict['file_name']}: no 'sem_seg_file_name' in the dataset dict")
        if "annotations" in dataset_dict:
            raise ValueError("a semantic segmentation dataset dict must not hold 'annotations'")
        # float64: uint16 labels (65535 ignore) survive the geometric transforms exactly
        sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))  # [3, H, W]
        sem_seg_t = torch.as_tensor(aug_input.sem_seg.astype("long"))  # [H, W]
        # pad bottom/right up to a multiple (the official crop fits one): image 128, label ignore
        image, sem_seg_t = pad_to_divisible(image, sem_seg_t, self.size_divisibility, 128, self.ignore_label)
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg_t
        targets = per_class_masks(sem_seg_t, self.ignore_label)
        inst = Instances(tuple(sem_seg_t.shape))
        inst.gt_classes, inst.gt_masks = targets["labels"], targets["masks"]  # [K], [K, H, W] bool
        dataset_dict["instances"] = inst
        return dataset_dict
