"""san: Side Adapter Network for open-vocabulary semantic segmentation, in plain PyTorch."""

from .build import build_model, build_san
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CfgNode, add_san_config, get_cfg
from .modeling import SAN
from .predictor import Prediction, SANPredictor

__version__ = "0.1.0"

__all__ = [
    "SAN",
    "Prediction",
    "SANPredictor",
    "CfgNode",
    "add_san_config",
    "build_model",
    "build_san",
    "get_cfg",
    "load_checkpoint",
    "save_checkpoint",
]
