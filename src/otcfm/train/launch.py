"""Multi-process training on torch.distributed: joining a launched job, and launching one.

``torchrun --nproc_per_node N -m otcfm train ...`` starts N processes with the launcher's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); :func:`process_group`
joins them (gloo on the CPU, nccl on CUDA devices) for the duration of a run.
``otcfm train --nproc N ...`` calls :func:`launch`, which starts the same job on this machine
through torch's elastic launcher (torchrun's own machinery) and turns a failed process into
one readable line. Several machines use torchrun's rendezvous flags (``--nnodes``,
``--node_rank`` or ``--rdzv_endpoint``); see the README.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["LaunchFailure", "launch", "launched_world", "process_group"]


class LaunchFailure(RuntimeError):
    """A process of a job started by :func:`launch` failed; the message names it."""


def launched_world() -> int:
    """The number of processes of the job this process belongs to (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: str, backend: str = "", timeout: float = 600.0) -> Iterator[int]:
    """Join the launched job for the ``with`` block (nothing to do in a single process).

    ``backend`` "" picks nccl for CUDA devices and gloo otherwise. A process that waits
    longer than ``timeout`` seconds for the others stops with an error instead of hanging.
    Yields the world size.
    """
    world = launched_world()
    if world == 1 or dist.is_initialized():
        yield dist.get_world_size() if dist.is_initialized() else 1
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"), timeout=timedelta(seconds=timeout)
    )
    try:
        yield world
    finally:
        dist.destroy_process_group()


def launch(argv: Sequence[str], nproc: int, *, timeout: float = 600.0) -> None:
    """Run ``python -m otcfm <argv>`` on ``nproc`` local processes.

    As ``torchrun --standalone --nproc_per_node nproc -m otcfm <argv>`` would. Return when all
    finished. Raises :class:`LaunchFailure` naming the process that failed (its exit code or
    signal); the others are stopped.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be an integer >= 1, got {nproc!r}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"otcfm-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        rdzv_configs={"timeout": int(timeout)},
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "otcfm", *argv)
    except ChildFailedError as err:
        raise LaunchFailure(_describe(err)) from None


def _describe(err: object) -> str:
    """One line for a failed launch: which rank, how it ended, and what to do next.

    Processes the launcher itself stopped (SIGTERM) after another failed are not listed.
    """
    failures = getattr(err, "failures", {}) or {}
    ended = {rank: int(getattr(f, "exitcode", 1) or 1) for rank, f in failures.items()}
    causes = {r: c for r, c in ended.items() if c != -signal.SIGTERM} or ended
    parts = []
    for rank, code in sorted(causes.items()):
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        parts.append(f"rank {rank} {how}")
    what = "; ".join(parts) or str(err).splitlines()[0]
    if causes and all(code == 2 for code in causes.values()):  # the CLI's code for user errors
        return f"{what}: the error each printed above stopped the run"
    return (
        f"{what}; the other processes were stopped. The run keeps its last checkpoint: "
        f"continue it with the same command and --resume"
    )
