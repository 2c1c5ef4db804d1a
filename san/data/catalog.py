"""Named semantic-segmentation datasets: the official benchmarks and your own.

A dataset is a :class:`DatasetSpec`: an image folder, a label folder (one label map per image,
paired by file name without extension), the class names in contiguous-id order and the ignore
value. Folders are relative to the dataset root, ``$DETECTRON2_DATASETS`` (default ``datasets``),
read when a dataset is resolved, never at import. The official names, layouts and ignore values
(COCO-Stuff, ADE-150/847, Pascal Context 59/459, VOC-20) are registered lazily on first access.

Register your own in a few lines::

    from san.data.catalog import register_dataset
    register_dataset(name="my_val", image_dir="my/images", gt_dir="my/labels",
                     classes=["road", "car"], ignore_label=255)

or from a YAML file with :func:`register_datasets_from_yaml`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from san.assets import list_class_sets, read_classes, read_dataset_ids

__all__ = [
    "DatasetSpec",
    "dataset_root",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "register_datasets_from_yaml",
    "register_config_data",
    "register_prepared",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)

_CATALOG: dict[str, DatasetSpec] = {}
_BUILTINS_DONE = False
_LOCK = threading.RLock()

# builtin dataset -> the `san prepare-data` name that builds it (for error messages)
_PREPARE_NAMES: dict[str, str] = {}


def dataset_root() -> str:
    """The dataset root: ``$DETECTRON2_DATASETS``, else ``datasets`` (read on every call)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


