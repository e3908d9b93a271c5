"""The trajectory run's sigma is the method preset's (one default in one place) and is written
into the config; SB-CFM's coupling is the preset's entropic OT at reg 2 sigma^2."""

from __future__ import annotations

import pytest

from otcfm.cli import main as otcfm_main
from otcfm.couplings import EntropicOT
from otcfm.matchers import matcher
from otcfm.train.config import read_toml
from otcfm.trajectory.config import TrajectoryConfig
from otcfm.trajectory.fit import DEFAULT_SIGMA, SB_SINKHORN_TOL, FitSpec, build_matcher
from otcfm.trajectory.run import spec_from_config

METHODS = ("otcfm", "icfm", "sbcfm")


@pytest.mark.parametrize("method", METHODS)
def test_the_printed_config_records_the_sigma_of_the_matcher(method, capsys, tmp_path):
    preset = matcher(method).path.sigma
    assert otcfm_main(["trajectory", "fit", "--method", method, "--print-config"]) == 0
    (tmp_path / "printed.toml").write_text(capsys.readouterr().out)
    printed = read_toml(tmp_path / "printed.toml")  # as written, not validated again
    assert printed["method"]["name"] == method
    assert printed["method"]["sigma"] == preset
    cfg = TrajectoryConfig.from_dict({"method": {"name": method}})
    assert cfg.method.sigma == preset
    assert spec_from_config(cfg).sigma == preset == DEFAULT_SIGMA[method]
    assert FitSpec(method=method).sigma == preset
    assert build_matcher(method, FitSpec(method=method).sigma).path.sigma == preset


def test_a_given_sigma_is_kept_and_a_saved_config_reads_back_equal(tmp_path):
    cfg = TrajectoryConfig.from_dict({"method": {"name": "sbcfm", "sigma": 0.3}})
    assert cfg.method.sigma == 0.3
    default = TrajectoryConfig.from_dict({"method": {"name": "icfm"}})
    path = tmp_path / "config.toml"
    path.write_text(default.to_toml())
    assert TrajectoryConfig.from_toml(path) == default
    with pytest.raises(ValueError, match="method.sigma"):
        TrajectoryConfig.from_dict({"method": {"sigma": -0.5}})


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_sbcfm_coupling_is_entropic_ot_at_two_sigma_squared(sigma):
    got = build_matcher("sbcfm", sigma).coupling
    want = EntropicOT(reg=2 * sigma**2, tol=SB_SINKHORN_TOL)
    assert type(got) is EntropicOT
    assert vars(got) == vars(want)
    assert got.reg == pytest.approx(2 * sigma**2, rel=1e-15)
    with pytest.raises(ValueError, match="sigma > 0"):
        build_matcher("sbcfm", 0.0)


@pytest.mark.parametrize(
    "data, key, match",
    [
        ({"method": {"name": "nosuch"}}, "method.name", "unknown method 'nosuch'.*sbcfm"),
        ({"model": {"activation": "nosuch"}}, "model.activation", "unknown activation"),
        ({"optim": {"steps": 0}}, "optim.steps", "positive integer, got 0"),
        ({"optim": {"batch_size": 1}}, "optim.batch_size", "integer >= 2"),
        ({"optim": {"lr": float("inf")}}, "optim.lr", "finite number > 0"),
        ({"optim": {"weight_decay": -1.0}}, "optim.weight_decay", ">= 0"),
        ({"eval": {"left_out": -2}}, "eval.left_out", "-1 \\(none\\) or a time index"),
        ({"eval": {"ode_steps": 0}}, "eval.ode_steps", "positive integer"),
        ({"eval": {"log_every": 0}}, "eval.log_every", "positive integer"),
        ({"data": {"dims": -1}}, "data.dims", "integer >= 0"),
        ({"data": {"path": ""}}, "data.path", "'synthetic' or a file"),
        ({"data": {"dims": 30, "obs_dim": 20}}, "data.dims", "exceeds the 20 features"),
        ({"device": "foo"}, "device", "not a device"),
        ({"seed": -3}, "seed", "0, 2\\^63"),
    ],
)
def test_invalid_values_name_their_key(data, key, match):
    from otcfm.train.config import ConfigError

    with pytest.raises(ConfigError, match=match) as caught:
        TrajectoryConfig.from_dict(data)
    assert caught.value.key == key and str(caught.value).startswith(key)
