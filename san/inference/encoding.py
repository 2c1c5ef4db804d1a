"""What SAN's image path gives, independent of any vocabulary: encode an image once, label it with any
list of names in milliseconds.

In SAN the side adapter's mask proposals, the attention biases and the SOS tokens' mask embeddings
never see a class name; only the product of the mask embeddings with the text classifier does. An
:class:`ImageEncoding` keeps, for each test-time view of an image (one, or several with TTA), the
last level's mask logits ``[Q, h, w]`` and mask embeddings ``[Q, E]`` plus the sizes post-processing
needs, and the fingerprint of the image-path weights that made it.

Files are safetensors (tensors and JSON metadata, no pickle), optionally with float16 storage
(about half the size; its label agreement is measured by ``scripts/benchmark.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from san.files import FileFormatError, read_safetensors, write_safetensors

__all__ = ["EncodedView", "EncodingError", "ImageEncoding"]

_FORMAT = "san-image-encoding"
_VERSION = 1


class EncodingError(ValueError):
    """An encoding file is foreign, corrupt, or made by other weights than the model using it."""


@dataclass
class EncodedView:
    """One test-time view: the image resized (and maybe flipped) as the model saw it."""

    mask_logits: Tensor  # [Q, h, w] on the side-adapter grid
    mask_embeddings: Tensor  # [Q, E], normalised
    image_size: tuple[int, int]  # the resized image inside the padded input
    padded_size: tuple[int, int]  # the padded input the masks are first upsampled to
    flipped: bool = False


@dataclass
class ImageEncoding:
    """The vocabulary-free result of SAN on one image (see the module docstring).

    ``output_size`` is the original image's ``(height, width)``: label maps come back at that size.
    ``fingerprint`` names the image-path weights (:meth:`san.SAN.image_fingerprint`).
    """

    views: list[EncodedView]
    output_size: tuple[int, int]
    fingerprint: str
    meta: dict = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        return int(self.views[0].mask_logits.shape[0])

    def image_masks(self, view: int = 0) -> Tensor:
        """A view's proposal mask logits at the image's size, ``[Q, H, W]`` float32 (positive: inside),
        resized as the official post-processing resizes them; a flipped view is flipped back."""
        from san.modeling.semantic import resize_mask_logits

        v = self.views[view]
        masks = resize_mask_logits(v.mask_logits.float(), v.image_size, v.padded_size, tuple(self.output_size))
        return masks.flip(-1) if v.flipped else masks

    def to(self, device: torch.device | str) -> ImageEncoding:
        """The same encoding with its tensors on ``device``."""
        views = [
            EncodedView(v.mask_logits.to(device), v.mask_embeddings.to(device), v.image_size, v.padded_size, v.flipped)
            for v in self.views
        ]
        return ImageEncoding(views, self.output_size, self.fingerprint, dict(self.meta))

    def save(self, path: str | os.PathLike, *, half: bool = False) -> None:
        """Write a safetensors file atomically; ``half`` stores the tensors as float16."""
        tensors = {}
        for i, v in enumerate(self.views):
            for name in ("mask_logits", "mask_embeddings"):
                t = getattr(v, name).detach().cpu()
                tensors[f"view{i}.{name}"] = t.half() if half else t.float()
        views = [
            {"image_size": list(v.image_size), "padded_size": list(v.padded_size), "flipped": v.flipped}
            for v in self.views
        ]
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "output_size": list(self.output_size),
            "fingerprint": self.fingerprint,
            "views": views,
            "meta": self.meta,
        }
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageEncoding:
        """Read a file written by :meth:`save` (float32 tensors, whatever the storage)."""
        try:
            tensors, meta = read_safetensors(path)
        except FileFormatError as e:
            raise EncodingError(str(e)) from None
        if meta.get("format") != _FORMAT:
            raise EncodingError(f"{os.fspath(path)} is not a san image encoding (format {meta.get('format')!r})")
        if meta.get("version") != _VERSION:
            raise EncodingError(f"{os.fspath(path)}: encoding version {meta.get('version')}, this san reads {_VERSION}")
        try:
            views = [
                EncodedView(
                    tensors[f"view{i}.mask_logits"].float(),
                    tensors[f"view{i}.mask_embeddings"].float(),
                    tuple(v["image_size"]),
                    tuple(v["padded_size"]),
                    bool(v["flipped"]),
                )
                for i, v in enumerate(meta["views"])
            ]
            encoding = cls(views, tuple(meta["output_size"]), str(meta["fingerprint"]), dict(meta.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise EncodingError(f"{os.fspath(path)}: incomplete san image encoding ({type(e).__name__}: {e})") from None
        if not views or any(v.mask_logits.dim() != 3 or v.mask_embeddings.dim() != 2 for v in views):
            raise EncodingError(f"{os.fspath(path)}: the encoding's tensors have the wrong shapes")
        return encoding
