"""The HTTP protocol of ``san serve``: what a request holds, how it is checked, what the answer is.

A request is a multipart form (``image`` a file upload) or JSON (``image`` base64 bytes); no URLs, the
server fetches nothing. Fields: ``vocabulary`` (names separated by commas, or a JSON list; default: the
model's training classes), ``other`` (``none``, ``coco-all``, ``coco-stuff``), ``label_png``, ``masks``
and ``confidence`` (booleans; defaults false, true, true).

The answer is JSON: ``class_names`` (the vocabulary, ``other`` last with distractors), ``size``
(``[height, width]``), and per class present ``segments``: ``id``, ``class``, ``pixel_share``,
``confidence`` (mean winning probability over the region), ``score`` (mean raw score) and ``rle``
(COCO RLE of its mask); ``label_png`` (base64 PNG of the class ids) when asked.

Every refusal is a :class:`RequestError` with the HTTP status and one line saying what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from san.data.images import ImageError, read_image_bytes
from san.data.rle import rle_decode, rle_encode
from san.inference.vocabulary import OTHER, Vocabulary, build_vocabulary

__all__ = ["ParsedRequest", "RequestError", "decode_prediction", "encode_prediction", "parse_request"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_OTHER = ("none", "coco-all", "coco-stuff")


class RequestError(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ParsedRequest:
    """A checked request: the decoded image, its vocabulary and the answer's options."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    vocabulary: Vocabulary
    label_png: bool = False
    masks: bool = True
    confidence: bool = True

    @property
    def group(self) -> tuple:
        """Requests with the same key share a forward pass (same vocabulary and options)."""
        return (self.vocabulary.user, self.vocabulary.distractors, self.confidence)


def _flag(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RequestError(400, f"'{name}' must be true or false, got {value!r}")


def _image_bytes(fields: dict[str, Any]) -> tuple[bytes, str]:
    if "image" not in fields or fields["image"] is None:
        raise RequestError(400, "missing field 'image': send the image as a multipart file or as base64 in JSON")
    value = fields["image"]
    if hasattr(value, "file"):  # a multipart upload
        return value.file.read(), str(getattr(value, "filename", None) or "image")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "image"
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        if text.startswith(("http://", "https://")):
            raise RequestError(400, "'image' is a URL; the server fetches nothing: send the image bytes")
        try:
            return base64.b64decode(text, validate=True), "image"
        except (binascii.Error, ValueError):
            raise RequestError(400, "'image' is not valid base64 (send the encoded file's bytes, base64)") from None
    raise RequestError(400, f"'image' must be a file upload or base64 text, got {type(value).__name__}")


def parse_request(
    fields: dict[str, Any], *, default_classes: list[str], max_pixels: int | None, max_classes: int
) -> ParsedRequest:
    """Check a request's fields (a form or a JSON object) and decode its image; :class:`RequestError` when
    it cannot be answered. ``default_classes``: the vocabulary of requests without one (may be empty)."""
    if not isinstance(fields, dict):
        raise RequestError(400, "the request body must be a JSON object or a multipart form")
    other = str(fields.get("other", "none"))
    if other not in _OTHER:
        raise RequestError(400, f"'other' must be one of {', '.join(_OTHER)}, got {other!r}")
    vocabulary = fields.get("vocabulary")
    if vocabulary is None or (isinstance(vocabulary, str) and not vocabulary.strip() and default_classes):
        if not default_classes:
            raise RequestError(
                400, "missing field 'vocabulary' (class names separated by commas); this model has none of its own"
            )
        vocabulary = list(default_classes)
    try:
        voc = build_vocabulary(vocabulary, other=other)
    except (ValueError, TypeError) as e:
        raise RequestError(400, f"vocabulary: {e}") from None
    if len(voc.user) > max_classes:
        raise RequestError(400, f"the vocabulary has {len(voc.user)} names, above the limit of {max_classes}")
    data, name = _image_bytes(fields)
    try:
        image = read_image_bytes(data, name, max_pixels)
    except ImageError as e:
        status = 413 if "above the limit" in str(e) else 400
        raise RequestError(status, str(e)) from None
    return ParsedRequest(
        image,
        voc,
        label_png=_flag(fields, "label_png", False),
        masks=_flag(fields, "masks", True),
        confidence=_flag(fields, "confidence", True),
    )


def encode_prediction(pred: Any, request: ParsedRequest) -> dict[str, Any]:
    """The JSON answer (module docstring) of a :class:`~san.inference.result.Prediction`."""
    labels = pred.labels
    total = labels.size
    segments = []
    for c, mask, conf, raw in pred._regions():
        seg: dict[str, Any] = {
            "id": c,
            "class": pred.class_names[c],
            "pixel_share": float(mask.sum()) / total,
            "confidence": conf,
            "score": raw,
        }
        if request.masks:
            seg["rle"] = rle_encode(mask)
        segments.append(seg)
    out: dict[str, Any] = {"class_names": list(pred.class_names), "size": list(labels.shape), "segments": segments}
    if request.label_png:
        from PIL import Image

        buf = io.BytesIO()
        dtype = np.uint8 if len(pred.class_names) <= 256 else np.uint16
        Image.fromarray(labels.astype(dtype)).save(buf, format="PNG")
        out["label_png"] = base64.b64encode(buf.getvalue()).decode("ascii")
    return out


def decode_prediction(answer: dict[str, Any]) -> Any:
    """A :class:`~san.inference.result.Prediction` from an answer with masks (or a label PNG): the label
    map exactly; ``confidence`` and ``score`` hold each region's mean, so region-level results
    (``to_supervision()``, ``to_segments()``, ``pixel_fractions()``) equal the server's."""
    from PIL import Image

    from san.inference.result import Prediction

    h, w = answer["size"]
    names = list(answer["class_names"])
    if "label_png" in answer:
        labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["label_png"])))).astype(np.int32)
    elif all("rle" in s for s in answer["segments"]):
        labels = np.zeros((h, w), dtype=np.int32)
        for s in answer["segments"]:
            labels[rle_decode(s["rle"])] = int(s["id"])
    else:
        raise ValueError("the answer holds neither masks nor a label PNG: ask with masks=true or label_png=true")
    confidence = score = None
    if answer["segments"] and all(s.get("confidence") is not None for s in answer["segments"]):
        confidence = np.zeros((h, w), dtype=np.float32)
        score = np.zeros((h, w), dtype=np.float32)
        for s in answer["segments"]:
            region = labels == int(s["id"])
            confidence[region] = s["confidence"]
            score[region] = np.nan if s.get("score") is None else s["score"]
    vocabulary = Vocabulary(tuple(n for n in names if n != OTHER), ())
    return Prediction(labels, names, vocabulary=vocabulary, confidence=confidence, score=score)
