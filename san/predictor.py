"""Image + vocabulary -> label map: the three-line way to use SAN.

```python
predictor = SANPredictor.from_pretrained("san-vit-b-16")            # downloads once
result = predictor.predict("photo.jpg", "cat, grass, sky")
result.labels            # [H, W] int32 indices into result.class_names, at the photo's size
```

Preprocessing follows the official test mapper: the shortest edge is resized to 640 (the longest
capped at 2560; ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) with PIL bilinear resampling on the
uint8 image, and outputs are resized back to the original size. Test-time augmentation
(``TEST.AUG``) averages the per-class scores over several shortest-edge sizes and horizontal flips,
as the official ``SemanticSegmentorWithTTA``.

Memory: label maps come from ``SAN.predict_labels`` (no ``[C, H, W]`` score volume) when the model
has it. Score volumes (``return_scores=True``, TTA) are formed only when ``(Q + C) x H x W`` floats
fit ``max_score_bytes``; above it, TTA scores are averaged at the inference resolution and the
label map is resized to the original size class by class (a running arg-max), and
``return_scores`` is refused with a message. Images above ``max_pixels`` are refused before
decoding. Nothing here can allocate memory proportional to ``C x H x W`` beyond the budget.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from san.images import DEFAULT_MAX_PIXELS, ImageError, to_rgb_array
from san.visualize import pixel_fractions
from san.vocabulary import Vocabulary, build_vocabulary, fit_to_context

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "SANPredictor", "resize_shortest_edge"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def _check_precision(precision: str, device: torch.device) -> None:
    """Refuse a half precision the device's autocast cannot run (a clear error, not a crash later)."""
    if precision == "fp32":
        return
    try:
        with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
            x = torch.ones(1, 1, 4, 4, device=device)
            F.conv2d(x, torch.ones(1, 1, 3, 3, device=device)).sum().item()
            (x.flatten(1) @ x.flatten(1).T).item()
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(
            f"precision {precision!r} is not supported on {device} by this torch build ({e}); "
            f"use {'bf16 or fp32' if precision == 'fp16' else 'fp32'}"
        ) from None


