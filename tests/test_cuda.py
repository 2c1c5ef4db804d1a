"""Exactness on the GPU (marker ``gpu``; ``scripts/gpu_check.sh`` runs them on a CUDA machine): golden v2 on
the device, and the fast paths against the reference paths on the device.

They run on ``SAN_TEST_DEVICE`` (default ``cuda``); ``gpu_check.sh --dry-run`` rehearses them on the CPU. The CPU
suite deselects them (``-m "not gpu"``: the README's test command): without a GPU there is nothing to run.
Bounds, stated for CUDA float32 with TF32 off: the stages within 1e-4 x max(1, max|ref|) as on the CPU (the same
formulas; cuBLAS and the CPU differ by reduction order, measured in ulps); the label map of the fast path
equals the reference path's on >= 99.99% of pixels. Half precision is not checked here: the tiny golden model's
class scores lie too close for a 16-bit mantissa (bf16 keeps 44% of its float32 labels on the CPU), so its
agreement is measured on ViT-B shapes by ``scripts/benchmark.py`` (``label_agree``/``proxy_agree``), in the same run.
"""

from __future__ import annotations

import os

import pytest
import torch

import san

from .conftest import SHARED, golden_cfg

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("SAN_TEST_DEVICE", "cuda")


@pytest.fixture(scope="module")
def v2(tmp_path_factory) -> tuple[dict, san.SAN]:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("no CUDA device: run the gpu tests on a GPU machine, or with SAN_TEST_DEVICE=cpu to rehearse")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    golden = torch.load(SHARED / "golden" / "san_tiny_official_v2.pt", weights_only=True)
    model = san.build_model(golden_cfg(golden, tmp_path_factory.mktemp("cuda")), golden["state_dict"])
    return golden, model.to(DEVICE).eval()


def _inputs(golden: dict) -> list[dict]:
    return [
        {
            "image": im.to(DEVICE),
            "height": 2 * im.shape[1],
            "width": 2 * im.shape[2],
            "vocabulary": golden["vocabulary"],
        }
        for im in golden["images"]
    ]


def _close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    err = (got.double().cpu() - ref.double()).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), f"{what}: max |diff| {err:.3g}"


def test_golden_v2_stages_on_the_device(v2):
    golden, model = v2
    with torch.no_grad():
        classifier = model.encode_vocabulary(golden["vocabulary"])
        images, _ = model.preprocess(_inputs(golden))
        out = model.forward_stages(images, classifier)
    _close(classifier, golden["outputs"]["classifier_with_bg_scaled"], "classifier")
    ref = golden["outputs"]["eval"]
    for official, ours in {
        "mask_preds": "mask_logits",
        "mask_embeddings": "mask_embeddings",
        "mask_logits": "class_logits",
    }.items():
        _close(out[ours][0], ref[official][0], official)


def test_the_label_path_equals_the_reference_on_the_device(v2):
    golden, model = v2
    with torch.no_grad():
        reference = [r["sem_seg"].argmax(0) for r in model(_inputs(golden))]
        fast = model.predict_labels(_inputs(golden))
    for ref, got in zip(reference, fast):
        labels = got["labels"]
        assert (labels.cpu() == ref.cpu()).float().mean() >= 0.9999
    assert len(torch.cat([r.flatten() for r in reference]).unique()) >= 3  # the labels vary


def test_the_fused_label_kernel_equals_the_reference_on_the_device(v2):
    """``predict_labels(fused=True)``: one Triton kernel (IEEE float32 dots) from the resize to the arg-max (the
    CPU rehearsal runs it through Triton's interpreter: ``gpu_check.sh --dry-run`` sets ``TRITON_INTERPRET=1``)."""
    golden, model = v2
    with torch.no_grad():
        reference = [r["sem_seg"] for r in model(_inputs(golden))]
        fused = model.predict_labels(_inputs(golden), fused=True)
    for ref, got in zip(reference, fused):
        assert (got["labels"].cpu() == ref.argmax(0).cpu()).float().mean() >= 0.9999
        _close(got["scores"], ref.amax(0).cpu(), "fused scores")


def test_fast_text_encoding_equals_the_reference_on_the_device(v2):
    golden, model = v2
    names = [*golden["vocabulary"], "a photo of a red umbrella", "sky"]
    with torch.no_grad():
        fast = model.ov_classifier.embed_names(names)
        ref = model.ov_classifier.embed_names(names, fast=False)
    assert (fast - ref).abs().max().item() <= 1e-5
