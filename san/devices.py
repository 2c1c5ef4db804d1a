"""Devices and precisions: the one place that turns user-facing names into torch devices, dtypes
and autocast contexts.

Precision names are ``fp32``, ``fp16`` and ``bf16`` (the config's ``float16``/``bfloat16`` and
``float32`` are accepted as aliases). torch is imported inside the functions, not at module level,
so that the command line can offer the choices before any heavy import (``san --help``).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRECISIONS",
    "amp_settings",
    "available_cpus",
    "autocast",
    "check_device_name",
    "check_precision",
    "precision_dtype",
    "precision_name",
    "resolve_device",
]

PRECISIONS = ("fp32", "fp16", "bf16")
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_CONFIG_NAMES = {"fp16": "float16", "bf16": "bfloat16"}


def precision_name(name: str) -> str:
    """``fp32``/``fp16``/``bf16`` for any accepted spelling; a ValueError listing the choices otherwise."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)} (or float16, bfloat16)")
    return key


def precision_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision name, or None for float32 (no autocast)."""
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision_name(name)]


def amp_settings(name: str) -> tuple[bool, str]:
    """``(SOLVER.AMP.ENABLED, SOLVER.AMP.PRECISION)`` of a precision name."""
    key = precision_name(name)
    return key != "fp32", _CONFIG_NAMES.get(key, "float16")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the precision's dtype on ``device`` (a null context for fp32)."""
    import torch

    dtype = precision_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_DEVICE_NAME = re.compile(r"(cpu|cuda|mps|xpu|hpu|mtia|meta)(:\d+)?")


def _unknown_device(device: Any, why: str = "") -> str:
    return f"unknown device {device!r}{f' ({why})' if why else ''}; use cpu, cuda or cuda:N"


def check_device_name(device: str | None) -> None:
    """Refuse a device name that cannot be one (``cuda:x``, ``gpu``) without importing torch, so that
    a command says so at once; :func:`resolve_device` checks that the device exists."""
    if device is not None and not _DEVICE_NAME.fullmatch(str(device)):
        raise ValueError(_unknown_device(device))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """A usable device: ``None`` picks CUDA when available, else the CPU; unknown or absent devices
    raise a ValueError that says what exists."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(_unknown_device(device, str(e))) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a half precision that the device's autocast cannot run (a clear error now, not a crash later)."""
    import torch
    import torch.nn.functional as F

    key = precision_name(precision)
    if key == "fp32":
        return
    try:
        with autocast(device, key):
            x = torch.ones(1, 1, 4, 4, device=device)
            F.conv2d(x, torch.ones(1, 1, 3, 3, device=device)).sum().item()
            (x.flatten(1) @ x.flatten(1).T).item()
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(
            f"precision {precision!r} is not supported on {device} by this torch build ({e}); "
            f"use {'bf16 or fp32' if key == 'fp16' else 'fp32'}"
        ) from None
