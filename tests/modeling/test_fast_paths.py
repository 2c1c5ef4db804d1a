"""Every exact fast path equals its straightforward reference path (CPU, tiny and ViT-B/16 shapes).

References live in our own code: ``TextClassifier.encode_reference`` (one pass per template over
all 77 tokens), ``RecognitionHead.forward_dense`` (the official dense (Q+1+L)^2 mask, one pass per
supervision level) and ``SAN.forward``'s full ``[C, H, W]`` score maps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import san
from san.modeling.semantic import (
    resize_mask_logits,
    resize_matrix,
    sem_seg_postprocess,
    semantic_inference,
    semantic_labels,
    semantic_scores,
)
from san.modeling.text_classifier import TextClassifier, shared_prefixes

from ..reference import decided, float32_tolerance

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: fast paths against their references where the two differ through a whole transformer (no closed-
# form term count), the fixed tolerance 1e-5 on unit-norm embeddings is >= 60x the largest difference measured under
# ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1 and 2 (AMD EPYC, 2026-12): text encoding
# 8.9e-8, recognition head 1.5e-7 (its gradients 1.7e-6 against 1e-5 + 1e-4 |g|). Tolerances of single resizes and
# mixtures are derived in place (reference.float32_tolerance).

NAMES = ["cat", "dog", "traffic light", "a very long class name with many many words in it", "sky"]


@pytest.fixture(scope="module")
def vitb() -> san.SAN:
    """ViT-B/16 SAN (official COCO config) with random weights; never downloads."""
    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
    torch.manual_seed(0)
    return san.build_model(cfg).eval()


# -- text encoding ---------------------------------------------------------------------------------
def test_text_fast_equals_reference_tiny(tiny_model):
    clf = tiny_model.ov_classifier
    ref = clf.embed_names(NAMES, fast=False)
    fast = clf.embed_names(NAMES)
    assert ref.shape == fast.shape == (len(NAMES), clf.text_projection.shape[1])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    clf.set_batch_size(3)  # several chunks of different cut lengths give the same result
    clf.clear_cache()
    torch.testing.assert_close(clf.embed_names(NAMES), ref, atol=1e-5, rtol=0)


def test_text_fast_equals_reference_vitb(vitb):
    clf = vitb.ov_classifier
    templates = clf.templates
    clf.set_templates(templates[:3])
    try:
        clf.clear_cache()
        torch.testing.assert_close(clf.embed_names(NAMES[:3]), clf.encode_reference(NAMES[:3]), atol=1e-5, rtol=0)
    finally:
        clf.set_templates(templates)


def test_shared_prefixes_group_prompts_by_their_templates_fixed_words(vitb):
    """Each prompt's prefix is its template's words before the name (tokenized alone, start token included):
    the groups partition the rows, every row of a group begins with the group's p tokens and keeps its
    end-of-text token, and a row with no template prefix keeps its start token alone."""
    clf = vitb.ov_classifier
    names = NAMES + ["person", "chest of drawers", "car", "road", "tree", "wall", "floor", "water", "grass"]
    prompts = [t.format(n) for n in names for t in clf.templates] + ["sky at night"]
    tokens = clf.tokenizer(prompts)
    lengths = tokens.argmax(dim=-1) + 1
    groups = shared_prefixes(tokens, lengths, clf.template_prefixes())
    assert sorted(torch.cat([rows for rows, _ in groups]).tolist()) == list(range(len(prompts)))
    shared = {}
    for rows, p in groups:
        assert 1 <= p <= int(lengths[rows].min()) - 1
        assert (tokens[rows, :p] == tokens[rows[0], :p]).all()
        shared.update({int(r): p for r in rows})
    for j, template in enumerate(clf.templates):
        fixed = int(clf.tokenizer([template.split("{}")[0].strip()]).argmax())  # start token + the words
        assert all(shared[i * len(clf.templates) + j] == fixed for i in range(len(names))), template
    assert shared[len(prompts) - 1] == 1


def test_text_disk_cache_round_trip_and_keys(tiny_model, tmp_path, monkeypatch):
    clf = tiny_model.ov_classifier
    clf.set_cache_dir(tmp_path)
    first = clf.embed_names(NAMES)
    files = list(tmp_path.glob("text-*.safetensors"))
    assert len(files) == 1
    # a fresh classifier with the same weights reads every name from disk, encoding nothing
    other = TextClassifier(width=32, layers=2, heads=2, embed_dim=32, templates=clf.templates, cache_dir=tmp_path)
    other.load_state_dict(clf.state_dict())
    monkeypatch.setattr(other, "encode_prompts", lambda prompts: pytest.fail(f"re-encoded {prompts[:2]}"))
    torch.testing.assert_close(other.embed_names(NAMES[::-1]), first.flip(0), atol=0, rtol=0)
    # other weights or other templates use another file; the old one is untouched
    key = clf.cache_key()
    other.clear_cache()
    other.set_templates(("{} in a photo.",))
    assert other.cache_key() != key
    sd = clf.state_dict()
    sd["text_projection"] = sd["text_projection"] * 2
    clf.load_state_dict(sd)
    assert clf.cache_key() != key and clf.cache_key().split("-")[1] == key.split("-")[1]
    # a corrupt cache file is rebuilt, not fatal
    files[0].write_bytes(b"not a torch file")
    clf.load_state_dict({**sd, "text_projection": sd["text_projection"] / 2})
    torch.testing.assert_close(clf.embed_names(NAMES), first, atol=1e-6, rtol=0)


# -- recognition head ------------------------------------------------------------------------------
def _rec_inputs(model: san.SAN, hw: tuple[int, int], levels: int):
    torch.manual_seed(1)
    head = model.clip_rec_head
    with torch.no_grad():
        feats = model.clip_visual_extractor(torch.randn(2, 3, *hw), keep=[model.rec_layer])
    nh = model.side_adapter_network.mask_decoder.num_heads
    biases = [[torch.randn(2, nh, head.num_sos, hw[0] // 16, hw[1] // 16) * 3] for _ in range(levels)]
    return feats, biases


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("levels", [1, 2])
def test_rec_head_equals_dense_tiny(tiny_model, impl, levels):
    head = tiny_model.clip_rec_head
    feats, biases = _rec_inputs(tiny_model, (64, 96), levels)
    head.set_attention(impl)
    with torch.no_grad():
        fast = head(feats, tiny_model.rec_layer, biases)
        ref = head.forward_dense(feats, tiny_model.rec_layer, biases)
    assert len(fast) == len(ref) == levels
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_rec_head_dense_flag_and_bad_value(tiny_model):
    head = tiny_model.clip_rec_head
    feats, biases = _rec_inputs(tiny_model, (64, 64), 1)
    with torch.no_grad():
        ref = head.forward_dense(feats, tiny_model.rec_layer, biases)
        tiny_model.set_inference_options(sos_attention="dense")
        assert torch.equal(head(feats, tiny_model.rec_layer, biases)[0], ref[0])
        with pytest.raises(ValueError, match="unknown sos_attention 'flash'"):
            tiny_model.set_inference_options(sos_attention="flash")
        assert head.sos_attention == "dense"


def test_rec_head_equals_dense_vitb(vitb):
    head = vitb.clip_rec_head
    feats, biases = _rec_inputs(vitb, (96, 128), 2)
    with torch.no_grad():
        ref = head.forward_dense(feats, vitb.rec_layer, biases)
        for impl in ("manual", "sdpa"):
            head.set_attention(impl)
            for a, b in zip(head(feats, vitb.rec_layer, biases), ref):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    head.set_attention("sdpa")


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_rec_head_gradients_match_dense(tiny_model, impl):
    head = tiny_model.clip_rec_head
    head.set_attention(impl)
    feats, biases = _rec_inputs(tiny_model, (64, 64), 2)
    grads = []
    for fn in (head.forward, head.forward_dense):
        leaves = [[b.clone().requires_grad_(True) for b in lvl] for lvl in biases]
        sum((e * torch.arange(e.shape[-1])).sum() for e in fn(feats, tiny_model.rec_layer, leaves)).backward()
        grads.append([b.grad for lvl in leaves for b in lvl])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# -- semantic inference ----------------------------------------------------------------------------
def test_resize_matrix_matches_interpolate():
    x = torch.randn(3, 7, 9)
    ref = F.interpolate(x[None], size=(13, 5), mode="bilinear", align_corners=False)[0]
    out = resize_matrix(7, 13) @ x @ resize_matrix(9, 5).T
    torch.testing.assert_close(out, ref, atol=float32_tolerance(ref, 8), rtol=0)  # 2 x 2 taps, 2 ways: 8 roundings


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "dense"])
@pytest.mark.parametrize("before", [True, False])
@pytest.mark.parametrize("max_elements", [1 << 24, 5000])
def test_semantic_labels_equal_full_scores(before, max_elements, prune):
    torch.manual_seed(2)
    q, c, grid, padded, image, out = 12, 9, (6, 7), (96, 112), (90, 100), (61, 83)
    cls, masks = torch.randn(q, c + 1) * 3, torch.randn(q, *grid) * 4
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    if before:
        ref = semantic_inference(cls, sem_seg_postprocess(up, image, *out))
    else:
        ref = sem_seg_postprocess(semantic_inference(cls, up), image, *out)
    opts = {"postprocess_before_inference": before, "max_elements": max_elements, "prune": prune}
    labels, scores = semantic_labels(cls, masks, image, padded, out, **opts)
    assert labels.shape == scores.shape == out and labels.dtype == torch.long
    tol = float32_tolerance(ref, q + 16)  # the Q-term mixture and 16 resize taps, in other orders
    torch.testing.assert_close(scores, ref.max(0).values, atol=tol, rtol=0)
    clear = decided(ref, tol)
    assert clear.float().mean() > 0.99 and torch.equal(labels[clear], ref.argmax(0)[clear])
    only, none = semantic_labels(cls, masks, image, padded, out, with_scores=False, **opts)
    assert none is None and torch.equal(only[clear], labels[clear])
    # reduced mode scoring every output pixel is the exact path
    full, _ = semantic_labels(cls, masks, image, padded, out, postprocess_before_inference=before, reduced=100)
    assert torch.equal(full[clear], labels[clear])


def _region_masks(q: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """Mask logits like a trained model's: the grid split into the queries' regions (nearest of q
    random centres), logits +4 inside a region and falling by 3 per grid cell of extra distance."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(grid[0]).float(), torch.arange(grid[1]).float(), indexing="ij")
    cy, cx = torch.rand(q, 1, 1, generator=g) * grid[0], torch.rand(q, 1, 1, generator=g) * grid[1]
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()  # [q, h, w]
    return 4 - 3 * (dist - dist.amin(dim=0))


