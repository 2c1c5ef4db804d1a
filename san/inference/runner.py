"""Segmenting a whole collection of image files into an output folder, at the model's speed.

:class:`PredictionRun` is what ``san predict`` runs. Images are decoded by a pool of threads ahead of
the model, and results written by another pool behind it, so the model does not wait for files;
images whose model inputs have the same size are batched (never padded together, so batching leaves
each image's labels as one-image runs give them); ``resume`` skips images whose outputs are complete
and were made with the same model, vocabulary and settings; in a multi-process run each process takes
every ``world_size``-th image of the sorted list, so each image is done once, and the output names are
decided over the whole list, as one process would. Each image gets its files or none
(:func:`~san.inference.outputs.write_outputs`); a file that cannot be read, an image that fails in the
model and an output that cannot be written are reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from san.data.images import ImageError, read_image

from .outputs import output_paths, write_outputs

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODING_SUFFIX",
    "OutputFolderGone",
    "PredictionRun",
    "RunInterrupted",
    "RunReport",
    "batch_or_each",
    "merge_reports",
    "open_predictor",
    "run_settings",
]

ENCODING_SUFFIX = ".encoding.safetensors"
# the settings an output records that must match for --resume to keep it
_SAME_FOR_RESUME = (
    "weights",
    "config",
    "overrides",
    "vocabulary",
    "class_names",
    "min_size",
    "max_size",
    "tta",
    "precision",
    "adapter",
)


@dataclass
class RunReport:
    """What one process did: counts, failures with reasons, and where the time went (seconds)."""

    images: int = 0
    written: int = 0
    resumed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    model_s: float = 0.0
    wall_s: float = 0.0
    redone: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`PredictionRun.run`, after the images in flight were written; ``report``
    says what was done."""

    def __init__(self, report: RunReport) -> None:
        super().__init__(f"interrupted after {report.written} image(s)")
        self.report = report


class OutputFolderGone(OSError):
    """The output folder disappeared during :meth:`PredictionRun.run` (deleted, unmounted): the run
    stops at once instead of failing every image that follows; ``report`` says what was done."""

    def __init__(self, folder: Path, report: RunReport) -> None:
        super().__init__(f"the output folder {folder} disappeared during the run")
        self.report = report


def merge_reports(reports: Sequence[RunReport | dict[str, Any]], *, missing: Sequence[str] = ()) -> dict[str, Any]:
    """One summary of the processes' reports (rank order): totals, failures, images per second of
    the whole run (its slowest process), the model's share of the time."""
    rows = [r.as_dict() if isinstance(r, RunReport) else dict(r) for r in reports]
    wall = max((r["wall_s"] for r in rows), default=0.0)
    written = sum(r["written"] for r in rows)
    failures = [f for r in rows for f in r["failures"]] + [{"image": m, "reason": "no such file"} for m in missing]
    return {
        "images": sum(r["images"] for r in rows) + len(missing),
        "written": written,
        "resumed": sum(r["resumed"] for r in rows),
        "redone": sum(r["redone"] for r in rows),
        "failed": len(failures),
        "failures": failures,
        "processes": len(rows),
        "wall_s": round(wall, 3),
        "images_per_s": round(written / wall, 3) if wall > 0 else None,
        "model_s": round(sum(r["model_s"] for r in rows), 3),
        "per_process": [{k: r[k] for k in ("images", "written", "resumed", "model_s", "wall_s")} for r in rows],
    }


