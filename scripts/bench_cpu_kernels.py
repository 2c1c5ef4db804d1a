"""Which float32 GEMM wins on which CPU kernel level: ATen's ``F.linear`` (the BLAS torch was built with)
against oneDNN's inner product (``san.modeling.gemm``), on every linear-layer shape of ViT-B/16 SAN.

    python scripts/bench_cpu_kernels.py --json docs/benchmarks/cpu_kernels.json

Each kernel level runs in its own worker process, with every library capped at that level, so that an
AVX2-only or an SSE-only CPU is emulated for ATen, MKL and oneDNN alike:

- ``avx512``: ``ATEN_CPU_CAPABILITY=avx512``, MKL and oneDNN uncapped;
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``;
- ``default``: ``ATEN_CPU_CAPABILITY=default``, ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, ``ONEDNN_MAX_CPU_ISA=SSE41``.

Shapes (rows x in -> out) are those of a 640x853 input (ViT-B/16 CLIP at half resolution: 541 tokens;
the side ViT at full resolution: 2260 tokens; 100 SOS queries) and of text encoding (a template's names
after the shared prefix: ~750 tokens), plus small row counts.
Rounds are interleaved (ATen, oneDNN, ATen, ...); the table gives the best of ``--repeat`` and the
largest difference of each from a float64 product.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

LEVELS = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
SHAPES = {  # name: (rows, in, out)
    "clip qkv": (541, 768, 2304),
    "clip out": (541, 768, 768),
    "clip fc": (541, 768, 3072),
    "clip proj": (541, 3072, 768),
    "sos fc": (100, 768, 3072),
    "side qkv": (2260, 240, 720),
    "side out": (2260, 240, 240),
    "side fc": (2260, 240, 960),
    "side proj": (2260, 960, 240),
    "text qkv": (750, 512, 1536),
    "text fc": (750, 512, 2048),
    "text proj": (750, 2048, 512),
    "rows 1": (1, 512, 512),
    "rows 8": (8, 512, 512),
    "rows 16": (16, 512, 512),
    "rows 64": (64, 512, 512),
}


def worker(repeat: int) -> dict:
    import time

    import torch
    import torch.nn.functional as F
    from bench_tools import machine_meta

    from san.modeling.gemm import cpu_gemm, linear

    torch.manual_seed(0)
    rows = {}
    for name, (m, k, n) in SHAPES.items():
        x, w, b = torch.randn(m, k), torch.randn(n, k) / k**0.5, torch.randn(n)
        exact = F.linear(x.double(), w.double(), b.double())
        calls = {"aten": F.linear, "onednn": linear}
        best = {key: float("inf") for key in calls}
        with torch.no_grad(), cpu_gemm("onednn"):
            err = {key: float((f(x, w, b).double() - exact).abs().max()) for key, f in calls.items()}
            for _ in range(repeat):
                for key, f in calls.items():
                    t = time.perf_counter()
                    f(x, w, b)
                    best[key] = min(best[key], time.perf_counter() - t)
        rows[name] = {
            "shape": [m, k, n],
            "aten_ms": round(best["aten"] * 1e3, 3),
            "onednn_ms": round(best["onednn"] * 1e3, 3),
            "onednn_over_aten": round(best["onednn"] / best["aten"], 3),
            "gflops_onednn": round(2 * m * k * n / best["onednn"] / 1e9, 1),
            "max_err_aten": err["aten"],
            "max_err_onednn": err["onednn"],
        }
    return {**machine_meta(), "env": {k: os.environ.get(k) for k in LEVELS["default"]}, "shapes": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeat)))
        return 0
    results = {}
    for level in args.levels:
        env = {**os.environ, **LEVELS[level]}
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--repeat", str(args.repeat)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results[level] = json.loads(out.strip().splitlines()[-1])
        print(f"\n{level} ({results[level]['isa']}): ms, ATen / oneDNN = ratio")
        for name, r in results[level]["shapes"].items():
            print(f"  {name:10s} {r['aten_ms']:8.2f} / {r['onednn_ms']:8.2f} = {r['onednn_over_aten']:.2f}")
    result = {"command": " ".join(["python", *sys.argv]), "levels": results}
    if args.json:
        from bench_tools import write_json  # torch and san: only the workers time them

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
