"""A prediction, and the shapes the ecosystem expects of it.

:class:`Prediction` holds one image's label map (and, when asked for, the per-class scores or the
winning score of every pixel). :meth:`Prediction.to_supervision` gives ``supervision.Detections``
(one per class present), which supervision's annotators, zones and sinks take;
:meth:`Prediction.to_segments` the ``[{"label", "score", "mask"}]`` list of transformers'
``image-segmentation`` pipeline. supervision is imported only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .visualize import pixel_fractions
from .vocabulary import Vocabulary

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """One image's result: ``labels`` ``[H, W]`` int32 indices into ``class_names`` at the original
    image size; ``scores`` ``[len(class_names), H, W]`` float32 raw class scores when asked for
    (``return_scores``). ``confidence`` ``[H, W]``: the winning class's probability, its share of the
    pixel's class scores (0..1, the default), and ``score`` ``[H, W]`` the raw winning class score
    (unbounded: a mixture over up to Q masks). With distractors, the last class is ``"other"`` (its
    score is the best distractor's; its probability the best distractor's share)."""

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    vocabulary: Vocabulary | None = field(default=None, repr=False)
    confidence: np.ndarray | None = None
    score: np.ndarray | None = None

    def pixel_fractions(self) -> dict[str, float]:
        """Fraction of pixels per class present in the label map, largest first."""
        return pixel_fractions(self.labels, self.class_names)

    def _regions(self) -> list[tuple[int, np.ndarray, float | None, float | None]]:
        """``(class index, mask [H, W] bool, confidence, raw score)`` per class present, in class order:
        the means over the region of the winning probability and of the raw score (None without them;
        the raw score falls back to ``scores``)."""
        out = []
        for c in np.unique(self.labels):
            mask = self.labels == c
            conf = None if self.confidence is None else float(self.confidence[mask].mean())
            if self.score is not None:
                raw: float | None = float(self.score[mask].mean())
            elif self.scores is not None:
                raw = float(self.scores[c][mask].mean())
            else:
                raw = None
            out.append((int(c), mask, conf, raw))
        return out

    def to_supervision(self) -> Any:
        """``supervision.Detections``: one detection per class present, with its ``mask``, its box
        (``xyxy``), ``class_id``, ``data["class_name"]``, ``confidence`` the mean winning probability
        over the region (0..1; ``None`` for a prediction made with ``return_confidence=False``) and
        ``data["score"]`` the mean raw class score (NaN without one)."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("to_supervision() needs supervision: pip install supervision") from None
        regions = self._regions()
        masks = np.stack([r[1] for r in regions]) if regions else np.zeros((0, *self.labels.shape), bool)
        boxes = []
        for _, m, _, _ in regions:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        conf = [r[2] for r in regions]
        raw = [np.nan if r[3] is None else r[3] for r in regions]
        return sv.Detections(
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            mask=masks,
            class_id=np.asarray([r[0] for r in regions], dtype=int),
            confidence=None if self.confidence is None else np.asarray(conf, dtype=np.float32),
            data={
                "class_name": np.asarray([self.class_names[r[0]] for r in regions]),
                "score": np.asarray(raw, dtype=np.float32),
            },
        )

    def to_segments(self) -> list[dict[str, Any]]:
        """``[{"label", "score", "raw_score", "mask"}]`` as transformers' ``image-segmentation``
        pipeline returns it: one entry per class present, ``score`` the mean winning probability
        (0..1, or None), ``raw_score`` the mean raw class score (or None), ``mask`` a PIL image of
        mode "L" (255 inside, 0 outside)."""
        return [
            {
                "label": self.class_names[c],
                "score": conf,
                "raw_score": raw,
                "mask": Image.fromarray(m.astype(np.uint8) * 255, mode="L"),
            }
            for c, m, conf, raw in self._regions()
        ]
