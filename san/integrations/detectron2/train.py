"""The official ``train_net.py`` trainer on detectron2's own ``DefaultTrainer`` (no W&B).

``Trainer`` differs from detectron2's ``DefaultTrainer`` only where the official one does: the
semantic training mapper, the per-parameter optimizer with full-model gradient clipping,
``WarmupPolyLR``, and detectron2's ``SemSegEvaluator`` for every "sem_seg" test set. Loaders tag
each sample with ``"meta": {"dataset_name"}`` so the model finds its vocabulary in the metadata.
"""

from __future__ import annotations

import argparse
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import detectron2
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from san.data.mapper import check_rgb_format

from .checkpoint import SANCheckpointer
from .config import add_san_config
from .datasets import register_all_datasets
from .mapper import MaskFormerSemanticDatasetMapper
from .solver import build_lr_scheduler, build_optimizer
from .tta import SemanticSegmentorWithTTA

__all__ = ["Trainer", "dataset_dicts", "setup"]


def dataset_dicts(names: Sequence[str]) -> list[dict]:
    """Concatenated dataset dicts of ``names``, each tagged with ``"meta": {"dataset_name"}``."""
    out: list[dict] = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(
                f"dataset {name!r} is empty; check its files under $DETECTRON2_DATASETS "
                f"({os.environ.get('DETECTRON2_DATASETS', 'datasets')})"
            )
        out.extend({**d, "meta": {"dataset_name": name}} for d in dicts)
    return out


class _TestMapper:
    """detectron2's ``DatasetMapper(cfg, False)`` (resize to ``MIN_SIZE_TEST``) without reading
    the label: the evaluator reads it from disk, and 16-bit labels do not survive mode "L"."""

    def __init__(self, cfg: CfgNode) -> None:
        self.mapper = DatasetMapper(cfg, False)

    def __call__(self, dataset_dict: dict) -> dict:
        return self.mapper({k: v for k, v in dataset_dict.items() if k != "sem_seg_file_name"})


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with the official SAN recipe, checkpoints read and loaded by
    :class:`SANCheckpointer` (san's one loader)."""

    def build_hooks(self) -> list:
        # DefaultTrainer makes its DetectionCheckpointer just before asking for the hooks, which keep it
        self.checkpointer = SANCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    if "state_dict" not in DefaultTrainer.__dict__:  # detectron2 0.6 checkpoints no optimizer state

        def state_dict(self) -> dict[str, Any]:
            """Trainer state for checkpoints, with the optimizer's (as later detectron2 releases do)."""
            ret = super().state_dict()
            ret["_trainer"] = self._trainer.state_dict()
            return ret

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            if "_trainer" in state_dict:  # absent in checkpoints written by plain detectron2 0.6
                self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type not in ("sem_seg", "ade20k_panoptic_seg"):
            raise NotImplementedError(f"no evaluator for dataset {dataset_name!r} of type {evaluator_type!r}")
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        if cfg.INPUT.DATASET_MAPPER_NAME != "mask_former_semantic":
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME {cfg.INPUT.DATASET_MAPPER_NAME!r} is not supported; SAN trains with "
                "'mask_former_semantic'"
            )
        mapper = MaskFormerSemanticDatasetMapper(cfg, True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset_dicts(cfg.DATASETS.TRAIN))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        check_rgb_format(cfg)
        return build_detection_test_loader(
            dataset=dataset_dicts([dataset_name]), mapper=_TestMapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> OrderedDict:  # noqa: N802 - official name
        """Evaluate every ``DATASETS.TEST`` set with test-time augmentation (results keyed ``<name>_TTA``)."""
        logging.getLogger("detectron2.trainer").info("Running inference with test-time augmentation ...")
        tta_model = SemanticSegmentorWithTTA(cfg, model)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=folder) for name in cfg.DATASETS.TEST]
        res = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in res.items())


def _default_setup(cfg: CfgNode, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup``; on a build without compiled ops (whose ``_C`` placeholder
    raises when asked for its compiler), the environment report leaves those lines out."""
    import detectron2.engine.defaults as d2_defaults

    collect = d2_defaults.collect_env_info

    def safe_collect() -> str:
        try:
            return collect()
        except NotImplementedError as e:
            return f"detectron2 {detectron2.__version__} without compiled ops ({e}); torch {torch.__version__}"

    d2_defaults.collect_env_info = safe_collect
    try:
        default_setup(cfg, args)
    finally:
        d2_defaults.collect_env_info = collect


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``--config-file`` and KEY VALUE overrides; logging; named datasets registered."""
    cfg = add_san_config(get_cfg())
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    _default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="san")
    register_all_datasets()
    return cfg
