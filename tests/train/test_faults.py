"""Faults a user can meet with run folders, end to end through the command line: two trainings
of one run at once, kill -9 then --resume, corrupt and malicious checkpoints, run names that
would leave the output folder, and outputs that must be written whole or not at all."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from otcfm import plots
from otcfm.cli import main
from otcfm.train.checkpoint import load_checkpoint
from otcfm.train.runfolder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only spins

FLAGS = [
    "--task", "moons-8gaussians", "--method", "otcfm", "--n-train", "256", "--n-test", "64",
    "--width", "16", "--depth", "2", "--batch-size", "64", "--quiet", "--no-eval",
    "--set", "data.n_val=64", "--set", "eval.ode_steps=5", "--set", "optim.ema_decay=0.9",
]


def train_args(out: Path, name: str, steps: int, *extra: str) -> list[str]:
    return ["train", *FLAGS, "--name", name, "--out", str(out), "--steps", str(steps), *extra]


def otcfm(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "otcfm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # in place, as a full disk or a bad copy leaves it
        handle.truncate(size // 3)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Model, EMA and optimizer of two checkpoints are bit-identical."""
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            assert torch.equal(sa[i][name], sb[i][name]), ("optimizer", i, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert [r["step"] for r in a["history"]] == [r["step"] for r in b["history"]]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- concurrency
def test_two_trainings_of_one_run_at_once_one_trains_the_other_is_refused(tmp_path):
    args = train_args(tmp_path, "x", 300, "--checkpoint-every", "50", "--val-every", "100")
    procs = [otcfm(*args), otcfm(*args)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (winner, out, _), = [r for r in results if r[0].returncode == 0]
    (_, _, refused), = [r for r in results if r[0].returncode == 2]
    last = refused.strip().splitlines()[-1]
    assert last.startswith("otcfm train: error: "), refused[-2000:]
    # refused while the other trained (naming it), or after it finished (a run is there)
    assert (f"in use by another otcfm process (pid {winner.pid} on host" in last
            or "already holds a run; pass --resume" in last), last
    assert "run written" in out
    run = tmp_path / "x"
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 300
    steps = [int(r["step"]) for r in csv.DictReader((run / "log.csv").open())]
    assert steps == [100, 200, 300]
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 300


def test_a_run_folder_in_use_refuses_train_fit_and_evaluate(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 10, "--val-every", "10")) == 0
    assert main(["evaluate", str(run), "--adaptive", "none", "--no-plots"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    holder = RunFolder(run)
    holder.open(resume=True)
    try:
        held = f"in use by another otcfm process (pid {os.getpid()} on host"
        capsys.readouterr()
        for argv in (train_args(tmp_path, "r", 20, "--resume"),
                     ["evaluate", str(run), "--adaptive", "none", "--no-plots"],
                     ["trajectory", "fit", "--name", "r", "--out", str(tmp_path), "--steps",
                      "5", "--resume", "--quiet"]):
            assert main(argv) == 2, argv
            assert held in one_line_error(capsys)
    finally:
        holder.close()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"
            } == {k: v for k, v in before.items() if k != ".lock"}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_at_a_random_step_then_resume_is_bit_identical(tmp_path, capsys):
    seed = int(os.environ.get("OTCFM_FAULT_SEED", time.time_ns() % 1_000_000))
    kill_after = random.Random(seed).choice([30, 90, 150])
    why = f"kill after step {kill_after} (OTCFM_FAULT_SEED={seed} repeats this draw)"
    every = ["--checkpoint-every", "10", "--val-every", "50"]
    proc = otcfm(*train_args(tmp_path, "killed", 300, *every))
    latest = tmp_path / "killed" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while not (latest.is_file() and load_checkpoint(latest)["step"] >= kill_after):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, why
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it was killed; {why}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = load_checkpoint(latest)["step"]
    assert kill_after <= killed_at < 300, why
    resumed = otcfm(*train_args(tmp_path, "killed", 300, *every, "--resume"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert f"took over the lock of pid {proc.pid}" in err, err[-2000:]  # the dead holder's
    assert main(train_args(tmp_path, "straight", 300, *every)) == 0
    capsys.readouterr()
    assert_same_training_state(load_checkpoint(latest),
                               load_checkpoint(tmp_path / "straight/checkpoints/latest.pt"))


# ---------------------------------------------------------------------------- corrupt files
def test_resume_past_a_truncated_latest_equals_an_uninterrupted_run(tmp_path, capsys, caplog):
    every = ["--checkpoint-every", "10", "--val-every", "10"]
    assert main(train_args(tmp_path, "straight", 40, *every)) == 0
    assert main(train_args(tmp_path, "cut", 30, *every)) == 0
    truncate(tmp_path / "cut" / "checkpoints" / "latest.pt")  # and step-000030.pt, its link
    with caplog.at_level(logging.WARNING, logger="otcfm.train"):
        assert main(train_args(tmp_path, "cut", 40, *every, "--resume")) == 0
    assert "checkpoints/latest.pt is corrupt or truncated" in caplog.text
    assert "resuming from step-000020.pt (step 20)" in caplog.text
    capsys.readouterr()
    ckpt = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.pt", "latest.pt", "latest.pt.corrupt", "step-000020.pt", "step-000030.pt",
        "step-000030.pt.corrupt", "step-000040.pt"]
    assert_same_training_state(load_checkpoint(ckpt / "latest.pt"),
                               load_checkpoint(tmp_path / "straight/checkpoints/latest.pt"))


def test_evaluate_uses_a_good_best_and_never_half_rewrites_its_outputs(
    tmp_path, capsys, caplog, monkeypatch
):
    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 20, "--checkpoint-every", "10", "--val-every",
                           "10")) == 0
    ckpt = run / "checkpoints"
    truncate(ckpt / "latest.pt")
    evaluate = ["evaluate", str(run), "--adaptive", "none"]
    assert main(evaluate) == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["checkpoint"] == "best.pt"
    outputs = ["metrics.json", "samples.pt", "report.md", "plots/overview.png",
               "plots/training.png"]
    before = {name: (run / name).read_bytes() for name in outputs}

    def broken(*args, **kwargs):
        raise ValueError("the plot failed")

    monkeypatch.setattr(plots, "plot_history", broken)  # fails after samples and metrics
    assert main(evaluate) == 2
    assert "the plot failed" in one_line_error(capsys)
    monkeypatch.undo()
    for name in ["best.pt", *(p.name for p in ckpt.glob("step-*.pt"))]:
        truncate(ckpt / name)
    with caplog.at_level(logging.WARNING, logger="otcfm.train"):
        assert main(evaluate) == 2
    assert "best.pt is corrupt or truncated" in caplog.text
    assert "no readable checkpoint" in one_line_error(capsys)
    assert {name: (run / name).read_bytes() for name in outputs} == before
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


def test_best_missing_or_corrupt_falls_back_with_a_notice(tmp_path, capsys, caplog):
    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 20, "--checkpoint-every", "10", "--val-every",
                           "10")) == 0
    truncate(run / "checkpoints" / "best.pt")
    out = tmp_path / "s.npy"
    with caplog.at_level(logging.WARNING, logger="otcfm.train"):
        assert main(["sample", str(run), "--n", "5", "--out", str(out)]) == 0
    assert "best.pt is corrupt or truncated" in caplog.text
    assert "using latest.pt (step 20), not best.pt" in caplog.text
    assert "latest.pt, step 20" in capsys.readouterr().out


