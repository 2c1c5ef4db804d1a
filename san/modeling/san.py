"""SAN: Side Adapter Network for open-vocabulary semantic segmentation (Xu et al., CVPR 2023).

A frozen CLIP ViT runs at low resolution while a light side network at full resolution fuses its
shallow features and predicts mask proposals and attention biases; the biases steer SOS tokens in
CLIP's deeper layers so that CLIP itself classifies every mask against any list of class names.

Data path::

    image -> preprocess (normalise, pad to 32) -+-> resize x CLIP_RESOLUTION -> ClipFeatureExtractor
                                                 |                                   | token maps
                                                 +-> SideAdapterNetwork (full res) <-+
                                                        | queries + features -> MaskDecoder
                                                        v
                     mask proposals [B, Q, h, w]   attention biases [B, heads, Q, h, w]
                                                        v
            ClipFeatureExtractor tokens -> RecognitionHead (SOS tokens + bias) -> mask embeddings
                                   TextClassifier(vocabulary) -> classifier [C + 1, E]
                     class logits [B, Q, C + 1] and proposals -> semantic map [C, H, W]

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

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_adapter import ClipFeatureExtractor, RecognitionHead
from .semantic import semantic_labels
from .side_adapter import SideAdapterNetwork
from .text_classifier import TextClassifier, validate_vocabulary

__all__ = ["SAN", "pad_images", "sem_seg_postprocess", "semantic_inference"]


def pad_images(images: Sequence[Tensor], size_divisibility: int, pad_value: float = 0.0) -> tuple[Tensor, list[tuple[int, int]]]:
    """Batch ``[3, H_i, W_i]`` images by padding bottom/right to a common multiple of the divisor."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    batch = images[0].new_full((len(images), images[0].shape[0], h, w), pad_value)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def sem_seg_postprocess(result: Tensor, image_size: tuple[int, int], height: int, width: int) -> Tensor:
    """Crop ``[N, H_pad, W_pad]`` maps to the image and resize them bilinearly to ``height x width``."""
    result = result[None, :, : image_size[0], : image_size[1]]
    return F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """Per-class scores ``[C, H, W]`` = sum_q softmax(cls)[q, :C] * sigmoid(mask)[q]."""
    probs = mask_cls.softmax(dim=-1)[..., :-1]  # drop the background column
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


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
    """The SAN meta-architecture with detectron2's batched-input contract (no detectron2 needed)."""

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
        pixel_mean: Sequence[float] = (122.7709383, 116.7460125, 104.09373615),
        pixel_std: Sequence[float] = (68.5005327, 66.6321579, 70.32316305),
        sem_seg_postprocess_before_inference: bool = True,
    ) -> None:
        super().__init__()
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

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def rec_layer(self) -> int:
        """CLIP layer index whose tokens enter the recognition head (FEATURE_LAST_LAYER_IDX)."""
        return len(self.clip_visual_extractor.resblocks)

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

    def predict(self, images: Tensor, classifier: Tensor, levels: Sequence[int] | None = None) -> dict[str, Any]:
        """Tensor-level forward on a normalised, padded batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images, H and W multiples of 32.
            classifier: ``[C + 1, E]`` output of :meth:`encode_vocabulary`.
            levels: side-adapter blocks to decode (default: all deep-supervision blocks in
                training, only the last one in eval).

        Returns:
            dict of per-level lists: ``mask_preds`` ``[B, Q, h, w]``, ``attn_biases`` (per level a
            list of ``[B, heads, Q, h, w]``), ``mask_embeddings`` ``[B, Q, E]``, ``mask_logits``
            ``[B, Q, C + 1]``; and ``clip_features``.
        """
        side = self.side_adapter_network
        if levels is None:
            levels = side.deep_supervision_idxs if self.training else side.deep_supervision_idxs[-1:]
        clip_input = images
        if self.asymmetric_input:
            clip_input = F.interpolate(images, scale_factor=self.clip_resolution, mode="bilinear", align_corners=False)
        keep = [*side.clip_layers_needed, self.rec_layer]
        clip = self.clip_visual_extractor(clip_input, keep=keep)
        mask_preds, attn_biases = side(images, clip, levels)
        mask_embs = self.clip_rec_head(clip, self.rec_layer, attn_biases, normalize=True)
        logits = [torch.einsum("bqe,ce->bqc", emb, classifier.to(emb.dtype)) for emb in mask_embs]
        return {
            "mask_preds": mask_preds,
            "attn_biases": attn_biases,
            "mask_embeddings": mask_embs,
            "mask_logits": logits,
            "clip_features": clip,
        }

    # -- batched-input contract ---------------------------------------------------------------------
    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """detectron2-style forward.

        Args:
            batched_inputs: list of dicts with ``"image"`` (``[3, H, W]`` RGB 0..255),
                ``"vocabulary"`` (class names, the same for the whole batch), optionally
                ``"height"``/``"width"`` (output size) and, for training, ``"instances"`` with
                ``gt_classes``/``gt_masks`` (or a ``{"labels", "masks"}`` dict).

        Returns:
            eval: ``[{"sem_seg": [C, height, width]}]``; train: the weighted loss dict when a
            criterion is attached and targets are given, else the raw per-level predictions.
        """
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("SAN expects a non-empty list of input dicts")
        vocabulary = self._batch_vocabulary(batched_inputs)
        classifier = self.encode_vocabulary(vocabulary)
        images, sizes = self.preprocess(batched_inputs)
        out = self.predict(images, classifier)
        if self.training:
            outputs = {
                "pred_logits": out["mask_logits"][-1],
                "pred_masks": out["mask_preds"][-1],
                "aux_outputs": [
                    {"pred_logits": lg, "pred_masks": m} for lg, m in zip(out["mask_logits"][:-1], out["mask_preds"][:-1])
                ],
            }
            targets = self.prepare_targets(batched_inputs, images)
            if self.criterion is None or targets is None:
                return outputs
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        return self.postprocess(out["mask_logits"][-1], out["mask_preds"][-1], batched_inputs, sizes, images.shape[-2:])

    def postprocess(
        self,
        mask_logits: Tensor,
        mask_preds: Tensor,
        batched_inputs: Sequence[dict],
        sizes: Sequence[tuple[int, int]],
        padded_size: Sequence[int],
    ) -> list[dict[str, Tensor]]:
        """Semantic maps ``[C, height, width]`` per image from logits ``[B, Q, C+1]`` and masks."""
        masks = F.interpolate(mask_preds, size=tuple(padded_size), mode="bilinear", align_corners=False)
        results = []
        for cls, mask, x, size in zip(mask_logits, masks, batched_inputs, sizes):
            height, width = int(x.get("height", size[0])), int(x.get("width", size[1]))
            if self.sem_seg_postprocess_before_inference:
                mask = sem_seg_postprocess(mask, size, height, width)
                r = semantic_inference(cls.to(mask.dtype), mask)
            else:
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
    ) -> list[dict[str, Tensor]]:
        """Label maps without the ``[C, H, W]`` score volume: ``[{"labels": [h, w] long, "scores": [h, w]}]``.

        ``labels`` index the vocabulary and equal ``forward``'s ``sem_seg.argmax(0)``, ``scores`` its
        max; memory stays flat in the vocabulary size (see :mod:`san.modeling.semantic`).
        ``with_scores=False`` leaves ``scores`` out, which lets the exact class pruning skip the
        regions that only one class can win. ``reduced=k`` opts into the approximate mode (all
        classes scored at k x the mask grid).
        """
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("SAN expects a non-empty list of input dicts")
        classifier = self.encode_vocabulary(self._batch_vocabulary(batched_inputs))
        images, sizes = self.preprocess(batched_inputs)
        out = self.predict(images, classifier, levels=self.side_adapter_network.deep_supervision_idxs[-1:])
        results = []
        for cls, mask, x, size in zip(out["mask_logits"][-1], out["mask_preds"][-1], batched_inputs, sizes):
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
            )
            results.append({"labels": labels, "scores": scores} if with_scores else {"labels": labels})
        return results

    @staticmethod
    def _batch_vocabulary(batched_inputs: Sequence[dict]) -> list[str]:
        vocab = batched_inputs[0].get("vocabulary") if isinstance(batched_inputs[0], dict) else None
        if vocab is None:
            raise ValueError(
                "each input needs a 'vocabulary' (list of class names); for a named dataset use its "
                "class list, e.g. san.data.get_dataset(name).classes"
            )
        vocab = validate_vocabulary(vocab)
        for i, x in enumerate(batched_inputs[1:], start=1):
            if validate_vocabulary(x.get("vocabulary", vocab)) != vocab:
                raise ValueError(f"input {i} has a different vocabulary from input 0; one batch needs one vocabulary")
        return vocab

    def prepare_targets(self, batched_inputs: Sequence[dict], images: Tensor) -> list[dict[str, Tensor]] | None:
        """Per-image ``{"labels": [K], "masks": [K, H_pad, W_pad]}`` targets, padded like the images."""
        if "instances" not in batched_inputs[0]:
            return None
        h_pad, w_pad = images.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"]
            labels = inst["labels"] if isinstance(inst, dict) else inst.gt_classes
            masks = inst["masks"] if isinstance(inst, dict) else inst.gt_masks
            masks = getattr(masks, "tensor", masks).to(self.device)
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": labels.to(self.device), "masks": padded})
        return targets
