"""``otcfm evaluate --nll``: the negative log-likelihood written to metrics.json equals
otcfm.likelihood on the same model and test data (points and images)."""

from __future__ import annotations

import json

import pytest
import torch

from otcfm.cli import main
from otcfm.data import save_points, toy
from otcfm.likelihood import bits_per_dim, log_likelihood
from otcfm.train.datasets import stream
from otcfm.train.evaluate import load_run
from otcfm.train.evaluate_images import load_image_run, reference_images
from otcfm.train.loop import train


def test_point_nll_equals_the_library_on_the_test_targets(tmp_path, capsys):
    assert main(["train", "--task", "gaussian-moons", "--steps", "30", "--n-train", "256",
                 "--n-test", "40", "--batch-size", "64", "--out", str(tmp_path), "--name", "r",
                 "--quiet", "--no-eval", "--val-every", "15", "--width", "16"]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--nll", "--no-plots"]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    run = load_run(tmp_path / "r")
    want = -log_likelihood(run.model, run.data.target.test, atol=1e-5, rtol=1e-5).logp.mean()
    assert m["nll"] == pytest.approx(float(want), rel=1e-6)
    assert m["nll_divergence"] == "exact" and m["nll_n"] == 40 and m["nll_se"] > 0


def test_image_bits_per_dim_use_hutchinson_from_the_runs_seed(tmp_path, capsys):
    from tests.train.test_image_runs import digits_cfg  # the tiny digits run of those tests

    cfg = digits_cfg(tmp_path, "images.grid_every=0", steps=3)
    train(cfg, progress=False)
    assert main(["evaluate", str(cfg.run_dir), "--nll", "--probes", "2", "--n", "6",
                 "--ode-steps", "2"]) == 0
    capsys.readouterr()
    m = json.loads((cfg.run_dir / "metrics.json").read_text())["test"]
    run = load_image_run(cfg.run_dir)
    x = reference_images(run)[0].images[:6]
    out = log_likelihood(run.model, x, divergence="hutchinson", n_probes=2,
                         generator=stream(cfg.seed, "nll"), atol=1e-5, rtol=1e-5,
                         y=torch.full((6,), 10))
    assert m["nll"] == pytest.approx(float(-out.logp.mean()), rel=1e-6)
    # digits' pixels take 17 values (0..16): their dequantization bins are 1/8 wide
    want = bits_per_dim(out.logp, (1, 8, 8), levels=17).mean()
    assert m["bits_per_dim"] == pytest.approx(float(want), rel=1e-6) and m["levels"] == 17
    assert m["nll_divergence"] == "hutchinson" and m["nll_probes"] == 2


def _train(tmp_path, *data):
    return main(["train", *data, "--steps", "20", "--n-train", "256", "--n-test", "30",
                 "--batch-size", "64", "--out", str(tmp_path), "--name", "r", "--quiet",
                 "--no-eval", "--val-every", "10", "--width", "16"])


def test_point_nll_uses_the_runs_own_source_density(tmp_path, capsys):
    """moons->8gaussians: log p0 is the moons law's (otcfm.data.toy.log_prob), not N(0, I)."""
    assert _train(tmp_path, "--task", "moons-8gaussians") == 0
    assert main(["evaluate", str(tmp_path / "r"), "--nll", "--no-plots"]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    run = load_run(tmp_path / "r")
    want = log_likelihood(run.model, run.data.target.test, source=toy.Density("moons-std7"),
                          atol=1e-5, rtol=1e-5).logp.mean()
    assert m["nll"] == pytest.approx(float(-want), rel=1e-6)
    assert m["nll_source"] == "moons-std7"


def test_a_file_source_must_be_declared_gaussian(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    save_points(tmp_path / "x0.npy", torch.randn(400, 2, generator=g))
    save_points(tmp_path / "x1.npy", toy.sample("moons", 400, g))
    assert _train(tmp_path, "--source", str(tmp_path / "x0.npy"),
                  "--target", str(tmp_path / "x1.npy")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--nll", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "does not know" in err and "--gaussian-source" in err
    assert "test" not in json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert main(["evaluate", str(tmp_path / "r"), "--nll", "--gaussian-source",
                 "--no-plots"]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    run = load_run(tmp_path / "r")
    want = log_likelihood(run.model, run.data.target.test, atol=1e-5, rtol=1e-5).logp.mean()
    assert m["nll"] == pytest.approx(float(-want), rel=1e-6)
    assert m["nll_source"] == "gaussian (declared)"
    assert main(["evaluate", str(tmp_path / "r"), "--gaussian-source"]) == 2
    assert "go with --nll" in capsys.readouterr().err
