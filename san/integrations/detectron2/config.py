"""SAN's config keys on detectron2's own ``get_cfg()``, as the official ``train_net.py`` sets them up."""

from __future__ import annotations

from detectron2.config import CfgNode

from san.config import add_san_config as _add_san_keys

__all__ = ["add_san_config", "get_san_cfg"]


def add_san_config(cfg: CfgNode) -> CfgNode:
    """Add DeepLab's keys (poly LR, crop area constraint) and every official SAN key to ``cfg``.

    Equivalent to the official ``add_deeplab_config(cfg); add_san_config(cfg)``. None of the added
    keys exist in detectron2's defaults, so nothing of detectron2's is overwritten; calling it twice
    is harmless. Returns ``cfg`` for chaining.
    """
    try:
        from detectron2.projects.deeplab import add_deeplab_config
    except ImportError:  # an install without the projects: san's keys include DeepLab's poly-LR keys
        add_deeplab_config = None
    if add_deeplab_config is not None:
        add_deeplab_config(cfg)
    _add_san_keys(cfg)
    return cfg


def get_san_cfg() -> CfgNode:
    """detectron2's ``get_cfg()`` with :func:`add_san_config` applied."""
    from detectron2.config import get_cfg

    return add_san_config(get_cfg())
