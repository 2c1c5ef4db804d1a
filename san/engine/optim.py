"""Optimizer, learning-rate schedule and gradient clipping of the official recipe (no detectron2).

- :func:`param_groups`: one group per trainable parameter, as the official ``train_net.py``:
  weight decay ``WEIGHT_DECAY_NORM`` for torch normalisation layers (``nn.LayerNorm``,
  ``BatchNorm*``, ``GroupNorm``, ...; san's channels-first ``LayerNorm2d`` in the fusion layers is
  not one of them and keeps ``WEIGHT_DECAY``), ``WEIGHT_DECAY_EMBED`` for ``nn.Embedding`` and for
  parameters whose name contains an entry of ``WEIGHT_DECAY_EMBED_GROUP``; learning rate x
  ``BACKBONE_MULTIPLIER`` inside ``side_adapter_network`` and x ``CLIP_MULTIPLIER`` in modules
  whose name contains "clip".
- :class:`WarmupPolyLR`: detectron2's DeepLab-project poly schedule with warm-up and constant ending
  (:class:`WarmupMultiStepLR`, detectron2's default, is there for configs that keep it).
- :func:`build_gradient_clipper`: ``SOLVER.CLIP_GRADIENTS`` as a function the trainer calls after
  un-scaling the gradients: ``full_model`` clips the global L2 norm over all parameters (the
  official setting, 0.01); ``value`` and ``norm`` clip each parameter on its own, as detectron2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_MODULE_TYPES",
    "WarmupMultiStepLR",
    "WarmupPolyLR",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "param_groups",
    "warmup_factor_at_iter",
]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
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


def param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """The official per-parameter groups: ``params`` (one tensor), ``lr``, ``weight_decay``, ``param_name``.

    Only parameters with ``requires_grad`` are included; a parameter shared by several modules
    appears once (under the first module that holds it).
    """
    s = cfg.SOLVER
    model = getattr(model, "module", model)  # DistributedDataParallel
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
            if isinstance(module, NORM_MODULE_TYPES):
                wd = s.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                wd = s.WEIGHT_DECAY_EMBED
            full = f"{module_name}.{name}" if module_name else name
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "param_name": full})
    return groups


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (ADAMW, or SGD with ``MOMENTUM``/``NESTEROV``) over :func:`param_groups`.

    Gradient clipping is not part of the optimizer: the trainer applies
    :func:`build_gradient_clipper` after un-scaling AMP gradients.
    """
    s = cfg.SOLVER
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if s.OPTIMIZER == "ADAMW":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=s.BASE_LR)
    elif s.OPTIMIZER == "SGD":
        optimizer = torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)
    else:
        raise ValueError(f"unknown SOLVER.OPTIMIZER {s.OPTIMIZER!r}; use ADAMW (the official setting) or SGD")
    n = sum(g["params"][0].numel() for g in groups)
    by_setting: dict[tuple[float, float], int] = {}
    for g in groups:
        key = (g["lr"], g["weight_decay"])
        by_setting[key] = by_setting.get(key, 0) + 1
    summary = ", ".join(f"{c} x (lr {lr:.2e}, wd {wd:.1e})" for (lr, wd), c in sorted(by_setting.items()))
    logger.info("%s: %d parameter groups, %.2fM trainable parameters: %s", s.OPTIMIZER, len(groups), n / 1e6, summary)
    return optimizer


def warmup_factor_at_iter(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    """detectron2's warm-up multiplier: 1 after ``warmup_iters``; before, ``constant`` gives
    ``warmup_factor`` and ``linear`` ramps from ``warmup_factor`` to 1."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"unknown SOLVER.WARMUP_METHOD {method!r}; use 'linear' or 'constant'")


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Poly decay ``base_lr * warmup(it) * (1 - it / max_iters) ** power`` (detectron2 DeepLab).

    With ``constant_ending > 0`` the factor never falls below ``constant_ending`` once warm-up is
    over. ``last_epoch`` counts iterations: call :meth:`step` once after every optimizer step.
    Past ``max_iters`` the factor stays 0 (detectron2 would fail on a negative base).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
        power: float = 0.9,
        constant_ending: float = 0.0,
    ) -> None:
        if max_iters < 1:
            raise ValueError(f"SOLVER.MAX_ITER must be >= 1, got {max_iters}")
        self.max_iters, self.power, self.constant_ending = max_iters, power, constant_ending
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup_factor, warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def _factor(self, it: int) -> float:
        warmup = warmup_factor_at_iter(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        poly = math.pow(max(1.0 - it / self.max_iters, 0.0), self.power)
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warmup * poly

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """detectron2's default step schedule: ``base_lr * warmup(it) * gamma ** (number of steps <= it)``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        steps: list[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if list(steps) != sorted(steps):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {list(steps)}")
        self.steps = [int(x) for x in steps]
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        it = self.last_epoch
        warmup = warmup_factor_at_iter(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        decay = self.gamma ** sum(1 for step in self.steps if step <= it)
        return [base_lr * warmup * decay for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``SOLVER.LR_SCHEDULER_NAME``: WarmupPolyLR (the official recipe) or detectron2's default
    WarmupMultiStepLR (``STEPS``, ``GAMMA``), both with ``WARMUP_*``."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        return WarmupMultiStepLR(
            optimizer,
            list(s.STEPS),
            gamma=s.GAMMA,
            warmup_factor=s.WARMUP_FACTOR,
            warmup_iters=s.WARMUP_ITERS,
            warmup_method=s.WARMUP_METHOD,
        )
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        raise ValueError(
            f"unknown SOLVER.LR_SCHEDULER_NAME {s.LR_SCHEDULER_NAME!r}; use WarmupPolyLR (the official recipe) "
            "or WarmupMultiStepLR"
        )
    return WarmupPolyLR(
        optimizer,
        s.MAX_ITER,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_iters=s.WARMUP_ITERS,
        warmup_method=s.WARMUP_METHOD,
        power=s.POLY_LR_POWER,
        constant_ending=s.POLY_LR_CONSTANT_ENDING,
    )


def build_gradient_clipper(cfg: Any) -> Callable[[Iterable[torch.nn.Parameter]], None] | None:
    """A function clipping the gradients of the given parameters per ``SOLVER.CLIP_GRADIENTS``, or
    None when clipping is disabled. Call it after ``GradScaler.unscale_`` and before the step."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    value, norm_type = float(c.CLIP_VALUE), float(c.NORM_TYPE)
    if c.CLIP_TYPE == "full_model":
        if value <= 0:
            return None  # the official optimizer wrapper is disabled for CLIP_VALUE <= 0

        def clip_full_model(params: Iterable[torch.nn.Parameter]) -> None:
            torch.nn.utils.clip_grad_norm_(list(params), value)  # global L2 norm, as the official

        return clip_full_model
    if c.CLIP_TYPE == "value":

        def clip_value(params: Iterable[torch.nn.Parameter]) -> None:
            for p in params:
                torch.nn.utils.clip_grad_value_(p, value)

        return clip_value
    if c.CLIP_TYPE == "norm":

        def clip_norm(params: Iterable[torch.nn.Parameter]) -> None:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)

        return clip_norm
    raise ValueError(f"unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {c.CLIP_TYPE!r}; use full_model, value or norm")