@pytest.mark.parametrize("before", [True, False])
def test_class_pruning_is_exact_and_skips_tiles_with_one_possible_winner(before, monkeypatch):
    import san.modeling.semantic as semantic

    q, c, grid, padded, image, out = 10, 12, (20, 26), (320, 416), (300, 400), (300, 400)
    masks = _region_masks(q, grid, seed=4)
    cls = torch.full((q, c + 1), -2.0)
    cls[torch.arange(q), torch.arange(q)] = 6.0  # query q votes for class q; classes 10, 11 never win
    cls[:, 11] = cls[:, 3]  # class 11 ties with class 3 everywhere: the lower index must win
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    if before:
        ref = semantic_inference(cls, sem_seg_postprocess(up, image, *out))
    else:
        ref = sem_seg_postprocess(semantic_inference(cls, up), image, *out)
    counts = []
    real = semantic._candidates

    def spy(probs, lo, hi):
        cand = real(probs, lo, hi)
        counts.append(cand.sum(dim=1))
        return cand

    monkeypatch.setattr(semantic, "_candidates", spy)
    labels, _ = semantic_labels(cls, masks, image, padded, out, postprocess_before_inference=before, with_scores=False)
    assert torch.equal(labels, ref.argmax(0)) and labels.unique().numel() >= 6 and not (labels == 11).any()
    per_tile = torch.cat(counts)
    assert (per_tile == 1).float().mean() > 0.4  # most tiles are decided by the bounds alone
    assert (per_tile > 1).any() and per_tile.max() < c  # boundaries are scored, over a few classes only
    labels2, scores = semantic_labels(cls, masks, image, padded, out, postprocess_before_inference=before)
    assert torch.equal(labels2, labels)
    torch.testing.assert_close(scores, ref.max(0).values, atol=float32_tolerance(ref, q + 16), rtol=0)


