"""Benchmark: single-cell trajectory inference by leaving one time point out (paper Table 4).

``otcfm bench single-cell --data synthetic|PATH --seeds N --out DIR [--steps S] [--quick]
[--jobs J]`` trains, for every seed, intermediate time k and method (OT-CFM, I-CFM, SB-CFM),
one flow through all populations but k (the skip pair (k-1, k+1) uses time 2t + (k-1) and
target u/2), pushes every cell of time k-1 forward one unit (100 Euler steps) and scores W1
and MMD against the true cells at k. The model-free baseline interpolates linearly (midpoint)
the exact OT pairing of the cells of k-1 and k+1. Writes ``DIR/single_cell.json`` (one record
per method, left-out time and seed), ``DIR/single_cell.md`` (mean +- std over seeds of the
average over left-out times, published numbers beside for the real sets) and figures in
``DIR/single_cell/``.

Data: the synthetic branching time course (:mod:`otcfm.data.synthetic_cells`, 20 observed
features, 5 times, 1,000 cells each; predictions are also scored against fresh ground-truth
cells), or a .h5ad / .npz / .csv file; either way represented by the first 5 principal
components standardised over all cells, as in the paper.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from otcfm.data.preprocess import Preprocessor, fit_preprocessor
from otcfm.data.synthetic_cells import SyntheticCells
from otcfm.data.timeseries import TimeSeries
from otcfm.data.timeseries_files import load_timeseries
from otcfm.experiments import _cells
from otcfm.experiments._cells import CellProgress, CellResult
from otcfm.experiments._machine import machine
from otcfm.experiments.single_cell_report import (
    BASELINE,
    PUBLISHED,
    label,
    markdown,
    pm,
    render_page,
    summarize,
    write_figures,
)
from otcfm.sampling import DEFAULT_DIFFUSION, DIFFUSIONS
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.datasets import stream
from otcfm.trajectory.fit import (
    DEFAULT_SIGMA,
    METHODS,
    SCORE_METHODS,
    FitSpec,
    Fitter,
    model_from_state,
)
from otcfm.trajectory.predict import (
    SDE,
    interpolation_baseline,
    predict_left_out,
    score,
)

SEED0 = 42
QUICK = {"steps": 100, "n_cells": 150, "ode_steps": 20}


def parse_methods(flag: str, sigma: float | None) -> dict[str, tuple[str, float]]:
    """Parse a comma-separated list of method entries into {entry: (method, sigma)}.

    'otcfm,icfm,sbcfm:0.1' -> {entry: (method, sigma)}; sigma: --sigma, else the entry's
    own, else the method's default (0.1; sbcfm 1.0).
    """
    out: dict[str, tuple[str, float]] = {}
    for entry in (e.strip() for e in flag.split(",")):
        if not entry:
            continue
        base, _, raw = entry.partition(":")
        if base not in METHODS:
            raise ValueError(f"--methods entries must be one of {', '.join(METHODS)} (optionally "
                             f"with :SIGMA, e.g. sbcfm:0.1), got {entry!r}")
        try:
            value = float(raw) if raw else (DEFAULT_SIGMA[base] if sigma is None else sigma)
        except ValueError:
            raise ValueError(f"bad sigma in --methods entry {entry!r}") from None
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"sigma must be finite and >= 0, got {entry!r}")
        out[entry] = (base, value)
    if not out:
        raise ValueError(f"--methods must list some of {', '.join(METHODS)}, got {flag!r}")
    return out


# --------------------------------------------------------------------------- data
def load_bench_data(
    args: argparse.Namespace,
) -> tuple[TimeSeries, Preprocessor | None, SyntheticCells | None]:
    """Populations in the paper's representation (PCA to --dims, standardised)."""
    synthetic = None
    if args.data == "synthetic":
        synthetic = SyntheticCells(obs_dim=args.obs_dim)
        raw = synthetic.snapshots(args.n_cells, stream(args.data_seed, "synthetic-cells"))
    else:
        raw = load_timeseries(args.data, time_key=args.time_key, obsm_key=args.obsm_key,
                              npz_key=args.npz_key)
    dims = min(args.dims, raw.dim) if args.dims else None
    pre = fit_preprocessor(raw.x, dims=dims, pca=not args.no_pca, standardize=True)
    return raw.map(pre.transform), pre, synthetic


