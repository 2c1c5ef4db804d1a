"""ONNX export with a frozen vocabulary: a graph that runs in onnxruntime with no san installed.

The class embeddings (templates, background row) are computed once and stored in the graph; the text
tower is not exported. The graph's contract:

- input ``image``: uint8 ``[1, 3, H, W]`` RGB, H and W dynamic;
- inside: the predictor's test-time resize (shortest edge to ``min_size``, long side at most
  ``max_size``; bilinear, antialiased when shrinking), SAN's normalisation and padding, the image
  path, the class logits against the stored classifier, and the official post-processing (masks up
  to the padded input, cropped, resized to ``H x W``, then the class mixture);
- outputs ``labels`` int64 ``[H, W]`` (index into the vocabulary) and ``scores`` float32 ``[H, W]``
  (the winning class's score);
- metadata (``metadata_props``): ``vocabulary`` (JSON list of the class names), ``san_version``,
  ``config`` (the YAML), ``min_size_test``, ``max_size_test``.

The resize in the graph is ONNX's (``Resize`` with antialiasing) where the predictor uses PIL's
bilinear filter on uint8 images: the two differ by rounding and filter details, measured by
``scripts/bench_onnx.py`` and stated in docs/benchmarks.md. On the same resized input the graph equals
PyTorch (tested).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from san.modeling.semantic import sem_seg_postprocess, semantic_inference

logger = logging.getLogger(__name__)

__all__ = ["OnnxSegmenter", "export_onnx"]


class OnnxSegmenter(nn.Module):
    """The exported computation: uint8 image ``[1, 3, H, W]`` -> (labels ``[H, W]``, scores ``[H, W]``).

    Args:
        model: the SAN model (its weights are shared, not copied).
        classifier: ``[C + 1, E]`` from ``model.encode_vocabulary(names)``.
        min_size, max_size: the test-time resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``);
            ``resize=False`` feeds the image as it is (for the exactness check against PyTorch).
    """

    def __init__(self, model: nn.Module, classifier: Tensor, min_size: int, max_size: int, resize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("classifier", classifier.detach().float().clone())
        self.min_size, self.max_size, self.resize = float(min_size), float(max_size), resize

    def _resized(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        scale = self.min_size / torch.sym_min(h, w)
        nh, nw = h * scale, w * scale
        cap = torch.sym_min(1.0, self.max_size / torch.sym_max(nh, nw))
        nh, nw = torch.sym_int(nh * cap + 0.5), torch.sym_int(nw * cap + 0.5)
        return F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        height, width = image.shape[-2], image.shape[-1]
        x = image.float()
        if self.resize:
            x = self._resized(x).round().clamp(0, 255)  # the resized image is a uint8 image again
        images, sizes = self.model.preprocess([{"image": x[0]}])
        out = self.model.encode_images(images)
        class_logits = self.model.classify(out["mask_embeddings"][-1], self.classifier)[0]
        masks = F.interpolate(out["mask_logits"][-1], size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
        if self.model.sem_seg_postprocess_before_inference:
            scores = semantic_inference(class_logits, sem_seg_postprocess(masks, sizes[0], height, width))
        else:
            scores = sem_seg_postprocess(semantic_inference(class_logits, masks), sizes[0], height, width)
        best, labels = scores.max(0)
        return labels, best


def export_onnx(
    model: nn.Module,
    names: Sequence[str],
    path: str | os.PathLike,
    *,
    min_size: int = 640,
    max_size: int = 2560,
    opset: int = 18,
    config_yaml: str | None = None,
    example_size: tuple[int, int] = (480, 640),
    resize: bool = True,
    classifier: Tensor | None = None,
) -> Path:
    """Export ``model`` with the vocabulary ``names`` frozen in to ``path`` (written atomically).

    Returns the path. Needs ``onnx`` and ``onnxscript`` (``pip install onnx onnxscript``); the file runs
    in ``onnxruntime``'s CPU provider. ``resize=False`` leaves the test-time resize out of the graph
    (the caller feeds the resized image): the exactness check against PyTorch uses it. ``classifier``:
    the ``[C + 1, E]`` to freeze in instead of the names' own (a domain adapter's,
    :meth:`~san.inference.adapter.Adapter.classifier`).
    """
    import onnx

    from san import __version__
    from san.files import atomic_path

    from .vocabulary import build_vocabulary

    names = build_vocabulary(list(names)).names  # an empty or duplicate-ridden list fails here
    model = model.eval()
    was = model.clip_rec_head.sos_attention
    model.set_inference_options(sos_attention="manual")  # exports through plain matmuls (same result)
    try:
        if classifier is None:
            with torch.no_grad():
                classifier = model.encode_vocabulary(names)
        elif classifier.shape[0] != len(names) + 1:
            raise ValueError(f"classifier {tuple(classifier.shape)} does not fit {len(names)} names + background")
        wrapper = OnnxSegmenter(model, classifier, min_size, max_size, resize=resize).eval()
        example = torch.randint(0, 256, (1, 3, *example_size), dtype=torch.uint8)
        dims = {2: torch.export.Dim("height", min=16, max=16384), 3: torch.export.Dim("width", min=16, max=16384)}
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes={"image": dims},
                opset_version=opset,
                input_names=["image"],
                output_names=["labels", "scores"],
                verbose=False,
            )
    finally:
        model.set_inference_options(sos_attention=was)
    proto = program.model_proto
    meta = {
        "vocabulary": json.dumps(list(names)),
        "san_version": __version__,
        "config": config_yaml or getattr(model, "config_yaml", None) or "",
        "min_size_test": str(min_size),
        "max_size_test": str(max_size),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp)
    logger.debug("wrote %s (%d classes, opset %d)", path, len(names), opset)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported file, the vocabulary decoded."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
    if "vocabulary" in meta:
        meta["vocabulary"] = json.loads(meta["vocabulary"])
    return meta
