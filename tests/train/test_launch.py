"""``otcfm train --nproc 2`` on the CPU (gloo): the launcher, and a process killed mid-run.

These start real processes through torch's elastic launcher, as ``torchrun --standalone``
does, so they take several seconds each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otcfm.train.checkpoint import load_checkpoint
from otcfm.train.launch import LaunchFailure, _describe, launch

FLAGS = [
    "--task", "moons-8gaussians", "--method", "icfm", "--n-train", "2000", "--n-test", "200",
    "--width", "32", "--depth", "2", "--batch-size", "64", "--quiet", "--no-eval",
    "--set", "data.n_val=200", "--set", "eval.ode_steps=10", "--set", "distributed.timeout=60",
]


def otcfm(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "otcfm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def workers_of(pid: int) -> dict[int, int]:
    """rank -> pid of the processes a launcher started (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == pid:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


def test_nproc_2_writes_the_usual_run_folder(tmp_path):
    proc = otcfm("train", *FLAGS, "--steps", "30", "--val-every", "15", "--nproc", "2",
                 "--name", "ddp", "--out", str(tmp_path))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    run = tmp_path / "ddp"
    for rel in ("config.toml", "log.csv", "metrics.json", "checkpoints/latest.pt",
                "checkpoints/best.pt"):
        assert (run / rel).is_file(), rel
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 30
    assert '"processes": 2' in (run / "metrics.json").read_text()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_killed_process_stops_the_run_with_one_line_and_it_resumes(tmp_path):
    args = ["train", *FLAGS, "--name", "dead", "--out", str(tmp_path), "--nproc", "2",
            "--checkpoint-every", "50", "--val-every", "50"]
    proc = otcfm(*args, "--steps", "100000")
    latest = tmp_path / "dead" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while not latest.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    ranks = workers_of(proc.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("otcfm train: error: rank 1 was killed by SIGKILL"), err[-3000:]
    assert "--resume" in last
    step = int(load_checkpoint(latest)["step"])
    assert 50 <= step < 100000
    again = otcfm(*args, "--steps", str(step + 20), "--resume")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert load_checkpoint(latest)["step"] == step + 20


def test_failures_are_described_in_one_line():
    class Failure:
        def __init__(self, code):
            self.exitcode = code

    class Err:
        failures = {1: Failure(-9), 0: Failure(2)}

    text = _describe(Err())
    assert text.startswith("rank 0 exited with code 2; rank 1 was killed by SIGKILL")
    assert "\n" not in text and "--resume" in text
    Err.failures = {0: Failure(-15), 1: Failure(-9)}  # rank 0 stopped by the launcher
    assert _describe(Err()).startswith("rank 1 was killed by SIGKILL; the other")
    Err.failures = {0: Failure(2), 1: Failure(2)}  # both printed a user error
    assert _describe(Err()) == (
        "rank 0 exited with code 2; rank 1 exited with code 2: the error each printed above "
        "stopped the run"
    )
    with pytest.raises(ValueError, match="--nproc"):
        launch(["list"], 0)
    assert issubclass(LaunchFailure, RuntimeError)
