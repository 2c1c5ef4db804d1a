"""Encode once / classify many, and ``san predict`` over a folder: where the time goes, in one run.

    python scripts/bench_predict.py --json docs/benchmarks/cpu_predict.json

1. ``classify`` against ``predict`` (ViT-B/16, random weights, 150 ADE names with cached random
   embeddings, one 640x852 photo; interleaved rounds): the share of a full prediction that labelling
   an encoded image costs, and the size of its encoding file (float32 and float16 storage).
2. ``san predict``'s runner (:class:`san.inference.runner.PredictionRun`, what the command runs) on a
   folder of JPEG photos with the ViT-B/16 model: wall time against the time inside the model calls
   measured in the same run, with the background threads (``--workers 4``) and without (``0``).
3. The same with the tiny test model on many small images, where files, pictures and JSON are most of
   the work.
4. ``san search`` over an index of ``--index-images`` (10,000) images in ViT-B/16's real shapes: one
   photo encoded at 640, its proposals stored once per image with random unit mask embeddings (parts
   written by :meth:`san.inference.index.RegionIndex.write_part`, as ``san index`` writes them): bytes
   per image, and the time of a search (query text encoding included), alone and scoped by 150 names.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tools import interleaved, make_names  # noqa: E402
from benchmark import build, fill_random_embeddings  # noqa: E402

import san  # noqa: E402
from san.inference.encoding import EncodedView, ImageEncoding  # noqa: E402
from san.inference.index import RegionIndex  # noqa: E402
from san.inference.predictor import SANPredictor  # noqa: E402
from san.inference.runner import PredictionRun  # noqa: E402

log = logging.getLogger("bench_predict")


def photos(n: int, short: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` scikit-image photos, cropped and resized to varied sizes around ``short`` (4:3 and 3:4)."""
    from skimage import data

    base = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = base[i % len(base)]
        h, w = (short, short * 4 // 3) if i % 3 else (short * 4 // 3, short)
        if i % 2:  # half of them keep one shape (they batch), the others vary
            h, w = h + int(rng.integers(-short // 8, short // 8)), w + int(rng.integers(-short // 8, short // 8))
        out.append(np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)))
    return out


def encode_classify(args: argparse.Namespace, work: Path) -> dict:
    model = build("vitb", torch.device("cpu"))
    names = make_names(args.vocab)
    fill_random_embeddings(model, names)
    predictor = SANPredictor(model, device="cpu")
    photo = photos(1, 640)[0]
    encoding = predictor.encode(photo)
    runs = {
        "predict": lambda: predictor.predict(photo, names),
        "encode": lambda: predictor.encode(photo),
        "classify": lambda: predictor.classify(encoding, names),
    }
    for f in runs.values():
        f()
    times = interleaved(runs, args.repeat)
    med = {k: statistics.median(v) for k, v in times.items()}
    assert np.array_equal(predictor.classify(encoding, names).labels, predictor.predict(photo, names).labels)
    sizes = {}
    for half in (False, True):
        path = work / f"enc{int(half)}.safetensors"
        encoding.save(path, half=half)
        sizes["float16" if half else "float32"] = os.path.getsize(path)
    return {
        "image": list(photo.shape[:2]),
        "vocab": len(names),
        "median_s": med,
        "min_s": {k: min(v) for k, v in times.items()},
        "classify_vs_predict": med["classify"] / med["predict"],
        "encoding_bytes": sizes,
    }


def folder_run(
    predictor: SANPredictor, names: list[str], images: list[np.ndarray], work: Path, workers: int, batch: int
) -> dict:
    src = work / f"in_{len(list(work.iterdir()))}"
    src.mkdir()
    files = []
    for i, im in enumerate(images):
        files.append(src / f"{i:04d}.jpg")
        Image.fromarray(im).save(files[-1], quality=90)
    voc = predictor.vocabulary(names)
    meta = {"weights": "random", "config": "bench", "min_size": predictor.min_size, "max_size": predictor.max_size}
    out = work / f"out_{src.name}"
    run = PredictionRun(predictor, voc, out, meta=meta, workers=workers, batch_size=batch)
    report = run.run(run.shard(files, [f.stem for f in files]), progress=False)
    assert report.written == len(files), report.failures
    return {
        "images": len(files),
        "workers": workers,
        "batch_size": batch,
        "wall_s": report.wall_s,
        "model_s": report.model_s,
        "beyond_model": report.wall_s / report.model_s - 1,
        "images_per_s": len(files) / report.wall_s,
    }


def search_index(args: argparse.Namespace, work: Path) -> dict:
    model = build("vitb", torch.device("cpu"))
    names = make_names(args.vocab)
    predictor = SANPredictor(model, device="cpu")
    enc = predictor.encode(photos(1, 640)[0])
    view = enc.views[0]
    index = RegionIndex.create(work / "index", predictor, weights="random", config_yaml="")
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for start in range(0, args.index_images, 256):
        items = []
        for i in range(start, min(start + 256, args.index_images)):
            emb = torch.nn.functional.normalize(torch.randn(view.mask_embeddings.shape, generator=gen), dim=-1)
            v = EncodedView(view.mask_logits, emb, view.image_size, view.padded_size)
            items.append((f"{i:08d}", f"/photos/{i:08d}.jpg", ImageEncoding([v], enc.output_size, enc.fingerprint)))
        index.write_part(items)
    write_s = time.perf_counter() - t
    index = RegionIndex(work / "index")
    times: dict[str, list[float]] = {"new_query": [], "same_query_again": [], "new_query_scoped_150": []}
    for r in range(args.repeat + 1):
        runs = (
            ("new_query", f"a photo of thing {r}", None),  # its text encoding is part of the cost
            ("same_query_again", f"a photo of thing {r}", None),  # text cached: the product over the index alone
            ("new_query_scoped_150", f"a scoped photo of thing {r}", names),
        )
        for key, query, scope in runs:
            t = time.perf_counter()
            hits = index.search(predictor, query, vocabulary=scope, top=10)
            if r:  # the first round maps the files into memory and encodes the 150 names
                times[key].append(time.perf_counter() - t)
            assert len(hits) == 10
    t = time.perf_counter()
    predictor.model.encode_vocabulary([f"a photo of thing {args.repeat + 1}"])
    text_s = time.perf_counter() - t
    faiss_s = _faiss_flat(index, predictor, args.repeat)
    parts = {f.name: 0 for f in (work / "index").glob("part-*/*")}
    for f in (work / "index").glob("part-*/*"):
        parts[f.name] += f.stat().st_size
    return {
        "images": len(index),
        "queries_per_image": int(view.mask_embeddings.shape[0]),
        "embed_dim": int(view.mask_embeddings.shape[1]),
        "mask_grid": list(view.mask_logits.shape[-2:]),
        "bytes_per_image": index.size_bytes() / len(index),
        "bytes_per_image_by_file": {k: v / len(index) for k, v in sorted(parts.items())},
        "write_s": write_s,
        "search_median_s": {k: statistics.median(v) for k, v in times.items()},
        "search_max_s": {k: max(v) for k, v in times.items()},
        "one_query_text_encoding_s": text_s,
        "faiss_flat_ip_top1000_s": faiss_s,
    }


def _faiss_flat(index: RegionIndex, predictor: SANPredictor, repeat: int) -> float | None:
    """Median time of an exact FAISS inner-product search (top 1000 regions) over the same embeddings
    in memory, for a query without scope (where the softmax over query and background ranks regions by
    the product with their difference); None without ``faiss``."""
    try:
        import faiss
    except ImportError:
        return None
    emb = np.concatenate([np.asarray(p.embeddings, dtype=np.float32) for p in index.parts])
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    cls = predictor.model.encode_vocabulary(["a red umbrella"]).detach().float()
    direction = (cls[0] - cls[-1]).numpy()[None].astype(np.float32)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        flat.search(direction, 1000)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=150)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--photos", type=int, default=64, help="photos of the ViT-B/16 folder run")
    p.add_argument("--small", type=int, default=400, help="small images of the tiny-model folder run")
    p.add_argument("--index-images", type=int, default=10_000, help="images of the synthetic search index")
    choices = ["encode", "vitb", "tiny", "search"]
    p.add_argument("--sections", nargs="+", default=choices, choices=choices)
    p.add_argument("--json", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict = {
        "command": " ".join(["python", *sys.argv]),
        "env": {
            "torch": torch.__version__,
            "san": san.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
    }
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if "encode" in args.sections:
            report["encode_classify"] = encode_classify(args, work)
            print(json.dumps(report["encode_classify"], indent=1), flush=True)
        if "vitb" in args.sections:
            model = build("vitb", torch.device("cpu"))
            names = make_names(args.vocab)
            fill_random_embeddings(model, names)
            vitb = SANPredictor(model, device="cpu")
            images = photos(args.photos, 480)
            report["folder_vitb"] = [folder_run(vitb, names, images, work, w, 1) for w in (4, 0)]
            print(json.dumps(report["folder_vitb"], indent=1), flush=True)
        if "tiny" in args.sections:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.conftest import tiny_cfg

            torch.manual_seed(0)
            tiny = SANPredictor(san.build_model(tiny_cfg(work)).eval(), device="cpu", min_size=64, max_size=128)
            small = photos(args.small, 64, seed=1)
            voc = ["cat", "dog", "grass", "sky"]
            runs = ((4, 8), (4, 1), (0, 1))
            report["folder_tiny"] = [folder_run(tiny, voc, small, work, w, b) for w, b in runs]
            print(json.dumps(report["folder_tiny"], indent=1), flush=True)
        if "search" in args.sections:
            report["search"] = search_index(args, work)
            print(json.dumps(report["search"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
