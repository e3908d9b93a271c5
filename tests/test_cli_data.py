"""`otcfm train | sample | evaluate` and the data of a run: data.json written at training,
changed data refused (--allow-changed-data), moved data found (--data-root), `sample --x0`
without the training files from any directory, FILE.npz:KEY and .tsv on the command line."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from otcfm.cli import main

TINY = ["--steps", "10", "--batch-size", "32", "--val-every", "10", "--checkpoint-every", "10",
        "--ode-steps", "3", "--width", "8", "--depth", "1", "--quiet", "--no-eval"]

pytestmark = pytest.mark.usefixtures("one_thread")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run trained from relative paths: source `data/pts.npz:a` (a two-array
    archive), target `data/t.tsv`; returns the folder it was trained from."""
    home = tmp_path_factory.mktemp("home")
    rng = np.random.default_rng(0)
    (home / "data").mkdir()
    np.savez(home / "data" / "pts.npz", a=rng.normal(size=(200, 2)).astype("float32"),
             b=rng.normal(3, 1, size=(200, 2)).astype("float32"))
    np.savetxt(home / "data" / "t.tsv", rng.normal(2, 1, size=(200, 2)), delimiter="\t")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["train", "--source", "data/pts.npz:a", "--target", "data/t.tsv",
                     "--name", "r", "--out", "runs", *TINY]) == 0
    return home


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    """A private copy of the trained folder (data and run), and a working directory
    elsewhere."""
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    run = copy / "runs" / "r"
    record = json.loads((run / "data.json").read_text())
    for entry in record["inputs"].values():  # the copy's run records the copy's data
        entry["path"] = entry["path"].replace(str(trained), str(copy))
    (run / "data.json").write_text(json.dumps(record))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return copy


def error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def test_training_records_absolute_paths_sizes_and_sha256(trained):
    record = json.loads((trained / "runs" / "r" / "data.json").read_text())
    assert record["event_shape"] == [2]
    src, tgt = record["inputs"]["data.source"], record["inputs"]["data.target"]
    assert src == {"path": str(trained / "data" / "pts.npz"),
                   "size": (trained / "data" / "pts.npz").stat().st_size,
                   "sha256": sha256(trained / "data" / "pts.npz"), "key": "a"}
    assert tgt == {"path": str(trained / "data" / "t.tsv"),
                   "size": (trained / "data" / "t.tsv").stat().st_size,
                   "sha256": sha256(trained / "data" / "t.tsv")}


def test_built_in_distributions_are_recorded_by_name(tmp_path):
    assert main(["train", "--name", "b", "--out", str(tmp_path), *TINY, "--n-train", "64",
                 "--n-test", "8", "--set", "data.n_val=8"]) == 0
    record = json.loads((tmp_path / "b" / "data.json").read_text())
    assert record["inputs"] == {"data.source": {"builtin": "gaussian"},
                                "data.target": {"builtin": "8gaussians"}}


def test_sample_and_evaluate_from_another_directory(home, tmp_path):
    run = home / "runs" / "r"
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 2)
    assert main(["evaluate", str(run), "--adaptive", "none", "--no-plots"]) == 0


def test_sample_x0_needs_no_training_data(home, tmp_path):
    x0 = tmp_path / "x0.npz"
    np.savez(x0, first=np.zeros((7, 2), dtype="float32"), second=np.ones((4, 2)))
    shutil.rmtree(home / "data")
    out = tmp_path / "s.csv"
    assert main(["sample", str(home / "runs" / "r"), "--x0", f"{x0}:second", "--out",
                 str(out)]) == 0
    assert np.loadtxt(out, delimiter=",").shape == (4, 2)


