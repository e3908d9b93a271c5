"""Checkpoints: atomic writes of plain values only, read back without running code, corrupt
files named, and the one-time conversion of old checkpoints (only on explicit request)."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from otcfm.cli import main
from otcfm.train import checkpoint as ck
from otcfm.train.checkpoint import (
    CorruptCheckpoint,
    StagedFiles,
    UnsafeCheckpoint,
    convert_checkpoint,
    load_checkpoint,
    save_atomic,
)


class Marker:
    """Unpickling this runs code: it creates the file ``path`` (the proof it ran)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint whose pickle would create ``marker`` when loaded with weights_only=False."""
    torch.save({"step": 1, "model": {}, "payload": Marker(marker)}, path)
    return path


def test_round_trip_and_no_temp_files(tmp_path):
    path = save_atomic({"a": torch.arange(3), "b": [1, 2.5, "x", None, (True,)]},
                       tmp_path / "ck" / "latest.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["a"], torch.arange(3)) and state["b"] == [1, 2.5, "x", None, (True,)]
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = save_atomic({"v": 1}, tmp_path / "latest.pt")

    def half_then_fail(obj, handle):
        handle.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"v": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


@pytest.mark.parametrize("value, kind", [
    (np.float64(1.0), "numpy.float64"),
    (np.zeros(2), "numpy.ndarray"),
    (Path("x"), "PosixPath" if os.name != "nt" else "WindowsPath"),
])
def test_only_plain_values_are_saved(tmp_path, value, kind):
    with pytest.raises(TypeError, match=rf"latest.pt\['history'\]\[0\]\['x'\] is a .*{kind}"):
        save_atomic({"history": [{"x": value}]}, tmp_path / "latest.pt")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_files_are_named(tmp_path):
    good = save_atomic({"w": torch.randn(1000)}, tmp_path / "good.pt")
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"",
             "junk.pt": b"not a checkpoint"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptCheckpoint, match=name) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "marker"
    Marker(marker).__reduce__()  # the payload is real: unpickled, it creates the marker
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match="refusing to unpickle") as info:
        load_checkpoint(evil)
    # the command it suggests is complete: it runs as written (only for trusted files)
    assert f"otcfm convert-checkpoint {evil} --i-trust-this-file`" in str(info.value)
    assert "\n" not in str(info.value)
    raw = tmp_path / "raw.pt"  # a bare pickle, not a torch archive
    raw.write_bytes(pickle.dumps({"payload": Marker(marker)}))
    with pytest.raises(ValueError):
        load_checkpoint(raw)
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the control: it does run code
    assert marker.exists()


@dataclasses.dataclass
class OldSpec:
    width: int
    name: str


def test_convert_checkpoint_makes_old_files_plain(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"step": np.int64(7), "spec": OldSpec(3, "mlp"), "rng": np.arange(3.0),
                "path": Path("data.npy"), "history": [(1, np.float32(0.5))],
                "model": {"w": torch.ones(2)}}, old)
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint(old)
    assert convert_checkpoint(old) == old
    state = load_checkpoint(old)
    assert state["step"] == 7 and type(state["step"]) is int
    assert state["spec"] == {"width": 3, "name": "mlp"}
    assert torch.equal(state["rng"], torch.arange(3.0, dtype=torch.float64))
    assert state["path"] == "data.npy" and state["history"] == [(1, 0.5)]
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_convert_checkpoint_refuses_objects_without_a_plain_form(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"f": print}, old)
    before = old.read_bytes()
    with pytest.raises(ValueError, match="left unchanged"):
        convert_checkpoint(old, tmp_path / "new.pt")
    assert old.read_bytes() == before and not (tmp_path / "new.pt").exists()


def test_the_convert_command_runs_only_when_the_user_vouches_for_the_file(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "shared.pt", marker)
    assert main(["convert-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--i-trust-this-file" in err and "\n" not in err
    assert not marker.exists()
    assert main(["convert-checkpoint", str(path), "--out", str(tmp_path / "new.pt"),
                 "--i-trust-this-file"]) == 0
    assert marker.exists()  # as the help warns: converting runs the file's code
    assert load_checkpoint(tmp_path / "new.pt") == {"step": 1, "model": {}, "payload": None}


def test_staged_files_are_written_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.pt"
    a.write_text("old")
    with pytest.raises(RuntimeError, match="late failure"), StagedFiles() as staged:
        staged.write_text("new", a)
        staged.save({"x": torch.zeros(1)}, b)
        raise RuntimeError("late failure")
    assert a.read_text() == "old" and not b.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt"]
    with StagedFiles() as staged:
        staged.write_text("new", a)
        tmp = staged.path(tmp_path / "c.npy")
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.ones(2))
        staged.save({"x": torch.zeros(1)}, b)
        assert a.read_text() == "old"  # nothing in place before the block ends
    assert a.read_text() == "new" and np.load(tmp_path / "c.npy").tolist() == [1.0, 1.0]
    assert torch.equal(load_checkpoint(b)["x"], torch.zeros(1))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "b.pt",
                                                                          "c.npy"]


def test_written_files_get_the_umask_permissions(tmp_path):
    """Run files are as readable as any file the user writes (the umask's mode), not 0600;
    no temporary file is left beside them."""
    import stat

    from otcfm.train.checkpoint import save_atomic, write_text_atomic

    old = os.umask(0o022)
    try:
        text = write_text_atomic("x = 1\n", tmp_path / "config.toml")
        blob = save_atomic({"step": 1}, tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    for path in (text, blob):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "config.toml"]
