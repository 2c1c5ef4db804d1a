"""Config -> model: the one place where ``cfg.MODEL.*`` meets the modeling code.

``build_model(cfg, weights)`` builds SAN from a config (official keys) and loads its weights.
``san_kwargs(cfg)`` gives the plain arguments of :func:`build_san`, so a project can build the
modules by hand; the config-string formats (``VIT_NAME``, ``FUSION_MAP``) are parsed here and only
here. Building itself never downloads: CLIP weights are fetched only by ``build_model`` when no SAN
checkpoint is given (a SAN checkpoint holds every CLIP weight).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin
from torch import nn

from san import hub
from san.assets import read_prompts
from san.checkpoint import load_checkpoint, load_clip_weights, read_clip_weights
from san.config import ConfigError
from san.files import write_safetensors
from san.modeling import (
    SAN as CoreSAN,
)
from san.modeling import (
    ClipFeatureExtractor,
    MaskDecoder,
    RecognitionHead,
    SideAdapterNetwork,
    SideViT,
    TextClassifier,
)
from san.modeling.clip import OPENAI_MEAN, OPENAI_STD, CLIPConfig, resolve_clip_config
from san.modeling.criterion import SetCriterion, loss_weights
from san.modeling.matcher import HungarianMatcher

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_KEYS",
    "SAN",
    "build_criterion",
    "build_model",
    "build_san",
    "freeze_clip",
    "parse_fusion_map",
    "parse_vit_name",
    "san_kwargs",
]


_VIT_NAME = re.compile(r"^vit_w(\d+)n(\d+)d(\d+)_patch(\d+)$")


class SAN(CoreSAN, ModelHubMixin, library_name="san", license="mit", pipeline_tag="image-segmentation"):
    """:class:`san.modeling.SAN` that can be saved and loaded in the Hugging Face Hub format
    (:mod:`san.hub`: ``model.safetensors``, ``config.yaml``, a model card) and pushed to the Hub.

    ``config_yaml`` is the config the model was built from (:func:`build_model` passes it); a model
    built by hand from plain numbers has none and cannot be saved in this format.
    """

    def __init__(self, *, config_yaml: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_yaml = config_yaml
        self._hub_mixin_config = None  # the config travels as config.yaml, not as the mixin's config.json
        self._card_results: dict[str, Any] | None = None

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        results: dict[str, Any] | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write the Hub format folder (:mod:`san.hub`); ``results`` (``{dataset: {"sem_seg": {"mIoU": ...}}}``,
        as the evaluation returns them) go into the model card. Other arguments: huggingface_hub's
        ``save_pretrained`` (``push_to_hub=True``, ``repo_id``, ...)."""
        card = dict(model_card_kwargs or {})
        if results is not None:
            card["results"] = results
        self._card_results = card.get("results")
        try:
            return super().save_pretrained(save_directory, model_card_kwargs=card, **kwargs)
        finally:
            self._card_results = None

    def push_to_hub(self, repo_id: str, *, results: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Upload the Hub format folder to ``repo_id`` (huggingface_hub's ``push_to_hub``: ``token``,
        ``private``, ``branch``, ...); ``results`` go into the model card as in :meth:`save_pretrained`."""
        card = dict(kwargs.pop("model_card_kwargs", None) or {})
        if results is not None:
            card["results"] = results
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.config_yaml is None:
            raise hub.HubFormatError(
                "this model was built by hand (build_san), without a config: build it with san.build_model(cfg) "
                "to save it in the Hub format"
            )
        write_safetensors(save_directory / hub.WEIGHTS_FILE, self.state_dict(), {"format": "san"})
        cfg = hub.write_config(save_directory, self.config_yaml)
        hub.write_card(save_directory, cfg, self._card_results)

    def init_kwargs(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (sub-modules shared), its config included."""
        return {**super().init_kwargs(), "config_yaml": self.config_yaml}

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike, **download: Any) -> SAN:
        """A model from a folder written by :meth:`save_pretrained` or a Hub repository id (downloaded
        by huggingface_hub; ``download``: revision, cache_dir, force_download, local_files_only, token)."""
        return cls._from_pretrained(model_id=os.fspath(model_id), **download)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **download: Any) -> SAN:
        unknown = sorted(set(download) - set(_DOWNLOAD_KEYS))
        if unknown:
            raise TypeError(f"unknown download option(s) {unknown}; known: {', '.join(_DOWNLOAD_KEYS)}")
        config, weights = hub.folder_files(model_id, **download)
        return build_model(hub.read_config(config), weights).eval()


