"""The two halves of SAN's frozen CLIP ViT: feature extractor and recognition head (paper §3.2-3.3).

Shape shorthand: B batch, D CLIP width, h x w CLIP patch grid (L = h*w visual tokens), Q SOS
tokens (= side-adapter queries), H CLIP heads, E CLIP embedding width.

``ClipFeatureExtractor`` (checkpoint prefix ``clip_visual_extractor``) runs CLIP's stem and its
first N blocks on the down-scaled image and keeps the token sequence after the stem (index 0) and
after every block i (index i). ``RecognitionHead`` (prefix ``clip_rec_head``) runs the remaining
blocks with Q extra SOS tokens, each a copy of the class token at depth N. An SOS token attends to
itself and to the visual tokens, with the side adapter's attention bias added to its logits over
the visual tokens; it never sees the class token or the other SOS tokens, and no visual token sees
an SOS token. The official code builds one dense (Q+1+L)^2 mask with -100 entries to get this; we
run the visual tokens through each block once and let the SOS tokens attend to them, which is the
same computation up to exp(-100) terms. ``forward_dense`` keeps the official formulation as the
reference path. The ``sos_attention`` constructor argument (or :meth:`RecognitionHead.set_attention`)
picks how the SOS tokens attend: ``"manual"`` (explicit softmax over the self-logit and the biased
visual logits) or ``"sdpa"`` (one ``F.scaled_dot_product_attention`` over [all SOS keys, visual
keys] with a mask that leaves each SOS token only its own key); both are exact. ``"dense"`` routes
``forward`` to ``forward_dense`` (the reference path ``scripts/benchmark.py`` compares against).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ResidualAttentionBlock

__all__ = [
    "SOS_ATTENTION",
    "SOS_TOKEN_FORMATS",
    "ClipFeatures",
    "ClipFeatureExtractor",
    "RecognitionHead",
    "resize_pos_embed",
]

SOS_TOKEN_FORMATS = ("cls_token", "learnable_token", "pos_embedding")
SOS_ATTENTION = ("sdpa", "manual", "dense")
DOWNSAMPLE_METHODS = ("max", "avg", "bilinear", "bicubic", "nearest")


def resize_pos_embed(pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], prefix: int = 1) -> Tensor:
    """Bicubically resize the grid part of a ``[prefix + h*w, D]`` positional embedding."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    head, grid = pos[:prefix], pos[prefix:]
    grid = grid.reshape(1, src_grid[0], src_grid[1], -1).permute(0, 3, 1, 2)  # [1, D, h0, w0]
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], -1)  # [h*w, D]
    return torch.cat([head, grid], dim=0)


class ClipFeatures:
    """Token sequences ``[B, 1 + L, D]`` (class token first) recorded by the feature extractor."""

    def __init__(self, tokens: dict[int, Tensor], grid: tuple[int, int]) -> None:
        self.tokens = tokens
        self.grid = grid

    def spatial(self, idx: int) -> Tensor:
        """Visual tokens of layer ``idx`` as a map ``[B, D, h, w]``."""
        x = self.tokens[idx][:, 1:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)

    def cls_token(self, idx: int) -> Tensor:
        """Class token of layer ``idx``, ``[B, D]``."""
        return self.tokens[idx][:, 0]

    def float(self) -> ClipFeatures:
        """The same token maps in float32."""
        return ClipFeatures({i: t.float() for i, t in self.tokens.items()}, self.grid)


class ClipFeatureExtractor(nn.Module):
    """CLIP's visual stem and first ``num_layers`` blocks (official: ``FeatureExtractor``)."""

    def __init__(
        self,
        *,
        width: int,
        num_layers: int,
        num_heads: int,
        patch_size: int,
        grid_size: int,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        scale = width**-0.5
        self.grid_size = (grid_size, grid_size)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid_size * grid_size + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, num_heads, mlp_ratio=mlp_ratio, act_layer=act_layer)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor, keep: Sequence[int] | None = None) -> ClipFeatures:
        """Encode a normalised image batch ``[B, 3, H', W']``.

        Args:
            x: the (down-scaled) image batch.
            keep: layer indices to record (0 = after ln_pre, i = after block i); all if None.
        """
        x = self.conv1(x)  # [B, D, h, w]
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, L, D]
        cls = self.class_embedding.to(x.dtype).expand(b, 1, d)
        pos = resize_pos_embed(self.positional_embedding, self.grid_size, (h, w)).to(x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + pos)  # [B, 1 + L, D]
        wanted = set(range(len(self.resblocks) + 1)) if keep is None else set(keep)
        tokens = {0: x} if 0 in wanted else {}
        for i, block in enumerate(self.resblocks[: max(wanted)], start=1):
            x = block(x)
            if i in wanted:
                tokens[i] = x
        return ClipFeatures(tokens, (h, w))


