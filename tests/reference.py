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
