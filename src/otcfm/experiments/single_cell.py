"""Benchmark: single-cell trajectory inference by leaving one time point out (REFERENCE.md §6).

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
import multiprocessing
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from otcfm.data.preprocess import Preprocessor, fit_preprocessor
from otcfm.data.synthetic_cells import SyntheticCells
from otcfm.data.timeseries import TimeSeries, load_timeseries
from otcfm.experiments._stats import paired_difference
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.datasets import stream
from otcfm.trajectory.fit import DEFAULT_SIGMA, METHODS, FitSpec, Fitter
from otcfm.trajectory.predict import (
    interpolation_baseline,
    predict_left_out,
    score,
    trajectories,
)

BASELINE = "linear-ot"
SEED0 = 42
LABELS = {"otcfm": "OT-CFM", "icfm": "I-CFM", "sbcfm": "SB-CFM", BASELINE: "linear interp. (OT)"}
# REFERENCE.md §6 (paper Table 4): W1 mean +- std over left-out times and 5 seeds
PUBLISHED = {
    "eb": {"otcfm": (0.790, 0.068), "icfm": (0.872, 0.087), "sbcfm": (1.221, 0.380)},
    "cite": {"otcfm": (0.882, 0.058), "icfm": (0.965, 0.111), "sbcfm": (1.067, 0.107)},
    "multi": {"otcfm": (0.937, 0.054), "icfm": (1.085, 0.099), "sbcfm": (1.129, 0.363)},
}
PUBLISHED_NAMES = {"eb": "EB", "cite": "CITE", "multi": "Multiome"}
QUICK = {"steps": 100, "n_cells": 150, "ode_steps": 20}


def label(entry: str) -> str:
    """Display name of a method entry: 'sbcfm' -> 'SB-CFM', 'sbcfm:0.1' -> 'SB-CFM (σ=0.1)'."""
    base, _, sigma = entry.partition(":")
    return LABELS.get(base, base) + (f" (σ={sigma})" if sigma else "")


def parse_methods(flag: str, sigma: float | None) -> dict[str, tuple[str, float]]:
    """'otcfm,icfm,sbcfm:0.1' -> {entry: (method, sigma)}; sigma: --sigma, else the entry's
    own, else the method's default (0.1; sbcfm 1.0)."""
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
def _init_worker() -> None:
    torch.set_num_threads(1)


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
    out = {"record": record}
    if task.get("keep_model"):
        out["state"] = {key: v.clone() for key, v in fit.model.state_dict().items()}
    return out


def baseline_record(
    ts: TimeSeries, k: int, seed: int, truth: torch.Tensor | None
) -> dict[str, Any]:
    pred = interpolation_baseline(ts, k, generator=stream(seed, "baseline", str(k)))
    s = score(pred, ts.at(k))
    rec = {"method": BASELINE, "left_out": k, "time": ts.time_names[k], "seed": seed,
           "w1": s.w1, "mmd": s.mmd}
    if truth is not None:
        rec["w1_truth"] = score(pred, truth).w1
    return rec


# --------------------------------------------------------------------------- summary
def summarize(
    records: list[dict[str, Any]], order: list[str] | None = None
) -> dict[str, Any]:
    """Per method: mean +- std over seeds of the per-seed average over left-out times, and
    per left-out time the list of values over seeds. Methods in ``order`` first, then in
    order of appearance."""
    out: dict[str, Any] = {}
    seen = list(dict.fromkeys(r["method"] for r in records))
    methods = [m for m in (order or []) if m in seen] + [m for m in seen if m not in (order or [])]
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        entry: dict[str, Any] = {}
        for key in ("w1", "mmd", "w1_truth"):
            if not all(key in r for r in rows):
                continue
            seeds = sorted({r["seed"] for r in rows})
            per_seed = [statistics.fmean(r[key] for r in rows if r["seed"] == s) for s in seeds]
            entry[key] = {
                "mean": statistics.fmean(per_seed),
                "std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": dict(zip(map(str, seeds), per_seed, strict=True)),
                "per_left_out": {
                    str(k): [r[key] for r in rows if r["left_out"] == k]
                    for k in sorted({r["left_out"] for r in rows})
                },
            }
        out[m] = entry
    return out


def _pm(entry: dict[str, Any] | None, fmt: str = ".3f") -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:{fmt}} ± {entry['std']:{fmt}}"


