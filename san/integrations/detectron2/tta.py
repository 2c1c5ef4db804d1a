"""Test-time augmentation (``TEST.AUG``) as the official release's ``SemanticSegmentorWithTTA``.

san's own :class:`san.inference.tta.SemSegTTA` (the one implementation of the rule: each image
resized to every ``TEST.AUG.MIN_SIZES`` with the long side at most ``TEST.AUG.MAX_SIZE`` as
detectron2's ``DatasetMapperTTA`` resizes it, also flipped when ``TEST.AUG.FLIP``; the per-class
scores at ``(height, width)`` averaged), built from a detectron2 config.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from torch import nn

from san.inference.tta import SemSegTTA

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(SemSegTTA):
    """Wraps a model with the batched-input contract; same inputs and outputs, averaged over TTA."""

    def __init__(self, cfg: CfgNode, model: nn.Module) -> None:
        aug = cfg.TEST.AUG
        super().__init__(model, aug.MIN_SIZES, aug.MAX_SIZE, aug.FLIP)
