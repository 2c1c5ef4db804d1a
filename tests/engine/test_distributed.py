"""``torchrun --nproc_per_node 2`` on CPU (gloo, DistributedDataParallel; the workers are ddp_worker.py)
gives the gradients of one process on the same global batch.

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
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .ddp_worker import global_batch, make_trainer, record_step_grads

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_match_one_process_on_the_same_global_batch(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tests.engine.ddp_worker",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert (ddp["world_size"], ddp["backend"], ddp["is_ddp"]) == (2, "gloo", True)

    trainer = make_trainer(str(tmp_path), str(tmp_path / "single"))
    assert trainer.world_size == 1 and trainer.ddp_model is trainer.model
    losses = trainer.forward_backward(global_batch())
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}

    assert ddp["num_masks"] == 2.0
    assert ddp["weights"][0] == ddp["weights"][1]  # the same initial weights everywhere
    assert set(ddp["grads"]) == set(grads) and len(grads) > 50
    for name, g in grads.items():
        # float32 sums in another order differ by ~1e-7 of a tensor's norm (measured: at most 3.7e-7 here);
        # 1e-5 of the norm leaves a margin of 27x and still catches any real difference
        err = (ddp["grads"][name] - g).norm().item()
        assert err <= 1e-5 * g.norm().item() + 1e-12, f"{name}: |diff| {err:.3g} vs |g| {g.norm().item():.3g}"
    # the mask losses (sums / global num_masks) average to the one-process values; CE too (2 masks per image)
    for k, v in losses.items():  # means over 12544 points summed in another order: measured <= 7e-8 relative
        assert ddp["losses"][k] == pytest.approx(v, rel=1e-5), k
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3  # non-trivial gradients were compared


@pytest.mark.slow
def test_one_process_accumulating_two_micro_batches_gives_the_two_process_gradients(tmp_path):
    """SOLVER.ACCUMULATION_STEPS 2 in one process: the gradients the optimizer steps on are DDP's
    averaged gradients of two processes (each micro-batch one process's images, 1/2 of its gradient,
    the mask losses normalised by the whole iteration's target count)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tests.engine.ddp_worker", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    trainer = make_trainer(str(tmp_path), str(tmp_path / "acc"), accumulation=2)
    seen = record_step_grads(trainer)
    losses = trainer.run_step(global_batch())
    assert set(seen) == set(ddp["grads"])
    for name, g in seen.items():
        err = (ddp["grads"][name] - g).norm().item()
        assert err <= 1e-5 * g.norm().item() + 1e-12, f"{name}: |diff| {err:.3g} vs |g| {g.norm().item():.3g}"
    for k, v in losses.items():  # means over 12544 points summed in another order: measured <= 7e-8 relative
        assert ddp["losses"][k] == pytest.approx(v, rel=1e-5), k
