"""A synthetic domain for the adaptation tests: collages of scikit-image texture photos, one class per
texture, with exact masks; the classes are visually distinct, and their names tell the tiny model's text
tower nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["brick", "grass", "gravel", "fur"]
_PHOTOS = ["brick", "grass", "gravel", "chelsea"]  # scikit-image photos shipped with it (no download)


def _textures() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in _PHOTOS:
        im = getattr(skimage.data, name)()
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        out.append(im.astype(np.uint8))
    return out


def collage(rng: np.random.Generator, textures: list[np.ndarray], size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[size, size, 3]`` and its labels: a Voronoi partition of 3-5 cells, each cell a
    random texture at a random offset."""
    seeds = rng.uniform(0, size, (int(rng.integers(3, 6)), 2))
    yy, xx = np.mgrid[:size, :size]
    cell = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    cls = rng.integers(0, len(textures), len(seeds))
    labels = cls[cell].astype(np.uint8)
    image = np.zeros((size, size, 3), np.uint8)
    for c, tex in enumerate(textures):
        y0 = int(rng.integers(0, tex.shape[0] - size))
        x0 = int(rng.integers(0, tex.shape[1] - size))
        image[labels == c] = tex[y0 : y0 + size, x0 : x0 + size][labels == c]
    return image, labels


def write_domain(root: Path, n: int, seed: int = 0, noise: bool = False) -> Path:
    """A folder dataset (``images/``, ``masks/``, ``classes.txt``) of ``n`` collages; ``noise``: noise
    images with random masks of the same classes instead."""
    rng = np.random.default_rng(seed)
    textures = _textures()
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        image, labels = collage(rng, textures)
        if noise:
            image = rng.integers(0, 256, image.shape, dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(labels).save(root / "masks" / f"{i:03d}.png")
    return root
