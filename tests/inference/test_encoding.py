"""Segment once, ask any vocabulary: ``classify(encode(x), v)`` against SAN's own batch runner
(``SAN.predict_labels`` for labels, ``SAN.forward`` for scores), with the official tiny weights whose
labels vary; the encoding file round trip; encodings of other weights or settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from san.data.transforms import shortest_edge_size
from san.inference.encoding import EncodingError, ImageEncoding
from san.inference.predictor import SANPredictor
from san.inference.tta import resize_chw

from ..conftest import GOLDEN_V2
from ..reference import EPS32, decided, float32_tolerance

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: classify(encode(x)) against SAN's own path runs the same operations on the same arrays: measured 0
# under ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1 and 2 (AMD EPYC, 2026-12); 1e-6
# allows a reordering; TTA tolerances are derived in place.

TTA = {"tta": True, "tta_min_sizes": (160, 250), "tta_max_size": 1000}  # view sizes where the labels vary
VOCABULARIES = [
    ["cat", "dog", "grass", "sky", "traffic light"],
    ["sky", "road"],
    ["a photo of a tree", "water", "building", "person", "car", "snow", "sand"],
]


@pytest.fixture(scope="module")
def photos(golden_v2_model) -> list[np.ndarray]:
    """The golden images (on which the calibrated weights give several classes) and a crop of one."""
    golden = torch.load(GOLDEN_V2, weights_only=True)
    arrays = [im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().copy() for im in golden["images"]]
    return [*arrays, arrays[0][40:, 30:].copy()]


def _reference(model, photo: np.ndarray, names: list[str], min_size: int, max_size: int, precision: str):
    """Labels and scores of SAN's own batch runner on the test-time resized photo."""
    from san.devices import autocast

    h, w = photo.shape[:2]
    image = resize_chw(torch.from_numpy(photo).permute(2, 0, 1), shortest_edge_size(h, w, min_size, max_size))
    x = {"image": image, "height": h, "width": w, "vocabulary": names}
    with torch.no_grad(), autocast("cpu", precision):
        labels = model.predict_labels([x], with_scores=False)[0]["labels"]
        scores = model([x])[0]["sem_seg"].float()
    return labels.numpy(), scores.numpy()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_classify_of_an_encoding_equals_sans_own_path(golden_v2_model, photos, precision):
    predictor = SANPredictor(golden_v2_model, device="cpu", precision=precision, min_size=250, max_size=1000)
    varied = 0
    for photo in photos:
        encoding = predictor.encode(photo)
        for names in VOCABULARIES:
            labels, scores = _reference(golden_v2_model, photo, names, 250, 1000, precision)
            got = predictor.classify(encoding, names)
            np.testing.assert_array_equal(got.labels, labels)
            with_scores = predictor.classify(encoding, names, return_scores=True)
            np.testing.assert_allclose(with_scores.scores, scores, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(predictor.predict(photo, names).labels, got.labels)
            varied += len(np.unique(labels)) > 1
    assert varied >= 3  # some label maps hold several classes (the scores of every class are compared anyway)


def test_classify_equals_sans_own_path_on_varied_labels(tiny_model, monkeypatch):
    """With the colour rule (labels follow the picture), also through the bounded-memory path."""
    from ..apps.colour_model import use_colour_model

    use_colour_model(monkeypatch)
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()[::4, ::4].copy()  # [128, 128, 3]
    for budget in (1 << 30, 1 << 16):  # score maps at the image size, or at the inference size then upsampled
        predictor = SANPredictor(tiny_model, device="cpu", min_size=64, max_size=128, max_score_bytes=budget)
        got = predictor.classify(predictor.encode(photo), ["red", "green", "blue"])
        labels, scores = _reference(tiny_model, photo, ["red", "green", "blue"], 64, 128, "fp32")
        assert len(np.unique(labels)) == 3
        if budget > 1 << 20:
            np.testing.assert_array_equal(got.labels, labels)
        else:  # the upsampled arg-max of scores at the inference size
            assert np.mean(got.labels == labels) > 0.95


def test_classify_with_tta_averages_the_encoded_views(golden_v2_model, photos):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, **TTA)
    photo, names = photos[0], VOCABULARIES[0]
    encoding = predictor.encode(photo)
    assert [v.flipped for v in encoding.views] == [False, True, False, True]
    h, w = photo.shape[:2]
    total = 0
    for short in (160, 250):  # the views by hand: resized, flipped, predicted, flipped back, averaged
        image = resize_chw(torch.from_numpy(photo).permute(2, 0, 1), shortest_edge_size(h, w, short, 1000))
        for flip in (False, True):
            x = {"image": image.flip(-1) if flip else image, "height": h, "width": w, "vocabulary": names}
            with torch.no_grad():
                s = golden_v2_model([x])[0]["sem_seg"]
            total = total + (s.flip(-1) if flip else s)
    mean = total / 4
    want = mean.numpy()
    # the same float32 operations on the same mask logits, but summed over 4 views and Q proposals in
    # possibly other orders: 4 x Q terms, each rounded within eps32 of the largest score
    tol = float32_tolerance(mean, 4 * golden_v2_model.side_adapter_network.num_queries)
    got = predictor.classify(encoding, names, return_scores=True)
    np.testing.assert_allclose(got.scores, want, rtol=0, atol=tol)
    clear = decided(mean, tol).numpy()  # no score within tol can swap the top two here
    assert clear.mean() > 0.99 and len(np.unique(want.argmax(0))) >= 3
    np.testing.assert_array_equal(got.labels[clear], want.argmax(0)[clear])
    for labels_only in (
        predictor.classify(encoding, names, return_confidence=False),
        predictor.classify(encoding, names),
    ):
        assert labels_only.scores is None  # the labels-only path, over all four views
        np.testing.assert_array_equal(labels_only.labels[clear], want.argmax(0)[clear])
    np.testing.assert_allclose(labels_only.score, want.max(0), rtol=0, atol=tol)
    mean64 = mean.double()  # the probability of the averaged views: their best score's share of the sum
    prob = (mean64.max(0).values / mean64.sum(0)).numpy()
    tol_total = float32_tolerance(mean64.sum(0), 4 * golden_v2_model.side_adapter_network.num_queries * len(names))
    bound = (tol + prob * tol_total) / (mean64.sum(0).numpy() - tol_total) + 4 * EPS32
    assert (np.abs(labels_only.confidence - prob) <= bound).all()


