"""The region index's fast search (bound, then exact scores in bound order) against scoring every
region exactly, on a synthetic index of many images in the golden v2 model's shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from san.inference.encoding import EncodedView, ImageEncoding
from san.inference.index import RegionIndex
from san.inference.predictor import SANPredictor

NAMES = ["cat", "dog", "grass", "sky", "traffic light", "red umbrella"]


@pytest.fixture(scope="module")
def synthetic(golden_v2_model, tmp_path_factory) -> dict:
    """300 images of 20 proposals: embeddings near one or two names' text embeddings (so scores vary
    from image to image), some proposals covering only the padding (area 0)."""
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=64, max_size=128)
    q = golden_v2_model.side_adapter_network.num_queries
    with torch.no_grad():
        text = golden_v2_model.encode_vocabulary(NAMES)[:-1].float()
    text = torch.nn.functional.normalize(text, dim=-1)
    gen = torch.Generator().manual_seed(0)
    index = RegionIndex.create(tmp_path_factory.mktemp("synthetic") / "index", predictor, weights="w", config_yaml="")
    fingerprint = golden_v2_model.image_fingerprint()
    items = []
    for i in range(300):
        mix = torch.rand(q, len(NAMES), generator=gen) ** 8 * 3
        emb = torch.nn.functional.normalize(mix @ text + torch.randn(q, text.shape[1], generator=gen), dim=-1)
        logits = torch.randn(q, 8, 12, generator=gen) * 4
        logits[: i % 4, :, :9] = -5.0  # these proposals lie on the padding (columns 9-11) only
        view = EncodedView(logits, emb, (48, 64), (64, 96))
        items.append((f"{i:08d}", f"/photos/{i:03d}.jpg", ImageEncoding([view], (96, 128), fingerprint)))
        if len(items) == 64 or i == 299:
            index.write_part(items)
            items = []
    return {"index": RegionIndex(index.directory), "predictor": predictor}


@pytest.mark.parametrize("scope", [None, "dog, grass, sky", "cat, dog, grass, sky, traffic light"])
@pytest.mark.parametrize("top", [1, 10, 300])
def test_the_fast_search_ranks_as_scoring_every_region(synthetic, scope, top, monkeypatch):
    index, predictor = synthetic["index"], synthetic["predictor"]
    scored: list[int] = []
    exact = RegionIndex._exact
    monkeypatch.setattr(
        RegionIndex, "_exact", lambda self, c, images: scored.append(len(images)) or exact(self, c, images)
    )
    fast = index.search(predictor, "red umbrella", vocabulary=scope, top=top)
    assert (sum(scored) < 300) == (top < 100)  # the bound spared most images unless nearly all are asked for
    slow = index.search(predictor, "red umbrella", vocabulary=scope, top=top, exhaustive=True)
    assert len(fast) == min(top, 300) and [(h.image, h.region) for h in fast] == [(h.image, h.region) for h in slow]
    assert [h.score for h in fast] == pytest.approx([h.score for h in slow], abs=1e-6)
    spread = [h.score for h in slow]
    assert spread[0] > 0.5 and len(set(spread)) == len(spread)  # no ties: the order is not trivial


def test_a_region_on_the_padding_never_answers_in_either_path(synthetic):
    index, predictor = synthetic["index"], synthetic["predictor"]
    for exhaustive in (False, True):
        for hit in index.search(predictor, "cat", top=40, exhaustive=exhaustive):
            row = int(hit.image[-7:-4])
            assert hit.region >= row % 4  # proposals 0 .. row % 4 - 1 cover no pixel of the image
            assert index.region_mask(hit).any()


def test_the_stored_areas_are_the_image_fractions(synthetic):
    index = synthetic["index"]
    part = index.parts[0]
    q = index.meta["queries"]
    areas = np.asarray(part.areas, dtype=np.float32).reshape(-1, q)
    assert (areas[3, :3] == 0).all() and (areas[3, 3:] > 0).all() and (areas[0] > 0).all()