_DOWNLOAD_KEYS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


def parse_vit_name(name: str) -> dict[str, int]:
    """``vit_w240n6d8_patch16`` -> width 240, 6 heads, depth 8, patch 16 (official names)."""
    m = _VIT_NAME.match(name)
    if not m:
        raise ValueError(
            f"unknown side-adapter ViT {name!r}: expected vit_w<width>n<heads>d<depth>_patch<size>, "
            "e.g. vit_w240n6d8_patch16 (official: w144, w192, w240, w288)"
        )
    width, heads, depth, patch = map(int, m.groups())
    if width % heads:
        raise ValueError(f"side-adapter ViT {name!r}: width {width} is not divisible by {heads} heads")
    return {"width": width, "num_heads": heads, "depth": depth, "patch_size": patch}


def parse_fusion_map(fusion_map: Sequence[str]) -> dict[int, int]:
    """``["0->0", "3->1"]`` ("clip->side") -> ``{side_idx: clip_idx}``."""
    out = {}
    for item in fusion_map:
        try:
            clip_idx, side_idx = (int(s) for s in item.split("->"))
        except ValueError:
            raise ValueError(f"bad FUSION_MAP entry {item!r}: expected 'clipIdx->sideIdx', e.g. '3->1'") from None
        out[side_idx] = clip_idx
    return out


def build_san(
    *,
    clip: CLIPConfig,
    feature_last_layer_idx: int,
    vit_name: str = "vit_w240n6d8_patch16",
    side_image_size: int = 640,
    drop_path_rate: float = 0.0,
    num_queries: int = 100,
    fusion_map: Mapping[int, int],
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
    criterion: nn.Module | None = None,
    **options: Any,
) -> SAN:
    """Build SAN from plain arguments, with random weights (see :func:`build_model` for configs).

    The argument names are the lower-case official config keys (:data:`CONFIG_KEYS` maps them);
    ``options`` are :class:`san.modeling.SAN`'s own (``clip_resolution``, ``asymmetric_input``,
    ``size_divisibility``, ``pixel_mean``, ``pixel_std``, ``sem_seg_postprocess_before_inference``).
    """
    if not 0 < feature_last_layer_idx < clip.vision_layers:
        raise ValueError(
            f"feature_last_layer_idx={feature_last_layer_idx} must lie in 1..{clip.vision_layers - 1} "
            f"for {clip.name} ({clip.vision_layers} blocks)"
        )
    bad = [c for c in fusion_map.values() if not 0 <= c <= feature_last_layer_idx]
    if bad:
        raise ValueError(f"fusion_map reads CLIP layers {bad}, beyond feature_last_layer_idx={feature_last_layer_idx}")
    deeper = clip.vision_layers - feature_last_layer_idx
    if attn_bias_layers not in (1, deeper):
        raise ValueError(
            f"attn_bias_layers={attn_bias_layers}: one bias for every deeper CLIP block needs 1 (shared) or "
            f"{deeper} (one each, the blocks after feature_last_layer_idx={feature_last_layer_idx})"
        )
    vit = parse_vit_name(vit_name)
    if side_image_size % vit["patch_size"]:
        raise ValueError(f"side_image_size {side_image_size} is not a multiple of patch {vit['patch_size']}")
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
        **options,
    )