def published_set(data: str, flag: str | None) -> str | None:
    """Which real set's published numbers apply: --published, else guessed from the name."""
    if flag:
        return None if flag == "none" else flag
    name = Path(data).name.lower()
    for key, words in (("eb", ("eb_", "eb.", "embryoid")), ("cite", ("cite",)),
                       ("multi", ("multi",))):
        if any(w in name for w in words):
            return key
    return None


# --------------------------------------------------------------------------- one task
def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Fit one (method, left-out time, seed) and score it; picklable for worker processes."""
    ts: TimeSeries = task["ts"]
    spec: FitSpec = task["spec"]
    k, steps = spec.left_out, task["ode_steps"]
    fit = Fitter(ts, spec).run(log_every=max(1, spec.steps // 20))
    pred = predict_left_out(fit.model, ts, k, steps_per_unit=steps)
    s = score(pred, ts.at(k))
    record: dict[str, Any] = {
        "method": task.get("label", spec.method), "left_out": k, "time": ts.time_names[k],
        "seed": spec.seed, "w1": s.w1, "mmd": s.mmd, "sigma": spec.sigma, "steps": spec.steps,
        "train_seconds": fit.train_seconds, "final_loss": fit.history[-1][1],
    }
    if task.get("truth") is not None:
        record["w1_truth"] = score(pred, task["truth"]).w1
    out: dict[str, Any] = {"record": record, "extra": []}
    for diffusion in DIFFUSIONS if spec.method in SCORE_METHODS else ():
        # the same fit along its SDE, one row per noise schedule (the same increments' seed)
        sde = SDE(spec.sigma, stream(spec.seed, "sde", str(k)), diffusion)
        pred = predict_left_out(fit.model, ts, k, steps_per_unit=steps, sde=sde)
        s = score(pred, ts.at(k))
        extra = {**record, "method": sde_entry(record["method"], diffusion), "w1": s.w1,
                 "mmd": s.mmd}
        if task.get("truth") is not None:
            extra["w1_truth"] = score(pred, task["truth"]).w1
        out["extra"].append(extra)
    if task.get("keep_model"):
        out["state"] = {key: v.clone() for key, v in fit.model.state_dict().items()}
        out["spec"] = spec
    return out


def sde_entry(entry: str, diffusion: str = DEFAULT_DIFFUSION) -> str:
    """The row name of an SF2M entry sampled with its SDE.

    The row of an SF2M entry sampled with its SDE: 'sf2m' -> 'sf2m-sde', 'sf2m:0.1' ->
    'sf2m-sde:0.1'; another noise schedule is named after it: 'sf2m-sde-tapered:0.1'.
    """
    base, sep, sigma = entry.partition(":")
    tag = "" if diffusion == DEFAULT_DIFFUSION else f"-{diffusion}"
    return f"{base}-sde{tag}{sep}{sigma}"


@dataclass(frozen=True, eq=False)
class Fit:
    """One task of :func:`run_tasks` as a cell of the shared runner (hashed by identity)."""

    task: dict[str, Any] = field(repr=False)

    @property
    def label(self) -> str:
        """The fit's name in progress lines: method, seed and held-out time."""
        t = self.task
        return (f"{label(t['label'])} seed {t['spec'].seed}, "
                f"time {t['ts'].time_names[t['spec'].left_out]} held out")


def _run_fit(fit: Fit) -> dict[str, Any]:
    return run_task(fit.task)


