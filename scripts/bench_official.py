"""Time san beside the official implementation (MendelXu/SAN) on the same weights and inputs, in one run.

    git clone https://github.com/MendelXu/SAN /tmp/SAN-official        # never committed or imported by san
    python -m venv --system-site-packages /tmp/official-env             # the official code's library versions
    /tmp/official-env/bin/pip install open_clip_torch==2.16.0 timm==0.9.16
    python scripts/bench_official.py --official /tmp/SAN-official --official-python /tmp/official-env/bin/python \\
        --json docs/benchmarks/cpu_official.json

Two worker processes hold the two models: the official one (detectron2 + the official code, built from the
official YAML with random weights, as nothing can be downloaded here) and ours, built from the official
model's state_dict (the same key layout), so both compute with the same weights. The driver sends both the
same seeded images and interleaves the rounds (official, ours; then ours, official), so drifts of the
machine fall on both. Each time is measured inside its worker around the call alone. Reported per image
size, as the median over rounds and as ours / official:

- ``forward``: ``model(inputs)``, the detectron2 contract (``[C, H, W]`` scores), text embeddings cached;
- ``labels``: the label map: the official ``forward`` + arg-max against our ``predict_labels`` (what our
  evaluator runs);
- ``first``: the first call, text encoding of the vocabulary included (both text caches cleared first).

Label agreement (the share of pixels whose labels are equal) is reported for each path. With
``ATEN_CPU_CAPABILITY`` set, both workers run under it (the JSON records what each one reports). On CUDA
(``--device cuda``) the same script measures the GPU, synchronising around each call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_tools import cpu_name, write_json

DATASET = "bench_official_vocabulary"


# -- the workers ---------------------------------------------------------------------------------------------
def _images(sizes: list[tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded uint8 RGB images ``[3, H, W]``: smooth colour fields plus noise, so masks are not uniform."""
    rng = np.random.default_rng(seed)
    out = {}
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(3)])
        noise = rng.normal(0, 0.15, (3, h, w))
        out[f"{h}x{w}"] = ((base + noise) * 90 + 128).clip(0, 255).astype(np.uint8)
    return out


def _official_model(root: str, names: list[str], device: str) -> Any:
    import types

    sys.path.insert(0, root)  # the official package is also called `san`: it must win in this process
    # an editable install of ours maps `san` through a finder on sys.meta_path, ahead of sys.path: drop it here
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    for name in [m for m in sys.modules if m == "san" or m.startswith("san.")]:  # bench_tools imported ours
        del sys.modules[name]
    try:
        import wandb  # noqa: F401
    except ImportError:  # imported by the official training logger only; not needed to run the model
        sys.modules["wandb"] = types.ModuleType("wandb")
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config

    import san as official  # the official release (its package is also named san)

    if not str(Path(official.__file__).resolve()).startswith(str(Path(root).resolve())):
        raise SystemExit(f"bench_official: imported {official.__file__}, not the official code under {root}")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    official.add_san_config(cfg)
    cfg.merge_from_file(str(Path(root) / "configs" / "san_clip_vit_res4_coco.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.SAN.CLIP_PRETRAINED_NAME", ""])  # random CLIP: no download
    cfg.freeze()
    MetadataCatalog.get(DATASET).set(stuff_classes=names)
    return build_model(cfg).eval(), cfg.INPUT.MIN_SIZE_TEST


def _our_model(state_dict: str, device: str) -> Any:
    import san

    cfg = san.get_cfg()
    cfg.merge_from_file(san.config.get_config_file("san_clip_vit_res4_coco"))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.SAN.CLIP_PRETRAINED_NAME", ""])
    return san.build_model(cfg, state_dict).to(device).eval(), cfg.INPUT.MIN_SIZE_TEST


def _resized(image: np.ndarray, min_size: int) -> Any:
    """The test-time input both models get: the short side to ``min_size`` (PIL bilinear, as detectron2)."""
    import torch
    from PIL import Image

    h, w = image.shape[1:]
    scale = min_size / min(h, w)
    size = (round(w * scale), round(h * scale))
    resized = np.asarray(Image.fromarray(image.transpose(1, 2, 0)).resize(size, Image.BILINEAR))
    return torch.from_numpy(resized.transpose(2, 0, 1).copy())


