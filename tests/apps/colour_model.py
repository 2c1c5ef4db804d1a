"""A tiny SAN whose labels genuinely vary over the image: hand-set mask proposals and class logits.

The random tiny model of ``tests/conftest.py`` gives one class to every pixel, so label maps
cannot tell a rotated, darkened or wrongly converted image from the right one. Here
``SAN.encode_images`` and ``SAN.classify`` (the tensor-level stages between the normalised image and
the semantic post-processing) are replaced
by a hand-made rule: each colour channel is standardised over the (padded) picture, and query
``q`` (q = 0, 1, 2) proposes the pixels where channel ``q`` stands out most, voting for class ``q``
(``q mod C`` when the vocabulary is shorter). So class 0 is "redder than the picture's average",
1 "greener", 2 "bluer", and the label map follows the picture. Everything around it (resizing, padding,
post-processing, ``predict_labels``,
TTA, the predictor and the CLI) is the project's real code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import san

SHARPNESS = 8.0


def colour_encode(self: san.SAN, images: Tensor, levels: Any = None) -> dict[str, Any]:
    """Stands in for :meth:`san.SAN.encode_images`: masks at 1/4 resolution from channel dominance."""
    pooled = F.avg_pool2d(images.float(), 4)  # [B, 3, H/4, W/4]; H and W are multiples of 32
    z = (pooled - pooled.mean(dim=(2, 3), keepdim=True)) / (pooled.std(dim=(2, 3), keepdim=True) + 1e-6)
    masks = SHARPNESS * (z - z.mean(dim=1, keepdim=True))
    embeddings = torch.zeros(images.shape[0], 3, 1, device=images.device)  # classify below ignores them
    return {"mask_logits": [masks], "attn_biases": [], "mask_embeddings": [embeddings], "clip_features": None}


def colour_classify(mask_embeddings: Tensor, classifier: Tensor) -> Tensor:
    """Stands in for :meth:`san.SAN.classify`: query q votes for class q (q mod C)."""
    n_classes = classifier.shape[0] - 1  # the last row is the background
    logits = torch.full((mask_embeddings.shape[0], 3, n_classes + 1), -20.0, device=mask_embeddings.device)
    for q in range(3):
        logits[:, q, q % n_classes] = 20.0
    return logits


def colour_predict(self: san.SAN, images: Tensor, classifier: Tensor, levels: Any = None) -> dict[str, Any]:
    """The rule's :meth:`san.SAN.forward_stages` (its two stages together)."""
    out = colour_encode(self, images, levels)
    out["class_logits"] = [colour_classify(e, classifier) for e in out["mask_embeddings"]]
    return out


def use_colour_model(monkeypatch: Any) -> None:
    """Patch every SAN (also those the CLI and the demo build) to the colour rule."""
    monkeypatch.setattr(san.SAN, "encode_images", colour_encode)
    monkeypatch.setattr(san.SAN, "classify", staticmethod(colour_classify))


def dominant_channel(image: np.ndarray) -> np.ndarray:
    """The label the rule gives each pixel of an ``HxWx3`` uint8 image (no padding, full resolution)."""
    x = image.astype(np.float64)
    return ((x - x.mean(axis=(0, 1))) / x.std(axis=(0, 1))).argmax(axis=2)
