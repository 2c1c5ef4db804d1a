"""Hungarian matcher: hand-computed costs, optimality, permutation invariance, point sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from san.modeling.matcher import HungarianMatcher
from san.modeling.point_sampling import point_sample, uncertain_points

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix


def pixel_centres(h: int, w: int) -> torch.Tensor:
    """``[h * w, 2]`` (x, y) coordinates of the pixel centres of an h x w grid in [0, 1]."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def fixed_points(h: int, w: int):
    """A point source returning the pixel centres for every row (tiles them to the requested count)."""

    def rand(rows: int, n: int, device: torch.device) -> torch.Tensor:
        pts = pixel_centres(h, w).repeat(-(-n // (h * w)), 1)[:n]
        return pts.to(device).expand(rows, -1, -1).clone()

    return rand


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_point_sample_reads_pixel_centres_and_interpolates():
    m = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[None, None]  # [1, 1, 2, 3]
    got = point_sample(m, pixel_centres(2, 3)[None])
    assert torch.equal(got, m.flatten(2))
    mid = torch.tensor([[[0.5, 0.25]]])  # x between columns 1 and 2? centre column 1 is x=0.5; y on row 0
    assert point_sample(m, mid).item() == pytest.approx(2.0)
    between = torch.tensor([[[2 / 6, 0.5]]])  # halfway between the centres of columns 0 and 1, rows 0 and 1
    assert point_sample(m, between).item() == pytest.approx((1 + 2 + 4 + 5) / 4)


def test_cost_matrix_equals_hand_computed_costs():
    logits = torch.tensor([[0.5, -1.0, 2.0]])  # one query, two classes + no-object
    pred = torch.tensor([[[2.0, -1.0], [0.0, 3.0]]])  # [Q=1, 2, 2] mask logits
    target = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # [K=1, 2, 2]
    # distinct weights: the official 2/5/5 would hide a swap of the mask and dice costs
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=3.0, cost_dice=7.0, num_points=4)
    matcher.rand_points = fixed_points(2, 2)
    cost = matcher.cost_matrix(logits, pred, torch.tensor([0]), target)
    ex = [math.exp(v) for v in (0.5, -1.0, 2.0)]
    p_class = ex[0] / sum(ex)
    # BCE per point: target 1 -> softplus(-x), target 0 -> softplus(x)
    bce = (softplus(-2.0) + softplus(-1.0) + softplus(-0.0) + softplus(-3.0)) / 4
    sig = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.0, 3.0)]
    t = [1, 0, 1, 1]
    dice = 1 - (2 * sum(s * y for s, y in zip(sig, t)) + 1) / (sum(sig) + sum(t) + 1)
    assert cost.shape == (1, 1)
    assert abs(bce - dice) > 0.1  # so a swap of the two weights shows
    assert cost.item() == pytest.approx(2.0 * -p_class + 3.0 * bce + 7.0 * dice, rel=1e-6)


def _random_problem(q: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    outputs = {"class_logits": torch.randn(1, q, 4, generator=g), "mask_logits": torch.randn(1, q, 8, 8, generator=g)}
    targets = [{"labels": torch.randperm(3, generator=g)[:k], "masks": torch.rand(k, 32, 32, generator=g) > 0.5}]
    return outputs, targets


def test_assignment_is_optimal_against_brute_force():
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    for seed in range(3):
        outputs, targets = _random_problem(5, 3, seed)
        torch.manual_seed(seed)
        (rows, cols) = matcher(outputs, targets)[0]
        torch.manual_seed(seed)
        cost = matcher.cost_matrix(
            outputs["class_logits"][0], outputs["mask_logits"][0], targets[0]["labels"], targets[0]["masks"]
        )
        best = min(sum(cost[q, t].item() for t, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
        assert len(rows) == len(cols) == 3 and sorted(cols.tolist()) == [0, 1, 2]
        assert rows.tolist() == sorted(rows.tolist())
        assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-6)


def test_permuting_the_queries_permutes_the_assignment():
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=128)
    outputs, targets = _random_problem(10, 3, seed=7)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    torch.manual_seed(0)
    rows, cols = matcher(outputs, targets)[0]
    torch.manual_seed(0)  # same random points
    prow, pcol = matcher(permuted, targets)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {t: perm[q].item() for q, t in zip(prow.tolist(), pcol.tolist())}


def test_hand_made_cost_is_solved_globally_not_greedily():
    # greedy (query 0 takes its cheapest target 0) costs 1 + 10; the optimum is 2 + 2
    matcher = HungarianMatcher()
    hand = torch.tensor([[1.0, 2.0], [2.0, 10.0], [5.0, 5.0]])
    matcher.cost_matrix = lambda *args: hand  # type: ignore[method-assign]
    outputs = {"class_logits": torch.zeros(1, 3, 3), "mask_logits": torch.zeros(1, 3, 4, 4)}
    rows, cols = matcher(outputs, [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 4, 4)}])[0]
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_images_without_targets_and_bad_inputs():
    matcher = HungarianMatcher(num_points=16)
    outputs, targets = _random_problem(4, 2, seed=0)
    outputs = {k: v.repeat(2, 1, 1, 1) if v.dim() == 4 else v.repeat(2, 1, 1) for k, v in outputs.items()}
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32)}
    res = matcher(outputs, [empty, targets[0]])
    assert res[0][0].numel() == 0 and len(res[1][0]) == 2
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        matcher(outputs, [empty])
    outputs["mask_logits"][1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        matcher(outputs, [empty, targets[0]])
    with pytest.raises(ValueError, match="non-zero cost"):
        HungarianMatcher(0, 0, 0)


def test_importance_sampling_keeps_the_most_uncertain_candidates():
    logits = torch.linspace(-4, 4, 64).view(1, 1, 8, 8)
    coords = uncertain_points(logits, 10, 3.0, 0.7, rand=fixed_points(8, 8))
    cand = point_sample(logits, fixed_points(8, 8)(1, 30, logits.device)).abs().flatten()
    kept = point_sample(logits, coords[:, :7]).abs().flatten()
    assert coords.shape == (1, 10, 2)
    assert torch.equal(kept.sort().values, cand.sort().values[:7])
    with pytest.raises(ValueError, match="oversample_ratio must be >= 1"):
        uncertain_points(logits, 10, 0.5, 0.75)
