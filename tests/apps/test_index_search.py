"""``san index`` / ``san search`` on a small collection with the official tiny model of the golden v2
file: the planted image ranks first; search scores equal a direct computation from the images' own
encodings; regions come back at the image's size; the index grows by what is missing and two
processes build the one-process index; bad indexes, queries and models are refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import san
from san.apps.cli import main as san_main
from san.inference.index import RegionIndex, RegionIndexError
from san.inference.predictor import SANPredictor
from san.modeling.semantic import resize_mask_logits

from ..conftest import tiny_cfg

# rerun in CI under each kernel setting of the float-noise matrix; every run compared here on one thread
pytestmark = [pytest.mark.numeric, pytest.mark.usefixtures("one_thread")]

OPTS = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]


@pytest.fixture(scope="module")
def collection(golden_files, tmp_path_factory) -> dict:
    """Six images; by the model's own label maps only ``planted`` (the first golden image mirrored)
    holds a cat: the one a search for "cat" must find first."""
    a, b = golden_files["images"]
    rng = np.random.default_rng(0)
    photos = {
        "a": a,
        "b": b,
        "b_flip": b[::-1],
        "noise": rng.integers(0, 256, (260, 300, 3), dtype=np.uint8),
        "gray": np.full((250, 300, 3), 128, np.uint8),
        "planted": a[:, ::-1],
    }
    root = tmp_path_factory.mktemp("collection")
    d = root / "images"
    d.mkdir()
    for name, im in photos.items():
        Image.fromarray(np.ascontiguousarray(im)).save(d / f"{name}.png")
    predictor = SANPredictor.from_pretrained(str(golden_files["yaml"]), weights=golden_files["pth"], opts=OPTS)
    voc = golden_files["vocabulary"]
    present = {n: {voc[i] for i in np.unique(predictor.predict(d / f"{n}.png", voc).labels)} for n in photos}
    assert [n for n, classes in present.items() if "cat" in classes] == ["planted"], present
    index = root / "index"
    assert san_main(_index_argv(golden_files, d, index, "--part-size", "4", "--batch-size", "2", positional=True)) == 0
    return {"dir": d, "index": index, "predictor": predictor, "voc": voc, "root": root}


def _index_argv(golden_files: dict, inputs: Path, index: Path, *extra: str, positional: bool = False) -> list[str]:
    model = ["--config-file", str(golden_files["yaml"]), "--weights", str(golden_files["pth"])]
    if positional:  # san index INPUT --output INDEX ... KEY VALUE
        return ["index", str(inputs), *model, "--output", str(index), *extra, *OPTS]
    return ["index", *model, "--input", str(inputs), "--output", str(index), *extra, *OPTS]


def test_the_planted_image_ranks_first(collection, capsys):
    index = RegionIndex(collection["index"])
    assert len(index) == 6 and [len(p.images) for p in index.parts] == [4, 2]
    hits = index.search(collection["predictor"], "cat", top=3)
    assert Path(hits[0].image).stem == "planted" and hits[0].score > 0.9 > hits[1].score
    others = [n for n in collection["voc"] if n != "cat"]
    scoped = index.search(collection["predictor"], "cat", vocabulary=others, top=6)
    assert Path(scoped[0].image).stem == "planted" and len(scoped) == 6
    assert [h.score for h in scoped] == sorted((h.score for h in scoped), reverse=True)
    named = index.search(collection["predictor"], "cat", vocabulary=collection["voc"], top=6)
    assert [(h.image, h.score) for h in named] == [(h.image, h.score) for h in scoped]  # the query counts once
    assert san_main(["search", str(collection["index"]), "cat", "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].endswith("planted.png")


@torch.no_grad()
def test_scores_equal_the_images_own_encodings(collection):
    predictor, model = collection["predictor"], collection["predictor"].model
    index = RegionIndex(collection["index"])
    names = ["sky", "cat", "grass"]
    hits = {Path(h.image).stem: h for h in index.search(predictor, "sky", vocabulary=names[1:], top=6)}
    classifier = model.encode_vocabulary(names)
    for path in sorted(collection["dir"].iterdir()):
        v = predictor.encode(path).views[0]
        probs = model.classify(v.mask_embeddings[None], classifier)[0].softmax(-1)[:, 0]
        h, w = v.image_size
        grid = [max(1, round(g * i / p)) for g, i, p in zip(v.mask_logits.shape[-2:], v.image_size, v.padded_size)]
        inside = (resize_mask_logits(v.mask_logits, (h, w), v.padded_size, tuple(grid)) > 0).flatten(1)
        covers = inside.any(1)
        part, row = next((pt, i) for pt in index.parts for i, im in enumerate(pt.images) if im["path"] == str(path))
        q = index.meta["queries"]
        stored = np.asarray(part.areas[row * q : (row + 1) * q], dtype=np.float32)
        assert stored == pytest.approx(inside.float().mean(1).numpy(), abs=1e-3), path.stem
        want = probs[covers].max()
        hit = hits[path.stem]
        assert hit.score == pytest.approx(float(want), abs=2e-3), path.stem  # float16 storage
        assert covers[hit.region] and float(probs[hit.region]) == pytest.approx(hit.score, abs=2e-3)


def test_a_region_that_covers_no_pixel_never_answers(collection, tmp_path):
    predictor = collection["predictor"]
    copy = tmp_path / "index"
    shutil.copytree(collection["index"], copy)
    (best,) = RegionIndex(copy).search(predictor, "cat", top=1)
    part = copy / best.part
    q = RegionIndex(copy).meta["queries"]
    areas = np.load(part / "areas.npy")
    assert areas[best.row * q + best.region] > 0
    areas[best.row * q + best.region] = 0  # as if the proposal lay on the padding only
    np.save(part / "areas.npy", areas)
    again = next(h for h in RegionIndex(copy).search(predictor, "cat", top=6) if h.image == best.image)
    assert again.region != best.region and again.score < best.score


def test_regions_and_pictures_come_back_at_the_images_size(collection, tmp_path):
    predictor = collection["predictor"]
    index = RegionIndex(collection["index"])
    (hit,) = index.search(predictor, "cat", top=1)
    mask = index.region_mask(hit)
    photo = np.asarray(Image.open(hit.image).convert("RGB"))
    assert mask.shape == photo.shape[:2] and 0 < mask.mean() < 1
    enc = predictor.encode(photo).views[0]
    want = (
        resize_mask_logits(
            enc.mask_logits[hit.region : hit.region + 1], enc.image_size, enc.padded_size, photo.shape[:2]
        )[0]
        > 0
    )
    assert (mask == want.numpy()).mean() > 0.9995  # the stored logits are float16
    out = tmp_path / "hits"
    assert san_main(["search", str(collection["index"]), "cat", "--top", "2", "--output", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [h["picture"] for h in result["hits"]][0] == "rank01_planted.png"
    picture = np.asarray(Image.open(out / "rank01_planted.png"))
    assert picture.shape == photo.shape
    assert (picture[~mask] < photo[~mask]).mean() > 0.9  # dimmed outside the region


def test_the_index_grows_by_what_is_missing(golden_files, collection, tmp_path, monkeypatch):
    index = tmp_path / "index"
    files = sorted(collection["dir"].iterdir())
    assert san_main(_index_argv(golden_files, files[0], index)) == 0
    calls = []
    real = SANPredictor.encode_batch
    monkeypatch.setattr(SANPredictor, "encode_batch", lambda self, ims, **k: calls.extend(ims) or real(self, ims, **k))
    (index / ".part-00000003.tmp-r0-999").mkdir()  # left by a killed build
    assert san_main(_index_argv(golden_files, collection["dir"], index, "--part-size", "2")) == 0
    assert len(calls) == 5 and len(RegionIndex(index)) == 6  # the first image was there
    assert not [p for p in index.iterdir() if p.name.startswith(".")]
    summary = json.loads((index / "build_summary.json").read_text())
    assert (summary["written"], summary["resumed"], summary["indexed"]) == (5, 1, 6)
    calls.clear()
    assert san_main(_index_argv(golden_files, collection["dir"], index)) == 0
    assert calls == []  # nothing missing
    ranked = [Path(h.image).name for h in RegionIndex(index).search(collection["predictor"], "sky", top=6)]
    want = [Path(h.image).name for h in RegionIndex(collection["index"]).search(collection["predictor"], "sky", top=6)]
    assert ranked == want


def test_hits_whose_files_changed_or_went_are_listed_without_pictures(golden_files, collection, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(collection["dir"], photos)
    index = tmp_path / "index"
    assert san_main(_index_argv(golden_files, photos, index)) == 0
    (photos / "planted.png").unlink()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photos / "a.png")  # another picture under the name
    out = tmp_path / "hits"
    assert san_main(["search", str(index), "cat", "--top", "6", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"no picture for {photos / 'planted.png'}" in err
    assert f"no picture for {photos / 'a.png'}: now 50x40, indexed at 330x250" in err
    hits = json.loads((out / "results.json").read_text())["hits"]
    assert len(hits) == 6 and sum("picture" in h for h in hits) == 4 and len(list(out.glob("rank*.png"))) == 4


def test_an_index_without_masks_encodes_the_hits_again(golden_files, collection, tmp_path, capsys):
    predictor, index = collection["predictor"], tmp_path / "index"
    assert san_main(_index_argv(golden_files, collection["dir"], index, "--no-masks", "--batch-size", "2")) == 0
    small, full = RegionIndex(index), RegionIndex(collection["index"])
    assert not list(index.glob("part-*/masks.npy")) and small.size_bytes() < full.size_bytes() / 3
    hits, want = small.search(predictor, "cat", top=3), full.search(predictor, "cat", top=3)
    assert [(h.image, h.region, h.score) for h in hits] == [(h.image, h.region, h.score) for h in want]
    with pytest.raises(RegionIndexError, match="built without masks: pass its model's predictor"):
        small.region_mask(hits[0])
    for hit, other in zip(hits, want):
        assert (small.region_mask(hit, predictor) == full.region_mask(other)).mean() > 0.9995  # float16 there
    out = tmp_path / "hits"
    assert san_main(["search", str(index), "cat", "--top", "1", "--output", str(out)]) == 0
    assert (out / "rank01_planted.png").is_file()
    assert san_main(_index_argv(golden_files, collection["dir"], index)) == 0  # adds the index's way
    assert san_main(_index_argv(golden_files, collection["dir"], collection["index"], "--no-masks")) == 2
    assert "was built with masks: add to it the same way" in capsys.readouterr().err


def test_an_index_folder_removed_mid_build_stops_it_with_one_message(
    golden_files, collection, tmp_path, monkeypatch, capsys
):
    index, calls = tmp_path / "index", []
    real = RegionIndex.write_part

    def write_part(self, items, **k):
        calls.append(len(items))
        if len(calls) == 2:
            shutil.rmtree(index)
        return real(self, items, **k)

    monkeypatch.setattr(RegionIndex, "write_part", write_part)
    assert san_main(_index_argv(golden_files, collection["dir"], index, "--part-size", "1", "--workers", "0")) == 1
    err = capsys.readouterr().err
    assert f"the output folder {index} disappeared during the run; nothing more was written" in err
    assert "Traceback" not in err and "FAILED" not in err and not index.exists() and len(calls) < 6


def test_ctrl_c_keeps_what_was_encoded_and_the_next_run_adds_the_rest(
    golden_files, collection, tmp_path, monkeypatch, capsys, ctrl_c_raises
):
    from san.inference.index_run import IndexRun

    index, real, seen = tmp_path / "index", IndexRun._write, []

    def write_then_ctrl_c(self, stem, *a):
        real(self, stem, *a)
        seen.append(stem)
        if len(seen) == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(IndexRun, "_write", write_then_ctrl_c)
    assert san_main(_index_argv(golden_files, collection["dir"], index, "--workers", "0")) == 130
    assert "interrupted after 3 new image(s); they are in the index" in capsys.readouterr().err
    assert len(RegionIndex(index)) == 3 and not [p for p in index.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(IndexRun, "_write", real)
    assert san_main(_index_argv(golden_files, collection["dir"], index)) == 0
    assert RegionIndex(index).indexed() == RegionIndex(collection["index"]).indexed()


def test_two_processes_build_the_one_process_index(golden_files, collection, tmp_path):
    from san.engine.comm import find_free_port

    index = tmp_path / "index"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    cmd += [str(find_free_port()), "-m", "san", *_index_argv(golden_files, collection["dir"], index)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two, one = RegionIndex(index), RegionIndex(collection["index"])
    assert len(two.parts) == 2 and two.indexed() == one.indexed()  # a part per process, every image once
    for query in ("cat", "sky"):
        a, b = (x.search(collection["predictor"], query, top=6) for x in (two, one))
        assert [h.image for h in a] == [h.image for h in b]  # one was built in batches of 2: scores to float error
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-3)


def test_bad_indexes_queries_and_models_are_refused(golden_files, collection, tmp_path, capsys):
    index = str(collection["index"])
    for query in ("", "   "):
        assert san_main(["search", index, query]) == 2
        assert "the query is empty" in capsys.readouterr().err
    assert san_main(["search", index, "cat", "--top", "0"]) == 2
    assert san_main(["search", str(tmp_path), "cat"]) == 2
    assert "is not a san index (no index.json)" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "index.json").write_text('{"format": "something-else"}')
    assert san_main(["search", str(foreign), "cat"]) == 2
    assert "is not a san region index" in capsys.readouterr().err
    (foreign / "index.json").write_text("{ not json")
    assert san_main(["search", str(foreign), "cat"]) == 2
    assert "not readable as JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = json.loads((collection["index"] / "index.json").read_text())
    (empty / "index.json").write_text(json.dumps(meta))
    assert san_main(["search", str(empty), "cat"]) == 2
    assert "holds no images yet" in capsys.readouterr().err

    other = tiny_cfg(tmp_path)  # another model: refused for searching and for adding
    torch.manual_seed(0)
    san.save_checkpoint(san.build_model(other), tmp_path / "other.pth")
    (tmp_path / "other.yaml").write_text(other.dump())
    assert san_main(["search", index, "cat", "--weights", str(tmp_path / "other.pth")]) == 2
    assert "does not match" in capsys.readouterr().err  # not even the architecture of the index's config
    weights = torch.load(golden_files["pth"], weights_only=True)
    key = next(k for k in weights["model"] if k.startswith("side_adapter_network") and k.endswith("weight"))
    weights["model"][key] = weights["model"][key] + 0.01
    torch.save(weights, tmp_path / "retrained.pth")  # the same architecture, other weights
    assert san_main(["search", index, "cat", "--weights", str(tmp_path / "retrained.pth")]) == 2
    assert "built by another model (image weights differ)" in capsys.readouterr().err
    predictor = SANPredictor.from_pretrained(str(tmp_path / "other.yaml"), weights=tmp_path / "other.pth")
    with pytest.raises(RegionIndexError, match="built by another model"):
        RegionIndex(collection["index"]).search(predictor, "cat")
    argv = ["index", "--config-file", str(tmp_path / "other.yaml"), "--weights", str(tmp_path / "other.pth")]
    assert san_main([*argv, "--input", str(collection["dir"]), "--output", index]) == 2
    assert "was built by another model" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text(json.dumps(meta))
    (broken / "part-00000000").mkdir()
    (broken / "part-00000000" / "part.json").write_text("{}")
    assert san_main(["search", str(broken), "cat"]) == 2
    assert "unreadable index part" in capsys.readouterr().err
    assert san_main(["index", "--output", str(tmp_path / "new"), *OPTS]) == 2
    assert "give the images to index: san index INPUT" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert san_main(_index_argv(golden_files, collection["dir"], busy)) == 2
    assert "holds other files, not a san index" in capsys.readouterr().err
