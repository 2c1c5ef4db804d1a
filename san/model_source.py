"""Everything san writes is a model san reads: one place that turns what a user passes as ``--weights``
(or ``SANPredictor.from_pretrained``'s model) into a config and a weights file.

Accepted, in this order:

- an official name (``san-vit-b-16``, ``san-vit-l-14``): its bundled config and its Hub checkpoint;
- a model folder in the Hub format (``save_pretrained``, ``san export hub``, ``OUTPUT_DIR/pretrained``):
  its ``config.yaml`` (a CLIP JSON beside it found there) and ``model.safetensors``;
- a training ``OUTPUT_DIR``: its ``pretrained/`` folder when the run finished, else its ``config.yaml``
  and the checkpoint ``last_checkpoint`` names;
- a checkpoint file (or URL): the config given, else the ``config.yaml`` beside the file (a checkpoint in
  a training folder), else the official ViT-B/16 config;
- a Hugging Face Hub repository id in the Hub format (downloaded by huggingface_hub).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from san import hub
from san.config import get_cfg, get_config_file
from san.model_zoo import get_model_info

__all__ = ["DEFAULT_CONFIG", "ModelSource", "config_and_weights", "locate_model", "model_classes", "model_config"]

DEFAULT_CONFIG = "san_clip_vit_res4_coco"
_RUN_MARKERS = ("last_checkpoint", "model_final.pth")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's config and weights are: ``config`` is a config name or YAML path; ``weights`` what
    :func:`san.build_model` loads; ``kind`` one of official, hub, run, checkpoint, hub-repo."""

    config: str
    weights: str
    kind: str


def _is_hub_folder(path: Path) -> bool:
    return (path / hub.WEIGHTS_FILE).is_file() and (path / hub.CONFIG_FILE).is_file()


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and any((path / m).exists() for m in _RUN_MARKERS)


def _run_weights(path: Path) -> ModelSource:
    """The newest weights of a training folder: ``pretrained/`` when it holds the final model."""
    marker = path / "last_checkpoint"
    name = marker.read_text(encoding="utf-8").strip() if marker.is_file() else "model_final.pth"
    if name == "model_final.pth" and _is_hub_folder(path / "pretrained"):
        return ModelSource(
            str(path / "pretrained" / hub.CONFIG_FILE), str(path / "pretrained" / hub.WEIGHTS_FILE), "hub"
        )
    ckpt = path / name
    if not ckpt.is_file():
        raise FileNotFoundError(f"{path}: the training folder's last checkpoint {ckpt} is missing")
    return ModelSource(str(path / "config.yaml"), str(ckpt), "run")


def locate_model(
    model: str | os.PathLike, config: str | None = None, *, default_config: str = DEFAULT_CONFIG
) -> ModelSource:
    """Where the model ``model`` (module docstring) is; ``config`` (a config name or YAML) replaces the
    config it would bring; ``default_config`` is the config of a bare checkpoint that brings none. Folders
    that are neither a model nor a training run are a FileNotFoundError saying what they lack."""
    spec = os.fspath(model)
    info = get_model_info(spec)
    if info is not None:
        return ModelSource(config or info.config, info.name, "official")
    path = Path(spec)
    if path.is_dir():
        if _is_hub_folder(path):
            found = ModelSource(str(path / hub.CONFIG_FILE), str(path / hub.WEIGHTS_FILE), "hub")
        elif _is_run(path):
            found = _run_weights(path)
        else:
            raise FileNotFoundError(
                f"{path} is a folder but not a model: a model folder holds {hub.CONFIG_FILE} and {hub.WEIGHTS_FILE} "
                "(save_pretrained, san export hub), a training folder config.yaml and last_checkpoint (san train)"
            )
        return ModelSource(config or found.config, found.weights, found.kind)
    beside = path.parent / "config.yaml"
    if config is None and path.is_file() and beside.is_file():
        return ModelSource(str(beside), spec, "checkpoint")
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not re.search(r"\.\w+$", spec):
        return ModelSource(config or "", spec, "hub-repo")
    # a file or URL; anything else is left to the weights loader, whose errors say what was looked for
    return ModelSource(config or default_config, spec, "checkpoint")


def config_and_weights(source: ModelSource) -> tuple[Any, str]:
    """The (unfrozen) config of ``source`` and the weights :func:`san.build_model` loads; a Hub repository
    is downloaded (huggingface_hub's cache) to get them."""
    if source.kind == "hub-repo":
        config, weights = hub.folder_files(source.weights)
        return hub.read_config(config), str(weights)
    return model_config(source), source.weights


def model_config(source: ModelSource) -> Any:
    """The (unfrozen) config of ``source``: a model folder's own config (CLIP JSON resolved beside it), a
    training folder's ``config.yaml``, or a bundled config / YAML file."""
    if source.config.endswith(hub.CONFIG_FILE) and os.path.isfile(source.config):
        return hub.read_config(Path(source.config))
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(source.config))
    return cfg


def model_classes(model: str | os.PathLike, config: str | None = None) -> list[str]:
    """The training classes a model records (``SAN_ENGINE.CLASS_NAMES``, set by ``san train --data``),
    read from its config without building it; ``[]`` when it records none (the official models) or
    when it is a Hub repository (known once downloaded)."""
    source = locate_model(model, config)
    if source.kind == "hub-repo":
        return []
    return [str(c) for c in model_config(source).SAN_ENGINE.CLASS_NAMES]
