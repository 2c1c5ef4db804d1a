"""Every load and save of weights: SAN checkpoints (official detectron2 files, ours, bare
state_dicts), CLIP weights into SAN's three CLIP modules, and safetensors files.

Our module names equal the official ones, so official checkpoints load strictly with no key table.
The quirks of foreign and official files are handled in one filter, :func:`filter_state_dict`:

- a DDP ``module.`` prefix is stripped;
- ``criterion.*`` entries are training-only: dropped when the model has no criterion, and
  ``criterion.empty_weight`` (derived from NUM_CLASSES and NO_OBJECT_WEIGHT) keeps the model's own
  when the checkpoint was trained with another class count (fine-tuning, or predicting with a model
  fine-tuned on one's own dataset), which is logged;
- ``ov_classifier.attn_mask`` (CLIP's causal mask, a derived buffer) keeps the model's own when the
  file lacks it (newer open_clip leaves it out of state_dicts).

Files are read with ``torch.load(weights_only=True)`` or safetensors: loading never runs code.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from san.files import FileFormatError, atomic_path, file_size, read_safetensors
from san.model_zoo import resolve_weights
from san.modeling.clip import is_torchscript, open_clip_name

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "ClipWeightsUnavailable",
    "LoadReport",
    "clip_state_dict_to_san",
    "filter_state_dict",
    "load_checkpoint",
    "load_clip_weights",
    "read_checkpoint",
    "read_clip_weights",
    "read_state_dict",
    "save_checkpoint",
]

_FORMAT = "san"
CLIP_MODULES = ("clip_visual_extractor", "clip_rec_head", "ov_classifier")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did: keys that did not fit, and the quirks it handled."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The whole dict stored in a ``.pth``/``.pt`` file (model, optimizer, ...), read weights-only.

    Errors say what is wrong with the file: missing, a directory, truncated or not a checkpoint, or
    holding pickled code that we refuse to run (with how to convert a trusted file).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; give the checkpoint file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            return read_safetensors(path)[0]
        except FileFormatError as e:
            raise CheckpointError(str(e)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "not an allowed global" in str(e):
            raise CheckpointError(
                f"{path} contains pickled Python objects, not only tensors; san does not run code from weight "
                'files. If you trust the file, convert it once to a plain state_dict: python -c "import torch; '
                f"c = torch.load('{path}', weights_only=False); torch.save(c.get('model', c), 'converted.pth')\""
            ) from None
        raise CheckpointError(_unreadable(path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(_unreadable(path)) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: a checkpoint must hold a dict, got {type(obj).__name__}")
    return dict(obj)


def _unreadable(path: str) -> str:
    """One line on a file ``torch.load`` cannot read; PyTorch's own paragraph (about ``weights_only`` and
    filing issues with PyTorch) is no help for a file that is simply not a checkpoint."""
    if not zipfile.is_zipfile(path):
        what = "not a zip archive, as torch.save writes"
    else:
        what = "a zip archive without readable PyTorch records"
    return f"{path} is truncated or not a checkpoint ({file_size(path)}; {what}): download it again or check the path"


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """The model state_dict in a file or dict (detectron2 ``{"model": ...}``, ours, bare, safetensors)."""
    obj: Any = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
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
        sd[str(k).removeprefix("module.")] = v
    return sd


def filter_state_dict(sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Apply the official/foreign quirks (see the module docstring) to ``sd`` for a model whose
    state_dict is ``own``; returns the filtered dict and a note per quirk handled."""
    out = {k.removeprefix("module."): v for k, v in sd.items()}
    notes = []
    if not any(k.startswith("criterion.") for k in own):
        dropped = [k for k in out if k.startswith("criterion.")]
        for k in dropped:
            del out[k]
    key = "criterion.empty_weight"
    if key in out and key in own and out[key].shape != own[key].shape:
        notes.append(
            f"the checkpoint was trained with {out[key].numel() - 1} classes, the model's criterion has "
            f"{own[key].numel() - 1} (MODEL.SAN.NUM_CLASSES): keeping the model's criterion.empty_weight"
        )
        out[key] = own[key]
    key = "ov_classifier.attn_mask"
    if key in own and key not in out:
        out[key] = own[key]
    return out, notes


