"""The data of a trajectory run: text time labels given an order (--time-order,
data.time_order), data.json written at fit, changed data refused and moved data found by
`trajectory predict | evaluate`, and the data spec's errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from otcfm.cli import main as otcfm_main
from otcfm.train.config import read_toml
from otcfm.trajectory.config import TrajectoryConfig
from otcfm.trajectory.run import load_trajectory_run

TINY = ["--steps", "5", "--batch-size", "8", "--width", "8", "--depth", "1", "--ode-steps", "2",
        "--quiet", "--no-eval", "--dims", "0", "--no-standardize"]
ORDER = ("early", "mid", "late")

pytestmark = pytest.mark.usefixtures("one_thread")


def main(argv):
    return otcfm_main(["trajectory", *argv])


def write_stages(path, stages=ORDER, n=12):
    """A .tsv time course whose time labels are words, rows shuffled across the stages."""
    g = torch.Generator().manual_seed(0)
    lines = ["stage\ta\tb"]
    rows = [(s, torch.randn(2, generator=g) + k) for k, s in enumerate(stages) for _ in range(n)]
    for i in torch.randperm(len(rows), generator=g).tolist():
        s, x = rows[i]
        lines.append(f"{s}\t{x[0]:.6f}\t{x[1]:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    home = tmp_path_factory.mktemp("traj")
    data = write_stages(home / "stages.tsv")
    assert main(["fit", "--data", str(data), "--time-key", "stage", "--time-order",
                 "early, mid,late", "--out", str(home / "runs"), "--name", "s", *TINY]) == 0
    return home


@pytest.fixture
def home(fitted, tmp_path):
    copy = tmp_path / "home"
    shutil.copytree(fitted, copy)
    record_path = copy / "runs" / "s" / "data.json"
    record = json.loads(record_path.read_text())
    entry = record["inputs"]["data.path"]
    entry["path"] = entry["path"].replace(str(fitted), str(copy))
    record_path.write_text(json.dumps(record))
    return copy


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_text_labels_follow_the_given_order(fitted):
    run = load_trajectory_run(fitted / "runs" / "s")
    assert run.data.ts.time_names == ORDER and run.data.ts.times == (0.0, 1.0, 2.0)
    means = [float(run.data.ts.at(k)[:, 0].mean()) for k in range(3)]  # stage k centred at k
    assert means == sorted(means) and means[2] - means[0] > 1.0
    saved = read_toml(fitted / "runs" / "s" / "config.toml")
    assert saved["data"]["time_order"] == "early, mid,late"


@pytest.mark.parametrize(
    "order, message",
    [
        (None, r"not numbers \('early', 'late', 'mid'\); list them from first to last with "
               r"--time-order"),
        ("early,late", r"label\(s\) \['mid'\] of the data are not in it"),
        ("early,mid,late,never", r"\['never'\] occur in no cell"),
        ("early,mid,lat", r"\['late'\] of the data are not in it; \['lat'\] occur in no cell"),
        ("early,,late", r"data\.time_order \(--time-order\) must list distinct, non-empty"),
        ("early,mid,early", r"data\.time_order \(--time-order\) must list distinct"),
    ],
)
def test_a_bad_time_order_is_refused(fitted, tmp_path, capsys, order, message):
    args = ["fit", "--data", str(fitted / "stages.tsv"), "--time-key", "stage",
            "--out", str(tmp_path), *TINY]
    assert main(args + ([] if order is None else ["--time-order", order])) == 2
    err = one_line_error(capsys)
    assert re.search(message, err), err


def test_time_order_is_a_config_key():
    cfg = TrajectoryConfig.from_dict({"data": {"time_order": "a, b ,c"}})
    assert cfg.data.time_labels == ["a", "b", "c"]
    assert TrajectoryConfig().data.time_labels is None


def test_fit_records_the_data_file(fitted):
    record = json.loads((fitted / "runs" / "s" / "data.json").read_text())
    data = fitted / "stages.tsv"
    assert record["inputs"] == {"data.path": {
        "path": str(data), "size": data.stat().st_size,
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}}
    assert record["event_shape"] == [2]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_changed_data_is_refused_and_moved_data_found(home, tmp_path, capsys, command):
    run = home / "runs" / "s"
    argv = {"predict": ["--time", "1.5", "--out", str(tmp_path / "p.npz")],
            "evaluate": ["--no-plots"]}[command]
    moved = tmp_path / "moved"
    moved.mkdir()
    (home / "stages.tsv").rename(moved / "stages.tsv")
    assert main([command, str(run), *argv]) == 2
    assert "data.path: data file not found" in one_line_error(capsys)
    assert main([command, str(run), *argv, "--data-root", str(moved)]) == 0
    capsys.readouterr()
    write_stages(moved / "stages.tsv", n=13)
    assert main([command, str(run), *argv, "--data-root", str(moved)]) == 2
    err = one_line_error(capsys)
    assert "stages.tsv changed since the run was trained" in err
    assert "--allow-changed-data" in err
    with pytest.warns(UserWarning, match="used anyway"):
        assert main([command, str(run), *argv, "--data-root", str(moved),
                     "--allow-changed-data"]) == 0


def test_data_spec_errors(tmp_path, capsys):
    common = ["--out", str(tmp_path), *TINY]
    for name in ("gone.tsv", "gone.txt", "gone.npz"):  # not found, whatever the extension
        assert main(["fit", "--data", str(tmp_path / name), *common]) == 2
        assert f"data.path: time-series file not found: {tmp_path / name}" in one_line_error(
            capsys)
    assert main(["fit", "--data", "synthetc", *common]) == 2
    assert "data.path: unknown 'synthetc': not a built-in (synthetic)" in one_line_error(capsys)


def test_npz_key_in_the_data_spec(tmp_path, capsys):
    path = tmp_path / "tc.npz"
    rng = np.random.default_rng(0)
    np.savez(path, feats=rng.normal(size=(30, 2)), sample_labels=np.repeat([0, 1, 2], 10))
    assert main(["fit", "--data", f"{path}:feats", "--out", str(tmp_path), "--name", "k",
                 *TINY]) == 0
    assert load_trajectory_run(tmp_path / "k").data.ts.x.shape == (30, 2)
    assert main(["fit", "--data", f"{path}:feats", "--npz-key", "other", "--out",
                 str(tmp_path), "--name", "k2", *TINY]) == 2
    assert "names the feature array 'feats' but data.npz_key" in one_line_error(capsys)
