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
    image size; ``scores`` ``[len(class_names), H, W]`` float32 when asked for (``return_scores``), or
    ``confidence`` ``[H, W]``, the winning class's score of every pixel (``return_confidence``). With
    distractors, the last class is ``"other"`` (its score is the best distractor's)."""

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    vocabulary: Vocabulary | None = field(default=None, repr=False)
    confidence: np.ndarray | None = None

    def pixel_fractions(self) -> dict[str, float]:
        """Fraction of pixels per class present in the label map, largest first."""
        return pixel_fractions(self.labels, self.class_names)

    def _regions(self) -> list[tuple[int, np.ndarray, float | None]]:
        """``(class index, mask [H, W] bool, score)`` per class present, in class order; the score is the
        mean over the region of the class's score (or of the winning score), None without either."""
        out = []
        for c in np.unique(self.labels):
            mask = self.labels == c
            if self.scores is not None:
                score: float | None = float(self.scores[c][mask].mean())
            elif self.confidence is not None:
                score = float(self.confidence[mask].mean())
            else:
                score = None
            out.append((int(c), mask, score))
        return out

    def to_supervision(self) -> Any:
        """``supervision.Detections``: one detection per class present, with its ``mask``, its box
        (``xyxy``), ``class_id``, ``data["class_name"]`` and a ``confidence`` from the class score (mean
        over the region; ``None`` when the prediction was made without scores or confidence)."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("to_supervision() needs supervision: pip install supervision") from None
        regions = self._regions()
        masks = np.stack([m for _, m, _ in regions]) if regions else np.zeros((0, *self.labels.shape), bool)
        boxes = []
        for _, m, _ in regions:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        scores = [s for _, _, s in regions]
        return sv.Detections(
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            mask=masks,
            class_id=np.asarray([c for c, _, _ in regions], dtype=int),
            confidence=None if any(s is None for s in scores) else np.asarray(scores, dtype=np.float32),
            data={"class_name": np.asarray([self.class_names[c] for c, _, _ in regions])},
        )

    def to_segments(self) -> list[dict[str, Any]]:
        """``[{"label", "score", "mask"}]`` as transformers' ``image-segmentation`` pipeline returns it:
        one entry per class present, ``mask`` a PIL image of mode "L" (255 inside, 0 outside)."""
        return [
            {"label": self.class_names[c], "score": s, "mask": Image.fromarray(m.astype(np.uint8) * 255, mode="L")}
            for c, m, s in self._regions()
        ]
