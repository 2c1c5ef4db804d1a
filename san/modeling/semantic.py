"""Semantic inference: mask proposals x class probabilities -> per-class scores or a label map.

Shape shorthand: Q mask proposals, C classes, h x w mask grid, H x W output size.

The reference (:func:`semantic_inference` after :func:`sem_seg_postprocess`, the official code)
upsamples all Q masks to the padded input, crops, resizes them to the output size and forms
``scores[c] = sum_q p[q, c] sigmoid(mask_q)``: memory and time grow with C x H x W (12 GB of scores
for 10,000 names at 480 x 640). :func:`semantic_labels` gives the arg-max and max of the same
scores without ever forming them.

Bilinear resizing (``align_corners=False``) is linear and separable, so the two resizes collapse
into one row matrix ``R [H, h]`` and one column matrix ``Cm [W, w]`` whose weights we take from
``F.interpolate`` itself (it is applied to an identity). The upsampled masks are ``R m_q Cm^T``;
we form them a band of output rows at a time, score the band against all classes, and keep only
the arg-max and the max. Peak memory is ``O(Q h W + band x (Q + C) x W)`` with the band sized to
``max_elements``; the result equals the reference up to float rounding (same label maps except at
exact ties, scores within 1e-5).

``reduced=k`` is the opt-in approximate mode: scores for all C classes only at k times the mask
grid, then exact full-resolution scores for the few classes that win (top-2) anywhere there. Its
cost does not grow with C x H x W; its agreement with the exact map is measured by
``scripts/benchmark.py``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "resize_mask_logits",
    "resize_matrix",
    "sem_seg_postprocess",
    "semantic_confidence",
    "semantic_inference",
    "semantic_labels",
    "semantic_scores",
]


def sem_seg_postprocess(result: Tensor, image_size: tuple[int, int], height: int, width: int) -> Tensor:
    """Crop ``[N, H_pad, W_pad]`` maps to the image and resize them bilinearly to ``height x width``."""
    result = result[None, :, : image_size[0], : image_size[1]]
    return F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)[0]


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class scores ``[C, H, W]`` = sum_q softmax(class_logits)[q, :C] * sigmoid(mask_logits)[q]."""
    probs = class_logits.softmax(dim=-1)[..., :-1]  # drop the background column
    return torch.einsum("qc,qhw->chw", probs, mask_logits.sigmoid())


