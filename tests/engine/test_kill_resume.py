"""``san train`` killed with SIGKILL after a checkpoint, then ``--resume``: the same final state and the
same logged (smoothed) losses as a run that was never stopped. Real processes, the real command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .toy import datasets_yaml, final, metrics, toy_cfg

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

MAX_ITER, PERIOD = 12, 4
COMPARED = ("total_loss", "loss_ce", "loss_mask", "loss_dice", "lr")


def _command(tmp) -> list[str]:
    """``python -m san train`` on the toy dataset: 12 iterations, checkpoints every 4, every iteration logged."""
    cfg = toy_cfg(
        str(tmp),
        "unused",
        **{
            "SOLVER.MAX_ITER": MAX_ITER,
            "SOLVER.CHECKPOINT_PERIOD": PERIOD,
            "TEST.EVAL_PERIOD": 0,
            "SAN_ENGINE.LOG_PERIOD": 1,
            "SAN_ENGINE.METRICS_WINDOW": 6,
        },
    )
    (tmp / "toy.yaml").write_text(cfg.dump())
    yaml = datasets_yaml(str(tmp / "toy_datasets.yaml"))
    return [sys.executable, "-m", "san", "train", "--config-file", str(tmp / "toy.yaml"), "--datasets-yaml", yaml]


def _start(cmd: list[str], root: str, log) -> subprocess.Popen:
    env = {**os.environ, "DETECTRON2_DATASETS": root, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())


def _wait(proc: subprocess.Popen, log_path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, log_path.read_text()[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(toy_root, tmp_path):
    a_out, b_out = str(tmp_path / "a"), str(tmp_path / "b")
    cmd = _command(tmp_path)
    with open(tmp_path / "a.log", "w") as a_log, open(tmp_path / "b.log", "w") as b_log:
        a = _start([*cmd, "OUTPUT_DIR", a_out], toy_root, a_log)  # uninterrupted, alongside the one to kill
        b = _start([*cmd, "OUTPUT_DIR", b_out], toy_root, b_log)
        marker = os.path.join(b_out, "last_checkpoint")
        deadline = time.monotonic() + 240
        while not os.path.exists(marker) and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.poll() is None, f"the run ended before it could be killed:\n{(tmp_path / 'b.log').read_text()}"
        os.kill(b.pid, signal.SIGKILL)
        assert b.wait(timeout=60) == -signal.SIGKILL
        assert not os.path.exists(os.path.join(b_out, "model_final.pth"))
        with open(marker) as f:
            resumed_from = int(f.read().strip()[len("model_") : -len(".pth")])
        assert resumed_from % PERIOD == PERIOD - 1 and resumed_from < MAX_ITER - 1
        killed_lines = len(metrics(b_out))
        c = _start([*cmd, "--resume", "OUTPUT_DIR", b_out], toy_root, b_log)
        _wait(a, tmp_path / "a.log")
        _wait(c, tmp_path / "b.log")

    ref, got = final(a_out), final(b_out)
    assert ref["iteration"] == got["iteration"] == MAX_ITER - 1
    assert ref["model"].keys() == got["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert ref["optimizer"]["param_groups"] == got["optimizer"]["param_groups"]
    for i, state in ref["optimizer"]["state"].items():
        assert all(torch.equal(state[k], got["optimizer"]["state"][i][k]) for k in state), i
    assert ref["scheduler"] == got["scheduler"]
    for k in COMPARED[:-1]:  # the checkpointed smoothing window
        assert ref["metrics"]["history"][k] == got["metrics"]["history"][k], k

    curve = {m["iteration"]: m for m in metrics(a_out)}
    assert sorted(curve) == list(range(MAX_ITER))
    lines = metrics(b_out)
    after = [m["iteration"] for m in lines[killed_lines:]]
    assert after == list(range(resumed_from + 1, MAX_ITER))  # the resumed run logs from the checkpoint on
    for m in lines:  # before the kill and after the resume: every logged (median-smoothed) value as in run a
        assert {k: m[k] for k in COMPARED} == {k: curve[m["iteration"]][k] for k in COMPARED}, m["iteration"]
    assert curve[MAX_ITER - 1]["total_loss"] < curve[0]["total_loss"]
