"""Side adapter network: a light ViT on the full-resolution image with fused CLIP features (§3.1).

Shape shorthand: B batch, Q queries, C side width, h x w side grid (input / patch), L = h*w.

Q learnable query tokens are prepended to the patch tokens. Query and patch positional embeddings
are added before the first block and again after every block but the last. CLIP token maps are
fused into the patch tokens (``fusion_map`` ``{side index: CLIP layer}``: side index 0 means before
block 1, i means after block i). The outputs of the blocks in ``deep_supervision_idxs`` go to the mask
decoder. Checkpoint prefix: ``side_adapter_network`` (timm names inside ``vit_model``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .clip_adapter import ClipFeatures
from .gemm import adopt_linears
from .layers import AddFusion
from .mask_decoder import MaskDecoder

__all__ = ["SideViT", "SideAdapterNetwork"]


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # [B, C, h, w]


class SideViT(nn.Module):
    """Plain ViT without class token or final norm (timm parameter names)."""

    def __init__(
        self, *, width: int, depth: int, num_heads: int, patch_size: int, image_size: int, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], width))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(
            Block(
                width,
                num_heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                drop_path=dpr[i],
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for i in range(depth)
        )
        adopt_linears(self.blocks)  # timm builds nn.Linear: float32 CPU inference goes through san.modeling.gemm
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Positional embedding ``[1, h*w, C]`` bicubically resized to the actual grid."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        pos = self.pos_embed.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)


class SideAdapterNetwork(nn.Module):
    """Side ViT + query tokens + CLIP fusion + mask decoder (official ``RegionwiseSideAdapterNetwork``)."""

    def __init__(
        self,
        *,
        vit_model: SideViT,
        mask_decoder: MaskDecoder,
        clip_width: int,
        num_queries: int = 100,
        fusion_map: Mapping[int, int],
        deep_supervision_idxs: Sequence[int] = (7, 8),
        full_precision: bool = False,
    ) -> None:
        super().__init__()
        width = vit_model.pos_embed.shape[-1]
        depth = len(vit_model.blocks)
        if not deep_supervision_idxs or any(not 1 <= i <= depth for i in deep_supervision_idxs):
            raise ValueError(f"deep_supervision_idxs {list(deep_supervision_idxs)} must lie in 1..{depth}")
        if any(not 0 <= s <= depth for s in fusion_map):
            raise ValueError(f"fusion_map side indices {sorted(fusion_map)} must lie in 0..{depth}")
        self.vit_model = vit_model
        self.num_queries = num_queries
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        self.fusion_map = dict(fusion_map)
        self.fusion_layers = nn.ModuleDict({f"layer_{s}": AddFusion(clip_width, width) for s in self.fusion_map})
        self.mask_decoder = mask_decoder
        self.deep_supervision_idxs = tuple(sorted(deep_supervision_idxs))
        self.set_full_precision(full_precision)

    def set_full_precision(self, enabled: bool) -> None:
        """True: run in float32 even inside a bf16/fp16 autocast region (the mask proposals decide the
        label boundaries; the rest of SAN may still run in half precision)."""
        self.full_precision = bool(enabled)

    @property
    def clip_layers_needed(self) -> list[int]:
        """CLIP layer indices the fusion reads."""
        return sorted(set(self.fusion_map.values()))

    def _fuse(self, idx: int, x: Tensor, clip: ClipFeatures, grid: tuple[int, int]) -> Tensor:
        if idx not in self.fusion_map:
            return x
        q = self.num_queries
        vis = self.fusion_layers[f"layer_{idx}"](x[:, q:], clip.spatial(self.fusion_map[idx]), grid)
        return torch.cat([x[:, :q], vis], dim=1)

    def forward_features(
        self, image: Tensor, clip: ClipFeatures, levels: Sequence[int] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Run the side ViT; return ``(query [B, Q, C], x [B, C, h, w])`` for each supervision block.

        Args:
            image: normalised full-resolution batch ``[B, 3, H, W]``.
            clip: CLIP token maps from the feature extractor.
            levels: blocks to return (default: all of ``deep_supervision_idxs``).
        """
        levels = self.deep_supervision_idxs if levels is None else tuple(levels)
        x = self.vit_model.patch_embed(image)  # [B, C, h, w]
        b, c, h, w = x.shape
        q = self.num_queries
        pos = torch.cat([self.query_pos_embed, self.vit_model.pos_embed_for((h, w))], dim=1)  # [1, Q + L, C]
        x = torch.cat([self.query_embed.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
        x = self._fuse(0, x, clip, (h, w))
        outs = []
        depth = max(levels)  # blocks after the last wanted level are not run
        for i, block in enumerate(self.vit_model.blocks[:depth], start=1):
            x = self._fuse(i, block(x), clip, (h, w))
            if i in levels:
                outs.append((x[:, :q], x[:, q:].transpose(1, 2).reshape(b, c, h, w)))
            if i < len(self.vit_model.blocks):
                x = x + pos
        return outs

    def forward(
        self, image: Tensor, clip: ClipFeatures, levels: Sequence[int] | None = None
    ) -> tuple[list[Tensor], list[list[Tensor]]]:
        """Mask logits ``[B, Q, h, w]`` and attention-bias lists, one per requested level."""
        device = image.device.type
        if self.full_precision and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._decode(image.float(), clip.float(), levels)
        return self._decode(image, clip, levels)

    def _decode(
        self, image: Tensor, clip: ClipFeatures, levels: Sequence[int] | None
    ) -> tuple[list[Tensor], list[list[Tensor]]]:
        masks, biases = [], []
        for query, feat in self.forward_features(image, clip, levels):
            m, bias = self.mask_decoder(query, feat)
            masks.append(m)
            biases.append(bias)
        return masks, biases
