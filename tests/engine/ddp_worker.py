"""One process of the two-process gradient test, started by ``torchrun`` (see test_distributed.py).

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.engine.ddp_worker OUT_DIR``
(from the repository root): each rank builds the trainer (which joins the gloo group torchrun
describes), runs forward/backward on its half of :func:`global_batch`, and rank 0 saves the
DDP-averaged gradients, reduced losses and a few cross-process checks to ``OUT_DIR/ddp.pt``.
"""

from __future__ import annotations

import os
import sys

import torch

from san.engine import comm
from san.engine.trainer import Trainer
from san.modeling.criterion import num_masks_across_processes

from ..conftest import tiny_cfg

VOCAB = ["sky", "grass", "road", "car", "tree"]
GLOBAL_BATCH = 4


def record_step_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Copies of the gradients the optimizer's next steps see (after clipping), by parameter name."""
    seen: dict[str, torch.Tensor] = {}
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        seen.update((n, p.grad.clone()) for n, p in trainer.model.named_parameters() if p.grad is not None)
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step
    return seen


def fixed_points(rows: int, n: int, device: torch.device) -> torch.Tensor:
    """The same point set for every image and mask (stands in for ``rand_points``)."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(n, 2, generator=g).to(device).expand(rows, -1, -1).clone()


def global_batch() -> list[dict]:
    """Four 64 x 64 images, each with two classes (a left and a right region)."""
    g = torch.Generator().manual_seed(5)
    batch = []
    for i in range(GLOBAL_BATCH):
        split = 16 + 8 * i
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[0, :, :split], masks[1, :, split:] = True, True
        image = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
        labels = torch.tensor([i % 5, (i + 2) % 5])
        batch.append({"image": image, "vocabulary": VOCAB, "instances": {"labels": labels, "masks": masks}})
    return batch


def make_trainer(tmp: str, out: str, accumulation: int = 1) -> Trainer:
    """The tiny model's trainer (seed 3, global batch 4) with fixed point sampling."""
    cfg = tiny_cfg(tmp)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SEED", 3, "SOLVER.IMS_PER_BATCH", GLOBAL_BATCH, "OUTPUT_DIR", out])
    cfg.SOLVER.ACCUMULATION_STEPS = accumulation
    trainer = Trainer(cfg)
    crit = trainer.model.criterion
    crit.rand_points = crit.matcher.rand_points = fixed_points
    return trainer


def main(out_dir: str) -> None:
    """This rank's part of the test (RANK, WORLD_SIZE, MASTER_ADDR/PORT come from torchrun)."""
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tmp = os.path.join(out_dir, f"rank{rank}")
    os.makedirs(tmp, exist_ok=True)
    try:
        trainer = make_trainer(tmp, os.path.join(out_dir, "ddp"))
        per = GLOBAL_BATCH // world
        losses = trainer.forward_backward(global_batch()[rank * per : (rank + 1) * per])
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        uneven = [{"labels": torch.zeros(3 if rank == 0 else 1)}]  # 3 + 1 masks -> 2 per process
        result = {
            "world_size": trainer.world_size,
            "backend": torch.distributed.get_backend(),
            "is_ddp": isinstance(trainer.ddp_model, torch.nn.parallel.DistributedDataParallel),
            "grads": grads,
            "losses": comm.reduce_mean(losses, torch.device("cpu")),
            "num_masks": num_masks_across_processes(uneven, torch.device("cpu")),
            "weights": comm.all_gather_object(float(trainer.model.side_adapter_network.query_embed.sum())),
        }
        if rank == 0:
            torch.save(result, os.path.join(out_dir, "ddp.pt"))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
