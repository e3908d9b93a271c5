"""``otcfm bench gaussian-sb`` command line: options, the protocol they set, and the run.

The recipe itself (closed form, cells, training, KL) is :mod:`otcfm.experiments.gaussian_sb`;
the page and figure are :mod:`otcfm.experiments.gaussian_sb_report`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from otcfm.experiments import gaussian_sb_report as report
from otcfm.experiments._cells import CellProgress, CellResult, int_list
from otcfm.experiments.gaussian_sb import (
    CHECKPOINTS,
    COUPLINGS,
    DIMS,
    FIRST_SEED,
    METHODS,
    QUICK,
    QUICK_DIMS,
    Cell,
    Protocol,
    describe,
    plan_cells,
    run_cells,
)
from otcfm.train.config import LR_SCHEDULES


def _names(text: str, flag: str, valid: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [n for n in names if n not in valid]
    if not names or bad:
        raise ValueError(f"{flag}: unknown or missing name(s) {bad or text!r}; valid: "
                         f"{', '.join(valid)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``otcfm bench gaussian-sb``."""
    p = argparse.ArgumentParser(
        prog="otcfm bench gaussian-sb",
        description="Closed-form Schrodinger bridge between N(-a 1, I) and N(a 1, I) (SF2M "
        "Table 3): KL of the learned marginals against the exact ones for SB-CFM (ODE) and "
        "SF2M (SDE) with exact and entropic couplings; cached and resumable.",
    )
    p.add_argument("--dims", help="comma-separated dimensions (default 2,5,20,50,100)")
    p.add_argument("--seeds", type=int, help="first N seeds of 42, 43, ... (default 5)")
    p.add_argument("--methods", help="comma-separated: sbcfm (ODE), sf2m (SDE) (default both)")
    p.add_argument("--couplings", help="comma-separated: exact, entropic (default both)")
    p.add_argument("--steps", type=int, help=f"optimizer steps per cell (default "
                   f"{Protocol.steps})")
    p.add_argument("--schedule", choices=LR_SCHEDULES, help="learning rate over the steps "
                   f"(default {Protocol.schedule})")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, help="weights tested: final (the EMA "
                   "weights after the last step) or best (best validation loss) (default "
                   f"{Protocol.checkpoint})")
    p.add_argument("--sigma", type=float, help=f"bridge sigma (default {Protocol.sigma:g})")
    p.add_argument("--width", type=int, help=f"MLP width (default {Protocol.width})")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    p.add_argument("--out", type=Path, help="report folder (default: the runs folder)")
    p.add_argument("--runs", type=Path, help="cache of cell runs (default runs/gaussian_sb, "
                   "--quick: runs/gaussian_sb-quick)")
    p.add_argument("--quick", action="store_true", help="smoke run (seconds): d = 2, 5, one "
                   "seed, 60 steps of batch 100 on 1,000 points, 10 steps, 2,000 samples")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite OUT/gaussian_sb.md and redraw its figures from the records "
                   "in OUT/gaussian_sb.json and OUT/gaussian_sb_run.json (written by the run "
                   "that made them); train nothing, leave the records as they are")
    return p


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The protocol of the parsed flags (``--quick``'s budget, overridden by the flags), checked."""
    base = Protocol(**QUICK) if args.quick else Protocol()
    over = {k: getattr(args, k) for k in ("steps", "width") if getattr(args, k) is not None}
    for k, v in over.items():
        if v < 1:
            raise ValueError(f"--{k} must be >= 1, got {v}")
    for key in ("schedule", "checkpoint"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.sigma is not None:
        if not (math.isfinite(args.sigma) and args.sigma > 0):
            raise ValueError(f"--sigma must be > 0, got {args.sigma}")
        over["sigma"] = args.sigma
    return replace(base, **over)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str] | None = None) -> int:
    """``otcfm bench gaussian-sb``: run the grid (or rewrite the page) and write the outputs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "otcfm bench gaussian-sb " + " ".join(argv)
    if args.report_only:
        if args.out is None:
            raise ValueError("--report-only needs --out: the folder holding gaussian_sb.json")
        page = report.rewrite_page(args.out)
        print(f"wrote {page}")
        return 0
    started = time.perf_counter()
    p = protocol_from_args(args)
    dims = int_list(args.dims, "--dims") if args.dims else (QUICK_DIMS if args.quick else DIMS)
    methods = _names(args.methods, "--methods", METHODS) if args.methods else METHODS
    couplings = _names(args.couplings, "--couplings", COUPLINGS) if args.couplings else COUPLINGS
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if n_seeds < 1 or args.jobs < 1:
        raise ValueError(f"--seeds and --jobs must be >= 1, got {n_seeds} and {args.jobs}")
    seeds = [FIRST_SEED + k for k in range(n_seeds)]
    runs = args.runs or Path("runs/gaussian_sb-quick" if args.quick else "runs/gaussian_sb")
    out = args.out or runs
    cells: list[Cell] = plan_cells(methods, couplings, dims, seeds)
    print(f"{len(cells)} cells, {args.jobs} job(s), runs in {runs}")
    progress = CellProgress(len(cells), describe)
    try:
        results: list[CellResult] = run_cells(cells, p, runs, jobs=args.jobs, on_done=progress)
    finally:
        progress.close()
    meta = {
        "command": command,
        "wall_seconds": time.perf_counter() - started,
        "date": _now(),
        "jobs": args.jobs,
        "protocol": asdict(p),
    }
    written = report.write_outputs(results, out, meta)
    print("wrote " + ", ".join(str(w) for w in written))
    failed = [r for r in results if r.record is None]
    for r in failed:
        print(f"failed: {r.cell.label}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


