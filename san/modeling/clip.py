"""CLIP building blocks with open_clip's parameter names, and CLIP configs and weights.

SAN splits a CLIP ViT into pieces (feature extractor, recognition head, text classifier). We build
those pieces from our own transformer blocks whose parameter names equal open_clip's
(``ln_1``, ``attn.in_proj_weight``, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``), so
open_clip weights and the official SAN checkpoints load without key tables, while the attention
itself runs through ``F.scaled_dot_product_attention`` and exposes q/k/v for the SOS-token path.

open_clip is used for what it is good at: model configs by name, pretrained weights by tag
(fetched in :mod:`san.checkpoint`), and the tokenizer. It never runs the forward pass.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gemm import Linear, linear

logger = logging.getLogger(__name__)

# OpenAI CLIP's image normalisation (RGB, 0..1 scale)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "QuickGELU",
    "SelfAttention",
    "ResidualAttentionBlock",
    "CLIPConfig",
    "resolve_clip_config",
    "is_torchscript",
    "open_clip_name",
]


class QuickGELU(nn.Module):
    """The sigmoid GELU approximation that OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch first."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens ``[B, N, D]`` to q, k, v, each ``[B, heads, N, head_dim]``."""
        b, n, _ = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def project_out(self, out: Tensor) -> Tensor:
        """Merge heads ``[B, heads, N, head_dim]`` and apply the output projection."""
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        return self.project_out(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm transformer block (open_clip names)."""

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, act_layer: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", Linear(dim, hidden)), ("gelu", act_layer()), ("c_proj", Linear(hidden, dim))])
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))

    def forward_after(
        self, x: Tensor, past: tuple[Tensor, Tensor], attn_mask: Tensor, rows: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block on tokens ``x`` ``[B, n, D]`` that follow ``p`` earlier tokens (a KV cache).

        ``past``: the earlier tokens' keys and values at this block, ``[1 or B, heads, p, head_dim]`` each.
        ``attn_mask``: additive, ``[n, p + n]`` (or ``[B, 1, n, p + n]``) over [past, own] keys.
        ``rows``: ``[B]`` positions in ``x``; when given only those queries run (the last block of a
        causal tower needs one output token per sequence) and ``attn_mask`` covers those rows only.
        Returns the block's output (``[B, n, D]``, or ``[B, 1, D]`` with ``rows``) and ``x``'s own
        ``(k, v)`` ``[B, heads, n, head_dim]``, which later tokens attend to.
        """
        b = x.shape[0]
        q, k, v = self.attn.qkv(self.ln_1(x))
        keys = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
        values = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
        if rows is not None:
            pick = torch.arange(b, device=x.device)
            q, x = q[pick, :, rows].unsqueeze(2), x[pick, rows].unsqueeze(1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask.to(q.dtype))
        x = x + self.attn.project_out(out)
        return x + self.mlp(self.ln_2(x)), (k, v)


# --------------------------------------------------------------------------------------------
# Configs and weights
# --------------------------------------------------------------------------------------------
_UNSUPPORTED_VISION = (
    "timm_model_name",
    "attentional_pool",
    "global_average_pool",
    "input_patchnorm",
    "ls_init_value",
    "no_ln_pre",
    "pool_type",
    "final_ln_after_pool",
)
_UNSUPPORTED_TEXT = ("hf_model_name", "ls_init_value", "embed_cls", "pool_type", "no_causal_mask")


@dataclass(frozen=True)
class CLIPConfig:
    """The numbers of a CLIP ViT that SAN needs (from an open_clip model config)."""

    name: str
    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_ratio: float
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_ratio: float
    context_length: int
    vocab_size: int
    quick_gelu: bool

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def act_layer(self) -> type[nn.Module]:
        return QuickGELU if self.quick_gelu else nn.GELU


def open_clip_name(name: str) -> str:
    # open_clip spells "ViT-B/16" as "ViT-B-16"; the official config uses the former.
    return name.replace("/", "-")


def _pretrained_wants_quick_gelu(name: str, pretrained: str) -> bool:
    """Whether the CLIP weights named by ``pretrained`` were trained with QuickGELU.

    OpenAI's weights were: the ``openai`` tag and OpenAI's original TorchScript archives. A plain
    state-dict file cannot tell; for a local copy of OpenAI's weights in that form use an open_clip
    ``-quickgelu`` model name (e.g. ``ViT-B-16-quickgelu``) or a model config with ``"quick_gelu": true``.
    """
    if not pretrained:
        return False
    if os.path.isfile(pretrained):
        return zipfile.is_zipfile(pretrained) and is_torchscript(pretrained)
    if pretrained == "openai":
        return True
    try:
        import open_clip

        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    except Exception:  # an unknown tag is reported when the weights are loaded
        return False


def resolve_clip_config(model_name: str, pretrained: str = "") -> CLIPConfig:
    """Resolve an open_clip model name, or a path to an open_clip model-config JSON, to a config.

    ``pretrained`` decides the activation as open_clip does: OpenAI's weights use QuickGELU.
    """
    if model_name.endswith(".json") or os.path.isfile(model_name):
        if not os.path.isfile(model_name):
            raise FileNotFoundError(f"open_clip model config not found: {model_name}")
        with open(model_name, encoding="utf-8") as f:
            cfg = json.load(f)
        name = os.path.splitext(os.path.basename(model_name))[0]
    else:
        import open_clip

        name = open_clip_name(model_name)
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            known = [m for m in open_clip.list_models() if m.startswith("ViT")]
            raise ValueError(
                f"unknown open_clip model {model_name!r}: give an open_clip model name (e.g. "
                f"{', '.join(known[:6])}, ...) or a path to an open_clip model-config JSON"
            )
    return clip_config_from_dict(cfg, name=name, pretrained=pretrained)


def clip_config_from_dict(cfg: dict, *, name: str = "clip", pretrained: str = "") -> CLIPConfig:
    """Turn an open_clip model-config dict into a :class:`CLIPConfig`, refusing what SAN can't use."""
    try:
        vision, text = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
        embed_dim = int(cfg["embed_dim"])
    except (KeyError, TypeError):
        raise ValueError(
            f"CLIP config {name!r} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
        ) from None
    bad = [k for k in _UNSUPPORTED_VISION if vision.get(k)] + [
        f"text_cfg.{k}" for k in _UNSUPPORTED_TEXT if text.get(k)
    ]
    if isinstance(vision.get("layers"), (list, tuple)):
        bad.append("ResNet vision tower")
    if bad:
        raise ValueError(f"CLIP config {name!r} uses options SAN does not support: {bad}")
    width = int(vision["width"])
    head_width = int(vision.get("head_width", 64))
    return CLIPConfig(
        name=name,
        embed_dim=embed_dim,
        vision_width=width,
        vision_layers=int(vision["layers"]),
        vision_heads=width // head_width,
        vision_mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        patch_size=int(vision["patch_size"]),
        image_size=int(vision["image_size"]),
        text_width=int(text.get("width", 512)),
        text_layers=int(text.get("layers", 12)),
        text_heads=int(text.get("heads", 8)),
        text_mlp_ratio=float(text.get("mlp_ratio", 4.0)),
        context_length=int(text.get("context_length", 77)),
        vocab_size=int(text.get("vocab_size", 49408)),
        quick_gelu=bool(cfg.get("quick_gelu", False)) or _pretrained_wants_quick_gelu(name, pretrained),
    )


def is_torchscript(path: str) -> bool:
    """Whether a zip file is a TorchScript archive (OpenAI's original CLIP ``.pt`` files are)."""
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
