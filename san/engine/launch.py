"""Starting the processes of a multi-process run without torchrun: the rule ``san train``,
``san predict`` and ``san index`` share (detectron2's ``launch`` on ``torch.multiprocessing``).

Under ``torchrun`` the environment already describes the group (``RANK``, ``WORLD_SIZE``, ...) and
nothing is started. Otherwise ``--num-gpus N`` processes start on this machine with the environment
torchrun would give them, and ``--num-machines`` / ``--machine-rank`` / ``--dist-url`` connect
several machines. Without CUDA the processes run on the CPU (gloo). :func:`run_launched` and
:func:`worker_group` are the two ends of a run over a file collection (``san predict``, ``san index``):
the starting command, which reads the run's summary, and each process's place in the group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "add_launch_arguments",
    "check_launch_arguments",
    "launch",
    "needs_launch",
    "run_launched",
    "under_torchrun",
    "worker_group",
]


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` (detectron2's flags)."""
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    p.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
    p.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num_machines - 1)")
    p.add_argument(
        "--dist-url",
        default=f"tcp://127.0.0.1:{port}",
        help="tcp://HOST:PORT of machine 0 for multi-machine runs; 'auto' picks a free local port",
    )


def check_launch_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the launch flags, or None."""
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        return "need --num-gpus >= 1, --num-machines >= 1 and 0 <= --machine-rank < --num-machines"
    if args.dist_url != "auto" and not (args.dist_url.startswith("tcp://") and ":" in args.dist_url[6:]):
        return f"--dist-url must be tcp://HOST:PORT or auto, got {args.dist_url!r}"
    if args.dist_url == "auto" and args.num_machines != 1:
        return "--dist-url auto only works on one machine; pass tcp://HOST:PORT of machine 0"
    return None


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher) already set up this process's place in a group."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launch(args: argparse.Namespace) -> bool:
    """Whether this command must start the processes itself."""
    return not under_torchrun() and args.num_gpus * args.num_machines > 1


def _spawned(local_rank: int, worker: Callable[[Any], Any], args: argparse.Namespace, world: int, addr: str, port: int):
    rank = args.machine_rank * args.num_gpus + local_rank
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(args.num_gpus),
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
    )
    worker(args)


def launch(worker: Callable[[Any], Any], args: argparse.Namespace, prog: str) -> None:
    """Run ``worker(args)`` in ``--num-gpus`` processes on this machine and wait for them all.

    ``worker`` must be a module-level function (processes are spawned, so it is pickled by name).
    A process that fails makes this raise (torch.multiprocessing's ``ProcessRaisedException``)."""
    import torch
    import torch.multiprocessing as mp

    from san.engine.comm import find_free_port

    problem = check_launch_arguments(args)
    if problem:
        raise SystemExit(f"{prog}: {problem}")
    world = args.num_gpus * args.num_machines
    if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        raise SystemExit(f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
    if not torch.cuda.is_available():
        print(f"{prog}: no CUDA device; starting {args.num_gpus} CPU processes (gloo)", file=sys.stderr)
    if args.dist_url == "auto":
        addr, port = "127.0.0.1", find_free_port()
    else:
        addr, port_s = args.dist_url[6:].rsplit(":", 1)
        port = int(port_s)
    mp.start_processes(
        _spawned, args=(worker, args, world, addr, port), nprocs=args.num_gpus, join=True, start_method="spawn"
    )


def run_launched(worker: Callable[[Any], Any], args: argparse.Namespace, prog: str, summary: Path, kept: str) -> int:
    """Start the processes of a run over a file collection and wait for them: the exit code is 0, or
    1 if the summary that rank 0 writes (``summary``, removed first) counts failed images; 130 after
    Ctrl-C (``kept`` says what stays); 2 if a process died or no summary was written."""
    summary.unlink(missing_ok=True)
    try:
        launch(worker, args, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept}", file=sys.stderr)
        return 130
    except Exception as e:  # a process died: its message was printed by that process
        print(f"{prog}: a process of the run failed ({type(e).__name__}); see the messages above", file=sys.stderr)
        return 2
    if not summary.is_file():
        print(f"{prog}: the run ended without writing {summary}", file=sys.stderr)
        return 2
    return 1 if json.loads(summary.read_text())["failed"] else 0


@contextmanager
def worker_group(args: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """One process's place in a run over a file collection: ``(rank, world_size)``. With several
    processes it joins a gloo group (objects only, with a 7-day timeout so that uneven shards of a
    long run do not hit it), puts an unset ``--device`` on this process's GPU where there is CUDA,
    and leaves the group at the end."""
    from san.engine import comm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    grouped = world > 1 and comm.init_distributed("cpu", timeout_minutes=7 * 24 * 60)
    try:
        if args.device is None and world > 1:
            import torch

            if torch.cuda.is_available():
                args.device = f"cuda:{comm.get_local_rank()}"
        yield comm.get_rank(), world
    finally:
        if grouped:
            import torch.distributed as dist

            dist.destroy_process_group()
