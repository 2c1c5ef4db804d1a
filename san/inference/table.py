"""The region table: one row per image with its labels, its proposals' class scores and what a region
index keeps of it, as Parquet (what :mod:`san.integrations.ray` writes at cluster scale).

Columns (arrays are raw little-endian bytes of the stated dtype and shape, so any Parquet reader gets
them with ``numpy.frombuffer(value, dtype).reshape(shape)``):

- ``path`` (string): the image; ``error`` (string): why it failed, null when it did not (the other
  columns of a failed row are null);
- ``height``, ``width`` (int32): the image's size, which the labels have;
- ``class_names`` (list<string>): what the label ids index; ``label_classes`` (list<int32>) the ids
  present and ``label_rles`` (list<string>) their masks, COCO RLE counts (``[height, width]``,
  column-major, pycocotools' compressed string): :func:`labels_of` decodes them;
- ``region_scores`` (float32 ``[queries, len(class_names) + 1]``): each proposal's class
  probabilities, no-object last (:meth:`~san.inference.predictor.SANPredictor.region_scores`);
- ``mask_embeddings`` (float16 ``[queries, embed_dim]``), ``areas`` (float16 ``[queries]``), ``mask_logits``
  (float16 ``[queries, grid]``, null when not kept), ``grid``, ``image_size``, ``padded_size``
  (list<int32>), ``queries``, ``embed_dim`` (int32), ``fingerprint`` (string): a
  :class:`~san.inference.index.RegionRecord`, so ``san index --table`` builds the region index from
  the table without the image path (:func:`index_table`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from san.data.rle import rle_decode, rle_encode

from .index import RegionIndex, RegionIndexError, RegionRecord

__all__ = ["TableError", "error_row", "index_table", "labels_of", "prediction_row", "read_rows", "rows_to_table"]


class TableError(ValueError):
    """A region table that is missing, unreadable or not san's; the message says which."""


