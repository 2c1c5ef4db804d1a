#!/usr/bin/env python
"""Train or evaluate SAN with detectron2's own trainer: the official ``train_net.py`` flow.

    python scripts/train_net_d2.py --config-file configs/san_clip_vit_res4_coco.yaml --num-gpus 8 \
        OUTPUT_DIR output/san_vit_b_16
    python scripts/train_net_d2.py --config-file configs/san_clip_vit_res4_coco.yaml --eval-only \
        MODEL.WEIGHTS san_vit_b_16.pth

detectron2's ``DefaultTrainer``, its checkpointer with san's loader (``--resume`` continues from
``OUTPUT_DIR/last_checkpoint``) and ``SemSegEvaluator``; datasets are read from
``$DETECTRON2_DATASETS`` (default ``datasets/``). Needs detectron2 (see the README).
"""

from __future__ import annotations

import argparse
from typing import Any

from san.integrations.detectron2 import SANCheckpointer, Trainer, setup  # first: says how to install detectron2

# isort: split
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm


def main(args: argparse.Namespace) -> Any:
    """Evaluate (``--eval-only``) or train, as the official script does."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SANCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
