"""SAN as detectron2's meta-architecture ``"SAN"`` (``MODEL.META_ARCHITECTURE: "SAN"``).

The registered class subclasses :class:`san.SAN`, so its state_dict keys are the core model's (and
the official release's): official checkpoints load through ``DetectionCheckpointer``, and the model
saves and loads in the Hub format (``save_pretrained``) as san's own does.
Two detectron2 conventions are added on top of the core input contract:

- inputs without ``"vocabulary"`` take the class names of their dataset, looked up as
  ``MetadataCatalog.get(x["meta"]["dataset_name"]).stuff_classes`` (the official behaviour; the
  loaders of :mod:`san.integrations.detectron2.train` attach ``"meta"``);
- training targets may be detectron2 ``Instances`` with ``gt_classes``/``gt_masks``; they are
  handed to the core model as its ``{"labels", "masks"}`` dicts.

The model is built once, by :func:`san.build.build_model`; when ``MODEL.WEIGHTS`` names a
checkpoint (which detectron2's checkpointer loads next, and which holds every CLIP weight) the CLIP
weights are not fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from san.build import SAN as _CoreSAN
from san.build import build_model

__all__ = ["SAN", "dataset_vocabulary"]

logger = logging.getLogger(__name__)


def dataset_vocabulary(dataset_name: str) -> list[str]:
    """Class names of a registered detectron2 dataset (its metadata's ``stuff_classes``)."""
    meta = MetadataCatalog.get(dataset_name)
    classes = getattr(meta, "stuff_classes", None)
    if not classes:
        raise ValueError(
            f"dataset {dataset_name!r} has no 'stuff_classes' in detectron2's MetadataCatalog; register it "
            "(san.integrations.detectron2.register_all_datasets() for the named san datasets) or pass "
            "'vocabulary' in each input"
        )
    return list(classes)


class SAN(_CoreSAN):
    """The core SAN model, buildable from a detectron2 config and fed by detectron2's loaders."""

    @configurable
    def __init__(self, **kwargs: Any) -> None:
        """Same keyword arguments as :class:`san.modeling.SAN`; ``SAN(cfg)`` builds from a config."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """Constructor arguments from a config: the modules :func:`san.build.build_model` builds (CLIP
        frozen, criterion attached; CLIP weights fetched only when ``MODEL.WEIGHTS`` is empty)."""
        return build_model(cfg, clip_weights=not cfg.MODEL.WEIGHTS).init_kwargs()

    def forward(self, batched_inputs: Sequence[dict]) -> Any:
        """The core forward, after filling in missing vocabularies from the dataset metadata and
        turning ``Instances`` targets into the core's dicts."""
        return super().forward([_as_core_input(x) for x in self._with_vocabulary(batched_inputs)])

    @staticmethod
    def _with_vocabulary(batched_inputs: Sequence[dict]) -> Sequence[dict]:
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("SAN expects a non-empty list of input dicts")
        if not isinstance(batched_inputs[0], dict) or "vocabulary" in batched_inputs[0]:
            return batched_inputs
        names = set()
        for i, x in enumerate(batched_inputs):
            meta = x.get("meta") if isinstance(x, dict) else None
            name = meta.get("dataset_name") if isinstance(meta, dict) else None
            if not name:
                raise ValueError(
                    f"input {i} has neither 'vocabulary' (a list of class names) nor 'meta': "
                    "{'dataset_name': ...} naming a registered dataset"
                )
            names.add(name)
        if len(names) > 1:
            raise ValueError(f"all images of a batch must come from one dataset, got {sorted(names)}")
        vocabulary = dataset_vocabulary(names.pop())
        return [{**x, "vocabulary": vocabulary} for x in batched_inputs]


def _as_core_input(x: Any) -> Any:
    inst = x.get("instances") if isinstance(x, dict) else None
    if inst is None or isinstance(inst, dict):
        return x
    return {**x, "instances": {"labels": inst.gt_classes, "masks": getattr(inst.gt_masks, "tensor", inst.gt_masks)}}


if "SAN" in META_ARCH_REGISTRY:
    if META_ARCH_REGISTRY.get("SAN") is not SAN:
        raise RuntimeError(
            "another meta-architecture named 'SAN' (e.g. the official release's) is already registered in "
            "detectron2's META_ARCH_REGISTRY; import only one of them in a process"
        )
else:
    META_ARCH_REGISTRY.register(SAN)
