"""Config -> model: the one place where ``cfg.MODEL.*`` meets the modeling code.

``build_model(cfg)`` builds SAN from an fvcore config (official keys). ``san_kwargs(cfg)`` gives
the plain numbers, so a project can build the modules by hand. Building never downloads: CLIP
weights are fetched only when ``MODEL.SAN.CLIP_PRETRAINED_NAME`` names a tag and
``load_clip_weights`` is true.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from san.assets import read_prompts
from san.modeling import (
    SAN,
    ClipFeatureExtractor,
    MaskDecoder,
    RecognitionHead,
    SideAdapterNetwork,
    SideViT,
    TextClassifier,
)
from san.modeling.clip import CLIPConfig, load_clip_state_dict, resolve_clip_config
from san.modeling.criterion import SetCriterion, loss_weights
from san.modeling.matcher import HungarianMatcher
from san.modeling.side_adapter import parse_fusion_map, parse_vit_name

logger = logging.getLogger(__name__)

__all__ = ["build_criterion", "build_model", "build_san", "clip_state_dict_to_san", "freeze_clip"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_san(
    *,
    clip: CLIPConfig,
    feature_last_layer_idx: int,
    vit_name: str = "vit_w240n6d8_patch16",
    side_image_size: int = 640,
    drop_path_rate: float = 0.0,
    num_queries: int = 100,
    fusion_map: dict[int, int],
    deep_supervision_idxs: tuple[int, ...] = (7, 8),
    attn_bias_heads: int = 12,
    attn_bias_layers: int = 1,
    embed_channels: int = 256,
    mlp_channels: int = 256,
    mlp_num_layers: int = 3,
    rescale_attn_bias: bool = True,
    templates: tuple[str, ...],
    sos_token_format: str = "cls_token",
    rec_downsample_method: str = "max",
    clip_resolution: float = 0.5,
    asymmetric_input: bool = True,
    size_divisibility: int = 32,
    pixel_mean: tuple[float, ...] = tuple(255 * m for m in OPENAI_MEAN),
    pixel_std: tuple[float, ...] = tuple(255 * s for s in OPENAI_STD),
    sem_seg_postprocess_before_inference: bool = True,
    criterion: nn.Module | None = None,
) -> SAN:
    """Build SAN from plain numbers (random weights; see :func:`build_model` for configs)."""
    if not 0 < feature_last_layer_idx < clip.vision_layers:
        raise ValueError(
            f"FEATURE_LAST_LAYER_IDX={feature_last_layer_idx} must lie in 1..{clip.vision_layers - 1} "
            f"for {clip.name} ({clip.vision_layers} blocks)"
        )
    bad = [c for c in fusion_map.values() if not 0 <= c <= feature_last_layer_idx]
    if bad:
        raise ValueError(f"FUSION_MAP reads CLIP layers {bad}, beyond FEATURE_LAST_LAYER_IDX={feature_last_layer_idx}")
    vit = parse_vit_name(vit_name)
    if side_image_size % vit["patch_size"]:
        raise ValueError(f"SIDE_ADAPTER.IMAGE_SIZE {side_image_size} is not a multiple of patch {vit['patch_size']}")
    common = {"mlp_ratio": clip.vision_mlp_ratio, "act_layer": clip.act_layer}
    extractor = ClipFeatureExtractor(
        width=clip.vision_width,
        num_layers=feature_last_layer_idx,
        num_heads=clip.vision_heads,
        patch_size=clip.patch_size,
        grid_size=clip.grid_size,
        **common,
    )
    rec_head = RecognitionHead(
        width=clip.vision_width,
        num_layers=clip.vision_layers - feature_last_layer_idx,
        num_heads=clip.vision_heads,
        output_dim=clip.embed_dim,
        num_sos=num_queries,
        sos_token_format=sos_token_format,
        downsample_method=rec_downsample_method,
        **common,
    )
    side = SideAdapterNetwork(
        vit_model=SideViT(
            width=vit["width"],
            depth=vit["depth"],
            num_heads=vit["num_heads"],
            patch_size=vit["patch_size"],
            image_size=side_image_size,
            drop_path_rate=drop_path_rate,
        ),
        mask_decoder=MaskDecoder(
            in_channels=vit["width"],
            num_heads=attn_bias_heads,
            num_layers=attn_bias_layers,
            embed_channels=embed_channels,
            mlp_channels=mlp_channels,
            mlp_num_layers=mlp_num_layers,
            rescale_attn_bias=rescale_attn_bias,
        ),
        clip_width=clip.vision_width,
        num_queries=num_queries,
        fusion_map=fusion_map,
        deep_supervision_idxs=deep_supervision_idxs,
    )
    classifier = TextClassifier(
        width=clip.text_width,
        layers=clip.text_layers,
        heads=clip.text_heads,
        embed_dim=clip.embed_dim,
        context_length=clip.context_length,
        vocab_size=clip.vocab_size,
        mlp_ratio=clip.text_mlp_ratio,
        act_layer=clip.act_layer,
        templates=templates,
    )
    return SAN(
        clip_visual_extractor=extractor,
        clip_rec_head=rec_head,
        side_adapter_network=side,
        ov_classifier=classifier,
        criterion=criterion,
        clip_resolution=clip_resolution,
        asymmetric_input=asymmetric_input,
        size_divisibility=size_divisibility,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        sem_seg_postprocess_before_inference=sem_seg_postprocess_before_inference,
    )


def san_kwargs(cfg: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`build_san` read from a config (official keys)."""
    s, a = cfg.MODEL.SAN, cfg.MODEL.SIDE_ADAPTER
    if a.FUSION_TYPE != "add":
        raise ValueError(f"unknown SIDE_ADAPTER.FUSION_TYPE {a.FUSION_TYPE!r} (only 'add' exists)")
    if s.REC_CROSS_ATTN:
        raise ValueError(
            "MODEL.SAN.REC_CROSS_ATTN=True is the official code's unreleased alternative; san implements the "
            "released (masked self-attention) recognition head only"
        )
    if a.PRETRAINED:
        raise ValueError("MODEL.SIDE_ADAPTER.PRETRAINED=True has no weights: the official side adapter starts random")
    clip = resolve_clip_config(s.CLIP_MODEL_NAME, s.CLIP_PRETRAINED_NAME)
    mean, std = _clip_mean_std(clip.name, s.CLIP_PRETRAINED_NAME)
    return {
        "clip": clip,
        "feature_last_layer_idx": s.FEATURE_LAST_LAYER_IDX,
        "vit_name": a.VIT_NAME,
        "side_image_size": a.IMAGE_SIZE,
        "drop_path_rate": a.DROP_PATH_RATE,
        "num_queries": a.NUM_QUERIES,
        "fusion_map": parse_fusion_map(a.FUSION_MAP),
        "deep_supervision_idxs": tuple(a.DEEP_SUPERVISION_IDXS),
        "attn_bias_heads": a.ATTN_BIAS.NUM_HEADS,
        "attn_bias_layers": a.ATTN_BIAS.NUM_LAYERS,
        "embed_channels": a.ATTN_BIAS.EMBED_CHANNELS,
        "mlp_channels": a.ATTN_BIAS.MLP_CHANNELS,
        "mlp_num_layers": a.ATTN_BIAS.MLP_NUM_LAYERS,
        "rescale_attn_bias": a.ATTN_BIAS.RESCALE_ATTN_BIAS,
        "templates": tuple(read_prompts(s.CLIP_TEMPLATE_SET)),
        "sos_token_format": s.SOS_TOKEN_FORMAT,
        "rec_downsample_method": s.REC_DOWNSAMPLE_METHOD,
        "clip_resolution": s.CLIP_RESOLUTION,
        "asymmetric_input": s.ASYMETRIC_INPUT,
        "size_divisibility": s.SIZE_DIVISIBILITY,
        "pixel_mean": tuple(255.0 * m for m in mean),
        "pixel_std": tuple(255.0 * v for v in std),
        "sem_seg_postprocess_before_inference": s.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE,
    }


