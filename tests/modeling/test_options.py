"""Every official model option with more than one valid value, built from the config and checked
against a computation written out in the test (tests/reference.py), not against the code's own output.

``MODEL.SAN.SOS_TOKEN_FORMAT``, ``REC_DOWNSAMPLE_METHOD``, ``SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS``,
``ATTN_BIAS.RESCALE_ATTN_BIAS``, ``CLIP_RESOLUTION``, ``ASYMETRIC_INPUT``,
``SEM_SEG_POSTPROCESS_BEFORE_INFERENCE``, ``DEEP_SUPERVISION_IDXS`` (deep supervision off),
``CLIP_TEMPLATE_SET`` and ``SIDE_ADAPTER.FUSION_TYPE`` (one valid value: others are refused).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import san
from san.assets import read_prompts

from ..conftest import tiny_cfg
from ..reference import adaptive_pool, decided, float32_tolerance, reference_rec_head, semantic_scores

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: the fixed tolerance 1e-5 on unit-norm embeddings (template sets, attention bias rescaling) is >=
# 100x the largest difference measured under ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1
# and 2 (AMD EPYC, 2026-12): 8.9e-8; the others are derived in place from the terms summed
# (reference.float32_tolerance).

VOCAB = ["cat", "grass", "sky"]


def _model(tmp_path, *overrides) -> san.SAN:
    cfg = tiny_cfg(tmp_path)
    cfg.merge_from_list(list(overrides))
    torch.manual_seed(0)
    model = san.build_model(cfg).eval()
    with torch.no_grad():  # a decoder whose biases are not tiny, so that they matter
        for p in model.side_adapter_network.mask_decoder.attn_mlp.parameters():
            p.mul_(3.0)
    return model


def _stages(model: san.SAN, hw=(64, 96), seed=1):
    torch.manual_seed(seed)
    images = torch.randn(2, 3, *hw)
    with torch.no_grad():
        return images, model.forward_stages(images, model.encode_vocabulary(VOCAB))


def _raw_biases(out: dict) -> list[torch.Tensor]:
    """The decoder's per-block biases of the last level, ``[B, heads, Q, h, w]`` each."""
    return out["attn_biases"][-1]


def _biases_on_clip_grid(raw: list[torch.Tensor], grid, n_blocks: int, method: str, heads: int) -> list[torch.Tensor]:
    out = []
    for bias in raw:
        b, nh, q, hs, ws = bias.shape
        x = bias.reshape(b, nh * q, hs, ws)
        if method in ("max", "avg"):
            x = adaptive_pool(x, grid, method)
        else:
            x = F.interpolate(x, size=grid, mode=method, align_corners=None if method == "nearest" else False)
        out.append(x.reshape(b, nh, q, -1).expand(b, heads, q, -1))
    return out * n_blocks if len(out) == 1 else out


