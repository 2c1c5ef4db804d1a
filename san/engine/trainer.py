"""The training loop of the official recipe in plain PyTorch: DDP, AMP, clipping, checkpoints, resume.

One process per device (``torchrun``, or ``san train --num-gpus N``), each seeing
``SOLVER.IMS_PER_BATCH / world_size`` images per iteration; gradients are averaged by
``DistributedDataParallel``. With ``SOLVER.ACCUMULATION_STEPS`` K, each process runs its share as K
micro-batches, and the run *is* the run of ``world_size x K`` processes: each micro-batch holds the
images of one of those processes (same order, same augmentation), draws its random points from that
process's RNG stream, normalises the mask losses by the target count of the whole iteration (known
from the targets before any forward) and contributes 1/K of its gradient, so that the gradients are
averaged over all ``world_size x K`` micro-batches; clipping, the optimizer step and the schedule
happen once per iteration. Every iteration: forward under autocast (fp16 with a ``GradScaler``,
or bf16 without; ``SOLVER.AMP.*``), backward, un-scale, clip (``SOLVER.CLIP_GRADIENTS``), AdamW
step, ``WarmupPolyLR`` step. Checkpoints (every ``SOLVER.CHECKPOINT_PERIOD`` iterations and at the
end, written atomically as ``OUTPUT_DIR/model_XXXXXXX.pth`` / ``model_final.pth`` with
``last_checkpoint`` naming the newest) hold the model, optimizer, scheduler, scaler, iteration,
seed, every process's RNG states and the logged metrics' smoothing window, so that ``resume``
continues the run exactly: the same data, the same random points, the same weights and logged
losses as a run that was never stopped (given the same number of processes). Evaluation runs every
``TEST.EVAL_PERIOD`` iterations and at the end, with the
RNG states saved and restored around it so it does not change the training stream.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from san.build import build_model
from san.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from san.config import ConfigError
from san.data.catalog import get_dataset, register_config_data
from san.data.loader import build_train_loader
from san.devices import autocast, precision_dtype, precision_name
from san.files import atomic_path

from . import comm
from .events import EventWriter, format_eta
from .inference import evaluate, flatten_results
from .optim import build_gradient_clipper, build_lr_scheduler, build_optimizer

__all__ = ["Trainer", "check_batch", "last_checkpoint_path", "resolve_device", "resolve_precision"]

logger = logging.getLogger(__name__)

START_RESULTS = "inference_start"  # OUTPUT_DIR/<this>: the evaluation of the starting weights (EVAL_AT_START)


def resolve_device(cfg: Any) -> torch.device:
    """The device of this process: ``MODEL.DEVICE`` (cuda -> ``cuda:LOCAL_RANK``), CPU when no GPU exists."""
    want = str(cfg.MODEL.DEVICE)
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            logger.warning("MODEL.DEVICE=%s but CUDA is not available: running on CPU", want)
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(want)


def resolve_precision(cfg: Any, device: torch.device) -> str:
    """The precision name (``fp32``/``fp16``/``bf16``) of ``SOLVER.AMP`` on ``device``.

    ``SOLVER.AMP.ENABLED`` turns autocast on with ``SOLVER.AMP.PRECISION`` (float16, the official
    setting, or bfloat16). CPUs have no fp16 autocast: float16 there runs in float32 (logged).
    """
    amp = cfg.SOLVER.AMP
    if not amp.ENABLED:
        return "fp32"
    try:
        name = precision_name(getattr(amp, "PRECISION", "float16"))
    except ValueError:
        raise ValueError(f"SOLVER.AMP.PRECISION must be float16 or bfloat16, got {amp.PRECISION!r}") from None
    if device.type == "cpu" and name == "fp16":
        logger.info("SOLVER.AMP: float16 autocast needs a GPU; training in float32 on CPU (bfloat16 works on CPU)")
        return "fp32"
    return name


def last_checkpoint_path(output_dir: str) -> str | None:
    """The checkpoint named by ``OUTPUT_DIR/last_checkpoint``, if both exist."""
    marker = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{marker} names {name}, which does not exist; delete the marker or restore the file")
    return path


def save_run_config(cfg: Any) -> str:
    """Write the full config to ``OUTPUT_DIR/config.yaml`` atomically (main process); returns its path."""
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(cfg.dump())
    return path


def check_batch(cfg: Any, world_size: int) -> int:
    """The accumulation steps K of ``SOLVER.ACCUMULATION_STEPS``, after checking (before any model is
    built) that ``IMS_PER_BATCH`` splits into ``world_size x K`` micro-batches of at least one image and
    that the training data holds at least one iteration's images."""
    s = cfg.SOLVER
    k_all = int(s.get("ACCUMULATION_STEPS", 1))
    if k_all < 1:
        raise ConfigError(f"SOLVER.ACCUMULATION_STEPS must be >= 1, got {k_all}")
    virtual = world_size * k_all
    if s.IMS_PER_BATCH % virtual or s.IMS_PER_BATCH // virtual < 1:
        per = s.IMS_PER_BATCH / virtual
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH} does not split into {world_size} process(es) x {k_all} "
            f"accumulation step(s): {per:g} images per micro-batch; choose IMS_PER_BATCH a multiple of {virtual} "
            "(or other ACCUMULATION_STEPS)"
        )
    if cfg.DATASETS.TRAIN:
        size = sum(len(get_dataset(name).list_samples()) for name in cfg.DATASETS.TRAIN)
        if size < s.IMS_PER_BATCH:
            raise ConfigError(
                f"the training data ({', '.join(cfg.DATASETS.TRAIN)}) holds {size} images, fewer than one iteration "
                f"of SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH}"
            )
    return k_all


