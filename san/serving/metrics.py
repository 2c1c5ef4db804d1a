"""Prometheus metrics of ``san serve``, shared by its processes (API servers and model workers) through
prometheus_client's multiprocess mode: every process writes to one folder, ``/metrics`` sums them.

- ``san_requests_total{status}``: answered requests by HTTP status;
- ``san_request_seconds``: latency of ``/predict`` (histogram);
- ``san_batch_size``: images per model batch (histogram);
- ``san_requests_in_flight``: requests being answered now (the queue depth).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = ["init_metrics", "metrics", "render"]

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METRICS: Any = None


def init_metrics() -> str:
    """Point the multiprocess folder at a fresh temporary folder (in the environment the server's
    processes inherit) unless one is set; returns it."""
    if not os.environ.get(_ENV):
        os.environ[_ENV] = tempfile.mkdtemp(prefix="san-serve-metrics-")
    os.makedirs(os.environ[_ENV], exist_ok=True)
    return os.environ[_ENV]


@dataclass
class _Metrics:
    requests: Any
    latency: Any
    batch_size: Any
    in_flight: Any


def metrics() -> _Metrics:
    """This process's metric objects (created on first use)."""
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge, Histogram

        _METRICS = _Metrics(
            Counter("san_requests", "answered requests by HTTP status", ["status"]),
            Histogram(
                "san_request_seconds", "latency of /predict", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
            ),
            Histogram("san_batch_size", "images per model batch", buckets=(1, 2, 4, 8, 16, 32, 64)),
            Gauge("san_requests_in_flight", "requests being answered", multiprocess_mode="livesum"),
        )
    return _METRICS


def render() -> tuple[bytes, str]:
    """The Prometheus text of every process's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
