"""Shared fixtures of the training tests: a tiny run config and a 2-process gloo launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otcfm.train.config import RunConfig

JOB = Path(__file__).with_name("ddp_job.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(name: str, args: list[str], *, world: int = 2, timeout: float = 240) -> None:
    """Run tests/train/``name`` on ``world`` local gloo processes (torchrun's environment)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(JOB.with_name(name)), *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"


def run_ranks(cfg: RunConfig, folder: Path, *, world: int = 2, resume: bool = False,
              timeout: float = 240) -> None:
    """Train ``cfg`` on ``world`` local processes (gloo), as torchrun would start them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.name}-{world}.toml"
    path.write_text(cfg.to_toml())
    run_script(JOB.name, [str(path), "resume" if resume else "new"], world=world,
               timeout=timeout)


@pytest.fixture
def scripts():
    """``scripts(name, args, world=2)``: run a job script of this folder on local processes."""
    return run_script


@pytest.fixture
def ranks():
    """``ranks(cfg, folder, world=2, resume=False)``: run a config on local gloo processes."""
    return run_ranks
