"""Test-time resizing and augmentation: the one implementation the predictor, the evaluator and the
detectron2 integration share.

A *view* of an input is its image resized so that the short side is one of ``min_sizes`` (long
side at most ``max_size``; :func:`san.data.transforms.shortest_edge_size`, PIL bilinear on uint8
images as detectron2's ``ResizeTransform``), optionally flipped horizontally. As the official
``SemanticSegmentorWithTTA`` with detectron2's ``DatasetMapperTTA``: the model predicts every view
at the input's ``(height, width)``, flipped views are flipped back, and the per-class scores are
averaged. With one size and no flip this is the plain test-time resize.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from san.data.transforms import resize_image, shortest_edge_size

__all__ = ["SemSegTTA", "resize_chw"]


def resize_chw(image: Tensor, size: tuple[int, int]) -> Tensor:
    """An image ``[C, H, W]`` resized to ``size`` as detectron2's ResizeTransform (PIL bilinear for uint8)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    hwc = image.detach().permute(1, 2, 0).cpu().numpy()
    out = resize_image(hwc, int(size[0]), int(size[1]))
    return torch.from_numpy(out.transpose(2, 0, 1).copy()).to(image.device)


class SemSegTTA(nn.Module):
    """Wraps a model with the batched-input contract: same inputs and outputs (``sem_seg``
    ``[C, height, width]``), averaged over multi-scale and flipped views.

    Args:
        model: the segmenter (``SAN`` or anything with its ``forward`` contract).
        min_sizes: short-side lengths of the views (``TEST.AUG.MIN_SIZES``).
        max_size: cap of the long side (``TEST.AUG.MAX_SIZE``).
        flip: also run each size flipped horizontally (``TEST.AUG.FLIP``).
    """

    def __init__(self, model: nn.Module, min_sizes: Sequence[int], max_size: int, flip: bool = True) -> None:
        super().__init__()
        if not min_sizes:
            raise ValueError("TTA needs at least one size (TEST.AUG.MIN_SIZES is empty)")
        self.model = getattr(model, "module", model)  # DistributedDataParallel
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @property
    def num_views(self) -> int:
        return len(self.min_sizes) * (2 if self.flip else 1)

    def view_sizes(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The model input size ``(h, w)`` of each scale for an image of ``height x width``: images
        with equal view sizes can share a batch without padding (flips keep the size)."""
        return tuple(shortest_edge_size(height, width, short, self.max_size) for short in self.min_sizes)

    def views(self, x: dict) -> list[tuple[dict, bool]]:
        """``(input dict, flipped)`` of every view of one input (its ``height``/``width`` kept)."""
        h0, w0 = int(x["image"].shape[-2]), int(x["image"].shape[-1])
        out = {"height": int(x.get("height", h0)), "width": int(x.get("width", w0))}
        views = []
        for size in self.view_sizes(h0, w0):
            image = resize_chw(x["image"], size)
            for flipped in (False, True) if self.flip else (False,):
                views.append(({**x, **out, "image": image.flip(-1) if flipped else image}, flipped))
        return views

    @torch.no_grad()
    def forward(self, batched_inputs: Sequence[dict]) -> list[dict[str, Tensor]]:
        """Average ``sem_seg`` over the views; view ``k`` of every input runs in one model call."""
        per_input = [self.views(x) for x in batched_inputs]
        totals: list[Tensor | None] = [None] * len(batched_inputs)
        for k in range(self.num_views):
            results = self.model([views[k][0] for views in per_input])
            for i, (views, res) in enumerate(zip(per_input, results)):
                scores = res["sem_seg"].float()
                scores = scores.flip(-1) if views[k][1] else scores
                totals[i] = scores if totals[i] is None else totals[i] + scores
        return [{"sem_seg": t / self.num_views} for t in totals]  # type: ignore[operator]
