"""build.py: the one place config meets code. A SAN built by hand from plain numbers equals the one a
config builds, and the config-key table covers every argument."""

from __future__ import annotations

import inspect

import pytest
import torch

import san
from san.assets import read_prompts
from san.build import CONFIG_KEYS, build_criterion, build_san, parse_fusion_map, parse_vit_name, san_kwargs
from san.modeling.clip import clip_config_from_dict

from .conftest import TINY_CLIP, tiny_cfg


def test_build_san_by_hand_equals_build_model(tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    from_config = san.build_model(cfg).eval()
    torch.manual_seed(0)
    by_hand = build_san(
        clip=clip_config_from_dict(TINY_CLIP, name="tiny-clip"),
        feature_last_layer_idx=2,
        vit_name="vit_w48n2d4_patch16",
        side_image_size=160,
        num_queries=10,
        fusion_map={0: 0, 1: 1, 2: 2},
        deep_supervision_idxs=(3, 4),
        attn_bias_heads=2,
        embed_channels=16,
        mlp_channels=32,
        templates=tuple(read_prompts("vild")),
        criterion=build_criterion(cfg),
    ).eval()
    san.build.freeze_clip(by_hand, ["positional_embedding"], [])
    a, b = from_config.state_dict(), by_hand.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [n for n, p in from_config.named_parameters() if p.requires_grad] == [
        n for n, p in by_hand.named_parameters() if p.requires_grad
    ]
    x = [{"image": torch.rand(3, 48, 64) * 255, "vocabulary": ["cat", "sky"]}]
    with torch.no_grad():
        assert torch.equal(from_config(x)[0]["sem_seg"], by_hand(x)[0]["sem_seg"])


def test_every_build_san_argument_is_read_from_one_config_key(tmp_path):
    params = set(inspect.signature(build_san).parameters) - {"clip", "criterion", "options"}
    assert params <= set(CONFIG_KEYS)  # each module argument has its config key
    kwargs = san_kwargs(tiny_cfg(tmp_path))
    assert set(CONFIG_KEYS) <= set(kwargs)
    assert kwargs["fusion_map"] == {0: 0, 1: 1, 2: 2} and kwargs["deep_supervision_idxs"] == (3, 4)
    assert kwargs["vit_name"] == "vit_w48n2d4_patch16" and len(kwargs["templates"]) == 14


def test_config_string_formats_are_parsed_here():
    assert parse_vit_name("vit_w240n6d8_patch16") == {"width": 240, "num_heads": 6, "depth": 8, "patch_size": 16}
    assert parse_fusion_map(["0->0", "3->1", "9->3"]) == {0: 0, 1: 3, 3: 9}
    with pytest.raises(ValueError, match="width 250 is not divisible by 6 heads"):
        parse_vit_name("vit_w250n6d8_patch16")
    with pytest.raises(ValueError, match="clipIdx->sideIdx"):
        parse_fusion_map(["3-1"])


def test_build_model_with_weights_skips_clip_and_loads_them(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = san.build_model(tiny_cfg(tmp_path))
    san.save_checkpoint(source, tmp_path / "w.pth")
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = "openai"  # would download: the checkpoint makes it unnecessary

    def fetch(*args):
        raise RuntimeError("CLIP weights were fetched")

    monkeypatch.setattr(san.build, "read_clip_weights", fetch)
    model = san.build_model(cfg, tmp_path / "w.pth")
    assert torch.equal(model.side_adapter_network.query_embed, source.side_adapter_network.query_embed)
    assert not model.clip_visual_extractor.conv1.weight.requires_grad  # frozen as the official model
    with pytest.raises(RuntimeError, match="CLIP weights were fetched"):
        san.build_model(cfg)  # no SAN weights: CLIP's are needed
