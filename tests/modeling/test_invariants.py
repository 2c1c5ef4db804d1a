"""The invariants that make SAN what it is, checked on a tiny random model."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

import san
from san.checkpoint import clip_state_dict_to_san
from san.modeling import ClipFeatureExtractor, RecognitionHead

from ..conftest import TINY_CLIP

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: the fixed tolerance 1e-5 (unit-norm embeddings through the recognition head) is >= 80x the largest
# difference measured under ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1 and 2 (AMD EPYC,
# 2026-12): 1.2e-7; exact equalities are identities of one computation (bias-free tokens), measured 0.


def _features_and_biases(model: san.SAN, seed: int = 0):
    torch.manual_seed(seed)
    images = torch.randn(2, 3, 96, 128)
    model.train()
    with torch.no_grad():
        out = model.forward_stages(images, model.encode_vocabulary(["a", "b"]))
    model.eval()
    return out["clip_features"], out["attn_biases"]


def _recorded_visual_tokens(head: RecognitionHead, features, layer: int, bias, dense: bool) -> list[torch.Tensor]:
    """Run our recognition head and record the class + visual tokens ``[B, 1 + L, D]`` it carries.

    Dense path: the output of every block, minus the SOS rows. Fast path: the visual stream as it
    enters each block (the ``ln_1`` inputs that are not SOS tokens).
    """
    q, n = head.num_sos, features.tokens[layer].shape[1]
    seen: list[torch.Tensor] = []
    if dense:
        hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o[:, q:].clone())) for blk in head.resblocks]
    else:
        hooks = [
            blk.ln_1.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()) if i[0].shape[1] == n else None)
            for blk in head.resblocks
        ]
    try:
        with torch.no_grad():
            (head.forward_dense if dense else head.forward)(features, layer, [bias])
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(head.resblocks) and all(t.shape[1] == n for t in seen)
    return seen


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "fast"])
def test_visual_and_cls_tokens_ignore_the_bias(tiny_model, dense):
    feats, biases = _features_and_biases(tiny_model)
    head = tiny_model.clip_rec_head
    changed = [t * -3.0 + 7.0 for t in biases[0]]
    a = _recorded_visual_tokens(head, feats, tiny_model.rec_layer, biases[0], dense)
    b = _recorded_visual_tokens(head, feats, tiny_model.rec_layer, changed, dense)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    # ... while the SOS tokens do see it
    with torch.no_grad():
        sos_a = head(feats, tiny_model.rec_layer, [biases[0]])[0]
        sos_b = head(feats, tiny_model.rec_layer, [changed])[0]
    assert (sos_a - sos_b).abs().max() > 1e-3


def test_each_sos_depends_only_on_its_own_bias_row(tiny_model):
    feats, biases = _features_and_biases(tiny_model)
    head = tiny_model.clip_rec_head
    bias = biases[-1]
    changed = [t.clone() for t in bias]
    changed[0][:, :, 3] += torch.randn_like(changed[0][:, :, 3]) * 5.0  # query 3 only
    with torch.no_grad():
        ref = head(feats, tiny_model.rec_layer, [bias])[0]
        new = head(feats, tiny_model.rec_layer, [changed])[0]
    diff = (ref - new).abs().amax(dim=(0, 2))  # per query
    assert diff[3] > 1e-3
    others = torch.cat([diff[:3], diff[4:]])
    assert others.max().item() == 0.0


def test_fast_head_equals_dense_reference(tiny_model):
    feats, biases = _features_and_biases(tiny_model)
    head = tiny_model.clip_rec_head
    with torch.no_grad():
        fast = head(feats, tiny_model.rec_layer, biases)
        dense = head.forward_dense(feats, tiny_model.rec_layer, biases)
    assert len(fast) == len(dense) == 2
    for f, d in zip(fast, dense):
        torch.testing.assert_close(f, d, rtol=0, atol=1e-5)


def test_zero_bias_single_sos_reproduces_clip_class_token(tmp_path):
    """With zero bias and one SOS token, the SOS output is CLIP's own image embedding."""
    torch.manual_seed(0)
    clip_model = open_clip.model.CLIP(
        embed_dim=TINY_CLIP["embed_dim"], vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=TINY_CLIP["text_cfg"]
    ).eval()
    split = 2
    sd = clip_state_dict_to_san(clip_model.state_dict(), split)
    cfg = san.modeling.clip.clip_config_from_dict(TINY_CLIP)
    extractor = ClipFeatureExtractor(
        width=cfg.vision_width,
        num_layers=split,
        num_heads=cfg.vision_heads,
        patch_size=cfg.patch_size,
        grid_size=cfg.grid_size,
    )
    head = RecognitionHead(
        width=cfg.vision_width,
        num_layers=cfg.vision_layers - split,
        num_heads=cfg.vision_heads,
        output_dim=cfg.embed_dim,
        num_sos=1,
    )
    for prefix, module in (("clip_visual_extractor.", extractor), ("clip_rec_head.", head)):
        module.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = extractor(image)
        bias = torch.zeros(2, cfg.vision_heads, 1, 14, 14)
        ours = head(feats, split, [[bias]])[0][:, 0]
        theirs = F.normalize(clip_model.encode_image(image), dim=-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_frozen_parameters_get_no_gradient(tiny_model):
    model = tiny_model.train()
    images, _ = model.preprocess([{"image": torch.rand(3, 64, 96) * 255}])
    out = model.forward_stages(images, model.encode_vocabulary(["cat", "dog"]))
    assert len(out["class_logits"]) == len(model.side_adapter_network.deep_supervision_idxs)  # every level in train
    loss = sum(c.logsumexp(-1).sum() + m.sigmoid().sum() for c, m in zip(out["class_logits"], out["mask_logits"]))
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n
        for n, _ in model.named_parameters()
        if n.startswith("side_adapter_network.")
        or n in ("clip_visual_extractor.positional_embedding", "ov_classifier.bg_embed")
    }
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize(
    ("config", "expected"),
    [("san_clip_vit_res4_coco", 8_370_866), ("san_clip_vit_large_res4_coco", 9_321_650)],
)
def test_trainable_parameter_count_matches_official(config, expected):
    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file(config))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
    with torch.device("meta"):
        model = san.build_model(cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
