"""Two CPU processes (gloo, DistributedDataParallel) give the gradients of one process on the same global batch.

Why the comparison is exact up to float rounding, and what it needs:

- DDP averages the gradients of the processes; ``loss_mask``/``loss_dice`` are sums over masks
  divided by the number of masks *averaged over processes*, so their averaged gradients equal the
  one-process gradients on the whole batch for any split.
- ``loss_ce`` is a weighted mean over each process's own queries (as in the official code), so
  the two agree when every process holds the same number of target masks: the test's images each
  have two classes.
- The matcher and the loss draw random points; both draw from ``rand_points``, which the test
  replaces by a fixed point set that is the same for every image and mask, so the points do not
  depend on how the batch is split.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from san.engine import comm
from san.engine.trainer import Trainer
from san.modeling.criterion import num_masks_across_processes

from ..conftest import tiny_cfg

VOCAB = ["sky", "grass", "road", "car", "tree"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not stall when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fixed_points(rows: int, n: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.rand(n, 2, generator=g).to(device).expand(rows, -1, -1).clone()


def global_batch() -> list[dict]:
    """Four 64 x 64 images, each with two classes (a left and a right region)."""
    g = torch.Generator().manual_seed(5)
    batch = []
    for i in range(4):
        split = 16 + 8 * i
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[0, :, :split], masks[1, :, split:] = True, True
        image = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
        labels = torch.tensor([i % 5, (i + 2) % 5])
        batch.append({"image": image, "vocabulary": VOCAB, "instances": {"labels": labels, "masks": masks}})
    return batch


def make_trainer(tmp: str, out: str) -> Trainer:
    cfg = tiny_cfg(tmp)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SEED", 3, "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", out])
    trainer = Trainer(cfg)
    crit = trainer.model.criterion
    crit.rand_points = crit.matcher.rand_points = fixed_points
    return trainer


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        trainer = make_trainer(tmp, os.path.join(tmp, "ddp"))
        assert isinstance(trainer.ddp_model, torch.nn.parallel.DistributedDataParallel)
        per = 4 // world
        losses = trainer.forward_backward(global_batch()[rank * per : (rank + 1) * per])
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        uneven = [{"labels": torch.zeros(3 if rank == 0 else 1)}]  # 3 + 1 masks -> 2 per process
        out = {
            "grads": grads,
            "losses": comm.reduce_mean(losses, torch.device("cpu")),
            "num_masks": num_masks_across_processes(uneven, torch.device("cpu")),
            "weights_equal": comm.all_gather_object(float(trainer.model.side_adapter_network.query_embed.sum())),
        }
        if rank == 0:
            torch.save(out, os.path.join(tmp, "ddp.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    port = comm.find_free_port()
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    trainer = make_trainer(str(tmp_path), str(tmp_path / "single"))
    assert trainer.world_size == 1 and trainer.ddp_model is trainer.model
    losses = trainer.forward_backward(global_batch())
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}

    assert ddp["num_masks"] == 2.0
    assert ddp["weights_equal"][0] == ddp["weights_equal"][1]  # the same initial weights everywhere
    assert set(ddp["grads"]) == set(grads) and len(grads) > 50
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # the mask losses (sums / global num_masks) average to the one-process values; CE too (2 masks per image)
    for k, v in losses.items():
        assert ddp["losses"][k] == pytest.approx(v, rel=1e-5), k
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3  # non-trivial gradients were compared
