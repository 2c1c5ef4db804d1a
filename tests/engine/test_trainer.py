"""End to end on CPU: a toy dataset on disk -> train -> checkpoint -> "kill" -> resume -> same weights -> evaluate.

The dataset is written in the real on-disk format (JPEG images, 8-bit PNG label maps with 255 as
ignore) under a temporary ``$DETECTRON2_DATASETS`` and registered through the catalog; the real
loader, mapper (resize, crop, flip, colour jitter, padding), model, criterion, optimizer and
trainer run for a few iterations of a tiny model.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
import yaml

import san
from san.apps.train import build_parser
from san.apps.train import main as train_main
from san.data.io import read_label
from san.engine.evaluator import rle_decode
from san.engine.inference import evaluate
from san.engine.trainer import Trainer, last_checkpoint_path

from ..conftest import tiny_cfg
from .toy import CLASSES, datasets_yaml, final, metrics, toy_cfg


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_a")
    out = str(tmp / "out")
    Trainer(toy_cfg(str(tmp), out), log_period=1, window=1).train()
    return out


def test_training_lowers_the_loss_and_writes_checkpoints_and_metrics(uninterrupted):
    out = uninterrupted
    files = set(os.listdir(out))
    assert {"model_0000003.pth", "model_0000007.pth", "model_final.pth", "last_checkpoint", "metrics.json"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert last_checkpoint_path(out) == os.path.join(out, "model_final.pth")
    train = [m for m in metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in train] == list(range(10))
    first, last = np.mean([m["total_loss"] for m in train[:3]]), np.mean([m["total_loss"] for m in train[-3:]])
    assert last < 0.8 * first, (first, last)
    lr = [m["lr"] for m in train]
    assert lr == pytest.approx([2e-3 * (1 - i / 10) ** 0.9 for i in range(10)])
    assert all(m["time"] > 0 and m["data_time"] >= 0 for m in train)
    for m in train:  # window 1: the ETA is the iteration's own time times the iterations still to run
        assert m["eta_seconds"] == pytest.approx(m["time"] * (9 - m["iteration"]), rel=1e-12)
    assert train[-1]["eta_seconds"] == 0
    evals = [m for m in metrics(out) if "toy_val/sem_seg/mIoU" in m]
    assert [m["iteration"] for m in evals] == [4, 9]
    ckpt = final(out)
    assert ckpt["iteration"] == 9 and ckpt["seed"] == 7 and ckpt["world_size"] == 1
    assert {"model", "optimizer", "scheduler", "rng"} <= set(ckpt) and len(ckpt["rng"]) == 1
    assert ckpt["scheduler"]["last_epoch"] == 10
    assert ckpt["model"]["criterion.empty_weight"].tolist() == pytest.approx([1, 1, 1, 0.1])


def test_tensorboard_holds_the_scalars_of_metrics_json(uninterrupted):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(uninterrupted, size_guidance={ea.SCALARS: 0})
    acc.Reload()
    expected: dict[str, dict[int, float]] = {}
    for m in metrics(uninterrupted):
        for k, v in m.items():
            if k != "iteration":
                expected.setdefault(k, {})[m["iteration"]] = v
    assert {"total_loss", "lr", "eta_seconds", "toy_val/sem_seg/mIoU"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, series in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == series.keys(), tag
        for step, v in series.items():
            assert got[step] == pytest.approx(v, rel=1e-6, abs=1e-7), (tag, step)  # float32 in the events


def test_resume_after_a_kill_gives_the_uninterrupted_run_exactly(uninterrupted, tmp_path):
    out = str(tmp_path / "out")
    cfg = toy_cfg(str(tmp_path), out)
    Trainer(cfg, log_period=1, window=1).train(stop_at=6)  # "killed" during iteration 6: 4 and 5 are lost
    assert last_checkpoint_path(out) == os.path.join(out, "model_0000003.pth")
    resumed = Trainer(cfg, resume=True, log_period=1, window=1)
    assert resumed.start_iter == 4
    resumed.train()
    a, b = final(uninterrupted), final(out)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    # the loss curve after the resume equals the uninterrupted one (iterations 4..9, raw values)
    curve = {m["iteration"]: m["total_loss"] for m in metrics(uninterrupted) if "total_loss" in m}
    after = [m for m in metrics(out) if "total_loss" in m and m["iteration"] >= 4]
    assert [m["iteration"] for m in after][-6:] == list(range(4, 10))
    assert [m["total_loss"] for m in after][-6:] == [curve[i] for i in range(4, 10)]
    # resuming a finished run does nothing
    done = Trainer(cfg, resume=True)
    assert done.start_iter == 10 and done.train() == {}


def test_eval_only_command_line_reports_metrics(uninterrupted, tmp_path, capsys, caplog):
    cfg = toy_cfg(str(tmp_path), str(tmp_path / "unused"))
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(cfg.dump())
    out = tmp_path / "eval"
    weights = os.path.join(uninterrupted, "model_final.pth")
    assert (
        train_main(["--config-file", str(cfg_file), "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)])
        == 0
    )
    res = json.loads((out / "inference" / "toy_val.json").read_text())["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-red paint"} <= set(res)
    assert 0 <= res["mIoU"] <= 100 and 0 < res["pACC"] <= 100
    log = (out / "log.txt").read_text()
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in log
    assert (out / "config.yaml").is_file() and "toy_val" in (out / "config.yaml").read_text()
    assert "copypaste:" in capsys.readouterr().out
    assert not (out / "inference" / "toy_val").exists()  # no predictions dumped unless asked
    # the run's handlers do not cut library loggers off from the caller's (root) handlers
    with caplog.at_level(logging.WARNING):
        logging.getLogger("san.inference.vocabulary").warning("after the run")
    assert "after the run" in caplog.text


def _label_maps(dumped: list[dict]) -> dict[str, np.ndarray]:
    """Per image, the label map the dumped RLE segments describe (each pixel must be covered exactly once)."""
    maps: dict[str, np.ndarray] = {}
    cover: dict[str, np.ndarray] = {}
    for d in dumped:
        mask = rle_decode(d["segmentation"])
        name = d["file_name"]
        maps.setdefault(name, np.zeros(mask.shape, np.int64))[mask] = d["category_id"]
        cover[name] = cover.get(name, 0) + mask
    assert all((c == 1).all() for c in cover.values())
    return maps


@pytest.mark.parametrize("switch", [["--dump-predictions"], ["SAN_ENGINE.DUMP_PREDICTIONS", "True"]])
def test_eval_only_dumps_the_evaluated_predictions(uninterrupted, toy_root, tmp_path, switch):
    (tmp_path / "toy.yaml").write_text(toy_cfg(str(tmp_path), "unused").dump())
    out = tmp_path / "eval"
    weights = os.path.join(uninterrupted, "model_final.pth")
    flags, opts = (switch, []) if switch[0].startswith("--") else ([], switch)
    argv = ["--config-file", str(tmp_path / "toy.yaml"), "--eval-only", *flags]
    assert train_main([*argv, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out), *opts]) == 0
    assert "DUMP_PREDICTIONS: true" in (out / "config.yaml").read_text()
    dumped = json.loads((out / "inference" / "toy_val" / "sem_seg_predictions.json").read_text())
    maps = _label_maps(dumped)
    records = san.data.get_dataset("toy_val").list_samples()
    assert sorted(maps) == sorted(r["file_name"] for r in records)
    conf = np.zeros((3, 3), np.int64)  # [pred, gt] from the dump and the label files
    for r in records:
        gt = read_label(r["sem_seg_file_name"]).astype(np.int64)
        pred = maps[r["file_name"]]
        assert pred.shape == gt.shape and set(np.unique(pred)) <= {0, 1, 2}
        valid = gt != 255
        np.add.at(conf, (pred[valid], gt[valid]), 1)
    res = json.loads((out / "inference" / "toy_val.json").read_text())["sem_seg"]
    assert res["pACC"] == pytest.approx(100 * np.trace(conf) / conf.sum())
    for c, name in enumerate(CLASSES):
        union = conf[c].sum() + conf[:, c].sum() - conf[c, c]
        assert res[f"IoU-{name}"] == pytest.approx(100 * conf[c, c] / union), name


def test_command_line_flags_follow_the_official_train_net(capsys):
    args = build_parser().parse_args(
        ["--config-file", "c.yaml", "--num-gpus", "8", "--resume", "SOLVER.IMS_PER_BATCH", "16", "OUTPUT_DIR", "o"]
    )
    assert (args.config_file, args.num_gpus, args.resume, args.eval_only) == ("c.yaml", 8, True, False)
    assert (args.num_machines, args.machine_rank) == (1, 0) and args.dist_url.startswith("tcp://127.0.0.1:")
    assert args.opts == ["SOLVER.IMS_PER_BATCH", "16", "OUTPUT_DIR", "o"]
    for argv, message in [
        (["--num-gpus", "2", "--num-machines", "2", "--machine-rank", "2"], "0 <= --machine-rank < --num-machines"),
        (["--config-file", "no_such_config.yaml"], "neither a file nor a bundled config"),
        (["SOLVER.BASE_LRR", "0.1"], "unknown config key 'SOLVER.BASE_LRR'"),
        (
            ["SOLVER.BASE_LR", "0.1", "--precision", "fp32"],
            "--precision comes after the KEY VALUE config overrides, where only config keys go: put the flags first",
        ),
    ]:
        assert train_main(argv) == 2  # bad input: one line, exit code 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("san train: ") and message in err[0], err


def test_two_processes_from_the_command_line(toy_root, tmp_path, monkeypatch):
    """``san train --num-gpus 2`` on a CPU machine: two gloo processes, datasets from a YAML file."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    datasets = datasets_yaml(str(tmp_path / "toy_datasets.yaml"))
    cfg = toy_cfg(str(tmp_path), "unused", **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 2})
    (tmp_path / "toy.yaml").write_text(cfg.dump())
    out = tmp_path / "out"
    argv = ["--config-file", str(tmp_path / "toy.yaml"), "--num-gpus", "2", "--dist-url", "auto"]
    argv += ["--datasets-yaml", datasets, "OUTPUT_DIR", str(out)]
    assert train_main(argv) == 0
    ckpt = final(str(out))
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 1 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank its own stream
    lines = metrics(str(out))
    assert [m["iteration"] for m in lines if "total_loss" in m] == [1]
    assert 0 <= lines[-1]["toy_val/sem_seg/mIoU"] <= 100
    log = (out / "log.txt").read_text()
    assert "rank 0 of 2 (gloo)" in log and "copypaste: mIoU,fwIoU,mACC,pACC" in log


