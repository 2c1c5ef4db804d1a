"""Fixtures of the command tests: a tiny random model and photo as files, and Ctrl-C that raises."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from PIL import Image


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