@dataclass
class DatasetSpec:
    """One semantic-segmentation dataset: where its files are, its classes and ignore value.

    ``image_dir``/``gt_dir`` are relative to the dataset root unless absolute. ``dataset_ids``
    (optional) are the raw dataset ids of the classes in contiguous order (COCO-Stuff, ADE-847),
    used when predictions are written with dataset ids.
    """

    name: str
    image_dir: str
    gt_dir: str
    classes: list[str]
    ignore_label: int
    image_ext: str = ".jpg"
    gt_ext: str = ".png"
    evaluator_type: str = "sem_seg"
    dataset_ids: list[int] | None = None
    manifest: str | None = None  # a san dataset.json (san.data.own): its ``split`` lists the samples
    split: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a dataset needs a non-empty string name, got {self.name!r}")
        for key in ("image_dir", "gt_dir"):
            value = getattr(self, key)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise ValueError(f"dataset {self.name!r}: {key} must be a non-empty path, got {value!r}")
            setattr(self, key, os.fspath(value))
        if isinstance(self.classes, str) or not self.classes:
            raise ValueError(f"dataset {self.name!r}: classes must be a non-empty list of names, got {self.classes!r}")
        self.classes = [str(c) for c in self.classes]
        if isinstance(self.ignore_label, bool) or not isinstance(self.ignore_label, int) or self.ignore_label < 0:
            raise ValueError(
                f"dataset {self.name!r}: ignore_label must be a non-negative int (255 for 8-bit PNG labels, "
                f"65535 for 16-bit), got {self.ignore_label!r}"
            )
        if 0 <= self.ignore_label < len(self.classes):
            raise ValueError(
                f"dataset {self.name!r}: ignore_label {self.ignore_label} collides with class id "
                f"{self.ignore_label} ({self.classes[self.ignore_label]!r}); use a value >= {len(self.classes)}"
            )
        for key in ("image_ext", "gt_ext"):
            ext = getattr(self, key)
            setattr(self, key, ext if ext.startswith(".") else f".{ext}")
        if self.dataset_ids is not None:
            self.dataset_ids = [int(i) for i in self.dataset_ids]
            if len(self.dataset_ids) != len(self.classes):
                raise ValueError(
                    f"dataset {self.name!r}: {len(self.dataset_ids)} dataset_ids for {len(self.classes)} classes"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolve(self, root: str | os.PathLike | None = None) -> DatasetSpec:
        """A copy with absolute ``image_dir``/``gt_dir`` under ``root`` (default :func:`dataset_root`)."""
        root = os.fspath(root) if root is not None else dataset_root()

        def full(path: str) -> str:
            return os.path.abspath(path if os.path.isabs(path) else os.path.join(root, path))

        return dataclasses.replace(self, image_dir=full(self.image_dir), gt_dir=full(self.gt_dir))

    def list_samples(self, root: str | os.PathLike | None = None) -> list[dict[str, str]]:
        """``[{"file_name", "sem_seg_file_name"}]`` pairing images and labels by file name, sorted.

        As detectron2's ``load_sem_seg``: when the two folders hold different numbers of files,
        only names present in both are kept (with a warning). Paths are joined to ``root`` as given.
        """
        if self.manifest is not None:
            return _manifest_samples(self.manifest, self.split, self.name)
        root = os.fspath(root) if root is not None else dataset_root()
        image_dir = self.image_dir if os.path.isabs(self.image_dir) else os.path.join(root, self.image_dir)
        gt_dir = self.gt_dir if os.path.isabs(self.gt_dir) else os.path.join(root, self.gt_dir)
        images = self._list(image_dir, self.image_ext, "image")
        labels = self._list(gt_dir, self.gt_ext, "label")
        if len(images) != len(labels):
            common = images.keys() & labels.keys()
            logger.warning(
                "dataset %s: %d images in %s but %d labels in %s; using the %d names present in both",
                self.name,
                len(images),
                image_dir,
                len(labels),
                gt_dir,
                len(common),
            )
            images = {k: v for k, v in images.items() if k in common}
        missing = [k for k in images if k not in labels]
        if missing:
            raise FileNotFoundError(
                f"dataset {self.name!r}: no label {os.path.join(gt_dir, missing[0] + self.gt_ext)} for image "
                f"{images[missing[0]]} ({len(missing)} images without a label)"
            )
        if not images:
            raise FileNotFoundError(
                f"dataset {self.name!r}: no image in {image_dir} has a label in {gt_dir} "
                f"(images *{self.image_ext}, labels *{self.gt_ext}, paired by file name). {self._prepare_hint()}"
            )
        return [{"file_name": images[k], "sem_seg_file_name": labels[k]} for k in sorted(images)]

    def _list(self, folder: str, ext: str, what: str) -> dict[str, str]:
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"dataset {self.name!r}: {what} directory {folder} does not exist. {self._prepare_hint()}"
            )
        return {f[: -len(ext)]: os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext)}

    def _prepare_hint(self) -> str:
        root = f"$DETECTRON2_DATASETS (now {dataset_root()!r})"
        prep = _PREPARE_NAMES.get(self.name)
        if prep:
            return (
                f"Prepare it with `san prepare-data {prep} --raw RAW_DIR` and make sure the dataset root {root} "
                "points at it (docs/training.md, section Datasets)."
            )
        return f"Check the dataset's paths (relative ones are under the dataset root {root})."


def _manifest_samples(path: str, split: str, name: str) -> list[dict[str, str]]:
    """The records of ``split`` in a san ``dataset.json`` (paths relative to its folder unless absolute)."""
    import json

    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset {name!r}: its manifest {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    base = os.path.dirname(os.path.abspath(path))
    records = [
        {"file_name": os.path.join(base, r["image"]), "sem_seg_file_name": os.path.join(base, r["label"])}
        for r in data.get(split, [])
    ]
    if not records:
        raise FileNotFoundError(f"dataset {name!r}: {path} lists no {split!r} image")
    return records


def register_prepared(data_dir: str | os.PathLike, name: str | None = None, overwrite: bool = True) -> list[str]:
    """Register the train and val splits of a folder written by :func:`san.data.own.prepare_data` as
    ``<name>_train`` and ``<name>_val`` (default: the name in its ``dataset.json``); returns the two names."""
    import json

    manifest = os.path.abspath(os.path.join(os.fspath(data_dir), "dataset.json"))
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"{data_dir}: no dataset.json (write it with san.data.own.prepare_data)")
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    name = name or data.get("name") or "own"
    names = []
    for split in ("train", "val"):
        spec = DatasetSpec(
            f"{name}_{split}",
            os.path.dirname(manifest),
            os.path.dirname(manifest),
            list(data["classes"]),
            int(data["ignore_label"]),
            manifest=manifest,
            split=split,
        )
        names.append(register_dataset(spec, overwrite=overwrite).name)
    return names


