"""SAN inside detectron2: registered meta-architecture, config keys, checkpoints, datasets, mapper."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (python scripts/install_detectron2.py installs it)"
)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Instances  # noqa: E402

import san  # noqa: E402
import san.integrations.detectron2 as sd2  # noqa: E402

from ..conftest import tiny_cfg  # noqa: E402
from ..reference import assert_sem_seg_matches_golden, golden_sem_seg_bound  # noqa: E402
from .helpers import flat, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix

VOCAB = ["cat", "dog", "grass", "sky"]


def d2_cfg(tmp_path, *extra):
    cfg = sd2.get_san_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.merge_from_list([*tiny_overrides(tmp_path), "MODEL.DEVICE", "cpu", *extra])
    return cfg


def test_add_san_config_adds_the_official_keys_without_touching_detectron2s():
    d2 = flat(d2_get_cfg())
    ours = flat(sd2.get_san_cfg())
    assert all(ours[k] == v for k, v in d2.items()), "a detectron2 default was changed"
    standalone = flat(san.get_cfg())
    assert set(standalone) <= set(ours)
    assert {k: ours[k] for k in standalone} == standalone  # same keys and defaults as san.get_cfg()
    again = sd2.get_san_cfg()
    sd2.add_san_config(again)  # idempotent
    assert flat(again) == ours


def test_registered_model_is_the_core_model_with_identical_outputs(tmp_path):
    assert META_ARCH_REGISTRY.get("SAN") is sd2.SAN and issubclass(sd2.SAN, san.SAN)
    cfg = d2_cfg(tmp_path)
    assert cfg.MODEL.META_ARCHITECTURE == "SAN"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    core = san.build_model(tiny_cfg(tmp_path)).eval()
    assert type(model) is sd2.SAN
    sd, ref = model.state_dict(), core.state_dict()
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in core.named_parameters() if p.requires_grad]

    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 50, 70), generator=g, dtype=torch.uint8),
        torch.rand(3, 64, 40, generator=g) * 255,
    ]
    inputs = [{"image": im, "height": 2 * im.shape[1], "width": 2 * im.shape[2], "vocabulary": VOCAB} for im in images]
    with torch.no_grad():
        a, b = model(inputs), core(inputs)
    for x, y in zip(a, b):
        assert torch.equal(x["sem_seg"], y["sem_seg"])

    # no vocabulary: the class names come from the dataset's metadata, as in the official model
    name = "san_test_vocab_dataset"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(stuff_classes=VOCAB)
    by_meta = [{k: v for k, v in x.items() if k != "vocabulary"} | {"meta": {"dataset_name": name}} for x in inputs]
    with torch.no_grad():
        c = model(by_meta)
    for x, y in zip(c, b):
        assert torch.equal(x["sem_seg"], y["sem_seg"])
    with pytest.raises(ValueError, match="neither 'vocabulary'"):
        model([{"image": images[0]}])
    with pytest.raises(ValueError, match="no 'stuff_classes'"):
        model([{"image": images[0], "meta": {"dataset_name": "san_test_dataset_without_classes"}}])


def test_instances_targets_train_like_dict_targets(tmp_path):
    cfg = d2_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 2])
    masks = torch.rand(2, 64, 64, generator=g) > 0.5
    inst = Instances((64, 64))
    inst.gt_classes, inst.gt_masks = labels, masks
    outs = []
    for target in (inst, {"labels": labels, "masks": masks}):
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(model([{"image": image, "vocabulary": [*VOCAB, "tree"], "instances": target}]))
    a, b = outs  # weighted loss dicts
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]) for k in a)


def test_detection_checkpointer_loads_the_official_golden_state_dict(golden, tmp_path):
    clip_json = tmp_path / "san-tiny-clip.json"
    clip_json.write_text(json.dumps(golden["open_clip_model_config"]))
    overrides = list(golden["san_config_overrides"])
    overrides[overrides.index("MODEL.SAN.CLIP_MODEL_NAME") + 1] = str(clip_json)
    cfg = sd2.get_san_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.merge_from_list([*overrides, "MODEL.SAN.CLIP_PRETRAINED_NAME", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    path = tmp_path / "official.pth"
    torch.save({"model": golden["state_dict"], "iteration": 59999}, path)  # the official layout
    extra = DetectionCheckpointer(model).load(str(path))
    assert extra == {"iteration": 59999}
    sd = model.state_dict()
    official = golden["state_dict"]
    core_keys = {k for k in official if not k.startswith("criterion.")} | {k for k in sd if k.startswith("criterion.")}
    assert set(sd) == core_keys and all(torch.equal(sd[k], official[k]) for k in sd)
    inputs = [
        {"image": im, "height": 2 * im.shape[1], "width": 2 * im.shape[2], "vocabulary": golden["vocabulary"]}
        for im in golden["images"]
    ]
    with torch.no_grad():
        out = model(inputs)
        images, _ = model.preprocess(inputs)
        stages = model.forward_stages(images, model.encode_vocabulary(golden["vocabulary"]))
    for i, o in enumerate(out):  # v1 saturates: the bound is derived from the computation (see test_golden)
        bound = golden_sem_seg_bound(golden, i, stages["class_logits"][-1][i], stages["mask_logits"][-1][i])
        decided = assert_sem_seg_matches_golden(golden, i, o["sem_seg"], bound)
        assert decided.float().mean() > 0.99
        assert torch.equal(o["sem_seg"].argmax(0)[decided], golden["outputs"]["sem_seg"][i].argmax(0)[decided])


def test_mapper_follows_the_official_semantic_mapper(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 3, 7, 65535], dtype=np.uint16), size=(48, 40))
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(label).save(tmp_path / "a.png")  # 16-bit PNG
    name = "san_test_mapper_dataset"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(stuff_classes=[str(i) for i in range(8)], ignore_label=65535)
    cfg = d2_cfg(
        tmp_path,
        "DATASETS.TRAIN",
        (name,),
        "INPUT.MIN_SIZE_TRAIN",
        (48,),
        "INPUT.MAX_SIZE_TRAIN",
        1000,
        "INPUT.CROP.SIZE",
        (32, 32),
        "INPUT.COLOR_AUG_SSD",
        False,
        "INPUT.SIZE_DIVISIBILITY",
        64,
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
        65535,
    )
    mapper = sd2.MaskFormerSemanticDatasetMapper(cfg, True)
    out = mapper(
        {
            "file_name": str(tmp_path / "a.jpg"),
            "sem_seg_file_name": str(tmp_path / "a.png"),
            "meta": {"dataset_name": name},
        }
    )
    assert out["meta"] == {"dataset_name": name} and (out["height"], out["width"]) == (48, 40)
    img, seg, inst = out["image"], out["sem_seg"], out["instances"]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64) and seg.shape == (64, 64)
    assert (img[:, 32:] == 128).all() and (img[:, :, 32:] == 128).all()  # pad value of the raw image
    assert (seg[32:] == 65535).all() and (seg[:, 32:] == 65535).all()  # pad value of the label
    crop = seg[:32, :32]
    assert set(crop.unique().tolist()) <= {0, 3, 7, 65535}
    present = sorted(set(crop.unique().tolist()) - {65535})
    assert inst.gt_classes.tolist() == present and inst.gt_classes.dtype == torch.int64
    assert torch.equal(inst.gt_masks, torch.stack([seg == c for c in present]))
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        sd2.MaskFormerSemanticDatasetMapper(d2_cfg(tmp_path, "DATASETS.TRAIN", (name,), "INPUT.FORMAT", "BGR"), True)


def test_optimizer_groups_clipping_and_poly_schedule(tmp_path):
    cfg = d2_cfg(tmp_path, "SOLVER.MAX_ITER", 10)
    model = build_model(cfg)
    opt = sd2.build_optimizer(cfg, model)
    groups = {g["param_name"]: g for g in opt.param_groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable and all(len(g["params"]) == 1 for g in groups.values())
    assert all(g["lr"] == cfg.SOLVER.BASE_LR for g in groups.values())  # both multipliers are 1.0
    wd = {n: g["weight_decay"] for n, g in groups.items()}
    assert wd["side_adapter_network.query_embed"] == wd["clip_visual_extractor.positional_embedding"] == 0.0
    assert wd["side_adapter_network.vit_model.blocks.0.norm1.weight"] == 0.0  # nn.LayerNorm
    assert wd["side_adapter_network.vit_model.blocks.0.attn.qkv.weight"] == cfg.SOLVER.WEIGHT_DECAY
    # full-model clipping: the global gradient norm is clipped to CLIP_VALUE inside step()
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    seen = {}
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen["total"] = orig(params, max_norm, *a, **k)
        seen["after"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        return seen["total"]

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        opt.step()
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert seen["total"].item() == pytest.approx(n**0.5, rel=1e-4)
    assert seen["after"].item() == pytest.approx(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE, rel=1e-4)
    opt.zero_grad(set_to_none=True)
    sched = sd2.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [cfg.SOLVER.BASE_LR * (1 - i / 10) ** 0.9 for i in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_color_aug_ssd_hsv_conversions_without_opencv():
    from san.integrations.detectron2.color_aug import ColorAugSSD, bgr_to_hsv, hsv_to_bgr

    # BGR -> OpenCV's 8-bit HSV (H in 0..179): blue, green, red, yellow, grey, black
    bgr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 255], [128, 128, 128], [0, 0, 0]]], np.uint8)
    hsv = np.array([[[120, 255, 255], [60, 255, 255], [0, 255, 255], [30, 255, 255], [0, 0, 128], [0, 0, 0]]], np.uint8)
    assert np.array_equal(bgr_to_hsv(bgr), hsv) and np.array_equal(hsv_to_bgr(hsv), bgr)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    aug = ColorAugSSD("RGB")
    assert np.array_equal(aug.apply_segmentation(image[..., 0]), image[..., 0])
    with pytest.raises(ValueError, match="RGB or BGR"):
        ColorAugSSD("YUV")


def _hsv_to_bgr_float64(hsv: np.ndarray) -> np.ndarray:
    """The textbook HSV -> BGR (H in 0..179 as OpenCV's 8-bit HSV) in float64, scaled to 0..255."""
    h = hsv[..., 0].astype(np.float64) / 30.0
    s, v = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    sector = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = np.select(
        [sector[..., None] == k for k in range(6)],
        [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))],
    )
    return rgb[..., ::-1] * 255.0


