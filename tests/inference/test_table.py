"""The region table (:mod:`san.inference.table`) and the proposals' class scores it carries, without
Ray: region scores against SAN's semantic inference recomputed in float64 from them; a row's labels and
region record round-trip; :class:`SANSegmenter` called directly on each input column; bad tables."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from san.inference.encoding import EncodingError
from san.inference.index import RegionRecord
from san.inference.predictor import SANPredictor
from san.inference.table import TableError, labels_of, prediction_row, read_rows, rows_to_table

pq = pytest.importorskip("pyarrow.parquet", reason="the region table needs pyarrow (the test extra installs it)")

pytestmark = [pytest.mark.numeric, pytest.mark.usefixtures("one_thread")]

NAMES = ["cat", "dog", "grass", "sky", "traffic light"]
OPTS = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]


@pytest.fixture(scope="module")
def predictor(golden_v2_model) -> SANPredictor:
    return SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)


@pytest.fixture(scope="module")
def images(golden_v2) -> list[np.ndarray]:
    return [im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy() for im in golden_v2["images"]]


def _official_labels(scores: np.ndarray, view, out_size: tuple[int, int]) -> np.ndarray:
    """SAN's semantic inference from region scores, in float64 as the official code writes it: the
    mask logits interpolated to the padded input, cropped, interpolated to the image, then
    ``einsum(class probabilities without no-object, sigmoid(masks))`` and the arg-max."""
    logits = view.mask_logits.double()[None]
    up = F.interpolate(logits, size=tuple(view.padded_size), mode="bilinear", align_corners=False)
    up = up[..., : view.image_size[0], : view.image_size[1]]
    up = F.interpolate(up, size=out_size, mode="bilinear", align_corners=False)[0]
    probs = torch.from_numpy(scores).double()[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, up.sigmoid()).argmax(0).numpy()


def test_region_scores_give_the_label_map_by_the_official_inference(predictor, images):
    classes = set()
    for image in images:
        encoding = predictor.encode(image)
        scores = predictor.region_scores(encoding, NAMES)
        q = predictor.model.side_adapter_network.num_queries
        assert scores.shape == (q, len(NAMES) + 1) and scores.dtype == np.float32
        # a float32 softmax over names + no-object: each of the C + 1 terms and the running sum rounded once,
        # (C + 1) x 2 x 2^-23 = 1.4e-6 for C = 5, within C x 4e-7
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=len(NAMES) * 4e-7)
        labels = predictor.classify(encoding, NAMES).labels
        classes |= set(np.unique(labels).tolist())
        official = _official_labels(scores, encoding.views[0], image.shape[:2])
        assert (official == labels).mean() >= 0.999  # float32 against float64: boundary pixels at most
    assert len(classes) >= 2  # calibrated weights: the check is not of one class everywhere


def test_region_scores_follow_the_class_names_with_distractors(predictor, images):
    encoding = predictor.encode(images[0])
    plain = predictor.region_scores(encoding, ["cat", "dog"])
    mixed = predictor.region_scores(encoding, ["cat", "dog"], other="coco-stuff")
    names = predictor.vocabulary(["cat", "dog"], "coco-stuff").class_names
    assert names[-1] == "other" and mixed.shape == (plain.shape[0], len(names) + 1)
    # as above, over the 2 names, the COCO-Stuff distractors (at most 171) and no-object: < 200 x 4e-7
    np.testing.assert_allclose(mixed.sum(1), 1.0, atol=200 * 4e-7)
    # distractors take probability from the named classes, never add to it
    assert (mixed[:, :2] <= plain[:, :2] + 1e-6).all() and (mixed[:, 2] > 0).all()


def test_region_scores_refuse_other_weights(predictor, images):
    encoding = predictor.encode(images[0])
    encoding.fingerprint = "another-model"
    with pytest.raises(EncodingError, match="other weights"):
        predictor.region_scores(encoding, NAMES)


def test_a_row_round_trips_through_parquet(predictor, images, tmp_path):
    encoding = predictor.encode(images[1])
    pred = predictor.classify(encoding, NAMES)
    record = RegionRecord.from_encoding(encoding)
    row = prediction_row("/x/b.png", pred, record, predictor.region_scores(encoding, NAMES), "fp")
    pq.write_table(rows_to_table([row, {"path": "/x/broken.png", "error": "cannot decode"}]), tmp_path / "t.parquet")
    back = read_rows(tmp_path)
    assert [r["path"] for r in back] == ["/x/b.png", "/x/broken.png"] and back[1]["height"] is None
    np.testing.assert_array_equal(labels_of(back[0]), pred.labels)
    assert back[0]["class_names"] == pred.class_names
    q, e = back[0]["queries"], back[0]["embed_dim"]
    np.testing.assert_array_equal(np.frombuffer(back[0]["mask_embeddings"], "<f2").reshape(q, e), record.embeddings)
    np.testing.assert_array_equal(np.frombuffer(back[0]["mask_logits"], "<f2"), record.masks)
    np.testing.assert_array_equal(np.frombuffer(back[0]["areas"], "<f2"), record.areas)
    assert back[0]["grid"] == list(record.grid) and back[0]["image_size"] == list(record.image_size)


def test_the_segmenter_reads_bytes_arrays_and_paths_alike(golden_files, images, tmp_path):
    from san.integrations.ray import SANSegmenter

    seg = SANSegmenter(
        str(golden_files["pth"]),
        NAMES,
        config_file=str(golden_files["yaml"]),
        opts=OPTS,
        batch_size=2,
        output=tmp_path / "out",
    )
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    data = io.BytesIO()
    Image.fromarray(images[1]).save(data, format="PNG")
    ragged = np.empty(2, dtype=object)
    ragged[:] = [images[0], images[1]]
    encoded = np.array([(tmp_path / "a.png").read_bytes(), data.getvalue()], dtype=object)
    names = np.array(["a.png", "b.png"])
    by_bytes = seg({"path": names, "bytes": encoded})
    by_array = seg({"path": names, "image": ragged})
    files = np.array([str(tmp_path / "a.png"), str(tmp_path / "missing.png")])
    by_path = seg({"path": files, "stem": np.array(["x", "y"])})
    alone = SANPredictor.from_pretrained(str(golden_files["yaml"]), weights=golden_files["pth"], opts=OPTS)
    direct = [alone.predict(im, NAMES).labels for im in images]
    for table in (by_bytes, by_array):
        rows = table.to_pylist()
        for row, want in zip(rows, direct):
            assert row["error"] is None
            np.testing.assert_array_equal(labels_of(row), want)
    rows = by_path.to_pylist()
    np.testing.assert_array_equal(labels_of(rows[0]), direct[0])
    assert rows[1]["error"] == "no such file" and rows[1]["label_rles"] is None
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "x_labels.png")), direct[0])
    assert not list((tmp_path / "out").glob("y*"))  # the failed image wrote nothing


def test_bad_tables_are_refused(tmp_path):
    with pytest.raises(TableError, match="no such table"):
        read_rows(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TableError, match="holds no .parquet files"):
        read_rows(tmp_path / "empty")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(TableError, match="not a readable Parquet table"):
        read_rows(tmp_path / "junk.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "foreign.parquet")
    with pytest.raises(TableError, match="not a san region table"):
        read_rows(tmp_path / "foreign.parquet")


def test_the_segmenter_takes_an_adapter(golden_files, golden_v2_model, images, tmp_path):
    """``SANSegmenter(adapter=...)``: the adapted predictor's labels (an adapter swapping 'cat' and 'sky')."""
    from san.inference.adapter import Adapter
    from san.integrations.ray import SANSegmenter

    model = golden_v2_model
    with torch.no_grad():
        swapped = model.ov_classifier.embed_names(["sky", "cat"])
    Adapter(["cat", "sky"], swapped, model.image_fingerprint(), model.ov_classifier.cache_key()).save(tmp_path / "a")
    model_files = {"config_file": str(golden_files["yaml"]), "opts": OPTS, "regions": False}
    seg = SANSegmenter(str(golden_files["pth"]), NAMES, adapter=str(tmp_path / "a"), **model_files)
    ragged = np.empty(2, dtype=object)
    ragged[:] = [images[0], images[1]]
    rows = seg({"path": np.array(["a.png", "b.png"]), "image": ragged}).to_pylist()
    adapted = SANPredictor.from_pretrained(
        str(golden_files["yaml"]), weights=golden_files["pth"], opts=OPTS, adapter=tmp_path / "a"
    )
    plain = SANPredictor.from_pretrained(str(golden_files["yaml"]), weights=golden_files["pth"], opts=OPTS)
    changed = 0
    for row, image in zip(rows, images):
        np.testing.assert_array_equal(labels_of(row), adapted.predict(image, NAMES).labels)
        changed += int((labels_of(row) != plain.predict(image, NAMES).labels).sum())
    assert changed > 0 and rows[0]["region_scores"] is None  # regions=False: labels only
