"""Test-time augmentation (``TEST.AUG``) as the official release does it, for detectron2's loaders.

Each image is resized to every ``TEST.AUG.MIN_SIZES`` (long side at most ``TEST.AUG.MAX_SIZE``),
also flipped when ``TEST.AUG.FLIP``, by detectron2's ``DatasetMapperTTA``; the per-class score maps
(``[C, height, width]``, flipped back) are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a model with the batched-input contract; same inputs and outputs, averaged over TTA."""

    def __init__(self, cfg: CfgNode, model: nn.Module, tta_mapper: Any = None) -> None:
        super().__init__()
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)

    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, torch.Tensor]]:
        return [self._one(x) for x in batched_inputs]

    @torch.no_grad()
    def _one(self, x: dict) -> dict[str, torch.Tensor]:
        if "height" not in x or "width" not in x:
            x = {**x, "height": x["image"].shape[-2], "width": x["image"].shape[-1]}
        total = None
        views = self.tta_mapper(x)
        for view in views:
            flipped = any(isinstance(t, HFlipTransform) for t in view.pop("transforms").transforms)
            sem_seg = self.model([view])[0]["sem_seg"]
            if flipped:
                sem_seg = sem_seg.flip(dims=[2])
            total = sem_seg if total is None else total + sem_seg
        return {"sem_seg": total / len(views)}
