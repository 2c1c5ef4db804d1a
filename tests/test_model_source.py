"""``--weights`` resolution: official names, model folders, training folders and checkpoints."""

from __future__ import annotations

import pytest

from san.model_source import DEFAULT_CONFIG, locate_model


def _run_folder(path, last="model_final.pth", pretrained=True):
    path.mkdir()
    (path / "config.yaml").write_text("SEED: 1\n")
    (path / "last_checkpoint").write_text(last)
    (path / last).write_bytes(b"")
    (path / "model_0000004.pth").write_bytes(b"")
    if pretrained:
        (path / "pretrained").mkdir()
        (path / "pretrained" / "config.yaml").write_text("SEED: 1\n")
        (path / "pretrained" / "model.safetensors").write_bytes(b"")
    return path


def test_each_kind_of_weights_brings_its_config(tmp_path):
    assert locate_model("san-vit-l-14") == locate_model("san_vit_large_14")
    assert locate_model("san-vit-l-14").config == "san_clip_vit_large_res4_coco"
    done = _run_folder(tmp_path / "done")
    assert locate_model(done).weights == str(done / "pretrained" / "model.safetensors")  # the finished model
    assert locate_model(done).config == str(done / "pretrained" / "config.yaml")
    stopped = _run_folder(tmp_path / "stopped", last="model_0000009.pth", pretrained=False)
    src = locate_model(stopped)  # a run that has not finished: the newest checkpoint and the run's config
    assert (src.kind, src.weights, src.config) == (
        "run",
        str(stopped / "model_0000009.pth"),
        str(stopped / "config.yaml"),
    )
    ckpt = locate_model(stopped / "model_0000004.pth")  # a checkpoint inside a training folder
    assert (ckpt.weights, ckpt.config) == (str(stopped / "model_0000004.pth"), str(stopped / "config.yaml"))
    lone = tmp_path / "lone.pth"
    lone.write_bytes(b"")
    assert locate_model(lone).config == DEFAULT_CONFIG
    assert locate_model(lone, "my.yaml").config == "my.yaml"
    assert locate_model("owner/repo").kind == "hub-repo"
    with pytest.raises(FileNotFoundError, match="is a folder but not a model"):
        locate_model(tmp_path)
    (stopped / "model_0000009.pth").unlink()
    with pytest.raises(FileNotFoundError, match="last checkpoint .*model_0000009.pth is missing"):
        locate_model(stopped)


def test_the_training_classes_are_read_from_the_config_without_building_the_model(tmp_path):
    from san.model_source import model_classes

    run = _run_folder(tmp_path / "run", pretrained=False)
    (run / "config.yaml").write_text("SAN_ENGINE:\n  CLASS_NAMES: [crack, rust]\n")
    assert model_classes(run) == ["crack", "rust"]
    assert model_classes(run / "model_0000004.pth") == ["crack", "rust"]
    assert model_classes("san-vit-b-16") == []  # the official models record none


def test_a_bare_checkpoint_given_with_an_official_name_takes_that_models_config(tmp_path):
    from san.inference.predictor import _source

    lone = tmp_path / "lone.pth"
    lone.write_bytes(b"")
    assert _source("san-vit-l-14", lone).config == "san_clip_vit_large_res4_coco"
    assert _source("san-vit-b-16", lone).config == DEFAULT_CONFIG
    assert _source("my.yaml", lone).config == "my.yaml"
