"""A region index of an image collection, and search in it by phrase.

SAN's image path never sees a class name, so a collection can be encoded once and searched for any
phrase later: every image's mask proposals and their mask embeddings are stored, and a query is
scored against all of them with the model's own classifier (the prompt templates, the background row,
the softmax over the query, an optional scope of competing class names and the background). An image
ranks by its best-matching region (proposals whose mask covers no pixel of the image are ignored).

On disk (a folder): ``index.json`` (format, version, the model's image fingerprint and text key, its
config and weights, the number of proposals and the embedding width) and parts ``part-NNNNNNNN/``
written whole and renamed into place, each holding up to ``part_size`` images: ``embeddings.npy``
(float16 ``[images x Q, E]``, memory-mapped when searching), ``areas.npy`` (float16 ``[images x Q]``,
the fraction of the image each proposal covers), ``masks.npy`` (float16 proposal logits on the
side-adapter grid, flat; logits, since the official path resizes them before the threshold; not in an
index built without masks) and
``part.json`` (the images: path, size, where their masks lie). A part is named by the position of its
first image in the sorted input list, so processes of a sharded build never collide and a resumed
build only adds parts.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from san.modeling.semantic import resize_mask_logits

from .vocabulary import check_query

__all__ = ["RegionIndex", "RegionIndexError", "RegionRecord", "SearchHit", "check_query"]

FORMAT, VERSION = "san-region-index", 1
INDEX_FILE = "index.json"


class RegionIndexError(ValueError):
    """An index folder is missing, foreign, corrupt, empty or made by another model; the message says which."""


@dataclass(frozen=True)
class SearchHit:
    """One ranked image: its path, the best region's score (the query's probability under the
    classifier), and where that region lies in the index."""

    image: str
    score: float
    part: str
    row: int
    region: int


def _model_identity(predictor: Any) -> dict[str, Any]:
    model = predictor.model
    return {
        "fingerprint": model.image_fingerprint(),
        "text_key": model.ov_classifier.cache_key(),
        "queries": int(model.side_adapter_network.num_queries),
    }


class _Part:
    """One part folder, its arrays memory-mapped."""

    def __init__(self, directory: Path) -> None:
        self.name = directory.name
        try:
            info = json.loads((directory / "part.json").read_text(encoding="utf-8"))
            self.images: list[dict[str, Any]] = info["images"]
            # copy-on-write: a writable view for torch.from_numpy; the file is never changed
            self.embeddings = np.load(directory / "embeddings.npy", mmap_mode="c")
            self.areas = np.load(directory / "areas.npy", mmap_mode="r")
            masks = directory / "masks.npy"  # absent in an index built without masks
            self.masks = np.load(masks, mmap_mode="r") if masks.exists() else None
        except (OSError, ValueError, KeyError) as e:
            raise RegionIndexError(
                f"{directory}: unreadable index part ({type(e).__name__}: {e}); delete it and index again"
            ) from None
        if self.embeddings.shape[0] != self.areas.shape[0] or self.embeddings.shape[0] % max(1, len(self.images)):
            raise RegionIndexError(f"{directory}: its arrays do not match its image list; delete it and index again")


@dataclass
class RegionRecord:
    """What an index keeps of one image's encoding (its first view), in the stored precision: the
    proposals' embeddings ``[Q, E]`` and image shares ``[Q]`` (float16), their mask logits on the
    side-adapter grid (float16, flat ``[Q * h * w]``; None when not kept), and the sizes
    post-processing needs. :meth:`from_encoding` is the one rule that turns an encoding into it."""

    embeddings: np.ndarray
    areas: np.ndarray
    masks: np.ndarray | None
    height: int
    width: int
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    grid: tuple[int, int]

    @classmethod
    def from_encoding(cls, encoding: Any, *, masks: bool = True) -> RegionRecord:
        v = encoding.views[0]
        logits = v.mask_logits.float()
        grid = tuple(int(s) for s in logits.shape[-2:])
        on_image = _grid_size(grid, v.image_size, v.padded_size)
        inside = resize_mask_logits(logits, v.image_size, v.padded_size, on_image) > 0
        return cls(
            embeddings=v.mask_embeddings.float().cpu().numpy().astype(np.float16),
            areas=inside.float().mean((-2, -1)).cpu().numpy().astype(np.float16),
            masks=logits.cpu().numpy().astype(np.float16).ravel() if masks else None,
            height=int(encoding.output_size[0]),
            width=int(encoding.output_size[1]),
            image_size=(int(v.image_size[0]), int(v.image_size[1])),
            padded_size=(int(v.padded_size[0]), int(v.padded_size[1])),
            grid=(grid[0], grid[1]),
        )

    def info(self) -> dict[str, Any]:
        """The sizes, as a part's image list records them."""
        return {
            "height": self.height,
            "width": self.width,
            "image_size": list(self.image_size),
            "padded_size": list(self.padded_size),
            "grid": list(self.grid),
        }


