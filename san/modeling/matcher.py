"""Hungarian matching of mask proposals to ground-truth masks (the official Mask2Former matcher).

Per image, the cost of assigning query ``q`` to target ``t`` is::

    cost_class * (-softmax(logits[q])[label_t]) + cost_mask * BCE(mask_q, mask_t) + cost_dice * dice(mask_q, mask_t)

with the mask terms averaged over ``num_points`` uniform random points that all masks of the image
share. The one-to-one assignment of minimum total cost is solved with SciPy's
``linear_sum_assignment``; unmatched queries are "no object".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .point_sampling import PointSource, point_sample, uniform_points

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]


def batch_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean sigmoid BCE ``[Q, K]`` between logits ``[Q, P]`` and binary targets ``[K, P]``."""
    pos = F.softplus(-logits)  # BCE against 1
    neg = F.softplus(logits)  # BCE against 0
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def batch_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice cost ``1 - (2 p.t + 1) / (sum p + sum t + 1)``, ``[Q, K]``, with p = sigmoid(logits)."""
    p = logits.sigmoid()
    numerator = 2 * p @ targets.T
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment between queries and target masks, per image.

    Args:
        cost_class: weight of the class cost (official 2.0).
        cost_mask: weight of the BCE cost (official 5.0).
        cost_dice: weight of the dice cost (official 5.0).
        num_points: points per image for the mask costs (official 112 * 112).

    ``rand_points`` (an attribute) draws the point coordinates; tests replace it to make the
    matching independent of the random stream.
    """

    def __init__(
        self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 12544
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("the matcher needs at least one non-zero cost weight")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points
        self.rand_points: PointSource = uniform_points

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, masks: Tensor, labels: Tensor, target_masks: Tensor) -> Tensor:
        """Cost ``[Q, K]`` for one image: logits ``[Q, C+1]``, masks ``[Q, h, w]``, labels ``[K]``,
        target masks ``[K, H, W]``; computed in float32 whatever the autocast state."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            cost_class = -logits.float().softmax(-1)[:, labels]  # [Q, K]
            coords = self.rand_points(1, self.num_points, logits.device)  # shared by all masks
            out = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]  # [Q, P]
            tgt = point_sample(target_masks[:, None].float(), coords.expand(target_masks.shape[0], -1, -1))[:, 0]
            return (
                self.cost_mask * batch_sigmoid_ce_cost(out, tgt)
                + self.cost_class * cost_class
                + self.cost_dice * batch_dice_cost(out, tgt)
            )

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``class_logits [B, Q, C+1]`` and ``mask_logits [B, Q, h, w]``.
            targets: per image ``labels [K]`` (long) and ``masks [K, H, W]`` (binary, padded like
                the images).

        Returns:
            per image ``(query_idx, target_idx)``, int64 tensors of length ``min(Q, K)``, the
            query indices in increasing order.
        """
        from scipy.optimize import linear_sum_assignment  # imported here: only training needs SciPy

        logits, masks = outputs["class_logits"], outputs["mask_logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} predictions")
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                # the official matcher draws this image's points all the same: skipping the draw would
                # shift every later random point of the batch
                self.rand_points(1, self.num_points, logits.device)
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b], masks[b], labels, target["masks"].to(masks.device)).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    f"matching cost of image {b} is not finite: the model produced NaN/inf outputs (diverged "
                    "training: lower the learning rate, keep gradient clipping on, or try bf16 instead of fp16)"
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        costs = f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}"
        return f"{costs}, num_points={self.num_points}"
