"""Image inputs -> HxWx3 uint8 RGB: conversions and clear errors, in memory and from files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from san.data.images import ImageError, read_image, to_rgb_array

# EXIF orientation -> the numpy operation that shows the stored pixels upright (EXIF 2.3, tag 0x0112)
UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, k=-1),  # needs 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, k=1),  # needs 90 degrees counter-clockwise
}


def test_conversions() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb_array(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_array(np.dstack([rgb, gray])), rgb)  # alpha dropped
    np.testing.assert_array_equal(to_rgb_array(rgb.astype(np.uint16) * 257), rgb)  # 16-bit scaled
    np.testing.assert_array_equal(to_rgb_array(rgb / 255.0), rgb)  # float 0..1
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(rgb).permute(2, 0, 1).double()), rgb)  # 0..255
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(gray)[None]), to_rgb_array(gray))
    np.testing.assert_array_equal(
        to_rgb_array(Image.fromarray(rgb).convert("P")), np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
    )
    assert to_rgb_array(np.ones((3, 4), dtype=bool)).max() == 255


def test_errors(tmp_path) -> None:
    with pytest.raises(ImageError, match="unsupported image type list"):
        to_rgb_array([[1, 2]])
    with pytest.raises(ImageError, match=r"channels last\), got shape \[5, 7, 2\]"):
        to_rgb_array(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        to_rgb_array(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageError, match="empty"):
        to_rgb_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    big = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(big)
    with pytest.raises(ImageError, match=r"200x100 = 20000 pixels, above the limit of 19999 pixels"):
        read_image(big, max_pixels=19_999)
    assert read_image(big, max_pixels=20_000).shape == (100, 200, 3)


def _png_rgb16(path: Path, a: np.ndarray) -> None:
    """Write a 48-bit RGB PNG by hand (PIL cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = np.zeros((16, 32, 4), dtype=np.uint8)  # two flat 16x16 patches: JPEG keeps them (almost) exact
    cmyk[:, :16] = [200, 0, 50, 30]
    cmyk[:, 16:] = [0, 120, 255, 0]
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100)
    got = read_image(tmp_path / "c.jpg").astype(int)
    c, k = cmyk[..., :3].astype(int), cmyk[..., 3:].astype(int)
    want = np.rint((255 - c) * (255 - k) / 255)  # R = (1 - C)(1 - K), per channel
    assert np.abs(got - want).max() <= 2
    assert tuple(want[0, 0]) == (49, 225, 181) and tuple(want[0, 20]) == (255, 135, 0)


def test_rgba_and_palette_png_drop_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    alpha[0] = 0  # fully transparent pixels keep their colour too
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    pal = Image.new("P", (3, 2))
    pal.putpalette([10, 20, 30, 200, 100, 0])
    pal.putdata([0, 1, 1, 0, 0, 1])
    pal.save(tmp_path / "pal.png", transparency=0)
    np.testing.assert_array_equal(
        read_image(tmp_path / "pal.png"),
        np.array([[[10, 20, 30], [200, 100, 0], [200, 100, 0]], [[10, 20, 30], [10, 20, 30], [200, 100, 0]]]),
    )


def test_16_bit_pngs(tmp_path: Path) -> None:
    v = np.array([[0, 255, 256, 257], [1000, 32896, 65279, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(got[..., 0], [[0, 0, 0, 1], [3, 128, 254, 255]])  # value // 257
    np.testing.assert_array_equal(got[..., 1], got[..., 0])
    rgb16 = np.array([[[0, 255, 256], [257, 65535, 1000]], [[40000, 30000, 128], [65280, 65279, 511]]], np.uint16)
    _png_rgb16(tmp_path / "rgb48.png", rgb16)
    got = read_image(tmp_path / "rgb48.png").astype(int)
    assert np.abs(got - rgb16 / 257).max() <= 1  # Pillow keeps the high byte: within 1 of value / 257
    assert got[1, 0].tolist() == [156, 117, 0]


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_oriented_jpegs(tmp_path: Path, orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    blocks = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    image = blocks.repeat(8, axis=0).repeat(8, axis=1)  # 24 x 40, not symmetric in any way
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(tmp_path / "o.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "o.jpg") as im:
        stored = np.asarray(im.convert("RGB"))
    got = read_image(tmp_path / "o.jpg")
    assert got.shape == ((40, 24, 3) if orientation >= 5 else (24, 40, 3))
    np.testing.assert_array_equal(got, UPRIGHT[orientation](stored))


def test_grayscale_files(tmp_path: Path) -> None:
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(np.dstack([gray, 255 - gray]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=100)
    got = read_image(tmp_path / "g.jpg").astype(int)
    assert (got[..., 0] == got[..., 2]).all() and np.abs(got[..., 0] - gray).max() <= 3


def test_truncated_and_non_image_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    for ext in ("jpg", "png"):
        data = (tmp_path / f"full.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        with pytest.raises(
            ImageError, match=rf"cut.{ext}: cannot decode the image \(the file is truncated or corrupt\)"
        ):
            read_image(tmp_path / f"cut.{ext}")
    (tmp_path / "notes.png").write_text("just text\n")
    with pytest.raises(ImageError, match="notes.png: not an image file"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file \\(0 bytes\\)"):
        read_image(tmp_path / "empty.jpg")


def test_max_pixels_above_pillows_own_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (200, 100), (1, 2, 3)).save(tmp_path / "big.png")  # 20,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2 x 1000
    assert read_image(tmp_path / "big.png", max_pixels=50_000).shape == (100, 200, 3)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (100, 200, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back afterwards
    with pytest.raises(
        ImageError, match=r"20000 pixels, above the limit of 5000 pixels.* raise the limit .*--max-pixels"
    ):
        read_image(tmp_path / "big.png", max_pixels=5_000)  # above twice our own limit: Pillow's check, our words
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    with pytest.raises(ImageError, match="above the limit"):
        read_image(tmp_path / "big.png", max_pixels=19_999)
    assert Image.MAX_IMAGE_PIXELS == 10**9  # a higher Pillow limit is left as it was
