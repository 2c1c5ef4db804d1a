"""Prediction in the ecosystem's shapes: supervision.Detections (one per class present, masks that
partition the image, tight boxes, the mean class score as confidence) that supervision's annotators
draw, and the transformers-style segment list; checked against numpy on hand-made label maps and on
the golden model's predictions."""

from __future__ import annotations

import numpy as np
import pytest

from san.inference.predictor import SANPredictor
from san.inference.result import Prediction

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
    np.testing.assert_allclose(det.confidence, want, rtol=1e-6)
    assert Prediction(labels=pred.labels, class_names=NAMES).to_supervision().confidence is None


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
    segments = pred.to_segments()
    assert [s["label"] for s in segments] == ["cat", "dog", "sky"]
    union = np.zeros((40, 60), int)
    for s in segments:
        m = np.asarray(s["mask"])
        assert s["mask"].mode == "L" and set(np.unique(m)) <= {0, 255}
        inside = pred.labels == NAMES.index(s["label"])
        np.testing.assert_array_equal(m == 255, inside)
        assert s["score"] == pytest.approx(float(pred.confidence[inside].mean()))
        union += m == 255
    assert (union == 1).all()


def test_the_models_prediction_converts_with_its_confidence(golden_v2_model):
    import torch

    from ..conftest import GOLDEN_V2

    golden = torch.load(GOLDEN_V2, weights_only=True)
    photo = golden["images"][0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().copy()
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    pred = predictor.predict(photo, golden["vocabulary"], return_confidence=True)
    present = np.unique(pred.labels)
    assert len(present) >= 2  # calibrated weights: several classes
    det = pred.to_supervision()
    assert det.class_id.tolist() == present.tolist()
    for c, m, conf in zip(det.class_id, det.mask, det.confidence):
        assert conf == pytest.approx(float(pred.confidence[pred.labels == c].mean()), rel=1e-6)
        assert m.sum() == (pred.labels == c).sum()
