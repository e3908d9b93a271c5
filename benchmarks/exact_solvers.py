"""Median solve time of exact assignment solvers on square squared-Euclidean costs.

Usage (1 BLAS/torch thread; writes a JSON record and the markdown page rendered from it)::

    OMP_NUM_THREADS=1 python benchmarks/exact_solvers.py --json docs/results/exact_solvers.json \
        --out docs/results/exact_solvers.md
    python benchmarks/exact_solvers.py --report-only --json docs/results/exact_solvers.json \
        --out docs/results/exact_solvers.md     # re-render the page, run nothing

Every answer is checked against the best total cost found for the same problem (relative gap
< 1e-9, and scipy's when scipy ran); a solver whose answer is not an optimal permutation is
reported as FAILED, never as a time. A solver is skipped at the next batch size once its
time, scaled by ``--growth``, would exceed ``--max-seconds``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from otcfm._ot import assignment as asg  # noqa: E402
from otcfm._ot.assignment import SOLVERS, available_solvers, solve  # noqa: E402

SIZES = (32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)
DIMS = (2, 64, 784)


def problem(n: int, d: int, seed: int) -> np.ndarray:
    """float64 squared-Euclidean cost: N(0, I) source; 8 Gaussians (d = 2) or N(1, 2^2 I)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    if d == 2:
        k = torch.randint(0, 8, (n,), generator=g).double() * (2 * np.pi / 8)
        centres = 5.0 * torch.stack([torch.cos(k), torch.sin(k)], 1)
        x1 = centres + torch.randn(n, 2, generator=g, dtype=torch.float64)
    else:
        x1 = 1.0 + 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.cdist(x0, x1).square_().numpy()


def _child(name: str, n: int, d: int, seed: int, conn) -> None:
    torch.set_num_threads(1)
    # warm-up: first-call overheads (loading compiled kernels); at min(n, 512) points every
    # code path the timed size takes runs once (the auction's lists from 256, coarse levels)
    solve(problem(min(n, 512), d, seed + 1), name, check=False)
    cost = problem(n, d, seed)
    start = time.perf_counter()
    j = solve(cost, name, check=False)
    seconds = time.perf_counter() - start
    ok = j is not None and np.array_equal(np.sort(j), np.arange(n))
    conn.send((seconds, float(cost[np.arange(n), j].sum()) if ok else float("nan")))


