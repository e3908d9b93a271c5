"""The commands of ``otcfm trajectory fit | predict | evaluate`` (time-course snapshots).

- ``fit``: train one flow through all populations of a .h5ad / .npz / .csv file (or the
  synthetic benchmark), optionally holding one time point out; writes a run folder.
- ``predict``: populations at any times (and paths of individual cells) from a run.
- ``evaluate``: leave-one-out W1 / MMD of a run, every interval, plots and report.

Their flags belong to the one parser tree of :mod:`otcfm.cli`, which calls these functions
with the parsed arguments (``fit`` also with the resolved config). This module imports torch
and numpy only inside the commands.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otcfm.trajectory.config import TrajectoryConfig


def cmd_fit(args: argparse.Namespace, cfg: TrajectoryConfig) -> int:
    """Print the config (--print-config) or fit, evaluate and write the run."""
    from otcfm.train.config import check_device_available, check_folder
    from otcfm.trajectory.run import fit_run

    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    check_device_available(cfg.device, "device (--device)")
    check_folder(Path(cfg.out_dir), "out_dir (--out)")
    check_folder(cfg.run_dir, "the run folder (--out/--name)")
    if args.resume and not cfg.run_dir.is_dir():
        raise FileNotFoundError(f"--resume: there is no run {cfg.run_dir} (check --name, --out)")
    run_dir = fit_run(cfg, resume=args.resume, progress=not args.quiet,
                      evaluate=not args.no_eval)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(json.dumps(metrics, indent=2))
    print(f"run written to {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``otcfm trajectory evaluate``: score a run and print its metrics as JSON."""
    from otcfm.trajectory.run import evaluate_trajectory_run

    ev = evaluate_trajectory_run(args.run, ode_steps=args.ode_steps, plots=not args.no_plots,
                                 data_root=args.data_root,
                                 allow_changed_data=args.allow_changed_data)
    print(json.dumps(ev, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``otcfm trajectory predict``: write predicted populations or cell paths of a run."""
    import numpy as np
    import torch

    from otcfm.data.timeseries_files import save_populations
    from otcfm.train.checkpoint import StagedFiles
    from otcfm.train.cli import diffusion_option
    from otcfm.train.config import check_output_file
    from otcfm.trajectory.predict import predict_at, trajectories
    from otcfm.trajectory.run import load_trajectory_run, run_sde

    out = Path(args.out)
    suffixes = (".npz", ".pt") if args.paths is not None else (".npz", ".csv", ".tsv", ".pt")
    check_output_file(out, "--out", suffixes)
    bad = [t for t in args.times if not math.isfinite(t)]
    if bad:
        raise ValueError(f"--time must be finite, got {bad[0]}")
    if args.seed is not None and not args.sde:
        raise ValueError("--seed seeds the SDE's noise; add --sde")
    diffusion = diffusion_option(args)
    run = load_trajectory_run(args.run, data_root=args.data_root,
                              allow_changed_data=args.allow_changed_data)
    sde = run_sde(run, args.seed, **diffusion) if args.sde else None
    ts, pre = run.data.ts, run.data.preprocessor
    steps = run.cfg.eval.ode_steps
    back = pre.inverse_transform if (args.original and pre is not None) else (lambda x: x)
    if args.start is not None and not args.start < ts.n_times:
        raise ValueError(f"--start must be a time index in [0, {ts.n_times - 1}] (the data has "
                         f"times {', '.join(ts.time_names)}), got {args.start}")
    lo, hi = ts.times[0], ts.times[-1]
    outside = [t for t in args.times if not lo <= t <= hi]
    if outside and not args.extrapolate:
        raise ValueError(
            f"--time {outside[0]:g} is outside the time range of the data [{lo:g}, {hi:g}]; "
            "pass --extrapolate to predict there anyway"
        )
    if args.paths is not None:
        start = args.start or 0
        cells = ts.at(start)[: args.paths]
        taus = ts.to_index(args.times).tolist()
        if taus and taus[0] == float(start):  # the start time given too: it is there anyway
            taus = taus[1:]
        if not taus:
            raise ValueError(f"--time gives only the start time {ts.times[start]:g}; the "
                             "paths need a later (or earlier) time")
        try:
            traj = trajectories(run.model, cells, float(start), taus, steps_per_unit=steps,
                                sde=sde)
        except ValueError as err:
            if "monotonically" not in str(err):
                raise
            raise ValueError(f"--time {' '.join(f'{t:g}' for t in args.times)}: the times "
                             f"must move away from the start time {ts.times[start]:g} (--start "
                             f"{start}) in one direction") from None
        xs = torch.stack([back(x) for x in traj.xs])
        times = ts.from_index(traj.ts.double().numpy())
        with StagedFiles() as staged:  # written whole or not at all
            if out.suffix == ".pt":
                staged.save({"xs": xs, "times": torch.from_numpy(times)}, out)
            elif out.suffix == ".npz":
                np.savez(staged.path(out), xs=xs.numpy(), times=times)
            else:  # pragma: no cover - the suffix was checked above
                raise ValueError(f"--paths writes .npz or .pt, not {out.suffix!r}")
        print(f"wrote paths of {xs.shape[1]} cells at {xs.shape[0]} times to {out}")
        return 0
    if len(set(args.times)) != len(args.times):
        raise ValueError(f"--time values must be distinct, got {args.times}")
    pops = [back(predict_at(run.model, ts, t, start=args.start, steps_per_unit=steps, sde=sde))
            for t in args.times]
    with StagedFiles() as staged:  # written whole or not at all
        if out.suffix == ".pt":
            staged.save({"times": list(args.times), "populations": pops}, out)
        else:
            names = run.data.raw.feature_names if args.original and pre is not None else None
            save_populations(staged.path(out), pops, args.times, names)
    print(f"wrote {sum(p.shape[0] for p in pops)} predicted cells at times {args.times} to {out}")
    return 0
