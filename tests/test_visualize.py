"""Palette, overlay, legend and pixel fractions (PIL only)."""

from __future__ import annotations

import numpy as np
import pytest

from san.visualize import legend, overlay, palette, pixel_fractions, render


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
    col = palette(4).astype(np.float32)
    y, x = 5, 5  # inside "sky", away from boundaries
    np.testing.assert_array_equal(out[y, x], np.rint(image[y, x] * 0.5 + col[0] * 0.5).astype(np.uint8))
    y, x = 35, 50  # "other": grey, barely tinted
    np.testing.assert_array_equal(out[y, x], np.rint(image[y, x] * 0.85 + 128 * 0.15).astype(np.uint8))
    edge = out[5, 19].astype(int)  # the sky|grass boundary is darkened
    assert (edge <= np.rint(image[5, 19] * 0.5 + col[0] * 0.5) * 0.35 + 1).all()
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:10], names)


def test_legend_and_render() -> None:
    image, labels, names = _scene()
    fr = pixel_fractions(labels, names)
    panel = np.asarray(legend(fr, names))
    colours = {tuple(c) for c in panel.reshape(-1, 3)}
    assert tuple(palette(4)[0]) in colours and tuple(palette(4)[2]) in colours  # swatches of sky, grass
    assert tuple(palette(4)[1]) not in colours  # absent class not listed
    assert (128, 128, 128) in colours  # "other" in grey
    short = legend({f"c{i}": 0.01 for i in range(50)}, [f"c{i}" for i in range(50)], height=100)
    assert short.height == 100
    pic = render(image, labels, names)
    assert pic.height >= 40 and pic.width > 60
    np.testing.assert_array_equal(np.asarray(pic)[:40, :60], overlay(image, labels, names))
