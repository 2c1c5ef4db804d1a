"""Prediction in the ecosystem's shapes: supervision.Detections (one per class present, masks that
partition the image, tight boxes, the mean winning probability as confidence, the raw score beside
it) that supervision's annotators draw, and the transformers-style segment list; checked against
numpy on hand-made label maps and on the golden model's predictions, whose confidence is checked
against the probability computed from the official score volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from san.inference.predictor import SANPredictor
from san.inference.result import Prediction
from san.inference.vocabulary import Vocabulary

from ..reference import EPS32, float32_tolerance

sv = pytest.importorskip("supervision", reason="the supervision tests need supervision (the test extra installs it)")

NAMES = ["cat", "dog", "grass", "sky"]


def _hand_made() -> Prediction:
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 10:30] = 1  # dog: a box x 10..30, y 5..15
    labels[30:, :] = 3  # sky: the bottom rows (class 2, grass, is absent)
    scores = np.random.default_rng(0).random((4, 40, 60)).astype(np.float32)
    return Prediction(labels=labels, class_names=NAMES, scores=scores)


def test_detections_are_the_classes_present_with_tight_boxes_and_mean_scores():
    pred = _hand_made()
    det = pred.to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == 3
    assert det.class_id.tolist() == [0, 1, 3] and det.data["class_name"].tolist() == ["cat", "dog", "sky"]
    assert det.mask.shape == (3, 40, 60) and det.mask.dtype == bool
    assert (det.mask.sum(0) == 1).all()  # a partition of the image
    for c, m in zip(det.class_id, det.mask):
        np.testing.assert_array_equal(m, pred.labels == c)
    np.testing.assert_array_equal(det.xyxy[1], [10, 5, 30, 15])
    np.testing.assert_array_equal(det.xyxy[2], [0, 30, 60, 40])
    want = [pred.scores[c][pred.labels == c].mean() for c in (0, 1, 3)]
    np.testing.assert_allclose(det.data["score"], want, rtol=1e-6)  # the raw class score, under its own name
    assert det.confidence is None  # raw scores are not a probability: no confidence is made up from them
    bare = Prediction(labels=pred.labels, class_names=NAMES).to_supervision()
    assert bare.confidence is None and np.isnan(bare.data["score"]).all()


def test_supervision_annotators_draw_inside_the_masks_only():
    pred = _hand_made()
    det = pred.to_supervision()
    image = np.full((40, 60, 3), 128, np.uint8)
    drawn = sv.MaskAnnotator(opacity=1.0).annotate(image.copy(), det[det.class_id == 1])
    changed = (drawn != image).any(-1)
    np.testing.assert_array_equal(changed, pred.labels == 1)
    labelled = sv.LabelAnnotator().annotate(image.copy(), det, labels=list(det.data["class_name"]))
    assert (labelled != image).any()


def test_segments_are_one_l_mask_per_class_present():
    pred = _hand_made()
    pred.scores = None
    pred.confidence = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    pred.score = pred.confidence * 7
    segments = pred.to_segments()
    assert [s["label"] for s in segments] == ["cat", "dog", "sky"]
    union = np.zeros((40, 60), int)
    for s in segments:
        m = np.asarray(s["mask"])
        assert s["mask"].mode == "L" and set(np.unique(m)) <= {0, 255}
        inside = pred.labels == NAMES.index(s["label"])
        np.testing.assert_array_equal(m == 255, inside)
        assert s["score"] == pytest.approx(float(pred.confidence[inside].mean()))
        assert s["raw_score"] == pytest.approx(float(pred.score[inside].mean()))
        union += m == 255
    assert (union == 1).all()


def _golden_photo(golden: dict) -> np.ndarray:
    return golden["images"][0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().copy()


def _official_scores(model, photo: np.ndarray, names: list[str], min_size: int) -> torch.Tensor:
    """``[C, H, W]``: the official forward (the detectron2 contract) on the predictor's resized input."""
    from san.data.transforms import shortest_edge_size
    from san.inference.tta import resize_chw

    h, w = photo.shape[:2]
    image = resize_chw(torch.from_numpy(photo).permute(2, 0, 1), shortest_edge_size(h, w, min_size, 1000))
    with torch.no_grad():
        return model([{"image": image, "height": h, "width": w, "vocabulary": names}])[0]["sem_seg"]


