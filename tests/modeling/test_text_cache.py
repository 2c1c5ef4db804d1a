"""The text-embedding cache (modeling/text_cache.py) and its key: what the key must and must not depend on,
memory and disk lookups, merges between writers, and unreadable files."""

from __future__ import annotations

import pytest
import torch

from san.modeling.text_cache import TextEmbeddingCache
from san.modeling.text_classifier import TextClassifier


def _classifier(**kw) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(width=32, layers=2, heads=2, embed_dim=16, templates=("a {}.", "the {}"), **kw)


def test_the_key_depends_on_the_text_tower_and_templates_only():
    clf = _classifier()
    key = clf.cache_key()
    # what a name's embedding does not depend on leaves the key as it is
    with torch.no_grad():
        clf.bg_embed.mul_(3.0)
        clf.logit_scale.add_(1.0)
    clf.clear_cache()
    assert clf.cache_key() == key
    clf.set_cache_dir("/nonexistent/elsewhere")
    assert clf.cache_key() == key
    # every weight of the text tower and the template set change it
    tower = ["token_embedding.weight", "positional_embedding", "transformer.resblocks.1.mlp.c_fc.weight"]
    for name in [*tower, "ln_final.weight", "text_projection"]:
        other = _classifier()
        sd = other.state_dict()
        sd[name] = sd[name] + 1e-3
        other.load_state_dict(sd)
        assert other.cache_key() != key, name
    other = _classifier()
    other.set_templates(("a {}.",))
    assert other.cache_key().split("-")[0] == key.split("-")[0] and other.cache_key() != key


def test_memory_and_disk_entries_and_merging_writers(tmp_path):
    a, b = TextEmbeddingCache(tmp_path), TextEmbeddingCache(tmp_path)
    a.store("k", {"cat": torch.ones(4)})
    b.store("k", {"dog": torch.zeros(4)})  # another process, the same key: both names stay on disk
    fresh = TextEmbeddingCache(tmp_path)
    got = fresh.lookup("k", ["dog", "cat", "bird"])
    assert set(got) == {"cat", "dog"} and torch.equal(got["cat"], torch.ones(4))
    assert fresh.lookup("other-key", ["cat"]) == {}  # keys never mix
    memory = TextEmbeddingCache()
    memory.store("k", {"cat": torch.ones(4)})
    assert set(memory.lookup("k", ["cat"])) == {"cat"} and memory.lookup("k2", ["cat"]) == {}
    assert list(tmp_path.glob("text-*.safetensors")) == [tmp_path / "text-k.safetensors"]


def test_an_unreadable_cache_file_is_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "text-k.safetensors").write_bytes(b"garbage")
    cache = TextEmbeddingCache(tmp_path)
    with caplog.at_level("WARNING"):
        assert cache.lookup("k", ["cat"]) == {}
    assert "ignoring unreadable text-embedding cache" in caplog.text
    cache.store("k", {"cat": torch.ones(2)})  # rebuilt
    assert set(TextEmbeddingCache(tmp_path).lookup("k", ["cat"])) == {"cat"}


def test_classifier_uses_the_cache_and_reencodes_after_a_weight_load(tmp_path, monkeypatch):
    clf = _classifier(cache_dir=tmp_path)
    first = clf.embed_names(["cat", "dog"])
    calls = []
    real = clf.encode_prompts
    monkeypatch.setattr(clf, "encode_prompts", lambda prompts: calls.append(len(prompts)) or real(prompts))
    torch.testing.assert_close(clf.embed_names(["dog", "cat"]), first.flip(0), rtol=0, atol=0)
    assert calls == []  # served from memory
    sd = clf.state_dict()
    sd["text_projection"] = sd["text_projection"] * 2
    clf.load_state_dict(sd)
    clf.embed_names(["cat"])
    assert calls == [2]  # new weights, new key: the name is encoded again (1 name x 2 templates)
    with pytest.raises(ValueError, match="each with"):
        clf.set_templates(["no placeholder"])
