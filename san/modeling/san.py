"""SAN: Side Adapter Network for open-vocabulary semantic segmentation (Xu et al., CVPR 2023).

A frozen CLIP ViT runs at low resolution while a light side network at full resolution fuses its
shallow features and predicts mask proposals and attention biases; the biases steer SOS tokens in
CLIP's deeper layers so that CLIP itself classifies every mask against any list of class names.

Data path::

    image -> preprocess (normalise, pad to 32) -+-> resize x clip_resolution -> ClipFeatureExtractor
                                                 |                                   | token maps
                                                 +-> SideAdapterNetwork (full res) <-+
                                                        | queries + features -> MaskDecoder
                                                        v
                     mask proposals [B, Q, h, w]   attention biases [B, heads, Q, h, w]
                                                        v
            ClipFeatureExtractor tokens -> RecognitionHead (SOS tokens + bias) -> mask embeddings
                                   TextClassifier(vocabulary) -> classifier [C + 1, E]
                     class logits [B, Q, C + 1] and mask logits -> semantic map [C, H, W]

Shapes: B batch, Q queries (100), C classes, E CLIP embedding width, H x W input, h x w = H/16 x
W/16 side grid.

| class                   | attribute              | checkpoint prefix        |
|-------------------------|------------------------|--------------------------|
| ClipFeatureExtractor    | clip_visual_extractor  | clip_visual_extractor.   |
| RecognitionHead         | clip_rec_head          | clip_rec_head.           |
| SideAdapterNetwork      | side_adapter_network   | side_adapter_network.    |
| TextClassifier          | ov_classifier          | ov_classifier.           |
| (criterion, training)   | criterion              | criterion.               |
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import OPENAI_MEAN, OPENAI_STD
from .clip_adapter import ClipFeatureExtractor, RecognitionHead
from .semantic import sem_seg_postprocess, semantic_inference, semantic_labels, semantic_scores
from .side_adapter import SideAdapterNetwork
from .text_classifier import TextClassifier

__all__ = ["SAN", "pad_images"]

_UNSET: Any = object()


def pad_images(
    images: Sequence[Tensor], size_divisibility: int, pad_value: float = 0.0
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Batch ``[3, H_i, W_i]`` images by padding bottom/right to a common multiple of the divisor."""
    sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # ints (symbolic sizes when exporting)
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 1:  # rounded up with non-negative operands only (exporters truncate negative //)
        h = (h + size_divisibility - 1) // size_divisibility * size_divisibility
        w = (w + size_divisibility - 1) // size_divisibility * size_divisibility
    padded = [F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2]), value=pad_value) for im in images]
    return torch.stack(padded), sizes


def _check_image(image: Any, i: int) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(f"input {i}: 'image' must be a torch.Tensor [3, H, W], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"input {i}: 'image' must have shape [3, H, W] (RGB, channels first), got {list(image.shape)}; "
            "convert grayscale/RGBA images to RGB and HWC arrays with permute(2, 0, 1)"
        )
    if image.dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"input {i}: 'image' must be uint8 or floating point (RGB 0..255), got {image.dtype}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"input {i}: 'image' is empty ({list(image.shape)})")
    return image


