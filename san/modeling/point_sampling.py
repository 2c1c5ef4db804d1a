"""Point sampling for the mask losses (PointRend-style, as the official Mask2Former losses use it).

Masks are compared on a few thousand points instead of every pixel: the matcher draws uniform
points shared by all masks of an image, the loss draws importance-sampled points per mask, mostly
where the prediction is uncertain (logit close to 0). Coordinates are normalised to ``[0, 1]`` with
``(0, 0)`` the top-left corner of the (padded) mask, so masks of any resolution are sampled at the
same places.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PointSource", "check_sampling", "point_sample", "uncertain_points", "uncertainty", "uniform_points"]

# (rows, points per row, device) -> [rows, points, 2] coordinates in [0, 1]
PointSource = Callable[[int, int, torch.device], Tensor]


def uniform_points(rows: int, num_points: int, device: torch.device) -> Tensor:
    """``[rows, num_points, 2]`` uniform random (x, y) coordinates in ``[0, 1]`` (torch's RNG)."""
    return torch.rand(rows, num_points, 2, device=device)


def point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample ``masks [N, C, H, W]`` at ``coords [N, P, 2]`` (x, y in [0, 1]) -> ``[N, C, P]``.

    ``grid_sample`` with ``align_corners=False``: coordinate 0 is the outer edge of the first pixel,
    exactly as detectron2's ``point_sample``; points near the border blend with zero padding.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in [-1, 1]
    return F.grid_sample(masks, grid.to(masks.dtype), mode="bilinear", align_corners=False).squeeze(3)


def uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of mask logits: ``-|logit|`` (highest where the prediction is closest to 0.5)."""
    return -logits.abs()


def check_sampling(oversample_ratio: float, importance_sample_ratio: float) -> None:
    """Refuse ratios :func:`uncertain_points` cannot use."""
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must lie in [0, 1], got {importance_sample_ratio}")


def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    rand: PointSource = uniform_points,
) -> Tensor:
    """Importance-sampled coordinates ``[N, num_points, 2]`` for mask logits ``[N, 1, H, W]``.

    Draw ``num_points * oversample_ratio`` uniform candidates per mask, keep the
    ``importance_sample_ratio * num_points`` most uncertain ones and fill up with fresh uniform points.
    """
    check_sampling(oversample_ratio, importance_sample_ratio)
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = rand(n, num_sampled, logits.device)  # [N, S, 2]
    scores = uncertainty(point_sample(logits, candidates))[:, 0]  # [N, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = scores.topk(num_uncertain, dim=1).indices  # [N, U]
    chosen = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        chosen = torch.cat([chosen, rand(n, num_random, logits.device)], dim=1)
    return chosen
