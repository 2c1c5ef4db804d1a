"""Configuration: every key of the official SAN release, with its official name and default.

The official release configures itself through detectron2's ``get_cfg()`` plus ``add_san_config``
and ``add_deeplab_config``. :func:`get_cfg` rebuilds that key set on top of fvcore's ``CfgNode`` so
that the official YAML files and command-line overrides work unchanged without detectron2.
:func:`add_san_config` adds only the SAN/DeepLab keys, so the detectron2 integration can call it on
detectron2's own config.

YAML files are read with a safe loader (:mod:`san.config_yaml`): no code from a YAML file ever
runs, and the official base file's one ``!!python/object/apply:eval`` list is computed by a tiny
arithmetic interpreter.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode

from san.config_yaml import ConfigError, load_yaml

__all__ = [
    "CfgNode",
    "ConfigError",
    "get_cfg",
    "get_config_file",
    "add_san_config",
    "add_detectron2_defaults",
    "BASE_KEY",
]

BASE_KEY = "_BASE_"


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
            base = os.path.expanduser(base)
            if not os.path.isabs(base) and not base.startswith(("http://", "https://")):
                base = os.path.join(os.path.dirname(filename), base)
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


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------
def add_detectron2_defaults(cfg: CfgNode) -> None:
    """Add the detectron2 default keys that the SAN recipe reads, with detectron2's defaults."""
    CN = type(cfg)
    cfg.VERSION = 2
    cfg.OUTPUT_DIR = "./output"
    cfg.SEED = -1
    cfg.CUDNN_BENCHMARK = False
    cfg.VIS_PERIOD = 0

    cfg.MODEL = CN()
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.LOAD_PROPOSALS = False
    cfg.MODEL.KEYPOINT_ON = False

    cfg.MODEL.SEM_SEG_HEAD = CN(
        {"NAME": "SemSegFPNHead", "IN_FEATURES": ["p2", "p3", "p4", "p5"], "IGNORE_VALUE": 255, "NUM_CLASSES": 54,
         "CONVS_DIM": 128, "COMMON_STRIDE": 4, "NORM": "GN", "LOSS_WEIGHT": 1.0}
    )  # fmt: skip
    cfg.MODEL.RESNETS = CN(
        {"DEPTH": 50, "OUT_FEATURES": ["res4"], "NUM_GROUPS": 1, "NORM": "FrozenBN", "WIDTH_PER_GROUP": 64,
         "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64,
         "DEFORM_ON_PER_STAGE": [False, False, False, False], "DEFORM_MODULATED": False, "DEFORM_NUM_GROUPS": 1}
    )  # fmt: skip

    cfg.INPUT = CN()
    cfg.INPUT.MIN_SIZE_TRAIN = (800,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.CROP = CN({"ENABLED": False})
    cfg.INPUT.CROP.TYPE = "relative_range"
    cfg.INPUT.CROP.SIZE = [0.9, 0.9]
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.MASK_FORMAT = "polygon"

    cfg.DATASETS = CN()
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = ()
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
    cfg.DATASETS.TEST = ()
    cfg.DATASETS.PROPOSAL_FILES_TEST = ()
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

    cfg.DATALOADER = CN()
    cfg.DATALOADER.NUM_WORKERS = 4
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.0
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

    cfg.SOLVER = CN()
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.MAX_ITER = 40000
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.NESTEROV = False
    cfg.SOLVER.WEIGHT_DECAY = 0.0001
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.GAMMA = 0.1
    cfg.SOLVER.STEPS = (30000,)
    cfg.SOLVER.WARMUP_FACTOR = 1.0 / 1000
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    cfg.SOLVER.BIAS_LR_FACTOR = 1.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = None
    cfg.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    cfg.SOLVER.AMP = CN({"ENABLED": False})

    cfg.TEST = CN()
    cfg.TEST.EXPECTED_RESULTS = []
    cfg.TEST.EVAL_PERIOD = 0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    cfg.TEST.AUG = CN({"ENABLED": False})
    cfg.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    cfg.TEST.AUG.MAX_SIZE = 4000
    cfg.TEST.AUG.FLIP = True
    cfg.TEST.PRECISE_BN = CN({"ENABLED": False})
    cfg.TEST.PRECISE_BN.NUM_ITER = 200


def add_san_config(cfg: CfgNode) -> None:
    """Add the official SAN keys (``add_san_config``), DeepLab's (``add_deeplab_config``) and san's
    ``SAN_ENGINE`` keys to ``cfg`` (a config holding detectron2's defaults)."""
    CN = type(cfg)
    # DeepLab project, every key of detectron2's add_deeplab_config (the official train_net calls it);
    # san reads only the crop constraint and the poly-LR keys, the others are accepted as official YAMLs set them.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    h = cfg.MODEL.SEM_SEG_HEAD
    h.LOSS_TYPE, h.PROJECT_FEATURES, h.PROJECT_CHANNELS = "hard_pixel_mining", ["res2"], [48]
    h.ASPP_CHANNELS, h.ASPP_DILATIONS, h.ASPP_DROPOUT = 256, [6, 12, 18], 0.1
    h.USE_DEPTHWISE_SEPARABLE_CONV = False
    r = cfg.MODEL.RESNETS
    r.RES4_DILATION, r.RES5_MULTI_GRID, r.STEM_TYPE = 1, [1, 2, 4], "deeplab"

    # Data (Mask2Former semantic mapper).
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # pad images and labels in the training mapper

    # Optimizer.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED_GROUP = [
        "absolute_pos_embed",
        "positional_embedding",
        "pos_embed",
        "query_embed",
        "relative_position_bias_table",
    ]
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.CLIP_MULTIPLIER = 1.0
    cfg.SOLVER.TEST_IMS_PER_BATCH = 1
    # san's trainer (not an official key): autocast dtype under SOLVER.AMP.ENABLED, float16 or bfloat16
    cfg.SOLVER.AMP.PRECISION = "float16"

    # SAN.
    cfg.MODEL.SAN = CN()
    cfg.MODEL.SAN.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.SAN.CLASS_WEIGHT = 2.0
    cfg.MODEL.SAN.DICE_WEIGHT = 5.0
    cfg.MODEL.SAN.MASK_WEIGHT = 5.0
    cfg.MODEL.SAN.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.SAN.NUM_CLASSES = 171
    cfg.MODEL.SAN.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.SAN.IMPORTANCE_SAMPLE_RATIO = 0.75
    cfg.MODEL.SAN.CLIP_MODEL_NAME = "ViT-B/16"
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = "openai"
    cfg.MODEL.SAN.CLIP_TEMPLATE_SET = "vild"
    cfg.MODEL.SAN.FEATURE_LAST_LAYER_IDX = 9
    cfg.MODEL.SAN.CLIP_FROZEN_EXCLUDE = ["positional_embedding"]
    cfg.MODEL.SAN.CLIP_DEEPER_FROZEN_EXCLUDE = []
    cfg.MODEL.SAN.REC_CROSS_ATTN = False
    cfg.MODEL.SAN.REC_DOWNSAMPLE_METHOD = "max"
    cfg.MODEL.SAN.SOS_TOKEN_FORMAT = "cls_token"
    cfg.MODEL.SAN.SIZE_DIVISIBILITY = 32
    cfg.MODEL.SAN.ASYMETRIC_INPUT = True
    cfg.MODEL.SAN.CLIP_RESOLUTION = 0.5
    cfg.MODEL.SAN.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE = True

    # Side adapter.
    cfg.MODEL.SIDE_ADAPTER = CN()
    cfg.MODEL.SIDE_ADAPTER.NAME = "RegionwiseSideAdapterNetwork"
    cfg.MODEL.SIDE_ADAPTER.VIT_NAME = "vit_w240n6d8_patch16"
    cfg.MODEL.SIDE_ADAPTER.PRETRAINED = False
    cfg.MODEL.SIDE_ADAPTER.IMAGE_SIZE = 640
    cfg.MODEL.SIDE_ADAPTER.DROP_PATH_RATE = 0.0
    cfg.MODEL.SIDE_ADAPTER.NUM_QUERIES = 100
    cfg.MODEL.SIDE_ADAPTER.FUSION_TYPE = "add"
    cfg.MODEL.SIDE_ADAPTER.FUSION_MAP = ["0->0", "3->1", "6->2", "9->3"]
    cfg.MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS = [7, 8]
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS = CN()
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS = 12
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS = 1
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.EMBED_CHANNELS = 256
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_CHANNELS = 256
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_NUM_LAYERS = 3
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.RESCALE_ATTN_BIAS = True

    # Experiment tracking keys of the official configs (accepted; san never starts a tracker).
    cfg.WANDB = CN()
    cfg.WANDB.PROJECT = "san"
    cfg.WANDB.NAME = None
    cfg.MODEL.FLASH = False

    # san's own engine settings (not official keys; detectron2 hard-codes the first two).
    cfg.SAN_ENGINE = CN()
    cfg.SAN_ENGINE.LOG_PERIOD = 20  # iterations between console lines / metrics.json entries
    cfg.SAN_ENGINE.METRICS_WINDOW = 20  # iterations over which logged losses and times are smoothed (median)
    cfg.SAN_ENGINE.DUMP_PREDICTIONS = False  # evaluation writes inference/<dataset>/sem_seg_predictions.json


def get_cfg() -> CfgNode:
    """A fresh config with detectron2's defaults for the keys SAN uses plus every SAN key."""
    cfg = CfgNode()
    add_detectron2_defaults(cfg)
    add_san_config(cfg)
    return cfg


def get_config_file(name: str) -> str:
    """Path of a config: an existing file, or the name of a bundled one (``san_clip_vit_res4_coco``)."""
    if os.path.isfile(name):
        return name
    from importlib import resources

    fname = name if name.endswith(".yaml") else f"{name}.yaml"
    path = resources.files("san.configs").joinpath(os.path.basename(fname))
    if not path.is_file():
        bundled = sorted(p.name for p in resources.files("san.configs").iterdir() if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"config {name!r} is neither a file nor a bundled config ({', '.join(bundled)})")
    return str(path)
