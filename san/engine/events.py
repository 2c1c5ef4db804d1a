"""Training metrics: a small history, the console line, ``metrics.json`` and TensorBoard.

Follows detectron2's conventions so existing tools read the files: ``metrics.json`` holds one JSON
object per line with ``iteration`` and scalars (losses, ``total_loss``, ``lr``, ``time``,
``data_time``, ``eta_seconds``; evaluation results as ``<dataset>/sem_seg/mIoU``); losses and
times are medians over the last ``window`` iterations. TensorBoard event files go to the output
folder when ``tensorboard`` is installed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import statistics
from collections import defaultdict, deque
from typing import Any

import torch

__all__ = ["EventWriter", "format_eta"]

logger = logging.getLogger(__name__)


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class EventWriter:
    """Keeps recent scalars and writes them out (only the main process writes files).

    Args:
        output_dir: folder of ``metrics.json`` and the TensorBoard events (None: console only).
        max_iter: total iterations, for the ETA.
        window: iterations over which losses and times are smoothed (median).
        tensorboard: write TensorBoard events when the package is available.
    """

    def __init__(self, output_dir: str | None, max_iter: int, window: int = 20, tensorboard: bool = True) -> None:
        self.output_dir = output_dir
        self.max_iter = max_iter
        self.window = window
        self.history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self.latest: dict[str, float] = {}
        self._tb: Any = None
        if output_dir and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed: metrics go to metrics.json only (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(log_dir=output_dir)

    def put(self, iteration: int, **scalars: float) -> None:
        """Record scalars of one iteration."""
        for k, v in scalars.items():
            self.history[k].append(float(v))
            self.latest[k] = float(v)
        self.latest["iteration"] = iteration

    def state_dict(self) -> dict[str, Any]:
        """The smoothing window's contents, so a resumed run logs the medians an uninterrupted one would."""
        return {"history": {k: list(v) for k, v in self.history.items()}, "latest": dict(self.latest)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (values beyond this writer's window are dropped, oldest first)."""
        self.history.clear()
        for k, values in state.get("history", {}).items():
            self.history[k].extend(float(v) for v in values)
        self.latest = {k: float(v) for k, v in state.get("latest", {}).items()}

    def smoothed(self, key: str) -> float:
        return statistics.median(self.history[key])

    def eta_seconds(self, iteration: int) -> float | None:
        """Seconds left after ``iteration``: the median iteration time times the iterations still to run."""
        if "time" not in self.history:
            return None
        return self.smoothed("time") * (self.max_iter - iteration - 1)

    def write(self, iteration: int, extra: dict[str, float] | None = None) -> None:
        """Log the console line and append the smoothed scalars (plus ``extra``) to the files."""
        smooth = {k: self.smoothed(k) for k in self.history if k != "lr"}
        if "lr" in self.latest:
            smooth["lr"] = self.latest["lr"]
        eta = self.eta_seconds(iteration)
        if eta is not None:
            smooth["eta_seconds"] = eta
        self._console(iteration, smooth, eta)
        self.write_scalars(iteration, {**smooth, **(extra or {})})

    def write_scalars(self, iteration: int, scalars: dict[str, float]) -> None:
        """Append ``{"iteration": ..., **scalars}`` to metrics.json and to TensorBoard."""
        if not self.output_dir:
            return
        with open(os.path.join(self.output_dir, "metrics.json"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": iteration, **scalars}, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, iteration)
            self._tb.flush()

    def _console(self, iteration: int, smooth: dict[str, float], eta: float | None) -> None:
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in smooth.items() if "loss" in k)
        parts = [f"eta: {format_eta(eta)}" if eta is not None else "", f"iter: {iteration}", losses]
        if "time" in smooth:
            parts.append(f"time: {smooth['time']:.4f}  data_time: {smooth.get('data_time', 0.0):.4f}")
        if "lr" in smooth:
            parts.append(f"lr: {smooth['lr']:.4e}")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        logger.info("  ".join(p for p in parts if p))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