# build_san argument -> the official config key it is read from (as is, or parsed: see san_kwargs)
CONFIG_KEYS: dict[str, str] = {
    "feature_last_layer_idx": "MODEL.SAN.FEATURE_LAST_LAYER_IDX",
    "vit_name": "MODEL.SIDE_ADAPTER.VIT_NAME",
    "side_image_size": "MODEL.SIDE_ADAPTER.IMAGE_SIZE",
    "drop_path_rate": "MODEL.SIDE_ADAPTER.DROP_PATH_RATE",
    "num_queries": "MODEL.SIDE_ADAPTER.NUM_QUERIES",
    "fusion_map": "MODEL.SIDE_ADAPTER.FUSION_MAP",
    "deep_supervision_idxs": "MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS",
    "attn_bias_heads": "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS",
    "attn_bias_layers": "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS",
    "embed_channels": "MODEL.SIDE_ADAPTER.ATTN_BIAS.EMBED_CHANNELS",
    "mlp_channels": "MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_CHANNELS",
    "mlp_num_layers": "MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_NUM_LAYERS",
    "rescale_attn_bias": "MODEL.SIDE_ADAPTER.ATTN_BIAS.RESCALE_ATTN_BIAS",
    "templates": "MODEL.SAN.CLIP_TEMPLATE_SET",
    "sos_token_format": "MODEL.SAN.SOS_TOKEN_FORMAT",
    "rec_downsample_method": "MODEL.SAN.REC_DOWNSAMPLE_METHOD",
    "clip_resolution": "MODEL.SAN.CLIP_RESOLUTION",
    "asymmetric_input": "MODEL.SAN.ASYMETRIC_INPUT",
    "size_divisibility": "MODEL.SAN.SIZE_DIVISIBILITY",
    "sem_seg_postprocess_before_inference": "MODEL.SAN.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE",
}
# names the modules use for the same settings, where they differ from build_san's
_MODULE_NAMES = {"downsample_method": "rec_downsample_method", "num_layers": "attn_bias_layers"}


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def san_kwargs(cfg: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`build_san` read from a config (official keys, :data:`CONFIG_KEYS`)."""
    s, a = cfg.MODEL.SAN, cfg.MODEL.SIDE_ADAPTER
    if a.FUSION_TYPE != "add":
        raise ValueError(f"unknown MODEL.SIDE_ADAPTER.FUSION_TYPE {a.FUSION_TYPE!r} (only 'add' exists)")
    if s.REC_CROSS_ATTN:
        raise ValueError(
            "MODEL.SAN.REC_CROSS_ATTN=True is the official code's unreleased alternative; san implements the "
            "released (masked self-attention) recognition head only"
        )
    if a.PRETRAINED:
        raise ValueError("MODEL.SIDE_ADAPTER.PRETRAINED=True has no weights: the official side adapter starts random")
    kwargs = {name: _get(cfg, key) for name, key in CONFIG_KEYS.items()}
    kwargs["fusion_map"] = parse_fusion_map(kwargs["fusion_map"])
    kwargs["deep_supervision_idxs"] = tuple(kwargs["deep_supervision_idxs"])
    kwargs["templates"] = tuple(read_prompts(kwargs["templates"]))
    clip = resolve_clip_config(s.CLIP_MODEL_NAME, s.CLIP_PRETRAINED_NAME)
    mean, std = _clip_mean_std(clip.name, s.CLIP_PRETRAINED_NAME)
    kwargs.update(clip=clip, pixel_mean=tuple(255.0 * m for m in mean), pixel_std=tuple(255.0 * v for v in std))
    return kwargs


def _with_config_keys(err: ValueError) -> ConfigError:
    """The error of a module built from a config, with the config keys behind the arguments it names."""
    msg = str(err)
    names = {_MODULE_NAMES.get(n, n) for n in re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b|\bnum_layers\b", msg)}
    keys = [f"{n} = {CONFIG_KEYS[n]}" for n in sorted(names) if n in CONFIG_KEYS]
    return ConfigError(f"{msg} (config: {'; '.join(keys)})" if keys else msg)


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


def build_model(
    cfg: Any,
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    clip_weights: bool | None = None,
) -> SAN:
    """Build SAN from a config, frozen as the official model, and load its weights.

    Args:
        cfg: a config from :func:`san.get_cfg` (or detectron2's with ``add_san_config``).
        weights: a SAN checkpoint (file, URL, official name such as ``san-vit-b-16``, or a
            state_dict), loaded with :func:`san.load_checkpoint`. None or ``"none"``: no SAN
            weights, the side adapter stays random (training from CLIP).
        clip_weights: fetch the CLIP weights of ``MODEL.SAN.CLIP_PRETRAINED_NAME``; by default only
            when no SAN checkpoint is given (it holds every CLIP weight).
    """
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower() in ("", "none"):
        weights = None
    try:
        model = build_san(**san_kwargs(cfg), criterion=build_criterion(cfg), config_yaml=cfg.dump())
    except ConfigError:
        raise
    except ValueError as e:
        raise _with_config_keys(e) from None
    s = cfg.MODEL.SAN
    if (weights is None if clip_weights is None else clip_weights) and s.CLIP_PRETRAINED_NAME:
        load_clip_weights(
            model, read_clip_weights(s.CLIP_MODEL_NAME, s.CLIP_PRETRAINED_NAME), name=s.CLIP_PRETRAINED_NAME
        )
    if weights is not None:
        load_checkpoint(model, weights)
    freeze_clip(model, list(s.CLIP_FROZEN_EXCLUDE), list(s.CLIP_DEEPER_FROZEN_EXCLUDE))
    return model
