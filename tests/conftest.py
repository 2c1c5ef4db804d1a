"""Shared test fixtures: tiny random SAN configs that build in well under a second on CPU."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import san

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # a checkout beside ../shared, or $SAN_SHARED_DIR
    SHARED = Path(os.environ.get("SAN_SHARED_DIR", SHARED))
GOLDEN = SHARED / "golden" / "san_tiny_official.pt"
GOLDEN_V2 = SHARED / "golden" / "san_tiny_official_v2.pt"

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_cfg(tmp_dir: str | os.PathLike, num_classes: int = 5) -> san.CfgNode:
    """A config for a tiny random SAN: CLIP width 64 (4 blocks, split after 2), side ViT width 48."""
    path = Path(tmp_dir) / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    cfg = san.get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.SAN.CLIP_MODEL_NAME",
            str(path),
            "MODEL.SAN.CLIP_PRETRAINED_NAME",
            "",
            "MODEL.SAN.FEATURE_LAST_LAYER_IDX",
            2,
            "MODEL.SAN.NUM_CLASSES",
            num_classes,
            "MODEL.SAN.TRAIN_NUM_POINTS",
            256,
            "MODEL.SIDE_ADAPTER.VIT_NAME",
            "vit_w48n2d4_patch16",
            "MODEL.SIDE_ADAPTER.IMAGE_SIZE",
            160,
            "MODEL.SIDE_ADAPTER.NUM_QUERIES",
            10,
            "MODEL.SIDE_ADAPTER.FUSION_MAP",
            ["0->0", "1->1", "2->2"],
            "MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS",
            [3, 4],
            "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS",
            2,
            "MODEL.SIDE_ADAPTER.ATTN_BIAS.EMBED_CHANNELS",
            16,
            "MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_CHANNELS",
            32,
        ]
    )
    return cfg


def tiny_files(directory: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random SAN as files in ``directory``: ``tiny.yaml`` and ``tiny.pth`` (torch seed ``seed``)."""
    d = Path(directory)
    cfg = tiny_cfg(d)
    (d / "tiny.yaml").write_text(cfg.dump())
    torch.manual_seed(seed)
    san.save_checkpoint(san.build_model(cfg), d / "tiny.pth")
    return d / "tiny.yaml", d / "tiny.pth"


def golden_cfg(golden: dict, directory: str | os.PathLike) -> san.CfgNode:
    """The config of a golden file's official tiny model (its open_clip config written to ``directory``)."""
    path = Path(directory) / "san-tiny-clip.json"
    path.write_text(json.dumps(golden["open_clip_model_config"]))
    overrides = list(golden["san_config_overrides"])
    overrides[overrides.index("MODEL.SAN.CLIP_MODEL_NAME") + 1] = str(path)
    cfg = san.get_cfg()
    cfg.merge_from_list([*overrides, "MODEL.SAN.CLIP_PRETRAINED_NAME", ""])
    return cfg


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module, here and in the processes its tests start (``OMP_NUM_THREADS=1``).

    Tests that compare two runs for equality (sharded against one process, batched against one at a time,
    resumed against uninterrupted) run both under it: another thread count sums in another order, which
    can flip a label at a near-tie (seen: one pixel of a 512 x 512 map between 1 and 2 threads). Tiny
    models are also fastest on one thread."""
    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(n)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture
def tiny_config(tmp_path: Path) -> san.CfgNode:
    return tiny_cfg(tmp_path)


@pytest.fixture
def tiny_model(tiny_config: san.CfgNode) -> san.SAN:
    torch.manual_seed(0)
    return san.build_model(tiny_config).eval()


@pytest.fixture(scope="session")
def golden() -> dict:
    if not GOLDEN.is_file():
        pytest.skip(f"golden outputs not found at {GOLDEN} (they live in the project's shared/ folder)")
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="session")
def golden_v2() -> dict:
    """The contents of ``san_tiny_official_v2.pt`` (see the golden README)."""
    if not GOLDEN_V2.is_file():
        pytest.skip(f"golden outputs not found at {GOLDEN_V2} (they live in the project's shared/ folder)")
    return torch.load(GOLDEN_V2, weights_only=True)


@pytest.fixture(scope="session")
def golden_v2_model(golden_v2, tmp_path_factory) -> san.SAN:
    """The official tiny model of ``san_tiny_official_v2.pt`` (calibrated weights: labels vary over an
    image), for tests that need varied labels from real SAN weights."""
    cfg = golden_cfg(golden_v2, tmp_path_factory.mktemp("golden_v2"))
    return san.build_model(cfg, golden_v2["state_dict"]).eval()


@pytest.fixture(scope="session")
def golden_files(golden_v2_model, tmp_path_factory) -> dict[str, Path]:
    """The golden v2 model as ``model.yaml`` + ``model.pth``, and its two images as arrays."""
    root = tmp_path_factory.mktemp("golden_files")
    (root / "model.yaml").write_text(golden_v2_model.config_yaml)
    san.save_checkpoint(golden_v2_model, root / "model.pth")
    g = torch.load(GOLDEN_V2, weights_only=True)
    images = [im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy() for im in g["images"]]
    return {"yaml": root / "model.yaml", "pth": root / "model.pth", "images": images, "vocabulary": g["vocabulary"]}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``SAN_NO_SKIPS=1`` (set by ``.ci/run``) any skipped test fails the run: CI has the golden
    files, detectron2, OpenCV and chromium, so a skip there means a core check silently did not run."""
    if os.environ.get("SAN_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr
            print(f"SAN_NO_SKIPS: {rep.nodeid} was skipped: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
