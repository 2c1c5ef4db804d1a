"""One loader everywhere: a checkpoint fine-tuned with another NUM_CLASSES loads through every way in
(``SANPredictor``, ``san predict``, ``san train --eval-only``, detectron2's checkpointer), and a
checkpoint of another architecture is refused by each of them with the same clear error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import san
from san.apps.predict import main as predict_main
from san.apps.train import main as train_main
from san.checkpoint import CheckpointError
from san.inference.predictor import SANPredictor

from .conftest import tiny_cfg
from .engine.toy import CLASSES, datasets_yaml, write_toy_split

MISMATCH = "checkpoint does not match the model"
HINT = "splits CLIP after 3 blocks, the model after 2"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny model fine-tuned on 3 classes, the 5-class config it is used with, another architecture."""
    tmp = tmp_path_factory.mktemp("loaders")
    torch.manual_seed(3)
    tuned = san.build_model(tiny_cfg(tmp, num_classes=3))
    san.save_checkpoint(tuned, tmp / "tuned.pth")
    other = tiny_cfg(tmp)
    other.merge_from_list(["MODEL.SAN.FEATURE_LAST_LAYER_IDX", 3, "MODEL.SIDE_ADAPTER.FUSION_MAP", ["0->0", "3->1"]])
    san.save_checkpoint(san.build_model(other), tmp / "other.pth")
    (tmp / "tiny.yaml").write_text(tiny_cfg(tmp).dump())  # NUM_CLASSES 5
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp / "in.png")
    write_toy_split(str(tmp / "datasets"), "val", 2, seed=1)
    datasets_yaml(str(tmp / "datasets.yaml"))
    paths = {name: tmp / f"{name}.pth" for name in ("tuned", "other")}
    return {"dir": tmp, "yaml": tmp / "tiny.yaml", "state": tuned.state_dict(), **paths}


def _same_side_adapter(model: torch.nn.Module, state: dict) -> bool:
    return torch.equal(model.side_adapter_network.query_embed, state["side_adapter_network.query_embed"])


def test_predictor(files):
    predictor = SANPredictor.from_pretrained(str(files["yaml"]), weights=files["tuned"], device="cpu")
    assert _same_side_adapter(predictor.model, files["state"])
    assert predictor.model.criterion.empty_weight.numel() == 6  # the config's 5 classes + no object
    with pytest.raises(CheckpointError, match=f"{MISMATCH}.*{HINT}"):
        SANPredictor.from_pretrained(str(files["yaml"]), weights=files["other"], device="cpu")


def test_san_predict(files, capsys):
    out = files["dir"] / "predicted"
    base = ["--input", str(files["dir"] / "in.png"), "--vocabulary", "cat, dog", "--config-file", str(files["yaml"])]
    assert predict_main([*base, "--weights", str(files["tuned"]), "--output", str(out)]) == 0
    assert (out / "in_labels.png").is_file()
    assert predict_main([*base, "--weights", str(files["other"]), "--output", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert MISMATCH in err and HINT in err


def test_san_train_eval_only(files, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(files["dir"] / "datasets"))
    args = ["--config-file", str(files["yaml"]), "--datasets-yaml", str(files["dir"] / "datasets.yaml"), "--eval-only"]
    opts = (
        "MODEL.DEVICE cpu DATASETS.TEST ('toy_val',) INPUT.FORMAT RGB INPUT.MIN_SIZE_TEST 64 DATALOADER.NUM_WORKERS 0"
    )
    opts = opts.split()
    out = files["dir"] / "eval"
    train_main([*args, *opts, "OUTPUT_DIR", str(out), "MODEL.WEIGHTS", str(files["tuned"])])
    assert any((out / "inference").iterdir())  # the evaluation ran and wrote its results
    assert train_main([*args, *opts, "OUTPUT_DIR", str(out / "x"), "MODEL.WEIGHTS", str(files["other"])]) == 2
    assert re.search(f"san train: {MISMATCH}.*{HINT}", capsys.readouterr().err)
    assert len(CLASSES) == 3


def test_detectron2_checkpointer(files):
    pytest.importorskip("detectron2", reason="detectron2 is not installed (CI installs it)")
    from detectron2.modeling import build_model as d2_build_model

    import san.integrations.detectron2 as sd2

    cfg = sd2.add_san_config(sd2.get_san_cfg())
    cfg.merge_from_file(str(files["yaml"]))
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "SAN", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(files["tuned"])])
    model = d2_build_model(cfg)
    sd2.SANCheckpointer(model).load(str(files["tuned"]))
    assert _same_side_adapter(model, files["state"])
    with pytest.raises(CheckpointError, match=f"{MISMATCH}.*{HINT}"):
        sd2.SANCheckpointer(model).load(str(files["other"]))
    assert os.path.isfile(files["other"])
