"""Few-shot domain adaptation of SAN's classifier (``san adapt``): a few labelled images per class give
an :class:`~san.inference.adapter.Adapter`; the base model stays frozen and CLIP never runs again.

Each shot is encoded once (:meth:`SANPredictor.encode`: mask proposals and mask embeddings). A
proposal's *mass* on a class is the sum over the class's pixels of its mask probability (the sigmoid of
its logits at the image's size). Two modes:

- ``prototype`` (training-free, one pass): a class's visual prototype is the mass-weighted mean of the
  embeddings of the proposals whose mass is mostly on it; its adapted row is the normalised mix
  ``(1 - alpha) * text + alpha * prototype``, so its logits are the text logits fused with the
  prototype logits.
- ``tuned``: those rows (or the text rows, without prototypes) plus a learned correction per class,
  regularised towards zero (``weight * |delta|^2``), trained for ``steps`` Adam steps on the cached
  encodings. ``objective``: ``labels`` (default) is the label map's own likelihood, the per-pixel
  cross-entropy of SAN's semantic inference (class probabilities mixed by the fixed masks);
  ``matched`` is SAN's training objective, the official Hungarian matching (class, BCE and dice costs;
  the mask costs fixed, as the masks are) and the cross-entropy with the no-object weight; ``both``
  sums them. On the synthetic domain of the tests the matched objective alone closes less of the
  zero-shot gap than the prototypes it starts from (most proposals are pushed to no-object, which the
  label map ignores), the label objective about as much (docs/adapt.md).

:func:`evaluate` measures, on held-out labelled images, zero-shot and adapted mIoU and the cap of any
classifier of the same proposals: each proposal given the class it has most mass on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from san.data.own import FormatError, OwnDataset
from san.inference.adapter import Adapter
from san.modeling.matcher import batch_dice_cost, batch_sigmoid_ce_cost
from san.modeling.semantic import semantic_labels

from .evaluator import metrics_from_confusion

logger = logging.getLogger(__name__)

__all__ = ["MODES", "Shot", "adapt_encodings", "encode_shots", "evaluate", "sample_shots"]

MODES = ("prototype", "tuned")
OBJECTIVES = ("labels", "matched", "both")
# the official loss weights (MODEL.SAN.CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT)
CLASS_COST, MASK_COST, DICE_COST, NO_OBJECT = 2.0, 5.0, 5.0, 0.1
_POINTS = 12544  # pixels per image for the mask costs (the official matcher's 112 x 112 points)


@dataclass
class Shot:
    """One labelled image, encoded: its key, the encoding and the ``[H, W]`` label map (class ids,
    ``ignore`` elsewhere)."""

    key: str
    encoding: Any
    labels: np.ndarray


def sample_shots(ds: OwnDataset, labels: dict[str, np.ndarray], shots: int, seed: int = 0) -> list[str]:
    """``shots`` images per class containing it, drawn with ``seed`` (their union, in draw order); a
    class in fewer images, or in none, is a :class:`FormatError` that says how many it has."""
    if shots < 1:
        raise ValueError(f"--shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    keys = sorted(labels)
    present = {k: set(np.unique(labels[k]).tolist()) - {ds.ignore_label} for k in keys}
    chosen: list[str] = []
    for c, name in enumerate(ds.classes):
        having = [k for k in keys if c in present[k]]
        if not having:
            raise FormatError(
                f"class {name!r} has no pixels in any image of {ds.path}: label it in some images, or remove it"
            )
        if len(having) < shots:
            raise FormatError(
                f"class {name!r} is in {len(having)} labelled image(s) of {ds.path}, fewer than --shots {shots}: "
                f"lower --shots to {len(having)}, or label more images"
            )
        chosen += [k for k in rng.sample(having, shots) if k not in chosen]
    return chosen


def encode_shots(predictor: Any, ds: OwnDataset, keys: Sequence[str], labels: dict[str, np.ndarray]) -> list[Shot]:
    """Encode the images of ``keys`` once each (one view: adapting never runs CLIP again)."""
    from tqdm import tqdm

    if predictor.tta:
        raise ValueError("adapt without TTA: an adapter learns from one view per image")
    samples = {s.key: s for s in ds.samples}
    out = []
    for key in tqdm(keys, desc="san adapt: encoding", unit="img", disable=len(keys) < 4):
        image = samples[key].read_image()
        if image.shape[:2] != labels[key].shape:
            raise FormatError(f"{key}: image {image.shape[:2]} and label {labels[key].shape} differ in size")
        out.append(Shot(key, predictor.encode(image).to("cpu"), labels[key]))
    return out


@dataclass
class _Terms:
    """What adapting needs of one shot, from one resize of its masks to the image: each proposal's mass on
    each class ``[Q, K]``, the matcher's fixed mask costs ``[Q, classes present]`` and the classes present
    (tuned, matched objective), and sampled pixels' mask probabilities ``[Q, P]`` and labels ``[P]`` (tuned,
    label objective)."""

    mass: Tensor
    present: Tensor
    costs: Tensor | None = None
    pixel_masks: Tensor | None = None
    pixel_labels: Tensor | None = None


def _terms(shot: Shot, k: int, *, costs: bool = False, pixels: bool = False, most: int = 4096) -> _Terms:
    logits = shot.encoding.image_masks().flatten(1)  # [Q, H*W], the one full-size resize of this shot
    flat = torch.from_numpy(shot.labels.reshape(-1).astype(np.int64))
    probs = logits.sigmoid()
    valid = (flat >= 0) & (flat < k)
    terms = _Terms(probs[:, valid] @ F.one_hot(flat[valid], k).float(), flat[valid].unique())
    if costs:  # BCE and dice on up to 12544 evenly spaced pixels
        step = max(1, flat.numel() // _POINTS)
        sampled, targets = logits[:, ::step], (flat[::step][None] == terms.present[:, None]).float()  # [K', P]
        bce, dice = batch_sigmoid_ce_cost(sampled, targets), batch_dice_cost(sampled, targets)
        terms.costs = MASK_COST * bce + DICE_COST * dice
    if pixels:
        keep = torch.nonzero(valid)[:, 0]
        keep = keep[:: max(1, keep.numel() // most)]
        terms.pixel_masks, terms.pixel_labels = probs[:, keep], flat[keep]
    return terms


def _prototypes(shots: Sequence[Shot], terms: Sequence[_Terms], num_classes: int) -> Tensor:
    """``[K, E]`` normalised visual prototypes from the shots' proposals (see the module docstring)."""
    dim = shots[0].encoding.views[0].mask_embeddings.shape[-1]
    total = torch.zeros(num_classes, dim)
    best = torch.full((num_classes,), -1.0)
    fallback = torch.zeros(num_classes, dim)
    for shot, term in zip(shots, terms):
        mass = term.mass
        emb = shot.encoding.views[0].mask_embeddings.float()
        weight, owner = mass.max(1)
        total.index_add_(0, owner, weight[:, None] * emb)
        top, q = mass.max(0)  # a class no proposal is mostly on takes the proposal with most mass on it
        better = top > best
        best = torch.where(better, top, best)
        fallback[better] = emb[q[better]]
    empty = total.norm(dim=1) == 0
    total[empty] = fallback[empty]
    return F.normalize(total, dim=-1)


