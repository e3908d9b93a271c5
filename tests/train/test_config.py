"""Run configs: TOML round trip, overrides, and clear errors for bad keys and values."""

from __future__ import annotations

import pytest

from otcfm.train.config import (
    ConfigError,
    RunConfig,
    check_device_available,
    config_differences,
    tomllib,
)


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
    "override, key, match",
    [
        ("optim.steps=0", "optim.steps", "must be a positive integer, got 0"),
        ("optim.steps=-5", "optim.steps", "must be a positive integer, got -5"),
        ("optim.batch_size=0", "optim.batch_size", "positive integer"),
        ("optim.lr=0", "optim.lr", "finite number > 0"),
        ("optim.lr=-1e-3", "optim.lr", "finite number > 0"),
        ("optim.lr=inf", "optim.lr", "finite number > 0, got inf"),
        ("optim.lr=nan", "optim.lr", "finite number > 0, got nan"),
        ("optim.weight_decay=-1", "optim.weight_decay", ">= 0"),
        ("optim.grad_clip=-1", "optim.grad_clip", ">= 0"),
        ("optim.ema_decay=1.5", "optim.ema_decay", r"in \[0, 1\)"),
        ("optim.ema_decay=1", "optim.ema_decay", r"in \[0, 1\)"),
        ("method.sigma=-0.1", "method.sigma", ">= 0"),
        ("method.sigma=nan", "method.sigma", ">= 0"),
        ("data.n_val=1", "data.n_val", "integer >= 2"),
        ("data.n_train=0", "data.n_train", "integer >= 2"),
        ("data.n_test=-3", "data.n_test", "integer >= 2"),
        ("data.val_fraction=1", "data.val_fraction", r"in \(0, 1\)"),
        ("data.source=''", "data.source", "distribution or a file"),
        ("model.width=0", "model.width", "positive integer"),
        ("model.depth=-1", "model.depth", "positive integer"),
        ("couplings.workers=-1", "couplings.workers", "integer >= 0"),
        ("couplings.prefetch=0", "couplings.prefetch", "positive integer"),
        ("couplings.ot_batch=-512", "couplings.ot_batch", "multiple of optim.batch_size"),
        ("couplings.ot_batch=100", "couplings.ot_batch", "multiple of optim.batch_size 512"),
        ("eval.val_every=0", "eval.val_every", "positive integer"),
        ("eval.checkpoint_every=0", "eval.checkpoint_every", "positive integer"),
        ("eval.ode_steps=0", "eval.ode_steps", "positive integer"),
        ("distributed.timeout=0", "distributed.timeout", "> 0"),
        ("seed=-1", "seed", r"\[0, 2\^63\)"),
        ("data.seed=-2", "data.seed", r"\[0, 2\^63\)"),
        ("data.seed=1.5", "data.seed", "must be of type int"),
        ("name='a/b'", "name", "single folder name"),
        # registry names: each error names its key and lists the valid names
        ("method.name='nosuch'", "method.name", "unknown method 'nosuch' .*otcfm"),
        ("method.time_sampler='nosuch'", "method.time_sampler", "unknown time sampler.*uniform"),
        ("method.coupling='nosuch'", "method.coupling", "unknown coupling 'nosuch'.*exact"),
        ("method.coupling='approx:tol=5'", "method.coupling", "tol must be in"),
        ("method.coupling='exact:nosuch=1'", "method.coupling", "nosuch"),
        ("model.activation='nosuch'", "model.activation", "unknown activation.*selu"),
        ("eval.solver='dopri'", "eval.solver", "unknown solver 'dopri'.*dopri5"),
        ("couplings.scope='nosuch'", "couplings.scope", "unknown scope.*global"),
        ("distributed.backend='mpi'", "distributed.backend", "unknown backend 'mpi'"),
        ("device='foo'", "device", "'foo' is not a device"),
        ("device='cuda:x'", "device", "is not a device"),
        ("device='meta'", "device", "is not a device"),
    ],
)
def test_invalid_values_name_their_key(override, key, match):
    with pytest.raises(ConfigError, match=match) as caught:
        RunConfig().override([override]).validate()
    assert caught.value.key == key
    assert str(caught.value).startswith(key), str(caught.value)
    assert "\n" not in str(caught.value)


def test_sigma_the_method_cannot_use_names_method_sigma():
    with pytest.raises(ConfigError, match="sigma > 0") as caught:
        RunConfig().override(["method.name='sbcfm'", "method.sigma=0"]).validate()
    assert caught.value.key == "method.sigma"


def test_a_coupling_on_a_method_without_one_names_method_coupling():
    with pytest.raises(ConfigError, match="coupling") as caught:
        RunConfig().override(["method.name='icfm'", "method.coupling='exact'"]).validate()
    assert caught.value.key == "method.coupling"


def test_every_registered_name_is_valid():
    """The oracle is each registry itself: every name it holds passes validation."""
    from otcfm.couplings import COUPLINGS
    from otcfm.matchers import MATCHERS
    from otcfm.models import ACTIVATIONS
    from otcfm.sampling import SOLVERS
    from otcfm.time_samplers import TIME_SAMPLERS

    for name in MATCHERS.names():
        RunConfig().override([f"method.name='{name}'"]).validate()
    for name in TIME_SAMPLERS.names():
        RunConfig().override([f"method.time_sampler='{name}'"]).validate()
    for name in ("exact", "approx", "independent", "partial", "entropic:reg=0.5"):
        assert name.partition(":")[0] in COUPLINGS
        RunConfig().override([f"method.coupling='{name}'"]).validate()
    for name in ACTIVATIONS:
        RunConfig().override([f"model.activation='{name}'"]).validate()
    for name in SOLVERS:
        RunConfig().override([f"eval.solver='{name}'"]).validate()
    for device in ("cpu", "cuda", "cuda:1", "mps"):  # the syntax; not whether it is here
        RunConfig(device=device).validate()