def resize_matrix(
    n_in: int, n_out: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``[n_out, n_in]`` weights of 1-D linear resizing exactly as ``F.interpolate(align_corners=False)``."""
    eye = torch.eye(n_in, device=device, dtype=dtype)[None]  # [1, n_in, n_in]: channel i is basis vector i
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def _resize_chain(
    n_mask: int, n_pad: int, n_img: int, n_out: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(mask grid -> padded input, cropped to the image) and (image -> output) resize matrices."""
    first = resize_matrix(n_mask, n_pad, device, dtype)[:n_img]  # [n_img, n_mask]
    return first, resize_matrix(n_img, n_out, device, dtype)  # [n_out, n_img]


def _taps(mat: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """A (CPU) resize matrix ``[n_out, n_in]`` as its non-zero taps per row, indices and weights ``[n_out, k]``.

    Built on the CPU and copied once, so a GPU never waits for the host inside the band loop.
    """
    k = max(1, int((mat != 0).sum(dim=1).max()))
    weights, idx = mat.topk(k, dim=1)  # bilinear weights are >= 0; unused taps carry weight 0
    return idx.to(device), weights.to(device)


@functools.lru_cache(maxsize=64)
def _chain_taps(
    which: str, n_mask: int, n_pad: int, n_img: int, n_out: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cached taps of the whole resize chain (``"both"``) or of its second step (``"second"``)."""
    first, second = _resize_chain(n_mask, n_pad, n_img, n_out, torch.device("cpu"), dtype)
    return _taps(second @ first if which == "both" else second, device)


def _resize_last(x: Tensor, taps: tuple[Tensor, Tensor]) -> Tensor:
    """Resize the last dimension of ``x`` with :func:`_taps` output (exact sparse matmul)."""
    idx, weights = taps
    return (x[..., idx] * weights).sum(dim=-1)  # [..., n_out]


@functools.lru_cache(maxsize=64)
def _chain_matrix(n_mask: int, n_pad: int, n_img: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Cached dense ``[n_out, n_mask]`` matrix of the whole resize chain (mask grid -> padded input,
    cropped to the image -> output). Its weights come from float32 ``F.interpolate``, whose source
    coordinates are float32 as in the official float32 run (float64 ones differ by ~1e-5)."""
    first, second = _resize_chain(n_mask, n_pad, n_img, n_out, torch.device("cpu"), torch.float32)
    return (second @ first).to(device=device, dtype=dtype)


def resize_mask_logits(
    mask_logits: Tensor, image_size: tuple[int, int], padded_size: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """``[Q, h, w]`` mask logits resized as the official post-processing does (bilinear up to the padded
    input, cropped to the image, bilinear to the output) in one exact separable step -> ``[Q, H, W]``.

    Equal to :func:`sem_seg_postprocess` of the upsampled masks up to float rounding, without the
    ``[Q, H_pad, W_pad]`` intermediate: ``R m_q C^T`` with the chain's dense row and column matrices,
    two batched matrix products in the cheaper order. BLAS runs them several times faster than a
    sparse gather of the taps, and faster than the official two interpolations on the CPUs measured
    (docs/benchmarks.md, "Beside the official code"); always in the masks' dtype, never autocast.
    """
    dtype, device = mask_logits.dtype, mask_logits.device
    (h, w), (hp, wp), (h0, w0), (ho, wo) = mask_logits.shape[-2:], padded_size, image_size, out_size
    rows = _chain_matrix(h, hp, h0, ho, dtype, device)  # [H, h]
    cols = _chain_matrix(w, wp, w0, wo, dtype, device)  # [W, w]
    with torch.autocast(device.type, enabled=False):
        if ho * h * w + ho * w * wo <= h * w * wo + ho * h * wo:  # (R m) C^T costs fewer products
            return torch.matmul(torch.matmul(rows, mask_logits), cols.T)
        return torch.matmul(rows, torch.matmul(mask_logits, cols.T))


def semantic_scores(
    class_logits: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    padded_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    max_elements: int | None = None,
) -> Tensor:
    """The official ``[C, H, W]`` scores (masks resized to the output, sigmoid, class mixture), by bands.

    Equal to :func:`semantic_inference` of :func:`resize_mask_logits` up to float rounding, without their
    ``[Q, H, W]`` volume of resized masks: the masks are resized along the columns once (``[Q, h, W]``),
    then each band of output rows is resized, squashed and mixed while it is in cache and written into
    the result. Memory beyond the result: ``Q h W`` plus one band of ``max_elements`` (default 2^21
    elements on the CPU, 2^26 on GPUs). Computed in the masks' dtype, never autocast.
    """
    dtype, device = mask_logits.dtype, mask_logits.device
    (q, h, w), (hp, wp), (h0, w0), (ho, wo) = mask_logits.shape, padded_size, image_size, out_size
    rows = _chain_matrix(h, hp, h0, ho, dtype, device)  # [H, h]
    cols = _chain_matrix(w, wp, w0, wo, dtype, device)  # [W, w]
    if max_elements is None:
        max_elements = 1 << (21 if device.type == "cpu" else 26)
    with torch.autocast(device.type, enabled=False):
        probs = class_logits.to(dtype).softmax(dim=-1)[:, :-1].T.contiguous()  # [C, Q]
        maps = torch.matmul(mask_logits, cols.T)  # [Q, h, W]
        out = torch.empty(probs.shape[0], ho, wo, dtype=dtype, device=device)
        band = _band_rows(ho, q * wo, max_elements)
        for start in range(0, ho, band):
            up = torch.matmul(rows[start : start + band], maps).sigmoid_()  # [Q, b, W]
            torch.mm(probs, up.view(q, -1), out=out[:, start : start + up.shape[1]].view(probs.shape[0], -1))
    return out


def _band_rows(n_rows: int, per_row: int, max_elements: int) -> int:
    return max(1, min(n_rows, max_elements // max(per_row, 1)))


_TILE_ROWS, _TILE_COLS = 16, 32  # output tiles whose candidate classes are bounded together


def _candidates(probs: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``[T, C]``: the classes that can win somewhere in each of T tiles.

    ``lo``/``hi`` ``[Q, T]`` bound every mask's value over a tile. As class scores are
    ``sum_q p[q, c] m_q`` with ``p >= 0``, ``lo^T p`` and ``hi^T p`` bound each class's score
    there; a class whose upper bound is below the best lower bound never wins in that tile. The
    margin covers float rounding, so the pruning is exact.
    """
    low, high = lo.T @ probs, hi.T @ probs  # [T, C]
    best = low.amax(dim=1, keepdim=True)
    return high >= best - 1e-4 * (1 + best.abs())


def _label_bands(
    probs: Tensor,
    rows: tuple[Tensor, Tensor],
    maps: Tensor,
    sigmoid: bool,
    max_elements: int,
    with_scores: bool = True,
    prune: bool = False,
    total_weights: Tensor | None = None,
    fused: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Arg-max/max over classes of ``probs^T f(R @ maps)``, a band of rows at a time.

    Args:
        probs: ``[Q, C]`` class probabilities of every mask (background dropped).
        rows: taps ``[H, k]`` (indices, weights) of the row resize matrix ``R [H, h']``.
        maps: ``[Q, h', W]`` masks already resized along the columns.
        sigmoid: apply the sigmoid after the row resize (mask logits) or not (probabilities).
        with_scores: also return the winning score of every pixel.
        prune: bound the scores of ``_TILE_ROWS x _TILE_COLS`` tiles from the masks' extremes
            there (bilinear values are convex combinations of their taps) and score only the
            classes that can win; without ``with_scores``, tiles with one possible winner are
            not scored at all. Exact; it syncs with the device once per band (CPU default).
        total_weights: ``[Q]``; also return ``total_weights^T f(R @ maps)`` per pixel (with
            ``probs.sum(1)``: the sum of all class scores), which needs ``with_scores``.
        fused: run :func:`~san.modeling.fused_labels.fused_labels` (one Triton kernel, no bands) instead;
            it always returns the scores, and takes neither ``prune`` nor ``total_weights``.
    """
    if total_weights is not None and not with_scores:
        raise ValueError("the class-score totals are computed with the scores: pass with_scores=True")
    if fused:
        if prune or total_weights is not None:
            raise ValueError("the fused kernel computes labels and scores only: pass prune=False, no totals")
        from .fused_labels import fused_labels

        return (*fused_labels(probs, rows, maps, sigmoid), None)
    q, c = probs.shape
    idx, weights = rows
    height, width = idx.shape[0], maps.shape[-1]
    labels = torch.empty(height, width, dtype=torch.long, device=maps.device)
    scores = torch.empty(height, width, dtype=maps.dtype, device=maps.device) if with_scores else None
    totals = None if total_weights is None else torch.empty_like(scores)
    band = _band_rows(height, (q * 2 + c) * width, max_elements)
    if prune:
        band = min(band, _TILE_ROWS)
        n_tiles = -(-width // _TILE_COLS)
        padded = F.pad(maps, (0, n_tiles * _TILE_COLS - width), mode="replicate")
        padded = padded.view(q, maps.shape[1], n_tiles, _TILE_COLS)
        col_lo, col_hi = padded.amin(dim=-1), padded.amax(dim=-1)  # [Q, h', tiles]
        tile_of_col = torch.arange(width, device=maps.device) // _TILE_COLS
    for start in range(0, height, band):
        i, wt = idx[start : start + band], weights[start : start + band]
        first, last = 0, maps.shape[1]
        cols = classes = None  # all columns, all classes
        if prune:
            used = i[wt > 0]
            first, last = int(used.min()), int(used.max()) + 1
            lo, hi = col_lo[:, first:last].amin(dim=1), col_hi[:, first:last].amax(dim=1)  # [Q, tiles]
            if sigmoid:
                lo, hi = lo.sigmoid(), hi.sigmoid()
            cand = _candidates(probs, lo, hi)  # [tiles, C]
            need = cand.sum(dim=1) > 1
            if not with_scores:
                only = cand.to(torch.uint8).argmax(dim=1)  # the single possible winner, where there is one
                labels[start : start + band] = only[tile_of_col]
                if not bool(need.any()):
                    continue
                cols = need[tile_of_col].nonzero().flatten()
                cand = cand[need]
            classes = cand.any(dim=0).nonzero().flatten()
        m = maps[:, first:last] if cols is None else maps[:, first:last].index_select(2, cols)  # [Q, rows, W']
        i = (i - first).clamp_(0, last - first - 1)  # taps outside the range carry weight 0
        up = m.index_select(1, i[:, 0]) * wt[:, 0, None]  # [Q, b, W']
        for j in range(1, i.shape[1]):
            up.addcmul_(m.index_select(1, i[:, j]), wt[:, j, None])
        if sigmoid:
            up.sigmoid_()
        p = probs if classes is None else probs.index_select(1, classes)
        flat = up.reshape(q, -1).T  # [b*W', Q]
        s = torch.matmul(flat, p)  # [b*W', C']
        best, arg = s.max(dim=1)
        if classes is not None:
            arg = classes[arg]
        b = i.shape[0]
        if cols is None:
            labels[start : start + b] = arg.view(b, -1)
            if scores is not None:
                scores[start : start + b] = best.view(b, -1)
            if totals is not None:
                totals[start : start + b] = torch.mv(flat, total_weights).view(b, -1)
        else:
            labels[start : start + b, cols] = arg.view(b, -1)
    return labels, scores, totals


# (image size inside the padded batch, padded batch size, output size), each (h, w)
_Sizes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def semantic_labels(
    class_logits: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    padded_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    postprocess_before_inference: bool = True,
    max_elements: int | None = None,
    reduced: int | None = None,
    with_scores: bool = True,
    prune: bool | None = None,
    fused: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Label map ``[H, W]`` (long) and its score ``[H, W]`` for one image, never forming ``[C, H, W]``.

    Args:
        class_logits: ``[Q, C + 1]`` class logits (last column: background).
        mask_logits: ``[Q, h, w]`` mask logits on the side-adapter grid.
        image_size: the image's size inside the padded batch.
        padded_size: the padded batch size that masks are first upsampled to (official order).
        out_size: ``(height, width)`` of the output.
        postprocess_before_inference: resize the mask logits before the class mixture (the official
            default), or the scores after it.
        max_elements: budget of one band's score and mask tensors (elements); default 2^22 on
            CPU, 2^26 on GPUs (fewer, larger launches).
        reduced: opt-in approximation; score all classes at ``k x`` the mask grid first.
        with_scores: also return the winning score per pixel (else ``None``: cheaper with pruning).
        prune: exact pruning of the classes scored per tile (see :func:`_label_bands`); default on
            the CPU, off on GPUs (it syncs once per band).
        fused: opt-in, GPUs: one Triton kernel from the row resize to the arg-max
            (:mod:`san.modeling.fused_labels`); implies ``prune=False``.
    """
    labels, scores, _ = _semantic(
        class_logits,
        mask_logits,
        (tuple(image_size), tuple(padded_size), tuple(out_size)),
        postprocess_before_inference,
        reduced,
        max_elements=max_elements,
        with_scores=with_scores,
        prune=prune,
        with_totals=False,
        fused=fused,
    )
    return labels, scores


def semantic_confidence(
    class_logits: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    padded_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    postprocess_before_inference: bool = True,
    max_elements: int | None = None,
    prune: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`semantic_labels` with the sum of all class scores: ``(labels, best, total)``, each ``[H, W]``.

    ``best / total`` is the winning class's share of the pixel's class scores, a probability in
    [0, 1] (the scores are a mixture of masks and per-mask class probabilities, so their shares per
    pixel form a distribution over the vocabulary). The total is one extra mask mixture, computed
    in the same pass as the labels: no ``[C, H, W]`` volume.
    """
    return _semantic(
        class_logits,
        mask_logits,
        (tuple(image_size), tuple(padded_size), tuple(out_size)),
        postprocess_before_inference,
        None,
        max_elements=max_elements,
        with_scores=True,
        prune=prune,
        with_totals=True,
    )  # type: ignore[return-value]


def _semantic(
    class_logits: Tensor,
    mask_logits: Tensor,
    sizes: _Sizes,
    before: bool,
    reduced: int | None,
    *,
    max_elements: int | None,
    with_scores: bool,
    prune: bool | None,
    with_totals: bool,
    fused: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    if class_logits.dim() != 2 or mask_logits.dim() != 3 or class_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"expected class_logits [Q, C+1] and mask_logits [Q, h, w], got {list(class_logits.shape)} and "
            f"{list(mask_logits.shape)}"
        )
    on_cpu = mask_logits.device.type == "cpu"
    if max_elements is None:
        max_elements = 1 << (22 if on_cpu else 26)
    if fused:  # the kernel scores every class: no pruning
        prune = False
    prune = on_cpu if prune is None else prune
    opts = {"max_elements": max_elements, "with_scores": with_scores, "prune": prune, "fused": fused}
    # float32 even under autocast: the class sums decide the labels and cost little
    with torch.autocast(mask_logits.device.type, enabled=False):
        masks = mask_logits.float()
        probs = class_logits.float().softmax(dim=-1)[:, :-1]  # [Q, C]
        if with_totals:
            opts["total_weights"] = probs.sum(dim=1)  # [Q]: every class's share of each mask
        if reduced is not None:
            return _reduced_labels(probs, masks, sizes, before, reduced, **opts)
        return _exact_labels(probs, masks, sizes, before, **opts)


def _exact_labels(
    probs: Tensor, mask_logits: Tensor, sizes: _Sizes, postprocess_before_inference: bool, **opts: Any
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    dtype, device = mask_logits.dtype, mask_logits.device
    (h0, w0), (hp, wp), (ho, wo) = sizes
    h, w = mask_logits.shape[-2:]
    if postprocess_before_inference:  # resize logits to the output, then sigmoid
        cols = _resize_last(mask_logits, _chain_taps("both", w, wp, w0, wo, dtype, device))  # [Q, h, W]
        return _label_bands(probs, _chain_taps("both", h, hp, h0, ho, dtype, device), cols, True, **opts)
    # official alternative: sigmoid on the padded-size masks (Q maps, no class axis), then scores
    # resized (linear, so the resize moves onto the masks)
    first = F.interpolate(mask_logits[None], size=(hp, wp), mode="bilinear", align_corners=False)[0]
    first = first[:, :h0, :w0].sigmoid()  # [Q, h0, w0]
    cols = _resize_last(first, _chain_taps("second", w, wp, w0, wo, dtype, device))  # [Q, h0, W]
    return _label_bands(probs, _chain_taps("second", h, hp, h0, ho, dtype, device), cols, False, **opts)


def _reduced_labels(
    probs: Tensor, mask_logits: Tensor, sizes: _Sizes, before: bool, k: int, **opts: Any
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    image_size, padded_size, out_size = sizes
    if k < 1:
        raise ValueError(f"reduced must be a positive integer (scores at k x the mask grid), got {k}")
    h, w = mask_logits.shape[-2:]
    fh, fw = image_size[0] / padded_size[0], image_size[1] / padded_size[1]  # image part of the grid
    low = (max(1, min(out_size[0], round(h * fh * k))), max(1, min(out_size[1], round(w * fw * k))))
    q, c = probs.shape
    cand = torch.zeros(c, dtype=torch.bool, device=probs.device)
    (lh, lw), grid = low, mask_logits.shape[-2:]
    dtype, device = probs.dtype, mask_logits.device
    up = _resize_last(mask_logits, _chain_taps("both", grid[1], padded_size[1], image_size[1], lw, dtype, device))
    up = _resize_last(
        up.transpose(1, 2), _chain_taps("both", grid[0], padded_size[0], image_size[0], lh, dtype, device)
    )
    up = up.transpose(1, 2).sigmoid().reshape(q, -1)  # [Q, lh*lw]
    chunk = _band_rows(c, lh * lw, opts["max_elements"])
    for start in range(0, c, chunk):  # top-2 classes of every low-resolution pixel
        s = torch.matmul(probs[:, start : start + chunk].T, up)  # [c', lh*lw]
        top = s.topk(min(2, s.shape[0]), dim=0).indices.flatten().unique()
        cand[start + top] = True
    keep = cand.nonzero().flatten()
    labels, scores, totals = _exact_labels(probs[:, keep], mask_logits, sizes, before, **opts)
    return keep[labels], scores, totals  # the totals' weights cover every class
