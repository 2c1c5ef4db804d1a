"""Semantic-segmentation metrics with detectron2's ``SemSegEvaluator`` semantics, without detectron2.

A confusion matrix of shape ``(N + 1, N + 1)`` is accumulated over every image: rows are the
predicted class (the argmax of ``outputs[i]["sem_seg"]``), columns the ground truth, whose ignore
pixels go to the extra index ``N`` and so never count. From it, as detectron2 computes them:

- ``IoU-<c>`` = TP / (GT + predicted - TP) and ``ACC-<c>`` = TP / GT, where "predicted" counts only
  pixels with a valid ground truth; a class without any ground-truth pixel gets NaN for both and
  is left out of every mean (a class predicted but absent from the ground truth therefore does not
  lower the mIoU).
- ``mIoU``/``mACC``: means over the classes with ground truth; ``fwIoU``: IoU weighted by each
  class's share of ground-truth pixels; ``pACC``: correct / valid pixels. All in percent.
- ``BoundaryIoU-<c>`` and ``min(IoU, B-Iou)-<c>`` (as newer detectron2, which the official logs
  used): the same IoU on boundary bands of prediction and ground truth; computed when there are
  fewer than 255 classes and SciPy is installed (``boundary_iou=False`` skips it).

In a ``torch.distributed`` run the matrices of all processes are summed (``all_reduce``; CPU
tensors for gloo, the current CUDA device for NCCL) and every process gets the results; only the
main process writes files. Optional prediction dumping writes ``sem_seg_predictions.json`` (in
``output_dir``, or ``predictions_file``) as detectron2 does: one entry per image and predicted class with a
COCO-style compressed RLE
(column-major, pycocotools' string encoding, implemented here; :func:`rle_decode` reads it back)
and the class's dataset id where the dataset has them (COCO-Stuff, ADE-847).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from san.data.catalog import get_dataset
from san.data.io import read_label
from san.files import atomic_path

from .results import format_results, rle_decode, rle_encode, safe_name, save_results, write_json

__all__ = ["SemSegEvaluator", "format_results", "rle_decode", "rle_encode", "save_results"]

logger = logging.getLogger(__name__)


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_main() -> bool:
    return not _dist_ready() or torch.distributed.get_rank() == 0


class SemSegEvaluator:
    """Accumulate a confusion matrix over ``process`` calls; ``evaluate`` returns the metrics."""

    def __init__(
        self,
        num_classes: int,
        ignore_label: int,
        class_names: list[str],
        *,
        dataset_name: str | None = None,
        distributed: bool = True,
        output_dir: str | os.PathLike | None = None,
        dataset_ids: list[int] | None = None,
        dump_predictions: bool = False,
        predictions_file: str | os.PathLike | None = None,
        boundary_iou: bool | None = None,
    ) -> None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        if dataset_ids is not None and len(dataset_ids) != num_classes:
            raise ValueError(f"{len(dataset_ids)} dataset ids for num_classes={num_classes}")
        if dump_predictions and output_dir is None and predictions_file is None:
            raise ValueError("dump_predictions needs an output_dir (or a predictions_file) to write the predictions to")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.class_names = list(class_names)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = os.fspath(output_dir) if output_dir is not None else None
        self.dataset_ids = list(dataset_ids) if dataset_ids is not None else None
        self.dump_predictions = dump_predictions
        if predictions_file is None and self.output_dir is not None:
            predictions_file = os.path.join(self.output_dir, "sem_seg_predictions.json")
        self.predictions_file = os.fspath(predictions_file) if predictions_file is not None else None
        if boundary_iou is None:  # as detectron2: only when labels fit uint8 (and the erosion is available)
            boundary_iou = self.num_classes < 255 and _has_scipy()
        if boundary_iou and self.num_classes >= 255:
            raise ValueError("boundary IoU needs fewer than 255 classes (labels are eroded as uint8, as in detectron2)")
        self.boundary_iou = bool(boundary_iou)
        self.reset()

    @classmethod
    def from_dataset(cls, name: str, **kwargs: Any) -> SemSegEvaluator:
        """An evaluator for a registered dataset (classes, ignore value and dataset ids from the catalog)."""
        spec = get_dataset(name)
        kwargs.setdefault("dataset_ids", spec.dataset_ids)
        return cls(spec.num_classes, spec.ignore_label, spec.classes, dataset_name=name, **kwargs)

    def reset(self) -> None:
        """Forget everything processed so far."""
        n = self.num_classes + 1
        self.conf_matrix = np.zeros((n, n), dtype=np.int64)  # [pred, gt]
        self.boundary_conf_matrix = np.zeros((n, n), dtype=np.int64)  # the same, on boundary bands
        self._predictions: list[dict[str, Any]] = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Add a batch: ``outputs[i]["sem_seg"]`` scores ``[N, H, W]`` (or ``outputs[i]["labels"]``, a label
        map ``[H, W]``, as ``SAN.predict_labels`` gives it) vs the ground truth of ``inputs[i]``.

        The ground truth is ``inputs[i]["sem_seg"]`` (``[H, W]``) when present, else read from
        ``inputs[i]["sem_seg_file_name"]``.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            name = inp.get("file_name", inp.get("sem_seg_file_name", "<image>"))
            pred = self._prediction(out, name)
            gt = self._ground_truth(inp, name)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"{name}: prediction is {list(pred.shape)} but the ground truth is {list(gt.shape)}; "
                    "predict at the ground-truth resolution (inputs' height/width)"
                )
            n = self.num_classes
            self.conf_matrix += np.bincount(
                (n + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=(n + 1) ** 2
            ).reshape(n + 1, n + 1)
            if self.boundary_iou:
                b_pred, b_gt = _boundary(pred), _boundary(gt)
                self.boundary_conf_matrix += np.bincount(
                    (n + 1) * b_pred.reshape(-1) + b_gt.reshape(-1), minlength=(n + 1) ** 2
                ).reshape(n + 1, n + 1)
            if self.dump_predictions:
                self._predictions.extend(self._encode(pred, inp.get("file_name", name)))

    def _prediction(self, out: dict[str, Any], name: str) -> np.ndarray:
        if "sem_seg" not in out and "labels" not in out:
            raise KeyError(f"{name}: the model output has neither 'sem_seg' (scores) nor 'labels' (a label map)")
        scores = out["labels"] if "labels" in out else out["sem_seg"]
        scores = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
        if scores.dim() == 2 and not scores.is_floating_point():
            pred = scores.to("cpu", torch.int64)
        elif scores.dim() == 3:
            if scores.shape[0] != self.num_classes:
                raise ValueError(
                    f"{name}: prediction has {scores.shape[0]} class channels but the dataset has "
                    f"{self.num_classes} classes (was the model given the dataset's vocabulary?)"
                )
            pred = scores.argmax(dim=0).to("cpu", torch.int64)
        else:
            raise ValueError(f"{name}: 'sem_seg' must be scores [N, H, W] or labels [H, W], got {list(scores.shape)}")
        pred = pred.numpy()
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"{name}: predicted labels outside 0..{self.num_classes - 1}")
        return pred

    def _ground_truth(self, inp: dict[str, Any], name: str) -> np.ndarray:
        if inp.get("sem_seg") is not None:
            gt = inp["sem_seg"]
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            source = name
        elif inp.get("sem_seg_file_name"):
            source = inp["sem_seg_file_name"]
            gt = read_label(source)
        else:
            raise KeyError(f"{name}: the input has neither 'sem_seg' nor 'sem_seg_file_name' (no ground truth)")
        gt = gt.astype(np.int64)
        if gt.ndim != 2:
            raise ValueError(f"{source}: ground truth must be [H, W], got {list(gt.shape)}")
        ignore = gt == self.ignore_label
        bad = ~ignore & ((gt < 0) | (gt >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"{source}: ground-truth value {int(gt[bad][0])} is neither a class id (0..{self.num_classes - 1}) "
                f"nor the ignore value {self.ignore_label}"
            )
        gt[ignore] = self.num_classes
        return gt

    def _encode(self, pred: np.ndarray, file_name: str) -> list[dict[str, Any]]:
        entries = []
        for label in np.unique(pred):
            cid = int(self.dataset_ids[label]) if self.dataset_ids is not None else int(label)
            entries.append({"file_name": file_name, "category_id": cid, "segmentation": rle_encode(pred == label)})
        return entries

    def evaluate(self) -> OrderedDict:
        """Metrics ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<c>", "ACC-<c>"}}`` (percent).

        In a distributed run, every process must call this (it sums the matrices of all processes).
        """
        conf, b_conf = self.conf_matrix, self.boundary_conf_matrix
        predictions = self._predictions
        if self.distributed and _dist_ready():
            conf = _all_reduce_sum(conf)
            if self.boundary_iou:
                b_conf = _all_reduce_sum(b_conf)
            if self.dump_predictions:
                gathered: list[Any] = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(gathered, predictions)
                predictions = [p for part in gathered for p in part]
        b_conf = b_conf if self.boundary_iou else None
        results = OrderedDict(sem_seg=metrics_from_confusion(conf, self.class_names, b_conf))
        if _is_main():
            logger.info("%s: %s", self.dataset_name or "sem_seg", format_results(results, header_only=True))
            if self.dump_predictions and self.predictions_file is not None:
                os.makedirs(os.path.dirname(os.path.abspath(self.predictions_file)), exist_ok=True)
                write_json(self.predictions_file, predictions)
                logger.info("%d predicted segments written to %s", len(predictions), self.predictions_file)
            if self.output_dir is not None:
                name = self.dataset_name or "sem_seg"
                save_results(results, self.output_dir, name)
                self.save_confusion(conf, os.path.join(self.output_dir, safe_name(name)))
        return results

    def save_confusion(self, conf: np.ndarray, stem: str) -> None:
        """``<stem>_confusion.npy``: pixel counts ``[ground truth, prediction]`` over the evaluated pixels
        (ignored ones left out, so it sums to the pixels the metrics count), and ``<stem>_confusion.png``."""
        from .pictures import confusion_picture

        n = self.num_classes
        matrix = np.ascontiguousarray(conf[:n, :n].T)
        with atomic_path(f"{stem}_confusion.npy") as tmp:
            np.save(tmp, matrix)
        confusion_picture(matrix, self.class_names, f"{stem}_confusion.png")


def _has_scipy() -> bool:
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError:
        return False
    return True


def _boundary(label: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """detectron2's ``_mask_to_boundary`` on a label map: ``label - erode(label)`` in uint8.

    The map gets a one-pixel zero frame and is eroded ``d = max(1, round(0.02 * diagonal))`` times
    by a 3x3 square (= one (2d+1)-square minimum filter): zero within ``d`` pixels of the border
    and wherever a smaller label is near; so the result is non-zero on bands along label edges.
    """
    from scipy.ndimage import minimum_filter

    mask = label.astype(np.uint8)
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = np.pad(mask, 1, constant_values=0)
    eroded = minimum_filter(padded, size=2 * d + 1, mode="constant", cval=255)[1:-1, 1:-1]
    return (mask - eroded).astype(np.int64)


def _all_reduce_sum(conf: np.ndarray) -> np.ndarray:
    device = "cpu"
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.from_numpy(conf).to(device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.cpu().numpy()


def metrics_from_confusion(
    conf: np.ndarray, class_names: list[str], boundary_conf: np.ndarray | None = None
) -> OrderedDict:
    """detectron2's metrics from a ``[pred, gt]`` confusion matrix whose last row/column is "ignore".

    With ``boundary_conf`` (the matrix of the boundary bands) also ``BoundaryIoU-<c>`` and
    ``min(IoU, B-Iou)-<c>``, as newer detectron2 versions report them.
    """
    n = len(class_names)
    if conf.shape != (n + 1, n + 1):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {n} classes (+1 ignore)")
    acc = np.full(n, np.nan, dtype=np.float64)
    iou = np.full(n, np.nan, dtype=np.float64)
    tp = conf.diagonal()[:-1].astype(np.float64)
    pos_gt = conf[:-1, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf[:-1, :-1].sum(axis=1).astype(np.float64)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        pacc = np.sum(tp) / np.sum(pos_gt)
    b_iou = None
    if boundary_conf is not None:
        b_tp = boundary_conf.diagonal()[:-1].astype(np.float64)
        b_union = boundary_conf[:-1, :-1].sum(axis=0) + boundary_conf[:-1, :-1].sum(axis=1) - b_tp
        b_iou = np.full(n, np.nan, dtype=np.float64)
        b_iou[b_union > 0] = b_tp[b_union > 0] / b_union[b_union > 0]
    res: OrderedDict = OrderedDict()
    res["mIoU"] = 100 * miou
    res["fwIoU"] = 100 * fiou
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * iou[i]
        if b_iou is not None:
            res[f"BoundaryIoU-{name}"] = 100 * b_iou[i]
            res[f"min(IoU, B-Iou)-{name}"] = 100 * min(iou[i], b_iou[i])
    res["mACC"] = 100 * macc
    res["pACC"] = 100 * pacc
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * acc[i]
    return res