def _markdown(report: dict[str, Any]) -> str:
    summary, ts_info = report["summary"], report["data"]
    pub = report.get("published")
    synthetic = report["data"]["path"] == "synthetic"
    head = ["method", "W1 (held-out cells)", "MMD"]
    if synthetic:
        head.append("W1 (fresh ground truth)")
    if pub:
        head.append(f"published W1 ({PUBLISHED_NAMES[pub]})")
    rows = []
    for m, entry in summary.items():
        cells = [label(m), _pm(entry.get("w1")), _pm(entry.get("mmd"), ".4f")]
        if synthetic:
            cells.append(_pm(entry.get("w1_truth")))
        if pub:
            p = PUBLISHED[pub].get(m)
            cells.append(f"{p[0]:.3f} ± {p[1]:.3f}" if p else "-")
        rows.append("| " + " | ".join(cells) + " |")
    times = sorted({int(k) for e in summary.values() for k in e["w1"]["per_left_out"]})
    names = ts_info["time_names"]
    per = ["| method | " + " | ".join(f"t={names[k]}" for k in times) + " |",
           "|---" * (len(times) + 1) + "|"]
    for m, entry in summary.items():
        vals = []
        for k in times:
            v = entry["w1"]["per_left_out"].get(str(k), [])
            sd = statistics.pstdev(v) if len(v) > 1 else 0.0
            vals.append(f"{statistics.fmean(v):.3f} ± {sd:.3f}" if v else "-")
        per.append(f"| {label(m)} | " + " | ".join(vals) + " |")
    verdict = _verdict(summary, synthetic)
    if report.get("truth_floor"):
        fl = report["truth_floor"]
        verdict += (
            "- Sampling floor: the held-out cells themselves are at W1 "
            + ", ".join(f"{fl[str(k)]:.3f} (t={names[k]})" for k in times)
            + " from fresh ground-truth cells (mean "
            + f"{statistics.fmean(fl[str(k)] for k in times):.3f}); no prediction can be "
            "expected to score much below it.\n"
        )
    ref = "\n".join(
        f"- {PUBLISHED_NAMES[s]}: " + ", ".join(
            f"{LABELS[m]} {v[0]:.3f} ± {v[1]:.3f}" for m, v in PUBLISHED[s].items())
        for s in PUBLISHED
    )
    data_line = (
        "the synthetic branching time course (`otcfm.data.synthetic_cells`: a 3-D latent SDE "
        f"in a bifurcating potential observed in {ts_info['obs_dim']} noisy features)"
        if synthetic else f"`{ts_info['path']}`"
    )
    return (
        "# Single-cell trajectory inference: leave one time point out\n\n"
        f"Data: {data_line}; {ts_info['cells']} cells at times {', '.join(names)} "
        f"(counts {', '.join(map(str, ts_info['counts']))}); representation: "
        f"{ts_info['preprocessing']}.\n\n"
        "Protocol (REFERENCE.md §6): for each intermediate time k, one MLP (3x64, SELU) is "
        "trained on all other populations (interval k uses time t + k; the skip pair "
        "(k-1, k+1) uses 2t + (k-1) and target u/2), AdamW lr 1e-3 / wd 1e-5, batch 128 cells "
        f"per time, sigma {_sigmas(report)}, {report['steps']} steps; every cell of k-1 is "
        f"pushed one unit forward with {report['ode_steps']} Euler steps and compared with "
        "the true cells at k (exact W1; MMD with the RBF mixture of REFERENCE.md §3). "
        f"Mean ± std over {report['seeds']} seed(s) of the average over left-out times "
        f"{', '.join(names[k] for k in times)}. The baseline pairs the cells of k-1 and k+1 "
        "by exact OT and takes the midpoints.\n\n"
        "| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|\n" + "\n".join(rows)
        + "\n\nW1 per left-out time (mean ± std over seeds):\n\n" + "\n".join(per) + "\n\n"
        + verdict
        + "\n![populations and trajectories](single_cell/time_course.png)\n\n"
        "![W1 per left-out time](single_cell/w1_per_time.png)\n\n"
        "Published W1 on the real sets (paper Table 4, REFERENCE.md §6), for reference"
        + (" (not comparable with the synthetic set)" if synthetic else "") + ":\n\n"
        + ref + "\n\n"
        f"Command: `{report['command']}`  \n"
        f"Machine: {report['machine']}; {report['jobs']} worker process(es); wall time "
        f"{report['wall_seconds']:.0f} s; {report['date']}.\n"
    )


def _sigmas(report: dict[str, Any]) -> str:
    parts = [f"{s:g} ({label(m)})" for m, s in report["sigmas"].items()]
    text = ", ".join(parts) + " (SB-CFM: entropic OT with reg 2 sigma^2"
    sb = {s for m, s in report["sigmas"].items() if m.partition(":")[0] == "sbcfm"}
    if len(sb) > 1:  # say why there are several SB-CFM rows
        text += ("; sigma 1 is SB-CFM's preset, as in the reference runner's SB-CFM model "
                 "and the 2-D protocol, while REFERENCE.md §6 lists sigma 0.1 for the "
                 "networks; at 0.1 the plan (reg 0.02 on standardised cells) is close to "
                 "the exact one, so that SB-CFM differs from OT-CFM mainly in its Brownian-"
                 "bridge noise, at most 0.05")
    return text + ")"