def test_resolve_validates_first():
    with pytest.raises(ConfigError, match="eval.solver"):
        RunConfig().override(["eval.solver='dopri'"]).resolve()


def test_a_config_file_is_validated_and_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[eval]\nsolver = "dopri"\n')
    with pytest.raises(ConfigError, match=f"^{path}: eval.solver: unknown solver") as caught:
        RunConfig.from_toml(path)
    assert caught.value.key == "eval.solver"


def test_an_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nsteps = 3\nbatchsize = 8\n")
    with pytest.raises(ConfigError, match="'batchsize'.*did you mean 'batch_size'") as caught:
        RunConfig.from_toml(path)
    assert caught.value.key == "optim.batchsize"


def test_a_folder_or_a_binary_file_is_not_a_config(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        RunConfig.from_toml(tmp_path)
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x80\x81\xff")
    with pytest.raises(ValueError, match="not a UTF-8"):
        RunConfig.from_toml(path)


def test_config_differences_lists_each_changed_key():
    old = RunConfig().to_dict()
    new = RunConfig(seed=7).override(["optim.lr=0.01", "model.activation='relu'"]).to_dict()
    assert config_differences(old, new) == [
        "seed: 42 -> 7", "model.activation: 'selu' -> 'relu'", "optim.lr: 0.001 -> 0.01",
    ]
    assert config_differences(old, old) == []
    assert config_differences({"a": {"b": 1}}, {"a": {}}) == ["a.b: 1 -> '(unset)'"]


def test_device_availability(monkeypatch):
    import torch

    check_device_available("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'cuda': CUDA is not available.*--device cpu"):
        check_device_available("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device_available("cuda:1")
    with pytest.raises(ConfigError, match=r"'cuda:2': this machine has 2 CUDA device\(s\)"):
        check_device_available("cuda:2")
    with pytest.raises(ConfigError, match="not a device"):
        check_device_available("gpu")


def test_override_syntax_errors():
    with pytest.raises(ValueError, match="section.key=value"):
        RunConfig().override(["optim.steps"])
    with pytest.raises(ValueError, match="unknown config section 'optimm'"):
        RunConfig().override(["optimm.steps=3"])


@pytest.mark.parametrize("text", ["tab\there", "bell\x07", "del\x7f", 'quote " and \\ back',
                                  "line\nbreak", "unit\x1f", "ünïcødé ✓"])
def test_any_text_value_survives_the_toml_round_trip(text):
    """config.toml is read back on --resume: every string the command line accepts must come
    back as itself (control characters were written raw, which TOML refuses)."""
    cfg = RunConfig()
    cfg.data.source = text
    assert RunConfig.from_dict(tomllib.loads(cfg.to_toml())).data.source == text


def test_text_that_is_not_unicode_is_refused_naming_its_key():
    cfg = RunConfig()
    cfg.data.source = "bad\udcff"  # how Python decodes a non-UTF-8 byte of argv
    with pytest.raises(ValueError, match="data.source: .* not valid Unicode"):
        cfg.to_toml()


def test_warmup_and_bf16_reach_the_engine_and_are_checked(tmp_path):
    from otcfm.train.loop import Trainer

    cfg = RunConfig(name="w", out_dir=str(tmp_path)).override(
        ["optim.warmup=3", "optim.bf16=true", "data.n_train=64", "data.n_val=16",
         "data.n_test=16", "optim.batch_size=16", "optim.steps=2"]).validate()
    trainer = Trainer(cfg)
    assert trainer.settings.warmup == 3 and trainer.settings.bf16 is True
    trainer.close()
    with pytest.raises(ConfigError, match=r"optim.warmup must be an integer >= 0 \(0 = off\)"):
        RunConfig().override(["optim.warmup=-1"]).validate()


@pytest.mark.parametrize("override, key", [("couplings.workers=2", "workers"),
                                           ("couplings.ot_batch=1024", "ot_batch"),
                                           ("couplings.scope=local", "scope"),
                                           ("couplings.prefetch=3", "prefetch")])
def test_image_runs_refuse_the_point_run_coupling_settings(override, key):
    """An image run couples inside its step: coupling threads, prefetch, OT batch and scope
    would be ignored silently, so setting them is an error naming the key."""
    base = ["data.target=digits", "optim.batch_size=512"]
    RunConfig().override(base).validate()  # the defaults are accepted
    with pytest.raises(ConfigError, match=rf"couplings.{key} applies to point runs: an image "
                                          "run couples each batch inside its training step"):
        RunConfig().override([*base, override]).validate()


def test_image_runs_refuse_a_data_seed():
    """An image run holds out its validation images with the run's seed: data.seed would be
    ignored silently, so it is an error."""
    base = ["data.target=digits", "optim.batch_size=512"]
    with pytest.raises(ConfigError, match="data.seed applies to point data"):
        RunConfig().override([*base, "data.seed=3"]).validate()
