"""ONNX export with a frozen vocabulary, run in onnxruntime: the graph equals PyTorch on the same resized
input; with its own test-time resize it agrees with SANPredictor (PIL's resize) as measured; the metadata
round-trips; the file runs where san is not importable; bad exports are refused and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import san
from san.apps.export import main as export_main
from san.data.transforms import shortest_edge_size
from san.inference.onnx import export_onnx, read_metadata
from san.inference.predictor import SANPredictor
from san.inference.tta import resize_chw

from ..conftest import tiny_cfg, tiny_files

ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need onnxruntime (the test extra installs it)")
pytest.importorskip("onnxscript", reason="exporting needs onnxscript (the test extra installs it)")

NAMES = ["cat", "dog", "grass", "sky", "traffic light"]
MIN, MAX = 250, 1000


@pytest.fixture(scope="module")
def photos(golden_v2_model) -> list[np.ndarray]:
    from ..conftest import GOLDEN_V2

    golden = torch.load(GOLDEN_V2, weights_only=True)
    arrays = [im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().copy() for im in golden["images"]]
    data = pytest.importorskip("skimage.data", reason="the photos come from scikit-image (the test extra installs it)")
    real = [data.chelsea(), data.coffee()[::2, ::2].copy()]  # 300x451 and 200x300: shrunk and enlarged
    wide = np.ascontiguousarray(arrays[0][:60])  # 60x330: the short side to 250 makes it 1375 long, capped at 1000
    return [*arrays, arrays[0][40:, 30:].copy(), np.ascontiguousarray(arrays[1].transpose(1, 0, 2)), *real, wide]


@pytest.fixture(scope="module")
def exported(golden_v2_model, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("onnx")
    plain = export_onnx(golden_v2_model, NAMES, d / "plain.onnx", min_size=MIN, max_size=MAX, resize=False)
    full = export_onnx(golden_v2_model, NAMES, d / "full.onnx", min_size=MIN, max_size=MAX, config_yaml="X: 1\n")
    session = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])  # noqa: E731
    return {"plain": session(plain), "full": session(full), "full_path": full, "dir": d}


def test_the_graph_equals_pytorch_on_the_same_resized_input(golden_v2_model, exported, photos):
    total = same = 0
    for photo in photos:
        h, w = photo.shape[:2]
        image = resize_chw(torch.from_numpy(photo).permute(2, 0, 1), shortest_edge_size(h, w, MIN, MAX))
        labels, scores = exported["plain"].run(None, {"image": image[None].numpy()})
        with torch.no_grad():
            ref = golden_v2_model([{"image": image, "vocabulary": NAMES}])[0]["sem_seg"]
        best, want = ref.max(0)
        assert labels.shape == tuple(image.shape[1:]) and labels.dtype == np.int64 and scores.dtype == np.float32
        assert np.abs(scores - best.numpy()).max() <= 1e-4
        same += (labels == want.numpy()).sum()
        total += labels.size
    assert same / total >= 0.9999


def test_with_its_own_resize_the_graph_agrees_with_the_predictor(golden_v2_model, exported, photos):
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=MIN, max_size=MAX)
    agree = []
    for photo in photos:
        labels, scores = exported["full"].run(None, {"image": photo.transpose(2, 0, 1)[None].copy()})
        pred = predictor.predict(photo, NAMES)
        assert labels.shape == photo.shape[:2]  # back at the photo's size
        agree.append((labels == pred.labels).mean())
        rel = np.abs(scores - pred.score).mean() / np.abs(pred.score).mean()  # both the raw winning score
        print(f"labels agree {agree[-1]:.4f}, scores differ by {rel:.4f} of their size")
        assert rel < 0.02, rel  # measured <= 0.9%: the two resize filters, not the model
    # ONNX's antialiased Resize vs PIL's bilinear filter: measured >= 99.9% of the labels on these photos
    assert min(agree) >= 0.99, agree


@pytest.mark.parametrize("size", [(60, 330), (330, 60), (40, 900), (250, 1000), (251, 1005), (300, 451), (200, 300)])
def test_the_graphs_resize_is_the_predictors_with_its_long_side_cap(size):
    """The exported module's own test-time resize gives detectron2's target size (the short side to
    ``min_size``, the long side at most ``max_size``), also where the cap decides the size."""
    from san.inference.onnx import OnnxSegmenter

    segmenter = OnnxSegmenter(torch.nn.Identity(), torch.zeros(2, 4), MIN, MAX)
    image = torch.rand(1, 3, *size) * 255
    want = shortest_edge_size(*size, MIN, MAX)
    assert tuple(segmenter._resized(image).shape[-2:]) == want
    if max(size) * MIN / min(size) > MAX:  # the first three sizes: the cap decides
        assert max(want) == MAX


def test_metadata_round_trips_and_the_file_runs_without_san(exported, photos):
    meta = read_metadata(exported["full_path"])
    assert meta["vocabulary"] == NAMES and meta["san_version"] == san.__version__
    assert (meta["config"], meta["min_size_test"], meta["max_size_test"]) == ("X: 1\n", str(MIN), str(MAX))
    from PIL import Image

    photo = exported["dir"] / "photo.png"
    Image.fromarray(photos[0]).save(photo)
    readme = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    snippet = readme.split("Running it needs only onnxruntime")[1].split("```python\n")[1].split("```")[0]
    snippet = snippet.replace('"model.onnx"', repr(str(exported["full_path"]))).replace('"photo.jpg"', repr(str(photo)))
    code = (  # docs/deploy.md's snippet, where san is not importable
        "import sys, json\nsys.modules['san'] = None\n"
        + snippet
        + "print(json.dumps({'shape': list(labels.shape), 'names': names, 'classes': len(set(labels.ravel()))}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == list(photos[0].shape[:2]) and out["names"] == NAMES and out["classes"] >= 1


def test_export_command_and_its_refusals(tmp_path, capsys):
    tiny_files(tmp_path)
    other = tiny_cfg(tmp_path)
    other.MODEL.SAN.FEATURE_LAST_LAYER_IDX = 3
    other.MODEL.SIDE_ADAPTER.FUSION_MAP = ["0->0", "3->1"]
    san.save_checkpoint(san.build_model(other), tmp_path / "other.pth")
    base = [
        "onnx",
        "--config-file",
        str(tmp_path / "tiny.yaml"),
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "128",
    ]
    out = tmp_path / "model.onnx"

    assert export_main(["onnx", "--weights", str(tmp_path / "tiny.pth"), "-v", "", "-o", str(out), *base[1:]]) == 2
    assert "vocabulary is empty" in capsys.readouterr().err
    assert export_main(["onnx", "--weights", str(tmp_path / "other.pth"), "-v", "a, b", "-o", str(out), *base[1:]]) == 2
    assert "checkpoint does not match the model" in capsys.readouterr().err
    assert (
        export_main(["onnx", "--weights", str(tmp_path / "tiny.pth"), "-v", "a", "-o", "/proc/sys/x.onnx", *base[1:]])
        == 2
    )
    assert "is not a writable folder" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".model.onnx*"))  # nothing half-written
    # the one successful export runs as a user runs it: the san command, which prints its progress and the
    # file only (not the exporter's hundreds of INFO lines)
    argv = ["export", "onnx", "--weights", str(tmp_path / "tiny.pth"), "-v", "a, b", "-o", str(out), *base[1:]]
    r = subprocess.run([sys.executable, "-m", "san", *argv], capture_output=True, text=True, timeout=600)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 0 and out.is_file(), r.stderr[-3000:]
    assert len(lines) <= 3 and not any(line.startswith("INFO") for line in lines), lines[:10]
    assert lines[-1] == f"san export: wrote {out}"
    assert read_metadata(out)["vocabulary"] == ["a", "b"]
    assert export_main(["onnx", "--weights", str(tmp_path / "tiny.pth"), "-v", "a", "-o", str(out), *base[1:]]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert read_metadata(out)["vocabulary"] == ["a", "b"]  # the old file untouched
    assert not list(tmp_path.glob(".model.onnx*"))


def test_an_adapter_is_frozen_into_the_graph(golden_v2_model, photos, tmp_path, capsys):
    """``san export onnx --adapter``: the graph gives the adapted predictor's labels, not the base model's
    (an adapter that swaps the rows of 'cat' and 'sky' changes them)."""
    from san.inference.adapter import Adapter

    model = golden_v2_model
    with torch.no_grad():
        swapped = model.ov_classifier.embed_names(["sky", "cat"])
    adapter = Adapter(["cat", "sky"], swapped, model.image_fingerprint(), model.ov_classifier.cache_key())
    adapter.save(tmp_path / "adapter.safetensors")
    (tmp_path / "model.yaml").write_text(model.config_yaml)
    san.save_checkpoint(model, tmp_path / "model.pth")
    sizes = ["INPUT.MIN_SIZE_TEST", str(MIN), "INPUT.MAX_SIZE_TEST", str(MAX)]
    argv = ["onnx", "--weights", str(tmp_path / "model.pth"), "--config-file", str(tmp_path / "model.yaml")]
    argv += ["-v", ", ".join(NAMES), "--adapter", str(tmp_path), "-o", str(tmp_path / "a.onnx"), *sizes]
    assert export_main(argv) == 0
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    adapted = SANPredictor(model, device="cpu", min_size=MIN, max_size=MAX, adapter=adapter)
    base = SANPredictor(model, device="cpu", min_size=MIN, max_size=MAX)
    agree, changed = [], 0
    for photo in photos:
        labels, _ = session.run(None, {"image": photo.transpose(2, 0, 1)[None].copy()})
        want = adapted.predict(photo, NAMES).labels
        agree.append((labels == want).mean())
        changed += int((want != base.predict(photo, NAMES).labels).sum())
    assert min(agree) >= 0.999 and changed > 0  # as the graph without an adapter agrees with the base predictor
    other = Adapter(["cat"], swapped[:1], "another-model", "x")
    other.save(tmp_path / "other.safetensors")
    argv[argv.index("--adapter") + 1] = str(tmp_path / "other.safetensors")
    assert export_main([*argv[:-4], "--force", *sizes]) == 2
    assert "made for another base model" in capsys.readouterr().err
