"""Configuration: every key of the official SAN release, with its official name and default.

The official release configures itself through detectron2's ``get_cfg()`` plus ``add_san_config``
and ``add_deeplab_config``. :func:`get_cfg` rebuilds that key set on top of fvcore's ``CfgNode`` so
that the official YAML files and command-line overrides work unchanged without detectron2.
:func:`add_san_config` adds only the SAN/DeepLab keys, so the detectron2 integration can call it on
detectron2's own config.

YAML files are read with a safe loader (:mod:`san.config.safe_yaml`): no code from a YAML file ever
runs, and the official base file's one ``!!python/object/apply:eval`` list is computed by a tiny
arithmetic interpreter.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode

from .defaults import add_detectron2_defaults, add_san_config
from .safe_yaml import ConfigError, load_yaml

__all__ = [
    "CfgNode",
    "ConfigError",
    "get_cfg",
    "get_config_file",
    "add_san_config",
    "add_detectron2_defaults",
    "BASE_KEY",
    "BUNDLED_PREFIX",
    "bundled_configs",
]

BASE_KEY = "_BASE_"
BUNDLED_PREFIX = "san://"


class CfgNode(_FvCfgNode):
    """fvcore ``CfgNode`` with safe YAML loading and helpful errors for unknown keys."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """Load a YAML file, resolving ``_BASE_`` (a path relative to the file, or a list of them)."""
        cfg = load_yaml(filename)
        if BASE_KEY not in cfg:
            return cfg
        bases = cfg.pop(BASE_KEY)
        bases = [bases] if isinstance(bases, str) else list(bases)
        merged: dict = {}
        for base in bases:
            base = _resolve_base(str(base), filename)
            _merge_dict(merged, cls.load_yaml_with_base(base))
        _merge_dict(merged, cfg)
        return merged

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (with ``_BASE_`` chains) into this config."""
        loaded = self.load_yaml_with_base(cfg_filename)
        self._merge_checked(type(self)(loaded), source=cfg_filename)

    def merge_from_list(self, cfg_list: list) -> CfgNode:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` overrides, as on the official command line."""
        if len(cfg_list) % 2:
            raise ConfigError(f"config overrides must be KEY VALUE pairs, got an odd number of items: {cfg_list}")
        for key in cfg_list[0::2]:
            self._check_key(str(key), source="command line")
        try:
            super().merge_from_list(cfg_list)
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"invalid config override: {e}") from None
        return self

    def _merge_checked(self, other: _FvCfgNode, source: str) -> None:
        for key in _flatten_keys(other):
            self._check_key(key, source=source)
        try:
            self.merge_from_other_cfg(other)
        except (ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f"{source}: {e}") from None

    def _check_key(self, key: str, source: str) -> None:
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if isinstance(node, _FvCfgNode) and node.is_new_allowed():
                    return
                known = _flatten_keys(self)
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown config key {key!r}.{hint}")
            node = node[part]


def _resolve_base(base: str, including_file: str) -> str:
    """A ``_BASE_`` entry as a path: ``san://NAME`` is a bundled config (found from any install),
    a relative path is relative to the including file."""
    if base.startswith(BUNDLED_PREFIX):
        return get_config_file(base[len(BUNDLED_PREFIX) :])
    base = os.path.expanduser(base)
    if not os.path.isabs(base):
        base = os.path.join(os.path.dirname(including_file), base)
    if not os.path.isfile(base):
        raise FileNotFoundError(
            f"{including_file}: _BASE_ file {base} does not exist; a bundled config is named "
            f"'{BUNDLED_PREFIX}NAME.yaml' ({', '.join(bundled_configs())})"
        )
    return base


def _merge_dict(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_dict(dst[k], v)
        else:
            dst[k] = v


def _flatten_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            keys.extend(_flatten_keys(v, full + "."))
        else:
            keys.append(full)
    return keys


def get_cfg() -> CfgNode:
    """A fresh config with detectron2's defaults for the keys SAN uses plus every SAN key."""
    cfg = CfgNode()
    add_detectron2_defaults(cfg)
    add_san_config(cfg)
    return cfg


def bundled_configs() -> list[str]:
    """File names of the configs that ship inside the package."""
    return sorted(p.name for p in resources.files("san.configs").iterdir() if p.name.endswith(".yaml"))


def get_config_file(name: str) -> str:
    """Path of a config: an existing file, or a bundled one by name (``san_clip_vit_res4_coco``,
    ``san_clip_vit_res4_coco.yaml`` or ``san://san_clip_vit_res4_coco.yaml``)."""
    if os.path.isfile(name):
        return name
    name = name.removeprefix(BUNDLED_PREFIX)
    fname = name if name.endswith(".yaml") else f"{name}.yaml"
    path = resources.files("san.configs").joinpath(os.path.basename(fname))
    if not path.is_file():
        raise FileNotFoundError(
            f"config {name!r} is neither a file nor a bundled config ({', '.join(bundled_configs())})"
        )
    return str(path)