def worker(args: argparse.Namespace) -> None:
    """Answer the driver's JSON lines: build, then time one call per request."""
    import torch

    task = json.loads(Path(args.task).read_text())
    names, device = task["names"], task["device"]
    torch.manual_seed(0)
    if args.worker == "official":
        model, min_size = _official_model(task["official"], names, device)
        torch.save(model.state_dict(), task["state_dict"])
    else:
        model, min_size = _our_model(task["state_dict"], device)
    images = {k: _resized(v, min_size) for k, v in _images([tuple(s) for s in task["sizes"]], task["seed"]).items()}

    def inputs(key: str) -> list[dict]:
        image = images[key].to(device)
        h, w = (int(x) for x in key.split("x"))
        x = {"image": image, "height": h, "width": w}
        if args.worker == "official":
            x["meta"] = {"dataset_name": DATASET}
        else:
            x["vocabulary"] = names
        return [x]

    def clear_text_cache() -> None:
        if args.worker == "official":
            model.ov_classifier.cache.clear()
        else:
            model.ov_classifier.clear_cache()

    def call(op: str, key: str) -> np.ndarray:
        with torch.no_grad():
            if op == "labels" and args.worker == "ours":
                return model.predict_labels(inputs(key))[0]["labels"].cpu().numpy()
            return model(inputs(key))[0]["sem_seg"].argmax(0).cpu().numpy()

    print(
        json.dumps({"ready": True, "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()})
    )
    sys.stdout.flush()
    call("forward", next(iter(images)))  # warm-up: allocator, text cache, kernels
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "first":
            clear_text_cache()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        labels = call(req["op"], req["size"])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        path = Path(task["out"]) / f"{args.worker}_{req['op']}_{req['size']}.npy"
        np.save(path, labels)
        print(json.dumps({"seconds": seconds, "labels": str(path)}))
        sys.stdout.flush()


# -- the driver ----------------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, python: str, kind: str, task: Path, env: dict) -> None:
        cmd = [python, os.path.abspath(__file__), "--worker", kind, "--task", str(task)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"bench_official: a worker exited (code {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, op: str, size: str) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "size": size}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="a checkout of MendelXu/SAN")
    p.add_argument("--official-python", default=sys.executable, help="Python with the official code's libraries")
    p.add_argument("--sizes", nargs="+", default=["480x640", "427x640"], help="image sizes HxW")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the forward and label paths")
    p.add_argument("--first-rounds", type=int, default=1, help="rounds of the first call (first size only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocabulary", default="ade20k_150", help="a bundled class list (default: ADE20K-150)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", choices=["official", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if not args.official or not (Path(args.official) / "san" / "model" / "san.py").is_file():
        p.error("--official must be a checkout of MendelXu/SAN (git clone https://github.com/MendelXu/SAN)")
    from san.assets import read_classes

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    with tempfile.TemporaryDirectory(prefix="bench-official-") as work:
        task = Path(work) / "task.json"
        task.write_text(
            json.dumps(
                {
                    "names": read_classes(args.vocabulary),
                    "device": args.device,
                    "official": os.path.abspath(args.official),
                    "state_dict": str(Path(work) / "official_state_dict.pth"),
                    "sizes": sizes,
                    "seed": 0,
                    "out": work,
                }
            )
        )
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        official = _Worker(args.official_python, "official", task, env)  # writes the state_dict ours loads
        ours = _Worker(sys.executable, "ours", task, env)
        times: dict[str, dict[str, dict[str, list[float]]]] = {}
        agree: dict[str, dict[str, float]] = {}
        plan = [(r, op, size) for r in range(args.rounds) for op in ("forward", "labels") for size in sizes]
        plan += [(r, "first", sizes[0]) for r in range(args.first_rounds)]  # minutes each: the text tower
        for r, op, (h, w) in plan:
            key = f"{h}x{w}"
            pair = [("official", official), ("ours", ours)]
            for name, wk in pair if r % 2 == 0 else pair[::-1]:
                res = wk.run(op, key)
                times.setdefault(op, {}).setdefault(key, {}).setdefault(name, []).append(res["seconds"])
                times[op][key].setdefault("_labels", {})[name] = res["labels"]
            paths = times[op][key].pop("_labels")
            a, b = np.load(paths["official"]), np.load(paths["ours"])
            agree.setdefault(op, {})[key] = float((a == b).mean()) if a.shape == b.shape else 0.0
            print(
                f"round {r + 1} {op:8s} {key}: official {times[op][key]['official'][-1]:.3f} s, "
                f"ours {times[op][key]['ours'][-1]:.3f} s",
                flush=True,
            )
        info = {"official": official.info, "ours": ours.info}
        official.close()
        ours.close()
    rows = {}
    for op, per_size in times.items():
        for key, runs in per_size.items():
            med = {k: float(np.median(v)) for k, v in runs.items()}
            rows.setdefault(op, {})[key] = {
                "official_s": round(med["official"], 4),
                "ours_s": round(med["ours"], 4),
                "ours_over_official": round(med["ours"] / med["official"], 3),
                "labels_equal": round(agree[op][key], 6),
                "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
            }
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_name(),
        "device": args.device,
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "workers": info,
        "vocabulary": args.vocabulary,
        "rounds": args.rounds,
        "first_rounds": args.first_rounds,
        "results": rows,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
