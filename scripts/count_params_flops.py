"""Print SAN's trainable/total parameters and GFLOPs (fvcore) for one image.

    python scripts/count_params_flops.py --config-file configs/san_clip_vit_res4_coco.yaml
    python scripts/count_params_flops.py --config-file configs/san_clip_vit_large_res4_coco.yaml --size 640 640

CLIP weights are random (no download): counts and FLOPs do not depend on the values. FLOPs follow
fvcore's convention (one fused multiply-add = one flop), as the paper's 64.3 GFLOPs for ViT-B/16 at
640x640. The text encoder is excluded: class embeddings are computed once per vocabulary and cached.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

import torch
from fvcore.nn import FlopCountAnalysis

import san
from san.config import get_config_file


def _sdpa_flops(inputs: list, outputs: list) -> int:
    """fvcore has no rule for scaled_dot_product_attention: count q@k^T and attn@v as MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _ImageOnly(torch.nn.Module):
    """Wrap SAN so fvcore traces the image path with a fixed, precomputed classifier."""

    def __init__(self, model: san.SAN, classifier: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("classifier", classifier)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_stages(images, self.classifier)
        return out["mask_logits"][-1], out["class_logits"][-1]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/san_clip_vit_res4_coco.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=171, help="vocabulary size for the class logits")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    cfg = san.get_cfg()
    cfg.merge_from_file(get_config_file(args.config_file))
    cfg.merge_from_list(args.opts)
    model = san.build_model(cfg, clip_weights=False).eval()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = sum(p.numel() for p in model.ov_classifier.parameters())

    embed_dim = model.ov_classifier.text_projection.shape[1]
    classifier = torch.nn.functional.normalize(torch.randn(args.num_classes + 1, embed_dim), dim=-1) * 100
    images = torch.zeros(1, 3, *args.size)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    flops = FlopCountAnalysis(_ImageOnly(model, classifier), images)
    flops.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    gflops = flops.total() / 1e9
    by_module = Counter(
        {k: v / 1e9 for k, v in flops.by_module().items() if k.count(".") == 1 and k.startswith("model.")}
    )

    print(f"config:               {args.config_file}")
    print(f"trainable parameters: {trainable:,} ({trainable / 1e6:.2f} M)")
    print(f"total parameters:     {total:,} ({total / 1e6:.2f} M; text encoder {text / 1e6:.2f} M)")
    print(f"GFLOPs @ {args.size[0]}x{args.size[1]}:     {gflops:.1f} (image path, {args.num_classes} classes)")
    for name, value in by_module.most_common():
        print(f"  {name.removeprefix('model.'):<24} {value:7.1f}")
    return {"trainable": trainable, "total": total, "gflops": gflops}


if __name__ == "__main__":
    main()
