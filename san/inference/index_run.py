"""Building a :class:`~san.inference.index.RegionIndex` from a collection of image files: the
runner that ``san index`` runs (``san predict``'s :class:`~san.inference.runner.PredictionRun`, with
each image's encoding going into the index instead of pictures)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .index import RegionIndex
from .runner import OutputFolderGone, PredictionRun, RunReport

__all__ = ["IndexRun"]


class IndexRun(PredictionRun):
    """:class:`~san.inference.runner.PredictionRun` that adds each image's encoding to a
    :class:`RegionIndex` instead of writing pictures: the same decoding threads, batches, sharding and
    progress; images already in the index are skipped (a build resumes by running it again)."""

    command = "san index"

    def __init__(
        self,
        predictor: Any,
        index: RegionIndex,
        *,
        part_size: int = 256,
        batch_size: int = 1,
        workers: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            predictor,
            None,
            index.directory,
            meta={},
            batch_size=batch_size,
            workers=workers,
            resume=True,
            rank=rank,
            world_size=world_size,
        )
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}")
        self.index, self.part_size = index, part_size
        self._done = index.indexed()
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._buffer: list[tuple[str, str, Any]] = []

    @staticmethod
    def keys(files: Sequence[Path]) -> list[str]:
        """The images' keys: their zero-padded positions in the sorted input list (they name the parts)."""
        return [f"{i:08d}" for i in range(len(files))]

    def run(self, jobs: Sequence[tuple[Path, str]], *, progress: bool = True) -> RunReport:
        jobs = [(Path(os.path.abspath(p)), key) for p, key in jobs]
        self._paths = {key: str(p) for p, key in jobs}
        try:
            return super().run(jobs, progress=progress)
        except OutputFolderGone:
            self._buffer = []  # nowhere to put it
            raise
        finally:
            self._flush()  # what is encoded is kept, even after Ctrl-C

    def _flush(self) -> None:
        with self._lock:
            if self._buffer:
                self.index.write_part(self._buffer, rank=self.rank)
                self._buffer = []

    def complete(self, stem: str) -> bool | None:
        return True if self._paths.get(stem) in self._done else None

    def _remove_stale(self, stems: Sequence[str]) -> int:
        return self.index.remove_stale(self.rank, self.world_size)

    def _model(self, images: list[np.ndarray]) -> list[tuple]:
        return [(None, enc.to("cpu")) for enc in self.predictor.encode_batch(images, batch_size=self.batch_size)]

    def _write(self, stem: str, path: Path, image: np.ndarray, pred: Any, encoding: Any) -> None:
        with self._lock:  # writer threads share the buffer; a full one becomes a part
            self._buffer.append((stem, str(path), encoding))
            if len(self._buffer) >= self.part_size:
                self.index.write_part(self._buffer, rank=self.rank)
                self._buffer = []