def test_save_load_round_trip_and_half_storage(golden_v2_model, photos, tmp_path):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    encoding = predictor.encode(photos[2])
    encoding.save(tmp_path / "e.safetensors")
    loaded = ImageEncoding.load(tmp_path / "e.safetensors")
    assert loaded.output_size == encoding.output_size and loaded.fingerprint == encoding.fingerprint
    for a, b in zip(loaded.views, encoding.views):
        assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.mask_embeddings, b.mask_embeddings)
        assert (a.image_size, a.padded_size, a.flipped) == (b.image_size, b.padded_size, b.flipped)
    for names in VOCABULARIES:
        np.testing.assert_array_equal(
            predictor.classify(loaded, names).labels, predictor.classify(encoding, names).labels
        )
    encoding.save(tmp_path / "h.safetensors", half=True)
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * (tmp_path / "e.safetensors").stat().st_size
    half = ImageEncoding.load(tmp_path / "h.safetensors")
    agree = np.mean(
        predictor.classify(half, VOCABULARIES[0]).labels == predictor.classify(encoding, VOCABULARIES[0]).labels
    )
    assert agree > 0.99  # float16 storage: nearly every label (measured in scripts/benchmark.py)


def test_foreign_and_mismatched_encodings_are_refused(golden_v2_model, tiny_model, photos, tmp_path):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    encoding = predictor.encode(photos[0])
    other = SANPredictor(tiny_model, device="cpu", min_size=250, max_size=1000)
    with pytest.raises(EncodingError, match="made by other weights .*encode the image again"):
        other.classify(encoding, ["cat"])
    tta = SANPredictor(golden_v2_model, device="cpu", min_size=160, tta=True, tta_min_sizes=(96,), tta_max_size=320)
    with pytest.raises(EncodingError, match="holds 1 test-time view.*uses 2"):
        tta.classify(encoding, ["cat"])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(EncodingError, match="truncated or not a safetensors file"):
        ImageEncoding.load(tmp_path / "junk.safetensors")
    from san.files import write_safetensors

    write_safetensors(tmp_path / "foreign.safetensors", {"x": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(EncodingError, match="not a san image encoding"):
        ImageEncoding.load(tmp_path / "foreign.safetensors")
    # new weights loaded into the same model: a new fingerprint
    before = golden_v2_model.image_fingerprint()
    sd = {k: v.clone() for k, v in golden_v2_model.state_dict().items()}
    golden_v2_model.load_state_dict(
        {**sd, "side_adapter_network.query_embed": sd["side_adapter_network.query_embed"] + 1}
    )
    try:
        assert golden_v2_model.image_fingerprint() != before
    finally:
        golden_v2_model.load_state_dict(sd)
    assert golden_v2_model.image_fingerprint() == before


def test_a_tta_encoding_round_trips_with_its_flipped_views(golden_v2_model, photos, tmp_path):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, **TTA)
    encoding = predictor.encode(photos[0])
    encoding.save(tmp_path / "tta.safetensors")
    loaded = ImageEncoding.load(tmp_path / "tta.safetensors")
    assert [v.flipped for v in loaded.views] == [v.flipped for v in encoding.views] == [False, True, False, True]
    names = VOCABULARIES[0]
    a = predictor.classify(encoding, names, return_scores=True)
    b = predictor.classify(loaded, names, return_scores=True)
    for x, y in zip(encoding.views, loaded.views):  # float32 storage keeps every number
        assert torch.equal(x.mask_logits, y.mask_logits) and torch.equal(x.mask_embeddings, y.mask_embeddings)
    # the same computation on tensors of another memory layout: 4 views x Q terms of float32 rounding
    tol = float32_tolerance(torch.from_numpy(a.scores), 4 * encoding.num_queries)
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=tol)


