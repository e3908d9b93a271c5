"""Run configs: TOML round trip, overrides, and clear errors for bad keys and values."""

from __future__ import annotations

import pytest

from otcfm.train.config import RunConfig


def test_toml_round_trip(tmp_path):
    cfg = RunConfig(name="x", seed=7).override(
        ["method.sigma=0.25", "optim.steps=12", "data.source='moons'"]
    )
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = RunConfig.from_toml(path)
    assert again == cfg
    assert again.method.sigma == 0.25 and again.optim.steps == 12 and again.data.source == "moons"


def test_int_accepted_for_float_and_text_override():
    cfg = RunConfig().override(["optim.lr=1", "method.name=icfm"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.method.name == "icfm"


@pytest.mark.parametrize(
    "text, match",
    [
        ("bogus = 1", "unknown key.*'bogus'.*valid keys"),
        ("[optim]\nstepz = 3", r"unknown key.*'stepz'.*\[optim\]"),
        ("[nosuch]\na = 1", "unknown key.*'nosuch'"),
        ("[optim]\nsteps = 'many'", "optim.steps must be of type int"),
        ("seed = [", "cannot parse config"),
    ],
)
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        RunConfig.from_toml(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        RunConfig.from_toml(tmp_path / "none.toml")


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.steps=0", "optim.steps must be >= 1"),
        ("method.sigma=-0.1", "method.sigma must be >= 0"),
        ("optim.ema_decay=1.5", "ema_decay"),
        ("data.n_val=1", "data.n_val"),
    ],
)
def test_invalid_values(override, match):
    with pytest.raises(ValueError, match=match):
        RunConfig().override([override]).validate()


def test_override_syntax_errors():
    with pytest.raises(ValueError, match="section.key=value"):
        RunConfig().override(["optim.steps"])
    with pytest.raises(ValueError, match="unknown config section 'optimm'"):
        RunConfig().override(["optimm.steps=3"])