def _clip_mean_std(name: str, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if pretrained and pretrained != "openai":
        try:
            import open_clip

            pcfg = open_clip.get_pretrained_cfg(name, pretrained)
            if pcfg.get("mean") and pcfg.get("std"):
                return tuple(pcfg["mean"]), tuple(pcfg["std"])
        except Exception:
            pass
    return OPENAI_MEAN, OPENAI_STD


def freeze_clip(model: SAN, frozen_exclude: list[str], deeper_frozen_exclude: list[str]) -> None:
    """Freeze CLIP as the official model does: visual parts except names containing an exclude
    entry ("all" keeps everything trainable), the text tower except ``bg_embed``."""

    def freeze(module: nn.Module, exclude: list[str]) -> None:
        if "all" in exclude:
            return
        for name, p in module.named_parameters():
            p.requires_grad_(any(e in name for e in exclude))

    freeze(model.clip_visual_extractor, frozen_exclude)
    freeze(model.clip_rec_head, [*deeper_frozen_exclude, "sos_token"])
    freeze(model.ov_classifier, ["bg_embed"])


def clip_state_dict_to_san(sd: dict[str, Tensor], feature_last_layer_idx: int) -> dict[str, Tensor]:
    """Map open_clip CLIP keys to SAN's three CLIP modules (blocks split at the given index)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("visual.transformer.resblocks."):
            idx, rest = k[len("visual.transformer.resblocks.") :].split(".", 1)
            i = int(idx)
            if i < feature_last_layer_idx:
                out[f"clip_visual_extractor.resblocks.{i}.{rest}"] = v
            else:
                out[f"clip_rec_head.resblocks.{i - feature_last_layer_idx}.{rest}"] = v
        elif k.startswith("visual."):
            rest = k[len("visual.") :]
            head = rest.split(".")[0]
            prefix = "clip_rec_head." if head in ("ln_post", "proj") else "clip_visual_extractor."
            out[prefix + rest] = v
        else:
            out["ov_classifier." + k] = v
    return out


def _load_clip_weights(model: SAN, cfg: Any) -> None:
    s = cfg.MODEL.SAN
    sd = clip_state_dict_to_san(load_clip_state_dict(s.CLIP_MODEL_NAME, s.CLIP_PRETRAINED_NAME), s.FEATURE_LAST_LAYER_IDX)
    own = model.state_dict()
    wanted = {k for k in own if k.split(".")[0] in ("clip_visual_extractor", "clip_rec_head", "ov_classifier")}
    wanted -= {"ov_classifier.bg_embed"} | {k for k in wanted if k.endswith("sos_token")}
    if "ov_classifier.attn_mask" not in sd:  # newer open_clip keeps the causal mask out of state_dicts
        wanted.discard("ov_classifier.attn_mask")
    missing = sorted(wanted - sd.keys())
    shapes = [k for k in wanted & sd.keys() if sd[k].shape != own[k].shape]
    if missing or shapes:
        raise ValueError(
            f"CLIP weights {s.CLIP_PRETRAINED_NAME!r} do not fit {s.CLIP_MODEL_NAME!r}: missing {missing[:5]}, "
            f"mis-shaped {shapes[:5]}"
        )
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(sd[k])
    model.ov_classifier.clear_cache()


def build_criterion(cfg: Any) -> SetCriterion:
    """The official training losses from ``MODEL.SAN.*``: Hungarian matcher and set criterion with
    one auxiliary loss set per earlier deep-supervision level."""
    s = cfg.MODEL.SAN
    matcher = HungarianMatcher(
        cost_class=s.CLASS_WEIGHT, cost_mask=s.MASK_WEIGHT, cost_dice=s.DICE_WEIGHT, num_points=s.TRAIN_NUM_POINTS
    )
    levels = len(cfg.MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS)
    return SetCriterion(
        num_classes=s.NUM_CLASSES,
        matcher=matcher,
        weight_dict=loss_weights(s.CLASS_WEIGHT, s.MASK_WEIGHT, s.DICE_WEIGHT, levels),
        eos_coef=s.NO_OBJECT_WEIGHT,
        losses=("labels", "masks"),
        num_points=s.TRAIN_NUM_POINTS,
        oversample_ratio=s.OVERSAMPLE_RATIO,
        importance_sample_ratio=s.IMPORTANCE_SAMPLE_RATIO,
    )


def build_model(cfg: Any, *, load_clip_weights: bool = True) -> SAN:
    """Build SAN from a config, frozen as the official model, with CLIP weights when asked.

    Args:
        cfg: a config from :func:`san.get_cfg` (or detectron2's with ``add_san_config``).
        load_clip_weights: fetch ``CLIP_PRETRAINED_NAME`` (skip it when a full SAN checkpoint,
            which holds every CLIP weight, is loaded next).
    """
    model = build_san(**san_kwargs(cfg), criterion=build_criterion(cfg))
    if load_clip_weights and cfg.MODEL.SAN.CLIP_PRETRAINED_NAME:
        _load_clip_weights(model, cfg)
    freeze_clip(model, list(cfg.MODEL.SAN.CLIP_FROZEN_EXCLUDE), list(cfg.MODEL.SAN.CLIP_DEEPER_FROZEN_EXCLUDE))
    return model
