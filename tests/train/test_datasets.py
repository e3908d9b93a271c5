"""A run's data record (otcfm.train.datasets): what is recorded, and loading against it."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from otcfm.data.provenance import FileRecord
from otcfm.train.config import DataConfig
from otcfm.train.datasets import (
    check_same_data,
    data_seed,
    load_run_data,
    read_data_record,
    record_run_data,
)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "cells.npz", a=rng.normal(size=(60, 3)), b=rng.normal(size=(40, 3)))
    np.savetxt(folder / "t.tsv", rng.normal(size=(50, 3)), delimiter="\t")
    return folder


def test_record_holds_absolute_paths_sizes_hashes_and_built_ins(files, monkeypatch):
    monkeypatch.chdir(files.parent)
    rec = record_run_data(DataConfig(source="data/cells.npz:b", target="moons"), (3,))
    src = rec.inputs["data.source"]
    assert isinstance(src, FileRecord)
    assert src.path == str(files / "cells.npz") and src.key == "b"
    assert src.size == (files / "cells.npz").stat().st_size
    assert src.sha256 == hashlib.sha256((files / "cells.npz").read_bytes()).hexdigest()
    assert rec.inputs["data.target"] == "moons" and rec.event_shape == (3,)


def test_recorded_relative_paths_load_from_another_directory(files, tmp_path, monkeypatch):
    cfg = DataConfig(source="data/cells.npz:a", target="data/t.tsv", val_fraction=0.2)
    monkeypatch.chdir(files.parent)
    before = load_run_data(cfg, seed=1)
    rec = record_run_data(cfg, before.event_shape)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the config's relative paths now point nowhere
    with pytest.raises(FileNotFoundError, match=r"data\.source: points file not found"):
        load_run_data(cfg, seed=1)
    after = load_run_data(cfg, seed=1, record=rec)
    assert torch.equal(after.source.test, before.source.test)
    assert torch.equal(after.target.train, before.target.train)


def test_loading_against_a_record_refuses_changed_data(files):
    cfg = DataConfig(source=str(files / "cells.npz:a"), target=str(files / "t.tsv"))
    rec = record_run_data(cfg, (3,))
    with open(files / "t.tsv", "a") as fh:
        fh.write("0\t0\t0\n")
    with pytest.raises(ValueError, match=r"data\.target: .*t\.tsv changed since the run was "
                       r"trained.*--allow-changed-data"):
        load_run_data(cfg, seed=0, record=rec)
    with pytest.warns(UserWarning, match="used anyway"):
        data = load_run_data(cfg, seed=0, record=rec, allow_changed_data=True)
    assert sum(s.shape[0] for s in (data.target.train, data.target.val, data.target.test)) == 51


def test_a_record_that_disagrees_with_the_config_is_refused(files):
    rec = record_run_data(DataConfig(source="gaussian", target="moons"), (2,))
    with pytest.raises(ValueError, match=r"data\.target = 'scurve' but .* recorded 'moons'"):
        load_run_data(DataConfig(source="gaussian", target="scurve"), seed=0, record=rec)
    cfg = DataConfig(source=str(files / "t.tsv"), target="moons")
    with pytest.raises(ValueError, match=r"data\.source = .* is a file but the run's data\.json "
                       r"has it recorded as built-in 'gaussian'"):
        load_run_data(cfg, seed=0, record=rec)


def test_check_same_data_compares_hashes_not_paths(files, tmp_path):
    cfg = DataConfig(source=str(files / "cells.npz:a"), target="moons")
    rec = record_run_data(cfg, (3,))
    run = tmp_path / "run"
    run.mkdir()
    assert read_data_record(run) is None  # a run of before data records: nothing to compare
    check_same_data(run, rec)
    (run / "data.json").write_text(rec.to_json())
    assert read_data_record(run) == rec
    copy = tmp_path / "copy.npz"
    copy.write_bytes((files / "cells.npz").read_bytes())
    check_same_data(run, record_run_data(DataConfig(source=f"{copy}:a", target="moons"), (3,)))
    for source, target in ((f"{copy}:b", "moons"), (str(files / "t.tsv"), "moons"),
                           (f"{copy}:a", "scurve")):
        other = record_run_data(DataConfig(source=source, target=target), (3,))
        with pytest.raises(ValueError, match=r"cannot resume .*: data\.(source|target) is not "
                           r"the data it was trained on \(recorded "):
            check_same_data(run, other)


def test_cli_specs_reach_the_loader(files, monkeypatch):
    """FILE.npz:KEY, .tsv and .txt through the one grammar; a missing file is not found,
    whatever its extension; an unknown word names the key."""
    np.savetxt(files / "s.txt", np.ones((30, 3)))
    data = load_run_data(DataConfig(source=str(files / "s.txt"),
                                     target=str(files / "cells.npz:b")), seed=0)
    assert data.event_shape == (3,)
    for name in ("gone.tsv", "gone.txt", "gone.npz:a", "gone.xyz"):
        with pytest.raises(FileNotFoundError, match=rf"data\.target: points file not found: "
                           rf".*gone\.{name.split('.')[1][:3]}"):
            load_run_data(DataConfig(target=str(files / name)), seed=0)
    with pytest.raises(ValueError, match=r"data\.source: unknown 'mooons': not a built-in"):
        load_run_data(DataConfig(source="mooons"), seed=0)


def test_data_seed_fixes_the_data_across_run_seeds(files):
    """data.seed = -1 draws with the run's seed; set, every run seed gets the same sets."""
    for cfg in (DataConfig(source="gaussian", target="moons", n_train=50, n_val=10, n_test=20),
                DataConfig(source=str(files / "cells.npz:a"), target=str(files / "t.tsv"))):
        own = [load_run_data(cfg, seed=s) for s in (1, 2)]
        assert not torch.equal(own[0].source.train, own[1].source.train)
        fixed = replace(cfg, seed=7)
        a, b = (load_run_data(fixed, seed=s) for s in (1, 2))
        ref = load_run_data(cfg, seed=7)
        for side in ("source", "target"):
            for split in ("train", "val", "test"):
                x = getattr(getattr(ref, side), split)
                assert torch.equal(getattr(getattr(a, side), split), x)
                assert torch.equal(getattr(getattr(b, side), split), x)
        assert data_seed(fixed, 1) == 7 and data_seed(cfg, 1) == 1
