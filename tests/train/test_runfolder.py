"""The run-folder writer: the files it writes, only on rank 0, and atomically (a write that
fails leaves the previous file whole and no temporary file behind)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from otcfm.train.runfolder import RunFolder


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
    state = torch.load(path, weights_only=False)
    assert state["step"] == 2 and torch.equal(state["w"], torch.arange(3))
    folder.save("best.pt", lambda: {"step": 7})
    assert torch.load(folder.checkpoints / "best.pt", weights_only=False) == {"step": 7}


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
    assert sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    write(3)
    assert target.read_bytes() != before

