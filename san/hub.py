"""The Hugging Face Hub format of a SAN model: a folder (or Hub repository) holding

- ``model.safetensors``: every weight, no pickle at all;
- ``config.yaml``: the full config the model was built from (official keys);
- ``README.md``: a model card whose YAML front matter names the library, the pipeline
  (``image-segmentation``), the licence, tags, the datasets trained and evaluated on, and the
  evaluation results when the run produced them (``model-index``).

:class:`san.SAN` (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``) and ``san export hub``
read and write it through this module; uploads and downloads are huggingface_hub's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from san.config import CfgNode, ConfigError, get_cfg
from san.files import atomic_path

__all__ = [
    "CLIP_CONFIG_FILE",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "HubFormatError",
    "folder_files",
    "model_card",
    "read_config",
    "read_config_text",
    "write_config",
    "write_card",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
_PICKLES = ("pytorch_model.bin", "model.pth", "model.pt", "model.ckpt")

TRAINED_ON = {"coco_2017_train_stuff_sem_seg": "COCO-Stuff"}
EVALUATED_ON = {
    "ade20k_sem_seg_val": "ADE20K-150",
    "ade20k_full_sem_seg_val": "ADE20K-847",
    "pcontext_sem_seg_val": "Pascal Context-59",
    "pcontext_full_sem_seg_val": "Pascal Context-459",
    "voc_sem_seg_val": "Pascal VOC",
    "coco_2017_test_stuff_sem_seg": "COCO-Stuff",
}


class HubFormatError(ValueError):
    """A folder or repository is not a SAN model in the Hub format; the message says what is missing."""


def folder_files(model_id: str | os.PathLike, **download: Any) -> tuple[Path, Path]:
    """``(config.yaml, model.safetensors)`` of a local folder, or of a Hub repository (downloaded by
    huggingface_hub into its cache; ``download``: revision, cache_dir, force_download, token,
    local_files_only)."""
    folder = Path(model_id)
    if not folder.is_dir():
        if os.path.exists(folder):
            raise HubFormatError(f"{folder} is a file; a SAN model in the Hub format is a folder (or a Hub repo id)")
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(str(model_id), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, "README.md"], **download)
            )
        except Exception as e:  # offline, unknown repo, gated ...
            raise HubFormatError(
                f"{model_id} is neither a local folder nor a Hub repository that could be downloaded "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file():
        pickled = [p for p in _PICKLES if (folder / p).is_file()]
        if pickled:
            raise HubFormatError(
                f"{folder} holds {pickled[0]} (pickled weights) but no {WEIGHTS_FILE}; san loads safetensors only. "
                f"Convert a trusted checkpoint with `san export hub --weights {folder / pickled[0]} --output NEW_DIR`"
            )
        raise HubFormatError(f"{folder} has no {WEIGHTS_FILE}: not a SAN model folder (save one with save_pretrained)")
    if not config.is_file():
        raise HubFormatError(f"{folder} has no {CONFIG_FILE}: the model's config is needed to build it")
    return config, weights


CLIP_CONFIG_FILE = "clip_config.json"


def read_config(path: Path) -> CfgNode:
    """The config of a model folder (safe YAML, every key checked). A CLIP model config the folder
    carries (``clip_config.json``, see :func:`write_config`) is found beside it."""
    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(path))
    except ConfigError as e:
        raise HubFormatError(f"{path}: {e}") from None
    beside = Path(path).resolve().parent / CLIP_CONFIG_FILE
    clip = str(cfg.MODEL.SAN.CLIP_MODEL_NAME)
    # the folder's own copy, also when the recorded JSON has moved away (a training folder that was moved)
    if clip == CLIP_CONFIG_FILE or (clip.endswith(".json") and not os.path.isfile(clip) and beside.is_file()):
        cfg.MODEL.SAN.CLIP_MODEL_NAME = str(beside)
    return cfg


def write_config(directory: Path, config_yaml: str) -> CfgNode:
    """Write ``config.yaml`` (and the CLIP model config when it is a local JSON file, so that the folder
    stands on its own) atomically; returns the config as written."""
    cfg = read_config_text(config_yaml)
    clip = str(cfg.MODEL.SAN.CLIP_MODEL_NAME)
    if clip.endswith(".json") and os.path.isfile(clip):
        with atomic_path(directory / CLIP_CONFIG_FILE) as tmp:
            Path(tmp).write_bytes(Path(clip).read_bytes())
        cfg.MODEL.SAN.CLIP_MODEL_NAME = CLIP_CONFIG_FILE
    with atomic_path(directory / CONFIG_FILE) as tmp:
        Path(tmp).write_text(cfg.dump(), encoding="utf-8")
    return cfg


def _known(values: dict, reference: dict) -> dict:
    """The entries of ``values`` whose keys ``reference`` has (recursively): a detectron2 config holds
    keys of other detectron2 models that san's config does not know, and never reads."""
    out = {}
    for k, v in values.items():
        if k in reference:
            out[k] = _known(v, reference[k]) if isinstance(v, dict) and isinstance(reference[k], dict) else v
    return out