def _check_head(model: san.SAN, out: dict, method: str = "max", sos0=None) -> None:
    head, feats = model.clip_rec_head, out["clip_features"]
    x0 = feats.tokens[model.rec_layer]
    q = head.num_sos
    if sos0 is None:
        sos0 = x0[:, :1].expand(-1, q, -1)  # cls_token: every SOS token starts as the class token
    biases = _biases_on_clip_grid(_raw_biases(out), feats.grid, len(head.resblocks), method, head.num_heads)
    with torch.no_grad():
        ref = reference_rec_head(head, x0, sos0, biases)
    torch.testing.assert_close(out["mask_embeddings"][-1], ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("fmt", ["cls_token", "learnable_token", "pos_embedding"])
def test_sos_token_format(tmp_path, fmt):
    model = _model(tmp_path, "MODEL.SAN.SOS_TOKEN_FORMAT", fmt)
    head = model.clip_rec_head
    assert hasattr(head, "sos_token") == (fmt != "cls_token")
    if fmt != "cls_token":
        with torch.no_grad():
            head.sos_token.normal_(std=1.0)  # large enough to change the result
        assert head.sos_token.requires_grad  # learned, as the official head's
    _, out = _stages(model)
    x0 = out["clip_features"].tokens[model.rec_layer]
    cls = x0[:, :1]
    learned = head.sos_token[:, 0][None] if fmt != "cls_token" else None
    if fmt == "cls_token":
        sos0 = cls.expand(-1, head.num_sos, -1)
    elif fmt == "learnable_token":
        sos0 = learned.expand(2, -1, -1)
    else:  # pos_embedding: the learned tokens are offsets from the class token
        sos0 = learned + cls
    _check_head(model, out, sos0=sos0.detach())


@pytest.mark.parametrize("method", ["max", "avg", "bilinear", "bicubic", "nearest"])
def test_rec_downsample_method(tmp_path, method):
    model = _model(tmp_path, "MODEL.SAN.REC_DOWNSAMPLE_METHOD", method)
    _, out = _stages(model, hw=(96, 128))  # side grid 6 x 8 -> CLIP grid 3 x 4 at CLIP_RESOLUTION 0.5
    _check_head(model, out, method=method)
    if method != "max":  # the method matters: max pooling would give another result
        biases = _biases_on_clip_grid(_raw_biases(out), out["clip_features"].grid, 2, "max", 2)
        with torch.no_grad():
            other = reference_rec_head(
                model.clip_rec_head,
                out["clip_features"].tokens[model.rec_layer],
                out["clip_features"].tokens[model.rec_layer][:, :1].expand(-1, 10, -1),
                biases,
            )
        assert not torch.allclose(out["mask_embeddings"][-1], other, atol=1e-4)


def test_attn_bias_num_layers_gives_every_deeper_block_its_own_bias(tmp_path):
    model = _model(tmp_path, "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS", 2)  # the tiny CLIP has 2 deeper blocks
    _, out = _stages(model)
    raw = _raw_biases(out)
    assert len(raw) == 2 and not torch.allclose(raw[0], raw[1])
    _check_head(model, out)
    swapped = {**out, "attn_biases": [[raw[1], raw[0]]]}  # block order matters: the swap is seen
    with pytest.raises(AssertionError):
        _check_head(model, swapped)


@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_attn_bias(tmp_path, rescale):
    model = _model(tmp_path, "MODEL.SIDE_ADAPTER.ATTN_BIAS.RESCALE_ATTN_BIAS", rescale)
    dec = model.side_adapter_network.mask_decoder
    if rescale:
        with torch.no_grad():
            dec.bias_scaling.weight.fill_(1.7)
            dec.bias_scaling.bias.fill_(-0.3)
    torch.manual_seed(2)
    query, feats = torch.randn(2, 10, 48), torch.randn(2, 48, 4, 6)
    with torch.no_grad():
        masks, biases = dec(query, feats)
        q, k = dec.query_mlp(query), dec.pix_mlp(feats)
        attn = dec.attn_mlp(feats).reshape(2, 1, 2, 16, 4, 6)  # [B, layers, heads, K, h, w]
        want_masks = (q[:, :, :, None, None] * k[:, None]).sum(2)
        want_bias = (q[:, None, None, :, :, None, None] * attn[:, :, :, None]).sum(4)[:, 0]
    scale = (1.7, -0.3) if rescale else (1.0, 0.0)
    channels = q.shape[2]  # dot products over the embedding channels, summed in other orders
    torch.testing.assert_close(masks, want_masks, rtol=0, atol=float32_tolerance(want_masks, channels))
    want_bias = want_bias * scale[0] + scale[1]
    torch.testing.assert_close(biases[0], want_bias, rtol=0, atol=float32_tolerance(want_bias, channels + 2))


@pytest.mark.parametrize(("resolution", "asymmetric"), [(0.5, True), (0.75, True), (1.0, True), (0.5, False)])
def test_clip_resolution_and_asymmetric_input(tmp_path, resolution, asymmetric):
    model = _model(tmp_path, "MODEL.SAN.CLIP_RESOLUTION", resolution, "MODEL.SAN.ASYMETRIC_INPUT", asymmetric)
    seen = []
    hook = model.clip_visual_extractor.register_forward_pre_hook(
        lambda m, args, kw: seen.append(args[0].clone()), with_kwargs=True
    )
    try:
        images, _ = _stages(model, hw=(64, 96))
    finally:
        hook.remove()
    want = (
        images
        if not asymmetric
        else F.interpolate(images, scale_factor=resolution, mode="bilinear", align_corners=False)
    )
    assert seen[0].shape == want.shape
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)
    assert seen[0].shape[-1] == (96 if not asymmetric else int(96 * resolution))