def _hint(own: Mapping[str, Tensor], sd: Mapping[str, Tensor]) -> str:
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
    model: nn.Module, weights: str | os.PathLike | Mapping[str, Any], *, strict: bool = True
) -> LoadReport:
    """Load SAN weights into ``model``: a file, an official name or URL (via :mod:`san.model_zoo`),
    or a (state_)dict. The one loader of the package.

    Raises :class:`CheckpointError` naming every missing, unexpected and mis-shaped key (with a hint
    when the file belongs to another CLIP) unless ``strict`` is false; then only matching tensors
    load and the report says what did not.
    """
    if isinstance(weights, (str, os.PathLike)):
        weights = resolve_weights(weights)
    model = getattr(model, "module", model)  # DistributedDataParallel
    own = model.state_dict()
    sd, notes = filter_state_dict(read_state_dict(weights), own)
    report = LoadReport(
        missing=sorted(k for k in own if k not in sd),
        unexpected=sorted(k for k in sd if k not in own),
        mismatched=sorted(
            f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
            for k in sd
            if k in own and sd[k].shape != own[k].shape
        ),
        notes=notes,
    )
    for note in notes:
        logger.info("%s", note)
    if not report.ok:
        parts = [
            f"{len(v)} {name} key(s): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
            for name, v in (
                ("missing", report.missing),
                ("unexpected", report.unexpected),
                ("mismatched", report.mismatched),
            )
            if v
        ]
        msg = "checkpoint does not match the model: " + "; ".join(parts) + "." + _hint(own, sd)
        if strict:
            raise CheckpointError(msg)
        logger.warning(msg)
    bad = {m.split(":")[0] for m in report.mismatched}
    model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in bad}, strict=False)
    return report


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``{"model": state_dict, "format": "san", **extra}`` atomically (loadable by detectron2 too).

    ``extra`` values must be weights-only-loadable (tensors, numbers, strings, containers of them).
    """
    model = getattr(model, "module", model)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "format": _FORMAT, **extra}, tmp)


# --------------------------------------------------------------------------------------------
# CLIP weights into SAN
# --------------------------------------------------------------------------------------------
def clip_state_dict_to_san(sd: Mapping[str, Tensor], feature_last_layer_idx: int) -> dict[str, Tensor]:
    """Map open_clip CLIP keys to SAN's three CLIP modules (visual blocks split at the given index)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("visual.transformer.resblocks."):
            idx, rest = k[len("visual.transformer.resblocks.") :].split(".", 1)
            i = int(idx)
            if i < feature_last_layer_idx:
                out[f"clip_visual_extractor.resblocks.{i}.{rest}"] = v
            else:
                out[f"clip_rec_head.resblocks.{i - feature_last_layer_idx}.{rest}"] = v
        elif k.startswith("visual."):
            rest = k[len("visual.") :]
            prefix = "clip_rec_head." if rest.split(".")[0] in ("ln_post", "proj") else "clip_visual_extractor."
            out[prefix + rest] = v
        else:
            out["ov_classifier." + k] = v
    return out


def load_clip_weights(model: nn.Module, clip_sd: Mapping[str, Tensor], *, name: str = "CLIP") -> None:
    """Copy open_clip CLIP weights into a SAN model's CLIP modules. SAN's own parts (side adapter,
    SOS tokens, background embedding) keep their initialisation; every CLIP tensor must fit."""
    own = model.state_dict()
    sd = clip_state_dict_to_san(clip_sd, len(model.clip_visual_extractor.resblocks))
    wanted = {k for k in own if k.split(".")[0] in CLIP_MODULES}
    wanted -= {"ov_classifier.bg_embed"} | {k for k in wanted if k.endswith("sos_token")}
    if "ov_classifier.attn_mask" not in sd:  # newer open_clip keeps the causal mask out of state_dicts
        wanted.discard("ov_classifier.attn_mask")
    missing = sorted(wanted - sd.keys())
    shapes = [k for k in wanted & sd.keys() if sd[k].shape != own[k].shape]
    if missing or shapes:
        raise CheckpointError(
            f"CLIP weights {name} do not fit the model: missing {missing[:5]}, mis-shaped {shapes[:5]}"
        )
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(sd[k])
    model.ov_classifier.clear_cache()


class ClipWeightsUnavailable(RuntimeError):
    """open_clip could not fetch the pretrained CLIP weights (offline, or the download failed)."""


def read_clip_weights(model_name: str, pretrained: str) -> dict[str, Tensor]:
    """CLIP weights in open_clip's key layout, float32, from a local file or an open_clip tag.

    Files are read as any checkpoint (weights-only; safetensors); a TorchScript archive such as
    OpenAI's original ``.pt`` is read with ``torch.jit.load``, which restores tensors, not Python
    objects. Tags are fetched by open_clip: the only CLIP download of the package.
    """
    if os.path.isfile(pretrained):
        if zipfile.is_zipfile(pretrained) and is_torchscript(pretrained):
            sd = torch.jit.load(pretrained, map_location="cpu").state_dict()
        else:
            sd = read_state_dict(pretrained)
        return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in sd.items()}
    import open_clip

    name = open_clip_name(model_name)
    tags = [t for m, t in open_clip.list_pretrained() if m == name]
    if pretrained not in tags:
        raise ValueError(
            f"unknown CLIP weights {pretrained!r} for {name}: give an existing file or one of the open_clip tags {tags}"
        )
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device="cpu", precision="fp32")
    except Exception as e:
        raise ClipWeightsUnavailable(
            f"could not load open_clip weights {name}/{pretrained} ({e}). Offline? Download them elsewhere and set "
            "MODEL.SAN.CLIP_PRETRAINED_NAME to the local file, or load a SAN checkpoint (it holds every CLIP "
            "weight: san.build_model(cfg, weights=...)) and keep CLIP_PRETRAINED_NAME as it is: the tag also "
            "decides the activation (QuickGELU for 'openai'), so '' would change the model."
        ) from e
    return model.state_dict()