def test_classify_takes_class_embeddings(golden_v2_model, photos):
    """The names' own text embeddings give the names' answer bit for bit; swapped embeddings swap it."""
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    names = ["cat", "dog", "grass", "sky", "traffic light"]
    with torch.no_grad():
        text = golden_v2_model.ov_classifier.embed_names(names)
    seen = set()
    for photo in photos:
        encoding = predictor.encode(photo)
        plain = predictor.classify(encoding, names)
        same = predictor.classify(encoding, names, class_embeddings=text)
        assert np.array_equal(same.labels, plain.labels) and np.array_equal(same.score, plain.score)
        order = [3, 2, 1, 0, 4]  # sky, grass, dog, cat, traffic light
        swapped = predictor.classify(encoding, names, class_embeddings=text[order])
        reordered = predictor.classify(encoding, [names[i] for i in order])
        np.testing.assert_array_equal(swapped.labels, reordered.labels)
        seen |= set(np.unique(plain.labels).tolist())
    assert len(seen) >= 2
    with pytest.raises(ValueError, match=r"class_embeddings \(4, \d+\) must be \[5 names"):
        predictor.classify(encoding, names, class_embeddings=text[:4])


def test_an_encoding_gives_its_masks_at_the_images_size(golden_v2_model, photos):
    """``image_masks``: the official two bilinear interpolations (to the padded input, cropped, to the
    image), recomputed in float64; flipped views are flipped back."""
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    for photo in photos:
        encoding = predictor.encode(photo)
        v = encoding.views[0]
        logits = v.mask_logits.double()[None]
        up = torch.nn.functional.interpolate(logits, size=tuple(v.padded_size), mode="bilinear", align_corners=False)
        up = up[..., : v.image_size[0], : v.image_size[1]]
        want = torch.nn.functional.interpolate(up, size=photo.shape[:2], mode="bilinear", align_corners=False)[0]
        got = encoding.image_masks()
        assert got.shape == (encoding.num_queries, *photo.shape[:2]) and got.dtype == torch.float32
        # float32 rounding of a weighted sum of 4 x 4 logits (two interpolations)
        tolerance = float(v.mask_logits.abs().max()) * EPS32 * 16
        assert float((got.double() - want).abs().max()) <= tolerance
    flipped = ImageEncoding(
        [v.__class__(v.mask_logits, v.mask_embeddings, v.image_size, v.padded_size, True)],
        encoding.output_size,
        encoding.fingerprint,
    )
    torch.testing.assert_close(flipped.image_masks(), got.flip(-1), rtol=0, atol=0)
