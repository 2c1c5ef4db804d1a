"""Gradient accumulation is the run of more processes: W processes x K micro-batches (SOLVER.ACCUMULATION_STEPS)
equal W x K processes of one micro-batch, iteration by iteration (toy dataset, tiny model, gloo on CPU).

Why it can be compared: the same images in the same order and augmentation (stream positions of the
virtual ranks), the same random points (each micro-batch in the RNG stream of the process it stands for),
the mask losses normalised by the whole iteration's target count, gradients averaged over all W x K
micro-batches. What differs is the order of float additions (a micro-batch's gradient accumulated in
``.grad`` vs summed by DDP's all-reduce), so weights agree to float noise, not bit for bit; the tolerance
below is derived from that noise as measured (see TOL).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from san.apps.train import main as train_main
from san.config import ConfigError
from san.engine.trainer import Trainer, check_batch

from .toy import datasets_yaml, final, metrics, toy_cfg

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

ITERS = 4
# measured after 4 iterations: 1x2 vs 2x1 bit-identical (two gradients summed in the same order);
# 1x4 vs 2x2 weights within 5.3e-7 of each tensor's norm, logged losses within 6.7e-8 relative.
# 1e-5 leaves a margin of ~20x on the weights and still sees any real difference (another image, other
# points, another normalisation change iteration 0's losses by more than 1e-4)
# Relative tolerance of runs that sum the same gradients in another order (micro-batches against processes):
# a float32 sum of n terms in another order moves by at most n x eps32 of its terms' magnitude; over the run's
# steps the losses measured <= 9e-8 apart (relative) under ATEN_CPU_CAPABILITY=default and avx512, one thread
# (100x below)
TOL = 1e-5


def _cfg(tmp_path, out, k: int, **extra):
    opts = {"SOLVER.IMS_PER_BATCH": 4, "SOLVER.MAX_ITER": ITERS, "SOLVER.ACCUMULATION_STEPS": k}
    opts.update({"TEST.EVAL_PERIOD": 0, "SOLVER.CHECKPOINT_PERIOD": 2, "SAN_ENGINE.LOG_PERIOD": 1})
    return toy_cfg(str(tmp_path), str(out), **{**opts, **extra, "SAN_ENGINE.METRICS_WINDOW": 1})


def _in_process(tmp_path, name: str, k: int) -> str:
    out = tmp_path / name
    Trainer(_cfg(tmp_path, out, k), log_period=1, window=1).train()
    return str(out)


def _two_processes(tmp_path, name: str, k: int, monkeypatch) -> str:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / name
    cfg = _cfg(tmp_path, "unused", k)
    (tmp_path / f"{name}.yaml").write_text(cfg.dump())
    argv = ["--config-file", str(tmp_path / f"{name}.yaml"), "--num-gpus", "2", "--dist-url", "auto"]
    argv += ["--datasets-yaml", datasets_yaml(str(tmp_path / "toy_datasets.yaml")), "OUTPUT_DIR", str(out)]
    assert train_main(argv) == 0
    return str(out)


def _losses(out: str) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k.startswith("loss")} for m in metrics(out) if "total_loss" in m]


def _same_run(a: str, b: str, tol: float = TOL, exact: bool = False) -> None:
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == ITERS and set(la[0]) == set(lb[0])
    if exact:
        assert la == lb and all(torch.equal(v, final(b)["model"][k]) for k, v in final(a)["model"].items())
    assert la[0] == pytest.approx(lb[0], rel=1e-6)  # iteration 0: the same weights, images, points (8 eps32)
    for it, (x, y) in enumerate(zip(la, lb)):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=tol, abs=1e-7), (it, key)
    wa, wb = final(a)["model"], final(b)["model"]
    for name, t in wa.items():
        if t.is_floating_point() and torch.isfinite(t).all():  # (the causal mask holds -inf)
            err = (t - wb[name]).norm().item()
            assert err <= tol * t.norm().item() + 1e-9, f"{name}: |diff| {err:.3g} vs |w| {t.norm().item():.3g}"
    assert final(a)["iteration"] == final(b)["iteration"] == ITERS - 1


@pytest.mark.slow
def test_one_process_two_micro_batches_is_the_two_process_run(toy_root, tmp_path, monkeypatch):
    accumulated = _in_process(tmp_path, "1x2", 2)
    two = _two_processes(tmp_path, "2x1", 1, monkeypatch)
    _same_run(accumulated, two, exact=True)  # the same additions in the same order: bit for bit
    ckpt = final(accumulated)
    assert ckpt["accumulation"] == 2 and ckpt["world_size"] == 1 and len(ckpt["rng"]) == 2  # one stream per micro-batch
    plain = _in_process(tmp_path, "1x1", 1)  # the same 4 images as ONE process: another run
    assert _losses(plain)[0] != pytest.approx(_losses(accumulated)[0], rel=1e-4)


@pytest.mark.slow
def test_one_process_four_micro_batches_is_two_processes_of_two(toy_root, tmp_path, monkeypatch):
    _same_run(_in_process(tmp_path, "1x4", 4), _two_processes(tmp_path, "2x2", 2, monkeypatch))


def test_kill_and_resume_in_an_accumulated_run_equals_the_uninterrupted_run(toy_root, tmp_path):
    whole = _in_process(tmp_path, "whole", 2)
    out = tmp_path / "killed"
    cfg = _cfg(tmp_path, out, 2)
    Trainer(cfg, log_period=1, window=1).train(stop_at=3)  # killed in iteration 3: checkpoint after 1 (0-based)
    resumed = Trainer(cfg, resume=True, log_period=1, window=1)
    assert resumed.start_iter == 2
    resumed.train()
    a, b = final(whole), final(str(out))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bit for bit: the same process, the same order
    curve = {i: m for i, m in enumerate(_losses(whole))}
    after = [m for m in metrics(str(out)) if "total_loss" in m and m["iteration"] >= 2]
    assert [{k: v for k, v in m.items() if k.startswith("loss")} for m in after][-2:] == [curve[2], curve[3]]


def test_logged_iterations_count_iterations_not_micro_batches(toy_root, tmp_path):
    out = _in_process(tmp_path, "count", 2)
    assert [m["iteration"] for m in metrics(out) if "total_loss" in m] == list(range(ITERS))
    assert sorted(os.listdir(out)).count("model_0000001.pth") == 1  # CHECKPOINT_PERIOD 2: after iterations 1 and 3


@pytest.mark.parametrize(
    ("images", "k", "world", "match"),
    [
        (4, 3, 1, "does not split into 1 process.es. x 3 accumulation step.s.: 1.33333 images"),
        (4, 4, 2, "does not split into 2 process.es. x 4 accumulation step.s.: 0.5 images"),  # a micro-batch of 0
        (4, 0, 1, "ACCUMULATION_STEPS must be >= 1"),
        (64, 2, 1, "holds 6 images, fewer than one iteration of SOLVER.IMS_PER_BATCH=64"),
    ],
)
def test_bad_batch_settings_are_refused_before_any_model(toy_root, tmp_path, images, k, world, match, capsys):
    cfg = _cfg(tmp_path, tmp_path / "o", k, **{"SOLVER.IMS_PER_BATCH": images})
    with pytest.raises(ConfigError, match=match):
        check_batch(cfg, world)
    if world == 1:  # the command line says it in one line, exit code 2, and writes nothing
        (tmp_path / "bad.yaml").write_text(cfg.dump())
        ds = datasets_yaml(str(tmp_path / "ds.yaml"))
        argv = ["--config-file", str(tmp_path / "bad.yaml"), "--datasets-yaml", ds, "OUTPUT_DIR", str(tmp_path / "o")]
        assert train_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
        assert not (tmp_path / "o").exists()  # no config.yaml, no log.txt
