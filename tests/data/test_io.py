"""Readers: 8-bit and 16-bit labels, EXIF orientation, colour conversions, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from san.data.io import DataError, read_image, read_label, write_label


@pytest.mark.parametrize(
    ("ext", "dtype", "high"), [(".png", np.uint8, 256), (".png", np.uint16, 65536), (".tif", np.uint16, 65536)]
)
def test_labels_round_trip_exactly(tmp_path, ext, dtype, high):
    a = np.random.default_rng(0).integers(0, high, (13, 21)).astype(dtype)
    a[0, 0] = high - 1  # the ignore value (255 / 65535) survives
    write_label(tmp_path / f"l{ext}", a)
    b = read_label(tmp_path / f"l{ext}")
    assert b.dtype == dtype and b.shape == (13, 21) and np.array_equal(a, b)


def test_tifffile_written_16bit_tiff_is_read(tmp_path):
    a = np.arange(12 * 7, dtype=np.uint16).reshape(12, 7) * 700
    tifffile.imwrite(tmp_path / "x.tif", a, compression="zlib")
    assert np.array_equal(read_label(tmp_path / "x.tif"), a)


def test_palette_png_gives_indices(tmp_path):
    idx = np.array([[0, 1, 2], [15, 255, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(tmp_path / "p.png")
    assert np.array_equal(read_label(tmp_path / "p.png"), idx)


def test_bad_label_files_name_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), np.uint8) + 3).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError, match="rgb.png.*single-channel.*RGB"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="text.png"):
        read_label(tmp_path / "text.png")
    with pytest.raises(DataError, match="cut.png"):
        read_label(tmp_path / "cut.png")
    with pytest.raises(DataError, match="missing.png.*does not exist"):
        read_label(tmp_path / "missing.png")


def test_image_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, :5] = (255, 0, 0)  # red band on the left of the stored pixels
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (30, 10, 3) and out.dtype == np.uint8
    assert out[:5, :, 0].mean() > 200 and out[-5:, :, 0].mean() < 50  # the band is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    arr = {"L": np.full((5, 6), 100, np.uint8), "I;16": np.full((5, 6), 100 * 257, np.uint16)}.get(mode)
    img = Image.fromarray(arr) if arr is not None else Image.new(mode, (6, 5), (100,) * len(mode))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16", "RGBA"):
        assert (out == 100).all()


def test_bad_images_name_the_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(tmp_path / "f.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "f.jpg").read_bytes()[:300])
    with pytest.raises(DataError, match="(?i)cut.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="a.jpg"):
        read_image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
