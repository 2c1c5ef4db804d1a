"""Vocabulary parsing: separators, synonyms, duplicates, files, dataset lists, distractors, long names."""

from __future__ import annotations

import logging

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

import san
from san.assets import read_classes
from san.inference.predictor import SANPredictor
from san.inference.vocabulary import (
    OTHER,
    build_vocabulary,
    distractor_names,
    parse_vocabulary,
    read_vocabulary_file,
)
from san.modeling.text_classifier import fit_to_context

from ..conftest import tiny_cfg


def test_commas_newlines_and_whitespace() -> None:
    assert parse_vocabulary(" cat,grass ,\n  sky\n\n, big   black\tdog ") == ["cat", "grass", "sky", "big black dog"]
    assert parse_vocabulary(["  cat ", "sky"]) == ["cat", "sky"]


def test_synonyms_become_one_class_written_as_the_datasets_write_it() -> None:
    assert parse_vocabulary("road|route, car") == ["road, route", "car"]
    assert parse_vocabulary("road ; route ;, car") == ["road, route", "car"]
    assert parse_vocabulary(["road|route"]) == ["road, route"]
    assert "road, route" in read_classes("ade20k_150")  # the form the benchmarks use


def test_duplicates_dropped_in_order_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="san.inference.vocabulary"):
        names = parse_vocabulary("dog, cat, Dog, sky, cat")
    assert names == ["dog", "cat", "sky"]
    assert "duplicate" in caplog.text and "'Dog'" in caplog.text and "'cat'" in caplog.text


def test_empty_entries_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="san.inference.vocabulary"):
        assert parse_vocabulary("a, , b") == ["a", "b"]
    assert "ignored 1 empty entry (position 2)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="san.inference.vocabulary"):
        assert parse_vocabulary(["a", " ", "b", ""]) == ["a", "b"]
    assert "ignored 2 empty entries (positions 2, 4)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="san.inference.vocabulary"):
        assert parse_vocabulary("  a, b\n") == ["a", "b"]  # surrounding whitespace is not an entry
    assert not caplog.records


@pytest.mark.parametrize("text", ["", " , ,\n", [], ["  "]])
def test_empty_vocabulary_is_a_clear_error(text) -> None:
    with pytest.raises(ValueError, match="vocabulary is empty"):
        parse_vocabulary(text)


def test_non_string_names_rejected() -> None:
    with pytest.raises(TypeError, match="strings"):
        parse_vocabulary(["cat", 3])


def test_file_format_is_the_dataset_list_format(tmp_path) -> None:
    f = tmp_path / "voc.txt"
    f.write_text("# my classes\nroad, route\n\n cat \nsky|heaven\ncat\n", encoding="utf-8")
    assert read_vocabulary_file(f) == ["road, route", "cat", "sky, heaven"]
    ade = tmp_path / "ade.txt"
    ade.write_text("\n".join(read_classes("ade20k_150")), encoding="utf-8")
    assert read_vocabulary_file(ade) == [n.strip() for n in read_classes("ade20k_150")]
    with pytest.raises(ValueError, match="cannot read vocabulary file"):
        read_vocabulary_file(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="no class names"):
        read_vocabulary_file(tmp_path / "blank.txt")


def test_dataset_vocabulary_and_single_source() -> None:
    voc = build_vocabulary(dataset="pcontext_59")
    assert list(voc.user) == read_classes("pcontext_59") and voc.class_names == read_classes("pcontext_59")
    with pytest.raises(ValueError, match="not a bundled class list .*ade20k_150"):
        build_vocabulary(dataset="ade20k_151")
    with pytest.raises(ValueError, match="exactly one"):
        build_vocabulary("cat", dataset="voc_20")
    with pytest.raises(ValueError, match="exactly one"):
        build_vocabulary()


def test_other_adds_coco_distractors_not_already_named() -> None:
    coco = read_classes("coco_stuff_171")
    voc = build_vocabulary("Person, my cat, sky-other-merged", other="coco-all")
    assert voc.user == ("Person", "my cat", "sky-other-merged")
    assert list(voc.distractors) == [n for n in coco if n not in ("person", "sky-other-merged")]
    assert voc.class_names == [*voc.user, OTHER] and voc.names == [*voc.user, *voc.distractors]
    stuff = distractor_names("coco-stuff")
    assert len(stuff) == 91 and stuff[0] == "banner" and "person" not in stuff
    assert build_vocabulary("cat").distractors == () and build_vocabulary("cat").class_names == ["cat"]
    with pytest.raises(ValueError, match="reserved"):
        build_vocabulary("cat, other", other="coco-stuff")
    with pytest.raises(ValueError, match="coco-all"):
        distractor_names("imagenet")


def test_long_names_cut_to_fit_clip_context(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    tok = SimpleTokenizer()
    long = " ".join(["extraordinarily"] * 40)
    assert fit_to_context(["cat"], tok.encode, tok.decode, context_length=7) == ["cat"]
    with caplog.at_level(logging.WARNING, logger="san.inference.vocabulary"):
        (cut,) = fit_to_context([long], tok.encode, tok.decode, ["a photo of a {}."], context_length=20)
    assert 10 <= len(tok.encode(f"a photo of a {cut}.")) <= 18 and long.startswith(cut) and "was cut" in caplog.text

    torch.manual_seed(0)
    predictor = SANPredictor(san.build_model(tiny_cfg(tmp_path)), device="cpu")
    voc = predictor.vocabulary(f"cat, {long}")
    assert voc.user[0] == "cat" and voc.user[1] != long and long.startswith(voc.user[1])
    for tpl in predictor.model.ov_classifier.templates:  # every prompt keeps its end-of-text token
        assert len(tok.encode(tpl.format(voc.user[1]))) + 2 <= 77
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="san"):
        assert predictor.vocabulary(f"cat, {long}") == voc  # cached, and the cut is reported again
    assert "was cut to" in caplog.text
