"""Configs: official keys and defaults, _BASE_ chains, safe YAML, clear errors."""

from __future__ import annotations

import pytest

import san
from san.config import ConfigError, get_config_file

from ..integrations.helpers import flat

OFFICIAL_BASE = """\
DATASETS:
  TRAIN: ("coco_2017_train_stuff_sem_seg",)
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 16)]"]
  MIN_SIZE_TEST: 640
"""


def test_official_san_defaults():
    cfg = san.get_cfg()
    s, a = cfg.MODEL.SAN, cfg.MODEL.SIDE_ADAPTER
    assert (s.NO_OBJECT_WEIGHT, s.CLASS_WEIGHT, s.DICE_WEIGHT, s.MASK_WEIGHT) == (0.1, 2.0, 5.0, 5.0)
    assert (s.TRAIN_NUM_POINTS, s.NUM_CLASSES, s.OVERSAMPLE_RATIO, s.IMPORTANCE_SAMPLE_RATIO) == (12544, 171, 3.0, 0.75)
    assert (s.CLIP_MODEL_NAME, s.CLIP_PRETRAINED_NAME, s.CLIP_TEMPLATE_SET) == ("ViT-B/16", "openai", "vild")
    assert (s.FEATURE_LAST_LAYER_IDX, s.CLIP_FROZEN_EXCLUDE, s.CLIP_DEEPER_FROZEN_EXCLUDE) == (
        9,
        ["positional_embedding"],
        [],
    )
    assert (s.REC_CROSS_ATTN, s.REC_DOWNSAMPLE_METHOD, s.SOS_TOKEN_FORMAT) == (False, "max", "cls_token")
    assert (s.SIZE_DIVISIBILITY, s.ASYMETRIC_INPUT, s.CLIP_RESOLUTION) == (32, True, 0.5)
    assert s.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE is True
    assert (a.NAME, a.VIT_NAME, a.PRETRAINED, a.IMAGE_SIZE, a.DROP_PATH_RATE) == (
        "RegionwiseSideAdapterNetwork",
        "vit_w240n6d8_patch16",
        False,
        640,
        0.0,
    )
    assert (a.NUM_QUERIES, a.FUSION_TYPE, a.FUSION_MAP, a.DEEP_SUPERVISION_IDXS) == (
        100,
        "add",
        ["0->0", "3->1", "6->2", "9->3"],
        [7, 8],
    )
    b = a.ATTN_BIAS
    assert (b.NUM_HEADS, b.NUM_LAYERS, b.EMBED_CHANNELS, b.MLP_CHANNELS, b.MLP_NUM_LAYERS, b.RESCALE_ATTN_BIAS) == (
        12,
        1,
        256,
        256,
        3,
        True,
    )
    assert cfg.SOLVER.WEIGHT_DECAY_EMBED_GROUP == [
        "absolute_pos_embed",
        "positional_embedding",
        "pos_embed",
        "query_embed",
        "relative_position_bias_table",
    ]
    assert (cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING, cfg.INPUT.SIZE_DIVISIBILITY) == (0.9, 0.0, -1)


def test_bundled_configs_equal_official_values():
    cfg = san.get_cfg()
    cfg.merge_from_file(get_config_file("san_clip_vit_res4_coco"))
    assert cfg.MODEL.META_ARCHITECTURE == "SAN"
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0  # the B/16 file overrides the base's 0.1
    assert cfg.INPUT.MIN_SIZE_TRAIN == tuple(int(x * 0.1 * 640) for x in range(5, 16))
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.LR_SCHEDULER_NAME) == (
        32,
        0.0001,
        60000,
        "WarmupPolyLR",
    )
    assert (
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED,
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE,
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
    ) == (
        True,
        "full_model",
        0.01,
    )
    assert list(cfg.INPUT.CROP.SIZE) == [640, 640] and cfg.INPUT.SIZE_DIVISIBILITY == 640 and cfg.INPUT.COLOR_AUG_SSD
    assert len(cfg.DATASETS.TEST) == 6 and cfg.WANDB.PROJECT == "oseg_1111"
    large = san.get_cfg()
    large.merge_from_file(get_config_file("san_clip_vit_large_res4_coco.yaml"))
    assert (
        large.MODEL.SAN.CLIP_MODEL_NAME,
        large.MODEL.SAN.CLIP_RESOLUTION,
        large.MODEL.SAN.FEATURE_LAST_LAYER_IDX,
    ) == (
        "ViT-L-14-336",
        0.7,
        18,
    )
    assert large.MODEL.SIDE_ADAPTER.FUSION_MAP == ["0->0", "6->1", "12->2", "18->3"]
    assert large.MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS == 16 and large.SOLVER.BACKBONE_MULTIPLIER == 1.0


