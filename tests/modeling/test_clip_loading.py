"""CLIP configs and weights: names, JSON configs, activations, local weight files."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from torch import nn

import san
from san.modeling.clip import QuickGELU, resolve_clip_config

from ..conftest import TINY_CLIP, tiny_cfg


def test_official_names_resolve_with_the_right_activation():
    b16 = resolve_clip_config("ViT-B/16", "openai")
    assert (b16.vision_width, b16.vision_layers, b16.vision_heads, b16.patch_size, b16.grid_size) == (
        768,
        12,
        12,
        16,
        14,
    )
    assert (b16.text_width, b16.text_layers, b16.embed_dim) == (512, 12, 512)
    assert b16.quick_gelu and b16.act_layer is QuickGELU  # OpenAI weights were trained with QuickGELU
    assert not resolve_clip_config("ViT-B/16", "").quick_gelu
    l14 = resolve_clip_config("ViT-L-14-336", "openai")
    assert (l14.vision_width, l14.vision_layers, l14.vision_heads, l14.patch_size, l14.grid_size) == (
        1024,
        24,
        16,
        14,
        24,
    )
    assert l14.quick_gelu and l14.embed_dim == 768


def test_json_config_and_unsupported_options(tmp_path):
    path = tmp_path / "my-clip.json"
    path.write_text(json.dumps({**TINY_CLIP, "quick_gelu": True}))
    cfg = resolve_clip_config(str(path))
    assert cfg.name == "my-clip" and cfg.quick_gelu and cfg.vision_heads == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "attentional_pool": True}}))
    with pytest.raises(ValueError, match="does not support.*attentional_pool"):
        resolve_clip_config(str(bad))
    notclip = tmp_path / "notclip.json"
    notclip.write_text("{}")
    with pytest.raises(ValueError, match="not an open_clip model config"):
        resolve_clip_config(str(notclip))


def test_local_clip_weights_file_is_loaded(tmp_path):
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(embed_dim=32, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=TINY_CLIP["text_cfg"])
    weights = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, weights)
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = str(weights)
    model = san.build_model(cfg)
    sd = reference.state_dict()
    assert torch.equal(
        model.clip_visual_extractor.resblocks[1].mlp.c_fc.weight, sd["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    )
    assert torch.equal(
        model.clip_rec_head.resblocks[0].attn.in_proj_weight, sd["visual.transformer.resblocks.2.attn.in_proj_weight"]
    )
    assert torch.equal(model.clip_rec_head.proj, sd["visual.proj"])
    assert torch.equal(model.ov_classifier.token_embedding.weight, sd["token_embedding.weight"])
    assert isinstance(model.clip_visual_extractor.resblocks[0].mlp.gelu, nn.GELU)
    # the text tower is the real CLIP text tower: embeddings equal open_clip's encode_text
    tokens = open_clip.tokenize(["a photo of a cat."])
    with torch.no_grad():
        ours = model.ov_classifier.encode_prompts(["a photo of a cat."])
        theirs = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    other = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={**TINY_CLIP["vision_cfg"], "width": 96, "head_width": 48},
        text_cfg=TINY_CLIP["text_cfg"],
    )
    weights = tmp_path / "wrong.pt"
    torch.save(other.state_dict(), weights)
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = str(weights)
    with pytest.raises(ValueError, match="do not fit.*mis-shaped"):
        san.build_model(cfg)


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state_dict: dict[str, torch.Tensor], path) -> None:
    """Save tensors under their dotted names in a TorchScript archive, the format of OpenAI's own files."""
    root = _Holder()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        m = root
        for p in parents:
            if p not in m._modules:
                m.add_module(p, _Holder())
            m = m._modules[p]
        m.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def test_openai_torchscript_file_gets_quick_gelu_and_a_state_dict_file_does_not(tmp_path):
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(embed_dim=32, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=TINY_CLIP["text_cfg"])
    archive = tmp_path / "ViT-tiny.pt"
    _torchscript_archive(reference.state_dict(), archive)
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = str(archive)
    model = san.build_model(cfg)
    assert isinstance(model.clip_visual_extractor.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.clip_rec_head.resblocks[-1].mlp.gelu, QuickGELU)
    assert isinstance(model.ov_classifier.transformer.resblocks[0].mlp.gelu, QuickGELU)
    sd = reference.state_dict()
    assert torch.equal(model.clip_rec_head.proj, sd["visual.proj"])
    assert torch.equal(model.ov_classifier.token_embedding.weight, sd["token_embedding.weight"])
    # a plain state-dict file cannot tell; an open_clip -quickgelu name (or "quick_gelu" in a JSON) can
    plain = tmp_path / "clip_state_dict.pt"
    torch.save(reference.state_dict(), plain)
    assert not resolve_clip_config(cfg.MODEL.SAN.CLIP_MODEL_NAME, str(plain)).quick_gelu
    assert resolve_clip_config("ViT-B-16-quickgelu", str(plain)).quick_gelu
    assert resolve_clip_config("ViT-B-16-quickgelu", "").quick_gelu
