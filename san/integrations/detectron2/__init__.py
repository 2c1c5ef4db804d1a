"""SAN inside detectron2: importing this package registers the meta-architecture ``"SAN"`` and the
named datasets, like importing the official release's ``san`` package does.

    import san.integrations.detectron2 as sd2
    cfg = sd2.add_san_config(detectron2.config.get_cfg())   # official SAN + DeepLab keys
    cfg.merge_from_file("configs/san_clip_vit_res4_coco.yaml")
    model = detectron2.modeling.build_model(cfg)            # -> sd2.SAN, a san.modeling.SAN

This is the only part of ``san`` that imports detectron2; without it, importing this package
raises an ImportError that says how to install it.
"""

from __future__ import annotations

_INSTALL_HINT = (
    "san.integrations.detectron2 needs detectron2, which is not installed. Install it with its own "
    "instructions (https://detectron2.readthedocs.io/en/latest/tutorials/install.html, e.g. "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git', which needs a compiler); without "
    "a toolchain, python scripts/install_detectron2.py in a clone of san installs detectron2 0.6's Python "
    "code from PyPI (see docs/detectron2.md, linked from the README). The rest of san works without detectron2."
)

try:
    import detectron2  # noqa: F401
except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e

from .checkpoint import SANCheckpointer  # noqa: E402
from .config import add_san_config, get_san_cfg  # noqa: E402
from .datasets import register_all_datasets, register_dataset  # noqa: E402
from .mapper import MaskFormerSemanticDatasetMapper  # noqa: E402
from .modeling import SAN, dataset_vocabulary  # noqa: E402
from .solver import build_lr_scheduler, build_optimizer  # noqa: E402
from .train import Trainer, setup  # noqa: E402
from .tta import SemanticSegmentorWithTTA  # noqa: E402

register_all_datasets()

__all__ = [
    "SAN",
    "MaskFormerSemanticDatasetMapper",
    "SANCheckpointer",
    "SemanticSegmentorWithTTA",
    "Trainer",
    "add_san_config",
    "build_lr_scheduler",
    "build_optimizer",
    "dataset_vocabulary",
    "get_san_cfg",
    "register_all_datasets",
    "register_dataset",
    "setup",
]
