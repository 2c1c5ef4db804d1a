"""The per-class IoU chart: every class drawn, sorted, readable; skipped with one warning without matplotlib."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from san.engine import results as results_mod
from san.engine.evaluator import SemSegEvaluator
from san.engine.results import BAR_PITCH_INCH, BARS_PER_COLUMN, CHART_DPI, MAX_COLUMNS, bar_chart

BAR_RGB = (0x3B, 0x75, 0xAF)


def _ious(n: int) -> dict[str, float]:
    """Distinct IoUs in 5..98 in a scrambled order (the chart must sort them), plus one class without ground truth."""
    r = {"mIoU": 50.0, **{f"IoU-class {i}": 5.0 + (i * 37 % n) * 93.0 / max(n - 1, 1) for i in range(n)}}
    r["IoU-never seen"] = float("nan")
    return r


def _bars(path) -> list[tuple[int, int, int]]:
    """``(x0, y0, length)`` of every bar-coloured blob of the PNG, in reading order (column by column)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    mask = np.abs(rgb - BAR_RGB).max(axis=-1) <= 2
    labels, _ = ndimage.label(mask)
    boxes = ndimage.find_objects(labels)
    bars = [(sl[1].start, sl[0].start, sl[1].stop - sl[1].start) for sl in boxes]
    return sorted(bars)  # x0 groups the columns, then top to bottom


@pytest.mark.parametrize("n", [3, 60, 250])
def test_chart_draws_every_class_sorted_in_columns(tmp_path, n):
    r = _ious(n)
    path = tmp_path / f"c{n}.png"
    assert bar_chart(r, "toy_val", str(path))
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    cols = min(MAX_COLUMNS, -(-n // BARS_PER_COLUMN))
    rows = -(-n // cols)
    assert 200 * cols <= width <= 500 * cols  # a readable column per 50 classes (up to 4), never a sliver
    overhead = height - rows * BAR_PITCH_INCH * CHART_DPI  # ~16 px per bar, grows with n
    assert 1.1 * CHART_DPI <= overhead <= (1.1 + 0.15 * 5) * CHART_DPI  # margins and a title of 1..5 lines
    bars = _bars(path)
    assert len(bars) == n  # every class with ground truth, and nothing for the one without
    assert len({x0 for x0, _, _ in bars}) == cols
    expected = sorted((v for k, v in r.items() if k.startswith("IoU-") and np.isfinite(v)), reverse=True)
    lengths = np.array([length for _, _, length in bars], dtype=float)
    slope, offset = np.polyfit(expected, lengths, 1)  # one axis (0..100) for every column
    assert slope > 1 and abs(offset) < 3  # more than a pixel per IoU point, bars start at 0
    assert np.abs(lengths - (slope * np.array(expected) + offset)).max() <= 1.2  # sorted best first, to scale
    ys = [y for _, y, _ in bars[:rows]]
    assert np.diff(ys).min() >= 0.6 * BAR_PITCH_INCH * CHART_DPI  # bars are spaced, not overdrawn


def test_chart_height_grows_with_the_number_of_classes(tmp_path):
    heights = []
    for n in (40, 400, 800):
        bar_chart(_ious(n), "big", str(tmp_path / f"{n}.png"))
        with Image.open(tmp_path / f"{n}.png") as img:
            heights.append(img.size[1])
    assert heights[0] < heights[1] < heights[2]
    assert heights[2] - heights[1] == pytest.approx(100 * BAR_PITCH_INCH * CHART_DPI, abs=2)  # 400 more = 100 rows


def test_evaluation_without_matplotlib_skips_the_chart_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(results_mod, "_warned_no_matplotlib", False)
    scores = torch.zeros(3, 2, 2)
    scores[1] = 1
    with caplog.at_level(logging.WARNING, logger="san"):
        for name in ("first", "second"):
            ev = SemSegEvaluator(3, 255, list("abc"), dataset_name=name, output_dir=tmp_path, boundary_iou=False)
            ev.process([{"sem_seg": torch.tensor([[1, 1], [0, 255]])}], [{"sem_seg": scores}])
            res = ev.evaluate()["sem_seg"]
            assert res["IoU-b"] == pytest.approx(200 / 3)
    assert {p.name for p in tmp_path.iterdir()} == {
        *("first.json", "first.txt", "first_confusion.npy"),
        *("second.json", "second.txt", "second_confusion.npy"),
    }  # no chart: neither the IoU bars nor the confusion picture
    warnings = [rec for rec in caplog.records if "chart" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "pip install matplotlib" in warnings[0].getMessage()
    assert "chart" not in results_mod.save_results({"sem_seg": res}, tmp_path / "again", "x")


def _subset_results(n_all: int = 171, with_gt: int = 4) -> dict:
    """A COCO-Stuff-sized result where only a few classes had ground truth (a 4-class subset):
    the rest have NaN accuracy; one of them was predicted somewhere (IoU 0)."""
    r = {"mIoU": 41.5, "fwIoU": 50.0, "mACC": 60.0, "pACC": 70.0}
    for i in range(n_all):
        gt = i < with_gt
        r[f"IoU-stuff class number {i}"] = 20.0 + 10 * i if gt else (0.0 if i == n_all - 1 else float("nan"))
        r[f"ACC-stuff class number {i}"] = 50.0 if gt else float("nan")
    return {"sem_seg": r}


def test_the_table_lists_the_classes_with_ground_truth_and_the_json_keeps_all(tmp_path):
    import json

    from san.engine.results import format_results, save_results

    res = _subset_results()
    table = format_results(res)
    listed = [line for line in table.splitlines() if line.startswith("stuff class number")]
    assert [line.split()[3] for line in listed] == ["0", "1", "2", "3"] and "n/a" not in table
    assert "167 class(es) without ground truth in these images are not listed, 1 of them predicted" in table
    paths = save_results(res, tmp_path, "coco_subset_with_a_rather_long_dataset_name_val")
    saved = json.loads(open(paths["json"]).read())["sem_seg"]
    assert sum(k.startswith("IoU-") for k in saved) == 171 and saved["IoU-stuff class number 9"] is None


def test_the_chart_title_fits_its_figure(tmp_path):
    """A long title over a one-column chart is wrapped: no title pixel touches the left or right edge,
    and the title band holds ink (it is drawn)."""
    path = tmp_path / "t.png"
    assert bar_chart(_subset_results()["sem_seg"], "coco_subset_with_a_rather_long_dataset_name_val", str(path))
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L")).astype(int)
    band = grey[: int(0.45 * CHART_DPI)]  # above the bars: the title's lines
    ink = band < 128
    assert ink.sum() > 50  # the title is there
    cols = np.nonzero(ink.any(axis=0))[0]
    assert cols.min() > 2 and cols.max() < grey.shape[1] - 3, (cols.min(), cols.max(), grey.shape)
