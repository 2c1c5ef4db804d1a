"""Vocabulary -> classifier weights: CLIP's text tower, a prompt ensemble and a background row.

Shape shorthand: C class names, T templates, E CLIP embedding width, W text width.

Each name is put into every template, encoded, L2-normalised, averaged over templates and
re-normalised (official ``PredefinedOvClassifier``). The learnable ``bg_embed`` is appended as the
last row, the whole matrix is normalised again and scaled by ``exp(logit_scale)``
(``LearnableBgOvClassifier``). Checkpoint prefix: ``ov_classifier``.

Encoding is exact but batched: all (template, name) prompts go through the text tower together in
chunks sorted by length, each chunk cut after its longest end-of-text token. CLIP's causal mask
means no token before the end-of-text token ever sees the cut positions, so the result equals the
full 77-token pass. Embeddings are cached per name; the cache is cleared whenever weights load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ResidualAttentionBlock

logger = logging.getLogger(__name__)

__all__ = ["TextClassifier", "TextTransformer", "validate_vocabulary"]


def validate_vocabulary(vocabulary: Sequence[str]) -> list[str]:
    """Strip names and reject vocabularies a classifier can't be built from."""
    if isinstance(vocabulary, str):
        raise TypeError(f"vocabulary must be a list of class names, not a string ({vocabulary!r}); split it first")
    names = list(vocabulary)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"class names must be strings, got {bad[:3]}")
    stripped = [n.strip() for n in names]
    empty = [i for i, n in enumerate(stripped) if not n]
    if empty:
        raise ValueError(f"the vocabulary has empty class names at positions {empty}: remove them")
    return stripped


class TextTransformer(nn.Module):
    """A stack of CLIP blocks under the name ``resblocks`` (open_clip's ``transformer``)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio=mlp_ratio, act_layer=act_layer) for _ in range(layers)
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class TextClassifier(nn.Module):
    """CLIP text tower + prompt ensemble + learnable background embedding."""

    def __init__(
        self,
        *,
        width: int,
        layers: int,
        heads: int,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        templates: Sequence[str] = ("a photo of a {}.",),
        tokenizer: Callable[[list[str]], Tensor] | None = None,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("every prompt template must contain '{}' for the class name")
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self._tokenizer = tokenizer
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = TextTransformer(width, layers, heads, mlp_ratio, act_layer)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # ln(100)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask)  # persistent: the official checkpoints hold it
        self.bg_embed = nn.Parameter(torch.randn(1, embed_dim) * embed_dim**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        self._cache: dict[str, Tensor] = {}

    # -- tokenizer and cache ---------------------------------------------------------------------
    @property
    def tokenizer(self) -> Callable[[list[str]], Tensor]:
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.positional_embedding.shape[0])
        return self._tokenizer

    def clear_cache(self) -> None:
        """Forget cached name embeddings (done automatically when weights are loaded)."""
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: D401 - torch hook
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> TextClassifier:
        # frozen tower: always in eval mode (official); bg_embed still learns
        return super().train(False)

    # -- encoding ----------------------------------------------------------------------------------
    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Encode token ids ``[N, T]`` (all cut to the same length) -> normalised ``[N, E]``."""
        n, t = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:t]  # [N, T, W]
        x = self.transformer(x, attn_mask=self.attn_mask[:t, :t])
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest id
        x = x[torch.arange(n, device=x.device), eot] @ self.text_projection
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Normalised embeddings ``[N, E]`` of raw prompts, batched and cut at the end-of-text token."""
        device = self.text_projection.device
        tokens = self.tokenizer(prompts)  # [N, 77]
        lengths = tokens.argmax(dim=-1) + 1
        order = torch.argsort(lengths, descending=True)
        out = torch.empty(len(prompts), self.text_projection.shape[1], device=device)
        for start in range(0, len(prompts), self.batch_size):
            idx = order[start : start + self.batch_size]
            t = int(lengths[idx].max())
            out[idx.to(device)] = self.encode_tokens(tokens[idx, :t].to(device)).float()
        return out

    @torch.no_grad()
    def embed_names(self, names: Sequence[str]) -> Tensor:
        """Template-averaged, normalised text embeddings ``[C, E]`` (cached per name)."""
        names = validate_vocabulary(names)
        new = list(dict.fromkeys(n for n in names if n not in self._cache))
        if new:
            prompts = [tpl.format(n) for n in new for tpl in self.templates]
            emb = self.encode_prompts(prompts).view(len(new), len(self.templates), -1)  # [C, T, E]
            emb = F.normalize(emb.mean(dim=1), dim=-1)
            self._cache.update(zip(new, emb))
        device = self.text_projection.device
        return torch.stack([self._cache[n].to(device) for n in names])

    def forward(self, vocabulary: Sequence[str]) -> Tensor:
        """Scaled classifier ``[C + 1, E]``: class rows then the background row, times exp(scale)."""
        weights = torch.cat([self.embed_names(vocabulary), self.bg_embed.to(self.text_projection.dtype)], dim=0)
        return F.normalize(weights, dim=-1) * self.logit_scale.exp()
