"""Median solve time of exact assignment solvers on square squared-Euclidean costs.

Usage (1 BLAS/torch thread; writes a markdown table)::

    OMP_NUM_THREADS=1 python benchmarks/exact_solvers.py --out docs/results/exact_solvers.md

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
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from otcfm.couplings._assignment import SOLVERS, available_solvers, solve  # noqa: E402

SIZES = (64, 256, 512, 1024, 2048, 4096, 8192)
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
    solve(problem(8, d, seed), name, check=False)  # warm-up: first-call overheads
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--solvers", nargs="+", default=[s for s in SOLVERS if s in available_solvers()])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--growth", type=float, default=6.0, help="assumed time ratio per 2x B")
    p.add_argument("--out", default=None)
    p.add_argument("--append", action="store_true", help="add the table to --out")
    args = p.parse_args()
    rows = run(args)
    text = table(rows, args.solvers)
    print(text)
    cmd = "OMP_NUM_THREADS=1 python " + " ".join(sys.argv)
    if args.out and args.append:
        with open(args.out, "a") as f:
            f.write(f"\nCommand: `{cmd}` ({datetime.date.today()})\n\n{text}\n")
    elif args.out:
        with open(args.out, "w") as f:
            f.write(
                "# Exact assignment solvers: median solve time (seconds)\n\n"
                f"Command: `{cmd}`\n\n"
                f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
                f"cores (shared with other jobs: indicative numbers), 1 thread; "
                f"{datetime.date.today()}; numpy {np.__version__}, torch {torch.__version__}.\n\n"
                "float64 squared-Euclidean costs; d = 2: N(0, I) -> 8 Gaussians (radius 5, "
                "std 1); d > 2: N(0, I) -> N(1, 4 I). Median of the repeats (one repeat once "
                "a solve takes over a few seconds). FAILED: not an optimal permutation "
                "(relative gap >= 1e-9 to the best cost found); skipped: over the time cap "
                "(timed out, or predicted to).\n\n" + text + "\n"
            )


if __name__ == "__main__":
    main()