def test_sample_x0_takes_its_first_n_points_and_refuses_more(home, tmp_path, capsys):
    """--n with --x0: the first N points of the file, pushed exactly as the whole file's first
    N are; more than the file holds is refused (it used to be ignored silently)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x0.npy", rng.standard_normal((6, 2)).astype("float32"))
    run = str(home / "runs" / "r")
    assert main(["sample", run, "--x0", str(tmp_path / "x0.npy"), "--out",
                 str(tmp_path / "all.pt")]) == 0
    assert main(["sample", run, "--x0", str(tmp_path / "x0.npy"), "--n", "4", "--out",
                 str(tmp_path / "four.pt")]) == 0
    whole, four = torch.load(tmp_path / "all.pt"), torch.load(tmp_path / "four.pt")
    assert four["samples"].shape == (4, 2)
    torch.testing.assert_close(four["samples"], whole["samples"][:4])
    assert main(["sample", run, "--x0", str(tmp_path / "x0.npy"), "--n", "7", "--out",
                 str(tmp_path / "seven.npy")]) == 2
    assert "--n 7 is more than the 6 points of --x0" in error(capsys)
    assert not (tmp_path / "seven.npy").exists()


def test_sample_x0_of_another_dimension_is_refused(home, tmp_path, capsys):
    np.save(tmp_path / "x3.npy", np.zeros((4, 3), dtype="float32"))
    assert main(["sample", str(home / "runs" / "r"), "--x0", str(tmp_path / "x3.npy"),
                 "--out", str(tmp_path / "s.npy")]) == 2
    err = error(capsys)
    assert "--x0" in err and "shape (3,), the run's model takes (2,)" in err


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_changed_data_is_refused_before_anything_is_written(home, tmp_path, capsys, command):
    run = home / "runs" / "r"
    tsv = home / "data" / "t.tsv"
    recorded = json.loads((run / "data.json").read_text())["inputs"]["data.target"]
    text = tsv.read_text()
    tsv.write_text(text.replace("e-01", "e-02", 1))  # same size, other content
    assert tsv.stat().st_size == recorded["size"]
    argv = {"sample": ["--n", "5", "--out", str(tmp_path / "s.npy")],
            "evaluate": ["--adaptive", "none", "--no-plots"]}[command]
    before = sorted(p.name for p in run.iterdir())
    assert main([command, str(run), *argv]) == 2
    err = error(capsys)
    assert f"data.target: {tsv} changed since the run was trained" in err
    assert f"recorded sha256 {recorded['sha256'][:12]}..., now {sha256(tsv)[:12]}..." in err
    assert "--allow-changed-data" in err
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "s.npy").exists()
    with pytest.warns(UserWarning, match="used anyway"):
        assert main([command, str(run), *argv, "--allow-changed-data"]) == 0


def test_moved_data_is_found_with_data_root(home, tmp_path, capsys):
    run = home / "runs" / "r"
    moved = tmp_path / "moved"
    (home / "data").rename(moved)
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 2
    err = error(capsys)
    assert f"data file not found: {home / 'data' / 'pts.npz'}" in err
    assert "--data-root" in err
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy"),
                 "--data-root", str(moved)]) == 0
    assert main(["evaluate", str(run), "--adaptive", "none", "--no-plots", "--data-root",
                 str(moved)]) == 0
    (moved / "t.tsv").write_text("0\t0\n" * 200)  # found by name, but not the recorded file
    assert main(["evaluate", str(run), "--no-plots", "--data-root", str(moved)]) == 2
    assert "t.tsv changed since the run was trained" in error(capsys)


def test_data_root_cannot_escape(home, tmp_path, capsys):
    run = home / "runs" / "r"
    root = tmp_path / "root"
    root.mkdir()
    for name in ("pts.npz", "t.tsv"):  # links leading out of DIR, to the very files
        (root / name).symlink_to(home / "data" / name)
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy"),
                 "--data-root", str(root)]) == 2
    assert "outside --data-root" in error(capsys)


def test_a_run_without_data_record_still_loads(home, tmp_path, monkeypatch):
    run = home / "runs" / "r"
    (run / "data.json").unlink()
    monkeypatch.chdir(home)  # its config's relative paths
    with pytest.warns(UserWarning, match="no data record .*cannot be verified"):
        assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 0


def test_resume_refuses_changed_data(home, capsys, monkeypatch):
    monkeypatch.chdir(home)
    tsv = home / "data" / "t.tsv"
    tsv.write_text(tsv.read_text() + "0\t0\n")
    assert main(["train", "--source", "data/pts.npz:a", "--target", "data/t.tsv", "--name",
                 "r", "--out", "runs", "--resume", *TINY, "--steps", "20"]) == 2
    assert "data.target is not the data it was trained on" in error(capsys)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--source", "missing.tsv", r"points file not found: missing\.tsv"),
        ("--source", "missing.txt", r"points file not found: missing\.txt"),
        ("--target", "data/pts.npz:nope", r"no array 'nope' in archive; keys: 'a', 'b'"),
        ("--target", "data/pts.npz", r"2 arrays; choose one with key= \(or pts\.npz:KEY"),
        ("--source", "mooons", r"data\.source: unknown 'mooons': not a built-in"),
    ],
)
def test_data_spec_errors_name_the_key(trained, tmp_path, capsys, monkeypatch, flag, value,
                                       message):
    monkeypatch.chdir(trained)
    assert main(["train", flag, value, "--name", "x", "--out", str(tmp_path), *TINY]) == 2
    err = error(capsys)
    assert f"data.{flag[2:]}:" in err
    assert re.search(message, err), err


def test_a_warning_is_one_line_naming_the_command(home, tmp_path):
    """Run as a program, otcfm tells a warning the way it tells an error: one line."""
    import subprocess
    import sys

    run = home / "runs" / "r"
    (run / "data.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "otcfm", "sample", str(run), "--n", "5", "--out",
         str(tmp_path / "s.npy")], cwd=home, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otcfm sample: warning: "), proc.stderr
    assert "cannot be verified" in lines[0]


def test_resume_by_name_starts_from_the_run_s_own_config(tmp_path, capsys):
    """otcfm train --name R --out D --resume --steps N: the run's saved config is the base,
    so none of the original flags is needed; a flag that differs is still refused."""
    out = str(tmp_path)
    assert main(["train", "--task", "gaussian-moons", "--name", "r", "--out", out, *TINY,
                 "--sigma", "0.2", "--n-train", "256", "--set", "data.n_val=32",
                 "--set", "data.n_test=32"]) == 0
    assert main(["train", "--name", "r", "--out", out, "--resume", "--steps", "20",
                 "--quiet", "--no-eval"]) == 0
    saved = (tmp_path / "r" / "config.toml").read_text()
    assert "steps = 20" in saved and "sigma = 0.2" in saved
    rows = (tmp_path / "r" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["10", "20"]
    capsys.readouterr()
    assert main(["train", "--name", "r", "--out", out, "--resume", "--steps", "30",
                 "--sigma", "0.3", "--quiet", "--no-eval"]) == 2
    assert "method.sigma: 0.2 -> 0.3" in error(capsys)
