"""One Triton kernel for the exact label path on GPUs: row resize, sigmoid, class mixture and arg-max fused.

Shape shorthand: Q mask proposals, C classes, h' x W masks already resized along the columns, H output rows.

:func:`san.modeling.semantic.semantic_labels` forms the scores a band of output rows at a time: each band
materialises ``[Q, b, W]`` resized masks and ``[b * W, C]`` scores in GPU memory, and launches a dozen
kernels per band. Here one program takes one output row and ``BLOCK_W`` columns: it resizes the Q masks
there from the row taps (``[Q, BLOCK_W]`` in registers), applies the sigmoid, and walks the classes in
tiles of ``BLOCK_C``, each a ``[BLOCK_C, Q] x [Q, BLOCK_W]`` product in IEEE float32 (no TF32), keeping
the running max and its first index. Neither ``[Q, H, W]`` nor ``[C, H, W]`` exists, in memory or in
pieces. The result equals :func:`~san.modeling.semantic.semantic_labels` up to float rounding (tests run
the kernel through Triton's interpreter, ``TRITON_INTERPRET=1``, on the CPU).

Opt-in (``semantic_labels(..., fused=True)``) until a GPU run has measured it beside the band path
(``scripts/gpu_check.sh``); it needs Triton, which torch's CUDA wheels bring.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

__all__ = ["fused_labels"]

_KERNEL = None


def _kernel():  # noqa: ANN202 - a Triton JIT function
    """Compile-on-first-use: Triton is imported only when the fused path runs."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def labels_kernel(
        maps_ptr,  # [Q, HP, W] float32
        idx_ptr,  # [H, K] int64 row taps
        wt_ptr,  # [H, K] float32 tap weights
        probs_ptr,  # [Q, C] float32
        labels_ptr,  # [H, W] int64
        scores_ptr,  # [H, W] float32
        Q,
        C,
        HP,
        W,
        K: tl.constexpr,
        SIGMOID: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        y = tl.program_id(0)
        xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        qs = tl.arange(0, BLOCK_Q)
        in_x, in_q = xs < W, qs < Q
        up = tl.zeros((BLOCK_Q, BLOCK_W), dtype=tl.float32)
        for j in tl.static_range(K):  # the row resize: K taps, in the band path's order
            row = tl.load(idx_ptr + y * K + j)
            wt = tl.load(wt_ptr + y * K + j)
            ptrs = maps_ptr + qs[:, None] * HP * W + row * W + xs[None, :]
            up += tl.load(ptrs, mask=in_q[:, None] & in_x[None, :], other=0.0) * wt
        if SIGMOID:
            up = tl.sigmoid(up)  # padded proposals (q >= Q) add nothing: their probabilities load as 0
        best = tl.full((BLOCK_W,), float("-inf"), dtype=tl.float32)
        arg = tl.zeros((BLOCK_W,), dtype=tl.int32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            in_c = cs < C
            p = tl.load(probs_ptr + qs[None, :] * C + cs[:, None], mask=in_c[:, None] & in_q[None, :], other=0.0)
            s = tl.dot(p, up, input_precision="ieee")  # [BLOCK_C, BLOCK_W]
            s = tl.where(in_c[:, None], s, float("-inf"))
            tile_best = tl.max(s, axis=0)
            tile_arg = tl.argmax(s, axis=0) + c0
            better = tile_best > best  # ties keep the earlier class, as an arg-max over all classes
            best = tl.where(better, tile_best, best)
            arg = tl.where(better, tile_arg, arg)
        tl.store(labels_ptr + y * W + xs, arg.to(tl.int64), mask=in_x)
        tl.store(scores_ptr + y * W + xs, best, mask=in_x)

    _KERNEL = labels_kernel
    return _KERNEL


def _pow2(n: int, least: int) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def fused_labels(
    probs: Tensor, rows: tuple[Tensor, Tensor], maps: Tensor, sigmoid: bool, *, block_c: int = 64, block_w: int = 64
) -> tuple[Tensor, Tensor]:
    """Arg-max and max over classes of ``probs^T f(R @ maps)`` in one kernel -> ``labels``, ``scores`` ``[H, W]``.

    Args:
        probs: ``[Q, C]`` class probabilities of every mask (background dropped), float32.
        rows: taps ``[H, k]`` (indices, weights) of the row resize matrix ``R [H, h']``.
        maps: ``[Q, h', W]`` masks already resized along the columns, float32.
        sigmoid: apply the sigmoid after the row resize (mask logits) or not (probabilities).
        block_c, block_w: class and column tile sizes (powers of two, at least 16).
    """
    q, c = probs.shape
    idx, weights = rows
    height, width = idx.shape[0], maps.shape[-1]
    if maps.shape[0] != q or q > 256:
        raise ValueError(f"fused_labels: expected maps [Q<=256, h', W] for probs [{q}, C], got {list(maps.shape)}")
    if maps.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"fused=True runs a Triton kernel on a CUDA device; these tensors are on {maps.device.type} (leave "
            "fused off there, or set TRITON_INTERPRET=1 before the first call to run it interpreted, slowly)"
        )
    try:
        kernel = _kernel()
    except ImportError as e:
        raise ImportError("fused=True needs Triton, which torch's CUDA wheels install (pip install triton)") from e
    labels = torch.empty(height, width, dtype=torch.long, device=maps.device)
    scores = torch.empty(height, width, dtype=torch.float32, device=maps.device)
    grid = (height, -(-width // block_w))
    kernel[grid](
        maps.float().contiguous(),
        idx.contiguous(),
        weights.float().contiguous(),
        probs.float().contiguous(),
        labels,
        scores,
        q,
        c,
        maps.shape[1],
        width,
        K=idx.shape[1],
        SIGMOID=sigmoid,
        BLOCK_Q=_pow2(q, 16),
        BLOCK_C=block_c,
        BLOCK_W=block_w,
    )
    return labels, scores
