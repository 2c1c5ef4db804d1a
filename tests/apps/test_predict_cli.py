"""``san predict`` on a folder of good and bad files, with a tiny model saved as a checkpoint.

Most tests patch in the hand-made colour model (``colour_model.py``), whose labels follow the
picture, so a wrongly decoded, rotated or converted input changes the label map and the overlay.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import san
from san.apps.cli import main as san_main
from san.apps.predict import SUMMARY
from san.inference.outputs import collect_inputs, output_stems
from san.inference.predictor import SANPredictor
from san.inference.visualize import legend, overlay

from ..conftest import tiny_files
from ..data.test_images import UPRIGHT
from .colour_model import colour_classify, colour_encode, use_colour_model

OPTS = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
VOC = "cat, grass|lawn, sky, wall"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    tiny_files(root)
    skimage_data = pytest.importorskip("skimage.data")
    photo = np.array(Image.fromarray(skimage_data.chelsea()).resize((90, 60), Image.BILINEAR))  # [60, 90, 3]
    gray = np.array(Image.fromarray(photo).convert("L"))
    d = root / "images"
    d.mkdir()
    Image.fromarray(photo).save(d / "good.png")
    Image.fromarray(photo).save(d / "good.jpg", quality=95)  # same stem as good.png
    Image.fromarray(gray).save(d / "gray.png")
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 100, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(photo).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "deep16.png")  # 16-bit grayscale PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(d / "rotated.jpg", exif=exif, quality=95)
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.jpg").write_text("this is not an image\n")
    (d / "README.txt").write_text("not an image extension: ignored\n")
    predictor = SANPredictor.from_pretrained(str(root / "tiny.yaml"), weights=root / "tiny.pth", opts=OPTS)
    return {"root": root, "dir": d, "photo": photo, "gray": gray, "predictor": predictor}


def _outputs(out: Path) -> list[str]:
    """The image outputs in ``out`` (the run's summary aside)."""
    return sorted(p.name for p in out.iterdir() if p.name != SUMMARY)


def _run(setup: dict, out: Path, *args: str) -> int:
    root = setup["root"]
    argv = ["predict", "--config-file", str(root / "tiny.yaml"), "--weights", str(root / "tiny.pth"), "-o", str(out)]
    return san_main([*argv, *args, *OPTS])


def test_mixed_folder(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_colour_model(monkeypatch)
    out = tmp_path / "out"
    rc = _run(setup, out, "--input", str(setup["dir"]), "--vocabulary", VOC)
    err = capsys.readouterr().err
    assert rc == 1  # some files failed, the others were written
    assert "truncated.jpg: cannot decode the image (the file is truncated or corrupt)" in err
    assert "notes.jpg: not an image file" in err
    good = ["good_png", "good_jpg", "gray", "rgba", "cmyk", "deep16", "rotated"]
    assert _outputs(out) == sorted(
        f"{s}{suffix}" for s in good for suffix in ("_labels.png", "_overlay.png", "_legend.png", ".json")
    )  # nothing for the bad files, no temporary files left
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["images"], summary["written"], summary["failed"], summary["resumed"]) == (9, 7, 2, 0)
    reasons = {Path(f["image"]).name: f["reason"] for f in summary["failures"]}
    assert reasons.keys() == {"truncated.jpg", "notes.jpg"} and "not an image file" in reasons["notes.jpg"]
    assert summary["images_per_s"] > 0 and 0 < summary["model_s"] <= summary["wall_s"]
    pred = setup["predictor"]
    photo, gray = setup["photo"], setup["gray"]
    with Image.open(setup["dir"] / "rotated.jpg") as im:
        rotated = np.ascontiguousarray(UPRIGHT[6](np.asarray(im.convert("RGB"))))  # stored pixels, turned by hand
    expected_inputs = {  # what each file should decode to, made without san.data.images
        "good_png": photo,
        "good_jpg": np.asarray(Image.open(setup["dir"] / "good.jpg").convert("RGB")),
        "gray": np.repeat(gray[:, :, None], 3, axis=2),
        "rgba": photo,  # alpha dropped
        "cmyk": np.asarray(Image.open(setup["dir"] / "cmyk.jpg").convert("RGB")),
        "deep16": np.repeat(gray[:, :, None], 3, axis=2),  # 16-bit scaled back to 8 bits
        "rotated": rotated,
    }
    assert len(np.unique(pred.predict(photo, VOC).labels)) >= 3  # the labels do vary over the photo
    for stem, image in expected_inputs.items():
        labels_png = Image.open(out / f"{stem}_labels.png")
        assert labels_png.mode == "L"  # 8-bit: fewer than 256 classes
        labels = np.asarray(labels_png)
        assert labels.shape == image.shape[:2], stem  # EXIF rotation respected
        want = pred.predict(image, VOC)
        np.testing.assert_array_equal(labels, want.labels, err_msg=stem)
        drawn = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))
        assert drawn.shape == image.shape  # at the photo's size
        np.testing.assert_array_equal(drawn, overlay(image, want.labels, want.class_names), stem)
        key = np.asarray(Image.open(out / f"{stem}_legend.png").convert("RGB"))
        size = int(np.clip(image.shape[0] / 40, 12, 28))
        np.testing.assert_array_equal(key, np.asarray(legend(want.pixel_fractions(), want.class_names, font_size=size)))
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["vocabulary"] == ["cat", "grass, lawn", "sky", "wall"]
        assert record["class_names"] == record["vocabulary"]
        assert (record["height"], record["width"]) == labels.shape
        counts = np.bincount(labels.ravel(), minlength=4) / labels.size
        assert record["pixel_fractions"] == {
            record["class_names"][i]: counts[i] for i in np.argsort(-counts, kind="stable") if counts[i]
        }
        assert sum(record["pixel_fractions"].values()) == pytest.approx(1.0)


