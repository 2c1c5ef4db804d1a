"""SANPredictor with a tiny random model: input types, batches, distractors, TTA, budgets, caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import san
from san.data.images import ImageError
from san.data.transforms import shortest_edge_size
from san.inference.predictor import SANPredictor
from san.model_zoo import WeightsError

from ..apps.colour_model import colour_classify, colour_encode, dominant_channel, use_colour_model
from ..conftest import tiny_cfg
from ..data.test_images import UPRIGHT
from ..reference import decided, float32_tolerance

pytestmark = pytest.mark.numeric  # rerun in CI under each kernel setting of the float-noise matrix
# Float tolerances: 1e-6 where both sides run the same operations on the same arrays (measured 0 under
# ATEN_CPU_CAPABILITY=default, avx2, avx512 (native) and OMP_NUM_THREADS=1 and 2 (AMD EPYC, 2026-12)); batch against
# single: see that test.

VOC = "cat, grass, sky, wall, sofa"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.array(Image.fromarray(skimage_data.chelsea()).resize((113, 75), Image.BILINEAR))  # [75, 113, 3]


@pytest.fixture
def predictor(tmp_path) -> SANPredictor:
    torch.manual_seed(0)
    return SANPredictor(san.build_model(tiny_cfg(tmp_path)), device="cpu", min_size=64, max_size=128)


def test_every_input_type_gives_the_same_result(predictor: SANPredictor, photo: np.ndarray, tmp_path) -> None:
    path = tmp_path / "cat.png"
    Image.fromarray(photo).save(path)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    inputs = {
        "path": path,
        "str": str(path),
        "pil": Image.fromarray(photo),
        "numpy": photo,
        "tensor_chw": chw,
        "tensor_hwc": torch.from_numpy(photo),
        "tensor_float": chw.float(),
        "numpy_float01": photo.astype(np.float32) / 255,
    }
    ref = predictor.predict(photo, VOC, return_scores=True)
    assert ref.labels.shape == photo.shape[:2] and ref.labels.dtype == np.int32
    assert ref.class_names == ["cat", "grass", "sky", "wall", "sofa"]
    assert ref.scores.shape == (5, *photo.shape[:2]) and ref.scores.std() > 0
    for name, x in inputs.items():
        got = predictor.predict(x, VOC, return_scores=True)
        np.testing.assert_array_equal(got.labels, ref.labels, err_msg=name)
        np.testing.assert_array_equal(got.scores, ref.scores, err_msg=name)
    # the label-only path (no score volume) agrees with the arg-max of the scores, off near ties: it sums the
    # Q-term mixture and the 16 resize taps in other orders
    q = predictor.model.side_adapter_network.num_queries
    clear = decided(torch.from_numpy(ref.scores), float32_tolerance(torch.from_numpy(ref.scores), q + 16)).numpy()
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(predictor.predict(photo, VOC).labels[clear], ref.scores.argmax(0)[clear])


def test_labels_follow_the_official_forward(predictor: SANPredictor, photo: np.ndarray) -> None:
    h, w = shortest_edge_size(*photo.shape[:2], 64, 128)
    resized = np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR))
    x = {"image": torch.from_numpy(resized.copy()).permute(2, 0, 1), "height": 75, "width": 113}
    with torch.no_grad():
        sem = predictor.model([{**x, "vocabulary": VOC.split(", ")}])[0]["sem_seg"]
    np.testing.assert_array_equal(predictor.predict(photo, VOC, return_scores=True).scores, sem.numpy())


def test_batch_equals_single_predictions(predictor: SANPredictor, photo: np.ndarray, monkeypatch) -> None:
    bigger = np.asarray(Image.fromarray(photo).resize((226, 150), Image.BILINEAR))  # same model input size
    images = [photo, photo[:, ::-1], photo[:50, :70], photo[10:60, :90], bigger]
    assert predictor.input_size_key(75, 113) == predictor.input_size_key(150, 226) == ((64, 96),)
    calls = []
    encode = predictor.model.encode_images
    monkeypatch.setattr(predictor.model, "encode_images", lambda x, *a: calls.append(len(x)) or encode(x, *a))
    batch = predictor.predict_batch(images, VOC, return_scores=True, batch_size=3)
    monkeypatch.undo()
    assert sorted(calls) == [1, 1, 3]  # photo, its mirror and the bigger photo in one pass
    for im, got in zip(images, batch):
        one = predictor.predict(im, VOC, return_scores=True)
        assert got.labels.shape == im.shape[:2]
        # a batch of 3 runs every layer at other matrix shapes (other kernels, other summation orders):
        # measured <= 9.5e-7 apart under ATEN_CPU_CAPABILITY=default/avx2/avx512 and 1 or 2 threads (30x below)
        np.testing.assert_allclose(got.scores, one.scores, rtol=1e-5, atol=1e-6)
        tol = 1e-6 + 1e-5 * float(np.abs(one.scores).max())
        clear = decided(torch.from_numpy(one.scores), tol).numpy()
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(got.labels[clear], one.labels[clear])


def test_distractors_collapse_into_other(predictor: SANPredictor, photo: np.ndarray) -> None:
    pred = predictor.predict(photo, "cat, sky", other="coco-stuff", return_scores=True)
    voc = pred.vocabulary
    assert pred.class_names == ["cat", "sky", "other"] and len(voc.distractors) == 91
    full = predictor.predict(photo, voc.names, return_scores=True)  # the same classes, no collapsing
    np.testing.assert_array_equal(pred.labels, np.minimum(full.labels, 2))
    np.testing.assert_array_equal(pred.scores[:2], full.scores[:2])
    np.testing.assert_array_equal(pred.scores[2], full.scores[2:].max(0))


def test_tta_averages_scales_and_flips(predictor: SANPredictor, photo: np.ndarray) -> None:
    predictor.tta, predictor.tta_min_sizes, predictor.tta_max_size = True, (48, 64), 128
    got = predictor.predict(photo, VOC, return_scores=True)
    predictor.tta = False
    parts = []
    for size in (48, 64):
        predictor.min_size = size
        parts.append(predictor.predict(photo, VOC, return_scores=True).scores)
        parts.append(predictor.predict(photo[:, ::-1], VOC, return_scores=True).scores[:, :, ::-1])
    np.testing.assert_allclose(got.scores, np.mean(parts, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.labels, got.scores.argmax(0))


def test_score_budget_and_pixel_limit(predictor: SANPredictor, photo: np.ndarray) -> None:
    exact = predictor.predict(photo, VOC).labels
    predictor.max_score_bytes = 10_000  # far below (Q + C) x H x W floats
    predictor.tta, predictor.tta_min_sizes, predictor.tta_flip = (
        True,
        (64,),
        False,
    )  # forces the score path at low resolution
    low = predictor.predict(photo, VOC)
    assert low.labels.shape == photo.shape[:2]
    assert (low.labels == exact).mean() > 0.9
    with pytest.raises(ValueError, match="max_score_bytes"):
        predictor.predict(photo, VOC, return_scores=True)
    scores = torch.randn(7, 9, 11)
    scores[5] = scores[2]  # an exact tie across chunks: the lower index wins, as in argmax
    up = F.interpolate(scores[None], size=(40, 50), mode="bilinear", align_corners=False)[0]
    labels, best = predictor._upsampled_argmax(scores, 40, 50)
    assert torch.equal(labels, up.argmax(0)) and torch.equal(best, up.amax(0))  # class-chunked == all at once
    assert (labels == 2).any() and not (labels == 5).any()
    predictor.max_pixels = 75 * 113 - 1
    with pytest.raises(ImageError, match="113x75 = 8475 pixels, above the limit of 8474 pixels"):
        predictor.predict(photo, VOC)


def test_half_precision_runs(predictor: SANPredictor, photo: np.ndarray) -> None:
    ref = predictor.predict(photo, VOC, return_scores=True).scores
    predictor.precision = "bf16"
    got = predictor.predict(photo, VOC, return_scores=True).scores
    assert got.dtype == np.float32
    assert not np.array_equal(got, ref)  # autocast really ran in bf16
    # bf16 rounding of cosines is amplified by the logit scale 100, so only a loose agreement holds
    assert np.isfinite(got).all() and np.abs(got - ref).mean() < 0.3 * np.abs(ref).mean()
    with pytest.raises(ValueError, match="precision"):
        SANPredictor(predictor.model, precision="int8")


def test_text_cache_on_disk(tmp_path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = san.build_model(cfg)
    first = SANPredictor(model, device="cpu", min_size=64, text_cache_dir=tmp_path / "text")
    ref = first.predict(photo, VOC, return_scores=True)
    assert list((tmp_path / "text").glob("text-*.safetensors"))
    fresh = san.build_model(cfg)
    fresh.load_state_dict(model.state_dict())
    second = SANPredictor(fresh, device="cpu", min_size=64, text_cache_dir=tmp_path / "text")

    def no_encoding(*a, **k):
        raise AssertionError("names should come from the disk cache")

    monkeypatch.setattr(fresh.ov_classifier, "encode_prompts", no_encoding)
    np.testing.assert_array_equal(second.predict(photo, VOC, return_scores=True).scores, ref.scores)


def test_from_pretrained_config_weights_and_overrides(tmp_path, photo: np.ndarray) -> None:
    cfg = tiny_cfg(tmp_path)
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    model = san.build_model(cfg)
    san.save_checkpoint(model, tmp_path / "tiny.pth")
    loaded = SANPredictor.from_pretrained(
        str(tmp_path / "tiny.yaml"), weights=tmp_path / "tiny.pth", device="cpu", opts=["INPUT.MIN_SIZE_TEST", 64]
    )
    assert (loaded.min_size, loaded.max_size, loaded.tta) == (64, 1333, False)
    direct = SANPredictor(model, device="cpu", min_size=64, max_size=1333)
    np.testing.assert_array_equal(
        loaded.predict(photo, VOC, return_scores=True).scores, direct.predict(photo, VOC, return_scores=True).scores
    )
    assert SANPredictor.from_pretrained(str(tmp_path / "tiny.yaml"), weights="none", tta=True).tta
    with pytest.raises(ValueError, match="needs weights"):
        SANPredictor.from_pretrained(str(tmp_path / "tiny.yaml"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        SANPredictor.from_pretrained(str(tmp_path / "tiny.yaml"), weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="neither an existing file"):
        SANPredictor.from_pretrained(str(tmp_path / "tiny.yaml"), weights="no-such-model")
    with pytest.raises(FileNotFoundError, match="bundled config"):
        SANPredictor.from_pretrained("no_such_config", weights="none")


@pytest.fixture
def colour(predictor: SANPredictor, monkeypatch: pytest.MonkeyPatch) -> SANPredictor:
    use_colour_model(monkeypatch)
    return predictor


def test_colour_model_labels_follow_the_picture(colour: SANPredictor, photo: np.ndarray) -> None:
    pred = colour.predict(photo, VOC, return_scores=True)
    counts = np.bincount(pred.labels.ravel(), minlength=5)
    assert (counts[:3] > 0.05 * pred.labels.size).all() and counts[3:].sum() == 0  # three classes really win
    assert (pred.labels == dominant_channel(photo)).mean() > 0.75
    np.testing.assert_array_equal(colour.predict(photo, VOC).labels, pred.scores.argmax(0))  # label-only path


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_rotated_file_equals_the_photo_rotated_by_hand(
    colour: SANPredictor, photo: np.ndarray, tmp_path, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(photo).save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the pixels as stored, orientation not applied
    upright = np.ascontiguousarray(UPRIGHT[orientation](stored))
    got = colour.predict(path, VOC, return_scores=True)
    want = colour.predict(upright, VOC, return_scores=True)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.labels, want.labels)
    wrong = colour.predict(np.ascontiguousarray(UPRIGHT[orientation](stored)[::-1, ::-1]), VOC).labels
    assert (wrong != want.labels).mean() > 0.1  # a file turned the wrong way would be caught


def test_rgba_grayscale_and_16_bit_files_give_the_hand_made_rgb(
    colour: SANPredictor, photo: np.ndarray, tmp_path
) -> None:
    alpha = np.linspace(0, 255, photo.shape[1]).astype(np.uint8)[None].repeat(photo.shape[0], 0)
    Image.fromarray(np.dstack([photo, alpha])).save(tmp_path / "rgba.png")
    want = colour.predict(photo, VOC, return_scores=True)  # alpha is dropped, as convert("RGB") does
    np.testing.assert_array_equal(colour.predict(tmp_path / "rgba.png", VOC, return_scores=True).scores, want.scores)
    black = colour.predict(np.zeros_like(photo), VOC, return_scores=True)
    assert not np.allclose(black.scores, want.scores)  # a decoder losing the colours would be caught
    gray = (photo.astype(np.uint32) * [299, 587, 114]).sum(2) // 1000  # ITU-R 601 luma, as PIL's "L"
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray((gray * 257).astype(np.uint16)).save(tmp_path / "gray16.png")
    g8 = colour.predict(tmp_path / "gray.png", VOC, return_scores=True)
    g16 = colour.predict(tmp_path / "gray16.png", VOC, return_scores=True)
    hand = np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    assert np.abs(np.asarray(Image.open(tmp_path / "gray.png"), dtype=int) - gray).max() <= 1
    np.testing.assert_allclose(g16.scores, colour.predict(hand, VOC, return_scores=True).scores, atol=1e-6)
    np.testing.assert_allclose(g8.scores, g16.scores, atol=0.05)


def test_batch_error_names_the_failing_input(predictor: SANPredictor, photo: np.ndarray, tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match=rf"images\[2\]: {bad}: not an image file"):
        predictor.predict_batch([photo, photo, bad], VOC)
    with pytest.raises(ImageError, match=r"images\[1\]: image array must be"):
        predictor.predict_batch([photo, np.zeros((4, 4, 2), np.uint8)], VOC)


def test_device_and_precision_are_checked_and_used(
    predictor: SANPredictor, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        SANPredictor(predictor.model, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            SANPredictor(predictor.model, device="cuda")
    seen = []

    def spy(self, images, levels=None):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), images.device.type))
        return colour_encode(self, images, levels)

    monkeypatch.setattr(san.SAN, "encode_images", spy)
    monkeypatch.setattr(san.SAN, "classify", staticmethod(colour_classify))
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        seen.clear()
        SANPredictor(predictor.model, device="cpu", precision=precision, min_size=64).predict(photo, VOC)
        assert seen and all(s == (dtype is not None, dtype or s[1], "cpu") for s in seen), (precision, seen)
