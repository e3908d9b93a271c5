"""The command line end to end on a tiny budget, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from otcfm._cli_config import FLAG_FIELDS, ConfigType, run_defaults
from otcfm.cli import BENCHES, main

TINY = [
    "--steps",
    "20",
    "--batch-size",
    "64",
    "--n-train",
    "256",
    "--n-test",
    "64",
    "--val-every",
    "10",
    "--checkpoint-every",
    "10",
    "--ode-steps",
    "5",
    "--width",
    "16",
    "--quiet",
    "--set",
    "data.n_val=64",
]


def test_train_sample_evaluate(tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "--task",
                "moons-8gaussians",
                "--method",
                "otcfm",
                "--name",
                "t",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    run = out / "t"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 20 and "w2" in metrics["test"]

    assert main(["sample", str(run), "--n", "32", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (32, 2) and np.isfinite(samples).all()

    assert main(["evaluate", str(run), "--adaptive", "none", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert '"npe"' in printed and '"nfe": 5' in printed


def test_train_from_config_and_files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(300, 3)).astype("float32"))
    np.savetxt(tmp_path / "b.csv", rng.normal(2.0, 1.0, size=(300, 3)), delimiter=",")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'name = "files"\nout_dir = "{tmp_path / "runs"}"\n[data]\n'
        f'source = "{tmp_path / "a.npy"}"\ntarget = "{tmp_path / "b.csv"}"\n'
        '[method]\nname = "icfm"\n'
    )
    assert main(["train", "--config", str(cfg), *TINY]) == 0
    metrics = json.loads((tmp_path / "runs" / "files" / "metrics.json").read_text())
    assert metrics["test"]["n_test"] == 30


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--method", "nosuch"], "unknown .*'nosuch'.*otcfm"),
        (["train", "--source", "nosuch.npy"], "nosuch.npy"),
        (["train", "--sigma", "-2"], "sigma"),  # -1 means "the preset's default"
        (["train", "--set", "optim.nosuch=1"], "unknown key.*'nosuch'"),
        (["train", "--task", "nosuch"], "nosuch"),
        (["evaluate", "/nonexistent/run"], "not a run folder"),
    ],
)
def test_errors_are_clear(tmp_path, capsys, args, message):
    code = main([*args, "--out", str(tmp_path)] if args[0] == "train" else args)
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    import re

    assert re.search(message, err), err


def test_print_config_and_list(capsys):
    assert main(["train", "--method", "icfm", "--sigma", "0.2", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert 'name = "icfm"' in text and "sigma = 0.2" in text
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "otcfm" in listing and "dopri5" in listing and "moons-8gaussians" in listing


def _modules_after(argv: list[str]) -> tuple[str, set[str]]:
    """Run ``otcfm ARGV`` in a fresh interpreter; its stdout and the modules it imported."""
    code = (
        "import contextlib, io, json, sys\n"
        "from otcfm.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps({'out': out.getvalue(), 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    record = json.loads(done.stdout)
    return record["out"], set(record["modules"])


HEAVY = ("ot", "sklearn", "matplotlib", "numba", "anndata", "torchdiffeq")


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["trajectory", "fit", "--help"]]
)
def test_help_imports_no_torch(argv):
    out, modules = _modules_after(argv)
    assert out.startswith("usage: otcfm")
    assert "torch" not in modules and "numpy" not in modules
    assert not modules & set(HEAVY)


def test_list_imports_no_heavy_optional_packages():
    out, modules = _modules_after(["list"])
    assert "couplings:" in out and "torch" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_train_flag_table_matches_the_config():
    from otcfm.train.config import RunConfig

    cfg = RunConfig()
    for flag, (section, key) in FLAG_FIELDS.items():
        value = getattr(getattr(cfg, section) if section else cfg, key)
        assert ConfigType(run_defaults, section, key).kind() is type(value), flag


def test_config_type_converts_like_the_field():
    assert ConfigType(run_defaults, "optim", "steps")("12") == 12
    assert ConfigType(run_defaults, "method", "sigma")("0.5") == 0.5
    use_best = ConfigType(run_defaults, "eval", "use_best")
    assert use_best("false") is False and use_best("YES") is True
    with pytest.raises(Exception, match="invalid bool value: 'maybe'"):
        use_best("maybe")


def test_flag_type_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "1.5"])
    assert exit_.value.code == 2
    assert "argument --steps: invalid int value: '1.5'" in capsys.readouterr().err


def test_every_bench_has_an_entry_point():
    for name, load in BENCHES.items():
        assert callable(load()), name


@pytest.mark.parametrize("method", ["icfm", "otcfm", "sbcfm", "fm", "vpcfm", "rf", "sf2m"])
def test_train_records_the_sigma_its_matcher_uses(method, capsys):
    """`otcfm train --method M` without --sigma writes the preset's sigma into the config."""
    import tomllib

    from otcfm.matchers import MATCHERS, matcher

    assert method in MATCHERS.names()
    assert main(["train", "--method", method, "--print-config"]) == 0
    sigma = tomllib.loads(capsys.readouterr().out)["method"]["sigma"]
    default, recorded = matcher(method), matcher(method, sigma=sigma)
    assert repr(recorded.path) == repr(default.path)  # the same path, so the same sigma
    assert repr(recorded.coupling) == repr(default.coupling)  # SB-CFM: reg = 2 sigma^2 too


