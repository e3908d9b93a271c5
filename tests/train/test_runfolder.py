"""The run-folder writer: the files it writes, only on rank 0, and atomically (a write that
fails leaves the previous file whole and no temporary file behind); its lock (one writer at a
time, a dead holder's lock taken over); run names that stay inside the output folder; the last
K checkpoints kept; the newest readable checkpoint found past corrupt ones."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from otcfm.train.checkpoint import CorruptCheckpoint, UnsafeCheckpoint, load_checkpoint
from otcfm.train.config import RunConfig
from otcfm.train.runfolder import RunFolder, check_run_name, newest_checkpoint


def test_files_of_a_run(tmp_path):
    folder = RunFolder(tmp_path / "run", fields=("step", "loss"))
    folder.start("seed = 1\n")
    assert (tmp_path / "run" / "config.toml").read_text() == "seed = 1\n"
    rows = [{"step": 1, "loss": 0.5, "extra": 9}, {"step": 2, "loss": 0.25}]
    folder.log(rows[:1])
    folder.log(rows)  # rewritten from the whole history, never appended
    read = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert read == [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "0.25"}]
    folder.merge_metrics({"train": {"steps": 2}})
    folder.merge_metrics({"eval": {"w1": 0.1}})
    folder.merge_metrics({"train": {"steps": 3}})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == {"train": {"steps": 3}, "eval": {"w1": 0.1}}
    path = folder.save("latest.pt", {"step": 2, "w": torch.arange(3)})
    assert path == tmp_path / "run" / "checkpoints" / "latest.pt"
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.arange(3))
    folder.save("best.pt", lambda: {"step": 7})
    assert load_checkpoint(folder.checkpoints / "best.pt") == {"step": 7}


def test_a_missing_field_is_an_error(tmp_path):
    with pytest.raises(KeyError):
        RunFolder(tmp_path, fields=("step", "val_loss")).log([{"step": 1}])
    with pytest.raises(ValueError, match="fields"):
        RunFolder(tmp_path, fields=())


def test_other_ranks_write_nothing_and_build_no_state(tmp_path):
    folder = RunFolder(tmp_path / "run", rank=1)
    assert not folder.writes

    def state():
        raise AssertionError("rank 1 must not build a checkpoint")

    folder.start("seed = 1\n")
    folder.log([{"step": 1, "loss": 0.5}])
    folder.merge_metrics({"train": {}})
    assert folder.save("latest.pt", state) is None
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["checkpoint", "log", "metrics"])
def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    folder = RunFolder(tmp_path, fields=("step", "loss"))
    write = {
        "checkpoint": lambda v: folder.save("latest.pt", {"step": v}),
        "log": lambda v: folder.log([{"step": v, "loss": 1.0}]),
        "metrics": lambda v: folder.merge_metrics({"train": {"steps": v}}),
    }[kind]
    target = {"checkpoint": folder.checkpoints / "latest.pt", "log": tmp_path / "log.csv",
              "metrics": tmp_path / "metrics.json"}[kind]
    write(1)
    before = target.read_bytes()

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write(2)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir() if ".tmp" in p.name) == []
    monkeypatch.undo()
    write(3)
    assert target.read_bytes() != before



# ---------------------------------------------------------------------------- the lock
def test_one_writer_at_a_time_and_the_refusal_names_the_holder(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    assert first.open() is True
    assert first.open() is False  # already held by this object: nothing to do
    with pytest.raises(FileExistsError) as info:
        second.open(resume=True)
    message = str(info.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "--name" in message and "\n" not in message
    first.close()
    with second.writing():  # free again once released
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released cleanly
    assert RunFolder(tmp_path / "other", rank=1).open() is False  # only rank 0 locks
    assert not (tmp_path / "other").exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from otcfm.train.runfolder import RunFolder
    RunFolder(sys.argv[1]).open()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_another_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=f"in use by another otcfm process \\(pid "
                                                  f"{holder.pid} on host"):
            RunFolder(run).open(resume=True)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file still names it
        holder.wait(timeout=30)
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    folder = RunFolder(run)
    with caplog.at_level(logging.WARNING, logger="otcfm.train"):
        assert folder.open(resume=True)
    assert f"took over the lock of pid {holder.pid}" in caplog.text
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    folder.close()


def test_a_fresh_run_is_refused_over_an_existing_one(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.writing(resume=False):
        folder.start("seed = 1\n")  # a run killed before its first checkpoint still counts
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        folder.open(resume=False)
    assert folder.open(resume=True)  # the refusal released the lock
    folder.close()


# ---------------------------------------------------------------------------- run names
@pytest.mark.parametrize("name", ["..", ".", "", " ", "../x", "a/b", "/abs", "a\\b", "C:x",
                                  "x\ny"])
def test_run_names_cannot_leave_the_output_folder(tmp_path, name):
    with pytest.raises(ValueError, match=r"name \(--name\) must be a single folder name"):
        check_run_name(name)
    with pytest.raises(ValueError, match="--name"):
        RunConfig(name=name, out_dir=str(tmp_path)).validate()


@pytest.mark.parametrize("name", ["run", "moons-8gaussians-otcfm", "a.b", "..x", "x y"])
def test_plain_run_names_pass(name):
    assert check_run_name(name) == name


# ---------------------------------------------------------------------------- checkpoints
def steps_kept(folder: RunFolder) -> list[str]:
    return sorted(p.name for p in folder.checkpoints.iterdir())


def test_the_last_k_checkpoints_are_kept_and_latest_is_the_newest(tmp_path):
    folder = RunFolder(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        folder.save_checkpoint(step, lambda step=step: {"step": step})
    assert steps_kept(folder) == ["latest.pt", "step-000030.pt", "step-000040.pt"]
    assert load_checkpoint(folder.checkpoints / "latest.pt") == {"step": 40}
    assert load_checkpoint(folder.checkpoints / "step-000030.pt") == {"step": 30}
    with pytest.raises(ValueError, match="keep_checkpoints"):
        RunFolder(tmp_path, keep=0)


def truncate(path) -> None:
    data = path.read_bytes()
    with open(path, "r+b") as handle:  # in place, as a full disk or a bad copy leaves it
        handle.truncate(len(data) // 3)


def test_the_newest_readable_checkpoint_is_used_and_the_bad_ones_named(tmp_path, caplog):
    folder = RunFolder(tmp_path, keep=3)
    for step in (10, 20, 30):
        folder.save_checkpoint(step, {"step": step, "w": torch.full((100,), float(step))})
    truncate(folder.checkpoints / "latest.pt")  # the same file as step-000030.pt
    with caplog.at_level(logging.WARNING, logger="otcfm.train"):
        state, path = newest_checkpoint(folder.checkpoints)
    assert state["step"] == 20 and path.name == "step-000020.pt"
    assert "latest.pt is corrupt or truncated" in caplog.text
    assert steps_kept(folder) == ["latest.pt", "step-000010.pt", "step-000020.pt",
                                  "step-000030.pt"]  # a reader changes nothing
    with folder.writing():  # the writer sets them aside before it continues the run
        state, path = folder.load_latest()
        assert path.name == "step-000020.pt"
        assert steps_kept(folder) == ["latest.pt.corrupt", "step-000010.pt",
                                      "step-000020.pt", "step-000030.pt.corrupt"]
        folder.save_checkpoint(25, {"step": 25})
        assert load_checkpoint(folder.checkpoints / "latest.pt") == {"step": 25}
    for name in ("step-000010.pt", "step-000020.pt", "step-000025.pt"):
        truncate(folder.checkpoints / name)
    with pytest.raises(CorruptCheckpoint, match="no readable checkpoint .*latest.pt, "
                                                "step-000025.pt, step-000020.pt"):
        newest_checkpoint(folder.checkpoints)
    assert newest_checkpoint(tmp_path / "nothing") is None


def test_a_checkpoint_that_would_run_code_is_an_error_not_skipped(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(10, {"step": 10})
    folder.save_checkpoint(20, {"step": 20})
    torch.save({"step": 30, "x": socket.socket}, folder.checkpoints / "latest.pt")
    with pytest.raises(UnsafeCheckpoint, match="refusing to unpickle"):
        newest_checkpoint(folder.checkpoints)
