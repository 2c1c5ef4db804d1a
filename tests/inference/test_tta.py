"""Test-time augmentation resizes as detectron2's DatasetMapperTTA: the loader's image, PIL bilinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from san.data.transforms import shortest_edge_size
from san.inference.tta import SemSegTTA

MIN_SIZES, MAX_SIZE = [20, 40, 64], 80


class _Recorder(torch.nn.Module):
    """Records every input; predicts a constant score map at (height, width)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict] = []

    def forward(self, inputs):
        self.inputs += inputs
        return [{"sem_seg": torch.ones(2, x["height"], x["width"])} for x in inputs]


def _loader_input() -> dict:
    """As the test loader gives it: the image already resized (30 x 45), labels at the original 60 x 90."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 30, 45)).astype(np.uint8))
    label = torch.from_numpy(rng.integers(0, 2, (60, 90)))
    return {"image": image, "height": 60, "width": 90, "sem_seg": label, "file_name": "x.jpg"}


def _run_tta() -> tuple[dict, list[dict], torch.Tensor]:
    x = _loader_input()
    label = x["sem_seg"].clone()
    model = _Recorder()
    out = SemSegTTA(model, MIN_SIZES, MAX_SIZE, flip=True)([x])[0]["sem_seg"]
    assert torch.equal(x["sem_seg"], label)  # labels untouched
    return x, model.inputs, out


def test_tta_resizes_the_loader_image_with_pil_and_predicts_at_the_original_size():
    x, seen, out = _run_tta()
    assert out.shape == (2, 60, 90) and torch.equal(out, torch.ones(2, 60, 90))
    assert len(seen) == 2 * len(MIN_SIZES)
    hwc = x["image"].permute(1, 2, 0).numpy()
    for k, short in enumerate(MIN_SIZES):
        h, w = shortest_edge_size(30, 45, short, MAX_SIZE)  # from the loader image's size, as detectron2
        with Image.fromarray(hwc) as pil:
            expected = torch.from_numpy(np.array(pil.resize((w, h), Image.BILINEAR))).permute(2, 0, 1)
        plain, flipped = seen[2 * k], seen[2 * k + 1]
        assert plain["image"].dtype == torch.uint8 and torch.equal(plain["image"], expected), short
        assert torch.equal(flipped["image"], expected.flip(-1)), short
        for inp in (plain, flipped):
            assert (inp["height"], inp["width"]) == (60, 90) and torch.equal(inp["sem_seg"], x["sem_seg"])


@pytest.mark.detectron2
def test_tta_images_equal_detectron2s_dataset_mapper_tta():
    tta = pytest.importorskip("detectron2.modeling.test_time_augmentation")
    x, seen, _ = _run_tta()
    reference = tta.DatasetMapperTTA(min_sizes=MIN_SIZES, max_size=MAX_SIZE, flip=True)(dict(x))
    assert len(reference) == len(seen)
    for ref, ours in zip(reference, seen):
        assert torch.equal(ours["image"], ref["image"]), tuple(ref["image"].shape)
        assert (ours["height"], ours["width"]) == (ref["height"], ref["width"])


class _Echo(torch.nn.Module):
    """A stand-in model whose scores are the input image resized to (height, width)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, inputs):
        self.sizes += [tuple(x["image"].shape[-2:]) for x in inputs]
        return [
            {"sem_seg": F.interpolate(x["image"][None].float(), size=(x["height"], x["width"]), mode="bilinear")[0]}
            for x in inputs
        ]


def test_tta_averages_rescaled_and_unflipped_predictions():
    ramp = torch.arange(48, dtype=torch.float32).mul(5).expand(3, 32, 48).to(torch.uint8)  # left-right asymmetric
    model = _Echo()
    tta = SemSegTTA(model, [16, 32, 64], max_size=80, flip=True)
    out = tta([{"image": ramp, "height": 32, "width": 48}])[0]["sem_seg"]
    assert model.sizes == [(16, 24), (16, 24), (32, 48), (32, 48), (53, 80), (53, 80)]
    assert out.shape == (3, 32, 48)
    assert (out - ramp.float()).abs()[:, :, 2:-2].max() < 3  # flips undone, scales averaged
    with pytest.raises(ValueError, match="MIN_SIZES is empty"):
        SemSegTTA(model, [], 100)