def _opencv_lanes(cv2) -> int | None:
    """The SIMD block width of this machine's OpenCV HSV -> BGR: the one that makes san's formula equal
    OpenCV on rows of many widths (AVX2: 32, AVX-512: 64), or None."""
    from san.data.transforms import hsv_to_bgr

    rng = np.random.default_rng(1)
    rows = []
    for width in (7, 33, 65, 100, 129, 200, 500):
        hsv = rng.integers(0, 256, (16, width, 3), dtype=np.uint8)
        hsv[..., 0] %= 180
        rows.append((hsv, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)))
    fits = [n for n in (8, 16, 32, 64, 128) if all(np.array_equal(hsv_to_bgr(x, n), ref) for x, ref in rows)]
    return fits[0] if len(fits) == 1 else None


def test_color_aug_ssd_matches_detectron2s_opencv_transform(monkeypatch):
    """What is bit-exact with OpenCV on every CPU, and what is per CPU.

    - BGR -> HSV is integer fixed-point arithmetic: bit-exact everywhere.
    - HSV -> BGR: OpenCV truncates in SIMD blocks and rounds the row tail, and the block width is the
      CPU's (32 pixels with AVX2, 64 with AVX-512), so OpenCV's own pixels differ between CPUs by 1. san
      computes the AVX2 layout on every machine. Portable checks: OpenCV (SIMD or not) and san are within
      1 of the float64 conversion everywhere; with this machine's block width, san equals OpenCV bit for
      bit, and so does the whole jitter against detectron2's OpenCV transform.
    """
    pytest.importorskip("cv2", reason="OpenCV is not installed (needed only for this parity check)")
    import functools
    import random

    import cv2
    from detectron2.projects.point_rend import ColorAugSSDTransform

    import san.data.transforms as transforms
    from san.integrations.detectron2.color_aug import ColorAugSSD, bgr_to_hsv, hsv_to_bgr

    rng = np.random.default_rng(0)
    lanes = _opencv_lanes(cv2)
    assert lanes is not None, f"OpenCV {cv2.__version__}'s HSV -> BGR follows no known SIMD block layout here"
    monkeypatch.setattr(transforms, "hsv_to_bgr", functools.partial(transforms.hsv_to_bgr, lanes=lanes))
    # 512 wide: whole SIMD blocks only; 500 wide: every row ends in OpenCV's scalar tail
    for width in (512, 500):
        colours = rng.integers(0, 256, (256, width, 3), dtype=np.uint8)
        assert np.array_equal(bgr_to_hsv(colours), cv2.cvtColor(colours, cv2.COLOR_BGR2HSV))
        hsv = colours.copy()
        hsv[..., 0] %= 180
        exact = _hsv_to_bgr_float64(hsv)
        assert np.abs(hsv_to_bgr(hsv).astype(np.float64) - exact).max() <= 1 + 1e-9
        assert np.array_equal(hsv_to_bgr(hsv, lanes), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)), (width, lanes)
        try:
            for optimized in (True, False):  # OpenCV's SIMD and plain paths alike
                cv2.setUseOptimized(optimized)
                theirs = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float64)
                assert np.abs(theirs - exact).max() <= 1 + 1e-9, optimized
                assert np.array_equal(bgr_to_hsv(colours), cv2.cvtColor(colours, cv2.COLOR_BGR2HSV)), optimized
        finally:
            cv2.setUseOptimized(True)
        for seed in range(8):
            for fmt in ("RGB", "BGR"):
                random.seed(seed)
                ours = ColorAugSSD(fmt).apply_image(colours)
                random.seed(seed)
                assert np.array_equal(ours, ColorAugSSDTransform(fmt).apply_image(colours)), (width, seed, fmt)