def test_predict_labels_equals_forward_argmax(tiny_model):
    torch.manual_seed(3)
    inputs = [
        {
            "image": torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8),
            "height": 50,
            "width": 120,
            "vocabulary": NAMES,
        },
        {"image": torch.randint(0, 256, (3, 96, 64), dtype=torch.uint8), "vocabulary": NAMES},
    ]
    with torch.no_grad():
        ref = tiny_model(inputs)
        out = tiny_model.predict_labels(inputs, max_elements=3000)
        only = tiny_model.predict_labels(inputs, with_scores=False)
        reduced = tiny_model.predict_labels(inputs, reduced=2)
    q = tiny_model.side_adapter_network.num_queries
    for r, o, red, lab in zip(ref, out, reduced, only):
        best, arg = r["sem_seg"].max(0)
        tol = float32_tolerance(best, q + 16)  # the Q-term mixture and 16 resize taps, in other orders
        clear = decided(r["sem_seg"], tol)
        assert clear.float().mean() > 0.99 and set(lab) == {"labels"}
        assert torch.equal(o["labels"][clear], arg[clear]) and torch.equal(lab["labels"][clear], arg[clear])
        torch.testing.assert_close(o["scores"], best, atol=tol, rtol=0)
        assert red["labels"].shape == arg.shape and int(red["labels"].max()) < len(NAMES)