def test_all_presets_are_covered_by_the_sigma_test():
    from otcfm.matchers import MATCHERS

    assert set(MATCHERS.names()) == {"icfm", "otcfm", "sbcfm", "fm", "vpcfm", "rf", "sf2m"}


def test_resume_of_a_missing_run_is_an_error(tmp_path, capsys):
    code = main(["train", "--name", "nope", "--out", str(tmp_path), "--resume", "--quiet"])
    assert code == 2
    assert "--resume: there is no run" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_nproc_is_at_most_the_cores_of_the_machine(tmp_path, capsys):
    import os

    many = 2 * (os.cpu_count() or 1)
    code = main(["train", "--batch-size", str(512 * many), "--nproc", str(many),
                 "--out", str(tmp_path)])
    assert code == 2
    assert f"--nproc {many} exceeds the {os.cpu_count()} CPU cores" in capsys.readouterr().err


def test_nproc_checks_the_global_batch_before_launching(tmp_path, capsys):
    code = main(["train", "--batch-size", "511", "--nproc", "2", "--out", str(tmp_path)])
    assert code == 2
    assert "must be a multiple of --nproc 2" in capsys.readouterr().err


def test_sample_more_than_the_test_set_draws_fresh_built_in_sources(tmp_path):
    # the README's `otcfm sample runs/mine --n 5000` on a run with n_test = 64
    import torch

    from otcfm.data import toy
    from otcfm.train.evaluate import load_run

    out = tmp_path / "runs"
    assert main(["train", "--task", "moons-8gaussians", "--method", "icfm", "--name", "t",
                 "--out", str(out), *TINY, "--steps", "2", "--no-eval"]) == 0
    run = load_run(out / "t")
    assert main(["sample", str(out / "t"), "--n", "500", "--out", str(tmp_path / "s.pt")]) == 0
    x0 = torch.load(tmp_path / "s.pt")["x0"]
    test = run.data.source.test
    assert x0.shape == (500, 2) and torch.equal(x0[:64], test)  # the test sources first
    fresh = x0[64:]
    # new points, none of them a training, validation or test source
    seen = torch.cat([run.data.source.train, run.data.source.val, test])
    assert float(torch.cdist(fresh, seen).min()) > 0.0
    assert torch.unique(fresh, dim=0).shape[0] == 436
    # from the run's source distribution (moons-std7: mean 0, pooled std 7 by construction)
    ref = toy.sample("moons-std7", 20_000, generator=torch.Generator().manual_seed(0))
    assert float((fresh.mean(0) - ref.mean(0)).abs().max()) < 1.5  # ~4 standard errors
    assert abs(float(fresh.std()) - float(ref.std())) < 1.0
    # the same command twice: the same points
    assert main(["sample", str(out / "t"), "--n", "500", "--out", str(tmp_path / "r.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "r.pt")["x0"], x0)


def test_sample_more_than_a_file_s_test_set_asks_for_x0(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(100, 2)).astype("float32"))
    out = tmp_path / "runs"
    assert main(["train", "--source", str(tmp_path / "a.npy"), "--target", "8gaussians",
                 "--method", "icfm", "--name", "f", "--out", str(out), *TINY, "--steps", "2",
                 "--no-eval"]) == 0
    assert main(["sample", str(out / "f"), "--n", "500", "--out", str(tmp_path / "s.npy")]) == 2
    assert "--n 500 exceeds the 10 test sources" in capsys.readouterr().err
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("argv", [["--debug", "train", "--steps", "0"],
                                  ["train", "--steps", "0", "--debug"],
                                  ["trajectory", "fit", "--steps", "0", "--debug"]])
def test_debug_lets_the_error_through_with_its_traceback(argv, tmp_path):
    from otcfm.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"optim.steps \(--steps\) must be a positive"):
        main([*argv, "--out", str(tmp_path)])


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, capsys):
    """A bug is not dressed up as a user error: it propagates (traceback, exit 1) after a
    line saying so."""
    import otcfm.cli as cli

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    with pytest.raises(KeyError, match="internal"):
        main(["list"])
    err = capsys.readouterr().err
    assert err.startswith("otcfm list: unexpected error") and "--debug" in err


