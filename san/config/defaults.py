"""Every config key SAN reads, with its official name and default.

:func:`add_detectron2_defaults` adds the detectron2 default keys the SAN recipe reads (with
detectron2's values); :func:`add_san_config` the official SAN keys (``add_san_config``), DeepLab's
(``add_deeplab_config``) and san's own ``SAN_ENGINE`` keys.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_detectron2_defaults", "add_san_config"]


def add_detectron2_defaults(cfg: Any) -> None:
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
        {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
        }
    )
    cfg.MODEL.RESNETS = CN(
        {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            "DEFORM_MODULATED": False,
            "DEFORM_NUM_GROUPS": 1,
        }
    )

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


def add_san_config(cfg: Any) -> None:
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
    # san's trainer (not an official key): micro-batches per process and iteration. The run is then the
    # run of processes x ACCUMULATION_STEPS processes, each with IMS_PER_BATCH / that many images
    cfg.SOLVER.ACCUMULATION_STEPS = 1
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
    cfg.SAN_ENGINE.SAVE_PRETRAINED = False  # the end of training writes OUTPUT_DIR/pretrained (the Hub format)
    # your own data (san train --data): the prepared data folder whose dataset.json the processes
    # register, pictures of the first training batches, and an evaluation of the starting weights
    cfg.SAN_ENGINE.DATA = ""
    cfg.SAN_ENGINE.SAMPLE_BATCHES = 0  # the first N training batches, augmented, drawn with their labels
    cfg.SAN_ENGINE.EVAL_AT_START = False  # evaluate DATASETS.TEST before the first step (inference_start/)
    # the class names the model was trained on, in id order: its vocabulary when none is given
    cfg.SAN_ENGINE.CLASS_NAMES = []
