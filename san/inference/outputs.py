"""Files of a prediction run: which inputs, which output names, and writing each image's results
all-or-none.

For an input ``NAME.ext`` four files appear in the output folder: ``NAME_labels.png`` (class index
per pixel; 8-bit below 256 classes, else 16-bit), ``NAME_overlay.png`` (the photo with class colours,
at the photo's size), ``NAME_legend.png`` (the classes present, their colours and pixel shares) and
``NAME.json`` (vocabulary, class names, pixel fractions, the settings used). They are written to
hidden temporary files first and renamed once all exist; if a rename fails, the ones already renamed
are taken back (earlier outputs of the same name restored), so an image gets its files or none.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from san.data.formats import IMAGE_EXTENSIONS

from .result import Prediction
from .visualize import legend, overlay

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_SUFFIXES",
    "OutputError",
    "check_output_dir",
    "collect_inputs",
    "commit_files",
    "output_paths",
    "output_stems",
    "write_outputs",
]

OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", "_legend.png", ".json")


class OutputError(OSError):
    """The output folder cannot be used; the message says why and what to do."""


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, leaving nothing behind, that ``path`` is or can become a writable folder.

    Refused: an existing file; a path below a file; a folder (or nearest existing parent) that is not
    writable, including a read-only filesystem and pseudo-filesystems such as ``/proc`` that permission
    bits do not describe (a temporary folder is created there and removed again to be sure).
    """
    out = Path(path)
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == out and not out.is_dir():
        raise OutputError(f"--output {out} is a file, not a folder: give a folder (it is created if needed)")
    if not probe.is_dir():
        raise OutputError(f"--output {out} lies below {probe}, which is a file: give a folder path")
    what = "the folder" if probe == out else f"its parent {probe}"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--output {out}: {what} is not writable (read-only, or no permission); choose another")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".san-write-check-", dir=probe))
    except OSError as e:
        raise OutputError(f"--output {out}: cannot create folders in {what} ({e.strerror}); choose another") from None
    return out


def collect_inputs(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named by paths, folders (their image files, sorted) and globs; plus specs matching nothing."""
    files: list[Path] = []
    missing = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif os.path.exists(spec):
            found = [Path(spec)]
        else:
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            missing.append(spec)
        files += found
    return list(dict.fromkeys(files)), missing


def output_stems(files: Sequence[Path]) -> list[str]:
    """``photo`` for ``photo.jpg``; ``photo_jpg`` when two inputs share a stem; a counter if still equal."""
    stems = [f.stem for f in files]
    clash = {s for s in stems if stems.count(s) > 1}
    out, seen = [], set()
    for f, s in zip(files, stems):
        name = f"{s}_{f.suffix.lstrip('.').lower()}" if s in clash else s
        base, k = name, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        out.append(name)
    return out


def output_paths(out_dir: Path, stem: str) -> list[Path]:
    """The files one image gets, in :data:`OUTPUT_SUFFIXES` order."""
    return [out_dir / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def commit_files(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, final)`` pair; if one fails, undo the renames already done
    (restoring what the final names held before) and re-raise."""
    done: list[tuple[Path, Path | None]] = []  # (final name, backup of its earlier content)
    try:
        for tmp, final in pairs:
            backup = None
            if final.exists():
                backup = final.with_name(f".{final.name}.old{os.getpid()}")
                os.replace(final, backup)
            done.append((final, backup))
            os.replace(tmp, final)
    except BaseException:
        for final, backup in reversed(done):
            try:
                if backup is not None:
                    os.replace(backup, final)
                elif final.exists():
                    final.unlink()
            except OSError as e:  # report, and keep undoing the others
                logger.error("could not undo the partial output %s: %s", final, e)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def write_outputs(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    pred: Prediction,
    meta: dict[str, Any],
    alpha: float = 0.55,
    *,
    extra: Mapping[Path, Callable[[Path], None]] | None = None,
) -> list[Path]:
    """Write one image's label PNG, overlay, legend and JSON: all of them, or none. ``extra`` maps
    more files of the image to the functions that write them (given a temporary path); they join
    the same all-or-none commit, the JSON renamed last (its presence marks a complete set)."""
    n = len(pred.class_names)
    labels = pred.labels.astype(np.uint8 if n < 256 else np.uint16)
    fractions = pred.pixel_fractions()
    final = output_paths(out_dir, stem)
    record = {
        **meta,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "vocabulary": list(pred.vocabulary.user) if pred.vocabulary else pred.class_names,
        "class_names": pred.class_names,
        "pixel_fractions": fractions,
        "label_png": final[0].name,
        "overlay_png": final[1].name,
        "legend_png": final[2].name,
    }
    more = list(extra or {})
    tmps = [p.with_name(f".{p.name}.tmp{os.getpid()}") for p in [*final, *more]]
    try:
        Image.fromarray(labels).save(tmps[0], format="PNG")
        Image.fromarray(overlay(image, pred.labels, pred.class_names, alpha)).save(tmps[1], format="PNG")
        font_size = int(np.clip(labels.shape[0] / 40, 12, 28))
        legend(fractions, pred.class_names, font_size=font_size).save(tmps[2], format="PNG")
        tmps[3].write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for path, tmp in zip(more, tmps[4:]):
            extra[path](tmp)  # type: ignore[index]
        order = [0, 1, 2, *range(4, len(tmps)), 3]
        commit_files([(tmps[i], [*final, *more][i]) for i in order])
    finally:
        for t in tmps:
            if t.exists():
                t.unlink()
    return [*final, *more]