def open_predictor(
    weights: str | None,
    config_file: str | None = None,
    *,
    device: str | None = None,
    precision: str = "fp32",
    opts: list[str] | tuple[str, ...] = (),
    tta: bool = False,
    text_cache: str | None = None,
    max_pixels: float = 100e6,
    adapter: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The predictor of the model flags and what to record of it, ``(predictor, {"weights", "config",
    "overrides"})``: without ``config_file`` the weights bring their config (an official name, a model or
    training folder, a checkpoint in a training folder); with it, the config is the given one.
    ``adapter``: a domain adapter (``san adapt``) for the model, recorded too. Raises what
    :meth:`SANPredictor.from_pretrained` raises."""
    from san.inference.predictor import SANPredictor

    model, weights = (weights or "san-vit-b-16", None) if config_file is None else (config_file, weights)
    predictor = SANPredictor.from_pretrained(
        model,
        weights=weights,
        device=device,
        precision=precision,
        opts=list(opts),
        tta=tta or None,
        text_cache_dir=text_cache,
        max_pixels=int(max_pixels),
        adapter=adapter,
    )
    # the overrides are part of the model's identity: they are recorded, and --resume compares them
    meta = {"weights": str(weights or model), "config": model, "overrides": list(opts)}
    return predictor, {**meta, **({"adapter": os.path.abspath(adapter)} if adapter else {})}


def run_settings(
    predictor: Any, meta: dict[str, Any], *, text_cache: str | None = None, vocabulary_file: str | None = None
) -> dict[str, Any]:
    """What every output JSON of a run records: ``meta`` (the model's ``weights``, ``config`` and
    ``overrides``) and the predictor's settings, the keys ``--resume`` compares among them."""
    return {
        **meta,
        "min_size": predictor.min_size,
        "max_size": predictor.max_size,
        "tta": predictor.tta,
        **({"tta_min_sizes": list(predictor.tta_min_sizes), "tta_flip": predictor.tta_flip} if predictor.tta else {}),
        "precision": predictor.precision,
        "device": str(predictor.device),
        "text_cache": text_cache,
        **({"vocabulary_file": vocabulary_file} if vocabulary_file else {}),
    }


class PredictionRun:
    """Segment files into ``out_dir`` with one predictor and one vocabulary.

    Args:
        predictor: a :class:`~san.inference.predictor.SANPredictor`.
        vocabulary: the predictor's :class:`~san.inference.vocabulary.Vocabulary`.
        out_dir: the output folder (created).
        meta: what every output JSON records (weights, config, settings).
        alpha: overlay opacity.
        batch_size: images per model call (same model input size only).
        workers: decoding threads (and as many writing threads, at least one).
        resume: keep complete outputs made with the same settings.
        save_encodings: also write ``NAME.encoding.safetensors`` (:class:`ImageEncoding`) per image.
        rank, world_size: this process's share of the files.
    """

    command = "san predict"  # what the progress bar and the failure lines are labelled with

    def __init__(
        self,
        predictor: Any,
        vocabulary: Any,
        out_dir: str | Path,
        *,
        meta: dict[str, Any],
        alpha: float = 0.55,
        batch_size: int = 1,
        workers: int = 2,
        resume: bool = False,
        save_encodings: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or workers < 0:
            raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.predictor, self.voc, self.out_dir = predictor, vocabulary, Path(out_dir)
        self.meta, self.alpha = meta, alpha
        self.batch_size, self.workers = batch_size, workers
        self.resume, self.save_encodings = resume, save_encodings
        self.rank, self.world_size = rank, world_size

    # -- which files ---------------------------------------------------------------------------------
    def shard(self, files: Sequence[Path], stems: Sequence[str]) -> list[tuple[Path, str]]:
        """This process's ``(file, output stem)`` pairs: every ``world_size``-th, from ``rank``."""
        return list(zip(files, stems))[self.rank :: self.world_size]

    def paths(self, stem: str) -> list[Path]:
        """The files an image gets (its encoding last, when saved)."""
        extra = [self.out_dir / f"{stem}{ENCODING_SUFFIX}"] if self.save_encodings else []
        return [*output_paths(self.out_dir, stem), *extra]

    def _record(self) -> dict[str, Any]:
        return {
            **{k: self.meta.get(k) for k in _SAME_FOR_RESUME},
            "vocabulary": list(self.voc.user),
            "class_names": list(self.voc.class_names),
        }

    def complete(self, stem: str) -> bool | None:
        """True: the image's outputs are all there and were made with these settings; False: some
        are there but made otherwise or unreadable (they are redone); None: none are there."""
        paths = self.paths(stem)
        if not any(p.exists() for p in paths):
            return None
        if not all(p.exists() for p in paths):
            return False
        try:
            record = json.loads(paths[3].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        want = self._record()
        return all(record.get(k) == want[k] for k in want)

    # -- the run -------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[tuple[Path, str]], *, progress: bool = True) -> RunReport:
        """Segment ``jobs`` (from :meth:`shard`); returns this process's report. Ctrl-C stops after the
        images in flight are written (their outputs complete): :class:`RunInterrupted` says how far."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        report = RunReport(images=len(jobs))
        todo = []
        stale = self._remove_stale([stem for _, stem in jobs])
        if stale:
            logger.info("removed %d temporary file(s) left by an earlier run that was killed", stale)
        for path, stem in jobs:
            state = self.complete(stem) if self.resume else None
            if state:
                report.resumed += 1
            else:
                report.redone += state is False
                todo.append((path, stem))
        if report.resumed:
            logger.info("resume: %d image(s) already complete, %d to do", report.resumed, len(todo))
        if report.redone:
            logger.warning("resume: %d image(s) with incomplete or different outputs are done again", report.redone)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc=self.command, unit="img", disable=not progress or len(todo) < 2)
        pool = ThreadPoolExecutor if self.workers else _Inline  # workers=0: all in this thread, in order
        readers = pool(max(1, self.workers), thread_name_prefix="san-read")
        writers = pool(max(1, self.workers), thread_name_prefix="san-write")
        pending: deque[tuple[Future, Path, np.ndarray]] = deque()
        gate = _InterruptGate()
        try:
            with gate:
                for batch in self._batches(self._decoded(todo, readers, report)):
                    t = time.perf_counter()
                    results = self._segment(batch, report)
                    report.model_s += time.perf_counter() - t
                    with gate.held():  # a write handed over and counted, or not at all
                        for (path, stem, image), result in zip(batch, results):
                            if result is not None:
                                pending.append((writers.submit(self._write, stem, path, image, *result), path, image))
                        self._drain(pending, report, bar, keep=2 * self.batch_size + self.workers)
                with gate.held():
                    self._drain(pending, report, bar, keep=0)
        except KeyboardInterrupt:
            readers.shutdown(wait=False, cancel_futures=True)
            self._drain(pending, report, bar, keep=0)  # what is being written gets all its files
            report.wall_s = time.perf_counter() - t0
            raise RunInterrupted(report) from None
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True)
            bar.close()
        report.wall_s = time.perf_counter() - t0
        return report

    def _remove_stale(self, stems: Sequence[str]) -> int:
        """Delete the temporary and backup files that a killed run left for these images (their
        names: :func:`~san.inference.outputs.write_outputs`, :func:`~san.files.atomic_path`)."""
        if not self.out_dir.is_dir():
            return 0
        removed = 0
        for stem in stems:
            for p in self.paths(stem):
                for pattern in (f".{p.name}.tmp*", f".{p.name}.old*", f"..{p.name}.tmp*"):
                    for found in self.out_dir.glob(pattern):
                        found.unlink(missing_ok=True)
                        removed += 1
        return removed

    def _fail(self, report: RunReport, path: Path, reason: str, image: np.ndarray | None = None) -> None:
        size = "" if image is None else f" ({image.shape[1]}x{image.shape[0]})"
        report.failures.append({"image": str(path), "reason": reason})
        from tqdm import tqdm

        # tqdm.write: on a line of its own, above the progress bar, which is redrawn below it
        tqdm.write(f"{self.command}: FAILED {path}{size}: {reason}", file=sys.stderr)

    def _decoded(
        self, todo: Sequence[tuple[Path, str]], pool: ThreadPoolExecutor, report: RunReport
    ) -> Iterator[tuple[Path, str, np.ndarray]]:
        """Decoded images in file order, read ahead by the pool (a bounded window)."""
        window = max(2, 2 * self.batch_size + 2 * self.workers)
        max_pixels = self.predictor.max_pixels
        queue: deque[tuple[Future, Path, str]] = deque()
        items = iter(todo)
        for path, stem in items:
            queue.append((pool.submit(read_image, path, max_pixels), path, stem))
            if len(queue) >= window:
                break
        while queue:
            future, path, stem = queue.popleft()
            nxt = next(items, None)
            if nxt is not None:
                queue.append((pool.submit(read_image, nxt[0], max_pixels), *nxt))
            try:
                yield path, stem, future.result()
            except ImageError as e:
                self._fail(report, path, str(e).removeprefix(f"{path}: "))
            except MemoryError:
                self._fail(report, path, "out of memory while decoding; lower --max-pixels to refuse such images")
            except Exception as e:  # a decoder that crashes on one file: that file is skipped
                self._fail(report, path, f"{type(e).__name__}: {e}")

    def _batches(self, decoded: Iterator[tuple[Path, str, np.ndarray]]) -> Iterator[list]:
        """Group images by model input size into batches of ``batch_size``; with many sizes in flight
        the largest group goes first, so memory stays bounded."""
        groups: dict[tuple, list] = {}
        held = 0
        for item in decoded:
            key = self.predictor.input_size_key(*item[2].shape[:2])
            groups.setdefault(key, []).append(item)
            held += 1
            if len(groups[key]) >= self.batch_size:
                held -= len(groups[key])
                yield groups.pop(key)
            elif held >= 4 * self.batch_size:
                key = max(groups, key=lambda k: len(groups[k]))
                held -= len(groups[key])
                yield groups.pop(key)
        yield from (g for g in groups.values())

    def _segment(self, batch: list, report: RunReport) -> list[tuple | None]:
        """``(prediction, encoding or None)`` per image; an image that fails is reported (None)."""
        results = batch_or_each(self._model, [image for _, _, image in batch])
        out: list[tuple | None] = []
        for (path, _, image), result in zip(batch, results):
            if isinstance(result, BaseException):
                oom = _out_of_memory(result)
                self._fail(report, path, OOM if oom else f"{type(result).__name__}: {result}", image if oom else None)
                result = None
            out.append(result)
        return out

    def _model(self, images: list[np.ndarray]) -> list[tuple]:
        p = self.predictor
        if not self.save_encodings:
            return [
                (pred, None)
                for pred in p.predict_batch(images, self.voc, batch_size=self.batch_size, return_confidence=False)
            ]
        encodings = p.encode_batch(images, batch_size=self.batch_size)
        return [(p.classify(enc, self.voc, return_confidence=False), enc.to("cpu")) for enc in encodings]

    def _write(self, stem: str, path: Path, image: np.ndarray, pred: Any, encoding: Any) -> None:
        extra: dict[Path, Callable[[Path], None]] = {}
        if encoding is not None:
            extra[self.out_dir / f"{stem}{ENCODING_SUFFIX}"] = encoding.save
        write_outputs(self.out_dir, stem, image, pred, {"image": str(path), **self.meta}, self.alpha, extra=extra)

    def _drain(self, pending: deque, report: RunReport, bar: Any, keep: int) -> None:
        while len(pending) > keep:
            future, path, image = pending.popleft()
            try:
                future.result()
                report.written += 1
            except MemoryError:
                self._fail(report, path, OOM, image)
            except (OSError, ValueError, RuntimeError) as e:  # disk full, a file in the way, ...
                if isinstance(e, OSError) and not self.out_dir.is_dir():
                    raise OutputFolderGone(self.out_dir, report) from None
                self._fail(report, path, f"{type(e).__name__}: {e}")
            bar.update(1)


def batch_or_each(run: Callable[[list], list], items: list) -> list:
    """``run(items)``; when that fails (out of memory, a bad image: RuntimeError, MemoryError, ValueError),
    each item alone, so one bad image does not cost its batch: an item that fails alone gets its exception
    in place of its result."""
    try:
        return run(items)
    except (RuntimeError, MemoryError, ValueError) as e:
        if len(items) == 1:
            return [e]
    return [result for item in items for result in batch_or_each(run, [item])]


class _InterruptGate:
    """Ctrl-C (SIGINT) raises at once while the model runs or files are read, but waits until the end
    of a :meth:`held` block, where writes are handed over and counted, so the report counts exactly
    the images whose files are on disk and an inline write (``workers=0``) is never cut in half. Only
    the main thread receives signals; elsewhere, and where SIGINT is ignored, the gate does nothing."""

    def __init__(self) -> None:
        self._depth = 0
        self._deferred = False
        self._previous: Any = None

    def __enter__(self) -> _InterruptGate:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is signal.default_int_handler:
                self._previous = previous
                signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._depth:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        """A block that Ctrl-C does not cut; an interrupt that came during it is raised at its end."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._deferred:
            self._deferred = False
            raise KeyboardInterrupt


class _Inline:
    """An executor that runs each call at once in the calling thread (``workers=0``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # delivered by result(), as a pool's future does
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


OOM = "out of memory; downscale the image, or lower --max-pixels to refuse such images up front"


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, (MemoryError, torch.OutOfMemoryError))
