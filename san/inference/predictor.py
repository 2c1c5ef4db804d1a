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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from san.build import build_model
from san.config import BUNDLED_PREFIX, bundled_configs
from san.data.images import DEFAULT_MAX_PIXELS, ImageError, to_rgb_array
from san.data.transforms import shortest_edge_size
from san.devices import autocast, check_precision, precision_name, resolve_device
from san.model_source import DEFAULT_CONFIG, ModelSource, config_and_weights, locate_model
from san.model_zoo import get_model_info
from san.modeling.semantic import semantic_confidence, semantic_labels

from .adapter import Adapter, as_adapter
from .encoding import EncodedView, EncodingError, ImageEncoding
from .result import Prediction
from .tta import SemSegTTA
from .vocabulary import Vocabulary, build_vocabulary

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "SANPredictor"]


def _is_bundled(name: str) -> bool:
    base = name.removeprefix(BUNDLED_PREFIX)
    return (base if base.endswith(".yaml") else f"{base}.yaml") in bundled_configs()


def _source(model: str, weights: str | os.PathLike | None) -> ModelSource:
    """The config and weights of ``from_pretrained(model, weights=...)``."""
    if weights is None:
        if get_model_info(model) is None and (model.endswith((".yaml", ".yml")) or _is_bundled(model)):
            raise ValueError(
                f"config {model!r} needs weights: an official name (san-vit-b-16, san-vit-l-14), a checkpoint "
                "file or URL, a model or training folder; weights='none' builds a random side adapter "
                "(meaningless predictions)"
            )
        return locate_model(model)
    weights = os.fspath(weights)
    info = get_model_info(model)
    config = None if info is not None else model
    if weights.lower() == "none":
        return ModelSource(info.config if config is None else config, "none", "none")
    # a bare checkpoint given with an official name takes that model's config
    return locate_model(weights, config, default_config=info.config if info is not None else DEFAULT_CONFIG)


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
        class_names: Sequence[str] = (),
        adapter: Adapter | str | os.PathLike | None = None,
    ) -> None:
        self.precision = precision_name(precision)
        self.device = resolve_device(device)
        check_precision(self.precision, self.device)
        if self.precision == "fp16" and self.device.type == "cpu":
            logger.warning("fp16 on CPU is slow and imprecise; bf16 is the CPU half precision")
        self.model = model.to(self.device).eval()
        # bf16/fp16 run CLIP, the recognition head and the text tower in half precision; by default
        # on the CPU the side adapter (mask proposals, which place the boundaries) stays float32: it
        # costs little there, while on a GPU float32 forgoes the tensor cores for ~40% of the work
        if full_precision_masks is None:
            full_precision_masks = self.device.type == "cpu"
        self.full_precision_masks = bool(full_precision_masks)
        options: dict[str, Any] = {"full_precision_masks": self.full_precision_masks}
        if text_cache_dir is not None:
            options["text_cache_dir"] = os.fspath(text_cache_dir)  # on-disk name embeddings
        self.model.set_inference_options(**options)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.tta, self.tta_flip = tta, tta_flip
        self.tta_min_sizes, self.tta_max_size = tuple(tta_min_sizes), int(tta_max_size)
        self.max_pixels, self.max_score_bytes = max_pixels, int(max_score_bytes)
        # the classes the model was trained on (san train --data records them): the default vocabulary
        self.class_names = [str(c) for c in class_names]
        # a domain adapter (san adapt): its names take their adapted class embeddings
        self.adapter = as_adapter(adapter)
        if self.adapter is not None:
            self.adapter.check_model(self.model)

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
            model: ``san-vit-b-16`` / ``san-vit-l-14`` (config and weights), a folder written by
                ``san.SAN.save_pretrained`` or a Hub repository id in that format (config and
                weights), or a config.
            weights: an official name, checkpoint file or URL; ``"none"`` keeps the
                config's CLIP weights and a random side adapter (for tests and demos only).
            opts: config overrides ``[KEY, VALUE, ...]`` as in ``san train``.
            tta: test-time augmentation (default: the config's ``TEST.AUG.ENABLED``).
            kwargs: passed to the constructor (``text_cache_dir``, ``max_pixels``, ...).
        """
        cfg, weights_file = config_and_weights(_source(os.fspath(model), weights))
        cfg.merge_from_list(list(opts))
        if weights_file.lower() == "none":
            logger.warning("no SAN checkpoint given: the side adapter is random and the predictions meaningless")
        net = build_model(cfg, weights_file)
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
            class_names=list(cfg.SAN_ENGINE.CLASS_NAMES),
            **kwargs,
        )

    # -- vocabulary --------------------------------------------------------------------------------
    def vocabulary(self, vocabulary: str | Sequence[str] | Vocabulary | None, other: str = "none") -> Vocabulary:
        """Parse a vocabulary (see :mod:`san.inference.vocabulary`) and cut names too long for CLIP's
        context (each cut is logged as a warning, on every call). ``None``: the model's training classes
        (:attr:`class_names`), for a model that records them."""
        if vocabulary is None:
            if not self.class_names:
                raise ValueError(
                    "no vocabulary given and this model does not record its training classes (models trained with "
                    "`san train --data` do): give the class names, e.g. 'cat, grass, sky'"
                )
            vocabulary = list(self.class_names)
        voc = vocabulary if isinstance(vocabulary, Vocabulary) else build_vocabulary(vocabulary, other=other)
        user = self.model.ov_classifier.fit_names(voc.user)
        return Vocabulary(tuple(user), voc.distractors) if list(user) != list(voc.user) else voc

    @torch.no_grad()
    def classifier(
        self,
        vocabulary: Vocabulary | Sequence[str],
        adapted: bool | Sequence[str] = True,
        class_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scaled classifier ``[C + 1, E]`` of a vocabulary's names (or of a list of names, as they
        are), in the predictor's precision: with an adapter, the names it knows take their adapted rows
        (``adapted``: True all, False none, or a list of them), the same tensor as the base model's when
        no adapted name is used; ``class_embeddings`` ``[C, E]`` replace the names' text embeddings."""
        names = list(vocabulary.names if isinstance(vocabulary, Vocabulary) else vocabulary)
        clf = self.model.ov_classifier
        with autocast(self.device, self.precision):
            if class_embeddings is not None:
                if class_embeddings.shape != (len(names), clf.text_projection.shape[1]):
                    shape = tuple(class_embeddings.shape)
                    raise ValueError(f"class_embeddings {shape} must be [{len(names)} names, the embedding width]")
                return clf.assemble(class_embeddings.to(clf.text_projection.device, torch.float32))
            if self.adapter is None:
                if adapted not in (True, False):
                    raise ValueError("adapted= names adapted classes, and this predictor has no adapter")
                return self.model.encode_vocabulary(names)
            return self.adapter.classifier(self.model, names, adapted)

    # -- inference ---------------------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        vocabulary: str | Sequence[str] | Vocabulary | None = None,
        *,
        other: str = "none",
        return_scores: bool = False,
        return_confidence: bool = True,
        adapted: bool | Sequence[str] = True,
    ) -> Prediction:
        """Segment one image (path, PIL image, HxWx3 numpy array or tensor) with a vocabulary.

        ``return_scores``: also the per-class scores ``[C, H, W]``. ``return_confidence`` (default):
        every pixel's winning class probability ``[H, W]`` in 0..1 (its share of the pixel's class
        scores) and the raw winning score (``Prediction.score``), computed in the labels' pass with
        no score volume; ``False`` gives the labels alone (slightly faster)."""
        return self.predict_batch(
            [image],
            vocabulary,
            other=other,
            return_scores=return_scores,
            return_confidence=return_confidence,
            adapted=adapted,
        )[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        vocabulary: str | Sequence[str] | Vocabulary | None = None,
        *,
        other: str = "none",
        return_scores: bool = False,
        batch_size: int = 1,
        return_confidence: bool = True,
        adapted: bool | Sequence[str] = True,
    ) -> list[Prediction]:
        """Segment several images with one vocabulary; images whose model inputs have the same size
        (:meth:`input_size_key`) share a forward pass, up to ``batch_size`` at a time, never padded
        together: each result is :meth:`predict`'s on that image (labels; scores to float rounding).

        All images are decoded first: one that cannot be read raises :class:`ImageError` naming
        its position (``images[i]``) and, for files, its path."""
        voc = self.vocabulary(vocabulary, other)
        arrays = self._decode_all(images)
        classifier = self.classifier(voc, adapted)
        results: list[Prediction | None] = [None] * len(arrays)
        for chunk in self._same_size_chunks(arrays, batch_size):
            for i, enc in zip(chunk, self._encode([arrays[i] for i in chunk])):
                results[i] = self._classify(enc, voc, return_scores, return_confidence, classifier)
        return results  # type: ignore[return-value]

    def _decode_all(self, images: Sequence[Any]) -> list[np.ndarray]:
        arrays = []
        for i, im in enumerate(images):
            try:
                arrays.append(to_rgb_array(im, self.max_pixels))
            except ImageError as e:
                raise ImageError(f"images[{i}]: {e}") from e
        return arrays

    def input_size_key(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The model input sizes of an image of ``height x width`` (one per test-time scale): images
        with equal keys can be batched without padding, so batching does not change their results."""
        return self._views().view_sizes(height, width)

    def _same_size_chunks(self, arrays: list[np.ndarray], batch_size: int) -> list[list[int]]:
        """Indices of images with the same model input sizes, at most ``batch_size`` per chunk."""
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(self.input_size_key(*a.shape[:2]), []).append(i)
        step = max(1, batch_size)
        return [idx[k : k + step] for idx in groups.values() for k in range(0, len(idx), step)]

    def _score_bytes(self, n_classes: int, h: int, w: int) -> int:
        return (self.model.side_adapter_network.num_queries + n_classes) * h * w * 4

    def _views(self) -> SemSegTTA:
        """The test-time views: the TTA sizes and flips, or the one plain test-time resize."""
        if self.tta:
            return SemSegTTA(self.model, self.tta_min_sizes, self.tta_max_size, self.tta_flip)
        return SemSegTTA(self.model, (self.min_size,), self.max_size, flip=False)

    # -- encode once, classify with any vocabulary --------------------------------------------------
    def encode(self, image: Any) -> ImageEncoding:
        """The vocabulary-free image path of SAN on one image (path, PIL image, array or tensor):
        mask proposals and mask embeddings of every test-time view; label it with :meth:`classify`."""
        return self.encode_batch([image])[0]

    def encode_batch(self, images: Sequence[Any], *, batch_size: int = 1) -> list[ImageEncoding]:
        """:meth:`encode` for several images; batched as :meth:`predict_batch` (never padded together)."""
        arrays = self._decode_all(images)
        out: list[ImageEncoding | None] = [None] * len(arrays)
        for chunk in self._same_size_chunks(arrays, batch_size):
            for i, enc in zip(chunk, self._encode([arrays[i] for i in chunk])):
                out[i] = enc
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _encode(self, arrays: list[np.ndarray]) -> list[ImageEncoding]:
        """Encodings of images with the same model input sizes (one batch per test-time view)."""
        tta = self._views()
        per_image = [tta.views(x) for x in self._inputs(arrays)]
        fingerprint = self.model.image_fingerprint()
        encodings = [ImageEncoding([], a.shape[:2], fingerprint) for a in arrays]
        levels = self.model.side_adapter_network.deep_supervision_idxs[-1:]
        with autocast(self.device, self.precision):
            for k in range(tta.num_views):
                images, sizes = self.model.preprocess([views[k][0] for views in per_image])
                out = self.model.encode_images(images, levels)
                for i, enc in enumerate(encodings):
                    masks, embeddings = out["mask_logits"][-1][i], out["mask_embeddings"][-1][i]
                    enc.views.append(
                        EncodedView(masks, embeddings, sizes[i], tuple(images.shape[-2:]), per_image[i][k][1])
                    )
        return encodings

    def classify(
        self,
        encoding: ImageEncoding,
        vocabulary: str | Sequence[str] | Vocabulary | None = None,
        *,
        other: str = "none",
        return_scores: bool = False,
        return_confidence: bool = True,
        adapted: bool | Sequence[str] = True,
        class_embeddings: torch.Tensor | None = None,
    ) -> Prediction:
        """Label an :meth:`encode` result with a vocabulary: the :class:`Prediction` that
        :meth:`predict` gives for the image, at the cost of the text classifier and the label map.
        ``class_embeddings`` ``[C, E]``: the classes' embeddings instead of their names' text
        embeddings (one per name of the vocabulary, in its order; the background row stays)."""
        self._check_encoding(encoding)
        voc = self.vocabulary(vocabulary, other)
        classifier = self.classifier(voc, adapted, class_embeddings)
        return self._classify(encoding.to(self.device), voc, return_scores, return_confidence, classifier)

    def _check_encoding(self, encoding: ImageEncoding) -> None:
        """Refuse an encoding of other weights or other test-time views than this predictor's."""
        if encoding.fingerprint != self.model.image_fingerprint():
            raise EncodingError(
                f"this encoding was made by other weights (image fingerprint {encoding.fingerprint}, this model "
                f"{self.model.image_fingerprint()}): encode the image again with this model"
            )
        if len(encoding.views) != self._views().num_views:
            raise EncodingError(
                f"the encoding holds {len(encoding.views)} test-time view(s), this predictor uses "
                f"{self._views().num_views} (TTA {'on' if self.tta else 'off'}): encode again with these settings"
            )

    @torch.no_grad()
    def region_scores(
        self, encoding: ImageEncoding, vocabulary: Any = None, *, other: str = "none", adapted: Any = True
    ) -> np.ndarray:
        """Each mask proposal's class probabilities under the model's classifier, ``[Q, C + 1]`` float32:
        the softmax over the vocabulary and the no-object class (last column), as the label path uses
        them; with distractors (``other``) their probabilities are summed into the ``other`` column, so
        the columns follow :attr:`Prediction.class_names`. One test-time view (no TTA)."""
        self._check_encoding(encoding)
        if len(encoding.views) != 1:
            raise EncodingError("region scores are of one view: encode without TTA")
        voc = self.vocabulary(vocabulary, other)
        model, v = self.model, encoding.to(self.device).views[0]
        with autocast(self.device, self.precision):
            logits = model.classify(v.mask_embeddings[None], self.classifier(voc, adapted))[0]
        probs = logits.float().softmax(-1)
        n_user = len(voc.user)
        if voc.distractors:
            probs = torch.cat([probs[:, :n_user], probs[:, n_user:-1].sum(-1, keepdim=True), probs[:, -1:]], 1)
        return probs.cpu().numpy()

    @torch.no_grad()
    def _classify(
        self,
        encoding: ImageEncoding,
        voc: Vocabulary,
        return_scores: bool,
        return_confidence: bool,
        classifier: torch.Tensor,
    ) -> Prediction:
        """The prediction of an encoding against ``classifier`` ``[C + 1, E]`` (:meth:`classifier`)."""
        names, (h, w) = voc.names, encoding.output_size
        fits = self._score_bytes(len(names), h, w) <= self.max_score_bytes
        if return_scores and not fits:
            raise ValueError(
                f"scores for {len(names)} classes at {w}x{h} need more than max_score_bytes="
                f"{self.max_score_bytes / 2**30:.1f} GiB; ask for labels only, use a smaller image or raise the budget"
            )
        model = self.model
        with autocast(self.device, self.precision):
            logits = [model.classify(v.mask_embeddings[None], classifier)[0] for v in encoding.views]
            if len(encoding.views) == 1 and not return_scores:  # the label path: no [C, H, W] volume
                v = encoding.views[0]
                sizes = (v.image_size, v.padded_size, (h, w))
                before = model.sem_seg_postprocess_before_inference
                if not return_confidence:
                    labels, _ = semantic_labels(logits[0], v.mask_logits, *sizes, postprocess_before_inference=before)
                    return self._result(labels, None, voc)
                labels, best, total = semantic_confidence(
                    logits[0], v.mask_logits, *sizes, postprocess_before_inference=before
                )
                return self._result(labels, None, voc, best, total)
            out = (h, w) if fits else shortest_edge_size(h, w, self.min_size, self.max_size)
            total = None
            for v, cls in zip(encoding.views, logits):  # as SemSegTTA: flips undone, scores averaged
                sem = model.postprocess(
                    cls[None], v.mask_logits[None], [{"height": out[0], "width": out[1]}], [v.image_size], v.padded_size
                )[0]["sem_seg"].float()
                sem = sem.flip(-1) if v.flipped else sem
                total = sem if total is None else total + sem
        scores = total / len(encoding.views)
        want = return_confidence or return_scores
        if fits:
            best, labels = scores.max(0)
            sums = scores.sum(0) if want else None
            return self._result(labels, scores if return_scores else None, voc, best, sums)
        labels, best = self._upsampled_argmax(scores, h, w)
        sums = None  # the upsampled sum of the scores (linear, so the sum of the upsampled scores)
        if want:
            sums = F.interpolate(scores.sum(0)[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        return self._result(labels, None, voc, best, sums)

    @staticmethod
    def _inputs(arrays: list[np.ndarray]) -> list[dict]:
        """Model inputs at the original size; :class:`SemSegTTA` resizes them (one rule for all)."""
        images = [torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1) for a in arrays]
        return [{"image": im, "height": int(im.shape[1]), "width": int(im.shape[2])} for im in images]

    def _upsampled_argmax(self, scores: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``interpolate(scores, (h, w)).max(0)`` (labels, then the max) a few classes at a time (bounded memory)."""
        chunk = max(1, self.max_score_bytes // (4 * h * w * 2))
        best = torch.full((h, w), float("-inf"), device=scores.device)
        labels = torch.zeros((h, w), dtype=torch.long, device=scores.device)
        for c0 in range(0, scores.shape[0], chunk):
            up = F.interpolate(scores[None, c0 : c0 + chunk], size=(h, w), mode="bilinear", align_corners=False)[0]
            val, idx = up.max(0)
            better = val > best  # strict: ties keep the lower index, like argmax
            best = torch.where(better, val, best)
            labels = torch.where(better, idx + c0, labels)
        return labels, best

    @staticmethod
    def _result(
        labels: torch.Tensor,
        scores: torch.Tensor | None,
        voc: Vocabulary,
        best: torch.Tensor | None = None,
        total: torch.Tensor | None = None,
    ) -> Prediction:
        """The :class:`Prediction`; with ``total`` (the sum of all class scores per pixel, distractors
        included) it holds the winning score ``best`` and its share ``best / total`` as confidence."""
        n_user = len(voc.user)
        labels = labels.to(torch.int32).clamp_(max=n_user).cpu().numpy()  # distractors -> "other"
        if scores is not None:
            if voc.distractors:
                scores = torch.cat([scores[:n_user], scores[n_user:].amax(0, keepdim=True)])
            scores = scores.float().cpu().numpy()
        raw = confidence = None
        if total is not None and best is not None:
            best = best.float()
            raw = best.cpu().numpy()
            # the scores are >= 0, so best <= total; clamped against the rounding of the two sums
            confidence = (best / total.float().clamp_min(torch.finfo(torch.float32).tiny)).clamp_(0, 1).cpu().numpy()
        return Prediction(
            labels=labels, class_names=voc.class_names, scores=scores, vocabulary=voc, confidence=confidence, score=raw
        )
