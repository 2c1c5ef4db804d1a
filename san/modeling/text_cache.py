"""A cache of class-name embeddings, in memory and optionally on disk.

Embeddings depend on the text tower's weights and the prompt templates, so every entry lives under
a key of both (:meth:`TextClassifier.cache_key`); the names themselves are the entries. The memory
cache holds one key at a time (it starts over when the key changes, e.g. after a weight load). The
disk cache is one safetensors file per key, ``text-<key>.safetensors`` in ``directory``, holding the
embeddings ``[N, E]`` and the names in its metadata; writes merge with what other processes stored
under the same key and replace the file atomically. An unreadable cache file is ignored (and
rebuilt), never fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from san.files import FileFormatError, read_safetensors, write_safetensors

logger = logging.getLogger(__name__)

__all__ = ["TextEmbeddingCache"]


class TextEmbeddingCache:
    """Name -> embedding ``[E]`` under one key; on disk too when ``directory`` is set."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._key: str | None = None
        self._memory: dict[str, Tensor] = {}

    def set_directory(self, directory: str | os.PathLike | None) -> None:
        """Use another on-disk folder (None: memory only)."""
        self.directory = None if directory is None else Path(directory)

    def clear(self) -> None:
        """Forget the in-memory entries (disk files stay)."""
        self._memory.clear()
        self._key = None

    def file(self, key: str) -> Path | None:
        """The disk file of ``key`` (None without a directory)."""
        return None if self.directory is None else self.directory / f"text-{key}.safetensors"

    def _use(self, key: str) -> None:
        if key != self._key:
            self._memory.clear()
            self._key = key

    def lookup(self, key: str, names: Iterable[str]) -> dict[str, Tensor]:
        """The cached embeddings among ``names`` (memory first, then the disk file)."""
        self._use(key)
        names = list(names)
        missing = [n for n in names if n not in self._memory]
        if missing and self.directory is not None:
            stored = self._read(key)
            self._memory.update((n, stored[n]) for n in missing if n in stored)
        return {n: self._memory[n] for n in names if n in self._memory}

    def store(self, key: str, embeddings: Mapping[str, Tensor]) -> None:
        """Add entries under ``key`` (and to the disk file when there is a directory)."""
        self._use(key)
        self._memory.update((n, e.detach().to("cpu", torch.float32)) for n, e in embeddings.items())
        path = self.file(key)
        if path is None or not embeddings:
            return
        merged = {**self._read(key), **self._memory}
        names = list(merged)
        write_safetensors(path, {"embeddings": torch.stack([merged[n] for n in names])}, {"names": names})

    def _read(self, key: str) -> dict[str, Tensor]:
        path = self.file(key)
        if path is None or not path.is_file():
            return {}
        try:
            tensors, meta = read_safetensors(path)
            emb, names = tensors["embeddings"], meta["names"]
            if emb.dim() != 2 or len(names) != emb.shape[0]:
                raise FileFormatError(f"{len(names)} names for embeddings {list(emb.shape)}")
        except (FileFormatError, KeyError, TypeError, OSError) as err:
            logger.warning("ignoring unreadable text-embedding cache %s (%s)", path, err)
            return {}
        return dict(zip(names, emb))
