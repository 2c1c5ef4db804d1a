"""File helpers every layer may use: atomic writes and safetensors files with JSON metadata.

A file is written under a temporary name in its folder and renamed over the final name, so a reader
(or a process killed mid-write) sees the old file or the new one, never half of one. safetensors
files hold tensors and string metadata only: reading them never runs code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["FileFormatError", "atomic_path", "file_size", "read_safetensors", "write_safetensors"]


class FileFormatError(ValueError):
    """A file is truncated, of another format, or lacks what its reader needs."""


def file_size(path: str | os.PathLike) -> str:
    """``"123 bytes"`` / ``"4.5 MiB"``, for error messages."""
    n = os.path.getsize(path)
    return f"{n} bytes" if n < 1 << 20 else f"{n / 2**20:.1f} MiB"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{base}.tmp{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
    """Write tensors and JSON-able metadata atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            tmp,
            metadata={k: json.dumps(v) for k, v in metadata.items()},
        )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a safetensors file; metadata values are JSON-decoded where they are
    JSON (as :func:`write_safetensors` writes them), else kept as strings."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{path} is truncated or not a safetensors file ({file_size(path)}): {e}") from None
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta
