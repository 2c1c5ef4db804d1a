"""Our SemSegEvaluator and detectron2's give identical metrics on the same predictions.

One known difference: detectron2 0.6 (the PyPI sdist CI installs) divides the mIoU sum by the number
of classes present in the labels OR the predictions; later detectron2 (the version behind the
official SAN logs) and san divide by the classes present in the labels. Every other number, and
mIoU whenever no absent class is predicted, must be identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (python scripts/install_detectron2.py installs it)"
)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator  # noqa: E402
from PIL import Image  # noqa: E402

from san.engine.evaluator import SemSegEvaluator  # noqa: E402

# detectron2 0.6 converts a tensor with np.array(..., dtype=int), which NumPy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    ("ignore", "ext", "num_classes", "predict_absent"),
    [
        (255, "png", 8, False),  # COCO / ADE-150 / VOC / PC-59 style labels
        (255, "png", 8, True),
        (65535, "tif", 300, True),  # ADE-847 / PC-459 style: 16-bit TIFF, 65535 ignored
    ],
)
def test_our_evaluator_equals_detectron2s(tmp_path, ignore, ext, num_classes, predict_absent):
    rng = np.random.default_rng(num_classes)
    names = [f"class {i}" for i in range(num_classes)]
    in_gt = rng.choice(num_classes, size=5, replace=False)  # the others are absent from the labels
    dicts, outputs, predicted = [], [], set()
    for i, (h, w) in enumerate([(23, 31), (40, 17), (12, 12)]):
        gt = rng.choice(np.append(in_gt, ignore), size=(h, w)).astype(np.uint8 if ignore == 255 else np.uint16)
        if i == 2:
            gt[:] = ignore  # an image without any valid pixel
        gt_file = tmp_path / f"{i}.{ext}"
        Image.fromarray(gt).save(gt_file)
        scores = torch.rand(num_classes, h, w, generator=torch.Generator().manual_seed(i))
        if not predict_absent:  # only classes of the labels can win the argmax
            scores[[c for c in range(num_classes) if c not in in_gt]] = -1
        valid = torch.from_numpy(gt.astype(np.int64) != ignore)
        hit = valid & (torch.rand(h, w, generator=torch.Generator().manual_seed(10 + i)) < 0.6)
        ys, xs = hit.nonzero(as_tuple=True)
        scores[torch.from_numpy(gt.astype(np.int64))[ys, xs], ys, xs] += 1  # 60% of valid pixels right
        dicts.append(
            {"file_name": str(tmp_path / f"{i}.jpg"), "sem_seg_file_name": str(gt_file), "height": h, "width": w}
        )
        outputs.append({"sem_seg": scores})
        predicted |= set(scores.argmax(0)[valid].tolist())  # predictions on ignored pixels do not count
    name = f"san_test_parity_{ignore}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda d=dicts: d)
    MetadataCatalog.get(name).set(stuff_classes=names, ignore_label=ignore, evaluator_type="sem_seg")

    theirs = D2SemSegEvaluator(name, distributed=False)
    ours = SemSegEvaluator(num_classes, ignore, names)
    for ev in (theirs, ours):
        ev.reset()
        for x, y in zip(dicts, outputs):
            ev.process([x], [y])
    a, b = ours.evaluate()["sem_seg"], theirs.evaluate()["sem_seg"]
    keys = ["fwIoU", "mACC", "pACC", *[f"IoU-{n}" for n in names], *[f"ACC-{n}" for n in names]]
    differ = {k: (a[k], b[k]) for k in keys if not _same(float(a[k]), float(b[k]))}
    assert not differ
    absent = [n for i, n in enumerate(names) if i not in in_gt]
    assert all(math.isnan(a[f"ACC-{n}"]) and math.isnan(a[f"IoU-{n}"]) for n in absent)  # excluded, not zero
    assert 0 < a["mIoU"] < 100
    n_gt, n_any = len(in_gt), len(set(in_gt.tolist()) | predicted)
    assert (n_any > n_gt) == predict_absent
    assert a["mIoU"] == pytest.approx(np.nanmean([a[f"IoU-{n}"] for n in names]), rel=1e-12)
    if b["mIoU"] != a["mIoU"]:  # detectron2 0.6: the same IoU sum over the classes in labels or predictions
        assert predict_absent and b["mIoU"] == pytest.approx(a["mIoU"] * n_gt / n_any, rel=1e-12)