def test_glob_other_and_16bit_labels(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = _run(setup, out, "--input", str(setup["dir"] / "good.p*"), "--dataset-vocabulary", "pcontext_459")
    assert rc == 0, capsys.readouterr().err
    labels = Image.open(out / "good_labels.png")
    assert labels.mode.startswith("I")  # 459 classes: 16-bit PNG
    assert np.asarray(labels).max() < 459
    rc = _run(setup, out, "--input", str(setup["dir"] / "good.png"), "--vocabulary", "cat", "--other", "coco-all")
    assert rc == 0
    root = setup["root"]
    assert (
        san_main(  # overrides right after --input end the input list
            [
                "predict",
                "--config-file",
                str(root / "tiny.yaml"),
                "--weights",
                str(root / "tiny.pth"),
                "-o",
                str(out),
                "--vocabulary",
                "cat",
                "--other",
                "coco-all",
                "--input",
                str(setup["dir"] / "good.png"),
                *OPTS,
            ]
        )
        == 0
    )
    record = json.loads((out / "good.json").read_text())
    assert record["class_names"] == ["cat", "other"] and record["vocabulary"] == ["cat"]
    assert (record["min_size"], record["max_size"], record["tta"]) == (64, 128, False)
    assert np.asarray(Image.open(out / "good_labels.png")).max() <= 1


def test_usage_errors(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = str(setup["dir"] / "good.png")
    assert _run(setup, tmp_path / "o", "--input", good, "--vocabulary", " , ") == 2
    assert "vocabulary is empty" in capsys.readouterr().err
    assert _run(setup, tmp_path / "o", "--input", str(tmp_path / "missing*.png"), "--vocabulary", "cat") == 2
    assert "no such file, folder or matching image" in capsys.readouterr().err
    assert (
        _run(setup, tmp_path / "o", "--input", good, "--vocabulary", "cat", "--weights", str(tmp_path / "x.pth")) == 2
    )
    assert "checkpoint not found: " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing created before the model loads
    assert _run(setup, tmp_path / "o", "--input", good, "--vocabulary", "cat", "--max-pixels", "1000") == 1
    assert "good.png: the image is 90x60 = 5400 pixels, above the limit of 1000 pixels" in capsys.readouterr().err
    assert _outputs(tmp_path / "o") == []  # the run's summary only, saying why
    (failure,) = json.loads((tmp_path / "o" / SUMMARY).read_text())["failures"]
    assert failure["image"] == good and "above the limit of 1000 pixels" in failure["reason"]
    for bad in (["--batch-size", "0"], ["--workers", "-1"], ["--num-gpus", "0"], ["--dist-url", "host:1"]):
        assert _run(setup, tmp_path / "p", "--input", good, "--vocabulary", "cat", *bad) == 2
        assert bad[0] in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert san_main(["predict", "--input", good, "--vocabulary", "cat", "MODEL.SAN.NUM_CLASSES"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err


def test_input_collection_and_output_names(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    files, missing = collect_inputs([str(tmp_path), str(tmp_path / "a.png"), str(tmp_path / "zz*.png")])
    assert [f.name for f in files] == ["a.JPG", "a.png", "b.png"] and missing == [str(tmp_path / "zz*.png")]
    assert output_stems(files) == ["a_jpg", "a_png", "b"]


def test_runtime_failure_of_one_image_does_not_stop_the_batch(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SANPredictor.predict_batch

    def flaky(self, images, *args, **kwargs):
        if any(image.shape[0] == 60 for image in images):  # every test image but the EXIF-rotated one (90 rows)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(SANPredictor, "predict_batch", flaky)
    out = tmp_path / "out"
    files = [str(setup["dir"] / n) for n in ("good.png", "rotated.jpg", "gray.png")]
    assert _run(setup, out, "--input", *files, "--vocabulary", VOC) == 1
    err = capsys.readouterr().err
    assert f"{files[0]}: RuntimeError: CUDA error: an illegal memory" in err and f"{files[2]}: RuntimeError" in err
    assert _outputs(out) == [
        "rotated.json",
        "rotated_labels.png",
        "rotated_legend.png",
        "rotated_overlay.png",
    ]


def test_memory_error_of_one_image_does_not_stop_the_batch(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import san.inference.outputs

    real = san.inference.outputs.overlay

    def hungry(image, *args, **kwargs):
        if image.shape[0] == 60:
            raise MemoryError
        return real(image, *args, **kwargs)

    monkeypatch.setattr(san.inference.outputs, "overlay", hungry)
    out = tmp_path / "out"
    files = [str(setup["dir"] / n) for n in ("good.png", "rotated.jpg")]
    assert _run(setup, out, "--input", *files, "--vocabulary", VOC) == 1
    err = capsys.readouterr().err
    assert f"FAILED {files[0]} (90x60): out of memory; downscale the image, or lower --max-pixels" in err
    assert _outputs(out) == [
        "rotated.json",
        "rotated_labels.png",
        "rotated_legend.png",
        "rotated_overlay.png",
    ]


def test_outputs_are_all_or_none(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_colour_model(monkeypatch)
    out = tmp_path / "out"
    good = str(setup["dir"] / "good.png")
    assert _run(setup, out, "--input", good, "--vocabulary", VOC) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != SUMMARY}
    real = os.replace

    def json_rename_fails(src, dst):
        if str(dst).endswith(".json") and ".tmp" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", json_rename_fails)
    assert _run(setup, out, "--input", good, "--vocabulary", "sky, wall, cat") == 1  # other labels, other pixels
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != SUMMARY} == before  # earlier outputs kept
    fresh = tmp_path / "fresh"
    assert _run(setup, fresh, "--input", good, "--vocabulary", VOC) == 1
    assert _outputs(fresh) == []  # neither the two renamed files nor temporary ones


def _record(out: Path, stem: str = "good") -> dict:
    return json.loads((out / f"{stem}.json").read_text())


def test_tta_and_precision_reach_the_model(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def spy(self, images, levels=None):
        calls.append((tuple(images.shape[-2:]), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return colour_encode(self, images, levels)

    monkeypatch.setattr(san.SAN, "encode_images", spy)
    monkeypatch.setattr(san.SAN, "classify", staticmethod(colour_classify))
    good = str(setup["dir"] / "good.png")
    aug = ["TEST.AUG.MIN_SIZES", "(48, 96)", "TEST.AUG.MAX_SIZE", "256", "TEST.AUG.FLIP", "True"]
    assert _run(setup, tmp_path / "tta", "--input", good, "--vocabulary", VOC, "--tta", *aug) == 0
    assert sorted(c[0] for c in calls) == [(64, 96), (64, 96), (96, 160), (96, 160)]  # 2 sizes x 2 flips, padded
    rec = _record(tmp_path / "tta")
    assert (rec["tta"], rec["tta_min_sizes"], rec["tta_flip"]) == (True, [48, 96], True)
    root = setup["root"]
    tta = SANPredictor.from_pretrained(str(root / "tiny.yaml"), weights=root / "tiny.pth", opts=OPTS + aug, tta=True)
    want = tta.predict(setup["photo"], VOC).labels
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tta" / "good_labels.png")), want)
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        calls.clear()
        assert _run(setup, tmp_path / precision, "--input", good, "--vocabulary", VOC, "--precision", precision) == 0
        assert [c[1:] for c in calls] == [(dtype is not None, dtype or calls[0][2])], precision
        assert _record(tmp_path / precision)["precision"] == precision
        assert not _record(tmp_path / precision)["tta"]


def test_device_option(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = str(setup["dir"] / "good.png")
    assert _run(setup, tmp_path / "o", "--input", good, "--vocabulary", VOC, "--device", "cpu") == 0
    assert _record(tmp_path / "o")["device"] == "cpu"
    assert _run(setup, tmp_path / "bad", "--input", good, "--vocabulary", VOC, "--device", "gpu0") == 2
    assert "unknown device 'gpu0'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _run(setup, tmp_path / "bad", "--input", good, "--vocabulary", VOC, "--device", "cuda") == 2
        assert "device 'cuda': CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_vocabulary_file_text_cache_and_progress(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_colour_model(monkeypatch)
    voc = tmp_path / "classes.txt"
    voc.write_text("# my classes\nsky, heaven\ncat\n\ngrass|lawn\n", encoding="utf-8")
    cache = tmp_path / "text"
    files = [str(setup["dir"] / n) for n in ("good.png", "gray.png", "rotated.jpg")]
    args = ["--input", *files, "--vocabulary-file", str(voc), "--text-cache", str(cache)]
    assert _run(setup, tmp_path / "a", *args) == 0
    err = capsys.readouterr().err
    assert "san predict: 100%" in err and "3/3" in err  # a progress bar over the three images
    rec = _record(tmp_path / "a")
    assert rec["vocabulary"] == rec["class_names"] == ["sky, heaven", "cat", "grass, lawn"]
    assert (rec["vocabulary_file"], rec["text_cache"]) == (str(voc), str(cache))
    assert list(cache.glob("text-*.safetensors"))  # the class-name embeddings were stored
    want = setup["predictor"].predict(setup["photo"], ["sky|heaven", "cat", "grass|lawn"]).labels
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "good_labels.png")), want)

    def no_encoding(*a, **k):
        raise AssertionError("class names should come from the text cache")

    monkeypatch.setattr(san.modeling.text_classifier.TextClassifier, "encode_prompts", no_encoding)
    assert _run(setup, tmp_path / "b", *args) == 0
    for stem in ("good", "gray", "rotated"):
        assert (tmp_path / "b" / f"{stem}_labels.png").read_bytes() == (
            tmp_path / "a" / f"{stem}_labels.png"
        ).read_bytes()
    with pytest.raises(AssertionError, match="should come from the text cache"):  # the patch does bite
        _run(setup, tmp_path / "c", "--input", files[0], "--vocabulary", "cat, dog")
