"""Set-prediction losses of SAN (the official Mask2Former ``SetCriterion``).

After Hungarian matching (:class:`~san.modeling.matcher.HungarianMatcher`):

- ``loss_ce``: cross-entropy over the ``C + 1`` logits of every query; unmatched queries target the
  no-object class ``C``, whose weight is ``eos_coef`` (``empty_weight`` buffer, weighted mean);
- ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice between each matched proposal and its target
  mask on ``num_points`` importance-sampled points, summed over masks and divided by the number of
  target masks of the batch averaged over processes (at least 1).

Every auxiliary output (earlier deep-supervision levels) is matched on its own and adds the same
losses with the suffix ``_i``. The criterion owns its loss list and weights: ``forward`` returns
the weighted losses, and a loss without a weight is an error (never silently dropped). A subclass
adds a loss by naming its method in :attr:`SetCriterion.LOSSES` and its weight in ``weight_dict``.
The checkpoint key ``criterion.empty_weight`` of the official release is this module's
``empty_weight`` buffer.

Predictions are dicts ``{"class_logits": [B, Q, C+1], "mask_logits": [B, Q, h, w]}`` (Mask2Former's
``pred_logits``/``pred_masks``), with the earlier levels under ``"aux_outputs"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher
from .point_sampling import PointSource, check_sampling, point_sample, uncertain_points, uniform_points

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss", "num_masks_across_processes", "loss_weights"]


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of ``1 - (2 p.t + 1) / (sum p + sum t + 1)``, divided by ``num_masks``.

    ``logits`` and ``targets`` are ``[N, P]`` (P points per mask), p = sigmoid(logits).
    """
    p = logits.sigmoid().flatten(1)
    numerator = 2 * (p * targets).sum(-1)
    denominator = p.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean sigmoid BCE over its points, summed over masks, divided by ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def num_masks_across_processes(targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
    """Number of target masks in the batch, averaged over the distributed processes, at least 1."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return max(n.item() / world, 1.0)


def loss_weights(class_weight: float, mask_weight: float, dice_weight: float, num_levels: int) -> dict[str, float]:
    """The official ``weight_dict``: final-level keys plus ``_i`` copies for ``num_levels - 1`` aux levels."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    out = dict(base)
    for i in range(num_levels - 1):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    return out


class SetCriterion(nn.Module):
    """Hungarian-matched classification and point-sampled mask losses with deep supervision.

    Args:
        num_classes: training classes C; index C is "no object".
        matcher: the query-to-target matcher.
        weight_dict: loss name -> weight (see :func:`loss_weights`), for every loss computed.
        eos_coef: cross-entropy weight of the no-object class.
        losses: which entries of :attr:`LOSSES` to compute.
        num_points: points per mask for BCE and dice.
        oversample_ratio: candidate points per kept point.
        importance_sample_ratio: share of points chosen by uncertainty.
    """

    # loss name -> method(outputs, targets, indices, num_masks) -> {loss key: value}
    LOSSES = {"labels": "loss_labels", "masks": "loss_masks"}

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        unknown = sorted(set(losses) - set(self.LOSSES))
        if unknown:
            raise ValueError(f"unknown losses {unknown}; {type(self).__name__} computes {sorted(self.LOSSES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        check_sampling(oversample_ratio, importance_sample_ratio)
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.rand_points: PointSource = uniform_points
        self._num_masks: float | None = None
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)  # persistent: official checkpoints hold it

    def loss_labels(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_masks: float
    ) -> dict[str, Tensor]:
        """``loss_ce``: weighted cross-entropy over ``C + 1`` classes for all queries."""
        logits = outputs["class_logits"].float()  # [B, Q, C+1]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"the model scored {logits.shape[-1] - 1} classes but the criterion was built for "
                f"num_classes={self.num_classes}: the criterion's class count must be the training vocabulary's size"
            )
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt].to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_masks: float
    ) -> dict[str, Tensor]:
        """``loss_mask`` (BCE) and ``loss_dice`` on importance-sampled points of matched pairs."""
        pred = outputs["mask_logits"]  # [B, Q, h, w]
        src = torch.cat([pred[b, i.to(pred.device)] for b, (i, _) in enumerate(indices)])  # [N, h, w]
        tgt = torch.cat([targets[b]["masks"][j.to(targets[b]["masks"].device)] for b, (_, j) in enumerate(indices)])
        src = src[:, None].float()  # [N, 1, h, w]
        tgt = tgt[:, None].to(src)  # [N, 1, H, W]
        with torch.no_grad():
            coords = uncertain_points(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio, rand=self.rand_points
            )
            labels = point_sample(tgt, coords)[:, 0]  # [N, P]
        logits = point_sample(src, coords)[:, 0]  # [N, P]
        return {
            "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def _level_losses(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], num_masks: float
    ) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            losses.update(getattr(self, self.LOSSES[name])(outputs, targets, indices, num_masks))
        return losses

    @contextmanager
    def fixed_num_masks(self, num_masks: float) -> Iterator[None]:
        """Normalise the mask losses by ``num_masks`` inside the block instead of counting the batch's
        targets across processes: gradient accumulation knows the count of all its micro-batches."""
        self._num_masks = max(float(num_masks), 1.0)
        try:
            yield
        finally:
            self._num_masks = None

    def unweighted_losses(self, outputs: dict, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Every loss term before weighting.

        Args:
            outputs: ``class_logits [B, Q, C+1]``, ``mask_logits [B, Q, h, w]`` and optionally
                ``aux_outputs``, a list of such dicts for the earlier levels.
            targets: per image ``labels [K]`` and binary ``masks [K, H, W]``.

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` and, for aux level i, the same with ``_i``.
        """
        device = outputs["class_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = self._num_masks if self._num_masks is not None else num_masks_across_processes(targets, device)
            losses = self._level_losses(outputs, targets, num_masks)
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self._level_losses(aux, targets, num_masks).items()})
        return losses

    def forward(self, outputs: dict, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The weighted losses (:meth:`unweighted_losses` times ``weight_dict``); their sum is the
        training objective. A loss without a weight raises a ValueError naming it."""
        losses = self.unweighted_losses(outputs, targets)
        unweighted = sorted(k for k in losses if k not in self.weight_dict)
        if unweighted:
            raise ValueError(
                f"loss term(s) {unweighted} have no weight in the criterion's weight_dict "
                f"({sorted(self.weight_dict)}); add a weight for each (0 to log a term without training on it)"
            )
        return {k: v * self.weight_dict[k] for k, v in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={list(self.losses)}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, weight_dict={self.weight_dict}"
        )
