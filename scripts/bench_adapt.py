"""Few-shot adapters (``san adapt``): how much of the zero-shot gap they close, and how long they take.

    python scripts/bench_adapt.py --json docs/benchmarks/cpu_adapt.json

Gain: the official tiny model of the golden v2 file (``--golden``) on the tests' synthetic domain
(``tests/engine/texture_domain.py``: collages of scikit-image textures, 4 classes whose names its text
tower knows nothing of); 48 images, shots drawn from the first 32 (5 per class, draws ``--draws``), the
last 16 held out. For each draw and mode: held-out mIoU zero-shot, adapted, and the cap (each proposal
given the class it has most mass on), and the share of the gap closed; and an adapter made from noise
images with random masks. Time: 10 classes x 5 shots (collages of 10 photos) with the tiny model and
SAN ViT-B/16 (random weights; the time does not depend on the values): encoding the shots, the
prototype mode, the tuned mode (300 steps), on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_own_data import write_model  # noqa: E402
from bench_tools import machine_meta  # noqa: E402

OPTS = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]
MODES = {
    "prototype": {"mode": "prototype"},
    "tuned (labels)": {"mode": "tuned"},
    "tuned (matched, official)": {"mode": "tuned", "objective": "matched"},
}


def _shots(predictor, folder: Path, keys: slice | None, shots: int, seed: int):
    from san.data.own import read_dataset
    from san.engine.adapt import encode_shots, sample_shots

    ds = read_dataset(folder)
    labels = {s.key: s.label.read() for s in ds.samples}
    pool = labels if keys is None else {k: labels[k] for k in sorted(labels)[keys]}
    return ds, labels, encode_shots(predictor, ds, sample_shots(ds, pool, shots, seed), labels)


def gain(golden: Path, draws: int, tmp: Path) -> list[dict]:
    import torch

    import san
    from san.data.own import read_dataset
    from san.engine.adapt import adapt_encodings, encode_shots, evaluate
    from san.inference.predictor import SANPredictor
    from tests.conftest import golden_cfg
    from tests.engine.texture_domain import CLASSES, write_domain

    g = torch.load(golden, weights_only=True)
    model = san.build_model(golden_cfg(g, tmp), g["state_dict"]).eval()
    predictor = SANPredictor(model, device="cpu", min_size=250, max_size=1000)
    write_domain(tmp / "domain", 48, seed=0)
    write_domain(tmp / "noise", 24, seed=1, noise=True)
    ds = read_dataset(tmp / "domain")
    labels = {s.key: s.label.read() for s in ds.samples}
    held = encode_shots(predictor, ds, sorted(labels)[32:], labels)
    base = evaluate(predictor, held, CLASSES)
    rows = []
    _, _, noise = _shots(predictor, tmp / "noise", None, 5, 0)
    for seed in range(draws):
        _, _, shots = _shots(predictor, tmp / "domain", slice(0, 32), 5, seed)
        for name, kwargs in MODES.items():
            for source, data in (("domain", shots), ("noise", noise)):
                if source == "noise" and seed:
                    continue
                predictor.adapter = adapt_encodings(predictor, data, CLASSES, **kwargs)
                r = evaluate(predictor, held, CLASSES)
                rows.append(
                    {
                        "draw": seed,
                        "mode": name,
                        "shots from": source,
                        "shot images": len(data),
                        "zero_shot_mIoU": base["zero_shot"]["mIoU"],
                        "cap_mIoU": base["cap"]["mIoU"],
                        "adapted_mIoU": r["adapted"]["mIoU"],
                        "gap_closed": r["gap_closed"],
                        "seconds": predictor.adapter.meta["seconds"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                predictor.adapter = None
    return rows


def _ten_class_domain(folder: Path, n: int) -> None:
    """``n`` collages of 10 photo classes (only the time is measured on it)."""
    import skimage.data
    from PIL import Image

    from tests.engine.texture_domain import collage

    photos = ["astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "horse", "moon", "rocket"]
    textures = []
    for name in photos:
        im = getattr(skimage.data, name)()
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        textures.append(np.asarray(Image.fromarray(im.astype(np.uint8)).resize((512, 512))))
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("\n".join(photos) + "\n")
    for i in range(n):
        image, labels = collage(rng, textures, size=320)
        Image.fromarray(image).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(labels).save(folder / "masks" / f"{i:03d}.png")


def timing(kind: str, tmp: Path) -> list[dict]:
    from san.engine.adapt import adapt_encodings
    from san.inference.predictor import SANPredictor

    model = tmp / f"model-{kind}"
    write_model(kind, model)
    predictor = SANPredictor.from_pretrained(str(model), device="cpu")
    data = tmp / "ten"
    if not data.exists():
        _ten_class_domain(data, 60)
    t0 = time.perf_counter()
    ds, _, shots = _shots(predictor, data, None, 5, 0)
    encode = time.perf_counter() - t0
    rows = []
    for name, kwargs in MODES.items():
        adapter = adapt_encodings(predictor, shots, ds.classes, **kwargs)
        rows.append(
            {
                "model": kind,
                "classes": len(ds.classes),
                "shot images": len(shots),
                "mode": name,
                "encode_s": encode,
                "adapt_s": adapter.meta["seconds"],
                "per_shot_encode_s": encode / len(shots),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--golden", default=str(ROOT.parent / "shared" / "golden" / "san_tiny_official_v2.pt"))
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["tiny", "vit-b"])
    p.add_argument("--json", default="")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = gain(Path(args.golden), args.draws, Path(tmp))
        times = [row for kind in args.models for row in timing(kind, Path(tmp))]
    summary = {}
    for name in MODES:
        closed = [r["gap_closed"] for r in rows if r["mode"] == name and r["shots from"] == "domain"]
        summary[name] = {"mean_gap_closed": statistics.mean(closed), "min": min(closed), "max": max(closed)}
    meta = machine_meta(draws=args.draws)
    if args.json:
        out = {"meta": meta, "gain": rows, "gain_summary": summary, "timing": times}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
