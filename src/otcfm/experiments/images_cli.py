"""``otcfm bench images`` command line: options, the protocol they set, and the run.

The recipe (cells, training, evaluation) is :mod:`otcfm.experiments.images`; the page,
figures and README block are :mod:`otcfm.experiments.images_report`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from otcfm.experiments import images_report
from otcfm.experiments._cells import CellProgress
from otcfm.experiments._machine import machine
from otcfm.experiments.images import (
    DATASETS,
    METHODS,
    SEEDS,
    Cell,
    cached_results,
    describe,
    parse_methods,
    parse_seeds,
    protocol_for,
    run_cells,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``otcfm bench images``."""
    p = _Parser(
        prog="otcfm bench images",
        description="CPU image benchmark: I-CFM, OT-CFM (exact, approximate), FM and "
        "class-conditional OT-CFM with guidance on digits or Fashion-MNIST; FD of a "
        "feature network's features (not FID) against Euler steps and dopri5. Writes "
        "OUT/images.json, OUT/images.md and OUT/images/*.png.",
    )
    p.add_argument("--dataset", required=True, help="digits or fashion-mnist")
    p.add_argument("--quick", action="store_true",
                   help="smaller budget: 1 seed, fewer steps and samples (digits: a few minutes)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--methods", help="comma-separated methods, run in this order with one "
                   "job (default all: " + ",".join(METHODS) + ")")
    p.add_argument("--steps", type=int, help="optimizer steps per cell (overrides the preset)")
    p.add_argument("--out", type=Path, help="report folder (default: the runs folder)")
    p.add_argument("--runs", type=Path,
                   help="cache of cell runs (default runs/images, --quick: runs/images-quick)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    p.add_argument("--report-only", action="store_true",
                   help="write the records and page from the cells already cached; run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """``otcfm bench images``; a ValueError is told on one line with exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return execute(args, argv)
    except ValueError as err:
        print(f"otcfm bench images: error: {err}", file=sys.stderr)
        return 2


def execute(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the cells the parsed flags ask for and write the benchmark's outputs."""
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; valid: {', '.join(DATASETS)}")
    methods = parse_methods(args.methods) if args.methods else tuple(METHODS)
    seeds = parse_seeds(args.seeds) if args.seeds else ((0,) if args.quick else SEEDS)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    over = {"steps": args.steps} if args.steps is not None else {}
    protocol = protocol_for(args.dataset, args.quick, **over)
    runs = args.runs or Path("runs/images-quick" if args.quick else "runs/images")
    out = args.out or runs
    cells = [Cell(args.dataset, m, s) for m in methods for s in seeds]
    print(f"{len(cells)} cells of {args.dataset}, {args.jobs} job(s), runs in {runs}",
          flush=True)
    started = time.perf_counter()
    if args.report_only:
        results = cached_results(cells, protocol, runs)
        print(f"{len(results)} of {len(cells)} cells cached", flush=True)
    else:
        progress = CellProgress(len(cells), describe)
        try:
            results = run_cells(cells, protocol, runs, jobs=args.jobs, on_done=progress)
        finally:
            progress.close()
    done = {r.cell for r in results}
    meta = {
        "command": " ".join(["otcfm bench images", *argv]),
        "wall_seconds": time.perf_counter() - started,
        "cached_cells": sum(r.cached for r in results),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "jobs": args.jobs,
        "quick": bool(args.quick),
        "seeds": list(seeds),
        "methods": list(methods),
        "protocol": asdict(protocol),
        "failed": [f"{r.cell.label}: {r.error}" for r in results if r.record is None],
        "missing": [c.label for c in cells if c not in done],
        "report_only": bool(args.report_only),
    }
    written = images_report.write_outputs(results, out, meta, runs)
    print("wrote " + ", ".join(str(w) for w in written))
    for line in meta["failed"]:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if meta["failed"] else 0
