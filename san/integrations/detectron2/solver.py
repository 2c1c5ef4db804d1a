"""Optimizer and LR schedule of the official ``train_net.py`` for detectron2's ``DefaultTrainer``.

One parameter group per trainable tensor: lr x ``SOLVER.BACKBONE_MULTIPLIER`` inside
``side_adapter_network``, x ``SOLVER.CLIP_MULTIPLIER`` in modules whose name contains "clip";
weight decay ``SOLVER.WEIGHT_DECAY_NORM`` for torch normalisation layers,
``SOLVER.WEIGHT_DECAY_EMBED`` for ``nn.Embedding`` and names containing an entry of
``SOLVER.WEIGHT_DECAY_EMBED_GROUP``. ``CLIP_TYPE: full_model`` clips the global gradient norm of
all parameters inside ``optimizer.step()`` (detectron2 itself only clips per parameter).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["build_lr_scheduler", "build_optimizer", "param_groups"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def param_groups(model: nn.Module, cfg: CfgNode) -> list[dict[str, Any]]:
    """The official per-parameter groups (``params``, ``lr``, ``weight_decay``, ``param_name``)."""
    s = cfg.SOLVER
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = s.BASE_LR, s.WEIGHT_DECAY
            if "side_adapter_network" in module_name:
                lr *= s.BACKBONE_MULTIPLIER
            if "clip" in module_name:
                lr *= s.CLIP_MULTIPLIER
            if any(key in name for key in s.WEIGHT_DECAY_EMBED_GROUP):
                wd = s.WEIGHT_DECAY_EMBED
            if isinstance(module, _NORM_TYPES):
                wd = s.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                wd = s.WEIGHT_DECAY_EMBED
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "param_name": f"{module_name}.{name}"})
    return groups


def _with_full_model_clipping(optim_cls: type[torch.optim.Optimizer], max_norm: float) -> type[torch.optim.Optimizer]:
    class FullModelGradientClippingOptimizer(optim_cls):  # type: ignore[valid-type, misc]
        def step(self, closure: Any = None) -> Any:
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelClipped{optim_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups`, with the configured gradient clipping."""
    s = cfg.SOLVER
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    clip = s.CLIP_GRADIENTS
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
    if s.OPTIMIZER == "ADAMW":
        cls: type[torch.optim.Optimizer] = torch.optim.AdamW
        kwargs: dict[str, Any] = {}
    elif s.OPTIMIZER == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM}
    else:
        raise ValueError(f"unknown SOLVER.OPTIMIZER {s.OPTIMIZER!r} (use ADAMW or SGD)")
    if full_model and clip.CLIP_VALUE > 0.0:
        cls = _with_full_model_clipping(cls, clip.CLIP_VALUE)
    optimizer = cls(groups, s.BASE_LR, **kwargs)
    if not full_model:
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    n = sum(g["params"][0].numel() for g in groups)
    lrs = sorted({g["lr"] for g in groups})
    logger.info(
        "optimizer %s: %d parameter groups, %.2fM parameters, lr %s",
        type(optimizer).__name__,
        len(groups),
        n / 1e6,
        lrs,
    )
    return optimizer


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    """``WarmupPolyLR`` from detectron2's DeepLab project (or detectron2's own schedulers)."""
    try:
        from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build
    except ImportError:
        deeplab_build = None
    if deeplab_build is not None:
        return deeplab_build(cfg, optimizer)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        from san.engine.optim import WarmupPolyLR  # the same schedule, for installs without the projects

        s = cfg.SOLVER
        return WarmupPolyLR(
            optimizer,
            s.MAX_ITER,
            warmup_factor=s.WARMUP_FACTOR,
            warmup_iters=s.WARMUP_ITERS,
            warmup_method=s.WARMUP_METHOD,
            power=s.POLY_LR_POWER,
            constant_ending=s.POLY_LR_CONSTANT_ENDING,
        )
    from detectron2.solver import build_lr_scheduler as d2_build

    return d2_build(cfg, optimizer)
