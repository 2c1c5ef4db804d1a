"""SemSegEvaluator against hand-computed confusion matrices; files it writes; distributed summing."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from san.data.io import write_label
from san.engine.evaluator import SemSegEvaluator, rle_decode, rle_encode, save_results

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix


def _scores(pred: list[list[int]], n: int) -> torch.Tensor:
    """One-hot scores [n, H, W] whose argmax is ``pred``."""
    p = torch.tensor(pred)
    return torch.nn.functional.one_hot(p, n).permute(2, 0, 1).float()


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 4 classes; class 3 is never in the ground truth but predicted once; 255 is ignore
    gt = [[0, 0, 0, 1], [1, 1, 2, 255], [255, 2, 2, 2]]
    pred = [[0, 0, 1, 1], [1, 3, 2, 0], [3, 2, 2, 0]]
    ev = SemSegEvaluator(4, 255, ["a", "b", "c", "d"])
    ev.process([{"sem_seg": torch.tensor(gt)}], [{"sem_seg": _scores(pred, 4)}])
    conf = np.zeros((5, 5), np.int64)  # [pred, gt], gt ignore -> column 4
    for g, p in zip(np.array(gt).ravel(), np.array(pred).ravel()):
        conf[p, 4 if g == 255 else g] += 1
    assert np.array_equal(ev.conf_matrix, conf)
    r = ev.evaluate()["sem_seg"]
    # valid pixels only: a: tp 2, gt 3, pred 3 -> IoU 2/4; b: tp 2, gt 3, pred 3 -> 2/4; c: tp 3, gt 4, pred 3 -> 3/4
    iou = {"a": 2 / 4, "b": 2 / 4, "c": 3 / 4}
    acc = {"a": 2 / 3, "b": 2 / 3, "c": 3 / 4}
    for k in iou:
        assert r[f"IoU-{k}"] == pytest.approx(100 * iou[k]) and r[f"ACC-{k}"] == pytest.approx(100 * acc[k])
    assert math.isnan(r["IoU-d"]) and math.isnan(r["ACC-d"])  # predicted but absent from GT: excluded
    assert r["mIoU"] == pytest.approx(100 * sum(iou.values()) / 3)
    assert r["mACC"] == pytest.approx(100 * sum(acc.values()) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (3 * iou["a"] + 3 * iou["b"] + 4 * iou["c"]) / 10)
    assert r["pACC"] == pytest.approx(100 * 7 / 10)  # predictions on ignored pixels never count


def test_classes_absent_everywhere_and_perfect_predictions():
    gt = torch.tensor([[1, 1], [2, 255]])
    ev = SemSegEvaluator(5, 255, list("abcde"))
    ev.process([{"sem_seg": gt}], [{"sem_seg": _scores([[1, 1], [2, 0]], 5)}])
    r = ev.evaluate()["sem_seg"]
    assert r["mIoU"] == 100 and r["pACC"] == 100 and r["fwIoU"] == 100
    assert all(math.isnan(r[f"IoU-{k}"]) for k in "ade")
    ev.reset()
    assert ev.conf_matrix.sum() == 0


def test_sixteen_bit_labels_read_from_file(tmp_path):
    n = 300  # more classes than 8 bits hold
    gt = np.array([[299, 299, 65535], [256, 0, 256]], np.uint16)
    write_label(tmp_path / "g.tif", gt)
    pred = torch.tensor([[299, 0, 299], [256, 0, 299]])
    ev = SemSegEvaluator(n, 65535, [f"c{i}" for i in range(n)])
    ev.process([{"file_name": "x.jpg", "sem_seg_file_name": str(tmp_path / "g.tif")}], [{"sem_seg": pred}])
    r = ev.evaluate()["sem_seg"]
    # 299: tp 1, gt 2, pred 2 (the ignored pixel does not count) -> 1/3; 256: tp 1, gt 2, pred 1 -> 1/2; 0: 1/2
    assert r["IoU-c299"] == pytest.approx(100 / 3) and r["IoU-c256"] == pytest.approx(50)
    assert r["IoU-c0"] == pytest.approx(50) and r["mIoU"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert ev.conf_matrix[299, n] == 1  # the prediction on the ignored pixel lands in the ignore column


def test_bad_inputs_are_clear_errors():
    ev = SemSegEvaluator(3, 255, list("abc"))
    with pytest.raises(ValueError, match="value 7 is neither a class id"):
        ev.process([{"sem_seg": torch.tensor([[7]])}], [{"sem_seg": _scores([[0]], 3)}])
    with pytest.raises(ValueError, match=r"prediction is \[1, 2\] but the ground truth is \[1, 1\]"):
        ev.process([{"sem_seg": torch.tensor([[0]])}], [{"sem_seg": _scores([[0, 1]], 3)}])
    with pytest.raises(ValueError, match="4 class channels but the dataset has 3"):
        ev.process([{"sem_seg": torch.tensor([[0]])}], [{"sem_seg": _scores([[0]], 4)}])
    with pytest.raises(KeyError, match="no ground truth"):
        ev.process([{"file_name": "a.jpg"}], [{"sem_seg": _scores([[0]], 3)}])


def test_from_dataset_uses_the_catalog():
    ev = SemSegEvaluator.from_dataset("ade20k_full_sem_seg_val")
    assert ev.num_classes == 847 and ev.ignore_label == 65535 and len(ev.dataset_ids) == 847
    assert SemSegEvaluator.from_dataset("voc_sem_seg_val").class_names[-1] == "tv"


def test_rle_is_pycocotools_compressed_format():
    # column-major runs, starting with zeros: [[0, 1], [1, 1]] -> runs 1, 3 -> "13"
    assert rle_encode(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": "13"}
    assert rle_encode(np.array([[1], [0]], bool))["counts"] == "011"  # runs 0, 1, 1
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (37, 53), (200, 3)]:
        m = rng.random(shape) < rng.random()
        m[: shape[0] // 2] = m[0]  # long runs: multi-character and negative deltas
        assert np.array_equal(rle_decode(rle_encode(m)), m)


def test_dumped_predictions_and_saved_results(tmp_path):
    ev = SemSegEvaluator(
        3,
        255,
        list("abc"),
        dataset_name="toy/val",
        output_dir=tmp_path,
        dataset_ids=[10, 20, 30],
        dump_predictions=True,
    )
    pred = [[0, 2], [2, 2]]
    ev.process([{"file_name": "p.jpg", "sem_seg": torch.tensor([[0, 1], [255, 2]])}], [{"sem_seg": _scores(pred, 3)}])
    results = ev.evaluate()
    dumped = json.loads((tmp_path / "sem_seg_predictions.json").read_text())
    assert sorted(d["category_id"] for d in dumped) == [10, 30] and all(d["file_name"] == "p.jpg" for d in dumped)
    for d in dumped:
        assert np.array_equal(rle_decode(d["segmentation"]), np.array(pred) == [10, 20, 30].index(d["category_id"]))
    saved = json.loads((tmp_path / "toy_val.json").read_text())  # written by evaluate(); NaN as null
    assert saved["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"]) and saved["sem_seg"]["IoU-b"] == 0
    paths = save_results(results, tmp_path / "out", "again")
    assert json.loads(open(paths["json"]).read())["sem_seg"]["pACC"] == pytest.approx(100 * 2 / 3)
    table = open(paths["table"]).read()
    assert "copypaste: " in table and "mIoU" in table and "\nb " in table
    with Image.open(paths["chart"]) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 50
    # the chart's contents: tests/engine/test_results.py


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ev = SemSegEvaluator(3, 255, list("abc"), output_dir=out_dir)
        gt = torch.tensor([[0, 1, 2, 255]]) if rank == 0 else torch.tensor([[2, 2, 0, 1]])
        ev.process([{"sem_seg": gt}], [{"sem_seg": _scores([[0, 0, 2, 1]] if rank == 0 else [[2, 1, 0, 1]], 3)}])
        r = ev.evaluate()["sem_seg"]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({k: (None if math.isnan(v) else v) for k, v in r.items()}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_confusion_matrices_are_summed_across_processes(tmp_path):
    mp.start_processes(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    single = SemSegEvaluator(3, 255, list("abc"))
    single.process(
        [{"sem_seg": torch.tensor([[0, 1, 2, 255]])}, {"sem_seg": torch.tensor([[2, 2, 0, 1]])}],
        [{"sem_seg": _scores([[0, 0, 2, 1]], 3)}, {"sem_seg": _scores([[2, 1, 0, 1]], 3)}],
    )
    expected = single.evaluate()["sem_seg"]
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx({k: (None if math.isnan(v) else v) for k, v in expected.items()})
    assert (tmp_path / "sem_seg.json").is_file()  # written once, by the main process


def test_boundary_iou_on_a_hand_computed_case():
    # 4x4 image: erosion radius max(1, round(0.02 * diagonal)) = 1 with a zero frame, so the
    # boundary of an all-"1" label is its 12-pixel outer ring (value 1 - 0), the inner 2x2 is 0.
    ev = SemSegEvaluator(2, 255, ["a", "b"])
    assert ev.boundary_iou
    ev.process([{"sem_seg": torch.ones(4, 4, dtype=torch.long)}], [{"sem_seg": _scores([[0] * 4] * 4, 2)}])
    expected = np.zeros((3, 3), np.int64)
    expected[0, 1], expected[0, 0] = 12, 4  # [boundary of prediction (all 0), boundary of ground truth]
    assert np.array_equal(ev.boundary_conf_matrix, expected)
    r = ev.evaluate()["sem_seg"]
    assert r["BoundaryIoU-a"] == pytest.approx(25.0) and r["BoundaryIoU-b"] == 0  # 4 / (4 + 16 - 4); 0 / 12
    assert math.isnan(r["min(IoU, B-Iou)-a"]) and r["min(IoU, B-Iou)-b"] == 0
    assert list(r)[:5] == ["mIoU", "fwIoU", "IoU-a", "BoundaryIoU-a", "min(IoU, B-Iou)-a"]  # detectron2's order
    assert "BoundaryIoU-c0" not in SemSegEvaluator(300, 65535, [f"c{i}" for i in range(300)]).evaluate()["sem_seg"]


def test_the_label_path_bounds_are_one_past_the_last_class():
    """Labels 0..N-1 are classes; N (one past the last) and -1 are refused, from a label map as from
    scores; a ground-truth N is refused too, while the ignore value is left out."""
    ev = SemSegEvaluator(3, 255, list("abc"))
    gt = torch.tensor([[0, 1, 2, 255]])
    ev.process([{"sem_seg": gt}], [{"labels": torch.tensor([[0, 1, 2, 2]])}])  # the last class is a class
    assert ev.conf_matrix[:3, :3].trace() == 3 and ev.conf_matrix[:, 3].sum() == 1  # the ignored pixel: its column
    for bad in (3, -1):
        with pytest.raises(ValueError, match=r"predicted labels outside 0..2"):
            ev.process([{"sem_seg": gt}], [{"labels": torch.tensor([[0, 1, bad, 2]])}])
    with pytest.raises(ValueError, match="value 3 is neither a class id"):
        ev.process([{"sem_seg": torch.tensor([[0, 3]])}], [{"labels": torch.tensor([[0, 1]])}])
    assert ev.conf_matrix.sum() == 4  # the refused batches added nothing


@pytest.mark.parametrize("before", [True, False])
def test_the_label_path_gives_the_score_paths_matrix_with_either_postprocess_order(golden_v2, tmp_path, before):
    """``SEM_SEG_POSTPROCESS_BEFORE_INFERENCE`` both ways: evaluating on the label path
    (``SAN.predict_labels``, no scores) and on the score maps give the same confusion matrix. The ground
    truth is the score path's arg-max where its top-2 margin is clear of float32 rounding (1e-4: the two
    paths sum the same Q <= 20 products of values <= 1 in other orders, ~1e-6 apart) and ignore elsewhere, so
    the score path is a perfect diagonal and any label-path pixel off it is a real difference."""
    import san
    from san.engine.inference import _inference_on_dataset

    from ..conftest import golden_cfg

    cfg = golden_cfg(golden_v2, tmp_path)
    cfg.merge_from_list(["MODEL.SAN.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE", before])
    model = san.build_model(cfg, golden_v2["state_dict"]).eval()
    assert model.sem_seg_postprocess_before_inference is before
    batches = []
    for im in golden_v2["images"]:
        x = {
            "image": im,
            "height": 2 * im.shape[1] - 3,
            "width": 2 * im.shape[2] + 5,
            "vocabulary": golden_v2["vocabulary"],
        }
        with torch.no_grad():
            scores = model([x])[0]["sem_seg"]
        top2 = scores.topk(2, dim=0).values
        gt = scores.argmax(0)
        gt[(top2[0] - top2[1]) <= 1e-4] = 255
        batches.append([{**x, "sem_seg": gt}])
    matrices = []
    for label_path in (True, False):
        ev = SemSegEvaluator(5, 255, golden_v2["vocabulary"], distributed=False, boundary_iou=False)
        _inference_on_dataset(model, batches, ev, "golden", label_path=label_path)
        matrices.append(ev.conf_matrix.copy())
    classes = matrices[1][:5, :5]  # the last row and column: pixels whose ground truth is ignored
    assert (classes == np.diag(np.diag(classes))).all() and (np.diag(classes) > 0).sum() >= 3
    np.testing.assert_array_equal(matrices[0], matrices[1])
