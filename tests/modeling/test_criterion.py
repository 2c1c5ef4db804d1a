"""Set criterion: hand-computed CE / BCE / dice, num_masks normalisation, deep supervision, build."""

from __future__ import annotations

import math

import pytest
import torch

import san
from san.build import build_criterion
from san.modeling.criterion import SetCriterion, dice_loss, loss_weights, sigmoid_ce_loss
from san.modeling.matcher import HungarianMatcher

from ..conftest import tiny_cfg
from .test_matcher import fixed_points

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix


class FixedMatcher(HungarianMatcher):
    """Returns a given assignment (per image: query indices, target indices)."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return [(torch.tensor(q, dtype=torch.long), torch.tensor(t, dtype=torch.long)) for q, t in self.indices]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def make_criterion(indices, num_classes=2, **kw) -> SetCriterion:
    kw.setdefault("importance_sample_ratio", 1.0)  # with oversample 1: every candidate point is kept
    crit = SetCriterion(
        num_classes,
        FixedMatcher(indices),
        loss_weights(2, 5, 5, 1),
        eos_coef=0.1,
        num_points=4,
        oversample_ratio=1.0,
        **kw,
    )
    crit.rand_points = fixed_points(2, 2)  # the 4 pixel centres of a 2 x 2 mask, for every mask
    return crit


def test_cross_entropy_with_no_object_weight_is_hand_computed():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.0, 0.0]]])  # [1, Q=3, C+1=3]
    outputs = {"class_logits": logits, "mask_logits": torch.zeros(1, 3, 2, 2)}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}]
    crit = make_criterion([([2], [0])], losses=("labels",))
    got = crit.unweighted_losses(outputs, targets)["loss_ce"].item()

    def nll(row, cls):
        return -math.log(math.exp(row[cls]) / sum(math.exp(v) for v in row))

    rows = logits[0].tolist()
    # query 2 -> class 0 (weight 1); queries 0, 1 -> no-object class 2 (weight 0.1); weighted mean
    expected = (1.0 * nll(rows[2], 0) + 0.1 * nll(rows[0], 2) + 0.1 * nll(rows[1], 2)) / (1.0 + 0.1 + 0.1)
    assert got == pytest.approx(expected, rel=1e-6)
    assert crit.empty_weight.tolist() == pytest.approx([1.0, 1.0, 0.1])


def test_bce_and_dice_on_points_are_hand_computed_and_normalised_by_num_masks():
    pred = torch.tensor([[[2.0, -1.0], [0.0, 3.0]], [[-2.0, 1.0], [0.5, 0.0]]])  # [Q=2, 2, 2]
    tmask = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]])  # [K=2, 2, 2]
    outputs = {"class_logits": torch.zeros(1, 2, 3), "mask_logits": pred[None]}
    targets = [{"labels": torch.tensor([0, 1]), "masks": tmask}]
    # query 0 <-> target 1 and query 1 <-> target 0: a crossed assignment
    for ratio in (0.0, 1.0):  # all points uniform, or all chosen by uncertainty: same 4 points
        crit = make_criterion([([0, 1], [1, 0])], losses=("masks",), importance_sample_ratio=ratio)
        got = crit.unweighted_losses(outputs, targets)
        pairs = [
            (pred[0].flatten().tolist(), tmask[1].flatten().tolist()),
            (pred[1].flatten().tolist(), tmask[0].flatten().tolist()),
        ]
        bce = sum(sum(softplus(-x) if y else softplus(x) for x, y in zip(p, t)) / 4 for p, t in pairs)
        dice = sum(
            1 - (2 * sum(sigmoid(x) * y for x, y in zip(p, t)) + 1) / (sum(sigmoid(x) for x in p) + sum(t) + 1)
            for p, t in pairs
        )
        assert got["loss_mask"].item() == pytest.approx(bce / 2, rel=1e-6)  # 2 target masks
        assert got["loss_dice"].item() == pytest.approx(dice / 2, rel=1e-6)


def test_num_masks_counts_all_targets_of_the_batch_and_is_at_least_one():
    logits = torch.randn(3, 4, 3)
    pred = torch.randn(3, 4, 2, 2)
    masks = (torch.rand(3, 2, 2) > 0.5).float()
    one = [{"labels": torch.tensor([1]), "masks": masks[:1]}]
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 2, 2)}
    crit = make_criterion([([0], [0])], losses=("masks",))
    single = crit.unweighted_losses({"class_logits": logits[:1], "mask_logits": pred[:1]}, one)["loss_mask"]
    # the same pair plus an image with two more target masks matched to other queries
    crit3 = make_criterion([([0], [0]), ([], []), ([1, 2], [0, 1])], losses=("masks",))
    three = [one[0], empty, {"labels": torch.tensor([0, 1]), "masks": masks[1:]}]
    both = crit3.unweighted_losses({"class_logits": logits, "mask_logits": pred}, three)["loss_mask"]
    per_mask = [
        sigmoid_ce_loss(pred[b, q].flatten()[None], m.flatten()[None], 1.0)
        for b, q, m in [(0, 0, masks[0]), (2, 1, masks[1]), (2, 2, masks[2])]
    ]
    assert single.item() == pytest.approx(per_mask[0].item(), rel=1e-6)
    assert both.item() == pytest.approx(sum(v.item() for v in per_mask) / 3, rel=1e-6)
    # no target at all: normalised by 1, mask losses are exactly zero, CE still trains "no object"
    crit0 = make_criterion([([], [])])
    none = crit0.unweighted_losses({"class_logits": logits[:1].requires_grad_(), "mask_logits": pred[:1]}, [empty])
    assert none["loss_mask"].item() == 0 and none["loss_dice"].item() == 0 and none["loss_ce"].item() > 0


def test_loss_helpers_match_their_formulas():
    x = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0]])
    assert sigmoid_ce_loss(x, t, 2.0).item() == pytest.approx((softplus(-0.0) + softplus(2.0)) / 2 / 2)
    p = [0.5, sigmoid(2.0)]
    assert dice_loss(x, t, 1.0).item() == pytest.approx(1 - (2 * 0.5 + 1) / (sum(p) + 1 + 1))


def test_deep_supervision_keys_and_weights():
    assert loss_weights(2.0, 5.0, 5.0, 3) == {
        "loss_ce": 2.0,
        "loss_mask": 5.0,
        "loss_dice": 5.0,
        "loss_ce_0": 2.0,
        "loss_mask_0": 5.0,
        "loss_dice_0": 5.0,
        "loss_ce_1": 2.0,
        "loss_mask_1": 5.0,
        "loss_dice_1": 5.0,
    }
    crit = SetCriterion(2, HungarianMatcher(2, 5, 5, num_points=16), loss_weights(2, 5, 5, 3), 0.1, num_points=16)
    level = lambda: {"class_logits": torch.randn(2, 5, 3), "mask_logits": torch.randn(2, 5, 4, 4)}  # noqa: E731
    outputs = {**level(), "aux_outputs": [level(), level()]}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 16, 16) > 0.5} for _ in range(2)]
    losses = crit(outputs, targets)
    assert set(losses) == set(crit.weight_dict)
    # each aux level is matched on its own: its losses equal that level's losses as a final output
    crit.rand_points = crit.matcher.rand_points = fixed_points(4, 4)
    aux = crit(outputs, targets)
    for i in range(2):
        alone = crit(outputs["aux_outputs"][i], targets)
        assert {k: aux[f"{k}_{i}"].item() for k in alone} == {k: v.item() for k, v in alone.items()}
    assert aux["loss_ce_0"].item() != aux["loss_ce_1"].item()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(2, HungarianMatcher(), {}, 0.1, losses=("boxes",))
    crit = make_criterion([([0], [0])], num_classes=5)
    with pytest.raises(
        ValueError, match="num_classes=5: the criterion's class count must be the training vocabulary's size"
    ):
        crit(
            {"class_logits": torch.zeros(1, 2, 3), "mask_logits": torch.zeros(1, 2, 2, 2)},
            [{"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}],
        )


def test_forward_applies_each_terms_own_weight_and_refuses_unweighted_terms():
    """Distinct class/mask/dice weights (the official 2/5/5 would hide a swap of the last two)."""
    pred = torch.tensor([[[2.0, -1.0], [0.0, 3.0]], [[-2.0, 1.0], [0.5, 0.0]]])
    outputs = {
        "class_logits": torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0)),
        "mask_logits": pred[None],
    }
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]])}
    ]
    crit = make_criterion([([0, 1], [1, 0])])
    crit.weight_dict = {"loss_ce": 0.5, "loss_mask": 3.0, "loss_dice": 7.0}
    raw = crit.unweighted_losses(outputs, targets)
    weighted = crit(outputs, targets)
    assert set(raw) == set(weighted) == {"loss_ce", "loss_mask", "loss_dice"}
    assert len({round(v.item(), 6) for v in raw.values()}) == 3  # the three terms differ, so a swap shows
    for key, w in crit.weight_dict.items():
        assert weighted[key].item() == pytest.approx(w * raw[key].item(), rel=1e-6), key
    crit.weight_dict = {"loss_ce": 0.5, "loss_mask": 3.0}
    with pytest.raises(ValueError, match=r"\['loss_dice'\] have no weight"):
        crit(outputs, targets)


def test_a_subclass_adds_a_loss_through_the_loss_table():
    class WithArea(SetCriterion):
        LOSSES = {**SetCriterion.LOSSES, "area": "loss_area"}

        def loss_area(self, outputs, targets, indices, num_masks):
            return {"loss_area": outputs["mask_logits"].sigmoid().mean()}

    outputs = {"class_logits": torch.zeros(1, 2, 3), "mask_logits": torch.zeros(1, 2, 2, 2)}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}]
    crit = WithArea(2, FixedMatcher([([0], [0])]), {"loss_area": 4.0}, 0.1, losses=("area",))
    assert crit(outputs, targets) == {"loss_area": pytest.approx(torch.tensor(2.0))}
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(2, FixedMatcher([]), {}, 0.1, losses=("area",))


def test_build_criterion_from_config_and_official_buffer(tmp_path):
    cfg = tiny_cfg(tmp_path, num_classes=7)
    crit = build_criterion(cfg)
    assert crit.weight_dict == loss_weights(2.0, 5.0, 5.0, 2)
    assert (crit.matcher.cost_class, crit.matcher.cost_mask, crit.matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert crit.num_points == crit.matcher.num_points == 256
    model = san.build_model(cfg)
    sd = model.state_dict()
    assert sd["criterion.empty_weight"].tolist() == pytest.approx([1.0] * 7 + [0.1])
    official = san.get_cfg()
    assert build_criterion(official).empty_weight.shape == (172,)  # criterion.empty_weight of the releases


def test_each_config_weight_reaches_its_own_loss_and_matching_cost(tmp_path):
    """MODEL.SAN.CLASS_WEIGHT / MASK_WEIGHT / DICE_WEIGHT all distinct (the official 2/5/5 hides a swap
    of the last two): each weights its own loss term at every level and its own matching cost."""
    cfg = tiny_cfg(tmp_path, num_classes=3)
    cfg.merge_from_list(["MODEL.SAN.CLASS_WEIGHT", 1.5, "MODEL.SAN.MASK_WEIGHT", 3.0, "MODEL.SAN.DICE_WEIGHT", 7.0])
    crit = build_criterion(cfg)
    assert (crit.matcher.cost_class, crit.matcher.cost_mask, crit.matcher.cost_dice) == (1.5, 3.0, 7.0)
    assert crit.weight_dict == {
        "loss_ce": 1.5,
        "loss_mask": 3.0,
        "loss_dice": 7.0,
        "loss_ce_0": 1.5,
        "loss_mask_0": 3.0,
        "loss_dice_0": 7.0,
    }
    assert loss_weights(1.0, 2.0, 3.0, 1) == {"loss_ce": 1.0, "loss_mask": 2.0, "loss_dice": 3.0}
    # through the model: its losses are the config's weights times the unweighted terms
    torch.manual_seed(0)
    model = san.build_model(cfg).train()
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:] = True, True
    inputs = [
        {
            "image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
            "vocabulary": ["a", "b", "c"],
            "instances": {"labels": torch.tensor([0, 2]), "masks": masks},
        }
    ]
    raw = {}
    real = model.criterion.unweighted_losses

    def spy(outputs, targets):
        out = real(outputs, targets)
        raw.update(out)
        return out

    model.criterion.unweighted_losses = spy
    torch.manual_seed(2)
    with torch.no_grad():
        losses = model(inputs)
    assert set(raw) == set(losses) and len({round(v.item(), 5) for k, v in raw.items() if "_0" not in k}) == 3
    for key, value in losses.items():
        assert value.item() == pytest.approx(crit.weight_dict[key] * raw[key].item(), rel=1e-6), (
            key
        )  # one product: 1 eps


def test_tiny_model_loss_dict_has_every_weighted_key(tmp_path):
    cfg = tiny_cfg(tmp_path, num_classes=3)
    torch.manual_seed(0)
    model = san.build_model(cfg).train()
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:] = True, True
    inputs = [
        {
            "image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
            "vocabulary": ["a", "b", "c"],
            "instances": {"labels": torch.tensor([0, 2]), "masks": masks},
        }
    ]
    losses = model(inputs)
    assert set(losses) == set(model.criterion.weight_dict)
    sum(losses.values()).backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in trained)
