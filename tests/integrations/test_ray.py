"""``san.integrations.ray`` on a local Ray instance (2 CPUs, two actors) with the golden v2 model: Ray
Data writes ``san predict``'s files (the same label maps, files ``san predict --resume`` accepts as its
own) and a region table whose labels are those maps and from which ``san index --table`` rebuilds the
index ``san index`` builds from the images; bad calls are refused before Ray runs anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray integration needs the ray extra (the test extra installs it)")

from san.apps.cli import main as san_main  # noqa: E402
from san.inference.index import RegionIndex  # noqa: E402
from san.inference.predictor import SANPredictor  # noqa: E402
from san.inference.table import labels_of, read_rows  # noqa: E402
from san.integrations.ray import segment_images  # noqa: E402

# one thread here and one per actor (2 CPUs, 2 actors): both paths compute alike, so labels compare exactly
pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]
VOCABULARY = "cat, dog, grass, sky, traffic light"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run(golden_files, local_ray, tmp_path_factory) -> dict:
    """Five images (one broken) segmented by Ray into ``out`` and ``table``, by ``san predict`` into
    ``cli``, and indexed by ``san index`` into ``index``."""
    a, b = golden_files["images"]
    root = tmp_path_factory.mktemp("ray")
    images = root / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (260, 300, 3), dtype=np.uint8)
    for name, im in {"a": a, "b": b, "b_flip": b[::-1], "noise": noise, "planted": a[:, ::-1]}.items():
        Image.fromarray(np.ascontiguousarray(im)).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    model = ["--config-file", str(golden_files["yaml"]), "--weights", str(golden_files["pth"])]
    summary = segment_images(
        str(images),
        output=root / "out",
        table=root / "table",
        weights=str(golden_files["pth"]),
        config_file=str(golden_files["yaml"]),
        opts=OPTS,
        vocabulary=VOCABULARY,
        actors=2,
        batch_size=2,
        images_per_call=2,
    )
    argv = ["predict", "--input", str(images), *model, "--vocabulary", VOCABULARY, "--output", str(root / "cli")]
    assert san_main([*argv, "--workers", "0", *OPTS]) == 1  # the broken image fails
    index = ["index", str(images), *model, "--output", str(root / "index"), "--part-size", "2", *OPTS]
    assert san_main(index) == 1
    return {"root": root, "images": images, "summary": summary, "model": model}


def test_ray_writes_what_san_predict_writes(run):
    root, summary = run["root"], run["summary"]
    assert (summary["images"], summary["written"], summary["failed"], summary["actors"]) == (6, 5, 1, 2)
    failure = summary["failures"][0]
    assert failure["image"].endswith("broken.png") and failure["reason"].startswith("not an image file")
    assert json.loads((root / "out" / "san_predict_summary.json").read_text())["written"] == 5
    stems = sorted(p.name.removesuffix("_labels.png") for p in (root / "cli").glob("*_labels.png"))
    assert stems == ["a", "b", "b_flip", "noise", "planted"]
    assert sorted(p.name for p in (root / "out").iterdir()) == sorted(p.name for p in (root / "cli").iterdir())
    for stem in stems:
        ours = np.asarray(Image.open(root / "out" / f"{stem}_labels.png"))
        np.testing.assert_array_equal(ours, np.asarray(Image.open(root / "cli" / f"{stem}_labels.png")))
        record, cli = (json.loads((root / d / f"{stem}.json").read_text()) for d in ("out", "cli"))
        assert record == cli
    classes = {int(c) for stem in stems for c in np.unique(np.asarray(Image.open(root / "out" / f"{stem}_labels.png")))}
    assert len(classes) >= 2  # calibrated weights: the comparison is not of one class everywhere
    # san predict takes Ray's files as its own: with --resume nothing is done again
    argv = ["predict", "--input", str(run["images"]), *run["model"], "--vocabulary", VOCABULARY]
    assert san_main([*argv, "--output", str(root / "out"), "--resume", "--workers", "0", *OPTS]) == 1
    assert json.loads((root / "out" / "san_predict_summary.json").read_text())["resumed"] == 5


def test_the_table_holds_the_labels_and_rebuilds_the_index(run, golden_files):
    root = run["root"]
    rows = read_rows(root / "table")
    names = ["a.png", "b.png", "b_flip.png", "broken.png", "noise.png", "planted.png"]
    assert [Path(r["path"]).name for r in rows] == names
    for row in rows:
        if row["error"] is None:
            labels = np.asarray(Image.open(root / "cli" / f"{Path(row['path']).stem}_labels.png"))
            np.testing.assert_array_equal(labels_of(row), labels)
            assert row["class_names"] == [n.strip() for n in VOCABULARY.split(",")]
    index = ["index", "--table", str(root / "table"), *run["model"], "--output", str(root / "from_table")]
    assert san_main([*index, "--part-size", "2", *OPTS]) == 0
    built, direct = RegionIndex(root / "from_table"), RegionIndex(root / "index")
    assert [p.name for p in built.parts] == [p.name for p in direct.parts] and len(built) == 5
    for ours, theirs in zip(built.parts, direct.parts):
        assert ours.images == theirs.images
        for name in ("embeddings", "areas", "masks"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    predictor = SANPredictor.from_pretrained(str(golden_files["yaml"]), weights=golden_files["pth"], opts=OPTS)
    hits = built.search(predictor, "cat", top=5)
    assert Path(hits[0].image).stem == "planted"
    assert hits == direct.search(predictor, "cat", top=5)
    # again: everything is there already
    assert san_main([*index, "--part-size", "2", *OPTS]) == 0 and len(RegionIndex(root / "from_table")) == 5


def test_bad_calls_are_refused_before_any_work(run, golden_files, tmp_path):
    model = {"weights": str(golden_files["pth"]), "config_file": str(golden_files["yaml"]), "opts": OPTS}
    with pytest.raises(ValueError, match="give output=.*table="):
        segment_images(str(run["images"]), **model)
    with pytest.raises(ValueError, match="the vocabulary is empty"):
        segment_images(str(run["images"]), output=tmp_path / "o", vocabulary=" , ", **model)
    with pytest.raises(FileExistsError, match="already holds files"):
        segment_images(str(run["images"]), table=run["root"] / "table", vocabulary=VOCABULARY, **model)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        segment_images(str(tmp_path / "nowhere"), output=tmp_path / "o", vocabulary=VOCABULARY, **model)
    assert not (tmp_path / "o").exists()
