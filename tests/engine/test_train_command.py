"""``san train`` as a newcomer meets it: bad input is one line, said once whatever the process count, with
exit code 2 and nothing written; data-loader workers never outnumber the CPUs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from san.data.loader import build_test_loader, capped_workers
from san.devices import available_cpus

from .toy import datasets_yaml, toy_cfg


def _train(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "san", "train", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def _files(toy_root, tmp_path, **extra) -> list[str]:
    cfg = toy_cfg(str(tmp_path), "unused", **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 0, **extra})
    (tmp_path / "toy.yaml").write_text(cfg.dump())
    return ["--config-file", str(tmp_path / "toy.yaml"), "--datasets-yaml", datasets_yaml(str(tmp_path / "ds.yaml"))]


def test_too_few_images_for_two_processes_is_said_once_before_spawning(toy_root, tmp_path):
    files = _files(toy_root, tmp_path, **{"SOLVER.IMS_PER_BATCH": 8})
    out = tmp_path / "out"
    r = _train(tmp_path, *files, "--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("san train: the training data (toy_train) holds 6 images, fewer than one iteration")
    assert not out.exists()  # no config.yaml, no log.txt: nothing written
    assert "gloo" not in r.stderr  # checked before any process was started


def test_an_error_in_the_spawned_processes_is_printed_once_without_the_launchers_traceback(toy_root, tmp_path):
    files = _files(toy_root, tmp_path)
    missing = tmp_path / "no_such_weights.pth"
    argv = [*files, "--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(tmp_path / "o")]
    r = _train(tmp_path, *argv, "MODEL.WEIGHTS", str(missing))
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count(f"checkpoint not found: {missing}") == 1, r.stderr  # both processes met it; said once
    assert "Traceback" not in r.stderr and "ProcessExitedException" not in r.stderr, r.stderr


def test_loader_workers_are_capped_to_the_cpus_and_said_once(toy_root, tmp_path, caplog):
    cpus = available_cpus()
    cfg = toy_cfg(str(tmp_path), "unused", **{"DATALOADER.NUM_WORKERS": cpus + 3})
    with caplog.at_level(logging.INFO, logger="san"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            loader = build_test_loader(cfg, "toy_val")
            assert loader.num_workers == cpus
            next(iter(loader))
    assert not [w for w in seen if "worker processes in total" in str(w.message)]  # PyTorch's warning is gone
    said = [r for r in caplog.records if "NUM_WORKERS" in r.getMessage()]
    assert len(said) == 1 and f"using {cpus}" in said[0].getMessage()
    assert capped_workers(cpus) == cpus and capped_workers(0) == 0