class SAN(nn.Module):
    """The SAN meta-architecture with detectron2's batched-input contract (no detectron2 needed).

    Sub-module contracts (what SAN calls; a module that honours them can stand in for ours):

    - ``clip_visual_extractor(images [B, 3, H', W'], keep=[layers])`` -> :class:`ClipFeatures`
      (token maps by layer index and the patch grid); ``len(.resblocks)`` is the layer whose tokens
      enter the recognition head.
    - ``side_adapter_network(images [B, 3, H, W], clip, levels)`` -> ``(mask_logits, attn_biases)``,
      per level ``[B, Q, h, w]`` and a list of ``[B, heads, Q, h, w]``; attributes
      ``deep_supervision_idxs``, ``clip_layers_needed``, ``num_queries``, ``set_full_precision``.
    - ``clip_rec_head(clip, layer, attn_biases, normalize=True)`` -> per level mask embeddings
      ``[B, Q, E]``; ``set_attention``.
    - ``ov_classifier(vocabulary)`` -> scaled classifier ``[C + 1, E]`` (background last); it
      validates the vocabulary; ``set_cache_dir``, ``set_batch_size``.
    - ``criterion(outputs, targets)`` -> weighted loss dict (training only).
    """

    def __init__(
        self,
        *,
        clip_visual_extractor: ClipFeatureExtractor,
        clip_rec_head: RecognitionHead,
        side_adapter_network: SideAdapterNetwork,
        ov_classifier: TextClassifier,
        criterion: nn.Module | None = None,
        clip_resolution: float = 0.5,
        asymmetric_input: bool = True,
        size_divisibility: int = 32,
        pixel_mean: Sequence[float] = tuple(255.0 * m for m in OPENAI_MEAN),
        pixel_std: Sequence[float] = tuple(255.0 * v for v in OPENAI_STD),
        sem_seg_postprocess_before_inference: bool = True,
    ) -> None:
        super().__init__()
        if clip_resolution <= 0:
            raise ValueError(f"clip_resolution must be > 0, got {clip_resolution}")
        self.criterion = criterion
        self.side_adapter_network = side_adapter_network
        self.clip_visual_extractor = clip_visual_extractor
        self.clip_rec_head = clip_rec_head
        self.ov_classifier = ov_classifier
        self.clip_resolution = clip_resolution
        self.asymmetric_input = asymmetric_input
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self._image_fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def rec_layer(self) -> int:
        """CLIP layer index whose tokens enter the recognition head (the extractor's depth)."""
        return len(self.clip_visual_extractor.resblocks)

    def image_fingerprint(self) -> str:
        """Hex digest of everything the image path depends on: the weights of the CLIP feature
        extractor, the side adapter and the recognition head, and the preprocessing settings. Two
        models with the same fingerprint encode every image identically (text weights do not count:
        they only meet the image at :meth:`classify`). Computed once; reset when weights load."""
        if self._image_fingerprint is None:
            h = hashlib.sha256()
            h.update(repr((self.clip_resolution, self.asymmetric_input, self.size_divisibility)).encode())
            h.update(repr((self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist())).encode())
            for prefix in ("clip_visual_extractor", "side_adapter_network", "clip_rec_head"):
                for name, t in getattr(self, prefix).state_dict().items():
                    t = t.detach().to("cpu", torch.float32).contiguous()
                    h.update(f"{prefix}.{name}{tuple(t.shape)}".encode())
                    h.update(t.numpy().tobytes())
            self._image_fingerprint = h.hexdigest()[:24]
        return self._image_fingerprint

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:  # torch hook: new weights, new fingerprint
        self._image_fingerprint = None
        super()._load_from_state_dict(*args, **kwargs)

    def init_kwargs(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (its sub-modules shared, not copied)."""
        return {
            "clip_visual_extractor": self.clip_visual_extractor,
            "clip_rec_head": self.clip_rec_head,
            "side_adapter_network": self.side_adapter_network,
            "ov_classifier": self.ov_classifier,
            "criterion": self.criterion,
            "clip_resolution": self.clip_resolution,
            "asymmetric_input": self.asymmetric_input,
            "size_divisibility": self.size_divisibility,
            "pixel_mean": tuple(self.pixel_mean.flatten().tolist()),
            "pixel_std": tuple(self.pixel_std.flatten().tolist()),
            "sem_seg_postprocess_before_inference": self.sem_seg_postprocess_before_inference,
        }

    def set_inference_options(
        self,
        *,
        sos_attention: str | None = None,
        full_precision_masks: bool | None = None,
        text_cache_dir: str | os.PathLike | None = _UNSET,
        text_batch_size: int | None = None,
    ) -> None:
        """Change how inference runs, never what it computes (each option keeps the result).

        Args:
            sos_attention: the recognition head's SOS attention (``sdpa``, ``manual``, ``dense``).
            full_precision_masks: run the side adapter in float32 inside bf16/fp16 autocast.
            text_cache_dir: folder that keeps class-name embeddings on disk (None: memory only).
            text_batch_size: prompts per text-tower pass.
        """
        if sos_attention is not None:
            self.clip_rec_head.set_attention(sos_attention)
        if full_precision_masks is not None:
            self.side_adapter_network.set_full_precision(full_precision_masks)
        if text_cache_dir is not _UNSET:
            self.ov_classifier.set_cache_dir(text_cache_dir)
        if text_batch_size is not None:
            self.ov_classifier.set_batch_size(text_batch_size)

    # -- stages -----------------------------------------------------------------------------------
    def preprocess(self, batched_inputs: Sequence[dict]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise each ``"image"`` and pad the batch: ``[B, 3, H_pad, W_pad]`` and image sizes."""
        images = []
        for i, x in enumerate(batched_inputs):
            if not isinstance(x, dict) or "image" not in x:
                raise TypeError(f"input {i} must be a dict with an 'image' entry, got {type(x).__name__}")
            im = _check_image(x["image"], i).to(self.device, torch.float32)
            images.append((im - self.pixel_mean) / self.pixel_std)
        return pad_images(images, self.size_divisibility)

    def encode_vocabulary(self, vocabulary: Sequence[str]) -> Tensor:
        """Scaled classifier weights ``[C + 1, E]`` for a list of class names (cached per name)."""
        return self.ov_classifier(vocabulary)

    def default_levels(self) -> tuple[int, ...]:
        """Side-adapter blocks decoded by default: all deep-supervision blocks in training, the last in eval."""
        idxs = self.side_adapter_network.deep_supervision_idxs
        return tuple(idxs) if self.training else tuple(idxs[-1:])

    def encode_images(self, images: Tensor, levels: Sequence[int] | None = None) -> dict[str, Any]:
        """The vocabulary-free image path on a normalised, padded batch ``[B, 3, H, W]``.

        Returns per-level lists: ``mask_logits`` ``[B, Q, h, w]``, ``attn_biases`` (per level a list
        of ``[B, heads, Q, h, w]``), ``mask_embeddings`` ``[B, Q, E]`` (normalised); and
        ``clip_features``. ``levels`` default to :meth:`default_levels`.
        """
        levels = self.default_levels() if levels is None else tuple(levels)
        clip_input = images
        if self.asymmetric_input:
            clip_input = F.interpolate(images, scale_factor=self.clip_resolution, mode="bilinear", align_corners=False)
        side = self.side_adapter_network
        clip = self.clip_visual_extractor(clip_input, keep=[*side.clip_layers_needed, self.rec_layer])
        mask_logits, attn_biases = side(images, clip, levels)
        mask_embs = self.clip_rec_head(clip, self.rec_layer, attn_biases, normalize=True)
        return {
            "mask_logits": mask_logits,
            "attn_biases": attn_biases,
            "mask_embeddings": mask_embs,
            "clip_features": clip,
        }

    @staticmethod
    def classify(mask_embeddings: Tensor, classifier: Tensor) -> Tensor:
        """Class logits ``[B, Q, C + 1]`` of mask embeddings ``[B, Q, E]`` against a classifier ``[C + 1, E]``."""
        return torch.einsum("bqe,ce->bqc", mask_embeddings, classifier.to(mask_embeddings.dtype))

    def forward_stages(self, images: Tensor, classifier: Tensor, levels: Sequence[int] | None = None) -> dict[str, Any]:
        """Every stage of one batch: :meth:`encode_images` plus ``class_logits`` per level
        (``[B, Q, C + 1]`` against ``classifier`` from :meth:`encode_vocabulary`)."""
        out = self.encode_images(images, levels)
        out["class_logits"] = [self.classify(emb, classifier) for emb in out["mask_embeddings"]]
        return out

    def _run_batch(
        self, batched_inputs: Sequence[dict], levels: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], Tensor, list[tuple[int, int]]]:
        """The batch runner of :meth:`forward` and :meth:`predict_labels`: stages, padded images, sizes."""
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("SAN expects a non-empty list of input dicts")
        classifier = self.encode_vocabulary(self._batch_vocabulary(batched_inputs))
        images, sizes = self.preprocess(batched_inputs)
        return self.forward_stages(images, classifier, levels), images, sizes

    # -- batched-input contract ---------------------------------------------------------------------
    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """detectron2-style forward.

        Args:
            batched_inputs: list of dicts with ``"image"`` (``[3, H, W]`` RGB 0..255),
                ``"vocabulary"`` (class names, the same for the whole batch), optionally
                ``"height"``/``"width"`` (output size) and, for training, ``"instances"``:
                ``{"labels": long [K], "masks": bool [K, H, W]}``.

        Returns:
            eval: ``[{"sem_seg": [C, height, width]}]``; train: the criterion's weighted losses.
        """
        if self.training:
            if self.criterion is None:
                raise RuntimeError("SAN was built without a criterion: it cannot compute training losses")
            if (
                not isinstance(batched_inputs, (list, tuple))
                or not batched_inputs
                or any(not isinstance(x, dict) or "instances" not in x for x in batched_inputs)
            ):
                raise ValueError(
                    "training inputs need 'instances' targets ({'labels', 'masks'}); call eval() to predict"
                )
        out, images, sizes = self._run_batch(batched_inputs)
        if self.training:
            outputs = {
                "class_logits": out["class_logits"][-1],
                "mask_logits": out["mask_logits"][-1],
                "aux_outputs": [
                    {"class_logits": c, "mask_logits": m}
                    for c, m in zip(out["class_logits"][:-1], out["mask_logits"][:-1])
                ],
            }
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        return self.postprocess(
            out["class_logits"][-1], out["mask_logits"][-1], batched_inputs, sizes, images.shape[-2:]
        )

    def postprocess(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        batched_inputs: Sequence[dict],
        sizes: Sequence[tuple[int, int]],
        padded_size: Sequence[int],
    ) -> list[dict[str, Tensor]]:
        """Semantic maps ``[C, height, width]`` per image from class logits ``[B, Q, C+1]`` and mask logits.

        The official order (``sem_seg_postprocess_before_inference``): masks resized to the output,
        then the class mixture, with the two bilinear resizes done as one exact separable step, a band
        of output rows at a time (:func:`~san.modeling.semantic.semantic_scores`); else the mixture at
        the padded size, then the scores resized.
        """
        results = []
        for cls, mask, x, size in zip(class_logits, mask_logits, batched_inputs, sizes):
            height, width = int(x.get("height", size[0])), int(x.get("width", size[1]))
            if self.sem_seg_postprocess_before_inference:
                r = semantic_scores(cls, mask, size, tuple(padded_size), (height, width))
            else:
                mask = F.interpolate(mask[None], size=tuple(padded_size), mode="bilinear", align_corners=False)[0]
                r = sem_seg_postprocess(semantic_inference(cls, mask), size, height, width)
            results.append({"sem_seg": r})
        return results

    @torch.no_grad()
    def predict_labels(
        self,
        batched_inputs: Sequence[dict],
        *,
        reduced: int | None = None,
        max_elements: int | None = None,
        with_scores: bool = True,
        fused: bool = False,
    ) -> list[dict[str, Tensor]]:
        """Label maps without the ``[C, H, W]`` score volume: ``[{"labels": [h, w] long, "scores": [h, w]}]``.

        ``labels`` index the vocabulary and equal ``forward``'s ``sem_seg.argmax(0)``, ``scores`` its
        max; memory stays flat in the vocabulary size (see :mod:`san.modeling.semantic`).
        ``with_scores=False`` leaves ``scores`` out, which lets the exact class pruning skip the
        regions that only one class can win. ``reduced=k`` opts into the approximate mode (all
        classes scored at k x the mask grid). ``fused=True`` (GPUs, opt-in) runs one Triton kernel from
        the mask resize to the arg-max (:mod:`san.modeling.fused_labels`).
        """
        out, images, sizes = self._run_batch(batched_inputs, self.side_adapter_network.deep_supervision_idxs[-1:])
        results = []
        for cls, mask, x, size in zip(out["class_logits"][-1], out["mask_logits"][-1], batched_inputs, sizes):
            height, width = int(x.get("height", size[0])), int(x.get("width", size[1]))
            labels, scores = semantic_labels(
                cls,
                mask,
                size,
                tuple(images.shape[-2:]),
                (height, width),
                postprocess_before_inference=self.sem_seg_postprocess_before_inference,
                max_elements=max_elements,
                reduced=reduced,
                with_scores=with_scores,
                fused=fused,
            )
            results.append({"labels": labels, "scores": scores} if with_scores else {"labels": labels})
        return results

    @staticmethod
    def _batch_vocabulary(batched_inputs: Sequence[dict]) -> list[str]:
        """The one vocabulary of a batch (validated by the classifier when it is encoded)."""
        vocab = batched_inputs[0].get("vocabulary") if isinstance(batched_inputs[0], dict) else None
        if vocab is None:
            raise ValueError(
                "each input needs a 'vocabulary' (list of class names); for a named dataset use its "
                "class list, e.g. san.data.get_dataset(name).classes"
            )
        for i, x in enumerate(batched_inputs[1:], start=1):
            other = x.get("vocabulary", vocab) if isinstance(x, dict) else vocab
            if other is not vocab and list(other) != list(vocab):
                raise ValueError(f"input {i} has a different vocabulary from input 0; one batch needs one vocabulary")
        return vocab

    def prepare_targets(self, batched_inputs: Sequence[dict], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image ``{"labels": [K], "masks": [K, H_pad, W_pad]}`` targets, padded like the images."""
        h_pad, w_pad = images.shape[-2:]
        targets = []
        for i, x in enumerate(batched_inputs):
            inst = x["instances"]
            if not isinstance(inst, dict) or "labels" not in inst or "masks" not in inst:
                raise TypeError(f"input {i}: 'instances' must be a dict with 'labels' [K] and 'masks' [K, H, W]")
            masks = inst["masks"].to(self.device)
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst["labels"].to(self.device), "masks": padded})
        return targets
