"""ONNX export measured: onnxruntime (CPU provider) beside PyTorch on the same input, and the graph's own
test-time resize beside SANPredictor's, in one run.

    python scripts/bench_onnx.py --json docs/benchmarks/cpu_onnx.json

Speed: the ViT-B/16 model (random weights, no download; 150 ADE names with random class embeddings),
one 640x852 photo, fed already resized (the graph exported with ``resize=False``), timed in
interleaved rounds: onnxruntime, ``SAN.forward`` plus arg-max (the computation the graph holds), and
``SAN.predict_labels`` (san's exact label path). Agreement: the official tiny model of
``shared/golden/san_tiny_official_v2.pt`` (calibrated weights, labels that vary over an image) on the
golden images, the graph with its own resize against ``SANPredictor``: fraction of equal labels and
the mean score difference relative to the score size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tools import interleaved, make_names  # noqa: E402
from benchmark import build, fill_random_embeddings, make_inputs  # noqa: E402

import san  # noqa: E402
from san.inference.onnx import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "san_tiny_official_v2.pt"
log = logging.getLogger("bench_onnx")


def session(path: Path, threads: int):  # noqa: ANN201 (onnxruntime's type)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def speed(args: argparse.Namespace, work: Path) -> dict:
    model = build("vitb", torch.device("cpu"))
    names = make_names(args.vocab)
    fill_random_embeddings(model, names)
    x = make_inputs(args.size, 1, names)[0]
    t = time.perf_counter()
    path = export_onnx(model, names, work / "vitb.onnx", resize=False, example_size=tuple(x["image"].shape[1:]))
    export_s = time.perf_counter() - t
    sess = session(path, torch.get_num_threads())
    feed = {"image": x["image"][None].numpy()}

    def ort_run() -> tuple[np.ndarray, np.ndarray]:
        return sess.run(None, feed)

    def torch_forward() -> tuple[np.ndarray, np.ndarray]:
        best, labels = model([x])[0]["sem_seg"].max(0)
        return labels.numpy(), best.numpy()

    def torch_labels() -> tuple[np.ndarray, np.ndarray]:
        out = model.predict_labels([x])[0]
        return out["labels"].numpy(), out["scores"].numpy()

    runs = {"onnxruntime": ort_run, "torch_forward": torch_forward, "torch_labels": torch_labels}
    with torch.no_grad():
        results = {k: f() for k, f in runs.items()}  # warm-up, and the outputs compared
        times = interleaved(runs, args.repeat)
    ref_labels, ref_best = results["torch_forward"]
    rows = []
    for k, ts in times.items():
        labels, best = results[k]
        rows.append(
            {
                "path": k,
                "median_s": statistics.median(ts),
                "min_s": min(ts),
                "n": len(ts),
                "vs_torch_forward": statistics.median(ts) / statistics.median(times["torch_forward"]),
                "label_agree": float((labels == ref_labels).mean()),
                "max_abs_score_diff": float(np.abs(best - ref_best).max()),
            }
        )
    size = os.path.getsize(path) / 2**20
    return {
        "model": "vitb",
        "size": list(x["image"].shape[1:]),
        "vocab": len(names),
        "export_s": export_s,
        "file_mb": size,
        "rows": rows,
    }


def agreement(work: Path) -> dict:
    import json as _json

    from skimage import data

    from san.inference.predictor import SANPredictor

    if not GOLDEN.is_file():
        return {"skipped": f"{GOLDEN} not found"}
    golden = torch.load(GOLDEN, weights_only=True)
    clip = work / "tiny-clip.json"
    clip.write_text(_json.dumps(golden["open_clip_model_config"]))
    overrides = list(golden["san_config_overrides"])
    overrides[overrides.index("MODEL.SAN.CLIP_MODEL_NAME") + 1] = str(clip)
    cfg = san.get_cfg()
    cfg.merge_from_list([*overrides, "MODEL.SAN.CLIP_PRETRAINED_NAME", ""])
    model = san.build_model(cfg, golden["state_dict"]).eval()
    names, lo, hi = golden["vocabulary"], 250, 1000
    sess = session(export_onnx(model, names, work / "tiny.onnx", min_size=lo, max_size=hi), torch.get_num_threads())
    predictor = SANPredictor(model, device="cpu", min_size=lo, max_size=hi)
    photos = []
    for im in golden["images"]:  # the golden images, and the same transposed (portrait / landscape)
        photo = im.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        photos += [photo, np.ascontiguousarray(photo.transpose(1, 0, 2))]
    photos += [data.astronaut(), data.chelsea(), data.coffee(), np.ascontiguousarray(data.coffee()[::3, ::3])]
    rows = []
    for photo in photos:
        labels, scores = sess.run(None, {"image": photo.transpose(2, 0, 1)[None].copy()})
        pred = predictor.predict(photo, names, return_confidence=True)
        rows.append(
            {
                "size": list(photo.shape[:2]),
                "classes": int(len(np.unique(pred.labels))),
                "label_agree": float((labels == pred.labels).mean()),
                "rel_score_diff": float(np.abs(scores - pred.confidence).mean() / np.abs(pred.confidence).mean()),
            }
        )
    return {"model": "golden v2 tiny", "min_size": lo, "max_size": hi, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=640, help="short edge of the timed image (4:3 landscape)")
    p.add_argument("--vocab", type=int, default=150)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: torch's default)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    with tempfile.TemporaryDirectory() as d:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "env": {
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
                "san": san.__version__,
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
            },
            "speed": speed(args, Path(d)),
            "agreement": agreement(Path(d)),
        }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
