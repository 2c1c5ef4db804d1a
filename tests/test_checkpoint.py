"""Checkpoints: official layouts, round trips, safe loading, clear mismatch errors."""

from __future__ import annotations

import pytest
import torch

import san
from san.checkpoint import CheckpointError, filter_state_dict
from san.files import write_safetensors

from .conftest import tiny_cfg


class _Evil:
    """Unpickling an instance of a non-allowlisted class must be refused by weights_only loading."""


def test_round_trip_through_our_format(tiny_model, tmp_path):
    path = tmp_path / "ckpt" / "model.pth"
    san.save_checkpoint(tiny_model, path, iteration=7)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "san" and raw["iteration"] == 7
    torch.manual_seed(123)
    other = san.build_model(tiny_cfg(tmp_path)).eval()
    assert not torch.equal(other.side_adapter_network.query_embed, tiny_model.side_adapter_network.query_embed)
    san.load_checkpoint(other, path)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    x = [{"image": torch.rand(3, 70, 90) * 255, "vocabulary": ["sky", "tree"]}]
    with torch.no_grad():
        assert torch.equal(tiny_model(x)[0]["sem_seg"], other(x)[0]["sem_seg"])


def test_official_layouts_are_accepted(tiny_model, tmp_path):
    sd = tiny_model.state_dict()
    for obj in ({"model": sd, "iteration": 5}, sd, {"state_dict": sd}, {f"module.{k}": v for k, v in sd.items()}):
        path = tmp_path / "x.pth"
        torch.save(obj, path)
        report = san.load_checkpoint(tiny_model, path)
        assert report.ok and (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert san.load_checkpoint(tiny_model, sd).ok


def test_criterion_buffer_of_official_checkpoints_is_accepted(golden, tmp_path):
    assert "criterion.empty_weight" in golden["state_dict"]
    path = tmp_path / "official.pth"
    torch.save({"model": golden["state_dict"], "iteration": 59999}, path)
    sd = san.checkpoint.read_state_dict(path)
    assert set(sd) == set(golden["state_dict"])


def test_mismatches_are_reported_together(tiny_model, tmp_path):
    sd = dict(tiny_model.state_dict())
    sd.pop("side_adapter_network.query_embed")
    sd["extra.weight"] = torch.zeros(1)
    sd["ov_classifier.bg_embed"] = torch.zeros(1, 7)
    with pytest.raises(CheckpointError) as e:
        san.load_checkpoint(tiny_model, sd)
    msg = str(e.value)
    assert "1 missing key(s): side_adapter_network.query_embed" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert "ov_classifier.bg_embed: checkpoint [1, 7] vs model [1, 32]" in msg
    before = tiny_model.side_adapter_network.query_pos_embed.clone()
    report = san.load_checkpoint(tiny_model, sd, strict=False)
    assert report.missing == ["side_adapter_network.query_embed"] and not report.ok
    assert torch.equal(before, tiny_model.side_adapter_network.query_pos_embed)


def test_checkpoint_from_a_different_architecture(tiny_model, tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.FEATURE_LAST_LAYER_IDX = 3
    cfg.MODEL.SIDE_ADAPTER.FUSION_MAP = ["0->0", "3->1"]
    other = san.build_model(cfg)
    with pytest.raises(CheckpointError, match=r"splits CLIP after 3 blocks, the model after 2"):
        san.load_checkpoint(tiny_model, other.state_dict())


def test_official_large_checkpoint_into_the_base_config_names_the_right_config():
    def official(config: str) -> san.SAN:
        cfg = san.get_cfg()
        cfg.merge_from_file(san.config.get_config_file(config))
        cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
        with torch.device("meta"):  # shapes only: the error is raised before any tensor is copied
            return san.build_model(cfg)

    base, large = official("san_clip_vit_res4_coco"), official("san_clip_vit_large_res4_coco")
    with pytest.raises(CheckpointError) as err:
        san.load_checkpoint(base, large.state_dict())
    msg = str(err.value)
    assert "144 unexpected key(s)" in msg  # ViT-L's extra deeper blocks
    assert "CLIP has positional embedding [577, 1024], the model [197, 768]" in msg
    assert "another CLIP (e.g. ViT-L/14 vs ViT-B/16)" in msg and "san_clip_vit_large_res4_coco.yaml" in msg


def test_unsafe_and_broken_files_are_refused(tiny_model, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="contains pickled Python objects.*does not run code.*convert it once"):
        san.load_checkpoint(tiny_model, evil)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.pth is truncated or not a checkpoint \(16 bytes"):
        san.load_checkpoint(tiny_model, junk)
    good = tmp_path / "good.pth"
    san.save_checkpoint(tiny_model, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pth is truncated or not a checkpoint \([\d.]+ MiB"):
        san.load_checkpoint(tiny_model, cut)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        san.load_checkpoint(tiny_model, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="not a tensor"):
        san.load_checkpoint(tiny_model, {"model": {"a": 1}})


def test_text_cache_is_cleared_when_weights_load(tiny_model, tmp_path):
    before = tiny_model.encode_vocabulary(["cat"]).clone()
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sd["ov_classifier.text_projection"] = sd["ov_classifier.text_projection"].flip(1)
    san.load_checkpoint(tiny_model, sd)
    assert not torch.allclose(before, tiny_model.encode_vocabulary(["cat"]))


def test_a_checkpoint_fine_tuned_with_another_class_count_loads_and_says_so(tmp_path, caplog):
    """criterion.empty_weight is derived from NUM_CLASSES: training-only, it never blocks a load."""
    torch.manual_seed(0)
    source = san.build_model(tiny_cfg(tmp_path, num_classes=3))  # fine-tuned on one's own 3 classes
    san.save_checkpoint(source, tmp_path / "three.pth")
    target = san.build_model(tiny_cfg(tmp_path, num_classes=5))
    with caplog.at_level("INFO", logger="san.checkpoint"):
        report = san.load_checkpoint(target, tmp_path / "three.pth")
    assert report.ok and "trained with 3 classes" in report.notes[0] and "has 5" in report.notes[0]
    assert "trained with 3 classes" in caplog.text
    assert target.criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 1, 1, 0.1])  # the model's own
    assert torch.equal(target.side_adapter_network.query_embed, source.side_adapter_network.query_embed)
    inference_only = san.build_model(tiny_cfg(tmp_path, num_classes=5))
    inference_only.criterion = None  # a model without a criterion drops every criterion.* entry
    assert san.load_checkpoint(inference_only, tmp_path / "three.pth").ok


def test_filter_fills_the_derived_causal_mask_and_strips_ddp_prefixes(tiny_model):
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items() if k != "ov_classifier.attn_mask"}
    out, notes = filter_state_dict(sd, tiny_model.state_dict())
    assert set(out) == set(tiny_model.state_dict()) and notes == []
    assert torch.equal(out["ov_classifier.attn_mask"], tiny_model.ov_classifier.attn_mask)


def test_safetensors_checkpoints_load(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tiny_model.state_dict(), {"format": "san"})
    torch.manual_seed(5)
    other = san.build_model(tiny_cfg(tmp_path)).eval()
    assert san.load_checkpoint(other, path).ok
    assert torch.equal(other.side_adapter_network.query_embed, tiny_model.side_adapter_network.query_embed)
