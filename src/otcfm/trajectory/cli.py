"""``otcfm trajectory fit | predict | evaluate``: trajectory inference from time-course snapshots.

- ``fit``: train one flow through all populations of a .h5ad / .npz / .csv file (or the
  synthetic benchmark), optionally holding one time point out; writes a run folder.
- ``predict``: populations at any times (and paths of individual cells) from a run.
- ``evaluate``: leave-one-out W1 / MMD of a run, every interval, plots and report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from otcfm.trajectory.config import METHODS, TrajectoryConfig

# flag -> (section, key) of TrajectoryConfig, with help
FIT_FLAGS: dict[str, tuple[str | None, str, str]] = {
    "data": ("data", "path", "'synthetic' or a .h5ad / .npz / .csv file"),
    "time_key": ("data", "time_key", "time column: obs column, npz array or CSV header"),
    "obsm_key": ("data", "obsm_key", ".h5ad: features from obsm[KEY] (e.g. X_pca), not X"),
    "npz_key": ("data", "npz_key", ".npz: the feature array (default pcs)"),
    "dims": ("data", "dims", "features kept: PCA dims (0 = all; paper: 5)"),
    "n_cells": ("data", "n_cells", "synthetic: cells per time point"),
    "obs_dim": ("data", "obs_dim", "synthetic: observed features"),
    "data_seed": ("data", "data_seed", "synthetic: seed of the snapshots"),
    "method": (None, "", f"{', '.join(METHODS)}"),
    "sigma": ("method", "sigma", "path noise (default 0.1; sbcfm 1.0, entropic reg 2 sigma^2)"),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otcfm trajectory",
        description="Trajectory inference from time-course snapshots (REFERENCE.md §6).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train a flow through all time points; writes a run folder")
    p.add_argument("--config", type=Path, help="TOML config (see --print-config)")
    defaults = TrajectoryConfig()
    for flag, (section, key, text) in FIT_FLAGS.items():
        if flag == "method":
            p.add_argument("--method", choices=METHODS, default=None, help=text)
            continue
        holder = getattr(defaults, section) if section else defaults
        kind = type(getattr(holder, key))
        where = f"{section}.{key}" if section else key
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None,
                       help=f"{text} [{where}]")
    p.add_argument("--no-pca", action="store_true",
                   help="keep the first --dims columns instead of PCA (e.g. TrajectoryNet pcs)")
    p.add_argument("--no-standardize", action="store_true", help="skip the StandardScaler")
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")

    p = sub.add_parser("predict", help="populations at any times, or cell paths, from a run")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--time", dest="times", type=float, nargs="+", required=True,
                   help="observation time(s) to predict (in the data's units, e.g. days)")
    p.add_argument("--start", type=int, default=None,
                   help="push the cells of this time index (default: the last at or before "
                        "each time)")
    p.add_argument("--paths", type=int, default=0, metavar="N",
                   help="instead, follow N cells of --start (default 0) through the times "
                        "(writes .npz or .pt: xs (T, N, d), times)")
    p.add_argument("--original", action="store_true",
                   help="map predictions back to the original features (inverse preprocessing)")
    p.add_argument("--out", type=Path, required=True, help=".npz, .csv, .tsv or .pt")

    p = sub.add_parser("evaluate", help="leave-one-out W1 / MMD, every interval, plots, report")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--ode-steps", type=int, default=None, help="Euler steps per unit of time")
    p.add_argument("--no-plots", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> TrajectoryConfig:
    cfg = TrajectoryConfig.from_toml(args.config) if args.config else TrajectoryConfig()
    data = cfg.to_dict()
    for flag, (section, key, _) in FIT_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "method":
            data["method"]["name"] = value
        else:
            (data[section] if section else data)[key] = value
    if args.no_pca:
        data["data"]["pca"] = False
    if args.no_standardize:
        data["data"]["standardize"] = False
    if args.name is None and not args.config:
        lo = data["eval"]["left_out"]
        data["name"] = data["method"]["name"] + (f"-leave{lo}" if lo >= 0 else "")
    return TrajectoryConfig.from_dict(data)


def cmd_fit(args: argparse.Namespace) -> int:
    from otcfm.trajectory.run import fit_run

    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    run_dir = fit_run(cfg, resume=args.resume, progress=not args.quiet,
                      evaluate=not args.no_eval)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(json.dumps(metrics, indent=2))
    print(f"run written to {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from otcfm.trajectory.run import evaluate_trajectory_run

    ev = evaluate_trajectory_run(args.run, ode_steps=args.ode_steps, plots=not args.no_plots)
    print(json.dumps(ev, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from otcfm.data.timeseries_files import save_populations
    from otcfm.trajectory.predict import predict_at, trajectories
    from otcfm.trajectory.run import load_trajectory_run

    run = load_trajectory_run(args.run)
    ts, pre = run.data.ts, run.data.preprocessor
    steps = run.cfg.eval.ode_steps
    back = pre.inverse_transform if (args.original and pre is not None) else (lambda x: x)
    out = Path(args.out)
    if args.paths:
        start = args.start or 0
        if not 0 <= start < ts.n_times:
            raise ValueError(f"--start must be a time index in [0, {ts.n_times - 1}]")
        cells = ts.at(start)[: args.paths]
        taus = ts.to_index(args.times).tolist()
        traj = trajectories(run.model, cells, float(start), taus, steps_per_unit=steps)
        xs = torch.stack([back(x) for x in traj.xs])
        times = ts.from_index(traj.ts.double().numpy())
        if out.suffix == ".pt":
            torch.save({"xs": xs, "times": torch.from_numpy(times)}, out)
        elif out.suffix == ".npz":
            np.savez(out, xs=xs.numpy(), times=times)
        else:
            raise ValueError(f"--paths writes .npz or .pt, not {out.suffix!r}")
        print(f"wrote paths of {xs.shape[1]} cells at {xs.shape[0]} times to {out}")
        return 0
    if len(set(args.times)) != len(args.times):
        raise ValueError(f"--time values must be distinct, got {args.times}")
    pops = [back(predict_at(run.model, ts, t, start=args.start, steps_per_unit=steps))
            for t in args.times]
    if out.suffix == ".pt":
        torch.save({"times": list(args.times), "populations": pops}, out)
    else:
        names = run.data.raw.feature_names if args.original and pre is not None else None
        save_populations(out, pops, args.times, names)
    print(f"wrote {sum(p.shape[0] for p in pops)} predicted cells at times {args.times} to {out}")
    return 0


COMMANDS = {"fit": cmd_fit, "predict": cmd_predict, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"otcfm trajectory {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
