"""scripts/count_params_flops.py on a tiny config: counts equal the model's, FLOPs are plausible."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import san

from .conftest import tiny_cfg

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "count_params_flops.py"


def test_counts_and_flops(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(cfg.dump())
    spec = importlib.util.spec_from_file_location("count_params_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--config-file", str(path), "--size", "64", "96", "--num-classes", "3"])
    model = san.build_model(cfg)
    assert result["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result["total"] == sum(p.numel() for p in model.parameters())
    # lower bound: the side adapter's patch-embedding convolution alone (48 x 3 x 16 x 16 MACs per patch)
    assert result["gflops"] * 1e9 > (64 // 16) * (96 // 16) * 48 * 3 * 16 * 16
    out = capsys.readouterr().out
    assert f"trainable parameters: {result['trainable']:,}" in out and "GFLOPs @ 64x96" in out
