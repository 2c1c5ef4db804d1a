"""Side adapter: float32 mask proposals inside a half-precision autocast region when asked."""

from __future__ import annotations

import pytest
import torch

import san

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix


def test_full_precision_side_adapter_ignores_autocast(tiny_model: san.SAN) -> None:
    torch.manual_seed(0)
    images = torch.randn(1, 3, 96, 128)
    side = tiny_model.side_adapter_network
    assert side.full_precision is False  # the model itself follows autocast like any module
    with torch.no_grad():
        clip = tiny_model.clip_visual_extractor(images, keep=side.clip_layers_needed)  # float32 features
        ref_masks, ref_biases = side(images, clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half_masks, _ = side(images, clip)
            side.set_full_precision(True)
            try:
                full_masks, full_biases = side(images, clip)
            finally:
                side.set_full_precision(False)
    assert half_masks[0].dtype == torch.bfloat16 and not torch.allclose(half_masks[0].float(), ref_masks[0], atol=1e-4)
    assert full_masks[0].dtype == torch.float32 and torch.equal(full_masks[0], ref_masks[0])
    assert all(torch.equal(a, b) for a, b in zip(full_biases[0], ref_biases[0]))


def test_predictor_keeps_mask_proposals_in_float32_on_the_cpu_by_default(tiny_model: san.SAN) -> None:
    san.SANPredictor(tiny_model, device="cpu", precision="bf16")
    assert tiny_model.side_adapter_network.full_precision is True
    san.SANPredictor(tiny_model, device="cpu", precision="bf16", full_precision_masks=False)
    assert tiny_model.side_adapter_network.full_precision is False