def _probability_bound(sem: torch.Tensor, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The winning probability ``max / sum`` of ``sem`` (float64), the raw winning score, and the
    per-pixel bound on a float32 recomputation of it that sums the Q x C terms in another order."""
    sem64 = sem.double()
    best, total = sem64.max(0).values, sem64.sum(0)
    tol_best = float32_tolerance(sem, q)
    tol_total = float32_tolerance(total, q * sem.shape[0])
    prob = best / total
    bound = (tol_best + prob * tol_total) / (total - tol_total) + 4 * EPS32
    return prob.numpy(), best.numpy(), bound.numpy()


@pytest.mark.numeric
def test_the_confidence_is_the_winning_class_probability(golden_v2_model, golden_v2):
    """Default ``predict``: ``confidence`` = max_c s_c / sum_c s_c of the official scores (a probability,
    recomputed in float64 from the detectron2-contract forward), ``score`` = max_c s_c."""
    photo, names = _golden_photo(golden_v2), golden_v2["vocabulary"]
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    pred = predictor.predict(photo, names)  # confidence is on by default
    sem = _official_scores(golden_v2_model, photo, names, 250)
    prob, best, bound = _probability_bound(sem, golden_v2_model.side_adapter_network.num_queries)
    assert pred.confidence is not None and pred.confidence.shape == photo.shape[:2]
    assert ((pred.confidence >= 0) & (pred.confidence <= 1)).all()
    assert (np.abs(pred.confidence - prob) <= bound).all(), np.abs(pred.confidence - prob).max()
    print(f"max error {np.abs(pred.confidence - prob).max():.2e}, bound median {np.median(bound):.2e}")
    assert np.median(bound) < 1e-4 and prob.min() < 0.9 * prob.max()  # tight, and the probabilities vary
    np.testing.assert_allclose(pred.score, best, rtol=0, atol=float32_tolerance(sem, 100))
    assert best.max() > 1  # the raw score is not a probability: why the two are kept apart
    assert predictor.predict(photo, names, return_confidence=False).confidence is None
    # with distractors the shares are over every name scored, distractors included
    other = predictor.predict(photo, Vocabulary(tuple(names[:2]), tuple(names[2:])))
    assert other.class_names == [*names[:2], "other"] and (other.labels == 2).any()
    np.testing.assert_allclose(other.confidence, prob, rtol=0, atol=float(bound.max()))


@pytest.mark.numeric
def test_the_score_volume_paths_give_the_same_probability(golden_v2_model, golden_v2):
    """``return_scores`` and the memory-bounded low-resolution path derive the confidence from the
    volume, over every name scored (distractors too, though ``scores`` keeps only their best)."""
    photo, names = _golden_photo(golden_v2), golden_v2["vocabulary"]
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    sem = _official_scores(golden_v2_model, photo, names, 250)
    prob, _, bound = _probability_bound(sem, golden_v2_model.side_adapter_network.num_queries)
    voc = Vocabulary(tuple(names[:2]), tuple(names[2:]))
    full = predictor.predict(photo, voc, return_scores=True, return_confidence=False)
    assert full.confidence is not None and full.scores.shape[0] == 3  # free from the volume
    assert (np.abs(full.confidence - prob) <= bound).all(), np.abs(full.confidence - prob).max()
    # two views (a flip) and a tiny budget: the scores are averaged at low resolution, then upsampled
    # a few classes at a time; the probability is the averaged volume's, resized from a coarser grid
    predictor.max_score_bytes = 10_000
    predictor.tta, predictor.tta_min_sizes, predictor.tta_flip = True, (250,), True
    low = predictor.predict(photo, voc)
    flipped = _official_scores(golden_v2_model, photo[:, ::-1].copy(), names, 250).flip(-1)
    mean = ((sem + flipped) / 2).double()
    want = (mean.max(0).values / mean.sum(0)).numpy()
    assert ((low.confidence >= 0) & (low.confidence <= 1)).all()
    err = np.abs(low.confidence - want)
    assert np.median(err) < 0.01 and np.abs(want - prob).mean() > 0.002, (np.median(err), np.abs(want - prob).mean())


def test_the_models_prediction_converts_with_its_confidence(golden_v2_model, golden_v2):
    photo = _golden_photo(golden_v2)
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    pred = predictor.predict(photo, golden_v2["vocabulary"])
    present = np.unique(pred.labels)
    assert len(present) >= 2  # calibrated weights: several classes
    det = pred.to_supervision()
    assert det.class_id.tolist() == present.tolist()
    for c, m, conf, raw in zip(det.class_id, det.mask, det.confidence, det.data["score"]):
        assert conf == pytest.approx(float(pred.confidence[pred.labels == c].mean()), rel=1e-6)
        assert raw == pytest.approx(float(pred.score[pred.labels == c].mean()), rel=1e-6)
        assert m.sum() == (pred.labels == c).sum()
    assert ((det.confidence > 0) & (det.confidence <= 1)).all()
    assert len(det[det.confidence > 0.5]) <= len(det)  # supervision's confidence filter works as written
    segments = pred.to_segments()
    assert [s["score"] for s in segments] == pytest.approx(det.confidence.tolist())
