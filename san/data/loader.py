"""Data loaders: a seeded, rank-sharded, resumable infinite training stream and sharded test loaders.

Training: the records of every ``DATASETS.TRAIN`` dataset form one list. A global stream of indices
concatenates one permutation of that list per epoch (epoch ``e`` shuffled by ``seed`` and ``e``);
rank ``r`` of ``W`` takes stream positions ``r, r + W, r + 2W, ...`` (detectron2's TrainingSampler
interleaving), in batches of ``SOLVER.IMS_PER_BATCH // W``. So iteration ``i`` of all ranks
together covers stream positions ``[i * B, (i + 1) * B)`` with ``B`` the global batch, whatever
the number of processes, and each sample's augmentation draws from a generator seeded by ``seed``
and its stream position. Hence the same seed gives the same batches, a one-process run sees the
same samples (with the same augmentations) as a many-process run of the same global batch, and
``start_iter=k`` yields exactly the batches an uninterrupted run yields from iteration ``k`` on,
without replaying anything.

Test: each rank gets a contiguous, disjoint shard of the dataset (detectron2's InferenceSampler),
one image per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from san.devices import available_cpus

from .catalog import get_dataset
from .mapper import SemanticTestMapper, SemanticTrainMapper

__all__ = ["TrainStream", "build_test_loader", "build_train_loader", "load_records", "shard_range"]

logger = logging.getLogger(__name__)


def load_records(dataset_names: list[str] | tuple[str, ...] | str, root: str | None = None) -> list[dict[str, Any]]:
    """Records of one or more catalog datasets, each tagged with its ``dataset_name``."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("no dataset named (DATASETS.TRAIN / DATASETS.TEST is empty)")
    records = []
    for name in names:
        samples = get_dataset(name).list_samples(root)
        logger.info("dataset %s: %d images", name, len(samples))
        records.extend({**s, "dataset_name": name} for s in samples)
    return records


class TrainStream:
    """Stream positions -> record indices: one seeded permutation per epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self._cache: tuple[int, np.ndarray] | None = None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.size)
        if not self.shuffle:
            return offset
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, epoch, 0x5A4]).permutation(self.size))
        return int(self._cache[1][offset])

    def sample_rng(self, position: int) -> np.random.Generator:
        """The augmentation generator of the sample at ``position`` (same for any world size)."""
        return np.random.default_rng([self.seed, int(position), 0xA06])


class _BatchPositions(torch.utils.data.Sampler):
    """Infinite batches of stream positions of one rank, from iteration ``start_iter`` on.

    With ``accumulation`` K, rank ``r`` stands for the K virtual ranks ``r * K + k`` of a run with
    ``world_size * K`` processes: its batch of an iteration is their K micro-batches, one after the
    other, each of ``batch_size`` positions taken as that virtual rank would take them.
    """

    def __init__(self, batch_size: int, rank: int, world_size: int, start_iter: int, accumulation: int = 1) -> None:
        self.batch_size, self.rank, self.world_size, self.start_iter = batch_size, rank, world_size, start_iter
        self.accumulation = accumulation

    def __iter__(self) -> Iterator[list[int]]:
        it, k_all = self.start_iter, self.accumulation
        virtual_world = self.world_size * k_all
        while True:
            first = it * self.batch_size
            yield [
                (first + j) * virtual_world + self.rank * k_all + k
                for k in range(k_all)
                for j in range(self.batch_size)
            ]
            it += 1


class _TrainDataset(Dataset):
    def __init__(self, records: list[dict[str, Any]], stream: TrainStream, mapper: Callable) -> None:
        self.records, self.stream, self.mapper = records, stream, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> dict[str, Any]:
        record = self.records[self.stream.index(position)]
        return self.mapper(dict(record), rng=self.stream.sample_rng(position))


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _shared_seed(seed: int | None, cfg_seed: int) -> int:
    if seed is not None:
        return int(seed)
    if cfg_seed is not None and int(cfg_seed) >= 0:
        return int(cfg_seed)
    value = int(np.random.SeedSequence().entropy % (2**31))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)  # every rank must shard the same stream
        value = int(box[0])
    logger.info("data seed %d (SEED < 0: drawn at random)", value)
    return value


_said_capped: set[tuple[int, int]] = set()


def capped_workers(requested: int) -> int:
    """``DATALOADER.NUM_WORKERS`` limited to the CPUs this process may use (PyTorch warns about more,
    and they only compete for the same cores); the cap is logged once per process and value."""
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _said_capped:
        _said_capped.add((requested, cpus))
        logger.info(
            "DATALOADER.NUM_WORKERS %d: this machine has %d CPUs for this process; using %d", requested, cpus, cpus
        )
    return cpus


def build_train_loader(
    cfg: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
    start_iter: int = 0,
    mapper: Callable | None = None,
    records: list[dict[str, Any]] | None = None,
    accumulation: int = 1,
) -> Iterator[list[dict[str, Any]]]:
    """Infinite iterator of this rank's batches (lists of mapped dicts) from iteration ``start_iter``.

    Per-rank batch = ``SOLVER.IMS_PER_BATCH // world_size``: with ``accumulation`` K, K micro-batches
    of ``IMS_PER_BATCH // (world_size * K)`` images in a row, each the batch of one process of a
    ``world_size * K``-process run (:class:`_BatchPositions`); ``DATALOADER.NUM_WORKERS`` worker
    processes (0: in this process). ``seed`` defaults to ``cfg.SEED`` (random when negative; then
    shared across ranks when torch.distributed is initialised). A custom ``mapper`` is called as
    ``mapper(record, rng=numpy.random.Generator)`` and must draw its randomness from ``rng``.
    """
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    virtual = world_size * int(accumulation)
    if accumulation < 1 or total < virtual or total % virtual:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of processes x accumulation steps "
            f"({world_size} x {accumulation})"
        )
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    records = load_records(cfg.DATASETS.TRAIN) if records is None else records
    stream = TrainStream(len(records), _shared_seed(seed, cfg.get("SEED", -1)))
    mapper = mapper if mapper is not None else SemanticTrainMapper(cfg)
    loader = DataLoader(
        _TrainDataset(records, stream, mapper),
        batch_sampler=_BatchPositions(total // virtual, rank, world_size, start_iter, accumulation),
        num_workers=capped_workers(int(cfg.DATALOADER.NUM_WORKERS)),
        collate_fn=_as_list,
        persistent_workers=False,
    )
    return iter(loader)


def shard_range(total: int, rank: int, world_size: int) -> range:
    """The contiguous slice of ``range(total)`` that ``rank`` evaluates (sizes differ by at most 1)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class _ListDataset(Dataset):
    def __init__(self, records: list[dict[str, Any]], mapper: Callable) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.mapper(dict(self.records[i]))


def build_test_loader(
    cfg: Any,
    dataset_name: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    mapper: Callable | None = None,
    num_workers: int | None = None,
) -> DataLoader:
    """Batches of one mapped test image; rank ``r`` gets its contiguous shard of the dataset."""
    records = load_records(dataset_name)
    shard = shard_range(len(records), rank, world_size)
    mapper = mapper if mapper is not None else SemanticTestMapper(cfg, dataset_name)
    workers = capped_workers(int(cfg.DATALOADER.NUM_WORKERS) if num_workers is None else int(num_workers))
    return DataLoader(
        _ListDataset([records[i] for i in shard], mapper),
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
    )
