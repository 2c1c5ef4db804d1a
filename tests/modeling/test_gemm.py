"""san.modeling.gemm: oneDNN's float32 inner product where it is exact to use, ``F.linear`` everywhere else.

The fast path's agreement with the reference on the whole model is in test_golden (every stage and the
final maps under both ``cpu_gemm("onednn")`` and ``cpu_gemm("aten")``, on every CPU); here: single products
against a float64 recomputation, the rule of when oneDNN runs, and that every linear layer of SAN goes
through it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import san
from san.modeling import gemm
from san.modeling.gemm import Linear, cpu_gemm, linear, onednn_wins, uses_onednn

pytestmark = pytest.mark.numeric

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _operands(rows: int, k: int = 96, n: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(2, rows, k, generator=g)
    return x, torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g)


def _rounding_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """|float32 GEMM - exact| <= (K + 1) eps (|x| |w|^T + |b|): K products and sums, then the bias, in float32."""
    k, eps = x.shape[-1], torch.finfo(torch.float32).eps
    mag = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    return (k + 1) * eps * mag


@needs_onednn
@pytest.mark.parametrize("rows", [1, 7, 32, 541])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_a_float32_gemm_within_its_rounding_bound(rows, bias):
    x, w, b = _operands(rows)
    b = b if bias else None
    assert uses_onednn(x, w, b) == onednn_wins()  # any row count
    got = linear(x, w, b)
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == (2, rows, 200)
    assert ((got.double() - exact).abs() <= _rounding_bound(x, w, b)).all()
    with cpu_gemm("onednn"):  # whatever this CPU's kernels
        assert uses_onednn(x, w, b)
        assert ((linear(x, w, b).double() - exact).abs() <= _rounding_bound(x, w, b)).all()


@needs_onednn
def test_onednn_runs_only_where_it_is_exact_to_use():
    x, w, b = _operands(64)
    assert uses_onednn(x, w, b) == onednn_wins()
    with cpu_gemm("onednn"):
        assert uses_onednn(x, w, b)
    with cpu_gemm("aten"):
        assert not uses_onednn(x, w, b)
    assert not uses_onednn(x.double(), w.double(), b.double())  # float32 only
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast must see F.linear to cast it
        assert not uses_onednn(x, w, b)
        assert linear(x, w, b).dtype == torch.bfloat16
    # the oneDNN op has no derivative: with a gradient needed, F.linear runs and the gradient is right
    x.requires_grad_(True)
    assert not uses_onednn(x, w, b)
    linear(x, w, b).sum().backward()
    # d sum / dx = the column sums of w: N float32 additions, each within N eps sum|w| of the exact float64 sum
    exact, bound = w.double().sum(0), w.shape[0] * torch.finfo(torch.float32).eps * w.double().abs().sum(0)
    assert ((x.grad.double() - exact).abs() <= bound).all()
    w.requires_grad_(True)
    with torch.no_grad(), cpu_gemm("onednn"):  # no gradient needed: oneDNN again
        assert uses_onednn(x, w, b)


def test_auto_takes_onednn_only_with_avx512_kernels(monkeypatch):
    """scripts/bench_cpu_kernels.py: oneDNN won with AVX-512, tied with AVX2 and lost by 2-3x with SSE."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for capability, wins in [("AVX512", True), ("AVX2", False), ("DEFAULT", False)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert onednn_wins() is wins
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for cap, wins in [("AVX2", False), ("SSE41", False), ("avx512_core", True), ("AVX10_1_512", True), ("ALL", True)]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert onednn_wins() is wins, cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    if torch.backends.mkldnn.is_available():
        x, w, b = _operands(64)
        assert uses_onednn(x, w, b)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert not uses_onednn(x, w, b)


@needs_onednn
def test_tracing_and_onnx_see_the_plain_linear():
    layer = Linear(96, 200).eval()
    x = _operands(64)[0]
    with torch.no_grad():
        traced = torch.jit.trace(layer, x)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::linear" in kinds and not any("mkldnn" in k for k in kinds), kinds
    torch.testing.assert_close(traced(x), F.linear(x, layer.weight, layer.bias))


def test_a_bad_choice_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="SAN_CPU_GEMM='mkl': choose one of auto, onednn, aten"):
        with cpu_gemm("mkl"):
            pass
    env = {**os.environ, "SAN_CPU_GEMM": "fast"}
    run = subprocess.run([sys.executable, "-c", "import san.modeling.gemm"], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "SAN_CPU_GEMM='fast': choose one of auto, onednn, aten" in run.stderr


def test_every_linear_layer_of_san_goes_through_the_dispatch(tiny_model):
    """CLIP's towers, timm's side-adapter blocks and the decoder MLPs; only the scalar bias affine stays."""
    plain = [n for n, m in tiny_model.named_modules() if isinstance(m, torch.nn.Linear) and type(m) is not Linear]
    assert plain == ["side_adapter_network.mask_decoder.bias_scaling"]
    n_linear = sum(type(m) is Linear for m in tiny_model.modules())
    assert n_linear >= 4 * (4 + 2 + 2)  # 4 per block: CLIP (4 blocks), text (2), side ViT (2), at least


@needs_onednn
def test_the_model_runs_its_products_through_onednn(golden_v2, tmp_path, monkeypatch):
    """On the image path of an inference forward, the products are oneDNN's (a spy counts the dispatch
    decisions; the vocabulary is encoded before, as its short prompts make products of a few rows)."""
    from ..conftest import golden_cfg

    model = san.build_model(golden_cfg(golden_v2, tmp_path)).eval()
    with torch.no_grad():
        model.encode_vocabulary(["a", "b"])
    decisions = []
    real = gemm.uses_onednn
    monkeypatch.setattr(gemm, "uses_onednn", lambda *a: decisions.append(real(*a)) or decisions[-1])
    image = golden_v2["images"][0]
    with torch.no_grad(), cpu_gemm("onednn"):  # whatever this CPU's kernels: the dispatch, not the choice
        model([{"image": image, "height": image.shape[1], "width": image.shape[2], "vocabulary": ["a", "b"]}])
    assert len(decisions) > 20 and all(decisions), (len(decisions), sum(decisions))
