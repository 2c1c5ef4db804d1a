"""The README runs as written: its Python snippets (with the official weights swapped for the golden tiny
model, the one thing that cannot be downloaded here) and the flags of every ``san`` command line it shows."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from san.apps.cli import COMMANDS
from san.inference.predictor import SANPredictor

from .apps.colour_model import use_colour_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_python_snippets_run_as_written(golden_v2_model, tmp_path, monkeypatch):
    """The weights are swapped for a model whose labels follow the photo's colours (the tiny golden model
    gives one class to a real photo): everything the snippets call is the real code."""
    pytest.importorskip("supervision", reason="the README's snippet uses supervision (the test extra installs it)")
    data = pytest.importorskip("skimage.data", reason="the photo comes from scikit-image (the test extra installs it)")
    use_colour_model(monkeypatch)
    predictor = SANPredictor(golden_v2_model, device="cpu", min_size=250, max_size=1000)
    asked = []

    def from_pretrained(cls, model, **kwargs):
        asked.append(model)
        return predictor

    monkeypatch.setattr(SANPredictor, "from_pretrained", classmethod(from_pretrained))
    image = data.coffee()
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    snippets = _blocks("python")
    assert len(snippets) == 2 and "photo.jpg" in snippets[0]
    scope: dict = {}
    for code in snippets:  # in order, as a reader pastes them into one session
        exec(compile(code, "README.md", "exec"), scope)
    assert asked == ["san-vit-b-16"]
    photo, result, detections, annotated = (scope[k] for k in ("photo", "result", "detections", "annotated"))
    assert photo.shape == image.shape and annotated.shape == photo.shape
    assert len(detections) == len(np.unique(result.labels)) >= 2
    assert ((detections.confidence > 0) & (detections.confidence <= 1)).all()
    shown = detections.mask[detections.confidence > 0.5].any(axis=0)
    changed = (annotated != photo).any(axis=-1)
    assert not changed[~shown].any() and changed[shown].mean() > 0.9  # drawn over the confident regions only
    np.testing.assert_array_equal(scope["animals"].labels, predictor.predict(photo, "cat, dog, bird").labels)


def test_the_dataset_yaml_of_the_training_docs_is_what_register_datasets_from_yaml_reads(tmp_path):
    from san.data import get_dataset, register_datasets_from_yaml, unregister_dataset

    training = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    block = re.findall(r"```yaml\n(.*?)```", training, flags=re.S)[0]  # the train/val pair
    entries = yaml.safe_load(block)["datasets"]
    assert [e["name"] for e in entries] == ["my_train", "my_val"]
    (tmp_path / "my.yaml").write_text(block)
    register_datasets_from_yaml(tmp_path / "my.yaml", overwrite=True)
    try:
        assert get_dataset("my_train").classes == ["road", "car", "tree"]
    finally:
        for e in entries:
            unregister_dataset(e["name"])


def _command_lines() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words and words[0] == "san" and len(words) > 1:
                    lines.append(words[1:])
    return lines


@pytest.mark.parametrize("argv", _command_lines(), ids=lambda argv: " ".join(argv)[:60])
def test_every_san_command_line_in_the_readme_parses(argv):
    module = importlib.import_module(COMMANDS[argv[0]][0])
    parse = getattr(module, "parse_args", None) or module.build_parser().parse_args
    parse(argv[1:])  # an unknown flag or a missing argument exits here


def test_the_readme_shows_a_command_line_of_each_main_job():
    assert {argv[0] for argv in _command_lines()} >= {"predict", "demo", "train", "export"}
    assert len(README.splitlines()) < 200  # what most users do; the rest lives in docs/
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link
