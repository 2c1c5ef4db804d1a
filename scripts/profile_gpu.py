"""Where SAN's time goes, per stage and per kernel (``scripts/gpu_check.sh``'s profile step).

    python scripts/profile_gpu.py --device cuda --models vitb vitl --batches 1 32 --precisions fp32 bf16 fp16 \\
        --json profile.json

For each model (random weights: time does not depend on the values), batch size and precision: the
inference label path (``SAN.predict_labels``, 150 cached names) timed per stage (CLIP, side adapter,
recognition head, post-processing; synchronised around each) and as a whole (images/s), the top kernels of
one call from ``torch.profiler`` (self device time), and the training step (forward + losses + backward,
AMP in half precision as the official recipe) with its peak memory. On the CPU it runs the same at tiny sizes
(``--size 64``) as the rehearsal of the GPU run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import san
from san.devices import autocast

CONFIGS = {"vitb": "san_clip_vit_res4_coco", "vitl": "san_clip_vit_large_res4_coco"}


def _model(key: str, device: torch.device) -> san.SAN:
    cfg = san.get_cfg()
    cfg.merge_from_file(san.get_config_file(CONFIGS[key]))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
    torch.manual_seed(0)
    return san.build_model(cfg).to(device)


def _inputs(batch: int, size: int, names: list[str], device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size * 4 // 3), generator=g, dtype=torch.uint8).float()
    return [{"image": image.to(device), "height": size, "width": size * 4 // 3, "vocabulary": names}] * batch


def _timed(fn, device: torch.device, repeat: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _stages(model: san.SAN, inputs: list[dict], device: torch.device, precision: str, repeat: int) -> dict:
    names = inputs[0]["vocabulary"]
    with torch.no_grad(), autocast(device, precision):
        classifier = model.encode_vocabulary(names)
        images, sizes = model.preprocess(inputs)
        side = model.side_adapter_network
        levels = side.deep_supervision_idxs[-1:]
        keep = [*side.clip_layers_needed, model.rec_layer]
        clip_input = images
        if model.asymmetric_input:
            clip_input = torch.nn.functional.interpolate(images, scale_factor=model.clip_resolution, mode="bilinear")
        clip = model.clip_visual_extractor(clip_input, keep=keep)
        masks, biases = side(images, clip, levels)
        out = {
            "preprocess_s": _timed(lambda: model.preprocess(inputs), device, repeat),
            "clip_s": _timed(lambda: model.clip_visual_extractor(clip_input, keep=keep), device, repeat),
            "side_adapter_s": _timed(lambda: side(images, clip, levels), device, repeat),
            "recognition_head_s": _timed(
                lambda: model.clip_rec_head(clip, model.rec_layer, biases, normalize=True), device, repeat
            ),
            "whole_label_path_s": _timed(lambda: model.predict_labels(inputs, with_scores=False), device, repeat),
        }
        del classifier, masks, sizes
    return out


def _kernels(model: san.SAN, inputs: list[dict], device: torch.device, precision: str, top: int = 25) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), autocast(device, precision), profile(activities=activities) as prof:
        model.predict_labels(inputs, with_scores=False)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3} for e in events]


def _train_step(model: san.SAN, batch: int, size: int, device: torch.device, precision: str, repeat: int) -> dict:
    """One training step as the trainer runs it: the model's weighted losses (AMP in half precision, a
    gradient scaler for fp16), backward; 171 COCO-Stuff-sized names, 4 target masks per image."""
    names = [f"class {i}" for i in range(171)]
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(batch):
        masks = torch.zeros(4, size, size, dtype=torch.bool)
        for k in range(4):
            masks[k, k * size // 4 : (k + 1) * size // 4] = True
        image = torch.randint(0, 256, (3, size, size), generator=g).float().to(device)
        labels = torch.randint(0, 171, (4,), generator=g).to(device)
        data.append({"image": image, "vocabulary": names, "instances": {"labels": labels, "masks": masks.to(device)}})
    half = precision != "fp32"
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast(device, precision) if half else nullcontext():
            losses = model(data)
        scaler.scale(sum(losses.values())).backward()
        for p in params:
            p.grad = None

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = _timed(step, device, repeat)
    finally:
        model.eval()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"train_step_s": seconds, "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["vitb"], choices=sorted(CONFIGS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--train-batch", type=int, default=4, help="images per training step (official: 4 per GPU)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    names = [f"class {i}" for i in range(150)]
    rows = []
    for key in args.models:
        model = _model(key, device).eval()
        for precision in args.precisions:
            for batch in args.batches:
                inputs = _inputs(batch, args.size, names, device)
                row = {"model": key, "precision": precision, "batch": batch, "size": args.size}
                try:
                    row.update(_stages(model, inputs, device, precision, args.repeat))
                    row["img_per_s"] = batch / row["whole_label_path_s"]
                    row["kernels"] = _kernels(model, inputs, device, precision)
                except Exception as e:  # one failing configuration leaves the others' results
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
            row = {"model": key, "precision": precision, "section": "train", "batch": args.train_batch}
            try:
                row.update(_train_step(model, args.train_batch, args.size, device, precision, max(2, args.repeat // 2)))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