@pytest.mark.parametrize("before", [True, False])
def test_sem_seg_postprocess_before_inference_through_forward(tmp_path, before):
    model = _model(tmp_path, "MODEL.SAN.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE", before)
    with torch.no_grad():  # mask logits of several units: sigmoid and resizing no longer nearly commute
        model.side_adapter_network.mask_decoder.pix_mlp.layers[-1].weight.mul_(300.0)
    torch.manual_seed(3)
    image = torch.rand(3, 50, 70) * 255
    x = {"image": image, "height": 77, "width": 101, "vocabulary": VOCAB}
    with torch.no_grad():
        got = model([x])[0]["sem_seg"]
        labels = model.predict_labels([x])[0]["labels"]
        images, _ = model.preprocess([x])
        out = model.forward_stages(images, model.encode_vocabulary(VOCAB))
    cls, masks = out["class_logits"][-1][0], out["mask_logits"][-1][0]
    up = F.interpolate(masks[None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0, :, :50, :70]
    if before:  # masks resized to the output, then the mixture
        want = semantic_scores(cls, F.interpolate(up[None], size=(77, 101), mode="bilinear", align_corners=False)[0])
    else:  # the mixture at the input size, then the scores resized
        want = F.interpolate(semantic_scores(cls, up)[None], size=(77, 101), mode="bilinear", align_corners=False)[0]
    tol = float32_tolerance(want, masks.shape[0] + 16)  # the Q-term mixture and 16 resize taps, in other orders
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert masks.abs().max() > 3  # the two orders differ here, so the test tells them apart
    clear = decided(want, tol)
    assert torch.equal(labels[clear], want.argmax(0)[clear])


def test_deep_supervision_off_trains_one_level(tmp_path):
    model = _model(tmp_path, "MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS", [4]).train()
    vocab = [*VOCAB, "dog", "road"]  # NUM_CLASSES 5
    assert set(model.criterion.weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :20], masks[1, 20:] = True, True
    x = {
        "image": torch.rand(3, 64, 64) * 255,
        "vocabulary": vocab,
        "instances": {"labels": torch.tensor([0, 2]), "masks": masks},
    }
    losses = model([x])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    images, _ = model.preprocess([x])
    with torch.no_grad():
        assert len(model.forward_stages(images, model.encode_vocabulary(vocab))["class_logits"]) == 1


@pytest.mark.parametrize(("template_set", "count"), [("vild", 14), ("imagenet", 80)])
def test_template_sets(tmp_path, template_set, count):
    model = _model(tmp_path, "MODEL.SAN.CLIP_TEMPLATE_SET", template_set)
    clf = model.ov_classifier
    templates = read_prompts(template_set)
    assert len(templates) == count and clf.templates == tuple(templates)
    names = ["cat", "traffic light"]
    with torch.no_grad():
        got = clf.embed_names(names)
        per_template = [
            F.normalize(clf.encode_tokens(clf.tokenizer([t.format(n) for n in names])), dim=-1) for t in templates
        ]
    want = F.normalize(torch.stack(per_template).mean(0), dim=-1)  # the ensemble of normalised prompt embeddings
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_only_fusion_type_is_add(tmp_path):
    model = _model(tmp_path)
    fuse = model.side_adapter_network.fusion_layers["layer_1"]
    torch.manual_seed(4)
    tokens, clip_map = torch.randn(2, 12, 48), torch.randn(2, 64, 2, 3)
    with torch.no_grad():
        got = fuse(tokens, clip_map, (3, 4))
        proj = fuse.input_proj[1](
            F.layer_norm(
                clip_map.permute(0, 2, 3, 1), (64,), fuse.input_proj[0].weight, fuse.input_proj[0].bias, 1e-6
            ).permute(0, 3, 1, 2)
        )
        want = tokens + F.interpolate(proj, size=(3, 4), mode="bilinear", align_corners=False).flatten(2).transpose(
            1, 2
        )
    torch.testing.assert_close(got, want, rtol=0, atol=float32_tolerance(want, 64 + 8))  # 64-channel projection, taps
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SIDE_ADAPTER.FUSION_TYPE = "concat"
    with pytest.raises(ValueError, match="FUSION_TYPE 'concat' .only 'add' exists"):
        san.build_model(cfg)