def _schema() -> Any:
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    return pa.schema(
        [
            ("path", pa.string()),
            ("error", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("class_names", pa.list_(pa.string())),
            ("label_classes", ints),
            ("label_rles", pa.list_(pa.string())),
            ("region_scores", pa.binary()),
            ("mask_embeddings", pa.binary()),
            ("areas", pa.binary()),
            ("mask_logits", pa.binary()),
            ("grid", ints),
            ("image_size", ints),
            ("padded_size", ints),
            ("queries", pa.int32()),
            ("embed_dim", pa.int32()),
            ("fingerprint", pa.string()),
        ]
    )


def _bytes(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def prediction_row(
    path: str, prediction: Any, record: RegionRecord | None, region_scores: np.ndarray | None, fingerprint: str
) -> dict[str, Any]:
    """The row of an image: its :class:`~san.inference.result.Prediction`, and (for the region columns)
    its :class:`RegionRecord` and :meth:`~san.inference.predictor.SANPredictor.region_scores`."""
    labels = prediction.labels
    present = [int(c) for c in np.unique(labels)]
    row: dict[str, Any] = {
        "path": path,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "class_names": list(prediction.class_names),
        "label_classes": present,
        "label_rles": [rle_encode(labels == c)["counts"] for c in present],
        "fingerprint": fingerprint,
    }
    if record is not None and region_scores is not None:
        queries, dim = record.embeddings.shape
        row.update(
            region_scores=_bytes(region_scores, "float32"),
            mask_embeddings=_bytes(record.embeddings, "float16"),
            areas=_bytes(record.areas, "float16"),
            mask_logits=None if record.masks is None else _bytes(record.masks, "float16"),
            grid=list(record.grid),
            image_size=list(record.image_size),
            padded_size=list(record.padded_size),
            queries=int(queries),
            embed_dim=int(dim),
        )
    return row


def error_row(path: str, message: str) -> dict[str, Any]:
    """The row of an image that failed: its path and why."""
    return {"path": path, "error": message}


def rows_to_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A ``pyarrow.Table`` of rows in the table's schema (absent columns null)."""
    import pyarrow as pa

    schema = _schema()
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def read_rows(
    path: str | os.PathLike, columns: Sequence[str] | None = None, *, paths: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of a table file, or of a folder of them (as Ray writes), sorted by image path; ``columns``
    and ``paths`` (the images wanted) limit what is read."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TableError("reading a region table needs pyarrow: pip install -e '.[ray]' in the clone") from None
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: no such table (a Parquet file, or a folder of them)")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise TableError(f"{path}: the folder holds no .parquet files")
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            wanted = None if paths is None else [("path", "in", list(paths))]
            table = pq.read_table(f, columns=list(columns) if columns else None, filters=wanted)
        except Exception as e:  # pyarrow raises its own error types for a foreign or broken file
            raise TableError(f"{f}: not a readable Parquet table ({type(e).__name__}: {e})") from None
        missing = {"path", "error"} - set(table.column_names)
        if missing:
            raise TableError(f"{f}: not a san region table (no column {sorted(missing)[0]!r})")
        rows += table.to_pylist()
    return sorted(rows, key=lambda r: r["path"])


def labels_of(row: dict[str, Any]) -> np.ndarray:
    """The ``[height, width]`` int32 label map of a row (ids into its ``class_names``)."""
    size = [row["height"], row["width"]]
    labels = np.zeros(size, dtype=np.int32)
    for c, counts in zip(row["label_classes"], row["label_rles"]):
        labels[rle_decode({"size": size, "counts": counts})] = c
    return labels


def _record(row: dict[str, Any], masks: bool) -> RegionRecord:
    q, e = row["queries"], row["embed_dim"]
    logits = row["mask_logits"]
    return RegionRecord(
        embeddings=np.frombuffer(row["mask_embeddings"], "<f2").reshape(q, e).astype(np.float16),
        areas=np.frombuffer(row["areas"], "<f2").astype(np.float16),
        masks=np.frombuffer(logits, "<f2").astype(np.float16) if masks and logits is not None else None,
        height=row["height"],
        width=row["width"],
        image_size=tuple(row["image_size"]),
        padded_size=tuple(row["padded_size"]),
        grid=tuple(row["grid"]),
    )


def _chunks(items: list, size: int) -> Iterator[list]:
    for k in range(0, len(items), size):
        yield items[k : k + size]


def index_table(path: str | os.PathLike, index: RegionIndex, *, part_size: int = 256) -> dict[str, int]:
    """Add a table's images to ``index`` (made by the same model; images it holds are skipped), keyed
    by their positions in the table's sorted paths, as ``san index`` keys a sorted folder: the same
    images give the same index; the arrays are read a part at a time. Returns counts: ``added``,
    ``already``, ``failed`` (rows with an error)."""
    rows = read_rows(path, columns=["path", "error", "fingerprint", "queries", "embed_dim"])
    fingerprint = index.meta.get("fingerprint")
    usable, failed = [], 0
    for key, row in enumerate(rows):
        if row["error"] is not None:
            failed += 1
        elif row["queries"] is None:
            raise TableError(f"{row['path']}: the table has no region columns (written without them)")
        elif row["fingerprint"] != fingerprint:
            raise RegionIndexError(
                f"{path} was made by another model (image fingerprint {row['fingerprint']}, the index's "
                f"{fingerprint}): index it into a new folder with the table's model"
            )
        elif row["queries"] != index.meta.get("queries") or row["embed_dim"] != index.meta.get("embed_dim"):
            raise RegionIndexError(f"{path}: its proposals' shapes differ from the index's model")
        else:
            usable.append((f"{key:08d}", row["path"]))
    done = index.indexed()
    todo = [(key, image) for key, image in usable if image not in done]
    for chunk in _chunks(todo, part_size):
        full = {row["path"]: row for row in read_rows(path, paths=[image for _, image in chunk])}
        index.write_part([(key, image, _record(full[image], index.has_masks)) for key, image in chunk])
    return {"added": len(todo), "already": len(usable) - len(todo), "failed": failed}
