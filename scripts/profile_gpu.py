"""Where SAN's time goes, per stage and per kernel (``scripts/gpu_check.sh``'s profile step).

    python scripts/profile_gpu.py --device cuda --models vitb vitl --batches 1 32 --precisions fp32 bf16 fp16 \\
        --json profile.json

For each model (random weights: time does not depend on the values; ``scripts/benchmark.py``'s models, photos
and cached random name embeddings), batch size and precision: the inference label path
(``SAN.predict_labels``, 150 names) timed per stage (CLIP, side adapter, recognition head, through forward
hooks; the rest: preprocessing, classifier, label map) and as a whole (images/s), the top kernels of
one call from ``torch.profiler`` (self device time). The training step is timed by ``scripts/benchmark.py``'s
train section in the same GPU run. On the CPU it runs the same at tiny sizes (``--size 64``) as the rehearsal of
the GPU run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_tools import machine_meta, make_names, timeit
from benchmark import MODELS, build, fill_random_embeddings, make_inputs

import san
from san.devices import autocast

STAGES = {
    "clip_s": "clip_visual_extractor",
    "side_adapter_s": "side_adapter_network",
    "recognition_head_s": "clip_rec_head",
}


def _stages(model: san.SAN, inputs: list[dict], device: torch.device, precision: str, repeat: int) -> dict:
    """Median seconds of the whole label path and of each stage inside it (forward hooks on the model's
    stage modules, synchronised); ``rest_s`` is the remainder: preprocessing, the classifier, the label map."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent: dict[str, float] = {}
    handles = []
    for name, attr in STAGES.items():
        module = getattr(model, attr)

        def before(_module, _args, name=name):
            sync()
            spent[name] = spent.get(name, 0.0) - time.perf_counter()

        def after(_module, _args, _out, name=name):
            sync()
            spent[name] += time.perf_counter()

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    runs: dict[str, list[float]] = {k: [] for k in [*STAGES, "whole_label_path_s"]}
    try:
        with torch.no_grad(), autocast(device, precision):
            model.predict_labels(inputs, with_scores=False)  # warm-up
            for _ in range(repeat):
                spent.clear()
                t = timeit(lambda: model.predict_labels(inputs, with_scores=False), device, 0, 1)["median_s"]
                runs["whole_label_path_s"].append(t)
                for name in STAGES:
                    runs[name].append(spent[name])
    finally:
        for h in handles:
            h.remove()
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["rest_s"] = out["whole_label_path_s"] - sum(out[k] for k in STAGES)
    return out


def _kernels(model: san.SAN, inputs: list[dict], device: torch.device, precision: str, top: int = 25) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), autocast(device, precision), profile(activities=activities) as prof:
        model.predict_labels(inputs, with_scores=False)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3} for e in events]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["vitb"], choices=sorted(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    names = make_names(150)
    rows = []
    for key in args.models:
        model = build(key, device)
        fill_random_embeddings(model, names)  # the text tower is not what is profiled
        for precision in args.precisions:
            for batch in args.batches:
                inputs = make_inputs(args.size, batch, names)
                row = {"model": key, "precision": precision, "batch": batch, "size": args.size}
                try:
                    row.update(_stages(model, inputs, device, precision, args.repeat))
                    row["img_per_s"] = batch / row["whole_label_path_s"]
                    row["kernels"] = _kernels(model, inputs, device, precision)
                except Exception as e:  # one failing configuration leaves the others' results
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
    info = machine_meta(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0) if device.type == "cuda" else None)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