class Marker:
    """Unpickling this runs code: it creates the file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 10, "--checkpoint-every", "10", "--val-every",
                           "10")) == 0
    marker = tmp_path / "marker"
    for path in (run / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        path.unlink()  # (latest.pt is a link: write each file anew)
        torch.save({**state, "payload": Marker(marker)}, path)
    out = tmp_path / "samples.npy"
    for argv in (["sample", str(run), "--n", "5", "--out", str(out)],
                 ["sample", str(run), "--n", "5", "--out", str(out), "--checkpoint", "latest"],
                 ["evaluate", str(run)],
                 train_args(tmp_path, "r", 20, "--resume")):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "refusing to unpickle" in one_line_error(capsys)
    assert not marker.exists() and not out.exists()


# ---------------------------------------------------------------------------- names, outputs
@pytest.mark.parametrize("name", ["..", "../x", "/abs", "a/b", ""])
def test_run_names_that_leave_the_output_folder_are_refused(tmp_path, capsys, name):
    out = tmp_path / "runs"
    assert main(train_args(out, name, 5)) == 2
    assert "--name" in one_line_error(capsys)
    fit = ["trajectory", "fit", "--name", name, "--out", str(out), "--steps", "5", "--quiet"]
    assert main(fit) == 2
    assert "--name" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_resume_of_a_missing_trajectory_run_is_an_error(tmp_path, capsys):
    fit = ["trajectory", "fit", "--name", "typo", "--out", str(tmp_path), "--steps", "5",
           "--resume", "--quiet"]
    assert main(fit) == 2
    assert "there is no run" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_sample_out_is_written_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    import otcfm.train.cli as commands

    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 10, "--val-every", "10")) == 0
    out = tmp_path / "s.csv"
    out.write_text("old\n")
    real = commands.save_points

    def half_then_fail(path, x):
        Path(path).write_text("0.1,0.2\n")
        raise ValueError("disk full")

    monkeypatch.setattr(commands, "save_points", half_then_fail)
    assert main(["sample", str(run), "--n", "5", "--out", str(out)]) == 2
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.csv"]
    monkeypatch.setattr(commands, "save_points", real)
    assert main(["sample", str(run), "--n", "5", "--out", str(out)]) == 0
    assert len(out.read_text().strip().splitlines()) == 5


def test_the_training_plot_shows_a_run_shorter_than_val_every(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(train_args(tmp_path, "r", 7, "--val-every", "1000")) == 0
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append((Path(path), [[(list(line.get_xdata()), list(line.get_ydata()),
                                       line.get_marker()) for line in ax.lines]
                                     for ax in fig.axes]))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    assert main(["evaluate", str(run), "--adaptive", "none"]) == 0
    (_, axes), = [f for f in figures if f[0].name.startswith(".training")]
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [7]  # one row: the last step
    loss, val = axes[0]
    assert loss[0] == [7.0] and loss[1] == [pytest.approx(float(rows[0]["loss"]))]
    assert val[0] == [7.0] and val[1] == [pytest.approx(float(rows[0]["val_loss"]))]
    assert loss[2] == "o" and val[2] == "o"  # a single point is drawn, not an invisible line
    assert (run / "plots" / "training.png").stat().st_size > 1000
