"""MLP mask decoder: mask proposals and attention biases from side-adapter features (paper §3.2).

Shape shorthand: B batch, Q queries, C side width, h x w side grid (input / 16), K embedding
channels, H attention-bias heads, N bias layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import MLP

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """Query, pixel and attention MLPs (official ``MLPMaskDecoder``)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_heads: int = 12,
        num_layers: int = 1,
        embed_channels: int = 256,
        mlp_channels: int = 256,
        mlp_num_layers: int = 3,
        rescale_attn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.query_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_num_layers)
        self.pix_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_num_layers, conv=True)
        self.attn_mlp = MLP(
            in_channels, mlp_channels, embed_channels * num_heads * num_layers, mlp_num_layers, conv=True
        )
        # a learnable scalar affine a*x + b applied to every bias value
        self.bias_scaling = nn.Linear(1, 1) if rescale_attn_bias else nn.Identity()

    def forward(self, query: Tensor, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Decode one supervision level.

        Args:
            query: query tokens ``[B, Q, C]``.
            x: visual features ``[B, C, h, w]``.

        Returns:
            mask logits ``[B, Q, h, w]`` and a list of N attention biases ``[B, H, Q, h, w]``.
        """
        q = self.query_mlp(query)  # [B, Q, K]
        pix = self.pix_mlp(x)  # [B, K, h, w]
        b, k, h, w = pix.shape
        masks = torch.einsum("bqk,bkhw->bqhw", q, pix)
        attn = self.attn_mlp(x).reshape(b, self.num_layers, self.num_heads, k, h, w)
        bias = torch.einsum("bqk,bnmkhw->bnmqhw", q, attn)  # [B, N, H, Q, h, w]
        bias = self.bias_scaling(bias[..., None]).squeeze(-1)
        return masks, list(bias.unbind(dim=1))