def register_config_data(cfg: Any) -> None:
    """Register the prepared data a config names (``SAN_ENGINE.DATA``, written by ``san train --data``)."""
    data = cfg.get("SAN_ENGINE", {}).get("DATA", "") if hasattr(cfg, "get") else ""
    if data:
        register_prepared(data)


def _builtin_specs() -> list[tuple[DatasetSpec, str]]:
    coco, ade150, ade847 = read_classes("coco_stuff_171"), read_classes("ade20k_150"), read_classes("ade20k_847")
    pc59, pc459, voc = read_classes("pcontext_59"), read_classes("pcontext_459"), read_classes("voc_20")
    coco_ids, ade847_ids = read_dataset_ids("coco_stuff_171"), read_dataset_ids("ade20k_847")
    specs: list[tuple[DatasetSpec, str]] = []
    for split, folder in (("train", "train2017"), ("test", "val2017")):
        specs.append(
            (
                DatasetSpec(
                    f"coco_2017_{split}_stuff_sem_seg",
                    f"coco/{folder}",
                    f"coco/stuffthingmaps_detectron2/{folder}",
                    coco,
                    255,
                    dataset_ids=coco_ids,
                ),
                "coco_stuff",
            )
        )
    for split, folder in (("train", "training"), ("val", "validation")):
        specs.append(
            (
                DatasetSpec(
                    f"ade20k_sem_seg_{split}",
                    f"ADEChallengeData2016/images/{folder}",
                    f"ADEChallengeData2016/annotations_detectron2/{folder}",
                    ade150,
                    255,
                ),
                "ade20k_150",
            )
        )
        specs.append(
            (
                DatasetSpec(
                    f"ade20k_full_sem_seg_{split}",
                    f"ADE20K_2021_17_01/images_detectron2/{folder}",
                    f"ADE20K_2021_17_01/annotations_detectron2/{folder}",
                    ade847,
                    65535,
                    gt_ext=".tif",
                    dataset_ids=ade847_ids,
                ),
                "ade20k_847",
            )
        )
    for split in ("train", "val"):
        specs.append(
            (
                DatasetSpec(
                    f"pcontext_sem_seg_{split}", f"pcontext/{split}/image", f"pcontext/{split}/label", pc59, 255
                ),
                "pcontext_59",
            )
        )
        specs.append(
            (
                DatasetSpec(
                    f"pcontext_full_sem_seg_{split}",
                    f"pcontext_full/{split}/image",
                    f"pcontext_full/{split}/label",
                    pc459,
                    65535,
                    gt_ext=".tif",
                ),
                "pcontext_459",
            )
        )
        specs.append(
            (
                DatasetSpec(
                    f"voc_sem_seg_{split}", "VOC2012/JPEGImages", f"VOC2012/annotations_detectron2/{split}", voc, 255
                ),
                "voc",
            )
        )
    return specs


def _ensure_builtins() -> None:
    global _BUILTINS_DONE
    with _LOCK:
        if _BUILTINS_DONE:
            return
        for spec, prep in _builtin_specs():
            _CATALOG.setdefault(spec.name, spec)
            _PREPARE_NAMES[spec.name] = prep
        _BUILTINS_DONE = True