def check_training_classes(cfg: Any) -> None:
    """``MODEL.SAN.NUM_CLASSES`` must be the class count of every ``DATASETS.TRAIN`` set (checked before
    any model is built: the criterion's no-object index depends on it)."""
    counts = {name: get_dataset(name).num_classes for name in cfg.DATASETS.TRAIN}
    wrong = {name: n for name, n in counts.items() if n != cfg.MODEL.SAN.NUM_CLASSES}
    if wrong:
        raise ConfigError(
            f"MODEL.SAN.NUM_CLASSES is {cfg.MODEL.SAN.NUM_CLASSES} but the training set(s) have "
            + ", ".join(f"{name}: {n} classes" for name, n in wrong.items())
            + f"; set MODEL.SAN.NUM_CLASSES {next(iter(wrong.values()))}"
        )


class Trainer:
    """Trains SAN from a config (``cfg.OUTPUT_DIR`` receives checkpoints, metrics, logs).

    Args:
        cfg: the full config (``san.get_cfg()`` plus a YAML and overrides).
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` when it exists (else start from
            ``MODEL.WEIGHTS``, as detectron2).
        log_period: iterations between console lines and ``metrics.json`` entries (default
            ``SAN_ENGINE.LOG_PERIOD``).
        window: iterations over which logged losses and times are smoothed (median; 1 = raw;
            default ``SAN_ENGINE.METRICS_WINDOW``). The window is checkpointed with the run.
    """

    def __init__(
        self, cfg: Any, *, resume: bool = False, log_period: int | None = None, window: int | None = None
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        comm.init_distributed(self.device.type)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        s = cfg.SOLVER
        register_config_data(cfg)
        self.accumulation = check_batch(cfg, self.world_size)
        check_training_classes(cfg)
        self.max_iter = int(s.MAX_ITER)
        engine = cfg.get("SAN_ENGINE", {})
        self.log_period = int(log_period if log_period is not None else engine.get("LOG_PERIOD", 20))
        window = int(window if window is not None else engine.get("METRICS_WINDOW", 20))
        if self.log_period < 1 or window < 1:
            raise ValueError(f"the log period ({self.log_period}) and the metrics window ({window}) must be >= 1")
        self.output_dir = cfg.OUTPUT_DIR
        if comm.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)

        ckpt = self._read_resume_checkpoint() if resume else None
        if ckpt is not None:
            self.seed = int(ckpt["seed"])
        else:
            self.seed = int(cfg.SEED) if cfg.SEED >= 0 else comm.broadcast_object(comm.random_seed())
        logger.info("seed %d%s", self.seed, " (SEED -1: drawn at random)" if cfg.SEED < 0 and ckpt is None else "")
        comm.seed_all(self.seed)  # the same initial weights in every process

        if ckpt is not None:  # the run's own weights: no CLIP download, loaded with the rest of the state
            model = build_model(cfg, clip_weights=False)
        else:
            model = build_model(cfg, cfg.MODEL.WEIGHTS or None)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.clipper = build_gradient_clipper(cfg)
        self.precision = resolve_precision(cfg, self.device)
        self.amp_dtype = precision_dtype(self.precision)
        use_scaler = self.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.start_iter = 0
        if ckpt is not None:
            self._load_state(ckpt)
        self.ddp_model: nn.Module = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        self._resume_rng = ckpt["rng"] if ckpt is not None else None
        self._rng_states: list[Any] = []  # per micro-batch: the RNG stream of the process it stands for
        self.writer = EventWriter(self.output_dir if comm.is_main_process() else None, self.max_iter, window=window)
        if ckpt is not None and ckpt.get("metrics"):
            self.writer.load_state_dict(ckpt["metrics"])
        self.iteration = self.start_iter - 1
        self.eval_results: dict[str, Any] = {}
        self.start_results: dict[str, float] = {}

    # -- state --------------------------------------------------------------------------------------
    def _read_resume_checkpoint(self) -> dict[str, Any] | None:
        path = last_checkpoint_path(self.output_dir)
        if path is None:
            logger.info("--resume: no checkpoint in %s; starting from MODEL.WEIGHTS", self.output_dir)
            return None
        ckpt = read_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "scheduler", "iteration", "seed", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path} lacks {missing}: not a san training checkpoint (use MODEL.WEIGHTS for weights only)"
            )
        logger.info("resuming from %s (iteration %d)", path, ckpt["iteration"])
        return ckpt

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        load_checkpoint(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_iter = int(ckpt["iteration"]) + 1

    def state_dict(self, iteration: int) -> dict[str, Any]:
        """Everything :meth:`save` writes except the model and the RNG states."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "iteration": iteration,
            "seed": self.seed,
            "world_size": self.world_size,
            "accumulation": self.accumulation,
            "metrics": self.writer.state_dict(),
        }

    def save(self, name: str, iteration: int) -> None:
        """Write ``OUTPUT_DIR/<name>.pth`` atomically and point ``last_checkpoint`` at it (collective)."""
        states = self._rng_states or [comm.get_rng_state()] * self.accumulation
        rng = [state for per_rank in comm.all_gather_object(states) for state in per_rank]  # virtual-rank order
        if comm.is_main_process():
            fname = f"{name}.pth"
            save_checkpoint(self.model, os.path.join(self.output_dir, fname), rng=rng, **self.state_dict(iteration))
            marker = os.path.join(self.output_dir, "last_checkpoint")
            with open(marker + ".tmp", "w", encoding="utf-8") as f:
                f.write(fname)
            os.replace(marker + ".tmp", marker)
            logger.info("saved checkpoint %s", fname)
        comm.barrier()

    # -- one iteration --------------------------------------------------------------------------------
    def forward_backward(self, batch: Sequence[dict], scale: float = 1.0) -> dict[str, float]:
        """Losses of one (micro-)batch and their gradients, times ``scale`` (and the AMP scale), added to
        ``.grad``; returns the unscaled loss values."""
        self.ddp_model.train()
        with autocast(self.device, self.precision):
            loss_dict = self.ddp_model(list(batch))
        if not isinstance(loss_dict, dict) or not loss_dict:
            raise RuntimeError("the model returned no losses: training inputs need 'instances' and a criterion")
        total = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became infinite or NaN at iteration {self.iteration}: {values}")
        self.scaler.scale(total * scale if scale != 1.0 else total).backward()
        return values

    def _iteration_num_masks(self, micro: Sequence[Sequence[dict]]) -> float:
        """Target masks of the whole iteration averaged over the ``world_size x K`` virtual processes
        (the official count: each process's target count, averaged over processes), at least 1."""
        mine = sum(len(x["instances"]["labels"]) for mb in micro for x in mb)
        n = torch.tensor([float(mine)], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(n)
        return max(n.item() / (self.world_size * self.accumulation), 1.0)

    def run_step(self, batch: Sequence[dict]) -> dict[str, float]:
        """One iteration: zero_grad; forward/backward of each of the K micro-batches (in its process's
        RNG stream, gradients synchronised after the last); un-scale and clip; optimizer step (skipped by
        the scaler on inf). Returns the losses averaged over the micro-batches."""
        k_all = self.accumulation
        b = len(batch) // k_all
        micro = [list(batch[k * b : (k + 1) * b]) for k in range(k_all)]
        if not self._rng_states:  # a step outside train(): the streams of a fresh run
            self._set_training_rng()
        num_masks = self._iteration_num_masks(micro) if k_all > 1 else None
        self.optimizer.zero_grad(set_to_none=True)
        values: list[dict[str, float]] = []
        for k, mb in enumerate(micro):
            comm.set_rng_state(self._rng_states[k])
            last = k == k_all - 1
            no_sync = self.ddp_model.no_sync() if not last and self.ddp_model is not self.model else nullcontext()
            counted = self.model.criterion.fixed_num_masks(num_masks) if num_masks is not None else nullcontext()
            with no_sync, counted:
                values.append(self.forward_backward(mb, scale=1.0 / k_all))
            self._rng_states[k] = comm.get_rng_state()
        if self.clipper is not None:
            self.scaler.unscale_(self.optimizer)
            self.clipper([p for g in self.optimizer.param_groups for p in g["params"]])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {key: sum(v[key] for v in values) / k_all for key in values[0]}

    # -- loop -------------------------------------------------------------------------------------------
    def build_train_loader(self) -> Iterator[list[dict]]:
        return iter(
            build_train_loader(
                self.cfg,
                rank=self.rank,
                world_size=self.world_size,
                seed=self.seed,
                start_iter=self.start_iter,
                accumulation=self.accumulation,
            )
        )

    def _set_training_rng(self) -> None:
        """One RNG stream per micro-batch: that of virtual process ``rank * K + k`` (seeded with the seed
        plus its virtual rank, as process ``v`` of a ``world_size x K``-process run), or the saved ones."""
        k_all = self.accumulation
        virtual = [self.rank * k_all + k for k in range(k_all)]
        if self._resume_rng is not None and len(self._resume_rng) == self.world_size * k_all:
            self._rng_states = [self._resume_rng[v] for v in virtual]
            return
        if self._resume_rng is not None:
            logger.warning(
                "the checkpoint was written by %d (virtual) processes, this run has %d x %d: RNG streams are "
                "reseeded, so the continuation is statistically but not bitwise equal to an uninterrupted run",
                len(self._resume_rng),
                self.world_size,
                k_all,
            )
        offset = 0 if self._resume_rng is None else 1_000_003 * self.start_iter
        self._rng_states = []
        for v in virtual:
            comm.seed_all(self.seed + v + offset)
            self._rng_states.append(comm.get_rng_state())

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Run iterations ``start_iter .. MAX_ITER - 1`` (or up to ``stop_at``, exclusive, as if the
        process were killed there). Returns the last evaluation results."""
        s, t = self.cfg.SOLVER, self.cfg.TEST
        end = self.max_iter if stop_at is None else min(stop_at, self.max_iter)
        if self.start_iter >= self.max_iter:
            logger.info("training already finished (iteration %d of %d)", self.start_iter, self.max_iter)
            return self.eval_results
        loader = self.build_train_loader()  # before restoring RNG: creating workers draws from it
        self._set_training_rng()
        logger.info(
            "training iterations %d..%d on %d process(es), %s", self.start_iter, end - 1, self.world_size, self.device
        )
        engine = self.cfg.get("SAN_ENGINE", {})
        if self.start_iter == 0 and engine.get("EVAL_AT_START", False) and self.cfg.DATASETS.TEST:
            logger.info("evaluating the starting weights (before the first step)")
            self.start_results = self.evaluate_keeping_rng(os.path.join(self.output_dir, START_RESULTS))
        start_time = time.perf_counter()
        for it in range(self.start_iter, end):
            self.iteration = it
            t0 = time.perf_counter()
            batch = next(loader)
            data_time = time.perf_counter() - t0
            if it < int(engine.get("SAMPLE_BATCHES", 0)) and comm.is_main_process():
                self._draw_batch(batch, it)
            losses = self.run_step(batch)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            losses = comm.reduce_mean(losses, self.device)
            self.writer.put(
                it, total_loss=sum(losses.values()), **losses, lr=lr, data_time=data_time, time=time.perf_counter() - t0
            )
            last = it == self.max_iter - 1
            if s.CHECKPOINT_PERIOD > 0 and (it + 1) % s.CHECKPOINT_PERIOD == 0:
                self.save(f"model_{it:07d}", it)
            if last:
                self.save("model_final", it)
            extra = None
            if t.EVAL_PERIOD > 0 and ((it + 1) % t.EVAL_PERIOD == 0 or last) and self.cfg.DATASETS.TEST:
                extra = self.evaluate_keeping_rng()
            if (it + 1) % self.log_period == 0 or last or extra:
                self.writer.write(it, extra)
        logger.info("trained %d iterations in %s", end - self.start_iter, format_eta(time.perf_counter() - start_time))
        if end == self.max_iter and self.cfg.get("SAN_ENGINE", {}).get("SAVE_PRETRAINED", False):
            self.save_pretrained(os.path.join(self.output_dir, "pretrained"))
        self.writer.close()
        return self.eval_results

    def save_pretrained(self, directory: str) -> None:
        """Write the trained model in the Hub format (weights, config, a model card with the last
        evaluation results); main process only."""
        if comm.is_main_process():
            self.model.save_pretrained(directory, results=self.eval_results or None)
            logger.info("saved the model in the Hub format to %s", directory)
        comm.barrier()

    def evaluate_keeping_rng(self, output_dir: str | None = None) -> dict[str, float]:
        """Evaluate on DATASETS.TEST without disturbing the training RNG streams; flat metrics. Results go
        to ``OUTPUT_DIR/inference`` (and ``eval_results``), or to ``output_dir`` when given."""
        state = comm.get_rng_state()
        results = evaluate(self.model, self.cfg, output_dir=output_dir)
        if output_dir is None:
            self.eval_results = results
        comm.set_rng_state(state)
        return flatten_results(results)

    def _draw_batch(self, batch: Sequence[dict], it: int) -> None:
        """``train_batch<it>.jpg``: the iteration's images after augmentation, their labels drawn on them."""
        from .pictures import batch_picture

        path = os.path.join(self.output_dir, f"train_batch{it}.jpg")
        batch_picture(batch, path)
        logger.info("drew training batch %d to %s", it, path)
