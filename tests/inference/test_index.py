"""The region index's fast search (bound, then exact scores in bound order) against scoring every
region exactly, on a synthetic index of many images in the golden v2 model's shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from san.inference.encoding import EncodedView, ImageEncoding
from san.inference.index import RegionIndex
from san.inference.predictor import SANPredictor

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

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


def _classifier(predictor, query: str, scope: str | None) -> torch.Tensor:
    """The classifier rows :meth:`RegionIndex.search` scores with: the query, the scope, the background."""
    names = [query, *[n for n in ([] if scope is None else scope.split(", ")) if n != query]]
    with torch.no_grad():
        return predictor.model.encode_vocabulary(names).float().cpu()


def _exact64(index: RegionIndex, classifier: torch.Tensor) -> list[torch.Tensor]:
    """Every region's log-probability of the query, in float64 from the stored float16 embeddings (an
    independent computation: no float16 product, no bound), -inf where the region covers no pixel."""
    out = []
    for part in index.parts:
        emb = torch.from_numpy(np.asarray(part.embeddings, dtype=np.float64))
        log_p = (emb @ classifier.double().T).log_softmax(-1)[:, 0]
        log_p[torch.from_numpy(np.asarray(part.areas, dtype=np.float64)) <= 0] = -np.inf
        out.append(log_p)
    return out


@pytest.fixture(scope="module")
def near_ties(golden_v2_model, tmp_path_factory) -> dict:
    """64 images whose 20 regions all lie within 1e-3 of one direction: the query's text embedding (32
    images), or the midpoint of the query's and "dog"'s (32 images, where the two logits tie, so that with
    the scope "dog" the bound's Jensen step is exact). Their exact scores differ by about what float16
    rounding of the products does, so a bound without either of its margins fails here."""
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=64, max_size=128)
    q = golden_v2_model.side_adapter_network.num_queries
    with torch.no_grad():
        text = torch.nn.functional.normalize(
            golden_v2_model.encode_vocabulary(["red umbrella", "dog"])[:2].float(), dim=-1
        )
    directions = [text[0], torch.nn.functional.normalize(text[0] + text[1], dim=0)]
    gen = torch.Generator().manual_seed(5)
    index = RegionIndex.create(tmp_path_factory.mktemp("ties") / "index", predictor, weights="w", config_yaml="")
    fingerprint = golden_v2_model.image_fingerprint()
    items = []
    for i in range(64):
        direction = directions[i % 2]
        emb = torch.nn.functional.normalize(direction + 1e-3 * torch.randn(q, text.shape[1], generator=gen), dim=-1)
        view = EncodedView(torch.randn(q, 8, 12, generator=gen) * 4, emb, (64, 96), (64, 96))
        items.append((f"{i:08d}", f"/ties/{i:03d}.jpg", ImageEncoding([view], (64, 96), fingerprint)))
    index.write_part(items)
    return {"index": RegionIndex(index.directory), "predictor": predictor}


@pytest.mark.parametrize("which", ["synthetic", "near_ties"])
@pytest.mark.parametrize("scope", [None, "dog", "dog, grass, sky", "cat, dog, grass, sky, traffic light"])
def test_the_bound_is_a_bound_for_every_region(which, scope, request):
    """Each region's float16 bound is at least its exact float64 score, and each image's bound at least the
    exact score the search ranks it by (:meth:`RegionIndex._exact`): the fast path's correctness rests on it."""
    data = request.getfixturevalue(which)
    index, predictor = data["index"], data["predictor"]
    classifier = _classifier(predictor, "red umbrella", scope)
    bounds, exact = index._region_bounds(classifier), _exact64(index, classifier)
    for b, e in zip(bounds, exact):
        finite = torch.isfinite(e)
        assert torch.equal(finite, torch.isfinite(b))  # the same regions answer
        gap = b[finite] - e[finite]
        assert gap.min() >= 0, f"a region's bound is {-gap.min().item():.3g} below its exact score"
    images = [(part, row) for part in index.parts for row in range(len(part.images))]
    scores, _ = index._exact(classifier, images)
    assert (index._image_bounds(classifier) >= scores).all()
    if which == "near_ties":  # within each direction the scores really are close: the margins decide
        q = index.meta["queries"]
        for k in (0, 1):
            cluster = exact[0].view(-1, q)[k::2]
            cluster = cluster[torch.isfinite(cluster)]
            assert cluster.max() - cluster.min() < 0.25


def test_the_search_goes_on_until_the_top_th_score_beats_every_bound_left(synthetic, monkeypatch):
    """Valid bounds that put the 150 worst images first (each bounded above every exact score): the first
    block (64 images) holds only those, so the search must go on; after the next block (128 more, in
    bound order the best images) the 10th exact score beats every remaining bound, so it stops at 192."""
    index, predictor = synthetic["index"], synthetic["predictor"]
    classifier = _classifier(predictor, "red umbrella", "dog, grass, sky")
    images = [(part, row) for part in index.parts for row in range(len(part.images))]
    exact, _ = index._exact(classifier, images)
    worst = torch.argsort(exact)[:150]
    crafted = exact + 1e-9
    crafted[worst] = exact.max() + 1.0  # loose, still bounds
    monkeypatch.setattr(RegionIndex, "_image_bounds", lambda self, c: crafted)
    scored: list[int] = []
    real = RegionIndex._exact
    monkeypatch.setattr(RegionIndex, "_exact", lambda self, c, ims: scored.append(len(ims)) or real(self, c, ims))
    fast = index.search(predictor, "red umbrella", vocabulary="dog, grass, sky", top=10)
    slow = index.search(predictor, "red umbrella", vocabulary="dog, grass, sky", top=10, exhaustive=True)
    assert [(h.image, h.region) for h in fast] == [(h.image, h.region) for h in slow]
    assert scored[:-1] == [64, 128]  # the exhaustive search's one call comes last


def test_an_index_refuses_a_model_whose_text_tower_or_templates_differ(golden_v2_model, synthetic):
    """The image path is the same, so only the text side tells these models apart from the index's."""
    import copy

    from san.inference.index import RegionIndexError

    index = synthetic["index"]
    index.check_model(synthetic["predictor"])  # the index's own model
    text = copy.deepcopy(golden_v2_model)
    weights = text.state_dict()
    weights["ov_classifier.text_projection"] = weights["ov_classifier.text_projection"] * 1.001
    text.load_state_dict(weights)  # other text weights, as a fine-tuned text tower would load
    templates = copy.deepcopy(golden_v2_model)
    templates.ov_classifier.set_templates(["a photo of a {}.", "a picture of a {}."])
    for model in (text, templates):
        assert model.image_fingerprint() == golden_v2_model.image_fingerprint()
        other = SANPredictor(model, device="cpu", min_size=64, max_size=128)
        with pytest.raises(RegionIndexError, match=r"built by another model \(text tower or templates differ\)"):
            index.check_model(other)
        with pytest.raises(RegionIndexError, match="text tower or templates differ"):
            index.search(other, "cat")


def test_parts_are_named_and_ordered_by_their_first_key_whatever_order_the_writers_hand_them(synthetic, tmp_path):
    """Writer threads finish in any order: a part is still named by its smallest key and lists its images
    in key order, so a sharded or resumed build names parts as one ordered build would."""
    src = synthetic["index"]
    index = RegionIndex.create(tmp_path / "index", synthetic["predictor"], weights="w", config_yaml="")
    part = src.parts[0]
    q = src.meta["queries"]
    items = []
    for row in (3, 0, 2, 1):
        im = part.images[row]
        emb = torch.from_numpy(np.asarray(part.embeddings[row * q : (row + 1) * q], dtype=np.float32))
        start, (gh, gw) = im["mask_offset"], im["grid"]
        logits = torch.from_numpy(np.asarray(part.masks[start : start + q * gh * gw], dtype=np.float32))
        view = EncodedView(logits.view(q, gh, gw), emb, tuple(im["image_size"]), tuple(im["padded_size"]))
        enc = ImageEncoding([view], (im["height"], im["width"]), synthetic["predictor"].model.image_fingerprint())
        items.append((f"{row + 40:08d}", im["path"], enc))
    index.write_part(items)
    written = RegionIndex(index.directory).parts
    assert [p.name for p in written] == ["part-00000040"]
    assert [im["path"] for im in written[0].images] == [part.images[r]["path"] for r in range(4)]
    np.testing.assert_array_equal(np.asarray(written[0].embeddings), np.asarray(part.embeddings[: 4 * q]))


def test_stale_temporary_parts_go_only_with_their_own_process(synthetic, tmp_path):
    """A killed build leaves ``.part-*.tmp-r<rank>-<pid>`` folders: each process removes its own; rank 0
    also those of ranks the new run does not have (a build that had more processes), never another live
    rank's."""
    index = RegionIndex.create(tmp_path / "index", synthetic["predictor"], weights="w", config_yaml="")
    names = [".part-00000000.tmp-r0-11", ".part-00000005.tmp-r1-12", ".part-00000009.tmp-r3-13"]
    for name in names:
        (index.directory / name).mkdir()
    (index.directory / ".part-00000002.tmp-rx-1").mkdir()  # not a rank: not ours to judge
    assert index.remove_stale(rank=1, world_size=2) == 1
    assert not (index.directory / names[1]).exists() and (index.directory / names[0]).exists()
    assert index.remove_stale(rank=0, world_size=2) == 2  # its own, and rank 3's (no such rank now)
    assert sorted(p.name for p in index.directory.glob(".part-*")) == [".part-00000002.tmp-rx-1"]


def test_an_image_no_region_of_which_covers_a_pixel_is_never_a_hit(golden_v2_model, tmp_path):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=64, max_size=128)
    q = golden_v2_model.side_adapter_network.num_queries
    gen = torch.Generator().manual_seed(2)
    index = RegionIndex.create(tmp_path / "index", predictor, weights="w", config_yaml="")
    items = []
    for i in range(5):
        logits = torch.randn(q, 8, 12, generator=gen) * 4
        if i == 2:  # every proposal of this image lies on the padding (columns 9-11) only
            logits[:, :, :9] = -5.0
        emb = torch.nn.functional.normalize(torch.randn(q, 64, generator=gen), dim=-1)
        view = EncodedView(logits, emb, (48, 64), (64, 96))
        items.append((f"{i:08d}", f"/p/{i}.jpg", ImageEncoding([view], (96, 128), golden_v2_model.image_fingerprint())))
    index.write_part(items)
    index = RegionIndex(index.directory)
    for exhaustive in (False, True):
        hits = index.search(predictor, "cat", top=10, exhaustive=exhaustive)
        assert sorted(h.image for h in hits) == ["/p/0.jpg", "/p/1.jpg", "/p/3.jpg", "/p/4.jpg"]
        assert all(0 < h.score <= 1 for h in hits)