def run_tasks(tasks: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    """Run :func:`run_task` over ``tasks`` in ``jobs`` worker processes.

    :func:`run_task` over ``tasks`` in ``jobs`` worker processes (1 torch thread each),
    one progress line per finished fit; results in task order. The first failed fit stops
    the run (its error is raised).
    """
    fits = [Fit(t) for t in tasks]
    progress = CellProgress(len(fits), _describe)
    try:
        results = _cells.run_cells(fits, _run_fit, _never_cached, jobs=jobs,
                                   on_done=progress, fail_fast=True)
    finally:
        progress.close()
    return [r.record for r in results]


def _never_cached(fit: Fit) -> None:
    return None


def _describe(result: CellResult) -> str:
    r = result.record["record"]
    return f"W1 {r['w1']:.3f}  MMD {r['mmd']:.4f}  train {r['train_seconds']:.0f} s"


def baseline_record(
    ts: TimeSeries, k: int, seed: int, truth: torch.Tensor | None
) -> dict[str, Any]:
    """The interpolation baseline's record for held-out time ``k`` (W1, MMD, W1 to ``truth``)."""
    pred = interpolation_baseline(ts, k, generator=stream(seed, "baseline", str(k)))
    s = score(pred, ts.at(k))
    rec = {"method": BASELINE, "left_out": k, "time": ts.time_names[k], "seed": seed,
           "w1": s.w1, "mmd": s.mmd}
    if truth is not None:
        rec["w1_truth"] = score(pred, truth).w1
    return rec


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``otcfm bench single-cell``."""
    p = argparse.ArgumentParser(
        prog="otcfm bench single-cell",
        description="Leave-one-time-point-out trajectory inference: OT-CFM, I-CFM, SB-CFM and "
                    "linear interpolation of exact OT pairs (paper Table 4's protocol).",
    )
    p.add_argument("--data", default="synthetic", help="'synthetic' or a .h5ad/.npz/.csv file")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 42, 43, ... (default 5; 1 with --quick)")
    p.add_argument("--out", type=Path, required=True, help="output folder (e.g. docs/results)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per fit (3000)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['steps']} steps, {QUICK['n_cells']} synthetic cells "
                        f"per time, {QUICK['ode_steps']} Euler steps, 1 seed (unless given)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of otcfm, icfm, sbcfm, sf2m (scored along its "
                        "ODE and, as sf2m-sde and sf2m-sde-tapered, its SDE with a constant "
                        "and a tapered noise); METHOD:SIGMA sets one method's sigma "
                        "(e.g. sbcfm:0.1; the same method may appear twice)")
    p.add_argument("--left-out", default="all",
                   help="comma-separated time indices to hold out (default: every "
                        "intermediate one)")
    p.add_argument("--sigma", type=float, default=None,
                   help="path noise of every method (default 0.1; sbcfm 1.0)")
    p.add_argument("--ode-steps", type=int, default=100, help="Euler steps per unit of time")
    p.add_argument("--dims", type=int, default=5, help="principal components kept (0 = all)")
    p.add_argument("--no-pca", action="store_true",
                   help="keep the first --dims columns (TrajectoryNet's pcs) instead of PCA")
    p.add_argument("--time-key", default=None, help="time column / array of the file")
    p.add_argument("--obsm-key", default=None, help=".h5ad: features from obsm[KEY]")
    p.add_argument("--npz-key", default="pcs", help=".npz: feature array (default pcs)")
    p.add_argument("--published", choices=(*PUBLISHED, "none"), default=None,
                   help="which paper row to show beside the results (default: from the file "
                        "name)")
    p.add_argument("--n-cells", type=int, default=1000, help="synthetic: cells per time")
    p.add_argument("--obs-dim", type=int, default=20, help="synthetic: observed features")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic: seed of the snapshots")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite OUT/single_cell.md from OUT/single_cell.json; run nothing")
    return p


def _left_outs(flag: str, n_times: int) -> list[int]:
    allowed = list(range(1, n_times - 1))
    if not allowed:
        raise ValueError(f"leaving a time out needs >= 3 time points, the data has {n_times}")
    if flag == "all":
        return allowed
    try:
        ks = [int(v) for v in flag.split(",")]
    except ValueError:
        raise ValueError(
            f"--left-out must be 'all' or time indices like 1,2, got {flag!r}"
        ) from None
    bad = [k for k in ks if k not in allowed]
    if bad:
        raise ValueError(f"--left-out {bad} not in the intermediate time indices {allowed}")
    return ks


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run every fit the parsed flags ask for; write the report under ``--out`` and return it."""
    started = time.perf_counter()
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    if args.quick:
        if args.steps is None:
            args.steps = QUICK["steps"]
        if args.n_cells == 1000:
            args.n_cells = QUICK["n_cells"]
        args.ode_steps = min(args.ode_steps, QUICK["ode_steps"])
    steps = 3000 if args.steps is None else args.steps
    entries = parse_methods(args.methods, args.sigma)
    if args.seeds < 1 or args.jobs < 1:
        raise ValueError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
    ts, pre, synthetic = load_bench_data(args)
    left_outs = _left_outs(args.left_out, ts.n_times)
    seeds = [SEED0 + i for i in range(args.seeds)]
    truths = {}
    if synthetic is not None:
        for k in left_outs:
            fresh = synthetic.truth(ts.times[k], ts.counts[k], stream(args.data_seed, "truth",
                                                                      str(k)))
            truths[k] = pre.transform(fresh)
    # sampling floor: W1 between the held-out snapshot and fresh truth at the same time
    floor = {str(k): score(ts.at(k), truths[k]).w1 for k in truths}
    figure_k = left_outs[len(left_outs) // 2]
    base_spec = FitSpec(steps=steps)
    slow_first = sorted(entries, key=lambda e: (entries[e][0] != "sbcfm", entries[e][1]))
    tasks = [
        {
            "ts": ts,
            "spec": replace(base_spec, method=entries[e][0], sigma=entries[e][1], left_out=k,
                            seed=s),
            "label": e,
            "ode_steps": args.ode_steps,
            "truth": truths.get(k),
            "keep_model": s == seeds[0] and k == figure_k,
        }
        for e in slow_first
        for s in seeds
        for k in left_outs
    ]
    print(f"{len(tasks)} fits, {args.jobs} job(s)", flush=True)
    results = run_tasks(tasks, args.jobs)
    records = [r["record"] for r in results] + [x for r in results for x in r["extra"]]
    records += [baseline_record(ts, k, s, truths.get(k)) for s in seeds for k in left_outs]
    models = {r["record"]["method"]: model_from_state({"spec": r["spec"].to_dict(),
                                                       "model": r["state"]}, ts.dim)
              for r in results if "state" in r}
    models = {e: models[e] for e in entries if e in models}
    rows = [x for e in entries
            for x in ((e, *(sde_entry(e, d) for d in DIFFUSIONS))
                      if entries[e][0] in SCORE_METHODS else (e,))]
    summary = summarize(records, [*rows, BASELINE])
    out = Path(args.out)
    write_figures(out / "single_cell", ts, figure_k, models, summary, args.ode_steps)
    report = {
        "benchmark": "single-cell leave-one-time-point-out",
        "command": "otcfm bench single-cell " + " ".join(shlex.quote(a) for a in argv),
        "data": {
            "path": args.data, "cells": int(ts.x.shape[0]), "counts": list(ts.counts),
            "times": list(ts.times), "time_names": list(ts.time_names), "dim": ts.dim,
            "preprocessing": pre.description if pre else "raw",
            "obs_dim": synthetic.obs_dim if synthetic else None,
        },
        "truth_floor": floor or None,
        "published": published_set(args.data, args.published) if synthetic is None else None,
        "methods": list(entries), "left_outs": left_outs, "seeds": len(seeds), "steps": steps,
        "sigmas": {e: entries[e][1] for e in entries}, "ode_steps": args.ode_steps,
        "jobs": args.jobs,
        "summary": summary,
        "records": records,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "wall_seconds": time.perf_counter() - started,
    }
    write_text_atomic(json.dumps(report, indent=2) + "\n", out / "single_cell.json")
    write_text_atomic(markdown(report), out / "single_cell.md")
    return report


def main(argv: list[str] | None = None) -> int:
    """``otcfm bench single-cell``; a user error is told on one line with exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.report_only:
            page = write_text_atomic(render_page(args.out), Path(args.out) / "single_cell.md")
            print(f"wrote {page}")
            return 0
        report = run(args, argv)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"otcfm bench single-cell: error: {err}", file=sys.stderr)
        return 2
    for m, entry in report["summary"].items():
        extra = f"  W1 truth {pm(entry.get('w1_truth'))}" if "w1_truth" in entry else ""
        print(f"{label(m):>22}: W1 {pm(entry['w1'])}  MMD {pm(entry['mmd'], '.4f')}"
              f"{extra}")
    print(f"wrote {Path(args.out) / 'single_cell.md'} ({report['wall_seconds']:.0f} s)")
    return 0