class RegionIndex:
    """An index folder (see the module docstring): open it with ``RegionIndex(path)``; build one with
    :meth:`create` and :meth:`write_part` (what ``san index`` does through
    :class:`~san.inference.index_run.IndexRun`)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        if not path.is_file():
            raise RegionIndexError(f"{self.directory} is not a san index (no {INDEX_FILE}); build one with `san index`")
        try:
            self.meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RegionIndexError(f"{path}: not readable as JSON ({e})") from None
        if self.meta.get("format") != FORMAT:
            raise RegionIndexError(f"{path} is not a san region index (format {self.meta.get('format')!r})")
        if self.meta.get("version") != VERSION:
            raise RegionIndexError(f"{path}: index version {self.meta.get('version')}, this san reads {VERSION}")
        self.parts = [_Part(d) for d in sorted(self.directory.glob("part-*")) if d.is_dir()]

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, directory: str | os.PathLike, predictor: Any, *, weights: str, config_yaml: str, masks: bool | None = None
    ) -> RegionIndex:
        """Open ``directory`` for adding images with ``predictor``'s model: a new index, or an existing
        one made by the same model (else :class:`RegionIndexError`, before any work). ``masks``: store
        the proposals' mask logits (default for a new index; 80% of its size), so region pictures need no
        model; without them :meth:`region_mask` encodes the image again. None: as the index was made."""
        directory = Path(directory)
        if predictor.tta:
            raise RegionIndexError("an index holds one view per image: build it without TTA")
        identity = _model_identity(predictor)
        path = directory / INDEX_FILE
        if path.exists():
            index = cls(directory)
            what = index._difference(identity)
            if what:
                raise RegionIndexError(
                    f"{directory} was built by another model ({what} differ): index into a new folder, or "
                    f"use its model ({index.meta.get('weights')})"
                )
            if masks is not None and masks != index.has_masks:
                made = "with" if index.has_masks else "without"
                raise RegionIndexError(
                    f"{directory} was built {made} masks: add to it the same way, or use a new folder"
                )
            return index
        from san.files import atomic_path

        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            **identity,
            "embed_dim": int(predictor.model.ov_classifier.text_projection.shape[1]),
            "weights": weights,
            "config_yaml": config_yaml,
            "min_size": predictor.min_size,
            "max_size": predictor.max_size,
            "masks": True if masks is None else bool(masks),
        }
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return cls(directory)

    @property
    def has_masks(self) -> bool:
        """Whether the parts store mask logits (else region pictures re-encode the image)."""
        return bool(self.meta.get("masks", True))

    def indexed(self) -> set[str]:
        """Paths of the images already in the index."""
        return {im["path"] for part in self.parts for im in part.images}

    def write_part(self, items: Sequence[tuple[str, str, Any]], *, rank: int = 0) -> None:
        """Add images as one part, written whole and renamed into place: ``(key, path, encoding)``
        each (an :class:`~san.inference.encoding.ImageEncoding`, or the :class:`RegionRecord` of one),
        ``key`` the image's zero-padded position in the sorted input list (the first names the part),
        ``rank`` the writing process (it names the temporary folder)."""
        items = sorted(items, key=lambda item: item[:2])
        embeddings, areas, masks, images, offset = [], [], [], [], 0
        for key, path, enc in items:
            record = enc if isinstance(enc, RegionRecord) else RegionRecord.from_encoding(enc)
            if record.masks is None and self.has_masks:
                raise RegionIndexError(f"{path}: its record holds no mask logits, and {self.directory} stores them")
            embeddings.append(record.embeddings)
            areas.append(record.areas)
            if self.has_masks:
                masks.append(record.masks)
            images.append({"key": key, "path": path, **record.info(), "mask_offset": offset})
            offset += math.prod(record.grid) * len(record.areas)
        name = f"part-{items[0][0]}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp-r{rank}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            np.save(tmp / "embeddings.npy", np.concatenate(embeddings))
            np.save(tmp / "areas.npy", np.concatenate(areas))
            if self.has_masks:
                np.save(tmp / "masks.npy", np.concatenate(masks))
            (tmp / "part.json").write_text(json.dumps({"images": images}) + "\n", encoding="utf-8")
            if final.exists():  # a part of an interrupted earlier run under the same name: replaced whole
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.parts = [p for p in self.parts if p.name != name] + [_Part(final)]

    def remove_stale(self, rank: int = 0, world_size: int = 1) -> int:
        """Delete the temporary part folders that killed builds left: those of process ``rank``, and
        on rank 0 those of ranks this run does not have; returns how many."""
        stale = []
        for d in self.directory.glob(".part-*.tmp-r*"):
            r = d.name.split(".tmp-r")[1].split("-")[0]
            if d.is_dir() and r.isdigit() and (int(r) == rank or (rank == 0 and int(r) >= world_size)):
                stale.append(d)
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        return len(stale)

    # -- searching -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(p.images) for p in self.parts)

    def size_bytes(self) -> int:
        """Bytes on disk."""
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())

    def _difference(self, identity: dict[str, Any]) -> str | None:
        """What differs between the model that built the index and ``identity`` (of
        :func:`_model_identity`), in words; None if nothing does."""
        for key, value in identity.items():
            if self.meta.get(key) != value:
                return {"fingerprint": "image weights", "text_key": "text tower or templates"}.get(key, key)
        return None

    def check_model(self, predictor: Any) -> None:
        """Refuse a model other than the one that built the index (image path or text tower)."""
        what = self._difference(_model_identity(predictor))
        if what:
            raise RegionIndexError(
                f"{self.directory} was built by another model ({what} differ): search it with the model that "
                f"built it ({self.meta.get('weights')})"
            )

    def check_not_empty(self) -> None:
        """Refuse an index with no images (before a model is loaded for it)."""
        if not len(self):
            raise RegionIndexError(f"{self.directory} holds no images yet; add some with `san index`")

    @torch.no_grad()
    def search(
        self, predictor: Any, query: str, *, vocabulary: Any = None, top: int = 10, exhaustive: bool = False
    ) -> list[SearchHit]:
        """The ``top`` images whose best region matches ``query`` most, best first.

        ``vocabulary`` (names, or a comma-separated string) scopes the competition: a region's score is
        the query's probability in the softmax over the query, these names and the background.
        The fast path bounds every region's score from two float16 products over the memory-mapped
        embeddings (see :meth:`_bounded`), then scores images exactly in the order of their bounds
        until no remaining bound can beat the ``top``-th exact score; ``exhaustive=True`` scores every
        region exactly (the reference the fast path is tested against)."""
        query = check_query(query, top)
        self.check_not_empty()
        self.check_model(predictor)
        scope = [] if vocabulary is None else predictor.vocabulary(vocabulary).names
        names = [query, *[n for n in scope if n != query]]
        classifier = predictor.classifier(names).float().cpu()  # [1 + S + 1, E]: query first (adapted rows too)
        images = [(part, row) for part in self.parts for row in range(len(part.images))]
        if exhaustive:
            log_p, regions = self._exact(classifier, images)
            chosen = torch.argsort(log_p, descending=True, stable=True)[:top].tolist()
        else:
            chosen, log_p, regions = self._bounded(classifier, images, top)
        return [
            SearchHit(
                images[i][0].images[images[i][1]]["path"],
                math.exp(float(log_p[i])),
                images[i][0].name,
                images[i][1],
                int(regions[i]),
            )
            for i in chosen
            if log_p[i] > -math.inf
        ]

    def _exact(self, classifier: Tensor, images: Sequence[tuple[_Part, int]]) -> tuple[Tensor, Tensor]:
        """Each image's best region and its log-probability ``[N]`` (float64, -inf: no region covers
        a pixel). Images rank by log-probability: probabilities near 1 that float32 rounds to 1.0 stay
        apart. The logits are float64 products of the stored float16 embeddings with the classifier, so
        the scores (and the ranks) are the same on every CPU, and the bound's margins cover them."""
        q = self.meta["queries"]
        best = torch.full((len(images),), -math.inf, dtype=torch.float64)
        regions = torch.zeros(len(images), dtype=torch.long)
        by_part: dict[int, list[int]] = {}
        for n, (part, _) in enumerate(images):
            by_part.setdefault(id(part), []).append(n)
        for ns in by_part.values():
            part = images[ns[0]][0]
            for s in range(0, len(ns), 1024):  # bounded memory: 1024 images at a time
                block = ns[s : s + 1024]
                rows = (np.asarray([images[n][1] for n in block])[:, None] * q + np.arange(q)).ravel()
                emb = torch.from_numpy(np.asarray(part.embeddings[rows], dtype=np.float64))
                log_p = (emb @ classifier.double().T).log_softmax(-1)[:, 0]
                log_p[torch.from_numpy(np.asarray(part.areas[rows], dtype=np.float32)) <= 0] = -math.inf
                best[block], regions[block] = log_p.view(-1, q).max(1)
        return best, regions

    def _region_bounds(self, classifier: Tensor) -> list[Tensor]:
        """Per part, ``[images x Q]`` float64 log-probabilities that no region's exact score exceeds (-inf
        for regions that cover no pixel). With ``x = e . (query - background)`` and
        ``y = e . (mean of the S scope rows - query)`` for a region's embedding ``e``, the query's
        probability ``1 / (1 + exp(-x) + sum_s exp(l_s - l_query))`` is at most
        ``1 / (1 + exp(-x) + S exp(y))`` (a mean of exponentials is at least the exponential of the
        mean); two float16 products give ``x`` and ``y``, their rounding covered by margins."""
        scope = classifier.shape[0] - 2
        a = classifier[0] - classifier[-1]
        b = classifier[1:-1].mean(0) - classifier[0] if scope else None

        def margin(v: Tensor) -> float:  # >= 4x the float16 error of a unit embedding's product (_half_accurate)
            return float(v.norm()) * 1.01 * 2.0**-8

        bounds = []
        for part in self.parts:
            x = _half_matvec(part.embeddings, a).double() + margin(a)
            terms = [torch.zeros_like(x), -x]  # log of the bound: -log(1 + exp(-x) + S exp(y)), without overflow
            if b is not None:
                terms.append(math.log(scope) + _half_matvec(part.embeddings, b).double() - margin(b))
            bound = -torch.logsumexp(torch.stack(terms), 0)
            bound[torch.from_numpy(np.asarray(part.areas, dtype=np.float32)) <= 0] = -math.inf
            bounds.append(bound)
        return bounds

    def _image_bounds(self, classifier: Tensor) -> Tensor:
        """``[N]`` log-probabilities no image's exact score (:meth:`_exact`) can exceed: each image's best
        region bound (the exact scores are float64 products of the same float16 embeddings, so the
        margins of :meth:`_region_bounds` cover them with no further slack)."""
        q = self.meta["queries"]
        return torch.cat([b.view(-1, q).amax(1) for b in self._region_bounds(classifier)])

    def _bounded(
        self, classifier: Tensor, images: Sequence[tuple[_Part, int]], top: int
    ) -> tuple[list[int], Tensor, Tensor]:
        """The fast path of :meth:`search`: the chosen images in rank order, and exact scores and
        log-probabilities and regions (valid where scored). Images are scored exactly in the order of
        their bounds (:meth:`_image_bounds`), in blocks that double, until the ``top``-th exact score
        beats the bound of every image not yet scored."""
        bound = self._image_bounds(classifier)
        order = torch.argsort(bound, descending=True, stable=True)
        log_p = torch.full((len(images),), -math.inf, dtype=torch.float64)
        regions = torch.zeros(len(images), dtype=torch.long)
        done, block = 0, max(2 * top, 64)
        while done < len(images):
            batch = order[done : done + block].tolist()
            log_p[batch], regions[batch] = self._exact(classifier, [images[n] for n in batch])
            done += len(batch)
            block *= 2
            kth = torch.topk(log_p[order[:done]], min(top, done)).values[-1]
            if done >= top and done < len(images) and float(kth) > float(bound[order[done]]):
                break  # every image not scored is bounded below the top-th score
        scored = torch.sort(order[:done]).values  # in index order, so ties rank as in the exhaustive search
        ranked = scored[torch.argsort(log_p[scored], descending=True, stable=True)]
        return ranked[:top].tolist(), log_p, regions

    def region_mask(self, hit: SearchHit, predictor: Any = None) -> np.ndarray:
        """The hit's region ``[H, W]`` bool at the image's size (the official resize of the proposal:
        logits, threshold 0). An index without masks needs ``predictor`` (the index's model) and
        encodes the image again; an image that changed since it was indexed raises
        :class:`~san.data.images.ImageError`."""
        part = next(p for p in self.parts if p.name == hit.part)
        im = part.images[hit.row]
        gh, gw = im["grid"]
        if part.masks is not None:
            start = im["mask_offset"] + hit.region * gh * gw
            logits = torch.from_numpy(np.asarray(part.masks[start : start + gh * gw], dtype=np.float32))
        else:
            if predictor is None:
                raise RegionIndexError(
                    f"{self.directory} was built without masks: pass its model's predictor to encode the image again"
                )
            self.check_model(predictor)
            with torch.no_grad():
                enc = predictor.encode(hit.image)
            v = enc.views[0]
            if (list(v.image_size), list(v.padded_size), list(enc.output_size)) != (
                im["image_size"],
                im["padded_size"],
                [im["height"], im["width"]],
            ):
                from san.data.images import ImageError

                h, w = enc.output_size
                raise ImageError(f"now {w}x{h}, indexed at {im['width']}x{im['height']}")
            logits = v.mask_logits[hit.region].float().cpu()
        out = resize_mask_logits(
            logits.reshape(1, gh, gw), tuple(im["image_size"]), tuple(im["padded_size"]), (im["height"], im["width"])
        )
        return (out[0] > 0).numpy()