def _downsample(bias: Tensor, size: tuple[int, int], method: str) -> Tensor:
    if method == "max":
        return F.adaptive_max_pool2d(bias, size)
    if method == "avg":
        return F.adaptive_avg_pool2d(bias, size)
    if method in ("bilinear", "bicubic", "nearest"):
        return F.interpolate(bias, size=size, mode=method, align_corners=None if method == "nearest" else False)
    raise ValueError(f"unknown downsample_method {method!r} ({', '.join(DOWNSAMPLE_METHODS)})")


def _sos_attention(q: Tensor, k_self: Tensor, v_self: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """SOS queries ``[B, H, nQ, d]`` over themselves and the visual keys ``[B, H, L, d]`` (+ bias)."""
    scale = q.shape[-1] ** -0.5
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale + bias.to(q.dtype)  # [B, H, nQ, L]
    self_logit = (q * k_self).sum(-1, keepdim=True) * scale  # [B, H, nQ, 1]
    probs = torch.cat([self_logit, logits], dim=-1).softmax(dim=-1)
    return probs[..., :1] * v_self + torch.matmul(probs[..., 1:], v)


def _sos_attention_sdpa(q: Tensor, k_self: Tensor, v_self: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """:func:`_sos_attention` as one SDPA call: keys [SOS keys, visual keys], other SOS keys masked."""
    b, h, nq, _ = q.shape
    own = torch.full((nq, nq), float("-inf"), dtype=q.dtype, device=q.device).fill_diagonal_(0.0)
    mask = torch.cat([own.expand(b, h, nq, nq), bias.to(q.dtype).expand(b, h, nq, -1)], dim=-1)  # [B, H, nQ, nQ+L]
    return F.scaled_dot_product_attention(
        q, torch.cat([k_self, k], dim=2), torch.cat([v_self, v], dim=2), attn_mask=mask
    )


class RecognitionHead(nn.Module):
    """CLIP's deeper blocks with attention-biased SOS tokens (official: ``RecWithAttnbiasHead``)."""

    def __init__(
        self,
        *,
        width: int,
        num_layers: int,
        num_heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        num_sos: int = 100,
        sos_token_format: str = "cls_token",
        downsample_method: str = "max",
        sos_attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if sos_token_format not in SOS_TOKEN_FORMATS:
            raise ValueError(f"unknown sos_token_format {sos_token_format!r} ({', '.join(SOS_TOKEN_FORMATS)})")
        if downsample_method not in DOWNSAMPLE_METHODS:
            raise ValueError(f"unknown downsample_method {downsample_method!r} ({', '.join(DOWNSAMPLE_METHODS)})")
        self.num_heads = num_heads
        self.num_sos = num_sos
        self.sos_token_format = sos_token_format
        self.downsample_method = downsample_method
        self.set_attention(sos_attention)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, num_heads, mlp_ratio=mlp_ratio, act_layer=act_layer)
            for _ in range(num_layers)
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, output_dim))
        if sos_token_format != "cls_token":
            self.sos_token = nn.Parameter(torch.zeros(num_sos, 1, width))
            nn.init.normal_(self.sos_token, std=0.02)

    def set_attention(self, impl: str) -> None:
        """How the SOS tokens attend in :meth:`forward`: ``"sdpa"`` (default), ``"manual"`` or
        ``"dense"`` (the official dense mask, :meth:`forward_dense`); all give the same result."""
        if impl not in SOS_ATTENTION:
            raise ValueError(f"unknown sos_attention {impl!r} ({', '.join(SOS_ATTENTION)})")
        self.sos_attention = impl

    # -- helpers -------------------------------------------------------------------------------
    def _sos_tokens(self, cls: Tensor) -> Tensor:
        """Initial SOS tokens ``[B, Q, D]`` from the class token ``[B, D]``."""
        b = cls.shape[0]
        if self.sos_token_format == "cls_token":
            return cls[:, None].expand(b, self.num_sos, -1)
        learned = self.sos_token[:, 0].to(cls.dtype)[None].expand(b, -1, -1)
        return learned + cls[:, None] if self.sos_token_format == "pos_embedding" else learned

    def format_biases(self, attn_bias: Sequence[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        """Per-block biases ``[B, H, Q, L]`` from the decoder's ``[B, H or 1, Q, h_s, w_s]`` list."""
        out = []
        for bias in attn_bias:
            b, nh, q, hs, ws = bias.shape
            if nh not in (1, self.num_heads):
                raise ValueError(
                    f"attention bias has {nh} heads; CLIP has {self.num_heads} (use 1 or {self.num_heads})"
                )
            if q != self.num_sos:
                raise ValueError(f"attention bias has {q} queries; the recognition head has {self.num_sos} SOS tokens")
            bias = _downsample(bias.reshape(b, nh * q, hs, ws), grid, self.downsample_method)
            bias = bias.reshape(b, nh, q, grid[0] * grid[1]).expand(b, self.num_heads, q, -1)
            out.append(bias)
        if len(out) == 1:
            return out * len(self.resblocks)
        if len(out) != len(self.resblocks):
            raise ValueError(
                f"got attention biases for {len(out)} layers; the recognition head has {len(self.resblocks)} "
                "blocks (the mask decoder's num_layers must be 1 or the number of deeper CLIP blocks)"
            )
        return out

    def _embed(self, sos: Tensor, normalize: bool) -> Tensor:
        sos = self.ln_post(sos) @ self.proj.to(sos.dtype)  # [B, Q, E]
        return F.normalize(sos, dim=-1) if normalize else sos

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self, features: ClipFeatures, layer: int, attn_biases: Sequence[Sequence[Tensor]], normalize: bool = True
    ) -> list[Tensor]:
        """Mask embeddings ``[B, Q, E]``, one per supervision level.

        Args:
            features: the extractor's output; ``layer`` is the index fed to the first deeper block.
            attn_biases: per level, the per-layer bias list from the mask decoder.
        """
        if self.sos_attention == "dense":
            return self.forward_dense(features, layer, attn_biases, normalize)
        x = features.tokens[layer]  # [B, 1 + L, D]
        grid = features.grid
        levels = [self.format_biases(level, grid) for level in attn_biases]
        n_lvl = len(levels)
        # all levels' SOS tokens travel together; they never see each other
        sos = self._sos_tokens(x[:, 0]).repeat(1, n_lvl, 1)  # [B, n_lvl*Q, D]
        biases = [torch.cat([lvl[i] for lvl in levels], dim=2) for i in range(len(self.resblocks))]
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            attn = block.attn
            q_x, k_x, v_x = attn.qkv(block.ln_1(x))  # [B, H, 1 + L, d]
            q_s, k_s, v_s = attn.qkv(block.ln_1(sos))  # [B, H, nQ, d]
            if self.sos_attention == "sdpa":
                out = _sos_attention_sdpa(q_s, k_s, v_s, k_x[:, :, 1:], v_x[:, :, 1:], biases[i])
            else:
                out = _sos_attention(q_s, k_s, v_s, k_x[:, :, 1:], v_x[:, :, 1:], biases[i])
            sos = sos + attn.project_out(out)
            sos = sos + block.mlp(block.ln_2(sos))
            if i < last:  # the visual tokens after the last block are not needed
                x = x + attn.project_out(F.scaled_dot_product_attention(q_x, k_x, v_x))
                x = x + block.mlp(block.ln_2(x))
        return list(self._embed(sos, normalize).chunk(n_lvl, dim=1))

    def forward_dense(
        self, features: ClipFeatures, layer: int, attn_biases: Sequence[Sequence[Tensor]], normalize: bool = True
    ) -> list[Tensor]:
        """Reference path: the official dense ``(Q+1+L)^2`` attention mask, one pass per level."""
        x0 = features.tokens[layer]
        b, n, _ = x0.shape
        q = self.num_sos
        outs = []
        for level in attn_biases:
            biases = self.format_biases(level, features.grid)
            x = torch.cat([self._sos_tokens(x0[:, 0]), x0], dim=1)  # [B, Q + 1 + L, D]
            for block, bias in zip(self.resblocks, biases):
                mask = bias.new_zeros(b, self.num_heads, q + n, q + n)
                mask[..., :q] = -100.0
                mask[..., torch.arange(q), torch.arange(q)] = 0.0
                mask[..., :q, q] = -100.0
                mask[..., :q, q + 1 :] = bias
                x = block(x, attn_mask=mask)
            outs.append(self._embed(x[:, :q], normalize))
        return outs
