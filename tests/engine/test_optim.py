"""Optimizer parameter groups, WarmupPolyLR values, gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import san
from san.engine.optim import WarmupPolyLR, build_gradient_clipper, build_lr_scheduler, build_optimizer, param_groups

from ..conftest import tiny_cfg


def _cfg(tmp_path, *overrides):
    """The tiny model with the official solver settings (the official YAMLs set no model key of it)."""
    cfg = tiny_cfg(tmp_path)
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.merge_from_list(list(overrides))
    return cfg


def test_official_parameter_groups_on_the_tiny_model(tmp_path):
    cfg = _cfg(tmp_path, "SOLVER.BACKBONE_MULTIPLIER", 0.1, "SOLVER.CLIP_MULTIPLIER", 0.5)
    model = san.build_model(cfg)
    groups = param_groups(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(g["param_name"] for g in groups) == sorted(trainable)
    assert all(len(g["params"]) == 1 for g in groups)
    by_name = {g["param_name"]: g for g in groups}
    base, wd = 1e-4, 1e-4  # the official BASE_LR and WEIGHT_DECAY
    expected = {
        # timm blocks use torch LayerNorm: no decay
        "side_adapter_network.vit_model.blocks.0.norm1.weight": (base * 0.1, 0.0),
        "side_adapter_network.vit_model.blocks.3.norm2.bias": (base * 0.1, 0.0),
        # the channels-first fusion LayerNorm is not a torch norm layer: it keeps the decay (official quirk)
        "side_adapter_network.fusion_layers.layer_0.input_proj.0.weight": (base * 0.1, wd),
        "side_adapter_network.fusion_layers.layer_0.input_proj.1.weight": (base * 0.1, wd),
        "side_adapter_network.vit_model.pos_embed": (base * 0.1, 0.0),
        "side_adapter_network.query_embed": (base * 0.1, 0.0),
        "side_adapter_network.query_pos_embed": (base * 0.1, 0.0),
        "side_adapter_network.vit_model.blocks.1.attn.qkv.weight": (base * 0.1, wd),
        "side_adapter_network.mask_decoder.bias_scaling.weight": (base * 0.1, wd),
        "clip_visual_extractor.positional_embedding": (base * 0.5, 0.0),
        "ov_classifier.bg_embed": (base, wd),
    }
    for name, (lr, decay) in expected.items():
        assert by_name[name]["lr"] == pytest.approx(lr), name
        assert by_name[name]["weight_decay"] == decay, name
    # only the side adapter, the CLIP positional embedding and bg_embed train
    assert {n.split(".")[0] for n in by_name} == {"side_adapter_network", "clip_visual_extractor", "ov_classifier"}
    assert [n for n in by_name if not n.startswith("side_adapter_network")] == [
        "clip_visual_extractor.positional_embedding",
        "ov_classifier.bg_embed",
    ]
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == len(trainable)


def test_embedding_modules_and_shared_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(4, 3)
            self.gn = nn.GroupNorm(1, 3)
            self.lin = nn.Linear(3, 3)
            self.tied = self.lin  # the same parameters under two names: one group each

    cfg = san.get_cfg()
    groups = {g["param_name"]: g for g in param_groups(Net(), cfg)}
    assert set(groups) == {"emb.weight", "gn.weight", "gn.bias", "lin.weight", "lin.bias"}
    assert groups["emb.weight"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY_EMBED
    assert groups["gn.bias"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY_NORM
    assert groups["lin.weight"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    cfg.SOLVER.OPTIMIZER = "LION"
    with pytest.raises(ValueError, match="unknown SOLVER.OPTIMIZER 'LION'"):
        build_optimizer(cfg, Net())


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt(lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_poly_schedule_follows_the_formula():
    lrs = _lrs(WarmupPolyLR(_opt(), 100, warmup_iters=0, power=0.9), 101)
    assert lrs == pytest.approx([0.1 * (1 - i / 100) ** 0.9 for i in range(101)], rel=1e-12)
    assert lrs[-1] == 0.0
    # linear warm-up: factor * (1 - a) + a, a = it / warmup_iters, times the poly decay
    lrs = _lrs(WarmupPolyLR(_opt(), 50, warmup_factor=0.01, warmup_iters=10, power=1.0), 20)
    for i, lr in enumerate(lrs):
        warm = 0.01 * (1 - i / 10) + i / 10 if i < 10 else 1.0
        assert lr == pytest.approx(0.1 * warm * (1 - i / 50)), i
    lrs = _lrs(WarmupPolyLR(_opt(), 50, warmup_factor=0.25, warmup_iters=5, warmup_method="constant"), 8)
    assert lrs[:5] == pytest.approx([0.1 * 0.25 * (1 - i / 50) ** 0.9 for i in range(5)])
    # constant ending: never below constant_ending * base once warm-up is over
    lrs = _lrs(WarmupPolyLR(_opt(), 10, warmup_iters=0, power=1.0, constant_ending=0.35), 11)
    assert lrs == pytest.approx([0.1 * max(1 - i / 10, 0.35) for i in range(11)])
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        WarmupPolyLR(_opt(), 10, warmup_method="cosine")


def test_official_schedule_matches_the_released_log(tmp_path):
    # the official B/16 log prints lr 9.9971e-05 at iteration 19 (60k iterations, no warm-up, power 0.9)
    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    sched = build_lr_scheduler(cfg, _opt(cfg.SOLVER.BASE_LR))
    assert (sched.max_iters, sched.power, sched.warmup_iters) == (60000, 0.9, 0)
    assert f"{_lrs(sched, 20)[19]:.4e}" == "9.9971e-05"
    assert sched.state_dict()["last_epoch"] == 20
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosine"
    with pytest.raises(ValueError, match="unknown SOLVER.LR_SCHEDULER_NAME 'WarmupCosine'"):
        build_lr_scheduler(cfg, _opt())


def test_multistep_schedule_of_detectron2_defaults():
    cfg = san.get_cfg()  # WarmupMultiStepLR, steps (30000,), gamma 0.1, linear warm-up 1000 from 1e-3
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = (4, 6), 2
    lrs = _lrs(build_lr_scheduler(cfg, _opt(1.0)), 8)
    assert lrs == pytest.approx([0.001, 0.5005, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_gradient_clippers():
    cfg = san.get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    assert build_gradient_clipper(cfg) is None
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True

    def params():
        ps = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))]
        ps[0].grad, ps[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
        return ps

    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "full_model", 0.01
    ps = params()
    build_gradient_clipper(cfg)(ps)  # global norm 5 -> 0.01, direction kept
    assert ps[0].grad.tolist() == pytest.approx([0.006, 0.0], rel=1e-5) and ps[1].grad.item() == pytest.approx(
        0.008, rel=1e-5
    )
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "norm", 2.0
    ps = params()
    build_gradient_clipper(cfg)(ps)  # each parameter on its own: norms 3 and 4 -> 2 and 2
    assert ps[0].grad.tolist() == pytest.approx([2.0, 0.0], rel=1e-5) and ps[1].grad.item() == pytest.approx(
        2.0, rel=1e-5
    )
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "value", 3.5
    ps = params()
    build_gradient_clipper(cfg)(ps)
    assert ps[0].grad.tolist() == [3.0, 0.0] and ps[1].grad.item() == 3.5
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "percentile"
    with pytest.raises(ValueError, match="CLIP_TYPE 'percentile'"):
        build_gradient_clipper(cfg)
    assert math.isclose(cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE, 2.0)


def test_official_b16_optimizer_covers_the_released_trainable_parameters():
    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""  # random CLIP: only shapes and names matter here
    groups = param_groups(san.build_model(cfg, clip_weights=False), cfg)
    # the release's optimizer table: 8.37M trainable (side adapter 8,219,058 + CLIP pos. embedding + bg_embed)
    assert sum(g["params"][0].numel() for g in groups) == 8_219_058 + 197 * 768 + 512
    no_decay = sorted(g["param_name"] for g in groups if g["weight_decay"] == 0)
    # 8 side blocks x (norm1, norm2) x (weight, bias), pos_embed, query_embed, query_pos_embed, CLIP
    # positional_embedding
    assert len(no_decay) == 8 * 2 * 2 + 4
    assert not any("fusion_layers" in n for n in no_decay)
    assert {g["lr"] for g in groups} == {1e-4}  # the B/16 config sets BACKBONE_MULTIPLIER back to 1.0