def test_tta_averages_the_flipped_views(tmp_path):
    cfg = d2_cfg(tmp_path, "TEST.AUG.MIN_SIZES", (48,), "TEST.AUG.MAX_SIZE", 1000, "TEST.AUG.FLIP", True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 48, 64), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    x = {"image": image, "height": 96, "width": 128, "vocabulary": VOCAB}
    with torch.no_grad():
        out = sd2.SemanticSegmentorWithTTA(cfg, model)([x])[0]["sem_seg"]
        plain = model([x])[0]["sem_seg"]
        flipped = model([{**x, "image": image.flip(2)}])[0]["sem_seg"].flip(2)
    torch.testing.assert_close(out, (plain + flipped) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the two views differ, so the average is tested


def test_register_all_datasets_fills_both_catalogs_idempotently(tmp_path):
    from detectron2.data import DatasetCatalog

    from san.data.catalog import dataset_root, get_dataset, list_datasets

    from .helpers import write_coco_stuff

    root = tmp_path / "datasets"
    write_coco_stuff(root, "val2017", 3, seed=3)
    name = "coco_2017_test_stuff_sem_seg"
    try:
        names = sd2.register_all_datasets(root)
        assert sorted(names) == sorted(list_datasets()) and set(names) <= set(DatasetCatalog.list())
        assert sd2.register_all_datasets(root) == names  # idempotent
        for n in names:
            spec, meta = get_dataset(n), MetadataCatalog.get(n)
            assert meta.stuff_classes == list(spec.classes) and meta.ignore_label == spec.ignore_label
            assert meta.evaluator_type == "sem_seg"
            assert meta.image_root == spec.resolve(root).image_dir and os.path.isabs(meta.image_root)
            assert meta.sem_seg_root == spec.resolve(root).gt_dir
            if spec.dataset_ids is not None:
                assert meta.stuff_dataset_id_to_contiguous_id == {d: i for i, d in enumerate(spec.dataset_ids)}
            else:
                assert not hasattr(meta, "stuff_dataset_id_to_contiguous_id")
        coco = MetadataCatalog.get(name)
        assert len(coco.stuff_classes) == 171 and coco.ignore_label == 255
        assert coco.image_root == str(root / "coco" / "val2017")
        assert coco.sem_seg_root == str(root / "coco" / "stuffthingmaps_detectron2" / "val2017")
        assert sorted(coco.stuff_dataset_id_to_contiguous_id.values()) == list(range(171))
        assert MetadataCatalog.get("ade20k_full_sem_seg_val").ignore_label == 65535
        dicts = DatasetCatalog.get(name)
        files = sorted((root / "coco" / "val2017").glob("*.jpg"))
        assert [d["file_name"] for d in dicts] == [str(f) for f in files]
        assert all(
            d["sem_seg_file_name"] == str(root / "coco" / "stuffthingmaps_detectron2" / "val2017" / f"{f.stem}.png")
            for d, f in zip(dicts, files)
        )
        elsewhere = tmp_path / "elsewhere"
        sd2.register_all_datasets(elsewhere)  # another root replaces the registration
        assert MetadataCatalog.get(name).image_root == str(elsewhere / "coco" / "val2017")
    finally:
        sd2.register_all_datasets(dataset_root())


def test_clip_weights_are_fetched_only_without_model_weights(tmp_path, monkeypatch):
    """The model is built once; with MODEL.WEIGHTS (a full SAN checkpoint, loaded next by the
    checkpointer) CLIP is not downloaded, and the tag still decides the activation."""
    from san.checkpoint import ClipWeightsUnavailable
    from san.modeling.clip import QuickGELU

    builds = []

    def offline(name, pretrained):
        raise ClipWeightsUnavailable(f"could not load open_clip weights {name}/{pretrained} (offline)")

    monkeypatch.setattr(san.build, "read_clip_weights", offline)
    real_build_san = san.build.build_san
    monkeypatch.setattr(san.build, "build_san", lambda **kw: builds.append(1) or real_build_san(**kw))
    with pytest.raises(ClipWeightsUnavailable, match="offline"):
        build_model(d2_cfg(tmp_path, "MODEL.SAN.CLIP_PRETRAINED_NAME", "openai"))
    builds.clear()
    cfg = d2_cfg(tmp_path, "MODEL.SAN.CLIP_PRETRAINED_NAME", "openai", "MODEL.WEIGHTS", "san_vit_b_16.pth")
    model = build_model(cfg)
    assert builds == [1]  # one build, no retry
    # the tag still decides the activation: OpenAI's CLIP runs QuickGELU, as the checkpoint expects
    assert isinstance(model.clip_rec_head.resblocks[0].mlp.gelu, QuickGELU)
