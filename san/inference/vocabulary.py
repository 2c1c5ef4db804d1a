"""Vocabularies: user text -> an ordered list of class names the model can encode.

Rules (deterministic and order-preserving, unlike the official ``predict.py`` which used ``set()``):

- A string is split at commas and newlines; whitespace around names is stripped and runs of
  whitespace inside a name become one space.
- Synonyms: ``road|route`` (or ``road; route``) is ONE class, stored as ``"road, route"`` exactly as
  the official dataset lists (``san/assets/classes``) write it; CLIP encodes the whole string.
- A vocabulary file uses the dataset-list format: one class per line, commas inside a line are
  synonyms (so ``ade20k_150.txt`` can be passed as a file unchanged).
- Duplicates (compared case-insensitively, as CLIP's tokenizer lowercases) are dropped after the
  first occurrence, with a warning that names them.
- An empty vocabulary is an error; empty entries inside one (``"a, , b"``, ``["a", " "]``) are
  dropped with a warning (blank lines and ``#`` comments in files are ignored silently).
- Names too long for CLIP's 77-token context (after the longest prompt template) are cut to fit,
  with a warning (:meth:`san.modeling.TextClassifier.fit_names`, which knows the context).
- "other": the official demo appends distractor names (all COCO-Stuff classes, or only its stuff
  classes) so that a short vocabulary does not force every pixel into one of its few classes;
  pixels won by a distractor are reported as one ``"other"`` class.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from san.assets import list_class_sets, read_classes

logger = logging.getLogger(__name__)

__all__ = [
    "EmptyVocabularyError",
    "OTHER",
    "OTHER_SETS",
    "Vocabulary",
    "build_vocabulary",
    "check_query",
    "distractor_names",
    "parse_vocabulary",
    "read_vocabulary_file",
]

OTHER = "other"
OTHER_SETS = ("none", "coco-all", "coco-stuff")
_COCO_THINGS = 80  # coco_stuff_171: 80 thing classes, then 91 stuff classes
_SYNONYM = re.compile(r"\s*[|;]\s*")


def _clean(name: str) -> str:
    parts = [" ".join(p.split()) for p in _SYNONYM.split(name)]
    return ", ".join(p for p in parts if p)


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    dupes = []
    for n in names:
        key = n.casefold()
        if key in seen:
            dupes.append(n)
        else:
            seen[key] = n
    if dupes:
        logger.warning("vocabulary: dropped duplicate class name(s) %s (first occurrence kept)", sorted(set(dupes)))
    return list(seen.values())


class EmptyVocabularyError(ValueError):
    """A vocabulary with no class name in it (what to type depends on where it was typed)."""


def parse_vocabulary(vocabulary: str | Sequence[str]) -> list[str]:
    """Class names from ``"cat, grass, sky"`` (commas/newlines separate, ``|`` or ``;`` join
    synonyms) or from a list (each entry is one class; ``|``/``;`` still join synonyms)."""
    if isinstance(vocabulary, str):
        raw = re.split(r"[,\n]", vocabulary.strip())
    else:
        raw = list(vocabulary)
        bad = [n for n in raw if not isinstance(n, str)]
        if bad:
            raise TypeError(f"class names must be strings, got {bad[:3]}")
    cleaned = [_clean(n) for n in raw]
    names = [c for c in cleaned if c]
    if not names:
        raise EmptyVocabularyError(
            f"the vocabulary is empty ({vocabulary!r}): give class names separated by commas, e.g. "
            "'cat, grass, sky', or a dataset's classes with --dataset-vocabulary "
            f"({', '.join(list_class_sets())})"
        )
    empty = [i + 1 for i, c in enumerate(cleaned) if not c]
    if empty:
        logger.warning(
            "vocabulary: ignored %d empty entr%s (position%s %s)",
            len(empty),
            "y" if len(empty) == 1 else "ies",
            "" if len(empty) == 1 else "s",
            ", ".join(map(str, empty)),
        )
    return _dedupe(names)


def read_vocabulary_file(path: str | os.PathLike) -> list[str]:
    """Class names from a file: one class per line, commas inside a line are synonyms."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read vocabulary file {os.fspath(path)}: {e}") from None
    names = [_clean(line.replace(",", "|")) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"vocabulary file {os.fspath(path)} has no class names (one per line)")
    return _dedupe(names)


