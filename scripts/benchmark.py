"""Speed and memory of SAN's fast paths against straightforward reference paths, in one run.

    # CPU, a few minutes: ViT-B/16, one 640-short-edge image, 150 cached names
    python scripts/benchmark.py --sections infer text train --sizes 640 --vocab 150
    # memory over vocabulary sizes (reference skipped where its score maps would not fit)
    python scripts/benchmark.py --sections infer --modes reference exact reduced4 --vocab 150 847 10000
    # GPU
    python scripts/benchmark.py --device cuda --models vitb vitl --sizes 512 640 1024 --vocab 20 150 847 10000 \\
        --modes reference exact bf16 bf16+compile --batch 16 --sections infer text train flops

Reference paths (ours, the official formulation): text encoding one pass per template over all 77
token positions; the dense (Q+1+L)^2 recognition-head mask with one deeper-layer pass per
supervision level; ``SAN.forward``'s full ``[C, H, W]`` score maps, then their arg-max. Fast paths:
batched cut text encoding, the SOS-token recognition head, ``SAN.predict_labels``. Modes join flags
with ``+``: reference, exact, scores (fast head + full score maps), labels (label map without the
winning scores, as ``SANPredictor`` asks, which lets the exact class pruning skip regions one class
must win), bf16, fp16, fp32side (the side adapter stays float32 under bf16/fp16, as
``SANPredictor`` runs them), fused (the label path as one Triton kernel, GPUs), tf32, cl (channels-last), compile,
reducedK (scores at K x the mask grid).
Every mode's label map is compared with ``exact``.

Weights are random (no download); inputs are scikit-image photos; class embeddings of the
inference runs are random unit vectors put into the name cache (cost does not depend on them).
With random weights one class wins everywhere, so ``label_agree`` is trivially high; the
``proxy_agree`` column compares label maps built from each mode's mask proposals with fixed
per-query classes (see :func:`proxy_labels`), which do vary across the image. Peak memory: CUDA max allocated
during the call, or on CPU the peak rise of the process RSS over the call (sampled every 2 ms) in a
child process run with a fixed glibc mmap threshold (see :func:`cpu_memory_pass`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

import san
from san.config import get_config_file
from san.modeling.semantic import semantic_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tools import PeakMemory, add_peak_fraction, cpu_memory_pass, make_names, table, timeit  # noqa: E402

MODELS = {"vitb": "san_clip_vit_res4_coco", "vitl": "san_clip_vit_large_res4_coco"}
log = logging.getLogger("benchmark")


# -- inputs ------------------------------------------------------------------------------------------
def fill_random_embeddings(model: san.SAN, names: list[str]) -> None:
    clf = model.ov_classifier
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(len(names), clf.text_projection.shape[1], generator=g), dim=-1)
    clf.cache.store("memory", dict(zip(names, emb.to(clf.text_projection.device))))  # the in-memory cache key


def proxy_labels(
    model: san.SAN, inputs: list[dict], classifier: torch.Tensor, reduced: int | None = None
) -> torch.Tensor:
    """Label map from the model's mask proposals with fixed logits: query q votes for class q mod C.

    Random weights make every SOS token nearly the same, so one class wins everywhere and the
    real label maps of all modes "agree" trivially. This proxy keeps the spatial structure that
    the image path (CLIP, side adapter, decoder) produces, so its agreement shows which pixels a
    precision change flips.
    """
    images, sizes = model.preprocess(inputs[:1])
    masks = model.forward_stages(images, classifier)["mask_logits"][-1][0]  # [Q, h, w]
    q, c = masks.shape[0], classifier.shape[0] - 1
    logits = torch.zeros(q, c + 1, device=masks.device)
    logits[torch.arange(q), torch.arange(q) % c] = 6.0
    h, w = inputs[0]["height"], inputs[0]["width"]
    return semantic_labels(logits, masks, sizes[0], tuple(images.shape[-2:]), (h, w), reduced=reduced)[0]


def make_inputs(short: int, batch: int, names: list[str], seed: int = 0) -> list[dict]:
    """4:3 landscape photos from scikit-image (random noise if it is missing), resized to ``short``."""
    h, w = short, (short * 4 // 3) // 2 * 2
    try:
        from skimage import data

        photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        photos = [torch.from_numpy(p).permute(2, 0, 1).float()[None] for p in photos]
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        photos = [torch.rand(1, 3, 64, 64, generator=g) * 255]
    out = []
    for i in range(batch):
        im = F.interpolate(photos[(seed + i) % len(photos)], size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append({"image": im.clamp(0, 255).to(torch.uint8), "height": h, "width": w, "vocabulary": names})
    return out


def build(key: str, device: torch.device) -> san.SAN:
    cfg = san.get_cfg()
    local = Path(__file__).resolve().parents[1] / "configs" / f"{MODELS[key]}.yaml"  # a checkout, not installed
    cfg.merge_from_file(str(local) if local.is_file() else get_config_file(MODELS[key]))
    cfg.MODEL.SAN.CLIP_PRETRAINED_NAME = ""
    torch.manual_seed(0)
    return san.build_model(cfg, clip_weights=False).to(device).eval()


# -- modes -------------------------------------------------------------------------------------------
def mode_context(model: san.SAN, flags: set[str], device: torch.device) -> ExitStack:
    """Apply a mode's flags to the model for the duration of the ``with`` block."""
    stack = ExitStack()
    head = model.clip_rec_head
    if "reference" in flags:
        old_attention = head.sos_attention
        model.set_inference_options(sos_attention="dense")  # RecognitionHead.forward -> forward_dense
        stack.callback(lambda: model.set_inference_options(sos_attention=old_attention))
    for dtype in ("bf16", "fp16"):
        if dtype in flags:
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
            stack.enter_context(torch.autocast(device.type, dtype=torch_dtype))
    if "fp32side" in flags:  # SANPredictor's half precisions: mask proposals stay float32
        model.set_inference_options(full_precision_masks=True)
        stack.callback(lambda: model.set_inference_options(full_precision_masks=False))
    if "tf32" in flags:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        stack.callback(lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", old))
    if "cl" in flags:
        model.to(memory_format=torch.channels_last)
        stack.callback(lambda: model.to(memory_format=torch.contiguous_format))
    if "compile" in flags:
        if not hasattr(model, "_compiled_predict"):
            model._compiled_predict = torch.compile(model.predict)
        model.predict = model._compiled_predict
        stack.callback(lambda: model.__dict__.pop("predict", None))
    return stack


def parse_mode(mode: str) -> tuple[set[str], int | None]:
    flags, reduced = set(), None
    for part in mode.split("+"):
        if part.startswith("reduced"):
            reduced = int(part.removeprefix("reduced") or 4)
        elif part in (
            "reference",
            "exact",
            "scores",
            "labels",
            "fused",
            "bf16",
            "fp16",
            "fp32side",
            "tf32",
            "cl",
            "compile",
        ):
            flags.add(part)
        else:
            raise SystemExit(f"unknown mode part {part!r} in {mode!r}")
    return flags, reduced


def run_labels(model: san.SAN, inputs: list[dict], flags: set[str], reduced: int | None) -> list[tuple]:
    """One inference call in a mode -> [(labels, scores or None)] per image."""
    with torch.no_grad():
        if "reference" in flags or "scores" in flags:
            return [r["sem_seg"].float().max(0)[::-1] for r in model(inputs)]
        with_scores = "labels" not in flags  # "labels": what SANPredictor asks for
        outs = model.predict_labels(inputs, reduced=reduced, with_scores=with_scores, fused="fused" in flags)
        return [(r["labels"], r.get("scores")) for r in outs]


def agreement(out: list[tuple], ref: list[tuple]) -> tuple[float, float | None]:
    same = sum(float((a[0] == b[0]).float().mean()) for a, b in zip(out, ref)) / len(ref)
    if any(a[1] is None or b[1] is None for a, b in zip(out, ref)):
        return same, None
    diff = max(float((a[1].float() - b[1].float()).abs().max()) for a, b in zip(out, ref))
    return same, diff


# -- sections ----------------------------------------------------------------------------------------
def bench_infer(model: san.SAN, key: str, args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    for size in args.sizes:
        for n in args.vocab:
            names = make_names(n)
            fill_random_embeddings(model, names)
            inputs = make_inputs(size, 1, names)
            h, w = inputs[0]["height"], inputs[0]["width"]
            exact = run_labels(model, inputs, {"exact"}, None)
            classifier = model.encode_vocabulary(names)
            with torch.no_grad():
                proxy = proxy_labels(model, inputs, classifier)
            distinct = int(proxy.unique().numel())
            timed: list[tuple[dict, set[str], int | None]] = []
            for mode in args.modes:
                flags, reduced = parse_mode(mode)
                row = {
                    "section": "infer",
                    "model": key,
                    "size": f"{h}x{w}",
                    "vocab": n,
                    "mode": mode,
                    "proxy_labels": distinct,
                }
                full_maps_gb = 4 * n * h * w / 2**30
                if ("reference" in flags or "scores" in flags) and full_maps_gb > args.max_ref_gb:
                    rows.append({**row, "skipped": f"score maps alone need {full_maps_gb:.1f} GB > --max-ref-gb"})
                    log.info("%s", rows[-1])
                    continue
                with mode_context(model, flags, device):
                    for _ in range(max(1, args.warmup)):
                        run_labels(model, inputs, flags, reduced)
                    with PeakMemory(device) as mem:
                        out = run_labels(model, inputs, flags, reduced)
                    same, diff = agreement(out, exact)
                    row.update(peak_mb=mem.peak_mb, label_agree=same, score_maxdiff=diff)
                    if not flags & {"reference", "scores"}:
                        with torch.no_grad():
                            mine = proxy_labels(model, inputs, classifier, reduced)
                        row["proxy_agree"] = float((mine == proxy).float().mean())
                    if args.batch > 1 and n == args.vocab[0] and not args.memory_only:
                        batch = make_inputs(size, args.batch, names, seed=1)
                        tb = timeit(
                            partial(run_labels, model, batch, flags, reduced), device, 1, max(2, args.repeat // 2)
                        )
                        row["img_per_s"] = args.batch / tb["median_s"]
                rows.append(row)
                timed.append((row, flags, reduced))
            if not args.memory_only:
                interleaved_times(model, inputs, timed, device, args.repeat)
            for row, _, _ in timed:
                log.info("%s", row)


def interleaved_times(
    model: san.SAN, inputs: list[dict], timed: list[tuple], device: torch.device, repeat: int
) -> None:
    """Time the modes in rounds (A B C, A B C, ...) so that load from other processes hits all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(repeat):
        for k, (_, flags, reduced) in enumerate(timed):
            with mode_context(model, flags, device):
                sync()
                t = time.perf_counter()
                run_labels(model, inputs, flags, reduced)
                sync()
                times[k].append(time.perf_counter() - t)
    ref_time = None
    for (row, _, _), ts in zip(timed, times):
        ts.sort()
        row.update(median_s=statistics.median(ts), p90_s=ts[min(len(ts) - 1, round(0.9 * (len(ts) - 1)))], n=len(ts))
        if row["mode"] == "reference":
            ref_time = row["median_s"]
    for row, _, _ in timed:
        row["vs_ref"] = row["median_s"] / ref_time if ref_time else None


def bench_semantic(model: san.SAN, key: str, args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    """Semantic inference alone, on the model's logits and on the proxy's, whose cost the exact class
    pruning makes data-dependent: random weights let one class win everywhere (the best case), the
    proxy's one-query-per-class logits leave many classes near the top at every pixel."""
    for size in args.sizes:
        for n in args.vocab:
            names = make_names(n)
            fill_random_embeddings(model, names)
            inputs = make_inputs(size, 1, names)
            out_size = (inputs[0]["height"], inputs[0]["width"])
            with torch.no_grad():
                images, sizes = model.preprocess(inputs)
                pred = model.forward_stages(images, model.encode_vocabulary(names))
            masks, logits = pred["mask_logits"][-1][0], pred["class_logits"][-1][0]
            q = masks.shape[0]
            proxy = torch.zeros_like(logits)
            proxy[torch.arange(q), torch.arange(q) % n] = 6.0
            base = {"section": "semantic", "model": key, "size": f"{out_size[0]}x{out_size[1]}", "vocab": n}
            padded = tuple(images.shape[-2:])
            if 4 * n * out_size[0] * out_size[1] / 2**30 <= args.max_ref_gb:
                ref = partial(model.postprocess, logits[None], masks[None], inputs, sizes, padded)
                rows.append({**base, "mode": "reference", **timeit(ref, device, args.warmup, args.repeat)})
            for which, lg in (("model", logits), ("proxy", proxy)):
                for mode, kw in (
                    ("dense", {"prune": False}),
                    ("pruned", {"prune": True}),
                    ("pruned+labels", {"prune": True, "with_scores": False}),
                ):
                    fn = partial(semantic_labels, lg, masks, sizes[0], padded, out_size, **kw)
                    labels = fn()[0]
                    t = timeit(fn, device, args.warmup, args.repeat)
                    rows.append(
                        {**base, "mode": f"{which} logits, {mode}", **t, "proxy_labels": int(labels.unique().numel())}
                    )
                    log.info("%s", rows[-1])


def bench_text(model: san.SAN, key: str, args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    clf = model.ov_classifier
    templates = clf.templates
    clf.set_templates(templates[: args.text_templates] if args.text_templates else templates)
    names = make_names(args.text_names)
    base = {"section": "text", "model": key, "vocab": len(names), "size": f"{len(clf.templates)} templates"}
    try:
        clf.clear_cache()
        model.set_inference_options(text_cache_dir=None)
        ref = clf.embed_names(names, fast=False)

        def cold() -> None:
            clf.clear_cache()
            clf.embed_names(names)

        # reference and fast path alternate, so that load from other processes hits both alike
        t_ref, t_fast = [], []
        for _ in range(args.text_repeat):
            t_ref.append(timeit(lambda: clf.embed_names(names, fast=False), device, 0, 1)["median_s"])
            t_fast.append(timeit(cold, device, 0, 1)["median_s"])
        t_ref = {"median_s": statistics.median(t_ref), "p90_s": max(t_ref), "n": len(t_ref)}
        t_fast = {"median_s": statistics.median(t_fast), "p90_s": max(t_fast), "n": len(t_fast)}
        rows.append({**base, "mode": "reference", **t_ref, "vs_ref": 1.0})
        diff = float((clf.embed_names(names) - ref).abs().max())
        rows.append(
            {**base, "mode": "exact", **t_fast, "vs_ref": t_fast["median_s"] / t_ref["median_s"], "score_maxdiff": diff}
        )
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                t_bf = timeit(cold, device, 1, args.text_repeat)
                diff = float((clf.embed_names(names).float() - ref).abs().max())
            rows.append(
                {**base, "mode": "bf16", **t_bf, "vs_ref": t_bf["median_s"] / t_ref["median_s"], "score_maxdiff": diff}
            )
        t_hit = timeit(lambda: clf.embed_names(names), device, 0, args.text_repeat)
        rows.append({**base, "mode": "cached", **t_hit, "vs_ref": t_hit["median_s"] / t_ref["median_s"]})
    finally:
        clf.set_templates(templates)
        clf.clear_cache()
    for r in rows:
        if r["section"] == "text" and r["vocab"] == len(names):
            log.info("%s", r)


def _train_inputs(model: san.SAN, batch: int, crop: int, names: list[str]) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        masks = torch.zeros(3, crop, crop, dtype=torch.bool)
        for k in range(3):
            masks[k, k * crop // 3 : (k + 1) * crop // 3] = True
        out.append(
            {
                "image": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8, generator=g),
                "vocabulary": names,
                "instances": {"labels": torch.tensor([0, 3, 7]), "masks": masks},
            }
        )
    return out


def _loss(out: dict) -> torch.Tensor:
    return sum(out.values())  # the criterion's weighted loss dict


def bench_train(model: san.SAN, key: str, args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    names = make_names(171)
    fill_random_embeddings(model, names)
    inputs = _train_inputs(model, args.train_batch, args.crop, names)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        _loss(model(inputs)).backward()

    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = [(mode, parse_mode(mode)[0]) for mode in args.train_modes]
    size = f"{args.train_batch}x{args.crop}x{args.crop}"
    loss = "criterion" if model.criterion is not None else "surrogate"
    out = {
        mode: {"section": "train", "model": key, "size": size, "vocab": 171, "mode": mode, "loss": loss}
        for mode, _ in modes
    }
    times: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    try:
        for mode, flags in modes:  # warm-up and peak memory
            with mode_context(model, flags, device):
                for _ in range(max(1, args.warmup)):
                    step()
                with PeakMemory(device) as mem:
                    step()
            out[mode]["peak_mb"] = mem.peak_mb
        for _ in range(1 if args.memory_only else args.repeat):  # interleaved rounds
            for mode, flags in modes:
                with mode_context(model, flags, device):
                    sync()
                    t = time.perf_counter()
                    step()
                    sync()
                    times[mode].append(time.perf_counter() - t)
    finally:
        model.eval()
    ref = statistics.median(times["reference"]) if "reference" in times else None
    for mode, _ in modes:
        ts = sorted(times[mode])
        row = out[mode]
        row.update(median_s=statistics.median(ts), p90_s=ts[min(len(ts) - 1, round(0.9 * (len(ts) - 1)))], n=len(ts))
        row.update(img_per_s=args.train_batch / row["median_s"], vs_ref=row["median_s"] / ref if ref else None)
        rows.append(row)
        log.info("%s", row)


def bench_flops(model: san.SAN, key: str, args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    from count_params_flops import _ImageOnly, _sdpa_flops
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    classifier = F.normalize(torch.randn(172, model.ov_classifier.text_projection.shape[1], device=device), dim=-1)
    for hw in ((640, 640), (640, 864)):  # the paper's square crop; a padded 640x853 benchmark image
        flops = FlopCountAnalysis(_ImageOnly(model, classifier), torch.zeros(1, 3, *hw, device=device))
        flops.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        row = {
            "section": "flops",
            "model": key,
            "size": f"{hw[0]}x{hw[1]}",
            "vocab": 171,
            "mode": "fvcore",
            "gflops_fvcore": flops.total() / 1e9,
        }
        rows.append(row)
        log.info("%s", row)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["vitb"], choices=sorted(MODELS))
    p.add_argument(
        "--sections",
        nargs="+",
        default=["infer", "text", "train"],
        choices=["infer", "semantic", "text", "train", "flops"],
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[640], help="short edge (4:3 landscape images)")
    p.add_argument("--vocab", nargs="+", type=int, default=[150])
    p.add_argument("--modes", nargs="+", default=["reference", "scores", "exact", "bf16", "reduced4"])
    p.add_argument("--train-modes", nargs="+", default=["reference", "exact", "bf16"])
    p.add_argument("--batch", type=int, default=1, help="also time a batch of this many images (images/s)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=640)
    p.add_argument("--text-names", type=int, default=150)
    p.add_argument("--text-templates", type=int, default=0, help="use the first K templates (0: all)")
    p.add_argument("--text-repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-ref-gb", type=float, default=6.0, help="skip full score maps larger than this")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--json", default="", help="write all rows and the environment here")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    rows: list[dict] = []
    for key in args.models:
        model = build(key, device)
        for section in args.sections:
            sections = {"infer": bench_infer, "semantic": bench_semantic, "text": bench_text, "train": bench_train}
            {**sections, "flops": bench_flops}[section](model, key, args, device, rows)
            if args.json:  # after every section, so a run cut short still leaves its numbers
                Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cpu" and not args.memory_only:
        cpu_memory_pass(str(Path(__file__).resolve()), args, rows, argv)
    add_peak_fraction(rows)
    env["loadavg_end"] = os.getloadavg()
    print(table(rows))
    print(f"\nenvironment: {env}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
