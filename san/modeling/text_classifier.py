"""Vocabulary -> classifier weights: CLIP's text tower, a prompt ensemble and a background row.

Shape shorthand: C class names, T templates, E CLIP embedding width, W text width.

Each name is put into every template, encoded, L2-normalised, averaged over templates and
re-normalised (official ``PredefinedOvClassifier``). The learnable ``bg_embed`` is appended as the
last row, the whole matrix is normalised again and scaled by ``exp(logit_scale)``
(``LearnableBgOvClassifier``). Checkpoint prefix: ``ov_classifier``.

Encoding is exact but batched: all (template, name) prompts go through the text tower together in
chunks sorted by length, each chunk cut after its longest end-of-text token. CLIP's causal mask
means no token before the end-of-text token ever sees the cut positions, so the result equals the
full 77-token pass. Embeddings are cached per name by a :class:`~san.modeling.text_cache.TextEmbeddingCache`
(memory, and disk when it has a folder) under a key of (text-tower weights hash, template set); the
weights hash is recomputed whenever weights load. ``embed_names(names, fast=False)`` is the
straightforward reference path (one pass per template over all 77 positions, no cache) used by
tests and ``scripts/benchmark.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .clip import ResidualAttentionBlock
from .text_cache import TextEmbeddingCache

logger = logging.getLogger(__name__)

__all__ = ["TextClassifier", "TextTransformer", "fit_to_context", "shared_prefixes", "validate_vocabulary"]

# parameters a name's embedding does not depend on (learnable background row, classifier scale)
_NOT_IN_NAME_EMBEDDINGS = ("bg_embed", "logit_scale")


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


def fit_to_context(
    names: Sequence[str],
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    templates: Sequence[str] = ("{}",),
    context_length: int = 77,
) -> list[str]:
    """Cut names so that every prompt (template + name + start/end tokens) fits CLIP's context."""
    limit = context_length - 2
    frame = max(len(encode(t.replace("{}", ""))) for t in templates)

    def too_long(name: str) -> bool:
        if len(encode(name)) + frame + 4 <= limit:  # clearly fits: skip tokenizing every prompt
            return False
        return max(len(encode(t.format(name))) for t in templates) > limit

    out = []
    for n in names:
        if too_long(n):
            tokens = encode(n)
            k = max(1, len(tokens) - (max(len(encode(t.format(n))) for t in templates) - limit))
            cut = decode(tokens[:k]).strip()
            while k > 1 and too_long(cut):  # decoding may merge or split tokens: shrink until it fits
                k -= 1
                cut = decode(tokens[:k]).strip()
            logger.warning(
                "class name %r has %d tokens, more than fit CLIP's %d-token context with the prompt templates; "
                "it was cut to %r",
                n if len(n) < 80 else n[:77] + "...",
                len(tokens),
                context_length,
                cut,
            )
            n = cut
        out.append(n)
    return out


