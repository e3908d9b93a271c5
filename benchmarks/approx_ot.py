"""ApproxOT against POT's exact plan (TorchCFM's ``ot.emd(numItermax=1e6)``) on the same cost.

Prints, per (B, d): median seconds of ``ot.emd`` (capped at 1e6 iterations as in TorchCFM,
float64 cost), of ``ApproxOT(tol)`` (cost matrix included), the speed-up, the true coupling
gap of ApproxOT against the exact optimum (uncapped network simplex) and its certified bound.
``--memory`` also runs one B = 8192, d = 784 coupling in a fresh process and reports its peak
resident memory increase against one float32 B x B cost matrix.

    python benchmarks/approx_ot.py [--sizes 1024 4096] [--dims 2 64] [--repeats 3] [--memory]
                                   [--no-warm-start]

Timings are wall-clock medians; on a shared machine they are indicative only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import ot
import torch

from otcfm.couplings import ApproxOT
from otcfm.couplings._base import sq_cost


def data(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) + 0.5


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def row(
    b: int, d: int, tol: float, repeats: int, seed: int, warm_start: bool = True
) -> dict[str, float]:
    x0, x1 = data(b, d, seed)
    cost = sq_cost(x0, x1).double().numpy()
    w = np.full(b, 1.0 / b)
    t_emd, _ = median_time(lambda: ot.emd(w, w, cost, numItermax=1_000_000), repeats)
    exact = ot.emd(np.ones(b), np.ones(b), cost, numItermax=sys.maxsize)
    opt = float((exact * cost).sum())
    ind = float(cost.sum()) / b
    cpl = ApproxOT(tol=tol, warm_start=warm_start)
    t_apx, pair = median_time(lambda: cpl(x0, x1), repeats)
    u = float(cost[np.arange(b), pair.j.numpy()].sum())
    return {
        "B": b, "d": d, "emd_s": t_emd, "approx_s": t_apx, "speedup": t_emd / t_apx,
        "gap": (u - opt) / (ind - opt), "gap_bound": pair.info["gap_bound"],
        "iterations": pair.info["iterations"],
    }


def memory_child(b: int, d: int, tol: float) -> None:
    x0, x1 = data(b, d, 0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pair = ApproxOT(tol=tol)(x0, x1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "B": b, "d": d, "seconds": time.perf_counter() - start,
        "peak_increase_mib": (peak - base) / 1024, "cost_matrix_mib": b * b * 4 / 2**20,
        "gap_bound": pair.info["gap_bound"], "iterations": pair.info["iterations"],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-warm-start", action="store_true", help="ApproxOT(warm_start=False)")
    ap.add_argument("--memory", action="store_true", help="also the B=8192, d=784 memory run")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the rows as JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(8192, 784, args.tol)
        return
    rows = []
    print(f"{'B':>6} {'d':>4} {'ot.emd s':>9} {'approx s':>9} {'speedup':>8} {'gap':>9} "
          f"{'bound':>9} {'rounds':>7}")
    for b in args.sizes:
        for d in args.dims:
            r = row(b, d, args.tol, args.repeats, seed=b + d, warm_start=not args.no_warm_start)
            rows.append(r)
            print(f"{b:>6} {d:>4} {r['emd_s']:>9.3f} {r['approx_s']:>9.3f} {r['speedup']:>8.2f} "
                  f"{r['gap']:>9.2e} {r['gap_bound']:>9.2e} {r['iterations']:>7}", flush=True)
    if args.memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", "--tol", str(args.tol),
             "--threads", str(args.threads)],
            check=True, capture_output=True, text=True,
        ).stdout
        mem = json.loads(out.strip().splitlines()[-1])
        rows.append({"memory": mem})
        print(f"B=8192 d=784: {mem['seconds']:.1f} s, peak RSS +{mem['peak_increase_mib']:.0f} MiB"
              f" vs {mem['cost_matrix_mib']:.0f} MiB for one float32 cost matrix "
              f"(bound {mem['gap_bound']:.2e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
