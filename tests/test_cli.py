"""The command line end to end on a tiny budget, and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from otcfm.cli import main

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
        (["train", "--sigma", "-1"], "sigma"),
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