def test_autocast_precision_on_cpu(toy_root, tmp_path):
    cfg = toy_cfg(str(tmp_path), str(tmp_path / "out"), **{"SOLVER.AMP.ENABLED": True})
    assert Trainer(cfg).amp_dtype is None  # fp16 autocast needs a GPU: float32 on CPU
    cfg.defrost()
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    trainer = Trainer(cfg)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    losses = trainer.run_step(next(trainer.build_train_loader()))
    assert set(losses) == set(trainer.model.criterion.weight_dict) and all(np.isfinite(v) for v in losses.values())
    cfg.SOLVER.AMP.PRECISION = "int8"
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        Trainer(cfg)


def test_evaluate_needs_test_datasets(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(ValueError, match="DATASETS.TEST is empty"):
        evaluate(torch.nn.Identity(), cfg)


def test_one_step_clips_the_global_norm_over_every_trainable_parameter(tmp_path):
    """SOLVER.CLIP_GRADIENTS full_model: the optimizer steps on gradients whose global norm is the clip
    value, over exactly the trainable parameters, each scaled by the same factor."""
    from .ddp_worker import fixed_points, global_batch, record_step_grads

    clip = 1e-4
    cfg = tiny_cfg(tmp_path)
    opts = {"MODEL.DEVICE": "cpu", "SEED": 3, "SOLVER.IMS_PER_BATCH": 4, "OUTPUT_DIR": str(tmp_path / "o")}
    opts.update({"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model"})
    cfg.merge_from_list([x for kv in {**opts, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": clip}.items() for x in kv])
    trainer = Trainer(cfg)
    crit = trainer.model.criterion
    crit.rand_points = crit.matcher.rand_points = fixed_points
    trainer.forward_backward(global_batch())
    raw = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    seen = record_step_grads(trainer)
    trainer.run_step(global_batch())
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(seen) == set(raw) == trainable
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in seen.values()]))
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw.values()]))
    assert raw_norm > 100 * clip and norm.item() == pytest.approx(clip, rel=1e-4)
    factor = clip / raw_norm.item()
    for name, g in seen.items():
        torch.testing.assert_close(g, raw[name] * factor, rtol=1e-4, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_evaluation_on_the_label_path_gives_the_score_maps_confusion_matrix(uninterrupted, toy_root, tmp_path):
    """The evaluator's default label path (SAN.predict_labels) and the full [C, H, W] score maps of
    SAN.forward give the same confusion matrix on the toy validation set."""
    from san.data.loader import build_test_loader
    from san.engine.evaluator import SemSegEvaluator
    from san.engine.inference import _inference_on_dataset

    cfg = toy_cfg(str(tmp_path), str(tmp_path / "o"))
    model = san.build_model(cfg, os.path.join(uninterrupted, "model_final.pth")).eval()
    matrices = []
    for label_path in (True, False):
        evaluator = SemSegEvaluator.from_dataset("toy_val", distributed=False, boundary_iou=False)
        loader = build_test_loader(cfg, "toy_val")
        _inference_on_dataset(model, loader, evaluator, "toy_val", label_path=label_path)
        matrices.append(evaluator.conf_matrix.copy())
    assert matrices[0].sum() > 0 and (matrices[0].diagonal()[:-1] > 0).sum() >= 2  # several classes predicted right
    np.testing.assert_array_equal(matrices[0], matrices[1])


def test_the_trainer_writes_the_format_with_its_evaluation(toy_root, tmp_path):
    out = tmp_path / "out"
    cfg = toy_cfg(str(tmp_path), str(out), **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 2})
    cfg.SAN_ENGINE.SAVE_PRETRAINED = True
    results = Trainer(cfg, log_period=1, window=1).train()
    folder = out / "pretrained"
    loaded = san.SAN.from_pretrained(folder)
    weights = final(str(out))["model"]
    assert weights.keys() == loaded.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in weights.items())
    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    metric = card["model-index"][0]["results"][0]
    assert metric["dataset"]["name"] == "toy_val"
    assert metric["metrics"][0]["value"] == round(results["toy_val"]["sem_seg"]["mIoU"], 2)