def adapt_encodings(
    predictor: Any,
    shots: Sequence[Shot],
    classes: Sequence[str],
    *,
    mode: str = "prototype",
    prototypes: bool = True,
    background: bool = False,
    alpha: float = 0.8,
    steps: int = 300,
    lr: float = 0.01,
    weight: float = 30.0,
    objective: str = "labels",
    meta: dict[str, Any] | None = None,
) -> Adapter:
    """An :class:`Adapter` of ``classes`` (the label ids' names) from encoded shots (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if mode == "prototype" and not prototypes:
        raise ValueError("the prototype mode needs prototypes")
    t0 = time.perf_counter()
    model = predictor.model
    clf = model.ov_classifier
    names = predictor.vocabulary(list(classes)).names
    tuned = mode == "tuned"
    need = {"costs": tuned and objective != "labels", "pixels": tuned and objective != "matched"}
    terms = [_terms(shot, len(names), **need) for shot in shots]
    with torch.no_grad():
        rows = clf.embed_names(names).float().cpu()  # [K, E], normalised text embeddings
        if prototypes:
            rows = F.normalize((1 - alpha) * rows + alpha * _prototypes(shots, terms, len(names)), dim=-1)
    bg = None
    losses: list[float] = []
    if tuned:
        rows, bg, losses = _tune(model, shots, terms, rows, background, steps, lr, weight)
    info = {**(meta or {}), "alpha": alpha if prototypes else None, "prototypes": prototypes, "steps": steps}
    if mode == "tuned":
        info.update(lr=lr, weight=weight, objective=objective, first_loss=losses[0], last_loss=losses[-1])
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return Adapter(
        names=list(names),
        rows=rows,
        fingerprint=model.image_fingerprint(),
        text_key=clf.cache_key(),
        mode=mode,
        background=bg,
        meta=info,
    )


def _tune(
    model: Any,
    shots: Sequence[Shot],
    terms: Sequence[_Terms],
    rows: Tensor,
    background: bool,
    steps: int,
    lr: float,
    weight: float,
) -> tuple[Tensor, Tensor | None, list[float]]:
    from scipy.optimize import linear_sum_assignment

    clf = model.ov_classifier
    k = rows.shape[0]
    emb = torch.stack([s.encoding.views[0].mask_embeddings.float() for s in shots])  # [S, Q, E]
    matched, labelled = terms[0].costs is not None, terms[0].pixel_masks is not None  # the objective's terms
    pixel_labels = torch.cat([t.pixel_labels for t in terms]) if labelled else None
    delta = torch.zeros_like(rows, requires_grad=True)
    bg0 = clf.bg_embed.detach().float().cpu().reshape(-1)
    bg_delta = torch.zeros_like(bg0, requires_grad=background)
    opt = torch.optim.Adam([delta, bg_delta] if background else [delta], lr=lr)
    class_weight = torch.ones(k + 1)
    class_weight[-1] = NO_OBJECT
    scale = clf.logit_scale.detach().float().cpu().exp()
    losses = []
    for _ in range(steps):
        table = F.normalize(torch.cat([rows + delta, (bg0 + bg_delta)[None]]), dim=-1) * scale
        logits = torch.einsum("sqe,ce->sqc", emb, table)  # [S, Q, K + 1]
        loss = weight * (delta.pow(2).sum(-1).mean() + bg_delta.pow(2).sum())
        if matched:  # the official objective: Hungarian matching, then cross-entropy with no-object
            target = torch.full(logits.shape[:2], k, dtype=torch.long)
            with torch.no_grad():
                probs = logits.softmax(-1)
                for i, term in enumerate(terms):  # the mask costs are fixed: the masks do not learn
                    cls = term.present
                    q, t = linear_sum_assignment((term.costs - CLASS_COST * probs[i][:, cls]).numpy())
                    target[i, torch.from_numpy(q)] = cls[torch.from_numpy(t)]
            loss = loss + F.cross_entropy(logits.reshape(-1, k + 1), target.reshape(-1), weight=class_weight)
        if labelled:  # the label map's own likelihood, through SAN's semantic inference
            probs = logits.softmax(-1)[..., :-1]
            sem = torch.cat([torch.einsum("qc,qp->pc", probs[i], t.pixel_masks) for i, t in enumerate(terms)])
            loss = loss + F.nll_loss(torch.log(sem / sem.sum(-1, keepdim=True) + 1e-8), pixel_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return (rows + delta).detach(), (bg0 + bg_delta).detach() if background else None, losses


def _confusion(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    """``[pred, gt]`` counts with the ignore row/column last (the evaluator's layout)."""
    gt = np.where((gt >= 0) & (gt < n), gt, n).astype(np.int64)
    pred = np.clip(pred.astype(np.int64), 0, n)
    return np.bincount(pred.reshape(-1) * (n + 1) + gt.reshape(-1), minlength=(n + 1) ** 2).reshape(n + 1, n + 1)


def cap_labels(shot: Shot, num_classes: int, postprocess_before_inference: bool = True) -> np.ndarray:
    """The labels of a perfect classifier of the same proposals: each proposal certain of the class
    it has most mass on, through SAN's own semantic inference."""
    owner = _terms(shot, num_classes).mass.argmax(1)
    logits = F.one_hot(owner, num_classes + 1).float() * 50.0  # softmax ~ one-hot, no-object ~ 0
    v = shot.encoding.views[0]
    labels, _ = semantic_labels(
        logits,
        v.mask_logits.float(),
        v.image_size,
        v.padded_size,
        shot.labels.shape,
        postprocess_before_inference=postprocess_before_inference,
        with_scores=False,
    )
    return labels.cpu().numpy()


def evaluate(predictor: Any, held_out: Sequence[Shot], classes: Sequence[str]) -> dict[str, Any]:
    """Zero-shot, adapted and cap mIoU (and per-class IoU) on held-out encoded images, and the share
    of the zero-shot-to-cap gap the adapter closes."""
    n = len(classes)
    conf = {k: np.zeros((n + 1, n + 1), np.int64) for k in ("zero_shot", "adapted", "cap")}
    before = predictor.model.sem_seg_postprocess_before_inference
    for shot in held_out:
        conf["zero_shot"] += _confusion(
            predictor.classify(shot.encoding, list(classes), adapted=False).labels, shot.labels, n
        )
        if predictor.adapter is not None:
            conf["adapted"] += _confusion(predictor.classify(shot.encoding, list(classes)).labels, shot.labels, n)
        conf["cap"] += _confusion(cap_labels(shot, n, before), shot.labels, n)
    out: dict[str, Any] = {"images": len(held_out)}
    for name, c in conf.items():
        if name == "adapted" and predictor.adapter is None:
            continue
        metrics = metrics_from_confusion(c, list(classes))
        iou = {k: float(metrics[f"IoU-{k}"]) for k in classes}
        # a class absent from the held-out images has no IoU: None (JSON null), never NaN
        out[name] = {"mIoU": float(metrics["mIoU"]), "IoU": {k: v if np.isfinite(v) else None for k, v in iou.items()}}
    if "adapted" in out:
        gap = out["cap"]["mIoU"] - out["zero_shot"]["mIoU"]
        out["gap_closed"] = (out["adapted"]["mIoU"] - out["zero_shot"]["mIoU"]) / gap if gap > 0 else None
    return out