def shared_prefixes(tokens: Tensor, lengths: Tensor, prefixes: Sequence[Sequence[int]]) -> list[tuple[Tensor, int]]:
    """Group token rows ``[N, T]`` (``lengths`` ``[N]``, end-of-text included) by the prefix they begin with.

    Under CLIP's causal mask a token's state depends on the tokens before it only, so rows that begin
    with the same ``p`` tokens share those tokens' states at every block. Each row takes the longest of
    ``prefixes`` (token lists: each prompt template's fixed words, start token included) that it begins
    with and that leaves it its end-of-text token, else its start token alone. The choice depends on the
    row alone, never on the other rows, so a prompt is encoded the same way in any vocabulary. Returns
    ``(row indices, p)`` per group, covering every row once.
    """
    rows, ends = tokens.tolist(), lengths.tolist()
    options = sorted({tuple(p) for p in prefixes if len(p) > 1}, key=len, reverse=True)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (row, end) in enumerate(zip(rows, ends)):
        p = next((len(o) for o in options if len(o) < end and tuple(row[: len(o)]) == o), 1)
        groups.setdefault(tuple(row[:p]), []).append(i)
    return [(torch.tensor(members), len(prefix)) for prefix, members in groups.items()]


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
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.set_templates(templates)
        self.set_batch_size(batch_size)
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
        self.cache = TextEmbeddingCache(cache_dir)
        self._weights_key: str | None = None

    # -- tokenizer and cache ---------------------------------------------------------------------
    @property
    def tokenizer(self) -> Callable[[list[str]], Tensor]:
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.positional_embedding.shape[0])
        return self._tokenizer

    def clear_cache(self) -> None:
        """Forget in-memory name embeddings and the weights hash (done automatically on weight loads)."""
        self.cache.clear()
        self._weights_key = None

    def set_cache_dir(self, directory: str | os.PathLike | None) -> None:
        """Keep name embeddings on disk in ``directory`` as well (None: memory only)."""
        self.cache.set_directory(directory)

    def set_templates(self, templates: Sequence[str]) -> None:
        """Use another prompt ensemble (each template holds ``{}`` for the name); cached embeddings
        of the old one are forgotten in memory (disk files are keyed by the template set)."""
        if isinstance(templates, str) or not templates or any("{}" not in t for t in templates):
            raise ValueError("give a list of prompt templates, each with '{}' for the class name")
        self.templates = tuple(templates)
        self._template_prefixes: list[list[int]] | None = None
        if hasattr(self, "cache"):
            self.cache.clear()

    def set_batch_size(self, batch_size: int) -> None:
        """Prompts encoded per text-tower pass (memory vs. speed; the result does not change)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def cache_key(self) -> str:
        """Hex key of (text-tower weights, template set) under which name embeddings are cached."""
        if self._weights_key is None:
            h = hashlib.sha256()
            for name, t in self.state_dict().items():
                if name in _NOT_IN_NAME_EMBEDDINGS:
                    continue
                t = t.detach().to("cpu", torch.float32).contiguous()
                h.update(f"{name}{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
            self._weights_key = h.hexdigest()[:20]
        tpl = hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:12]
        return f"{self._weights_key}-{tpl}"

    def fit_names(self, names: Sequence[str]) -> list[str]:
        """``names`` with those too long for the context (after the longest template) cut to fit, each
        cut logged as a warning."""
        tok = self.tokenizer
        if not hasattr(tok, "encode"):  # a plain callable tokenizer cannot say how long a name is
            return list(names)
        return fit_to_context(names, tok.encode, tok.decode, self.templates, self.positional_embedding.shape[0])

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
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest id
        return self._embed(x[torch.arange(n, device=x.device), eot])

    def _embed(self, states: Tensor) -> Tensor:
        """The tower's last states of end-of-text tokens ``[N, W]`` -> normalised embeddings ``[N, E]``."""
        return F.normalize(self.ln_final(states) @ self.text_projection, dim=-1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Normalised embeddings ``[N, E]`` of raw prompts: shared prefixes once, the rest batched and cut.

        Prompts are grouped by the tokens they begin with (:func:`shared_prefixes`); each group's prefix
        runs through the tower once and its keys and values serve every prompt of the group, whose own
        tokens run in chunks sorted by length, cut after the longest end-of-text token; the last block
        runs the end-of-text query alone.
        """
        device = self.text_projection.device
        tokens = self.tokenizer(prompts)  # [N, 77]
        lengths = tokens.argmax(dim=-1) + 1
        out = torch.empty(len(prompts), self.text_projection.shape[1], device=device)
        groups = shared_prefixes(tokens, lengths, self.template_prefixes())
        # a progress bar for long vocabularies (thousands of names), none for short ones
        with tqdm(
            total=len(prompts),
            desc="encoding class names",
            unit="prompt",
            disable=len(prompts) <= 4 * self.batch_size,
            leave=False,
        ) as bar:
            for rows, p in groups:
                past = self._prefix_keys(tokens[rows[0], :p].to(device))
                for idx in self._chunks(rows, lengths):
                    rest = tokens[idx, p : int(lengths[idx[0]])].to(device)
                    out[idx.to(device)] = self._encode_rest(rest, (lengths[idx] - 1 - p).to(device), past).float()
                    bar.update(len(idx))
        return out

    def _chunks(self, rows: Tensor, lengths: Tensor) -> list[Tensor]:
        """``rows`` longest first, in chunks of at most ``batch_size`` whose rows are all longer than 3/4 of
        the chunk's first: each chunk is cut to its first row's length, so padding stays under a quarter."""
        rows = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
        sizes, start = lengths[rows].tolist(), 0
        chunks = []
        for i in range(1, len(rows) + 1):
            if i == len(rows) or 4 * sizes[i] <= 3 * sizes[start] or i - start == self.batch_size:
                chunks.append(rows[start:i])
                start = i
        return chunks

    def template_prefixes(self) -> list[list[int]]:
        """Each template's fixed words before ``{}`` as tokens (start token included, end-of-text not)."""
        if self._template_prefixes is None:
            heads = [t.split("{}")[0].strip() for t in self.templates]
            tokens = self.tokenizer(heads)
            self._template_prefixes = [row[: int(end)].tolist() for row, end in zip(tokens, tokens.argmax(dim=-1))]
        return self._template_prefixes

    def _prefix_keys(self, prefix: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each block's keys and values ``[1, heads, p, head_dim]`` of the prefix tokens ``[p]``."""
        p = prefix.shape[0]
        x = (self.token_embedding(prefix) + self.positional_embedding[:p]).unsqueeze(0)  # [1, p, W]
        blocks = self.transformer.resblocks
        width, heads = x.shape[-1], blocks[0].attn.num_heads
        nothing = (x.new_empty(1, heads, 0, width // heads),) * 2  # no tokens before the prefix
        past = []
        for block in blocks:
            x, kv = block.forward_after(x, nothing, self.attn_mask[:p, :p])
            past.append(kv)
        return past

    def _encode_rest(self, rest: Tensor, eot: Tensor, past: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Tokens ``[B, s]`` after a prefix with keys ``past``, end-of-text at ``eot`` ``[B]`` -> ``[B, E]``."""
        b, s = rest.shape
        p = past[0][0].shape[2]
        x = self.token_embedding(rest) + self.positional_embedding[p : p + s]  # [B, s, W]
        causal = self.attn_mask[:s, :s]
        mask = torch.cat([causal.new_zeros(s, p), causal], dim=1)  # [s, p + s]: the prefix is visible to all
        *blocks, last = self.transformer.resblocks
        for block, kv in zip(blocks, past):
            x, _ = block.forward_after(x, kv, mask)
        x, _ = last.forward_after(x, past[-1], mask[eot].view(b, 1, 1, p + s), rows=eot)
        return self._embed(x[:, 0])

    @torch.no_grad()
    def encode_reference(self, names: Sequence[str]) -> Tensor:
        """Reference path: one pass per template over all names, all 77 positions, no cache -> ``[C, E]``."""
        device = self.text_projection.device
        per_template = []
        for tpl in self.templates:
            tokens = self.tokenizer([tpl.format(n) for n in names]).to(device)  # [C, 77]
            per_template.append(self.encode_tokens(tokens).float())
        return F.normalize(torch.stack(per_template, dim=1).mean(dim=1), dim=-1)

    @torch.no_grad()
    def embed_names(self, names: Sequence[str], fast: bool = True) -> Tensor:
        """Template-averaged, normalised text embeddings ``[C, E]``.

        Args:
            names: class names.
            fast: batched, cut, cached encoding (default); False runs :meth:`encode_reference`.
        """
        names = validate_vocabulary(names)
        if not fast:
            return self.encode_reference(names)
        # the weights hash costs a pass over the text tower: only the disk cache needs it (the memory
        # cache is cleared whenever weights load)
        key = self.cache_key() if self.cache.directory is not None else "memory"
        found = self.cache.lookup(key, names)
        new = list(dict.fromkeys(n for n in names if n not in found))
        if new:
            prompts = [tpl.format(n) for n in new for tpl in self.templates]
            emb = self.encode_prompts(prompts).view(len(new), len(self.templates), -1)  # [C, T, E]
            emb = F.normalize(emb.mean(dim=1), dim=-1)
            self.cache.store(key, dict(zip(new, emb)))
            found.update(zip(new, emb))
        device = self.text_projection.device
        return torch.stack([found[n].to(device, torch.float32) for n in names])

    def forward(self, vocabulary: Sequence[str]) -> Tensor:
        """Scaled classifier ``[C + 1, E]``: class rows then the background row, times exp(scale)."""
        return self.assemble(self.embed_names(vocabulary))

    def assemble(self, rows: Tensor, background: Tensor | None = None) -> Tensor:
        """The scaled classifier ``[C + 1, E]`` of class embeddings ``rows`` ``[C, E]`` and a background
        row (``[E]``; default the learned ``bg_embed``): all normalised, times exp(scale)."""
        bg = self.bg_embed.to(self.text_projection.dtype) if background is None else background.reshape(1, -1)
        return F.normalize(torch.cat([rows, bg.to(rows.dtype)], dim=0), dim=-1) * self.logit_scale.exp()
