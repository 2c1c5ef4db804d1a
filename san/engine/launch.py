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
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "LaunchFailed",
    "add_launch_arguments",
    "check_launch_arguments",
    "launch",
    "needs_launch",
    "run_launched",
    "say",
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


_MESSAGES = "SAN_LAUNCH_MESSAGES"  # the folder where launched processes leave what they have to say


class LaunchFailed(RuntimeError):
    """A process of a launched run failed. ``messages``: what the processes said, each distinct one
    once (a refusal's one line, or an unexpected error's traceback); ``refused``: every failed process
    refused with a message (bad input: exit code 2) rather than crashing."""

    def __init__(self, messages: list[str], refused: bool) -> None:
        super().__init__("; ".join(messages) or "a process failed")
        self.messages, self.refused = messages, refused


def say(message: str) -> None:
    """Print a process's error line. In a process that :func:`launch` started, the line goes to the
    launcher instead, which prints each distinct line once when the processes are done: N processes
    that meet the same bad input say so once, not N times."""
    folder = os.environ.get(_MESSAGES)
    if not folder or not os.path.isdir(folder):
        print(message, file=sys.stderr)
        return
    name = f"{int(os.environ.get('RANK', '0')):06d}-{time.monotonic_ns()}.txt"
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        f.write(message)


def _said(folder: str) -> list[str]:
    """The distinct messages left in ``folder``, in rank order."""
    texts = [Path(folder, n).read_text(encoding="utf-8") for n in sorted(os.listdir(folder))]
    return list(dict.fromkeys(texts))


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
    try:
        worker(args)
    except SystemExit as e:  # a refusal with a message: said through the launcher, exit code 2
        if isinstance(e.code, str):
            say(e.code)
            raise SystemExit(2) from None
        raise


def launch(worker: Callable[[Any], Any], args: argparse.Namespace, prog: str) -> None:
    """Run ``worker(args)`` in ``--num-gpus`` processes on this machine and wait for them all.

    ``worker`` must be a module-level function (processes are spawned, so it is pickled by name).
    A process that fails makes this raise :class:`LaunchFailed` with what the processes said (see
    :func:`say`; a ``SystemExit("message")`` in a worker is said the same way), without the
    launcher's own traceback. Lines said by processes that did not fail are printed once at the end."""
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
    with tempfile.TemporaryDirectory(prefix="san-launch-") as folder:
        before = os.environ.get(_MESSAGES)
        os.environ[_MESSAGES] = folder  # the spawned processes inherit it
        try:
            mp.start_processes(
                _spawned, args=(worker, args, world, addr, port), nprocs=args.num_gpus, join=True, start_method="spawn"
            )
        except mp.ProcessRaisedException as e:  # an unexpected error: the process's traceback, once
            crash = str(e).split("terminated with the following error:", 1)[-1].strip()
            raise LaunchFailed([*_said(folder), crash], refused=False) from None
        except mp.ProcessExitedException as e:
            said = _said(folder)
            refused = e.exit_code == 2 and bool(said)
            raise LaunchFailed(
                said or [f"{prog}: process {e.error_index} exited with code {e.exit_code}"], refused
            ) from None
        finally:
            if before is None:
                os.environ.pop(_MESSAGES, None)
            else:
                os.environ[_MESSAGES] = before
        for message in _said(folder):
            print(message, file=sys.stderr)


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
    except LaunchFailed as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return 2
    if not summary.is_file():  # a process refused (its line was printed once) or died without a word
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
