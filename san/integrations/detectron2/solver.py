"""Optimizer and LR schedule of the official ``train_net.py`` for detectron2's ``DefaultTrainer``.

The parameter groups, optimizer and clipping rules are san's own (:mod:`san.engine.optim`, the
official recipe). detectron2's trainer calls only ``optimizer.step()``, so, as the official
``train_net.py`` does, clipping (``full_model``: the global gradient norm of all parameters,
else per parameter) runs at the start of every ``step()`` (a step pre-hook), after AMP has
un-scaled the gradients.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from detectron2.config import CfgNode
from torch import nn

from san.engine import optim as san_optim

__all__ = ["build_lr_scheduler", "build_optimizer", "param_groups"]

param_groups = san_optim.param_groups


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """san's optimizer over the official parameter groups, clipping ``SOLVER.CLIP_GRADIENTS`` in ``step()``."""
    optimizer = san_optim.build_optimizer(cfg, model)
    clip = san_optim.build_gradient_clipper(cfg)
    if clip is not None:

        def clip_before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            clip(itertools.chain(*[g["params"] for g in opt.param_groups]))

        optimizer.register_step_pre_hook(clip_before_step)
    return optimizer


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    """``WarmupPolyLR`` from detectron2's DeepLab project where installed (else san's equal one);
    other names go to detectron2's own schedulers."""
    try:
        from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build
    except ImportError:
        deeplab_build = None
    if deeplab_build is not None:
        return deeplab_build(cfg, optimizer)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        return san_optim.build_lr_scheduler(cfg, optimizer)
    from detectron2.solver import build_lr_scheduler as d2_build

    return d2_build(cfg, optimizer)