def resize_shortest_edge(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of detectron2's ``ResizeShortestEdge`` (shortest edge ``short``, longest <= ``max_size``)."""
    scale = short / min(height, width)
    h, w = height * scale, width * scale
    if max(h, w) > max_size:
        s = max_size / max(h, w)
        h, w = h * s, w * s
    return max(1, int(h + 0.5)), max(1, int(w + 0.5))


@dataclass
class Prediction:
    """One image's result: ``labels`` ``[H, W]`` int32 indices into ``class_names`` at the original
    image size, and ``scores`` ``[len(class_names), H, W]`` float32 when asked for. With distractors,
    the last class is ``"other"`` (its score is the best distractor's)."""

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    vocabulary: Vocabulary | None = field(default=None, repr=False)

    def pixel_fractions(self) -> dict[str, float]:
        """Fraction of pixels per class present in the label map, largest first."""
        return pixel_fractions(self.labels, self.class_names)


class SANPredictor:
    """Runs a SAN model on images of any size with any vocabulary."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        min_size: int = 640,
        max_size: int = 2560,
        tta: bool = False,
        tta_min_sizes: Sequence[int] = (320, 480, 640, 800, 960, 1120),
        tta_max_size: int = 4480,
        tta_flip: bool = True,
        text_cache_dir: str | os.PathLike | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_score_bytes: int = 1 << 30,
        full_precision_masks: bool | None = None,
    ) -> None:
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        self.device = _check_device(device)
        _check_precision(precision, self.device)
        if precision == "fp16" and self.device.type == "cpu":
            logger.warning("fp16 on CPU is slow and imprecise; bf16 is the CPU half precision")
        self.model = model.to(self.device).eval()
        self.precision = precision
        # bf16/fp16 run CLIP, the recognition head and the text tower in half precision; by default
        # on the CPU the side adapter (mask proposals, which place the boundaries) stays float32: it
        # costs little there, while on a GPU float32 forgoes the tensor cores for ~40% of the work
        if full_precision_masks is None:
            full_precision_masks = self.device.type == "cpu"
        self.full_precision_masks = bool(full_precision_masks)
        self.model.side_adapter_network.full_precision = self.full_precision_masks
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.tta, self.tta_flip = tta, tta_flip
        self.tta_min_sizes, self.tta_max_size = tuple(tta_min_sizes), int(tta_max_size)
        self.max_pixels, self.max_score_bytes = max_pixels, int(max_score_bytes)
        self._fitted: dict[Vocabulary, Vocabulary] = {}
        if text_cache_dir is not None:
            self.model.ov_classifier.cache_dir = os.fspath(text_cache_dir)  # on-disk name embeddings

    @classmethod
    def from_pretrained(
        cls,
        model: str = "san-vit-b-16",
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        opts: Sequence[Any] = (),
        tta: bool | None = None,
        **kwargs: Any,
    ) -> SANPredictor:
        """Build from an official model name, or a config name/file plus ``weights``.

        Args:
            model: ``san-vit-b-16`` / ``san-vit-l-14`` (config and weights), or a config.
            weights: an official name, checkpoint file or URL; ``"none"`` keeps the
                config's CLIP weights and a random side adapter (for tests and demos only).
            opts: config overrides ``[KEY, VALUE, ...]`` as in ``san train``.
            tta: test-time augmentation (default: the config's ``TEST.AUG.ENABLED``).
            kwargs: passed to the constructor (``text_cache_dir``, ``max_pixels``, ...).
        """
        from san.build import build_model
        from san.checkpoint import load_checkpoint
        from san.config import get_cfg, get_config_file
        from san.model_zoo import get_model_info, resolve_weights

        info = get_model_info(os.fspath(model))
        cfg = get_cfg()
        cfg.merge_from_file(get_config_file(info.config if info else os.fspath(model)))
        cfg.merge_from_list(list(opts))
        if weights is None and info is not None:
            weights = info.name
        if weights is None:
            raise ValueError(
                f"config {model!r} needs weights: an official name (san-vit-b-16, san-vit-l-14), a checkpoint "
                "file or URL; weights='none' builds a random side adapter (meaningless predictions)"
            )
        if os.fspath(weights).lower() == "none":
            logger.warning("no SAN checkpoint given: the side adapter is random and the predictions meaningless")
            net = build_model(cfg, load_clip_weights=True)
        else:
            path = resolve_weights(weights)
            net = build_model(cfg, load_clip_weights=False)  # the checkpoint holds every CLIP weight
            load_checkpoint(net, path)
            logger.info("loaded %s", path)
        aug = cfg.TEST.AUG
        return cls(
            net,
            device=device,
            precision=precision,
            min_size=cfg.INPUT.MIN_SIZE_TEST,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            tta=bool(aug.ENABLED) if tta is None else tta,
            tta_min_sizes=tuple(aug.MIN_SIZES),
            tta_max_size=aug.MAX_SIZE,
            tta_flip=aug.FLIP,
            **kwargs,
        )

    # -- vocabulary --------------------------------------------------------------------------------
    def vocabulary(self, vocabulary: str | Sequence[str] | Vocabulary, other: str = "none") -> Vocabulary:
        """Parse a vocabulary and cut names too long for CLIP's context (see :mod:`san.vocabulary`)."""
        voc = vocabulary if isinstance(vocabulary, Vocabulary) else build_vocabulary(vocabulary, other=other)
        if voc in self._fitted:  # cut before: say so again, each caller should hear it
            fitted = self._fitted[voc]
            for name, cut in zip(voc.user, fitted.user):
                if name != cut:
                    logger.warning("class name %r was cut to %r to fit CLIP's context", name[:80], cut)
            return fitted
        clf = self.model.ov_classifier
        tok = clf.tokenizer
        if not hasattr(tok, "encode"):
            return voc
        user = fit_to_context(voc.user, tok.encode, tok.decode, clf.templates, clf.positional_embedding.shape[0])
        fitted = Vocabulary(tuple(user), voc.distractors) if list(user) != list(voc.user) else voc
        self._fitted[voc] = self._fitted[fitted] = fitted
        return fitted

    # -- inference ---------------------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        vocabulary: str | Sequence[str] | Vocabulary,
        *,
        other: str = "none",
        return_scores: bool = False,
    ) -> Prediction:
        """Segment one image (path, PIL image, HxWx3 numpy array or tensor) with a vocabulary."""
        return self.predict_batch([image], vocabulary, other=other, return_scores=return_scores)[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        vocabulary: str | Sequence[str] | Vocabulary,
        *,
        other: str = "none",
        return_scores: bool = False,
        batch_size: int = 1,
    ) -> list[Prediction]:
        """Segment several images with one vocabulary; same-size images share a forward pass
        (never padded together, so each result equals :meth:`predict` on that image).

        All images are decoded first: one that cannot be read raises :class:`ImageError` naming
        its position (``images[i]``) and, for files, its path."""
        voc = self.vocabulary(vocabulary, other)
        arrays = []
        for i, im in enumerate(images):
            try:
                arrays.append(to_rgb_array(im, self.max_pixels))
            except ImageError as e:
                raise ImageError(f"images[{i}]: {e}") from e
        results: list[Prediction | None] = [None] * len(arrays)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape[:2], []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), max(1, batch_size)):
                chunk = idx[start : start + max(1, batch_size)]
                for i, pred in zip(chunk, self._run([arrays[i] for i in chunk], voc, return_scores)):
                    results[i] = pred
        return results  # type: ignore[return-value]

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def _score_bytes(self, n_classes: int, h: int, w: int) -> int:
        return (self.model.side_adapter_network.num_queries + n_classes) * h * w * 4

    def _inputs(
        self, arrays: list[np.ndarray], short: int, max_size: int, flip: bool, out: tuple[int, int], names: list[str]
    ) -> list[dict]:
        h, w = arrays[0].shape[:2]
        nh, nw = resize_shortest_edge(h, w, short, max_size)
        batch = []
        for a in arrays:
            im = Image.fromarray(a).resize((nw, nh), Image.BILINEAR) if (nh, nw) != (h, w) else a
            t = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)  # [3, nh, nw] uint8
            batch.append({"image": t.flip(-1) if flip else t, "height": out[0], "width": out[1], "vocabulary": names})
        return batch

    @torch.no_grad()
    def _run(self, arrays: list[np.ndarray], voc: Vocabulary, return_scores: bool) -> list[Prediction]:
        names = voc.names
        h, w = arrays[0].shape[:2]
        fits = self._score_bytes(len(names), h, w) <= self.max_score_bytes
        if return_scores and not fits:
            raise ValueError(
                f"scores for {len(names)} classes at {w}x{h} need more than max_score_bytes="
                f"{self.max_score_bytes / 2**30:.1f} GiB; ask for labels only, use a smaller image or raise the budget"
            )
        with self._autocast():
            if not self.tta and not return_scores and hasattr(self.model, "predict_labels"):
                outs = self.model.predict_labels(
                    self._inputs(arrays, self.min_size, self.max_size, False, (h, w), names), with_scores=False
                )
                return [self._result(o["labels"], None, voc) for o in outs]
            sizes = self.tta_min_sizes if self.tta else (self.min_size,)
            max_size = self.tta_max_size if self.tta else self.max_size
            flips = (False, True) if self.tta and self.tta_flip else (False,)
            out = (h, w) if fits else resize_shortest_edge(h, w, self.min_size, self.max_size)
            acc: list[torch.Tensor] | None = None
            for short in sizes:
                for flip in flips:
                    res = self.model(self._inputs(arrays, short, max_size, flip, out, names))
                    sem = [r["sem_seg"].float().flip(-1) if flip else r["sem_seg"].float() for r in res]  # [C, *out]
                    acc = sem if acc is None else [a + s for a, s in zip(acc, sem)]
        n = len(sizes) * len(flips)
        preds = []
        for scores in acc:  # type: ignore[union-attr]
            scores /= n
            if fits:
                preds.append(self._result(scores.argmax(0), scores if return_scores else None, voc))
            else:
                preds.append(self._result(self._upsampled_argmax(scores, h, w), None, voc))
        return preds

    def _upsampled_argmax(self, scores: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``interpolate(scores, (h, w)).argmax(0)`` a few classes at a time (bounded memory)."""
        chunk = max(1, self.max_score_bytes // (4 * h * w * 2))
        best = torch.full((h, w), float("-inf"), device=scores.device)
        labels = torch.zeros((h, w), dtype=torch.long, device=scores.device)
        for c0 in range(0, scores.shape[0], chunk):
            up = F.interpolate(scores[None, c0 : c0 + chunk], size=(h, w), mode="bilinear", align_corners=False)[0]
            val, idx = up.max(0)
            better = val > best  # strict: ties keep the lower index, like argmax
            best = torch.where(better, val, best)
            labels = torch.where(better, idx + c0, labels)
        return labels

    @staticmethod
    def _result(labels: torch.Tensor, scores: torch.Tensor | None, voc: Vocabulary) -> Prediction:
        n_user = len(voc.user)
        labels = labels.to(torch.int32).clamp_(max=n_user).cpu().numpy()  # distractors -> "other"
        if scores is not None:
            if voc.distractors:
                scores = torch.cat([scores[:n_user], scores[n_user:].amax(0, keepdim=True)])
            scores = scores.float().cpu().numpy()
        return Prediction(labels=labels, class_names=voc.class_names, scores=scores, vocabulary=voc)
