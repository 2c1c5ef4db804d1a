"""Dependency direction: the core imports without optional packages; modeling never sees configs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "san"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("blocked", [["detectron2", "scipy", "gradio", "wandb", "matplotlib"]])
def test_core_imports_without_optional_packages(blocked):
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
        + "import san, san.modeling, san.config, san.checkpoint, san.build\n"
        + "cfg = san.get_cfg()\n"
        + "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_importing_san_does_not_touch_the_network_or_heavy_modules():
    r = _run(
        "import sys, san; print(sorted(m for m in ('scipy', 'gradio', 'detectron2', 'matplotlib') if m in sys.modules))"
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr + r.stdout


def test_modeling_reads_no_config_and_names_no_config_key():
    """Modules name their own constructor arguments; config keys are build.py's business
    (the layering itself is checked in test_layers.py)."""
    from san.config import get_cfg

    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [k]

    config_keys = {k for k in leaves(get_cfg()) if "_" in k}  # e.g. SOS_TOKEN_FORMAT, NUM_CLASSES
    assert {"SOS_TOKEN_FORMAT", "NUM_CLASSES", "FEATURE_LAST_LAYER_IDX", "DEEP_SUPERVISION_IDXS"} <= config_keys
    for path in (PKG / "modeling").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bcfg\.(MODEL|SOLVER|INPUT|DATASETS|TEST|DATALOADER)\b", text), (
            f"{path.name} reads a config"
        )
        named = sorted(k for k in config_keys if re.search(rf"\b{k}\b", text))
        assert named == [], f"{path.name} names config keys {named}"


def test_only_the_integration_imports_detectron2():
    offenders = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "integrations" not in p.parts
        and any(
            line.lstrip().startswith(("import detectron2", "from detectron2")) for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
