"""SAN on Ray Data: batch inference over a cluster that schedules the work (``pip install -e '.[ray]'``).

:class:`SANSegmenter` is a callable class for ``Dataset.map_batches``: each actor loads the model and
encodes the vocabulary once, then labels batches of images. It writes what ``san predict`` writes
(``output=``, a folder every actor can reach) and returns the rows of the region table
(:mod:`san.inference.table`: labels as RLE, each proposal's class scores, and what the region index
keeps, so ``san index --table`` builds the index from it without the image path)::

    import ray
    from san.integrations.ray import SANSegmenter, image_dataset

    ds = image_dataset("s3://bucket/photos/")        # or local folders, files, globs
    rows = ds.map_batches(SANSegmenter, fn_constructor_kwargs={"weights": "san-vit-b-16",
                          "vocabulary": "building, road, tree"}, batch_size=16, concurrency=8, num_gpus=1)
    rows.write_parquet("s3://bucket/photos-regions/")

:func:`segment_images` does those steps on local paths, with the checks ``san predict`` makes first, the
table written whole (complete or absent) and the run's summary. An image that cannot be decoded or
fails in the model becomes a row with its ``error``; the run goes on. Input batches may hold ``bytes``
(``ray.data.read_binary_files(..., include_paths=True)``: decoded here as ``san predict`` decodes
files), ``image`` (decoded arrays, e.g. ``ray.data.read_images``) or only ``path`` (a file every actor
can read); ``stem`` names the outputs (default: the file's stem).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from san.data.images import ImageError, read_image, read_image_bytes, to_rgb_array
from san.files import atomic_path
from san.inference.index import RegionRecord
from san.inference.outputs import check_output_dir, collect_inputs, output_stems, write_outputs
from san.inference.runner import batch_or_each, open_predictor, run_settings
from san.inference.table import error_row, prediction_row, read_rows, rows_to_table
from san.inference.vocabulary import build_vocabulary

__all__ = ["SANSegmenter", "image_dataset", "segment_images"]

SUMMARY = "san_predict_summary.json"


class SANSegmenter:
    """``Dataset.map_batches`` callable: a batch of images (columns ``path`` and ``bytes``, ``image``
    or nothing more; optionally ``stem``) -> a ``pyarrow.Table`` of region-table rows, one per image.

    Args:
        weights, config_file, opts, device, precision, text_cache, max_pixels: the model, as
            ``san predict``'s flags of the same names take it (default device: CUDA when the actor
            has a GPU).
        vocabulary: class names (a comma-separated string or a list); None: the model's own classes.
        other: COCO-Stuff distractors (``none``, ``coco-all``, ``coco-stuff``).
        batch_size: images per forward (those with the same model input size).
        output: also write ``san predict``'s files per image into this folder.
        alpha: overlay opacity of those files.
        regions: fill the region columns (scores, embeddings, masks); False: labels only.
        masks: keep the proposals' mask logits in the rows (an index built from them draws regions).
        threads: torch threads of this actor (default: torch's own choice).
        adapter: a domain adapter of the model (``san adapt``'s folder or file).
    """

    def __init__(
        self,
        weights: str | None = "san-vit-b-16",
        vocabulary: str | Sequence[str] | None = None,
        *,
        config_file: str | None = None,
        opts: Sequence[str] = (),
        device: str | None = None,
        precision: str = "fp32",
        other: str = "none",
        batch_size: int = 8,
        output: str | os.PathLike | None = None,
        alpha: float = 0.55,
        regions: bool = True,
        masks: bool = True,
        text_cache: str | None = None,
        max_pixels: float = 100e6,
        threads: int | None = None,
        adapter: str | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.predictor, meta = open_predictor(
            weights,
            config_file,
            device=device,
            precision=precision,
            opts=list(opts),
            text_cache=text_cache,
            max_pixels=max_pixels,
            adapter=adapter,
        )
        if regions and self.predictor.tta:
            raise ValueError("the region columns hold one view per image: turn TTA off, or pass regions=False")
        self.voc = self.predictor.vocabulary(vocabulary, other)
        self.predictor.classifier(self.voc)  # the text tower runs once, here
        self.meta = run_settings(self.predictor, meta, text_cache=text_cache)
        self.batch_size, self.alpha, self.regions, self.masks = batch_size, alpha, regions, masks
        self.output = None if output is None else Path(output)
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
        self.fingerprint = self.predictor.model.image_fingerprint()

    def __call__(self, batch: dict[str, Any]) -> Any:
        paths = [str(p) for p in batch["path"]]
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [Path(p).stem for p in paths]
        rows: list[dict[str, Any] | None] = [None] * len(paths)
        images: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            try:
                images[i] = self._decode(batch, i, path)
            except ImageError as e:
                rows[i] = error_row(path, str(e).removeprefix(f"{path}: "))
        for i, enc in self._encode(images).items():
            if isinstance(enc, BaseException):
                rows[i] = error_row(paths[i], f"{type(enc).__name__}: {enc}")
                continue
            try:
                rows[i] = self._row(paths[i], stems[i], images[i], enc)
            except (OSError, ValueError, RuntimeError, MemoryError) as e:  # a write that failed, ...
                rows[i] = error_row(paths[i], f"{type(e).__name__}: {e}")
        return rows_to_table(rows)  # type: ignore[arg-type]

    def _decode(self, batch: dict[str, Any], i: int, path: str) -> np.ndarray:
        limit = self.predictor.max_pixels
        if "bytes" in batch:
            return read_image_bytes(bytes(batch["bytes"][i]), path, limit)
        if "image" in batch:
            return to_rgb_array(np.asarray(batch["image"][i]), limit)
        return read_image(path, limit)

    def _encode(self, images: dict[int, np.ndarray]) -> dict[int, Any]:
        """Encodings by position; an image the model fails on (alone) gets its exception."""
        run = partial(self.predictor.encode_batch, batch_size=self.batch_size)
        return dict(zip(images, batch_or_each(run, list(images.values()))))

    def _row(self, path: str, stem: str, image: np.ndarray, encoding: Any) -> dict[str, Any]:
        pred = self.predictor.classify(encoding, self.voc, return_confidence=False)
        if self.output is not None:
            write_outputs(self.output, stem, image, pred, {"image": path, **self.meta}, self.alpha)
        record = scores = None
        if self.regions:
            record = RegionRecord.from_encoding(encoding, masks=self.masks)
            scores = self.predictor.region_scores(encoding, self.voc)
        return prediction_row(path, pred, record, scores, self.fingerprint)


def image_dataset(inputs: str | Sequence[str]) -> Any:
    """A Ray dataset of images: object-store or ``scheme://`` URIs are read as bytes by Ray
    (``path``, ``bytes``); local files, folders and globs are listed here (``path`` absolute, ``stem``
    the output name ``san predict`` gives) and read by the actors. Unmatched local inputs are a
    FileNotFoundError."""
    import ray.data

    specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(s) for s in inputs]
    remote = [s for s in specs if "://" in s]
    if remote:
        if len(remote) < len(specs):
            raise ValueError("give either URIs or local paths, not both")
        return ray.data.read_binary_files(remote, include_paths=True)
    files, missing = collect_inputs(specs)
    if missing:
        raise FileNotFoundError(f"no such file, folder or matching image: {', '.join(missing)}")
    items = [{"path": os.path.abspath(f), "stem": s} for f, s in zip(files, output_stems(files))]
    return ray.data.from_items(items)


def _fresh(path: str | os.PathLike, what: str) -> Path:
    out = check_output_dir(path)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{what} {out} already holds files: give a new folder")
    return out


def segment_images(
    inputs: str | Sequence[str],
    *,
    output: str | os.PathLike | None = None,
    table: str | os.PathLike | None = None,
    weights: str | None = "san-vit-b-16",
    vocabulary: str | Sequence[str] | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    threads_per_actor: int | None = None,
    batch_size: int = 8,
    images_per_call: int | None = None,
    **segmenter: Any,
) -> dict[str, Any]:
    """Segment images on the Ray cluster this process is connected to (``ray.init()``: a local one
    when none is running, ``RAY_ADDRESS`` for a cluster): ``san predict``'s files into ``output``
    and/or the region table into ``table`` (a new local folder of Parquet files, complete or absent).
    Everything that needs no model is checked first. Returns the run's summary (written to
    ``output/san_predict_summary.json`` as ``san predict`` does).

    Args:
        actors: model replicas (default: one per GPU, else one).
        gpus_per_actor: default 1 where the cluster has GPUs, else 0.
        threads_per_actor: torch threads of a CPU actor (default: the cluster's CPUs over the actors).
        batch_size: images per forward; ``images_per_call`` images per ``map_batches`` call (default
            ``2 * batch_size``).
        segmenter: more :class:`SANSegmenter` arguments (``config_file``, ``opts``, ``precision``, ...).
    """
    import ray

    if output is None and table is None:
        raise ValueError("give output= (san predict's files), table= (the region table), or both")
    if vocabulary is not None:
        build_vocabulary(vocabulary)  # an empty or repeated vocabulary fails here, before Ray starts
    out = None if output is None else check_output_dir(output)
    table_dir = None if table is None else _fresh(table, "table")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    gpus_per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else gpus_per_actor
    actors = actors or (max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1)
    if not gpus_per_actor and threads_per_actor is None:
        threads_per_actor = max(1, int(resources.get("CPU", 1)) // actors)
    t0 = time.perf_counter()
    dataset = image_dataset(inputs)
    kwargs = {**segmenter, "weights": weights, "vocabulary": vocabulary, "batch_size": batch_size, "output": output}
    kwargs["regions"] = table is not None
    rows = dataset.map_batches(
        SANSegmenter,
        fn_constructor_kwargs={**kwargs, "threads": threads_per_actor},
        batch_size=images_per_call or 2 * batch_size,
        concurrency=actors,
        num_gpus=gpus_per_actor,
        num_cpus=1,
    )
    if table_dir is not None:
        tmp = table_dir.with_name(f".{table_dir.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            rows.write_parquet(str(tmp))
            table_dir.mkdir(parents=True, exist_ok=True)
            for f in tmp.iterdir():
                os.replace(f, table_dir / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done = read_rows(table_dir, columns=["path", "error"])
    else:
        done = rows.select_columns(["path", "error"]).take_all()
    wall = time.perf_counter() - t0
    failures = [{"image": r["path"], "reason": r["error"]} for r in done if r["error"] is not None]
    written = len(done) - len(failures)
    summary = {
        "images": len(done),
        "written": written,
        "failed": len(failures),
        "failures": failures,
        "actors": actors,
        "gpus_per_actor": gpus_per_actor,
        "wall_s": round(wall, 3),
        "images_per_s": round(written / wall, 3) if wall > 0 else None,
        "output": None if out is None else str(out),
        "table": None if table_dir is None else str(table_dir),
        "weights": weights,
    }
    if out is not None:
        with atomic_path(out / SUMMARY) as tmp_summary:
            Path(tmp_summary).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
