"""Fixtures of the command tests: the official tiny model of the golden v2 file as files on disk."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import san


@pytest.fixture(scope="session")
def golden_files(golden_v2_model, tmp_path_factory) -> dict[str, Path]:
    """The golden v2 model as ``model.yaml`` + ``model.pth``, and its two images as arrays."""
    from ..conftest import GOLDEN_V2

    root = tmp_path_factory.mktemp("golden_files")
    (root / "model.yaml").write_text(golden_v2_model.config_yaml)
    san.save_checkpoint(golden_v2_model, root / "model.pth")
    g = torch.load(GOLDEN_V2, weights_only=True)
    images = [im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy() for im in g["images"]]
    return {"yaml": root / "model.yaml", "pth": root / "model.pth", "images": images, "vocabulary": g["vocabulary"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny random SAN as ``tiny.yaml`` + ``tiny.pth`` and a 56x40 photo, as paths."""
    from ..conftest import tiny_files

    d = tmp_path_factory.mktemp("first_hour")
    tiny_files(d)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(d / "photo.png")
    return {"dir": d, "yaml": str(d / "tiny.yaml"), "pth": str(d / "tiny.pth"), "photo": str(d / "photo.png")}


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt during the test, as in a terminal, even when the tests were
    started with SIGINT ignored (a background shell, nohup)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