def test_official_base_file_with_eval_tag_loads_without_running_code(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(OFFICIAL_BASE)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nINPUT:\n  MIN_SIZE_TEST: 512\n")
    cfg = san.get_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.INPUT.MIN_SIZE_TRAIN == tuple(range(320, 961, 64))
    assert cfg.INPUT.MIN_SIZE_TEST == 512
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_stuff_sem_seg",)


@pytest.mark.parametrize(
    "payload",
    [
        'X: !!python/object/apply:os.system ["echo hacked"]',
        "X: !!python/object/apply:eval [\"__import__('os').system('echo hacked')\"]",
        "X: !!python/object/apply:eval [\"open('/etc/passwd').read()\"]",
    ],
)
def test_unsafe_yaml_is_refused(tmp_path, payload):
    path = tmp_path / "evil.yaml"
    path.write_text(payload + "\n")
    with pytest.raises(ConfigError):
        san.get_cfg().merge_from_file(str(path))


def _eval_tag(tmp_path, expr: str):
    """``X`` of a YAML file whose value is ``expr`` under the official eval tag (the restricted interpreter)."""
    from san.config.safe_yaml import load_yaml

    path = tmp_path / "expr.yaml"
    path.write_text(f'X: !!python/object/apply:eval ["{expr}"]\n')
    return load_yaml(str(path))["X"]


def test_the_restricted_interpreter_at_its_limits(tmp_path):
    """Numbers up to MAX_DIGITS digits either sign, and one past refused, however they are reached;
    booleans are not numbers; comprehensions with filters are refused, not silently unfiltered."""
    from san.config.safe_yaml import MAX_DIGITS, MAX_ITEMS

    top = 10**MAX_DIGITS - 1  # the largest number of MAX_DIGITS digits
    assert _eval_tag(tmp_path, f"[{top}, -{top}, 0 - {top}, {top} - 1]") == [top, -top, -top, top - 1]
    for expr in (f"[{top + 1}]", f"[-{top + 1}]", f"[0 - {top} - 1]", f"[{top} + 1]", f"[-{top} * 10]"):
        with pytest.raises(ConfigError, match=f"more than {MAX_DIGITS} digits"):
            _eval_tag(tmp_path, expr)
    for expr in ("[True + 1]", "[1 - False]", "[2 * True]", "[-True]", "list(range(True))"):
        with pytest.raises(ConfigError, match="numbers only, got bool"):
            _eval_tag(tmp_path, expr)
    for expr in ("[x for x in range(5) if x > 2]", "[x for x in range(9) if x if x]"):
        with pytest.raises(ConfigError, match="unsupported comprehension"):
            _eval_tag(tmp_path, expr)
    assert _eval_tag(tmp_path, "[x * 2 for x in range(3)]") == [0, 2, 4]  # the supported form still works
    assert len(_eval_tag(tmp_path, f"list(range({MAX_ITEMS}))")) == MAX_ITEMS
    with pytest.raises(ConfigError, match=f"at most {MAX_ITEMS}"):
        _eval_tag(tmp_path, f"list(range({MAX_ITEMS + 1}))")


def test_unknown_keys_fail_with_a_suggestion(tmp_path):
    cfg = san.get_cfg()
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.SAN.CLIP_RESOLUTON'.*MODEL.SAN.CLIP_RESOLUTION"):
        cfg.merge_from_list(["MODEL.SAN.CLIP_RESOLUTON", 0.5])
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  SIDE_ADAPTER:\n    NUM_QUERY: 10\n")
    with pytest.raises(ConfigError, match="NUM_QUERIES"):
        cfg.merge_from_file(str(path))
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        cfg.merge_from_list(["MODEL.SAN.NUM_CLASSES"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cfg.merge_from_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="bundled config"):
        get_config_file("no_such_config")


def test_overrides_and_broken_files(tmp_path):
    cfg = san.get_cfg()
    cfg.merge_from_list(["MODEL.SAN.NUM_CLASSES", 150, "MODEL.SIDE_ADAPTER.FUSION_MAP", "['0->0']"])
    assert cfg.MODEL.SAN.NUM_CLASSES == 150 and cfg.MODEL.SIDE_ADAPTER.FUSION_MAP == ["0->0"]
    with pytest.raises(ConfigError, match="Type mismatch.*NUM_CLASSES"):
        cfg.merge_from_list(["MODEL.SAN.NUM_CLASSES", "many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        cfg.merge_from_file(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        cfg.merge_from_file(str(scalar))


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _flat(node) -> dict:
    """{"A.B": value} for every leaf, tuples as lists (detectron2 and YAML spell lists differently)."""
    return {k: _plain(v) for k, v in flat(node).items()}


# detectron2 0.6: get_cfg()'s MODEL.SEM_SEG_HEAD, and what projects/deeplab's add_deeplab_config adds
D2_SEM_SEG_HEAD = {
    "NAME": "SemSegFPNHead",
    "IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "IGNORE_VALUE": 255,
    "NUM_CLASSES": 54,
    "CONVS_DIM": 128,
    "COMMON_STRIDE": 4,
    "NORM": "GN",
    "LOSS_WEIGHT": 1.0,
}
DEEPLAB = {
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "SOLVER.POLY_LR_POWER": 0.9,
    "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": "hard_pixel_mining",
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": ["res2"],
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS": [48],
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS": 256,
    "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS": [6, 12, 18],
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT": 0.1,
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV": False,
    "MODEL.RESNETS.RES4_DILATION": 1,
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
    "MODEL.RESNETS.STEM_TYPE": "deeplab",
}


def test_sem_seg_head_and_deeplab_keys_have_detectron2_defaults():
    ours = _flat(san.get_cfg())
    for k, v in D2_SEM_SEG_HEAD.items():
        assert ours[f"MODEL.SEM_SEG_HEAD.{k}"] == v, k
    for k, v in DEEPLAB.items():
        assert ours[k] == v, k


@pytest.mark.detectron2
def test_every_shared_key_equals_detectron2s_default():
    d2_config = pytest.importorskip("detectron2.config")
    deeplab = pytest.importorskip("detectron2.projects.deeplab")
    ref = d2_config.get_cfg()
    deeplab.add_deeplab_config(ref)
    ref = _flat(ref)
    ours = _flat(san.get_cfg())
    for prefix in ("MODEL.SEM_SEG_HEAD.", "MODEL.RESNETS."):  # whole subtrees, nothing missing
        missing = [k for k in ref if k.startswith(prefix) and k not in ours]
        assert not missing, missing
    assert set(DEEPLAB) <= set(ref)
    shared = [k for k in ours if k in ref]
    assert len(shared) > 90  # the comparison covers most of the config, not a handful of keys
    for k in shared:
        assert ours[k] == ref[k], f"{k}: san {ours[k]!r} vs detectron2 {ref[k]!r}"


def test_official_deeplab_and_sem_seg_head_overrides_merge(tmp_path):
    cfg = san.get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
            65535,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            847,
            "MODEL.SEM_SEG_HEAD.LOSS_TYPE",
            "cross_entropy",
            "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS",
            "[3, 6, 9]",
            "MODEL.RESNETS.RES5_MULTI_GRID",
            "[1, 1, 1]",
            "MODEL.RESNETS.STEM_TYPE",
            "basic",
            "SOLVER.POLY_LR_POWER",
            1.0,
            "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
            0.75,
        ]
    )
    h = cfg.MODEL.SEM_SEG_HEAD
    assert (h.IGNORE_VALUE, h.NUM_CLASSES, h.LOSS_TYPE, h.ASPP_DILATIONS) == (65535, 847, "cross_entropy", [3, 6, 9])
    assert (cfg.MODEL.RESNETS.RES5_MULTI_GRID, cfg.MODEL.RESNETS.STEM_TYPE) == ([1, 1, 1], "basic")
    assert (cfg.SOLVER.POLY_LR_POWER, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA) == (1.0, 0.75)
    path = tmp_path / "deeplab.yaml"
    path.write_text(
        "MODEL:\n  SEM_SEG_HEAD:\n    NAME: DeepLabV3PlusHead\n    COMMON_STRIDE: 4\n    PROJECT_CHANNELS: [48]\n"
        "    USE_DEPTHWISE_SEPARABLE_CONV: True\n  RESNETS:\n    DEPTH: 101\n    RES4_DILATION: 2\n"
        "SAN_ENGINE:\n  DUMP_PREDICTIONS: True\n"
    )
    cfg.merge_from_file(str(path))
    assert (h.NAME, h.USE_DEPTHWISE_SEPARABLE_CONV, cfg.MODEL.RESNETS.DEPTH) == ("DeepLabV3PlusHead", True, 101)
    assert cfg.MODEL.RESNETS.RES4_DILATION == 2 and cfg.SAN_ENGINE.DUMP_PREDICTIONS is True
    with pytest.raises(ConfigError, match="unknown config key 'MODEL.SEM_SEG_HEAD.ASPP_CHANNEL'"):
        cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.ASPP_CHANNEL", 128])