def _errors():
    import errno

    import tomllib

    from otcfm.train.launch import LaunchFailure
    from otcfm.train.loop import NonFiniteLoss, RankFailure

    try:
        tomllib.loads("a = [")
    except tomllib.TOMLDecodeError as err:
        toml = err
    return [
        (ValueError("bad\nvalue  here"), 2, "bad value here"),
        (TypeError("tol must be a number"), 2, "tol must be a number"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.npy"), 2,
         "No such file or directory: x.npy"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2,
         "Permission denied: /root/x"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "runs"), 2, "Is a directory: runs"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
        (FileExistsError("runs/x already holds a run"), 2, "runs/x already holds a run"),
        (ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"), 2,
         "pip install 'otcfm[plot]'"),
        (ModuleNotFoundError("No module named 'anndata'", name="anndata"), 2,
         "pip install 'otcfm[singlecell]'"),
        (ImportError("ApproxOT needs numba: pip install 'otcfm[fast]'"), 2, "otcfm[fast]"),
        (toml, 2, "Invalid value"),
        (NonFiniteLoss("training loss is nan at step 3"), 2, "training loss is nan"),
        (MemoryError(), 2, "out of memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
         2, "out of memory (DefaultCPUAllocator"),
        (LaunchFailure("rank 1 exited with code 1"), 1, "rank 1 exited"),
        (RankFailure("rank 0 of 2 lost contact"), 1, "lost contact"),
        (ModuleNotFoundError("No module named 'torchdiffeq'", name="torchdiffeq"), None, ""),
        (ConnectionError("reset"), None, ""),
        (RuntimeError("a bug"), None, ""),
        (KeyError("a bug"), None, ""),
        (AttributeError("a bug"), None, ""),
        (FloatingPointError("a bug"), None, ""),
    ]


def test_user_errors_and_bugs_are_told_apart():
    from otcfm.cli import user_error

    for err, code, text in _errors():
        got = user_error(err)
        if code is None:
            assert got is None, err
        else:
            assert got is not None and got[0] == code and text in got[1], (err, got)
            assert "\n" not in got[1]


def test_any_argv_text_is_accepted(capsys, tmp_path):
    """Non-string items (paths, numbers) are read as their text, never a TypeError."""
    from pathlib import Path

    assert main([Path("train"), "--steps", 0, "--out", tmp_path]) == 2
    assert "optim.steps (--steps) must be a positive integer, got 0" in capsys.readouterr().err
