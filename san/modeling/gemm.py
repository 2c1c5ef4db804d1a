"""Float32 CPU inference GEMMs through oneDNN's inner product, with ATen's ``F.linear`` as the reference.

``F.linear`` on the CPU calls the BLAS torch was built with (MKL in the PyPI wheels). oneDNN's inner
product (``torch.ops.mkldnn._linear_pointwise``, the kernel torch's own CPU compiler emits for linear
layers) computes the same float32 products with its own blocking. Which one is faster depends on the
kernels the CPU runs (``scripts/bench_cpu_kernels.py``; docs/benchmarks.md, "CPU kernels"): with
AVX-512, oneDNN took 0.68-0.92x ATen's time on the ViT shapes SAN uses; with AVX2 the two were even
(0.90-1.29x); with SSE only, oneDNN took 2.2-2.9x. Both are float32 GEMMs with float32 accumulation:
they differ by rounding only, which the golden tests bound under each.

``auto`` (the default) therefore uses oneDNN where it won, with AVX-512 kernels (:func:`onednn_wins`),
and only where it is exact to use: float32 on the CPU, no gradient needed, no autocast, not while
tracing or exporting (ONNX, TorchScript, ``torch.compile`` see the plain ``F.linear``). It does so for
every row count: ATen's call was a few microseconds faster below ~64 rows, too little to switch
kernels with the batch size (oneDNN gives a row the same bits in any product of 2 rows or more).
``SAN_CPU_GEMM=aten`` (or :func:`cpu_gemm`) turns it off;
``onednn`` uses it wherever it is exact to use, whatever the kernels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "adopt_linears", "cpu_gemm", "linear", "onednn_wins", "uses_onednn"]

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


def onednn_wins() -> bool:
    """Whether this CPU runs AVX-512 kernels, where oneDNN's float32 GEMM beat ATen's: ATen's capability
    (``ATEN_CPU_CAPABILITY`` lowers it) is AVX512 and ``ONEDNN_MAX_CPU_ISA``, if set, allows AVX-512."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    allowed = cap == "ALL" or cap.startswith(("AVX512", "AVX10"))
    return allowed and torch.backends.cpu.get_cpu_capability() == "AVX512"


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
    return mode == "onednn" or onednn_wins()


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
