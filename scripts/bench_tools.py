"""Measuring and reporting helpers of ``scripts/benchmark.py``: timers, peak memory, tables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from san.assets import read_classes

H100_BF16_DENSE_TFLOPS = 989.0
log = logging.getLogger("benchmark")


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (``platform.processor()`` where lscpu is missing)."""
    import platform

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def machine_meta(**extra: object) -> dict:
    """What a benchmark's JSON records of its run: the command, the CPU, its ISA setting, torch."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **extra,
    }


def write_json(path: str | os.PathLike, result: dict) -> None:
    """Write a benchmark's ``result`` as indented JSON at ``path``, making its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory (MB) used during a block: CUDA max allocated, or the peak RSS rise on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak_mb = (max(self.peak, _rss()) - self.base) / 2**20


def timeit(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> dict[str, float]:
    """Median and p90 wall time (s) of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median_s": statistics.median(times), "p90_s": p90, "warmup_s": first, "n": repeat}


def interleaved(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Wall times (s) of each call in ``repeat`` rounds taken in turn (A B C, A B C, ...), so that
    load from other processes hits all alike; warm-up is the caller's."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def cpu_memory_pass(script: str, args: argparse.Namespace, rows: list[dict], argv: list[str] | None) -> None:
    """Re-run infer/train in a child whose glibc returns every large block to the OS on free.

    With glibc's default, freed large tensors stay in the heap and later peaks are invisible in
    the RSS; a fixed mmap threshold fixes that but slows every allocation, so timings come from
    this process and peak memory from the child.
    """
    sections = [s for s in args.sections if s in ("infer", "train")]
    if not sections:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mem.json"
        cli = list(sys.argv[1:] if argv is None else argv)
        cmd = [sys.executable, script, *cli, "--memory-only", "--json", str(out), "--sections", *sections]
        log.info("peak-memory pass in a child process")
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        child = json.loads(out.read_text())["rows"]
    peaks = {(r["section"], r["model"], r["size"], r["vocab"], r["mode"]): r.get("peak_mb") for r in child}
    for r in rows:
        if r["section"] in ("infer", "train"):
            r["peak_mb"] = peaks.get((r["section"], r["model"], r["size"], r["vocab"], r["mode"]), r.get("peak_mb"))


def add_peak_fraction(rows: list[dict]) -> None:
    """Fraction of the H100's dense bf16 peak reached by image throughput (2 x fvcore MACs per image)."""
    gmacs = {r["model"]: r["gflops_fvcore"] for r in rows if r["section"] == "flops" and r["size"] == "640x864"}
    for r in rows:
        if r.get("img_per_s") and r["model"] in gmacs and r["section"] == "infer" and r["size"] == "640x852":
            r["tflops_per_s"] = 2 * gmacs[r["model"]] * r["img_per_s"] / 1e3  # image path; semantic inference excluded
            r["h100_peak_frac"] = r["tflops_per_s"] / H100_BF16_DENSE_TFLOPS


def table(rows: list[dict]) -> str:
    cols = [
        "section",
        "model",
        "size",
        "vocab",
        "mode",
        "median_s",
        "p90_s",
        "vs_ref",
        "img_per_s",
        "peak_mb",
        "label_agree",
        "proxy_agree",
        "score_maxdiff",
        "h100_peak_frac",
    ]
    fmt = {
        "proxy_agree": "{:.4f}",
        "median_s": "{:.4f}",
        "p90_s": "{:.4f}",
        "vs_ref": "{:.2f}",
        "img_per_s": "{:.2f}",
        "peak_mb": "{:.0f}",
        "label_agree": "{:.4f}",
        "score_maxdiff": "{:.1e}",
        "h100_peak_frac": "{:.3f}",
    }
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["section"] == "flops":
            lines.append(
                f"| flops | {r['model']} | {r['size']} | {r['vocab']} | fvcore GFLOPs (MACs) {r['gflops_fvcore']:.1f} |"
            )
            continue
        if "skipped" in r:
            lines.append(
                f"| {r['section']} | {r['model']} | {r['size']} | {r['vocab']} | {r['mode']} "
                f"| skipped: {r['skipped']} |"
            )
            continue
        cells = [fmt[c].format(r[c]) if c in fmt and r.get(c) is not None else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_names(n: int) -> list[str]:
    """``n`` distinct class names: ADE-150 / ADE-847 names, then pairs of them."""
    if n <= 150:
        return read_classes("ade20k_150")[:n]
    base = read_classes("ade20k_847")
    names = list(dict.fromkeys(base))
    i = 0
    while len(names) < n:
        names.append(f"{base[i % len(base)]} next to {base[(i // len(base) + 1 + i) % len(base)]}")
        names = list(dict.fromkeys(names))
        i += 1
    return names[:n]