def register_dataset(
    spec: DatasetSpec | Mapping[str, Any] | None = None, /, overwrite: bool = False, **kwargs: Any
) -> DatasetSpec:
    """Register a dataset: a :class:`DatasetSpec`, a mapping of its fields, or the fields as keywords.

    ``classes`` may also name a bundled class list (e.g. ``"ade20k_150"``). Registering an existing
    name is an error unless ``overwrite=True``.
    """
    _ensure_builtins()
    if spec is None:
        spec = kwargs
    elif kwargs:
        raise TypeError("give either a DatasetSpec/mapping or keyword fields, not both")
    if not isinstance(spec, DatasetSpec):
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"register_dataset takes a DatasetSpec or a mapping of its fields, got {type(spec).__name__}"
            )
        spec = _spec_from_mapping(dict(spec), source="register_dataset")
    with _LOCK:
        if spec.name in _CATALOG and not overwrite:
            raise ValueError(f"dataset {spec.name!r} is already registered; pass overwrite=True to replace it")
        if spec.name in _CATALOG:
            _PREPARE_NAMES.pop(spec.name, None)
        _CATALOG[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Remove a dataset from the catalog (unknown names: KeyError listing the known ones)."""
    with _LOCK:
        get_dataset(name)
        del _CATALOG[name]


def _spec_from_mapping(data: dict[str, Any], source: str, base_dir: str | None = None) -> DatasetSpec:
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    classes_file = data.pop("classes_file", None)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown dataset field(s) {unknown}; known: {sorted(fields | {'classes_file'})}")
    missing = [k for k in ("name", "image_dir", "gt_dir", "ignore_label") if k not in data]
    if classes_file is None and "classes" not in data:
        missing.append("classes (or classes_file)")
    if missing:
        raise ValueError(f"{source}: dataset {data.get('name', '?')!r} is missing {', '.join(missing)}")
    if base_dir is not None:  # folders that exist beside the YAML are read there, as its classes_file
        for key in ("image_dir", "gt_dir"):
            value = data.get(key)
            if isinstance(value, str) and not os.path.isabs(value) and os.path.isdir(os.path.join(base_dir, value)):
                data[key] = os.path.join(base_dir, value)
    if classes_file is not None:
        path = classes_file if os.path.isabs(classes_file) or base_dir is None else os.path.join(base_dir, classes_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source}: classes_file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            data["classes"] = [line.rstrip("\n") for line in f if line.strip()]
    elif isinstance(data["classes"], str):
        if data["classes"] not in list_class_sets():
            raise ValueError(
                f"{source}: classes {data['classes']!r} is not a bundled class list ({', '.join(list_class_sets())}); "
                "give a list of names or classes_file"
            )
        data["classes"] = read_classes(data["classes"])
    return DatasetSpec(**data)


def register_datasets_from_yaml(path: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Register the datasets described in a YAML file; returns their names.

    The file holds ``datasets:`` with a list of entries (or a mapping name -> fields), each with
    the :class:`DatasetSpec` fields; ``classes`` is a list, a bundled class-list name, or replaced
    by ``classes_file`` (one name per line, relative to the YAML file). Relative ``image_dir``/``gt_dir``
    are read beside the YAML file when they exist there, else under the dataset root.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset YAML {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
    entries = data.get("datasets") if isinstance(data, dict) else data
    if isinstance(entries, dict):
        entries = [{"name": k, **(v or {})} for k, v in entries.items()]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ValueError(
            f"{path}: expected `datasets:` holding a list of dataset entries (name, image_dir, gt_dir, ...)"
        )
    specs = [_spec_from_mapping(dict(e), source=path, base_dir=os.path.dirname(os.path.abspath(path))) for e in entries]
    return [register_dataset(s, overwrite=overwrite).name for s in specs]


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``; unknown names raise KeyError listing the known ones."""
    _ensure_builtins()
    with _LOCK:
        if name not in _CATALOG:
            raise KeyError(f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(_CATALOG))}")
        return _CATALOG[name]


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _ensure_builtins()
    with _LOCK:
        return sorted(_CATALOG)
