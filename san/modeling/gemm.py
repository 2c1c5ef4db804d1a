"""Float32 CPU inference GEMMs through oneDNN's inner product, with ATen's ``F.linear`` as the reference.

``F.linear`` on the CPU calls the BLAS torch was built with (MKL in the PyPI wheels). oneDNN's inner
product (``torch.ops.mkldnn._linear_pointwise``, the kernel torch's own CPU compiler emits for linear
layers) computes the same float32 products with its own blocking and ran 5-35 % faster on every
ViT shape SAN uses (``scripts/bench_cpu_kernels.py``; docs/benchmarks.md, "CPU kernels"). Both are
float32 GEMMs with float32 accumulation: they differ by rounding only, which the golden tests bound.

oneDNN is used only where it is exact to use: float32 on the CPU, no gradient needed, no autocast, not
while tracing or exporting (ONNX, TorchScript, ``torch.compile`` see the plain ``F.linear``), and for
at least :data:`MIN_ROWS` rows (below that ATen's call was faster). ``SAN_CPU_GEMM=aten`` (or
:func:`cpu_gemm`) turns it off, ``onednn`` uses it for every row count; the default is ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MIN_ROWS", "Linear", "adopt_linears", "cpu_gemm", "linear", "uses_onednn"]

MIN_ROWS = 16
_CHOICES = ("auto", "onednn", "aten")


def _checked(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"SAN_CPU_GEMM={name!r}: choose one of {', '.join(_CHOICES)}")
    return name


_state = {"gemm": _checked(os.environ.get("SAN_CPU_GEMM", "auto"))}


@contextmanager
def cpu_gemm(name: str) -> Iterator[None]:
    """Use the CPU GEMM ``name`` (``auto``, ``onednn`` or ``aten``) inside the block."""
    previous = _state["gemm"]
    _state["gemm"] = _checked(name)
    try:
        yield
    finally:
        _state["gemm"] = previous


def _exporting() -> bool:
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def uses_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` sends ``x @ weight.T`` to oneDNN (the rule above, in one place)."""
    mode = _state["gemm"]
    if mode == "aten" or not torch.backends.mkldnn.is_available():
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False  # the oneDNN op has no derivative: autograd must see F.linear
    if torch.is_autocast_enabled("cpu") or _exporting():
        return False
    return mode == "onednn" or x.numel() >= MIN_ROWS * x.shape[-1]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``[..., K]``, ``weight`` ``[N, K]`` -> ``[..., N]``."""
    if uses_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state_dict keys) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def adopt_linears(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` under ``module`` a :class:`Linear` in place (for timm's blocks).

    Only the class changes: parameters, hooks and state_dict keys stay as they were.
    """
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
    return module
