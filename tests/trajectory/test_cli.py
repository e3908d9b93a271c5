"""`otcfm trajectory fit | predict | evaluate`: run folders, resume, predictions read back by
the loaders, original-feature output, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from otcfm.cli import main as otcfm_main
from otcfm.data.timeseries_files import load_timeseries
from otcfm.trajectory.run import load_trajectory_run


def main(argv):
    """``otcfm trajectory ARGV`` through the one parser tree."""
    return otcfm_main(["trajectory", *argv])


TINY = ["--steps", "20", "--batch-size", "16", "--width", "16", "--depth", "2",
        "--ode-steps", "5", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def csv_data(tmp_path):
    """Four time points (days 0, 2, 3, 5) of 3-D cells drifting along x."""
    g = torch.Generator().manual_seed(0)
    lines = ["day,a,b,c"]
    for day in (0, 2, 3, 5):
        x = torch.randn(40, 3, generator=g) + torch.tensor([day, 0.0, 0.0])
        lines += [f"{day}," + ",".join(f"{v:.6f}" for v in row) for row in x.tolist()]
    path = tmp_path / "cells.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def fit(tmp_path, csv_data, *extra):
    """Fit on ``csv_data`` (flags in ``extra`` come last, so they win)."""
    args = ["fit", "--data", str(csv_data), "--time-key", "day", "--dims", "0",
            "--no-standardize", "--out", str(tmp_path / "runs"), *TINY, *extra]
    return main(args)


def test_fit_writes_a_run_folder_and_evaluates(tmp_path, csv_data, capsys):
    assert fit(tmp_path, csv_data, "--left-out", "1", "--name", "lo1") == 0
    run = tmp_path / "runs" / "lo1"
    for name in ("config.toml", "checkpoints/latest.pt", "log.csv", "metrics.json",
                 "report.md", "plots/time_course.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 20
    ev = metrics["eval"]
    assert ev["left_out"] == 1 and ev["w1"] > 0 and ev["baseline_w1"] > 0
    assert sorted(ev["intervals"]) == ["1", "2", "3"]
    assert ev["intervals"]["1"]["w1"] == pytest.approx(ev["w1"])
    assert "Held-out time 2" in (run / "report.md").read_text()
    assert "run written to" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["w1"] == pytest.approx(ev["w1"], rel=1e-6)


def test_resume_equals_uninterrupted(tmp_path, csv_data):
    assert fit(tmp_path, csv_data, "--name", "full", "--no-eval") == 0
    short = [a if a != "20" else "8" for a in TINY]
    args = ["fit", "--data", str(csv_data), "--time-key", "day", "--dims", "0",
            "--no-standardize", "--out", str(tmp_path / "runs"), "--name", "part", "--no-eval"]
    assert main([*args, *short]) == 0
    assert main([*args, *TINY, "--resume"]) == 0
    a = load_trajectory_run(tmp_path / "runs" / "full").model.state_dict()
    b = load_trajectory_run(tmp_path / "runs" / "part").model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_predict_populations_and_paths(tmp_path, csv_data, capsys):
    assert fit(tmp_path, csv_data, "--name", "all", "--no-eval") == 0
    run = tmp_path / "runs" / "all"
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--time", "1", "4", "--out", str(out)]) == 0
    pred = load_timeseries(out)
    assert pred.times == (1.0, 4.0) and pred.counts == (40, 40) and pred.dim == 3
    paths = tmp_path / "paths.npz"
    assert main(["predict", str(run), "--time", "2", "3", "5", "--paths", "7",
                 "--out", str(paths)]) == 0
    with np.load(paths) as z:
        assert z["xs"].shape == (4, 7, 3)
        np.testing.assert_allclose(z["times"], [0.0, 2.0, 3.0, 5.0], atol=1e-5)
    assert "wrote paths of 7 cells" in capsys.readouterr().out
    again = tmp_path / "again.npz"  # the start time given too: the same paths
    assert main(["predict", str(run), "--time", "0", "2", "3", "5", "--paths", "7",
                 "--out", str(again)]) == 0
    with np.load(paths) as z, np.load(again) as w:
        np.testing.assert_array_equal(z["xs"], w["xs"])
    capsys.readouterr()
    assert main(["predict", str(run), "--time", "3", "2", "--paths", "7", "--out",
                 str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "--time 3 2: the times must move away from the start time 0 (--start 0)" in err
    assert main(["predict", str(run), "--time", "0", "--paths", "7", "--out",
                 str(tmp_path / "bad.npz")]) == 2
    assert "--time gives only the start time 0" in capsys.readouterr().err


def test_predict_output_is_written_whole_or_not_at_all(tmp_path, csv_data, monkeypatch):
    """A write that fails half-way leaves the previous --out as it was and no temporary file."""
    import otcfm.data.timeseries_files as files

    assert fit(tmp_path, csv_data, "--name", "all", "--no-eval") == 0
    run, out = tmp_path / "runs" / "all", tmp_path / "pred.csv"
    out.write_text("the previous prediction\n")
    real = files.save_populations

    def half_then_fail(path, *args, **kwargs):
        real(path, *args, **kwargs)  # the temporary file is complete ...
        raise OSError(28, "No space left on device")  # ... but the disk fills before rename

    monkeypatch.setattr(files, "save_populations", half_then_fail)
    assert main(["predict", str(run), "--time", "1", "--out", str(out)]) == 2
    assert out.read_text() == "the previous prediction\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv", "pred.csv", "runs"]


def test_predict_refuses_times_outside_the_data_unless_asked(tmp_path, csv_data, capsys):
    """cells.csv spans days 0 to 5: day 99 (or -5) would be extrapolated, so it is refused
    with the range, and predicted with --extrapolate."""
    assert fit(tmp_path, csv_data, "--name", "all", "--no-eval") == 0
    run, out = tmp_path / "runs" / "all", tmp_path / "pred.npz"
    capsys.readouterr()
    for times in (["-5", "99"], ["2", "99"], ["5.5"]):
        assert main(["predict", str(run), "--time", *times, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "outside the time range of the data [0, 5]" in err, err
        assert "--extrapolate" in err and not out.exists()
    for extra in ([], ["--paths", "3"]):
        assert main(["predict", str(run), "--time", "5", "6", "--out", str(out), *extra]) == 2
    assert main(["predict", str(run), "--time", "0", "5", "--out", str(out)]) == 0  # the ends
    assert main(["predict", str(run), "--time", "-1", "6", "--extrapolate",
                 "--out", str(out)]) == 0
    pred = load_timeseries(out)
    assert pred.times == (-1.0, 6.0) and pred.counts == (40, 40)


def test_predict_argument_checks_come_before_loading(tmp_path, capsys):
    """Bad counts, times, indexes and output names are refused without a run to load."""
    missing = str(tmp_path / "no-run")
    cases = [
        (["--time", "1", "--paths", "-3", "--out", "p.npz"], "--paths: must be a positive"),
        (["--time", "1", "--paths", "0", "--out", "p.npz"], "--paths: must be a positive"),
        (["--time", "1", "--start", "-1", "--out", "p.npz"], "--start: must be an integer >= 0"),
        (["--time", "nan", "--out", "p.npz"], "--time must be finite"),
        (["--time", "1", "--out", "p.txt"], "--out p.txt: the extension must be one of"),
        (["--time", "1", "--paths", "2", "--out", "p.csv"], "the extension must be one of .npz"),
        (["--time", "1", "--out", str(tmp_path / "p.npz")], "no-run is not a trajectory run"),
    ]
    for argv, match in cases:
        try:
            code = main(["predict", missing, *argv])
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and match in err, (argv, err)


def test_predict_maps_back_to_original_features(tmp_path):
    pytest.importorskip("sklearn")
    runs = tmp_path / "runs"
    args = ["fit", "--data", "synthetic", "--n-cells", "40", "--obs-dim", "8", "--dims", "3",
            "--left-out", "2", "--out", str(runs), "--name", "syn", *TINY]
    assert main(args) == 0
    ev = json.loads((runs / "syn" / "metrics.json").read_text())["eval"]
    assert ev["w1_truth"] > 0  # synthetic runs are also scored against fresh truth
    out = tmp_path / "orig.npz"
    assert main(["predict", str(runs / "syn"), "--time", "2.5", "--original",
                 "--out", str(out)]) == 0
    with np.load(out) as z:
        assert z["pcs"].shape == (40, 8)
        np.testing.assert_allclose(z["sample_labels"], 2.5)


def test_top_level_cli_dispatches(tmp_path, csv_data, capsys):
    rc = otcfm_main(["trajectory", "fit", "--data", str(csv_data), "--time-key", "day",
                     "--dims", "0", "--no-standardize", "--out", str(tmp_path / "r"),
                     "--print-config"])
    assert rc == 0
    assert 'path = "' in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--left-out", "0"], "intermediate time index"),
        (["--time-key", "hour"], "no time column 'hour'"),
        (["--method", "otcfm", "--steps", "0"],
         "optim.steps (--steps) must be a positive integer, got 0"),
        # cells.csv has 3 features: --dims 10 is refused, not silently taken as 3
        (["--dims", "10"], "data.dims (--dims) is 10 but"),
        (["--data", "missing.csv"], "data.path: time-series file not found: missing.csv"),
    ],
)
def test_fit_errors(tmp_path, csv_data, capsys, extra, match):
    assert fit(tmp_path, csv_data, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("otcfm trajectory fit: error: ") and err.count("\n") == 1, err
    assert match in err


def test_refuses_to_overwrite_a_run(tmp_path, csv_data, capsys):
    assert fit(tmp_path, csv_data, "--name", "x", "--no-eval") == 0
    assert fit(tmp_path, csv_data, "--name", "x", "--no-eval") == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("command", ["fit", "predict", "evaluate"])
def test_help_through_the_main_parser(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        otcfm_main(["trajectory", command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: otcfm trajectory {command}")
    flags = {"fit": ["--data", "--time-key", "--left-out", "--no-pca", "--print-config"],
             "predict": ["--time", "--paths", "--original", "--out"],
             "evaluate": ["--ode-steps", "--no-plots"]}[command]
    assert all(flag in out for flag in flags), out


def test_flag_table_matches_the_config():
    from otcfm._cli_config import (
        TRAJECTORY_FLAGS,
        TRAJECTORY_METHODS,
        ConfigType,
        trajectory_defaults,
    )
    from otcfm.trajectory.config import METHODS, TrajectoryConfig

    assert TRAJECTORY_METHODS == METHODS
    cfg = TrajectoryConfig()
    for flag, (section, key, _) in TRAJECTORY_FLAGS.items():
        value = getattr(getattr(cfg, section) if section else cfg, key)
        assert ConfigType(trajectory_defaults, section, key).kind() is type(value), flag


@pytest.mark.parametrize(
    "args, match",
    [
        (["fit", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["fit", "--method", "nosuch"], "argument --method: invalid choice: 'nosuch'"),
        (["predict", "run"], "the following arguments are required: --time, --out"),
    ],
)
def test_argument_errors_exit_2(args, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"otcfm trajectory {args[0]}: error: " in err and match in err, err


def test_sf2m_run_evaluates_and_predicts_along_its_sde(tmp_path, csv_data, capsys):
    assert fit(tmp_path, csv_data, "--name", "sf", "--method", "sf2m", "--sigma", "0.2",
               "--left-out", "1") == 0
    run = tmp_path / "runs" / "sf"
    ev = json.loads((run / "metrics.json").read_text())["eval"]
    assert ev["w1_sde"] > 0 and ev["mmd_sde"] >= 0 and ev["w1_sde"] != ev["w1"]
    assert ev["w1_sde_tapered"] > 0 and ev["w1_sde_tapered"] not in (ev["w1"], ev["w1_sde"])
    report = (run / "report.md").read_text()
    assert "SDE (Euler-Maruyama)" in report and "SDE with tapered noise" in report
    outs = {}
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "7"]), ("ode", None),
                        ("tapered", ["--diffusion", "tapered"])):
        out = tmp_path / f"{name}.npz"
        flags = ["--sde", *extra] if extra is not None else []
        assert main(["predict", str(run), "--time", "3", "--paths", "5", *flags,
                     "--out", str(out)]) == 0
        with np.load(out) as z:
            outs[name] = z["xs"]
    np.testing.assert_array_equal(outs["a"], outs["b"])  # the run's seed: repeatable
    assert not np.array_equal(outs["a"], outs["c"]) and not np.array_equal(outs["a"], outs["ode"])
    # the tapered schedule: the same start, other paths
    np.testing.assert_array_equal(outs["tapered"][0], outs["a"][0])
    assert not np.array_equal(outs["tapered"], outs["a"])
    capsys.readouterr()
    assert main(["predict", str(run), "--time", "3", "--seed", "1", "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "add --sde" in capsys.readouterr().err
    assert main(["predict", str(run), "--time", "3", "--diffusion", "tapered", "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "add --sde" in capsys.readouterr().err


def test_sde_needs_an_sf2m_run(tmp_path, csv_data, capsys):
    assert fit(tmp_path, csv_data, "--name", "ot", "--no-eval") == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "runs" / "ot"), "--time", "3", "--sde",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "only SF2M runs" in capsys.readouterr().err


def test_fit_set_reaches_keys_without_a_flag(tmp_path, csv_data, capsys):
    """--set SECTION.KEY=V on trajectory fit, as on train: a key without a flag is set and
    saved; an unknown key or section is refused in one line."""
    assert fit(tmp_path, csv_data, "--name", "s", "--no-eval", "--set",
               "eval.checkpoint_every=10", "--set", "eval.log_every=5") == 0
    saved = (tmp_path / "runs" / "s" / "config.toml").read_text()
    assert "checkpoint_every = 10" in saved and "log_every = 5" in saved
    ckpts = sorted(p.name for p in (tmp_path / "runs" / "s" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000010.pt", "step-000020.pt"]
    capsys.readouterr()
    assert fit(tmp_path, csv_data, "--name", "t", "--set", "eval.every=3") == 2
    assert "unknown key" in capsys.readouterr().err
    assert fit(tmp_path, csv_data, "--name", "t", "--set", "nope.x=3") == 2
    assert "unknown config section 'nope'" in capsys.readouterr().err
