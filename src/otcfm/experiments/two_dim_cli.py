"""``otcfm bench two-dim`` command line: options, the protocol they set, and the run.

The recipe itself (cells, training, evaluation) is :mod:`otcfm.experiments.two_dim`; the
page and figures are :mod:`otcfm.experiments.two_dim_report`. :func:`execute` is shared with
the TorchCFM side by side, ``benchmarks/two_dim_torchcfm.py`` (outside the package), which adds
its cells and its cell runner.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from otcfm.experiments import two_dim_report
from otcfm.experiments._cells import CellProgress
from otcfm.experiments.two_dim import (
    CHECKPOINTS,
    FIRST_SEED,
    METHODS,
    QUICK,
    QUICK_METHODS,
    QUICK_TASKS,
    TASKS,
    Cell,
    Protocol,
    cached_results,
    describe,
    parse_methods,
    parse_skip,
    parse_tasks,
    plan_cells,
    run_cell,
    run_cells,
    sampling_floor,
)
from otcfm.matchers import MATCHERS, matcher
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.config import check_seed

TORCHCFM_SCRIPT = "benchmarks/two_dim_torchcfm.py"


def build_parser(
    prog: str = "otcfm bench two-dim", description: str | None = None
) -> argparse.ArgumentParser:
    """The parser of ``otcfm bench two-dim`` (``prog`` and ``description`` for other runners)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description or "The paper's 2-D benchmark (Table 2): tasks x methods x "
        "seeds, cached and resumable; writes OUT/two_dim.json, OUT/two_dim.md and "
        f"OUT/two_dim/*.png. The TorchCFM side by side: python {TORCHCFM_SCRIPT} (same options).",
    )
    p.add_argument("--tasks", help="comma-separated task names (default: all four)")
    p.add_argument("--methods", help="comma-separated matcher names (default: "
                   + ",".join(METHODS) + "; rf = reflow of icfm)")
    p.add_argument("--seeds", type=int, help="first N seeds of 42, 43, ... (default 5)")
    p.add_argument("--steps", type=int, help="optimizer steps per cell (default 20000)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    p.add_argument("--out", type=Path, help="report folder (default: the runs folder)")
    p.add_argument("--runs", type=Path,
                   help="cache of cell runs (default runs/two_dim, --quick: runs/two_dim-quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in well under a minute: 200 steps of batch 128, 2 tasks, "
                   "icfm/otcfm/fm/rf, 1 seed")
    p.add_argument("--sigma", action="append", default=[], metavar="METHOD=VALUE",
                   help="override a method's sigma, e.g. sf2m=0.1 (repeatable)")
    p.add_argument("--skip", action="append", default=[], metavar="METHOD@TASK",
                   help="leave out cells, e.g. sbcfm@moons-8gaussians (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="coupling threads per cell")
    p.add_argument("--checkpoint", choices=CHECKPOINTS,
                   help="weights tested: ema (the final EMA weights; default), best (raw "
                   "weights of the lowest validation loss, the paper's runner; the default "
                   "with --ema 0) or final (raw, after the last step; needs --ema 0)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="decay of the exponential moving average of the weights that is "
                   "validated and tested (default 0.999, --quick 0.9; 0: the raw weights, as "
                   "the paper)")
    p.add_argument("--report-only", action="store_true",
                   help="write the records and page from the cells already cached; run nothing")
    p.add_argument("--page-only", action="store_true",
                   help="rewrite OUT/two_dim.md from the records in OUT (two_dim.json, "
                   "two_dim_run.json, ...); needs no cached cells, runs nothing")
    p.add_argument("--remarks", type=Path, metavar="FILE",
                   help="markdown file appended to the page as its 'Remarks' section (what "
                   "this run left out, what was tried); its {{name}} placeholders are filled "
                   "with numbers computed from the records (otcfm.experiments.two_dim_facts)")
    p.add_argument("--data-seed", type=int, metavar="SEED",
                   help="draw every cell's train / validation / test sets with this seed, so "
                   "that seeds vary only the training (initial weights, minibatches, times, "
                   "noise); default: each cell's own seed, seeds vary the data too")
    p.add_argument("--coupling", action="append", default=[], metavar="METHOD=NAME",
                   help="override a method's coupling: a name or a spec with options, e.g. "
                   "otcfm=approx or otcfm=exact:sampling=plan (repeatable)")
    for flag, help_ in (("n-train", "training points"), ("n-val", "validation points"),
                        ("n-test", "test points"), ("batch-size", "batch size"),
                        ("val-every", "steps between validations"),
                        ("curve-points", "test points for W2 against Euler steps")):
        p.add_argument(f"--{flag}", type=int, help=help_)
    return p


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The protocol of the parsed flags (``--quick``'s budget, overridden by the flags), checked."""
    base = Protocol(**QUICK) if args.quick else Protocol()
    over = {k: getattr(args, k) for k in ("steps", "n_train", "n_val", "n_test", "batch_size",
                                          "val_every", "curve_points")}
    over = {k: v for k, v in over.items() if v is not None}
    for k, v in over.items():
        if v < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    ema = base.ema if args.ema is None else args.ema
    if not 0 <= ema < 1:
        raise ValueError(f"--ema must be in [0, 1), got {ema}")
    # without an EMA the paper's choice (best validation loss) unless another is named
    checkpoint = args.checkpoint or (base.checkpoint if ema > 0 else "best")
    couplings = []
    for item in args.coupling:
        method, sep, name = item.partition("=")
        if not sep or method not in MATCHERS or not name:
            raise ValueError(f"--coupling must look like METHOD=NAME (e.g. otcfm=approx or "
                             f"otcfm=exact:sampling=plan), got {item!r}")
        try:  # a typo fails here, not in every cell
            matcher(method, coupling=name)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--coupling {item!r}: {err}") from None
        couplings.append((method, name))
    sigmas = []
    for item in args.sigma:
        method, sep, value = item.partition("=")
        try:
            sigma = float(value)
        except ValueError:
            sigma = -1.0
        if not sep or method not in MATCHERS or not sigma >= 0:
            raise ValueError(f"--sigma must look like METHOD=VALUE with VALUE >= 0 (e.g. "
                             f"sf2m=0.1), got {item!r}")
        sigmas.append((method, sigma))
    data_seed = -1 if args.data_seed is None else args.data_seed
    if args.data_seed is not None:
        check_seed("--data-seed", data_seed)
    return replace(base, **over, workers=args.workers, couplings=tuple(sorted(couplings)),
                   sigmas=tuple(sorted(sigmas)), ema=ema, checkpoint=checkpoint,
                   data_seed=data_seed)


def main(argv: list[str] | None = None) -> int:
    """``otcfm bench two-dim``: run the grid and write the outputs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--torchcfm" in argv:
        print(f"otcfm bench two-dim: --torchcfm moved out of the package: run python "
              f"{TORCHCFM_SCRIPT} with the other options (needs the 'bench' extra)",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    return execute(args, argv, command="otcfm bench two-dim")


def execute(
    args: argparse.Namespace,
    argv: Sequence[str],
    *,
    command: str,
    extra_cells: Callable[[Sequence[str], Sequence[str], Sequence[int]], list[Cell]] | None = None,
    runner: Callable[..., dict] = run_cell,
) -> int:
    """Plan, run (or, with --report-only, collect) the cells and write the outputs.

    ``extra_cells(tasks, methods, seeds)``: cells of another library added to the plan;
    ``runner``: the cell runner given to :func:`otcfm.experiments.two_dim.run_cells`;
    ``command``: how the page names the program (the options follow).
    """
    if args.page_only:
        if args.out is None:
            raise ValueError("--page-only needs --out: the folder holding two_dim.json")
        page = write_text_atomic(two_dim_report.render_page(args.out), args.out / "two_dim.md")
        print(f"wrote {page}")
        return 0
    started = time.perf_counter()
    protocol = protocol_from_args(args)
    tasks = parse_tasks(args.tasks or ",".join(QUICK_TASKS if args.quick else TASKS))
    methods = parse_methods(args.methods or ",".join(QUICK_METHODS if args.quick else METHODS))
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if n_seeds < 1 or args.jobs < 1:
        raise ValueError(f"--seeds and --jobs must be >= 1, got {n_seeds} and {args.jobs}")
    seeds = [FIRST_SEED + k for k in range(n_seeds)]
    runs = args.runs or Path("runs/two_dim-quick" if args.quick else "runs/two_dim")
    out = args.out or runs
    skip = parse_skip(args.skip)
    remarks = None
    if args.remarks is not None:
        if not args.remarks.is_file():
            raise ValueError(f"--remarks: no such file {args.remarks}")
        remarks = os.path.relpath(args.remarks.resolve(), out.resolve())
    cells, notes = plan_cells(tasks, methods, seeds, skip=skip)
    if extra_cells is not None:
        cells += extra_cells(tasks, methods, seeds)
    for note in notes:
        print(f"note: {note}", flush=True)
    print(f"{len(cells)} cells, {args.jobs} job(s), runs in {runs}", flush=True)
    if args.report_only:
        results = cached_results(cells, protocol, runs)
        done = {r.cell for r in results}
        missing = [c.label for c in cells if c not in done]
        if missing:
            notes.append(f"not run (no cached result; --report-only): {', '.join(missing)}")
        print(f"{len(results)} of {len(cells)} cells cached", flush=True)
    else:
        progress = CellProgress(len(cells), describe)
        try:
            results = run_cells(cells, protocol, runs, jobs=args.jobs, on_done=progress,
                                runner=runner)
        finally:
            progress.close()
    floors = {t: sampling_floor(t, protocol, runs) for t in tasks}
    meta = {
        "command": " ".join([command, *argv]),
        "wall_seconds": time.perf_counter() - started,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": args.jobs,
        "notes": notes,
        "protocol": asdict(protocol),
        "remarks_file": remarks,
        "floors": floors,
    }
    written = two_dim_report.write_outputs(results, out, meta, runs)
    print("wrote " + ", ".join(str(w) for w in written))
    failed = [r for r in results if r.record is None]
    for r in failed:
        print(f"failed: {r.cell.label}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
