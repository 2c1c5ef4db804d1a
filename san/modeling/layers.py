"""Small layers shared by the side adapter and the mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gemm import Linear

__all__ = ["LayerNorm2d", "MLP", "AddFusion"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (eps 1e-6, as the official fusion)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # the official formula, op for op: float32 results then match the released model bit for bit
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """``num_layers`` affine layers with ReLU between them (Linear, or 1x1 Conv when ``conv``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *, conv: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        make = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if conv else Linear
        self.layers = nn.ModuleList(make(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class AddFusion(nn.Module):
    """Project a CLIP map to the side width and add it to the side adapter's visual tokens."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.input_proj = nn.Sequential(LayerNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, 1))
        # detectron2's c2_xavier_fill: kaiming_uniform with a=1, zero bias
        nn.init.kaiming_uniform_(self.input_proj[1].weight, a=1)
        nn.init.zeros_(self.input_proj[1].bias)

    def forward(self, x: Tensor, clip_map: Tensor, grid: tuple[int, int]) -> Tensor:
        """Add ``clip_map`` ``[B, Dc, h', w']`` to visual tokens ``x`` ``[B, h*w, C]``."""
        y = self.input_proj(clip_map.contiguous())  # [B, C, h', w']
        y = F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
        return x + y.flatten(2).transpose(1, 2)