def read_config_text(text: str) -> CfgNode:
    """A san config from a config's YAML text (keys san does not know are left out)."""
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise HubFormatError(f"the model's config is not valid YAML: {e}") from None
    cfg = get_cfg()
    try:
        cfg.merge_from_other_cfg(CfgNode(_known(values, cfg)))
    except (ValueError, KeyError, AssertionError) as e:
        raise HubFormatError(f"the model's config: {e}") from None
    return cfg


def _clip_description(cfg: Any, clip_config: dict[str, Any] | None) -> str:
    """How the card names the CLIP: ``CLIP ViT-B-16 (openai weights)``, or for a local open_clip
    JSON config the shape it describes (a file name tells a reader nothing)."""
    name = str(cfg.MODEL.SAN.CLIP_MODEL_NAME)
    if not name.endswith(".json"):
        pretrained = str(cfg.MODEL.SAN.CLIP_PRETRAINED_NAME)
        return f"CLIP {name}" + (f" ({pretrained} weights)" if pretrained else "")
    vision = (clip_config or {}).get("vision_cfg", {})
    shape = ", ".join(
        f"{label} {vision[key]}"
        for key, label in (("width", "width"), ("layers", "layers"), ("patch_size", "patch"))
        if key in vision
    )
    return f"a custom CLIP ViT ({shape or 'its open_clip config'}; in {CLIP_CONFIG_FILE})"


def model_card(
    cfg: Any, results: dict[str, Any] | None = None, *, name: str = "SAN", clip_config: dict[str, Any] | None = None
) -> str:
    """The README.md of a model folder: YAML front matter (library, pipeline, licence, tags, the
    datasets it was trained and evaluated on, evaluation results) and a short text with the way to
    use it. Only datasets with ``results`` count as evaluated; ``clip_config``: the open_clip JSON
    config of a custom CLIP."""
    clip = _clip_description(cfg, clip_config)
    trained = [TRAINED_ON.get(d, d) for d in cfg.DATASETS.TRAIN]
    flat = {k: v for k, v in (results or {}).items() if isinstance(v, dict)}
    evaluated = [EVALUATED_ON.get(d, d) for d in flat]
    meta: dict[str, Any] = {
        "library_name": "san",
        "pipeline_tag": "image-segmentation",
        "license": "mit",
        "tags": ["san", "open-vocabulary", "semantic-segmentation", "clip", "image-segmentation"],
        "datasets": sorted(set(trained + evaluated)),
    }
    rows = []
    for dataset, metrics in flat.items():
        res = metrics.get("sem_seg", metrics)
        if "mIoU" in res:
            rows.append((EVALUATED_ON.get(dataset, dataset), float(res["mIoU"])))
    if rows:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Open-vocabulary semantic segmentation"},
                        "dataset": {"name": ds, "type": ds},
                        "metrics": [{"type": "mIoU", "value": round(v, 2), "name": "mIoU"}],
                    }
                    for ds, v in rows
                ],
            }
        ]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    table = "\n".join(f"| {ds} | {v:.2f} |" for ds, v in rows)
    results_md = f"\n## Evaluation\n\n| dataset | mIoU |\n|---|---|\n{table}\n" if rows else ""
    return f"""---
{front}---

# {name}: Side Adapter Network for open-vocabulary semantic segmentation

A SAN model (Xu et al., CVPR 2023) with {clip}, trained on {", ".join(trained) or "its training set"}.
It segments an image with any list of class names.

```python
import san
predictor = san.SANPredictor.from_pretrained("THIS_REPO_OR_FOLDER")
result = predictor.predict("photo.jpg", "cat, grass, sky")   # result.labels: [H, W] indices
```

Files: `{WEIGHTS_FILE}` (weights), `{CONFIG_FILE}` (the full config, official keys).
{results_md}"""


def write_card(directory: Path, cfg: Any, results: dict[str, Any] | None = None) -> None:
    """Write ``README.md`` atomically (after :func:`write_config`, whose CLIP JSON it describes)."""
    clip_json = Path(directory) / CLIP_CONFIG_FILE
    clip_config = json.loads(clip_json.read_text(encoding="utf-8")) if clip_json.is_file() else None
    with atomic_path(directory / "README.md") as tmp:
        Path(tmp).write_text(model_card(cfg, results, clip_config=clip_config), encoding="utf-8")
