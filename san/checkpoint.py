"""Loading and saving SAN weights: official detectron2 checkpoints, bare state_dicts, ours.

Our module names equal the official ones, so official checkpoints load strictly with no key table.
Two official quirks are handled here: ``criterion.empty_weight`` (a buffer derived from
NUM_CLASSES and NO_OBJECT_WEIGHT) is dropped when the model has no criterion, and a DDP
``module.`` prefix is stripped. Files are always read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "read_state_dict"]

_FORMAT = "san"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def read_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """The model state_dict inside a file or dict (detectron2 ``{"model": ...}``, ours, or bare)."""
    obj: Any = path_or_state_dict
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"could not read {path} as a weights-only PyTorch checkpoint ({type(e).__name__}: {e}). "
                "san never unpickles arbitrary objects; re-save the file as a plain state_dict."
            ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor: not a state_dict")
        sd[k.removeprefix("module.")] = v
    return sd


def _hint(model: nn.Module, sd: Mapping[str, Tensor]) -> str:
    own = model.state_dict()
    key = "clip_visual_extractor.positional_embedding"
    if key in own and key in sd and own[key].shape != sd[key].shape:
        return (
            f" The checkpoint's CLIP has positional embedding {list(sd[key].shape)}, the model "
            f"{list(own[key].shape)}: it was trained with another CLIP (e.g. ViT-L/14 vs ViT-B/16); use the "
            "matching config (configs/san_clip_vit_large_res4_coco.yaml for san_vit_large_14)."
        )
    n_ckpt = len({k.split(".")[2] for k in sd if k.startswith("clip_visual_extractor.resblocks.")})
    n_own = len({k.split(".")[2] for k in own if k.startswith("clip_visual_extractor.resblocks.")})
    if n_ckpt != n_own:
        return f" The checkpoint splits CLIP after {n_ckpt} blocks, the model after {n_own} (FEATURE_LAST_LAYER_IDX)."
    return ""


def load_checkpoint(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> dict[str, list[str]]:
    """Load official or san weights into ``model``.

    Raises :class:`CheckpointError` naming every missing, unexpected and mis-shaped key unless
    ``strict`` is false (then they are returned and logged, and only matching tensors load).
    """
    sd = read_state_dict(path_or_state_dict)
    model_sd = model.state_dict()
    if "criterion.empty_weight" in sd and "criterion.empty_weight" not in model_sd:
        sd.pop("criterion.empty_weight")  # derived from NUM_CLASSES; only needed for training
    missing = sorted(k for k in model_sd if k not in sd)
    unexpected = sorted(k for k in sd if k not in model_sd)
    mismatched = sorted(
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(model_sd[k].shape)}"
        for k in sd
        if k in model_sd and sd[k].shape != model_sd[k].shape
    )
    report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    if missing or unexpected or mismatched:
        parts = [
            f"{len(v)} {name} key(s): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
            for name, v in report.items()
            if v
        ]
        msg = "checkpoint does not match the model: " + "; ".join(parts) + "." + _hint(model, sd)
        if strict:
            raise CheckpointError(msg)
        logger.warning(msg)
    bad = {m.split(":")[0] for m in mismatched}
    model.load_state_dict({k: v for k, v in sd.items() if k in model_sd and k not in bad}, strict=False)
    return report


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``{"model": state_dict, "format": "san", **extra}`` atomically (loadable by detectron2 too).

    ``extra`` values must be weights-only-loadable (tensors, numbers, strings, containers of them).
    """
    model = getattr(model, "module", model)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save({"model": model.state_dict(), "format": _FORMAT, **extra}, tmp)
    os.replace(tmp, path)