def _half_matvec(embeddings: np.ndarray, direction: Tensor) -> Tensor:
    """``embeddings @ direction`` ``[N]`` float32 of a float16 ``[N, E]`` array without converting it:
    a float16 product where the backend accumulates in float32 (checked once), else in float32 chunks."""
    if _half_accurate():
        return (torch.from_numpy(embeddings) @ direction.half()).float()
    return torch.cat(
        [
            torch.from_numpy(np.asarray(embeddings[s : s + 65536], np.float32)) @ direction
            for s in range(0, len(embeddings), 65536)
        ]
    )


@functools.cache
def _half_accurate() -> bool:
    """True if this backend's float16 matrix-vector product is as accurate as float32 accumulation
    makes it (checked once on seeded unit rows against float32): the bound's margin assumes it."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(1024, 512, generator=gen), dim=1).half()
    direction = torch.randn(512, generator=gen) * 10
    error = ((rows @ direction.half()).float() - rows.float() @ direction).abs().max()
    return float(error) <= 2.0**-10 * float(direction.norm())


def _grid_size(grid: tuple[int, int], image_size: Any, padded_size: Any) -> tuple[int, int]:
    """The side-grid cells that the image (without padding) covers, at least one each way."""
    return tuple(max(1, round(g * i / p)) for g, i, p in zip(grid, image_size, padded_size))  # type: ignore[return-value]
