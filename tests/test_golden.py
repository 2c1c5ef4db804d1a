"""Parity with the official SAN release: every stage of ../shared/golden/san_tiny_official.pt.

The golden file holds the official model's state_dict (official key names) on a tiny seeded
config, its open_clip model config and config overrides, two images and the official outputs of
every stage. We build our model from the same config, load the state_dict through
``san.load_checkpoint`` and compare in float32 on CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

import san

ATOL = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def golden_model(golden, tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "san-tiny-clip.json"
    path.write_text(json.dumps(golden["open_clip_model_config"]))
    overrides = list(golden["san_config_overrides"])
    overrides[overrides.index("MODEL.SAN.CLIP_MODEL_NAME") + 1] = str(path)
    cfg = san.get_cfg()
    cfg.merge_from_list(overrides + ["MODEL.SAN.CLIP_PRETRAINED_NAME", ""])
    model = san.build_model(cfg)
    report = san.load_checkpoint(model, golden["state_dict"])
    assert report.ok and report.notes == []
    return model.eval()


def _inputs(golden):
    return [
        {"image": im, "height": 2 * im.shape[1], "width": 2 * im.shape[2], "vocabulary": golden["vocabulary"]}
        for im in golden["images"]
    ]


def test_text_embeddings_and_classifier(golden, golden_model):
    out = golden["outputs"]
    with torch.no_grad():
        assert _max_diff(golden_model.ov_classifier.embed_names(golden["vocabulary"]), out["text_embeddings"]) < ATOL
        cls = golden_model.encode_vocabulary(golden["vocabulary"])
    assert _max_diff(cls, out["classifier_with_bg_scaled"]) < ATOL


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_stage(golden, golden_model, mode):
    out = golden["outputs"]
    golden_model.train(mode == "train")
    try:
        with torch.no_grad():
            classifier = golden_model.encode_vocabulary(golden["vocabulary"])
            images, _ = golden_model.preprocess(_inputs(golden))
            res = golden_model.forward_stages(images, classifier)
    finally:
        golden_model.eval()
    assert _max_diff(images, out["padded_input"]) < ATOL
    clip = res["clip_features"]
    for key, ref in out["clip_features"].items():
        if key.endswith("_cls_token"):
            got = clip.cls_token(int(key.split("_")[0]))[None]  # official layout [1, B, C]
        else:
            got = clip.spatial(int(key))
        assert _max_diff(got, ref) < ATOL, key
    ref = out[mode]
    n_levels = 2 if mode == "train" else 1
    # the official names: mask_preds are our mask_logits, its mask_logits our class_logits
    for ours, key in (
        ("mask_logits", "mask_preds"),
        ("mask_embeddings", "mask_embeddings"),
        ("class_logits", "mask_logits"),
    ):
        assert len(res[ours]) == len(ref[key]) == n_levels
        for got, exp in zip(res[ours], ref[key]):
            assert _max_diff(got, exp) < ATOL, key
    for got, exp in zip(res["attn_biases"], ref["attn_biases"]):
        assert len(got) == len(exp) == 1
        assert _max_diff(got[0], exp[0]) < ATOL


def test_final_sem_seg(golden, golden_model):
    with torch.no_grad():
        results = golden_model(_inputs(golden))
    assert len(results) == 2
    for got, exp in zip(results, golden["outputs"]["sem_seg"]):
        assert _max_diff(got["sem_seg"], exp) < ATOL
        assert torch.equal(got["sem_seg"].argmax(0), exp.argmax(0))


def test_dense_reference_head_matches_golden(golden, golden_model):
    """The official dense-mask formulation (kept as a reference path) gives the same embeddings."""
    golden_model.train()
    try:
        with torch.no_grad():
            classifier = golden_model.encode_vocabulary(golden["vocabulary"])
            images, _ = golden_model.preprocess(_inputs(golden))
            res = golden_model.forward_stages(images, classifier)
            dense = golden_model.clip_rec_head.forward_dense(
                res["clip_features"], golden_model.rec_layer, res["attn_biases"]
            )
    finally:
        golden_model.eval()
    for got, exp in zip(dense, golden["outputs"]["train"]["mask_embeddings"]):
        assert _max_diff(got, exp) < ATOL
