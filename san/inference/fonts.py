"""Fonts for the legend: class names in any script (accents, Cyrillic, Greek, CJK, emoji).

Pillow's built-in font covers Latin only (``café`` would be drawn ``caf▯``). A text is drawn with the
first font of a fallback chain whose character map covers every character of it:

1. the files in ``$SAN_FONT`` (``os.pathsep``-separated), for a font of one's own;
2. the fonts fontconfig knows (``fc-list``: on Linux and most Unix systems), preferred families
   first (Noto Sans, DejaVu Sans, Liberation Sans, then the CJK and symbol faces);
3. matplotlib's bundled DejaVu Sans, when matplotlib is installed;
4. Pillow's built-in font.

When no font covers a text, the best-covering one is used and a warning (once per character set)
says which characters are missing and how to get a font for them (``apt install fonts-noto-cjk
fonts-symbola`` covers CJK and emoji).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from PIL import ImageFont

logger = logging.getLogger(__name__)

__all__ = ["font_chain", "font_for", "missing_characters"]

_PREFERRED = ("Noto Sans", "DejaVu Sans", "Liberation Sans", "Noto Sans CJK", "Noto Serif CJK", "Symbola")
_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
_WARNED: set[frozenset[str]] = set()


def _fontconfig_files() -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(
            ["fc-list", "--format", "%{file}\t%{family[0]}\t%{style[0]}\n"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    entries = []
    for line in out.splitlines():
        path, family, style = (line.split("\t") + ["", ""])[:3]
        if not path.lower().endswith(_SUFFIXES):
            continue
        rank = next((i for i, p in enumerate(_PREFERRED) if family.startswith(p)), len(_PREFERRED))
        entries.append((rank, style.lower() not in ("regular", "book", "roman"), path))
    return [path for *_, path in sorted(entries)]


def _matplotlib_font() -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    return [path] if os.path.isfile(path) else []


@functools.lru_cache(maxsize=1)
def font_chain() -> tuple[str, ...]:
    """Font files in fallback order (see the module docstring); found once per process."""
    own = [p for p in os.environ.get("SAN_FONT", "").split(os.pathsep) if p]
    missing = [p for p in own if not os.path.isfile(p)]
    if missing:
        logger.warning("SAN_FONT names files that do not exist: %s", missing)
    files = [p for p in own if os.path.isfile(p)] + _fontconfig_files() + _matplotlib_font()
    return tuple(dict.fromkeys(files))


@functools.lru_cache(maxsize=256)
def _coverage(path: str) -> frozenset[int]:
    try:
        from fontTools.ttLib import TTFont

        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # an unreadable or exotic font file: never chosen
        return frozenset()


def missing_characters(text: str, path: str) -> set[str]:
    """Characters of ``text`` (spaces aside) that the font file has no glyph for."""
    cmap = _coverage(path)
    return {c for c in text if not c.isspace() and ord(c) not in cmap and c not in "\ufe0f\u200d"}


@functools.lru_cache(maxsize=64)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=0)


def font_for(text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The first font of :func:`font_chain` that draws every character of ``text``."""
    best, best_missing = None, None
    for path in font_chain():
        missing = missing_characters(text, path)
        if not missing:
            return _truetype(path, size)
        if best_missing is None or len(missing) < len(best_missing):
            best, best_missing = path, missing
    if best_missing:
        key = frozenset(best_missing)
        if key not in _WARNED:
            _WARNED.add(key)
            logger.warning(
                "no installed font has a glyph for %s (in %r); install one that does (e.g. apt install "
                "fonts-noto-cjk fonts-symbola) or name a font file in SAN_FONT",
                "".join(sorted(best_missing)),
                text,
            )
    if best is not None:
        return _truetype(best, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()
