"""``san serve`` under concurrent load, against ``predictor.predict_batch`` in one process, same machine.

    python scripts/bench_serve.py --model vit-b --clients 1 8 32 --requests 64 --json docs/benchmarks/cpu_serve.json

The model is SAN ViT-B/16 with random weights (``--model vit-b``; the time does not depend on the values) or
the tiny test-sized one (``--model tiny``), built and saved by scripts/bench_own_data.py's ``write_model``.
The image: scikit-image's ``astronaut`` (512 x 512), vocabulary of 10 names. For each client count, ``--requests``
requests are sent by that many threads (after 2 warm-up requests) and the wall time gives images/s; the
latencies give p50 and p99. The reference: the same predictor in this process, ``predict_batch`` of the
server's batch size, over the same number of images. The server runs with its defaults but ``--max-batch-size``.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_own_data import write_model
from bench_tools import machine_meta
from PIL import Image

VOCABULARY = "person, sky, rocket, flag, helmet, glove, suit, window, wall, grass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_server(model: Path, data: bytes, clients: list[int], requests_n: int, batch: int, tmp: Path) -> list[dict]:
    import requests

    port = _free_port()
    log = open(tmp / "server.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "san",
        "serve",
        "--weights",
        str(model),
        "--port",
        str(port),
        "--max-batch-size",
        str(batch),
        "--max-concurrency",
        "1000",
        "--timeout",
        "3600",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text()[-2000:])
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)

        def one(_: int) -> float:
            t0 = time.perf_counter()
            r = requests.post(
                f"{url}/predict", files={"image": ("a.png", data)}, data={"vocabulary": VOCABULARY}, timeout=3600
            )
            r.raise_for_status()
            return time.perf_counter() - t0

        for i in range(2):
            one(i)
        rows = []
        for n in clients:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                latencies = list(pool.map(one, range(requests_n)))
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "path": "server",
                    "clients": n,
                    "requests": requests_n,
                    "images_per_s": requests_n / wall,
                    "p50_s": _percentile(latencies, 50),
                    "p99_s": _percentile(latencies, 99),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def bench_in_process(model: Path, data: bytes, requests_n: int, batch: int) -> dict:
    from san import SANPredictor

    predictor = SANPredictor.from_pretrained(str(model), device="cpu")
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    predictor.predict_batch([image] * 2, VOCABULARY, batch_size=2)  # warm-up (and the text embeddings)
    times = []
    t0 = time.perf_counter()
    done = 0
    while done < requests_n:
        n = min(batch, requests_n - done)
        s = time.perf_counter()
        predictor.predict_batch([image] * n, VOCABULARY, batch_size=n)
        times.append((time.perf_counter() - s) / n)
        done += n
    wall = time.perf_counter() - t0
    row = {
        "path": "predict_batch (in process)",
        "batch": batch,
        "requests": requests_n,
        "images_per_s": requests_n / wall,
        "per_image_s_median": statistics.median(times),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "vit-b"], default="vit-b")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="the server's --max-batch-size and the reference's batch")
    p.add_argument("--json", default="")
    args = p.parse_args()
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, format="PNG")
    data = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        write_model(args.model, model)
        rows = [bench_in_process(model, data, args.requests, args.batch)]
        rows += bench_server(model, data, args.clients, args.requests, args.batch, Path(tmp))
    meta = machine_meta(model=args.model)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
