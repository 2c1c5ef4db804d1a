"""Loaders: seeded order, exact resume at start_iter, rank sharding of train and test data."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from san.data.loader import TrainStream, build_test_loader, build_train_loader, shard_range

from .conftest import small_cfg


def _take(it, n):
    return [
        [(os.path.basename(x["file_name"]), x["image"], x["sem_seg"]) for x in batch]
        for batch in itertools.islice(it, n)
    ]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y)
        and all(p[0] == q[0] and torch.equal(p[1], q[1]) and torch.equal(p[2], q[2]) for p, q in zip(x, y))
        for x, y in zip(a, b)
    )


def test_same_seed_same_batches_and_every_epoch_is_a_permutation(tiny_dataset):
    cfg = small_cfg(tiny_dataset)
    a = _take(build_train_loader(cfg, seed=3), 3)
    assert _same(a, _take(build_train_loader(cfg, seed=3), 3))
    assert not _same(a, _take(build_train_loader(cfg, seed=4), 3))
    assert all(len(b) == 4 and b[0][1].shape == (3, 32, 32) for b in a)
    stream = TrainStream(6, seed=3)
    for epoch in range(3):
        assert sorted(stream.index(epoch * 6 + k) for k in range(6)) == list(range(6))
    first = [n for b in a for n, _, _ in b][:6]
    assert sorted(first) == [f"im{i:02d}.jpg" for i in range(6)]


def test_resume_at_start_iter_gives_the_uninterrupted_batches(tiny_dataset):
    cfg = small_cfg(tiny_dataset)
    full = _take(build_train_loader(cfg, seed=7), 5)
    assert _same(_take(build_train_loader(cfg, seed=7, start_iter=3), 2), full[3:])
    cfg.merge_from_list(["SEED", 7, "DATALOADER.NUM_WORKERS", 2])  # seed from the config; worker processes
    assert _same(_take(build_train_loader(cfg, start_iter=2), 3), full[2:])


def test_ranks_split_each_global_batch(tiny_dataset):
    cfg = small_cfg(tiny_dataset)
    single = _take(build_train_loader(cfg, seed=11), 3)
    ranks = [_take(build_train_loader(cfg, seed=11, rank=r, world_size=2), 3) for r in range(2)]
    for it in range(3):
        assert all(len(ranks[r][it]) == 2 for r in range(2))
        merged = sorted(ranks[0][it] + ranks[1][it], key=lambda p: (p[0], p[1].sum().item()))
        expected = sorted(single[it], key=lambda p: (p[0], p[1].sum().item()))
        assert _same([merged], [expected])  # same samples, same augmentations
    with pytest.raises(
        ValueError, match=r"IMS_PER_BATCH .4. must be a positive multiple of processes x accumulation steps .3 x 1."
    ):
        build_train_loader(cfg, rank=0, world_size=3)


def test_test_loader_shards_are_disjoint_and_complete(tiny_dataset):
    cfg = small_cfg(tiny_dataset)
    seen = []
    for r in range(4):
        batches = list(build_test_loader(cfg, tiny_dataset, rank=r, world_size=4))
        assert all(len(b) == 1 for b in batches)
        seen += [os.path.basename(b[0]["file_name"]) for b in batches]
    assert seen == [f"im{i:02d}.jpg" for i in range(6)]
    assert [len(shard_range(6, r, 4)) for r in range(4)] == [2, 2, 1, 1]