def time_one(name: str, n: int, d: int, seed: int, limit: float) -> tuple[float, float] | None:
    """(seconds, total cost or NaN) of one solve in a forked child; None past ``limit``."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, n, d, seed, send))
    proc.start()
    got = recv.poll(limit)
    out = recv.recv() if got else None
    proc.kill()
    proc.join()
    return out


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for d in args.dims:
        last: dict[str, float] = {}
        for n in args.sizes:
            times: dict[str, list[float]] = {}
            totals: dict[str, list[float]] = {}
            for name in args.solvers:
                if last.get(name, 0.0) * args.growth > args.max_seconds:
                    continue
                reps = 1 if last.get(name, 0.0) * args.growth > 2.0 else args.repeats
                for rep in range(reps):
                    got = time_one(name, n, d, 1000 * rep + n + d, args.max_seconds)
                    if got is None:  # timed out: skip this solver from here on
                        last[name] = float("inf")
                        times.pop(name, None)
                        totals.pop(name, None)
                        break
                    times.setdefault(name, []).append(got[0])
                    totals.setdefault(name, []).append(got[1])
                else:
                    last[name] = statistics.median(times[name])
            for rep in range(max((len(v) for v in totals.values()), default=0)):
                found = [v[rep] for v in totals.values() if len(v) > rep and v[rep] == v[rep]]
                best = min(found)
                for name in totals:
                    if len(totals[name]) > rep:
                        gap = (totals[name][rep] - best) / abs(best)
                        if not gap < 1e-9:  # NaN (not a permutation) fails too
                            times[name] = [float("nan")]
            row = {"d": d, "B": n, **{k: statistics.median(v) for k, v in times.items()}}
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows: list[dict], solvers: list[str]) -> str:
    head = "| d | B | " + " | ".join(solvers) + " | fastest |"
    lines = [head, "|" + "---|" * (len(solvers) + 3)]
    for r in rows:
        cells, best = [], None
        for s in solvers:
            v = r.get(s)
            if v is None:
                cells.append("skipped")
            elif v != v:
                cells.append("FAILED")
            else:
                cells.append(f"{v:.4g}")
                best = s if best is None or v < r[best] else best
        lines.append(f"| {r['d']} | {r['B']} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


INTRO = (
    "float64 squared-Euclidean costs; d = 2: N(0, I) -> 8 Gaussians (radius 5, std 1); d > 2: "
    "N(0, I) -> N(1, 4 I). Each solve runs in a forked process after one warm-up solve of "
        "min(B, 512) points (so that loading compiled code is not timed). Median of the repeats "
        "(one repeat once a solve takes over a few "
    "seconds). FAILED: not an optimal permutation (relative gap >= 1e-9 to the best cost "
    "found); skipped: over the time cap (timed out, or predicted to)."
)


def _time(rows: list[dict], solver: str, d: int, b: int) -> float | None:
    return next((r[solver] for r in rows if r["d"] == d and r["B"] == b and solver in r), None)


def render(record: dict) -> str:
    """The page, a function of the JSON record: the main run, then each supplementary run."""
    main, *more = record["runs"]
    parts = [
        "# Exact assignment solvers: median solve time (seconds)\n",
        f"Command: `{main['command']}`\n",
        f"Machine: {main['machine']}; {main['date']}.\n",
        "Rendered from `exact_solvers.json` by `python benchmarks/exact_solvers.py "
        "--report-only --json JSON --out PAGE` (runs nothing).\n",
        INTRO + "\n",
        table(main["rows"], main["solvers"]) + "\n",
    ]
    for run_ in more:
        if run_.get("title"):
            parts.append(f"## {run_['title']}\n")
        if run_.get("note"):
            parts.append(run_["note"] + "\n")
        parts.append(f"Command: `{run_['command']}` ({run_['date']})\n")
        parts.append(table(run_["rows"], run_["solvers"]) + "\n")
    rows = [r for run_ in record["runs"] for r in run_["rows"]]
    lapjv = _time(rows, "lapjv", 2, 512)
    auction, emd = _time(rows, "auction", 2, 4096), _time(rows, "emd", 2, 4096)
    auction64, lap64 = _time(rows, "auction", 64, 4096), _time(rows, "lap", 64, 4096)
    parts.append(
        "## The rule of `ExactOT(solver=\"auto\")` (src/otcfm/_ot/assignment.py)\n\n"
        f"- B >= {asg._AUCTION_MIN_N} with numba installed (extra `fast`), or at d > "
        f"{asg._SIMPLEX_MAX_DIM} with `lap` installed B >= {asg._AUCTION_MIN_N_JV}: `auction`, "
        "our compiled float64 auction whose prices are then corrected by shortest paths; each "
        "answer comes with a feasible dual that certifies its relative gap to the optimum is "
        "at most 1e-9 (otherwise network simplex solves it)"
        + (f"; at B = 4096 it takes {auction:.2g} s against `emd`'s {emd:.2g} s in 2-D and "
           f"{auction64:.2g} s against `lap`'s {lap64:.2g} s at d = 64"
           if auction and emd and auction64 and lap64 else "") + ".\n"
        f"- Otherwise, d > {asg._SIMPLEX_MAX_DIM}: `lap` (Jonker-Volgenant, optional extra "
        "`fast`) when installed. (Where `lap` is a little faster than the auction on the "
        "float64 costs of this page, `ExactOT`'s auction, which builds its cost in its own "
        "kernel, may still be as fast as `ExactOT` with `lap`: performance.md times both.)\n"
        f"- Otherwise `scipy` (linear_sum_assignment) below B = {asg._SCIPY_MAX_N}, `emd` (POT "
        "network simplex, uncapped) from there. The Jonker-Volgenant codes degrade badly on "
        "the degenerate low-dimensional costs"
        + (f" (`lapjv` takes {lapjv:.0f} s at d = 2, B = 512)" if lapjv else "") + ".\n"
        "- Every answer is checked to be a permutation; a non-permutation falls back to scipy.\n"
        "- Every solver is exact for the cost matrix it is given: `ExactOT` gives it the costs "
        "rounded to float32 by default (`cost_dtype`), so its pairing is optimal for those.\n"
    )
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--solvers", nargs="+", default=[s for s in SOLVERS if s in available_solvers()])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--growth", type=float, default=6.0, help="assumed time ratio per 2x B")
    p.add_argument("--json", default=None, help="the JSON record (runs with their commands)")
    p.add_argument("--out", default=None, help="the markdown page, rendered from --json")
    p.add_argument("--append", action="store_true",
                   help="add this run to the record of --json instead of replacing it")
    p.add_argument("--title", default=None, help="section title of an appended run")
    p.add_argument("--report-only", action="store_true",
                   help="re-render --out from --json; run nothing")
    args = p.parse_args()
    if (args.report_only or args.out) and not (args.json and args.out):
        raise SystemExit("--out is rendered from the record: give --json too")
    if not args.report_only:
        rows = run(args)
        print(table(rows, args.solvers))
        this = {
            "title": args.title,
            "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
            "date": str(datetime.date.today()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"1 thread; numpy {np.__version__}, torch {torch.__version__}",
            "solvers": list(args.solvers),
            "rows": rows,
        }
        if args.json:
            record = {"runs": []}
            if args.append and os.path.isfile(args.json):
                with open(args.json) as f:
                    record = json.load(f)
            record["runs"].append(this)
            with open(args.json, "w") as f:
                f.write(json.dumps(record, indent=1) + "\n")
    if args.out:
        with open(args.json) as f:
            record = json.load(f)
        with open(args.out, "w") as f:
            f.write(render(record))


if __name__ == "__main__":
    main()
