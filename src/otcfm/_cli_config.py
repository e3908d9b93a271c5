"""The configs of the command line: which flag sets which key, and building a config from flags.

``otcfm train`` builds a :class:`~otcfm.train.config.RunConfig` and ``otcfm trajectory fit`` a
:class:`~otcfm.trajectory.config.TrajectoryConfig` in one order: the defaults (or, with
``--resume`` and no ``--config``, the run's own saved config), the ``--config`` file, the
flags, then ``--set``. Importing this module imports neither torch nor a config class: they
are read when a flag is converted or a config is built (``otcfm --help`` answers at once).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config packages import torch; the parser must not
    from otcfm.train.config import RunConfig
    from otcfm.trajectory.config import TrajectoryConfig

# flag -> (section, key) of RunConfig
FLAG_FIELDS = {
    "name": (None, "name"),
    "out": (None, "out_dir"),
    "seed": (None, "seed"),
    "device": (None, "device"),
    "source": ("data", "source"),
    "target": ("data", "target"),
    "n_train": ("data", "n_train"),
    "n_test": ("data", "n_test"),
    "method": ("method", "name"),
    "sigma": ("method", "sigma"),
    "coupling": ("method", "coupling"),
    "time_sampler": ("method", "time_sampler"),
    "width": ("model", "width"),
    "depth": ("model", "depth"),
    "activation": ("model", "activation"),
    "arch": ("model", "arch"),
    "steps": ("optim", "steps"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "ema_decay": ("optim", "ema_decay"),
    "grad_clip": ("optim", "grad_clip"),
    "val_every": ("eval", "val_every"),
    "checkpoint_every": ("eval", "checkpoint_every"),
    "ode_steps": ("eval", "ode_steps"),
    "workers": ("couplings", "workers"),
    "ot_batch": ("couplings", "ot_batch"),
    "coupling_scope": ("couplings", "scope"),
}


FLAG_HELP = {
    "name": "run folder name under --out",
    "out": "parent folder of runs (default runs)",
    "source": "x0: a built-in distribution (otcfm list) or a .npy/.npz/.csv/.tsv/.txt file "
    "(FILE.npz:KEY picks one array of an archive)",
    "target": "x1: a built-in distribution or a .npy/.npz/.csv/.tsv/.txt file (FILE.npz:KEY); "
    "or an image set (digits, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, a folder of "
    "PNG/JPEG images) to train noise -> images",
    "arch": "mlp or unet (images; the preset named like the data set, model.preset)",
    "method": "icfm, otcfm, sbcfm, sf2m, fm, vpcfm or rf (rf: paired data, data.paired)",
    "sigma": "path noise (default: the method's preset, recorded in config.toml; sbcfm and "
    "sf2m: entropic reg = 2 sigma^2)",
    "coupling": "override the method's coupling: a name (exact, approx, entropic, ...) or a "
    "spec with options, e.g. approx:tol=0.001, exact:sampling=plan or "
    "entropic:reg=0.5,on_fail=raise (stop when a plan does not converge)",
    "steps": "optimizer steps",
    "workers": "background coupling threads (0 = couple in the training thread)",
    "ot_batch": "points coupled at once; a multiple of --batch-size (0 = batch size)",
    "batch_size": "global batch: points per optimizer step, summed over all processes",
    "coupling_scope": "with several processes: global (couple the global batch once) or "
    "local (each process couples its own share)",
    "device": "cpu, cuda or cuda:N (with several processes cuda means cuda:LOCAL_RANK)",
    "ode_steps": "fixed-step solver steps for validation and evaluation",
}


# `otcfm trajectory fit`: flag -> (section, key, help) of TrajectoryConfig (section None: top
# level; --method sets method.name)
TRAJECTORY_FLAGS: dict[str, tuple[str | None, str, str]] = {
    "data": ("data", "path", "'synthetic' or a .h5ad / .npz / .csv / .tsv file (FILE.npz:KEY: "
             "features from array KEY, as --npz-key)"),
    "time_key": ("data", "time_key", "time column: obs column, npz array or CSV header"),
    "time_order": ("data", "time_order", "text time labels from first to last, e.g. "
                   "early,mid,late (must list exactly the labels present)"),
    "obsm_key": ("data", "obsm_key", ".h5ad: features from obsm[KEY] (e.g. X_pca), not X"),
    "npz_key": ("data", "npz_key", ".npz: the feature array (default pcs)"),
    "dims": ("data", "dims", "features kept: PCA dims (0 = all; paper: 5)"),
    "n_cells": ("data", "n_cells", "synthetic: cells per time point"),
    "obs_dim": ("data", "obs_dim", "synthetic: observed features"),
    "data_seed": ("data", "data_seed", "synthetic: seed of the snapshots"),
    "method": ("method", "name", "method"),
    "sigma": ("method", "sigma", "path noise (default: the method's preset; sbcfm: reg 2 sigma^2)"),
    "steps": ("optim", "steps", "optimizer steps"),
    "batch_size": ("optim", "batch_size", "cells per time point and interval"),
    "lr": ("optim", "lr", "AdamW learning rate"),
    "weight_decay": ("optim", "weight_decay", "AdamW weight decay"),
    "width": ("model", "width", "MLP hidden width"),
    "depth": ("model", "depth", "MLP hidden layers"),
    "left_out": ("eval", "left_out", "hold out this time index (-1 = none)"),
    "ode_steps": ("eval", "ode_steps", "Euler steps per unit of index time"),
    "seed": (None, "seed", "training seed"),
    "name": (None, "name", "run folder name under --out"),
    "out": (None, "out_dir", "parent folder of runs"),
    "device": (None, "device", "torch device"),
}


# the methods of otcfm.trajectory.config.METHODS (a test keeps the two equal; importing that
# package here would load torch whenever the parser is built)
TRAJECTORY_METHODS = ("otcfm", "icfm", "sbcfm", "sf2m")


def run_defaults() -> RunConfig:
    from otcfm.train.config import RunConfig

    return RunConfig()


def trajectory_defaults() -> TrajectoryConfig:
    from otcfm.trajectory.config import TrajectoryConfig

    return TrajectoryConfig()


class ConfigType:
    """argparse ``type`` of a config field: converts a flag's text like the field's default.

    The config class is imported only when the flag is given (not when the parser is built:
    the config packages import torch). Bools accept true/false, yes/no, 1/0.
    """

    def __init__(self, defaults: Callable[[], Any], section: str | None, key: str) -> None:
        self.defaults, self.section, self.key = defaults, section, key

    def kind(self) -> type:
        """The type of the field's default value (the config class is imported here)."""
        cfg = self.defaults()
        return type(getattr(getattr(cfg, self.section) if self.section else cfg, self.key))

    def __call__(self, text: str) -> Any:
        """Convert the flag's ``text`` to the field's type.

        Raises ``argparse.ArgumentTypeError`` when the text is not a value of that type.
        """
        kind = self.kind()
        if kind is bool:
            word = text.strip().lower()
            if word in ("true", "yes", "1"):
                return True
            if word in ("false", "no", "0"):
                return False
        else:
            try:
                return kind(text)
            except ValueError:
                pass
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the validated RunConfig of ``otcfm train``.

    The RunConfig of ``otcfm train``: --config file (with --resume and no --config: the run's
    own ``config.toml``), then --task, flags and --set; validated (errors name the key and
    its flag).
    """
    from otcfm.train.config import RunConfig

    if args.config:
        cfg = file_config(RunConfig, args.config)
    else:
        saved = resumed_config(args)
        cfg = file_config(RunConfig, saved) if saved is not None else RunConfig()
    data = cfg.to_dict()
    if args.task:
        from otcfm.data import toy

        data["data"]["source"], data["data"]["target"] = toy.task(args.task)
        if args.name is None and not args.config:
            data["name"] = f"{args.task}-{args.method or data['method']['name']}"
    for flag, (section, key) in FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            (data[section] if section else data)[key] = value
    flags = {(f"{section}.{key}" if section else key): flag
             for flag, (section, key) in FLAG_FIELDS.items()}
    with naming_flags(flags):
        cfg = RunConfig.from_dict(data).override(args.overrides)
        if getattr(args, "data_root", None) is not None:
            from otcfm.data.images import with_folder

            if not cfg.is_image_run:
                raise ValueError(f"--data-root applies to image sets; data.target "
                                 f"{cfg.data.target!r} is not one")
            try:
                cfg.data.target = with_folder(cfg.data.target, args.data_root)
            except ValueError as err:
                raise ValueError(f"--data-root: {err}") from None
        return cfg.validate()


def resumed_config(args: argparse.Namespace) -> Path | None:
    """The ``config.toml`` of the run ``--resume`` continues, when it has one (else None).

    The run is OUT/NAME from --out and --name (or the name --task gives); a resume given
    only these starts from the run's own config, the other flags overriding it.
    """
    from otcfm.train.config import RunConfig

    if not args.resume:
        return None
    name = args.name
    if name is None and args.task:
        name = f"{args.task}-{args.method or RunConfig().method.name}"
    if name is None:
        return None
    path = Path(args.out or RunConfig().out_dir) / name / "config.toml"
    return path if path.is_file() else None


def trajectory_config_from_args(args: argparse.Namespace) -> TrajectoryConfig:
    """Build the validated TrajectoryConfig of ``otcfm trajectory fit``.

    The TrajectoryConfig of ``otcfm trajectory fit``: --config file, then flags and --set;
    validated (errors name the key and its flag).
    """
    from otcfm.train.config import apply_overrides
    from otcfm.trajectory.config import TrajectoryConfig

    cfg = file_config(TrajectoryConfig, args.config) if args.config else TrajectoryConfig()
    data = cfg.to_dict()
    for flag, (section, key, _) in TRAJECTORY_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            (data[section] if section else data)[key] = value
    if args.no_pca:
        data["data"]["pca"] = False
    if args.no_standardize:
        data["data"]["standardize"] = False
    if args.name is None and not args.config:
        lo = data["eval"]["left_out"]
        data["name"] = data["method"]["name"] + (f"-leave{lo}" if lo >= 0 else "")
    flags = {(f"{section}.{key}" if section else key): flag
             for flag, (section, key, _) in TRAJECTORY_FLAGS.items()}
    with naming_flags(flags):
        return TrajectoryConfig.from_dict(apply_overrides(data, args.overrides))


def file_config(cls: Any, path: Path) -> Any:
    """Read the config of a --config file, its keys and types checked but not yet validated.

    The config of a --config file, its keys and types checked but not yet validated (the
    flags may still change it; the method's default sigma is not written in yet).
    """
    from otcfm.train.config import ConfigError, build_config, read_toml

    try:
        return build_config(cls, read_toml(path))
    except ConfigError as err:
        raise ConfigError(err.key, f"--config {path}: {err}") from None


class naming_flags:  # noqa: N801 - a context manager used like a function
    """Re-raise a ConfigError with the flag that sets its key: ``optim.steps (--steps) ...``."""

    def __init__(self, flags: dict[str, str]) -> None:
        self.flags = flags

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        from otcfm.train.config import ConfigError

        if isinstance(err, ConfigError) and err.key in self.flags:
            flag = "--" + self.flags[err.key].replace("_", "-")
            text = str(err)
            if text.startswith(err.key) and f"({flag})" not in text:
                raise ConfigError(err.key, f"{err.key} ({flag}){text[len(err.key):]}") from None
        return False
