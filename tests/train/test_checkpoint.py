"""Atomic checkpoint writes never leave a partial file behind."""

from __future__ import annotations

import pytest
import torch

from otcfm.train.checkpoint import load_checkpoint, save_atomic


def test_round_trip_and_no_temp_files(tmp_path):
    path = save_atomic({"a": torch.arange(3)}, tmp_path / "ck" / "latest.pt")
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]


def test_failed_write_keeps_previous(tmp_path):
    path = save_atomic({"v": 1}, tmp_path / "latest.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"v": Unpicklable()}, path)
    assert load_checkpoint(path)["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_corrupt_checkpoint_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
