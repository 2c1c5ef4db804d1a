"""san: Side Adapter Network for open-vocabulary semantic segmentation, in plain PyTorch.

The public API is reached from here (``san.build_model``, ``san.SANPredictor``, ...). Names are
imported on first use, so that ``import san`` (and the ``san`` command's ``--help``) stays cheap.
"""

from __future__ import (
    annotations as annotations,
)

import importlib
from typing import (
    TYPE_CHECKING as TYPE_CHECKING,
)
from typing import (
    Any as Any,
)

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "SAN": "san.build",
    "build_model": "san.build",
    "build_san": "san.build",
    "CheckpointError": "san.checkpoint",
    "load_checkpoint": "san.checkpoint",
    "save_checkpoint": "san.checkpoint",
    "CfgNode": "san.config",
    "add_san_config": "san.config",
    "get_cfg": "san.config",
    "get_config_file": "san.config",
    "finetune": "san.engine.finetune",
    "adapt": "san.engine.adapt_run",
    "Adapter": "san.inference.adapter",
    "RegionIndex": "san.inference.index",
    "export_onnx": "san.inference.onnx",
    "Prediction": "san.inference.result",
    "SANPredictor": "san.inference.predictor",
}

__all__ = sorted(_API)

if TYPE_CHECKING:
    from san.build import SAN as SAN
    from san.build import (
        build_model as build_model,
    )
    from san.build import (
        build_san as build_san,
    )
    from san.checkpoint import (
        CheckpointError as CheckpointError,
    )
    from san.checkpoint import (
        load_checkpoint as load_checkpoint,
    )
    from san.checkpoint import (
        save_checkpoint as save_checkpoint,
    )
    from san.config import (
        CfgNode as CfgNode,
    )
    from san.config import (
        add_san_config as add_san_config,
    )
    from san.config import (
        get_cfg as get_cfg,
    )
    from san.config import (
        get_config_file as get_config_file,
    )
    from san.engine.adapt_run import (
        adapt as adapt,
    )
    from san.engine.finetune import (
        finetune as finetune,
    )
    from san.inference.adapter import (
        Adapter as Adapter,
    )
    from san.inference.index import (
        RegionIndex as RegionIndex,
    )
    from san.inference.onnx import (
        export_onnx as export_onnx,
    )
    from san.inference.predictor import (
        SANPredictor as SANPredictor,
    )
    from san.inference.result import (
        Prediction as Prediction,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'san' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
