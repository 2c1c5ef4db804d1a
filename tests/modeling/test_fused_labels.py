"""The fused Triton label kernel (``semantic_labels(..., fused=True)``) equals the float64 official scores' arg-max.

Triton runs on the CPU through its interpreter (``TRITON_INTERPRET=1``, read when the kernel is compiled,
so the kernel runs in a child process that writes its outputs). References are computed here: the official
resize, sigmoid and class mixture in float64 (``semantic_inference`` of ``sem_seg_postprocess``) and the
band path (``semantic_labels``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from san.modeling.fused_labels import fused_labels
from san.modeling.semantic import sem_seg_postprocess, semantic_inference, semantic_labels

from ..reference import EPS32, decided

# not in the float-noise matrix: the kernel runs in Triton's interpreter (NumPy), which ATen's kernel settings do
# not reach, and its 30 s would be spent three more times in CI for the float64 reference alone

# (Q, C, mask grid, padded input, image in it, output, masks resized before the mixture): a few classes and
# proposals; 100 proposals (not a power of two) x 150 classes (three class tiles) on an output three column
# blocks wide; the official alternative order (sigmoid at the padded size, scores resized)
CASES = [
    (5, 7, (7, 9), (112, 144), (100, 130), (30, 41), True),
    (100, 150, (10, 12), (160, 192), (150, 190), (24, 150), True),
    (6, 20, (8, 8), (64, 64), (60, 50), (33, 70), False),
]

CHILD = """
import sys, torch
from san.modeling.semantic import semantic_labels
cases = torch.load(sys.argv[1], weights_only=True)
out = []
for case in cases:
    labels, scores = semantic_labels(*case["args"], postprocess_before_inference=case["before"], fused=True)
    out.append({"labels": labels, "scores": scores})
torch.save(out, sys.argv[2])
"""


def _inputs(q: int, c: int, grid: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, c + 1, generator=g) * 3, torch.randn(q, *grid, generator=g) * 4


def _official64(cls, masks, image, padded, out, before: bool) -> torch.Tensor:
    """``[C, H, W]`` scores of the official post-processing in float64 (either order)."""
    cls, masks = cls.double(), masks.double()
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    if before:
        return semantic_inference(cls, sem_seg_postprocess(up, image, *out))
    return sem_seg_postprocess(semantic_inference(cls, up), image, *out)


def test_the_fused_kernel_gives_the_official_labels_and_scores(tmp_path):
    pytest.importorskip("triton", reason="the fused kernel is written in Triton (torch's CUDA wheels bring it)")
    cases = []
    for i, (q, c, grid, padded, image, out, before) in enumerate(CASES):
        cls, masks = _inputs(q, c, grid, i)
        cases.append({"args": [cls, masks, image, padded, out], "before": before})
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = [sys.executable, "-c", CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")]
    run = subprocess.run(child, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for (q, _, _, _, _, out, before), case, res in zip(CASES, cases, got):
        want = _official64(*case["args"], before)  # [C, H, W]
        # float32 against float64: 16 roundings in the two resizes (at the logits' size, through the
        # sigmoid's slope <= 1/4), then Q + 1 in the mixture of values <= 1
        tol = (16 * float(case["args"][1].abs().max()) / 4 + q + 1) * EPS32
        assert res["labels"].shape == res["scores"].shape == out and res["labels"].dtype == torch.long
        assert (res["scores"].double() - want.amax(0)).abs().max() <= tol
        sure = decided(want, tol)
        assert sure.float().mean() > 0.99
        assert torch.equal(res["labels"][sure], want.argmax(0)[sure])
        band_labels, _ = semantic_labels(*case["args"], postprocess_before_inference=before, prune=False)
        assert torch.equal(res["labels"][sure], band_labels[sure])


def test_the_fused_kernel_refuses_what_it_cannot_hold(monkeypatch):
    probs, masks = torch.rand(300, 4), torch.rand(300, 5, 6)
    taps = (torch.zeros(5, 2, dtype=torch.long), torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"expected maps \[Q<=256"):
        fused_labels(probs, taps, masks, True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused=True runs a Triton kernel on a CUDA device; these tensors are on cpu"):
        fused_labels(probs[:5], taps, masks[:5], True)
