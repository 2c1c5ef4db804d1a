"""Package data: class-name lists and prompt-template sets, read with importlib.resources."""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["read_classes", "read_prompts", "list_class_sets", "list_prompt_sets", "read_dataset_ids"]


def _lines(kind: str, name: str) -> list[str]:
    path = resources.files(__name__).joinpath(kind, f"{name}.txt")
    if not path.is_file():
        raise ValueError(f"unknown {kind[:-1]} set {name!r}; available: {_names(kind)}")
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _names(kind: str) -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).joinpath(kind).iterdir() if p.name.endswith(".txt"))


def read_classes(name: str) -> list[str]:
    """Class names of a benchmark (e.g. ``ade20k_150``), in contiguous-id order."""
    return _lines("classes", name)


def read_prompts(name: str) -> list[str]:
    """Prompt templates of a set (``vild``: 14, ``imagenet``: 80), each with one ``{}``."""
    return _lines("prompts", name)


def list_class_sets() -> list[str]:
    return _names("classes")


def list_prompt_sets() -> list[str]:
    return _names("prompts")


def read_dataset_ids(name: str) -> list[int]:
    """Raw dataset ids, in contiguous order, of ``coco_stuff_171`` or ``ade20k_847``."""
    data = json.loads(resources.files(__name__).joinpath("classes", "dataset_ids.json").read_text())
    key = f"{name}_dataset_ids"
    if key not in data:
        raise ValueError(f"no dataset ids for {name!r}; available: {sorted(k[:-12] for k in data)}")
    return [int(i) for i in data[key]]
