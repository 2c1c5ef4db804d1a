"""Whole-process start-up times of the ``san`` command (help, version, usage errors): each command is
run ``--repeat`` times as a fresh process and its wall time reported as min / median / max.

    python scripts/bench_startup.py --repeat 10 --json docs/benchmarks/cpu_startup.json

Target: ``san --help`` and usage errors well under a second (torch is imported only when work starts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "san --help": ["--help"],
    "san --version": ["--version"],
    "san predict --help": ["predict", "--help"],
    "san train --help": ["train", "--help"],
    "san predict (usage error)": ["predict"],
    "import torch (for scale)": None,
}


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    exe = shutil.which("san")
    base = [exe] if exe else [sys.executable, "-m", "san"]
    rows = []
    for name, rest in COMMANDS.items():
        cmd = [sys.executable, "-c", "import torch"] if rest is None else [*base, *rest]
        _time(cmd)  # warm the file cache
        times = [_time(cmd) for _ in range(args.repeat)]
        rows.append({"command": name, "min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)})
        print(f"{name:<28} min {min(times):.3f} s  median {statistics.median(times):.3f} s  max {max(times):.3f} s")
    machine = platform.processor() or platform.machine()
    env = {"python": sys.version.split()[0], "machine": machine, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    env["entry"] = base[0]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "repeat": args.repeat, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
