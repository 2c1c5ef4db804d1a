"""Reference computations written out in the tests, independent of the code under test.

They follow the official formulations (the dense SOS-token mask of ``RecWithAttnbiasHead``, adaptive
pooling windows, the semantic mixture) step by step, using only the checkpointed weights of the
modules they check, so a wiring bug in the package cannot hide in the reference too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_mask(bias: torch.Tensor, q: int, n: int) -> torch.Tensor:
    """The official ``[B, H, n, n]`` mask of a sequence [Q SOS tokens, class token, visual tokens]: each SOS
    token sees itself and the visual tokens (+ bias ``[B, H, Q, L]``), never the other SOS tokens or the
    class token (-100); no visual or class token sees an SOS token."""
    b, h = bias.shape[:2]
    mask = bias.new_zeros(b, h, n, n)
    mask[..., :q] = -100.0
    mask[..., torch.arange(q), torch.arange(q)] = 0.0
    mask[..., :q, q] = -100.0
    mask[..., :q, q + 1 :] = bias
    return mask


def adaptive_pool(x: torch.Tensor, size: tuple[int, int], reduce: str) -> torch.Tensor:
    """``adaptive_{max,avg}_pool2d`` by its window rule: output cell i covers input rows
    floor(i * H / h) .. ceil((i + 1) * H / h) - 1 (and the same for columns)."""
    (h_in, w_in), (h, w) = x.shape[-2:], size
    out = x.new_empty(*x.shape[:-2], h, w)
    for i in range(h):
        r0, r1 = (i * h_in) // h, math.ceil((i + 1) * h_in / h)
        for j in range(w):
            c0, c1 = (j * w_in) // w, math.ceil((j + 1) * w_in / w)
            cell = x[..., r0:r1, c0:c1].flatten(-2)
            out[..., i, j] = cell.amax(-1) if reduce == "max" else cell.mean(-1)
    return out


def reference_rec_head(head, x0: torch.Tensor, sos0: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
    """Mask embeddings ``[B, Q, E]`` of the official dense recognition head: ``x0`` the tokens entering it
    ``[B, 1 + L, D]``, ``sos0`` the initial SOS tokens ``[B, Q, D]``, ``biases`` one ``[B, H, Q, L]`` per block."""
    q = sos0.shape[1]
    x = torch.cat([sos0, x0], dim=1)
    for block, bias in zip(head.resblocks, biases):
        x = block(x, attn_mask=dense_mask(bias, q, x.shape[1]))
    return F.normalize(head.ln_post(x[:, :q]) @ head.proj, dim=-1)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` = sum over queries of softmax(class)[q, :C] * sigmoid(mask)[q]."""
    probs = class_logits.softmax(-1)[:, :-1]
    return (probs[:, :, None, None] * mask_logits.sigmoid()[:, None]).sum(0)


EPS32 = torch.finfo(torch.float32).eps


def golden_sem_seg_bound(golden: dict, i: int, class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]``: how far a correct float32 ``sem_seg`` of golden image ``i`` may lie from the official one.

    Interval arithmetic in float64 on the official formula ``sum_q p[q, c] sigmoid(m_q)``: every mask
    logit ``m_q`` (the official proposals upsampled exactly, in float64) lies within ``D_q`` of both
    implementations' logits, where ``D_q`` is the measured difference of our proposals ``mask_logits``
    ``[Q, h, w]`` from the official ones (bilinear resizing is a convex combination, so it never grows)
    plus the float32 rounding of two bilinear resizes in each implementation (48 eps x max |m_q|: up to
    16 products and sums per output value, both implementations); every class probability lies between
    ours (from ``class_logits`` ``[Q, C + 1]``) and the official's, widened by float32 softmax rounding.
    The width of the resulting interval of each score, plus the float32 rounding of the Q-term mixture in
    both implementations, bounds the difference. Where a logit is large the sigmoid is flat and the bound
    is tight; where it crosses zero with a large magnitude (golden v1: logits of std 2e4) the bound says how
    much float32 rounding alone moves the official output there.
    """
    out = golden["outputs"]
    official = out["eval"]["mask_preds"][-1][i].double()  # [Q, h, w]
    padded = tuple(out["padded_input"].shape[-2:])
    h, w = golden["images"][i].shape[-2:]
    m = F.interpolate(official[None], size=padded, mode="bilinear", align_corners=False)[:, :, :h, :w]
    m = F.interpolate(m, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)[0]  # [Q, H, W]
    diff = (mask_logits.double() - official).abs().amax((-2, -1))  # [Q]
    d = (diff + 48 * EPS32 * official.abs().amax((-2, -1)))[:, None, None]
    p_off = out["eval"]["mask_logits"][-1][i].double().softmax(-1)[:, :-1]  # [Q, C]
    p_ours = class_logits.double().softmax(-1)[:, :-1]
    slack = 8 * EPS32 * torch.maximum(p_off, p_ours)
    p_lo, p_hi = torch.minimum(p_off, p_ours) - slack, torch.maximum(p_off, p_ours) + slack
    lo, hi = (m - d).sigmoid(), (m + d).sigmoid()  # [Q, H, W]
    width = torch.einsum("qc,qhw->chw", p_hi, hi) - torch.einsum("qc,qhw->chw", p_lo.clamp(min=0), lo)
    q = official.shape[0]
    mixture = 2 * q * EPS32 * torch.einsum("qc,qhw->chw", p_hi, hi)  # Q products and sums, each implementation
    return width + mixture


def assert_sem_seg_matches_golden(golden: dict, i: int, got: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``got`` ``[C, H, W]`` within ``bound`` (:func:`golden_sem_seg_bound`) of the official ``sem_seg`` at
    every pixel; returns ``[H, W]`` bool, the pixels whose label is decided (official top-2 margin above
    twice the bound there: no score within its bound can swap the two)."""
    ref = golden["outputs"]["sem_seg"][i].double()
    err = (got.double() - ref).abs()
    worst = (err - bound).amax().item()
    assert worst <= 0, f"sem_seg[{i}]: exceeds its float32 bound by {worst:.3g} (max |diff| {err.max().item():.3g})"
    return decided(ref, bound.amax(0))


def float32_tolerance(ref: torch.Tensor, terms: int) -> float:
    """``terms`` x float32 epsilon x the largest magnitude in ``ref`` (at least 1): how far ``terms``
    roundings of values that size can move a float32 result. For two float32 computations of one formula
    that differ only in the order or grouping of ``terms`` operations (sums over taps, proposals, channels)."""
    return terms * EPS32 * max(1.0, float(torch.as_tensor(ref).abs().max()))


def decided(scores: torch.Tensor, tol: float) -> torch.Tensor:
    """``[H, W]`` bool: pixels whose top-2 margin in ``scores`` ``[C, H, W]`` exceeds ``2 tol``. Where two
    score maps differ by at most ``tol``, their arg-max can differ only outside these pixels (the near
    ties a different reduction order may flip); label comparisons between two code paths use them."""
    top2 = torch.as_tensor(scores).topk(2, dim=0).values
    return (top2[0] - top2[1]) > 2 * tol