def test_semantic_labels_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"class_logits \[Q, C\+1\]"):
        semantic_labels(torch.zeros(3, 4), torch.zeros(2, 5, 5), (5, 5), (5, 5), (5, 5))
    with pytest.raises(ValueError, match="positive integer"):
        semantic_labels(torch.zeros(2, 4), torch.zeros(2, 5, 5), (5, 5), (5, 5), (5, 5), reduced=0)


# (mask grid, padded input, image in it, output): upsampling to a larger output, the official ADE case
# of a 640 x 853 inference image shown at 480 x 640, and a tall grid shown wide (the other product order)
SIZES = [
    ((7, 9), (112, 144), (100, 130), (150, 201)),
    ((40, 54), (640, 864), (640, 853), (480, 640)),
    ((40, 10), (160, 40), (150, 40), (50, 400)),
]


@pytest.mark.parametrize(("grid", "padded", "image", "out"), SIZES)
def test_separable_mask_resize_equals_the_two_interpolations(grid, padded, image, out):
    """SAN.postprocess's one-step resize = the official upsample-to-padded, crop, resize (float rounding)."""
    torch.manual_seed(0)
    masks = torch.randn(5, *grid) * 4
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    want = sem_seg_postprocess(up, image, *out)
    got = resize_mask_logits(masks, image, padded, out)
    assert got.shape == want.shape == (5, *out)
    torch.testing.assert_close(got, want, rtol=0, atol=float32_tolerance(want, 16))  # 2 resizes of 4 taps, both ways


@pytest.mark.parametrize(("grid", "padded", "image", "out"), SIZES)
def test_banded_scores_equal_the_official_postprocessing(grid, padded, image, out):
    """SAN.forward's banded ``[C, H, W]`` = the official upsample, crop, resize, sigmoid and class mixture,
    for one band, bands of three rows and single rows. Tolerance: the resize's (16 roundings of the
    logits' size) through the sigmoid (slope <= 1/4), then the mixture's Q roundings of values <= 1."""
    torch.manual_seed(0)
    masks, cls = torch.randn(5, *grid) * 4, torch.randn(5, 8) * 3
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    logits = sem_seg_postprocess(up, image, *out)
    want = semantic_inference(cls, logits)
    tol = float32_tolerance(logits, 16) / 4 + float32_tolerance(want, 5)
    for max_elements in (None, 5 * out[1] * 3, 1):
        got = semantic_scores(cls, masks, image, padded, out, max_elements=max_elements)
        assert got.shape == want.shape == (7, *out)
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