def distractor_names(other: str, exclude: Sequence[str] = ()) -> list[str]:
    """The official vocabulary expansion: COCO-Stuff names (``coco-all``: 171, ``coco-stuff``: the 91
    stuff classes) that are not already in ``exclude``; ``none``: nothing."""
    key = other.lower().replace("_", "-")
    if key not in OTHER_SETS:
        raise ValueError(f"unknown 'other' set {other!r}; choose one of {', '.join(OTHER_SETS)}")
    if key == "none":
        return []
    coco = read_classes("coco_stuff_171")
    names = coco if key == "coco-all" else coco[_COCO_THINGS:]
    taken = {n.casefold() for n in exclude}
    return [n for n in names if n.casefold() not in taken]


@dataclass(frozen=True)
class Vocabulary:
    """What the model sees (``names`` = user classes + distractors) and what is reported
    (``class_names`` = user classes, plus ``"other"`` when distractors are used)."""

    user: tuple[str, ...]
    distractors: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [*self.user, *self.distractors]

    @property
    def class_names(self) -> list[str]:
        return [*self.user, OTHER] if self.distractors else list(self.user)


def dataset_classes(dataset: str | os.PathLike) -> list[str]:
    """The class names of a dataset: a bundled class list (``ade20k_150``, ...), a registered dataset
    (``ade20k_sem_seg_val``, your own), a dataset in any format san reads (``--data``), or a training
    folder (its prepared ``data/``)."""
    from san.data.catalog import get_dataset, list_datasets
    from san.data.own import FormatError, read_dataset

    name = os.fspath(dataset)
    if name in list_class_sets():
        return read_classes(name)
    if name in list_datasets():
        return list(get_dataset(name).classes)
    if os.path.exists(name):
        run_data = os.path.join(name, "data", "dataset.json")
        try:
            return read_dataset(run_data if os.path.isfile(run_data) else name).classes
        except FormatError as e:
            raise ValueError(f"--dataset-vocabulary {name}: {e}") from None
    raise ValueError(
        f"unknown dataset vocabulary {name!r}: not a bundled class list ({', '.join(list_class_sets())}), a "
        "registered dataset, or a dataset folder/file"
    )


def build_vocabulary(
    vocabulary: str | Sequence[str] | None = None,
    *,
    file: str | os.PathLike | None = None,
    dataset: str | None = None,
    other: str = "none",
) -> Vocabulary:
    """One vocabulary from exactly one source (text/list, file, or a dataset's class list)."""
    given = [s for s, v in (("vocabulary", vocabulary), ("file", file), ("dataset", dataset)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one vocabulary source (a list/text, a file, or a dataset name), got {given or 'none'}"
        )
    if file is not None:
        user = read_vocabulary_file(file)
    elif dataset is not None:
        user = _dedupe([n.strip() for n in dataset_classes(dataset)])  # verbatim, as the benchmarks use them
    else:
        user = parse_vocabulary(vocabulary)
    if OTHER in (n.casefold() for n in user) and other != "none":
        raise ValueError(f"the class name {OTHER!r} is reserved for distractor pixels when other={other!r}")
    return Vocabulary(tuple(user), tuple(distractor_names(other, user)))


def check_query(query: str, top: int) -> str:
    """A search phrase without surrounding blanks; ValueError for an empty one or ``top < 1``."""
    query = (query or "").strip()
    if not query:
        raise ValueError("the query is empty: give a phrase, e.g. 'a red umbrella'")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    return query
