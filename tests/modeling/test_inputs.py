"""The batched-input contract and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

import san

from ..conftest import tiny_cfg
from ..reference import float32_tolerance

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

VOCAB = ["cat", "dog", "grass"]


def test_eval_output_contract(tiny_model):
    inputs = [
        {"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8), "vocabulary": VOCAB},
        {"image": torch.rand(3, 64, 40) * 255, "height": 128, "width": 80, "vocabulary": VOCAB},
    ]
    with torch.no_grad():
        out = tiny_model(inputs)
    assert [o["sem_seg"].shape for o in out] == [(3, 50, 70), (3, 128, 80)]
    for o in out:
        s = o["sem_seg"]
        assert s.dtype == torch.float32 and torch.isfinite(s).all() and (s >= 0).all()
        assert (s.sum(0) <= tiny_model.side_adapter_network.num_queries + 1e-4).all()


def test_uint8_and_float_images_agree_and_names_are_stripped(tiny_model):
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    with torch.no_grad():
        a = tiny_model([{"image": img, "vocabulary": VOCAB}])[0]["sem_seg"]
        b = tiny_model([{"image": img.float(), "vocabulary": [" cat", "dog ", " grass "]}])[0]["sem_seg"]
    assert torch.equal(a, b)


def test_result_of_an_image_does_not_depend_on_vocabulary_order(tiny_model):
    img = torch.rand(3, 48, 48) * 255
    with torch.no_grad():
        a = tiny_model([{"image": img, "vocabulary": VOCAB}])[0]["sem_seg"]
        b = tiny_model([{"image": img, "vocabulary": VOCAB[::-1]}])[0]["sem_seg"]
    q = tiny_model.side_adapter_network.num_queries  # the Q-term mixture, the classes in another order
    torch.testing.assert_close(a, b.flip(0), rtol=0, atol=float32_tolerance(a, q))


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.zeros(40, 60), ValueError, r"\[3, H, W\]"),
        (torch.zeros(4, 40, 60), ValueError, "RGBA"),
        (torch.zeros(1, 40, 60), ValueError, "grayscale"),
        (torch.zeros(40, 60, 3), ValueError, "permute"),
        (torch.zeros(3, 40, 60, dtype=torch.int32), TypeError, "uint8 or floating point"),
        (torch.zeros(3, 0, 60), ValueError, "empty"),
        ("image.jpg", TypeError, "torch.Tensor"),
    ],
)
def test_bad_images(tiny_model, image, error, match):
    with pytest.raises(error, match=match):
        tiny_model([{"image": image, "vocabulary": VOCAB}])


@pytest.mark.parametrize(
    ("vocabulary", "error", "match"),
    [
        ([], ValueError, "empty"),
        (["cat", " ", "dog"], ValueError, r"empty class names at positions \[1\]"),
        ("cat, dog", TypeError, "list of class names"),
        (["cat", 3], TypeError, "strings"),
        (None, ValueError, "needs a 'vocabulary'"),
    ],
)
def test_bad_vocabularies(tiny_model, vocabulary, error, match):
    x = {"image": torch.zeros(3, 32, 32)}
    if vocabulary is not None:
        x["vocabulary"] = vocabulary
    with pytest.raises(error, match=match):
        tiny_model([x])


def test_one_vocabulary_per_batch(tiny_model):
    with pytest.raises(ValueError, match="different vocabulary"):
        tiny_model(
            [
                {"image": torch.zeros(3, 32, 32), "vocabulary": ["a"]},
                {"image": torch.zeros(3, 32, 32), "vocabulary": ["b"]},
            ]
        )
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_model([])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("MODEL.SAN.CLIP_MODEL_NAME", "ViT-Q-99", "unknown open_clip model 'ViT-Q-99'"),
        ("MODEL.SAN.CLIP_MODEL_NAME", "/nonexistent/clip.json", "not found"),
        ("MODEL.SIDE_ADAPTER.VIT_NAME", "vit_huge", "vit_w<width>n<heads>d<depth>_patch<size>"),
        ("MODEL.SIDE_ADAPTER.FUSION_MAP", ["0-0"], "clipIdx->sideIdx"),
        (
            "MODEL.SIDE_ADAPTER.FUSION_MAP",
            ["3->1"],
            "beyond feature_last_layer_idx=2 .*MODEL.SAN.FEATURE_LAST_LAYER_IDX",
        ),
        ("MODEL.SAN.FEATURE_LAST_LAYER_IDX", 4, "must lie in 1..3"),
        ("MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS", 3, "heads"),
        ("MODEL.SAN.CLIP_TEMPLATE_SET", "fancy", "unknown prompt set 'fancy'"),
        ("MODEL.SAN.SOS_TOKEN_FORMAT", "zeros", "sos_token_format 'zeros'.*MODEL.SAN.SOS_TOKEN_FORMAT"),
        ("MODEL.SAN.REC_DOWNSAMPLE_METHOD", "median", "downsample_method 'median'.*MODEL.SAN.REC_DOWNSAMPLE_METHOD"),
        ("MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS", 3, "1 .shared. or 2 .one each.*ATTN_BIAS.NUM_LAYERS"),
        ("MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS", [9], r"\[9\] must lie in 1..4.*DEEP_SUPERVISION_IDXS"),
    ],
)
def test_bad_configs(tmp_path, key, value, match):
    cfg = tiny_cfg(tmp_path)
    cfg.merge_from_list([key, value])
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        model = san.build_model(cfg).eval()
        model([{"image": torch.zeros(3, 32, 32), "vocabulary": VOCAB}])


def test_unknown_clip_weights_tag(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.SAN.CLIP_MODEL_NAME = "ViT-B-16"
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = "no_such_tag"
    with pytest.raises(ValueError, match="unknown CLIP weights 'no_such_tag'.*openai"):
        san.build_model(cfg)


def test_train_mode_stages_per_level_and_forward_needs_targets(tiny_model):
    tiny_model.train()
    images, _ = tiny_model.preprocess([{"image": torch.rand(3, 64, 64) * 255}])
    out = tiny_model.forward_stages(images, tiny_model.encode_vocabulary(VOCAB))
    q = tiny_model.side_adapter_network.num_queries
    assert [tuple(c.shape) for c in out["class_logits"]] == [(1, q, len(VOCAB) + 1)] * 2  # aux level, then final
    assert [tuple(m.shape) for m in out["mask_logits"]] == [(1, q, 4, 4)] * 2
    with pytest.raises(ValueError, match="training inputs need 'instances'"):
        tiny_model([{"image": torch.rand(3, 64, 64) * 255, "vocabulary": VOCAB}])
    tiny_model.criterion = None
    with pytest.raises(RuntimeError, match="without a criterion"):
        tiny_model([{"image": torch.rand(3, 64, 64) * 255, "vocabulary": VOCAB, "instances": {}}])


def test_train_mode_levels_equal_eval_mode_level_by_level(tiny_model):
    """Training decodes every deep-supervision level; the last one is exactly what inference decodes, and
    each level equals that level decoded alone (SOS tokens of one level never see the other's).

    Exact in float64 (the same formula, only summation orders differ: within 1e4 x eps64 x magnitude);
    in float32 the two runs may differ by their float32 rounding, measured here against the float64 run
    (each float32 result's distance to float64, summed: the triangle inequality), never a fixed bound.
    """
    import copy

    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    runs = {}
    for dtype, model in ((torch.float64, copy.deepcopy(tiny_model).double()), (torch.float32, tiny_model)):
        images, _ = model.preprocess([{"image": image.to(dtype)}])
        with torch.no_grad():
            classifier = model.encode_vocabulary(VOCAB).to(dtype)
            train = model.train().forward_stages(images, classifier)
            model.eval()
            infer = model.forward_stages(images, classifier)
            each = [model.forward_stages(images, classifier, levels=[i]) for i in (3, 4)]
        runs[dtype] = (train, infer, each)
    for key in ("mask_logits", "class_logits", "mask_embeddings"):
        pairs = []  # (train level, the same level decoded another way)
        for dtype in (torch.float64, torch.float32):
            train, infer, each = runs[dtype]
            assert len(train[key]) == 2 and len(infer[key]) == 1
            pairs.append([(train[key][-1], infer[key][0]), *[(t, e[key][0]) for t, e in zip(train[key], each)]])
        for (a64, b64), (a32, b32) in zip(*pairs):
            assert a64.dtype == torch.float64
            scale = max(1.0, a64.abs().max().item())
            assert (a64 - b64).abs().max().item() <= 1e4 * torch.finfo(torch.float64).eps * scale, key
            noise = (a32.double() - a64).abs().max() + (b32.double() - b64).abs().max()
            assert (a32.double() - b32.double()).abs().max() <= noise + 1e4 * torch.finfo(torch.float64).eps * scale
            assert noise < 1e-3 * scale  # float32 rounding, not a different computation
