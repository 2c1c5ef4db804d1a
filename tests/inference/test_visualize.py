"""Palette, overlay, legend and pixel fractions (PIL only)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import san.inference.visualize as vis
from san.inference.visualize import legend, overlay, palette, pixel_fractions


def _scene() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[:, 20:] = 2
    labels[30:, :] = 3  # class 1 absent
    return image, labels, ["sky", "cat", "grass", "other"]


def test_palette_deterministic_and_distinct() -> None:
    p = palette(300)
    assert p.dtype == np.uint8 and p.shape == (300, 3)
    np.testing.assert_array_equal(p, palette(300))
    np.testing.assert_array_equal(p[:10], palette(10))  # a class keeps its colour as the list grows
    assert len({tuple(c) for c in p[:150]}) == 150


def test_pixel_fractions_counts_and_order() -> None:
    _, labels, names = _scene()
    fr = pixel_fractions(labels, names)
    assert list(fr) == ["grass", "sky", "other"]  # largest first; absent "cat" left out
    assert fr == {"grass": 30 * 40 / 2400, "sky": 30 * 20 / 2400, "other": 10 * 60 / 2400}
    assert sum(fr.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside 0..3"):
        pixel_fractions(labels + 1, names)


def test_overlay_blends_colours_at_image_size() -> None:
    image, labels, names = _scene()
    out = overlay(image, labels, names, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    col = palette(4).astype(np.float64)
    inner = np.ones(labels.shape, dtype=bool)  # pixels with the same class right and below
    inner[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    inner[:-1] &= labels[:-1] == labels[1:]
    inner[1:] &= labels[:-1] == labels[1:]
    inner[:, 1:] &= labels[:, :-1] == labels[:, 1:]
    a = np.where(labels == 3, 0.15, 0.5)[..., None]  # "other": grey, barely tinted
    want = image * (1 - a) + np.where(labels[..., None] == 3, 128.0, col[labels]) * a
    diff = np.abs(out.astype(float) - want)
    assert diff[inner].max() <= 1  # integer blending: within one level of the exact blend
    edge = labels[:, :-1] != labels[:, 1:]  # the left side of each vertical boundary is darkened
    np.testing.assert_allclose(out[:, :-1][edge], want[:, :-1][edge] * 0.35, atol=2)
    assert (out[:, :-1][edge].astype(int) < want[:, :-1][edge] * 0.4 + 1).all()
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:10], names)
    with pytest.raises(ValueError, match="outside 0..3"):
        overlay(image, labels + 1, names)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        overlay(image.astype(np.float32), labels, names)


def test_overlay_bands_join_without_seams(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (37, 23)).astype(np.int32)
    whole = overlay(image, labels, ["a", "b", "c"])
    monkeypatch.setattr(vis, "_BAND_PIXELS", 23 * 4)  # 4-row bands: boundaries across every band edge
    np.testing.assert_array_equal(overlay(image, labels, ["a", "b", "c"]), whole)
    assert pixel_fractions(labels, ["a", "b", "c"]) == {
        n: float(np.mean(labels == i)) for i, n in sorted(enumerate("abc"), key=lambda t: -np.sum(labels == t[0]))
    }


def test_overlay_memory_is_the_output_plus_a_band(monkeypatch: pytest.MonkeyPatch) -> None:
    h, w = 1500, 2000
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    labels = np.zeros((h, w), dtype=np.int32)
    labels[:, w // 2 :] = 1
    monkeypatch.setattr(vis, "_BAND_PIXELS", 1 << 16)
    tracemalloc.start()
    try:
        out = overlay(image, labels, ["a", "b"])
        pixel_fractions(labels, ["a", "b"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == image.shape
    assert peak < 4 * h * w  # the 3 bytes/pixel result and small bands (float32 temporaries: ~70 bytes/pixel)


def test_legend() -> None:
    image, labels, names = _scene()
    fr = pixel_fractions(labels, names)
    panel = np.asarray(legend(fr, names))
    colours = {tuple(c) for c in panel.reshape(-1, 3)}
    assert tuple(palette(4)[0]) in colours and tuple(palette(4)[2]) in colours  # swatches of sky, grass
    assert tuple(palette(4)[1]) not in colours  # absent class not listed
    assert (128, 128, 128) in colours  # "other" in grey
    short = legend({f"c{i}": 0.01 for i in range(50)}, [f"c{i}" for i in range(50)], height=100)
    assert short.height == 100