def _verdict(summary: dict[str, Any], synthetic: bool) -> str:
    if "otcfm" not in summary:
        return ""
    ot = summary["otcfm"]["w1"]["mean"]
    lines = []
    for other in summary:
        if other != "otcfm":
            v = summary[other]["w1"]["mean"]
            word = "lower" if ot < v else "NOT lower"
            lines.append(f"- OT-CFM's mean W1 ({ot:.3f}) is {word} than {label(other)}'s "
                         f"({v:.3f}){_paired(summary['otcfm']['w1'], summary[other]['w1'])}.")
    if synthetic and BASELINE in summary and "w1_truth" in summary["otcfm"]:
        a, b = summary["otcfm"]["w1_truth"]["mean"], summary[BASELINE]["w1_truth"]["mean"]
        word = "closer to" if a < b else "NOT closer to"
        lines.append(f"- Against fresh ground-truth cells, OT-CFM's predictions ({a:.3f}) are "
                     f"{word} the truth than the interpolation baseline's ({b:.3f}).")
    return "\n".join(lines) + "\n"


def _paired(ours: dict[str, Any], other: dict[str, Any]) -> str:
    """'; paired over seeds ...': the per-seed difference, its standard error and whether it
    stands out of the seed noise (|mean| > 2 SE); empty with fewer than 2 common seeds."""
    paired = paired_difference(ours.get("per_seed", {}), other.get("per_seed", {}))
    if paired is None or paired[1] is None:
        return ""
    mean, se, n = paired
    verdict = "outside" if abs(mean) > 2 * se else "within"
    return (f"; paired over {n} seeds, OT-CFM minus it is {mean:+.3f} ± {se:.3f} "
            f"(standard error), {verdict} the seed noise")


# --------------------------------------------------------------------------- figures
def _figures(out: Path, ts: TimeSeries, k: int, models: dict[str, dict], spec: FitSpec,
             summary: dict[str, Any], ode_steps: int) -> None:
    from otcfm.models import MLP
    from otcfm.trajectory.plots import Panel, View2D, plot_time_course, plot_w1_per_time

    g = stream(0, "figure")
    start = ts.at(0)
    cells = start[torch.randperm(start.shape[0], generator=g)[:60]]
    grid = torch.linspace(0, ts.n_times - 1, 10 * (ts.n_times - 1) + 1)[1:].tolist()
    panels = []
    for m, state in models.items():
        model = MLP(ts.dim, width=spec.width, depth=spec.depth, activation=spec.activation)
        model.load_state_dict(state)
        model.eval().requires_grad_(False)
        paths = trajectories(model, cells, 0.0, grid, steps_per_unit=ode_steps)
        pred = predict_left_out(model, ts, k, steps_per_unit=ode_steps)
        panels.append(Panel(label(m), paths.xs, pred))
    panels.append(Panel(LABELS[BASELINE], None, interpolation_baseline(ts, k, generator=g)))
    plot_time_course(
        ts, panels, out / "time_course.png", left_out=k, view=View2D.first_two(ts.dim),
        title=f"time {ts.time_names[k]} held out (black); predictions in red; grey: paths of "
              "60 cells from the first time",
    )
    table = {label(m): {int(key): v for key, v in e["w1"]["per_left_out"].items()}
             for m, e in summary.items()}
    plot_w1_per_time(table, out / "w1_per_time.png", time_names=ts.time_names,
                     title="W1 to the held-out cells (mean ± std over seeds)")


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otcfm bench single-cell",
        description="Leave-one-time-point-out trajectory inference: OT-CFM, I-CFM, SB-CFM and "
                    "linear interpolation of exact OT pairs (REFERENCE.md §6).",
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
                   help="comma-separated subset of otcfm, icfm, sbcfm; METHOD:SIGMA sets one "
                        "method's sigma (e.g. sbcfm:0.1; the same method may appear twice)")
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
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
            results = list(pool.map(run_task, tasks))
    else:
        results = [run_task(t) for t in tasks]
    records = [r["record"] for r in results]
    records += [baseline_record(ts, k, s, truths.get(k)) for s in seeds for k in left_outs]
    models = {r["record"]["method"]: r["state"] for r in results if "state" in r}
    models = {e: models[e] for e in entries if e in models}
    summary = summarize(records, [*entries, BASELINE])
    out = Path(args.out)
    _figures(out / "single_cell", ts, figure_k, models, base_spec, summary, args.ode_steps)
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
        "machine": _machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "wall_seconds": time.perf_counter() - started,
    }
    write_text_atomic(json.dumps(report, indent=2) + "\n", out / "single_cell.json")
    write_text_atomic(_markdown(report), out / "single_cell.md")
    return report


def _machine() -> str:
    import os

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        report = run(args, argv)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"otcfm bench single-cell: error: {err}", file=sys.stderr)
        return 2
    for m, entry in report["summary"].items():
        extra = f"  W1 truth {_pm(entry.get('w1_truth'))}" if "w1_truth" in entry else ""
        print(f"{label(m):>22}: W1 {_pm(entry['w1'])}  MMD {_pm(entry['mmd'], '.4f')}"
              f"{extra}")
    print(f"wrote {Path(args.out) / 'single_cell.md'} ({report['wall_seconds']:.0f} s)")
    return 0

