"""A domain adapter: class embeddings learned from a few labelled images, beside a frozen SAN.

SAN's masks come from the side adapter and CLIP classifies them against the class names' text
embeddings; on an unusual domain the masks are mostly right and the classification is what fails. An
:class:`Adapter` replaces the text embedding of each adapted class by one learned from shots
(``san adapt``, :func:`san.engine.adapt.adapt`), and optionally the background row, while the base
model stays as it is. In use, each name of a vocabulary that the adapter knows takes its adapted row;
every other name keeps its text embedding, so adapted classes mix with free text, and a vocabulary with
no adapted name is classified exactly as by the base model (the background row too is only replaced
when an adapted name is in use).

The file is safetensors: ``rows`` ``[K, E]`` (float32, one per adapted name, before the classifier's
normalisation), optionally ``background`` ``[E]``, and JSON metadata: format, version, names, mode, the
base model's image fingerprint and text-tower key (a different base model is refused by name), the
shots' provenance and the settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from san.files import FileFormatError, read_safetensors, write_safetensors

__all__ = ["ADAPTER_FILE", "Adapter", "AdapterError", "as_adapter"]

FORMAT, VERSION = "san-adapter", 1
ADAPTER_FILE = "adapter.safetensors"  # its name inside an adapter folder (what san adapt writes)


class AdapterError(ValueError):
    """An adapter file that is missing, corrupt, foreign, or made for another base model."""


@dataclass
class Adapter:
    """Adapted class embeddings for one base model (see the module docstring)."""

    names: list[str]
    rows: Tensor  # [K, E] float32, the class embeddings that replace the names' text embeddings
    fingerprint: str  # the base model's image fingerprint
    text_key: str  # the base model's text tower and templates
    mode: str = "prototype"
    background: Tensor | None = None  # [E], replaces the background row while an adapted name is in use
    base: str = ""  # the base model as it was given (for messages)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise AdapterError(f"an adapter's class names must be distinct, got {self.names}")
        if self.rows.dim() != 2 or self.rows.shape[0] != len(self.names):
            raise AdapterError(f"rows {tuple(self.rows.shape)} do not fit {len(self.names)} names")
        if self.background is not None and self.background.shape != self.rows.shape[1:]:
            raise AdapterError(f"background {tuple(self.background.shape)} does not fit rows {tuple(self.rows.shape)}")

    def row(self, name: str) -> Tensor:
        """The adapted embedding ``[E]`` of a name."""
        return self.rows[self.names.index(name)]

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the safetensors file atomically."""
        tensors = {"rows": self.rows.detach().float().cpu()}
        if self.background is not None:
            tensors["background"] = self.background.detach().float().cpu()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "names": list(self.names),
            "mode": self.mode,
            "fingerprint": self.fingerprint,
            "text_key": self.text_key,
            "base": self.base,
            "meta": self.meta,
        }
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Adapter:
        """Read an adapter file, or the ``adapter.safetensors`` of a folder ``san adapt`` wrote."""
        path = Path(path)
        if path.is_dir():
            path = path / ADAPTER_FILE
        if not path.exists():
            raise AdapterError(f"{path}: no such adapter (give the file or the folder san adapt wrote)")
        try:
            tensors, meta = read_safetensors(path)
        except FileFormatError as e:
            raise AdapterError(f"{path}: not a readable adapter ({e})") from None
        if meta.get("format") != FORMAT:
            raise AdapterError(f"{path} is not a san adapter (format {meta.get('format')!r}); make one with san adapt")
        if meta.get("version") != VERSION:
            raise AdapterError(f"{path}: adapter version {meta.get('version')}, this san reads {VERSION}")
        try:
            return cls(
                names=[str(n) for n in meta["names"]],
                rows=tensors["rows"].float(),
                fingerprint=str(meta["fingerprint"]),
                text_key=str(meta["text_key"]),
                mode=str(meta.get("mode", "")),
                background=tensors["background"].float() if "background" in tensors else None,
                base=str(meta.get("base", "")),
                meta=dict(meta.get("meta") or {}),
            )
        except (KeyError, TypeError) as e:
            raise AdapterError(f"{path}: incomplete san adapter (missing {e})") from None

    # -- use -----------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Refuse a base model other than the one the adapter was made for (image path or text tower)."""
        theirs = {"image weights": model.image_fingerprint(), "text tower": model.ov_classifier.cache_key()}
        ours = {"image weights": self.fingerprint, "text tower": self.text_key}
        differ = [k for k in ours if ours[k] != theirs[k]]
        if differ:
            raise AdapterError(
                f"this adapter was made for another base model ({' and '.join(differ)} differ): use it with "
                f"{self.base or 'the model it was made with'}, or adapt this model with san adapt"
            )
        if self.rows.shape[1] != model.ov_classifier.text_projection.shape[1]:
            raise AdapterError(f"the adapter's embeddings ({self.rows.shape[1]}) do not fit this model")

    def selected(self, names: Sequence[str], adapted: bool | Sequence[str] = True) -> list[str]:
        """The names of ``names`` that take adapted rows: all the adapter knows (``True``), none
        (``False``), or those of the list ``adapted`` (an unknown name there is a ValueError)."""
        if adapted is True:
            return [n for n in names if n in self.names]
        if adapted is False:
            return []
        wanted = [adapted] if isinstance(adapted, str) else list(adapted)
        unknown = [n for n in wanted if n not in self.names]
        if unknown:
            raise ValueError(f"adapted={unknown} names classes the adapter does not have (it has {self.names})")
        return [n for n in names if n in wanted]

    def classifier(self, model: Any, names: Sequence[str], adapted: bool | Sequence[str] = True) -> Tensor:
        """The scaled classifier ``[C + 1, E]`` of ``names`` with the selected names' adapted rows (and
        the adapted background row when one is in use); with none selected, the base model's own."""
        chosen = set(self.selected(names, adapted))
        if not chosen:
            return model.encode_vocabulary(list(names))
        clf = model.ov_classifier
        rows = clf.embed_names(list(names)).clone()
        for i, name in enumerate(names):
            if name in chosen:
                rows[i] = self.row(name).to(rows)
        return clf.assemble(rows, None if self.background is None else self.background.to(rows))


def as_adapter(adapter: Adapter | str | os.PathLike | None) -> Adapter | None:
    """An :class:`Adapter`, or one loaded from a path."""
    if adapter is None or isinstance(adapter, Adapter):
        return adapter
    return Adapter.load(adapter)
