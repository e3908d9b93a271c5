"""Couplings side by side with TorchCFM, in one process: plan time and optimality gap,
training-step time, peak memory.

    python benchmarks/couplings.py                   # full grid -> docs/results/performance.md
    python benchmarks/couplings.py --quick --out q.json      # reduced grid, a few minutes
    python benchmarks/couplings.py --grid tiny --out t.json  # seconds (smoke test)

Parts (``--parts plan,step,memory``):

- plan: one coupling call (cost matrix + solve + pairs) for B x d. Solvers: TorchCFM's
  ``OTPlanSampler("exact")`` (POT network simplex, default 100,000 iteration cap, pairs drawn
  from the plan WITH replacement), ours ``ExactOT()`` and ``ApproxOT(tol=0.01)`` (when the
  installed otcfm has it). gap = (cost - optimal) / (independent - optimal), where cost is the
  mean squared distance over the pairs a solver returns, optimal comes from a reference exact
  solve run here (POT network simplex with unit supplies and no iteration cap for d <= 4,
  scipy's linear_sum_assignment above) and independent is the mean of the whole cost matrix
  (the expected cost of q0 x q1). Because TorchCFM resamples with replacement its pair cost
  can even fall below the optimum; ``plan_gap`` gives the gap of its plan before sampling and
  ``distinct`` the fraction of distinct source points it keeps. Also ours
  ``EntropicOT(reg=0.05, normalize_cost=True)`` (reg relative to the largest cost; its gap is
  the entropic blur, not an error); like every coupling of ours that iterates to a tolerance
  its records carry how the solve ended: ``converged``, ``marginal_error`` (L1 distance of
  the plan's marginals to the uniform weights), ``iterations`` and ``tol``.
- step: one optimizer step (coupling + loss + backward + AdamW step) for OT-CFM and I-CFM,
  ours (``otcfm.matchers.matcher``) and TorchCFM's flow matchers, same MLP (otcfm.models.MLP,
  t concatenated, SELU) for both: width 64 x 3 in 2-D, width 256 x 3 at d = 784.
- memory: peak resident-memory growth of one coupling call, each in a fresh subprocess (so
  one library's peak does not hide the other's), against one float32 B x B cost matrix.
- entropic: the entropic plans the protocols solve at every step, one solve of a float64
  cost (``python benchmarks/couplings.py --parts entropic --out docs/results/entropic.json
  --md docs/results/entropic.md``): SB-CFM's reg 2 (sigma 1) on the four 2-D tasks' costs,
  and reg 0.02 (sigma 0.1) on consecutive time points of the synthetic single-cell course
  (PCA to 5, standardised, as ``otcfm bench single-cell``). Solvers: ours as it stands
  (``otcfm.couplings._sinkhorn.log_sinkhorn``: epsilon scaling by EPS_SCALING, Newton steps
  by conjugate gradients), ours as it was before (scaling 0.5, Hessian formed for every
  Newton step), and POT's ``ot.bregman.sinkhorn_log`` (no epsilon scaling) capped at
  ``POT_MAX_ITER`` iterations; each record carries the L1 marginal error of its plan.

Timings are medians of repeats on torch.set_num_threads(--threads) (default 1). Cells whose
predicted time (extrapolated from the previous batch size as B^2.5) exceeds --max-seconds are
skipped and marked so. This is a benchmark script: it prints and uses global RNGs (TorchCFM
draws its pairs and times from numpy's and torch's global generators, seeded here).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

import otcfm
from otcfm._ot.assignment import auto_solver
from otcfm.couplings import EntropicOT, ExactOT, Pairing
from otcfm.experiments._machine import cpu_name
from otcfm.matchers import matcher
from otcfm.models import MLP

try:  # written in parallel; the benchmark runs without it
    from otcfm.couplings import ApproxOT
except ImportError:  # pragma: no cover - depends on the checkout
    try:
        from otcfm.couplings._approx import ApproxOT
    except ImportError:
        ApproxOT = None

try:  # optional benchmark dependency
    import torchcfm
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )
    from torchcfm.optimal_transport import OTPlanSampler
except ImportError:  # pragma: no cover - depends on the environment
    torchcfm = None

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MD = ROOT / "docs" / "results" / "performance.md"
GROWTH = 2.5  # assumed time exponent in B when predicting the next cell

GRIDS: dict[str, dict[str, Any]] = {
    "full": {
        "plan_B": [64, 256, 512, 1024, 4096, 8192],
        "plan_d": [2, 64, 784, 3072],
        "step": [(2, 64, 256), (2, 64, 512), (2, 64, 1024), (784, 256, 512)],
        "memory": (8192, 784),
        "repeats": 5,
    },
    "quick": {
        "plan_B": [256, 1024, 2048],
        "plan_d": [2, 784],
        "step": [(2, 64, 512), (784, 256, 512)],
        "memory": (2048, 784),
        "repeats": 3,
    },
    "tiny": {
        "plan_B": [32, 64],
        "plan_d": [2, 16],
        "step": [(2, 16, 64)],
        "memory": (128, 16),
        "memory_subprocess": False,  # in-process: fast enough for the smoke test
        "entropic": [("moons-8gaussians", 32), ("cells", 32)],
        "repeats": 2,
    },
}
# entropic part: (case, B); a case is a 2-D task (reg 2) or "cells" (reg 0.02)
_TASKS_2D = ("gaussian-8gaussians", "moons-8gaussians", "gaussian-moons", "gaussian-scurve")
GRIDS["full"]["entropic"] = [(t, b) for t in _TASKS_2D for b in (256, 512, 1024)] + [
    ("cells", 128), ("cells", 512)]
GRIDS["quick"]["entropic"] = [("moons-8gaussians", 512), ("cells", 128)]
ENTROPIC_REG = {"2d": 2.0, "cells": 0.02}  # 2 sigma^2 at SB-CFM's sigma 1 and at sigma 0.1
ENTROPIC_TOL = 1e-6  # L1 marginal tolerance of every solver (EntropicOT's default)
POT_MAX_ITER = 20_000
POT_STOP = ENTROPIC_TOL / 10  # POT stops on the L2 norm of its column-marginal error


@dataclass(frozen=True)
class Cfg:
    grid: dict[str, Any]
    repeats: int
    max_seconds: float
    seed: int


# --------------------------------------------------------------------------- data
def make_batch(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 ~ N(0, I_d); x1 ~ mixture of 8 unit Gaussians with centres at radius 5 (float32).

    In 2-D the centres sit at angles 2 pi k / 8 (the paper's 8gaussians); above, on random
    directions fixed by the seed.
    """
    g = torch.Generator().manual_seed(seed)
    if d == 2:
        ang = torch.arange(8) * (2 * torch.pi / 8)
        centres = 5.0 * torch.stack([ang.cos(), ang.sin()], 1)
    else:
        c = torch.randn(8, d, generator=g)
        centres = 5.0 * c / c.norm(dim=1, keepdim=True)
    x0 = torch.randn(b, d, generator=g)
    k = torch.randint(0, 8, (b,), generator=g)
    x1 = centres[k] + torch.randn(b, d, generator=g)
    return x0, x1


def cost64(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """Float64 squared-distance matrix (centred expansion), as numpy."""
    a, b = x0.double(), x1.double()
    shift = torch.cat([a, b]).mean(0)
    a, b = a - shift, b - shift
    c = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return c.clamp_min_(0.0).numpy()


def reference(cost: np.ndarray, d: int) -> tuple[float, str]:
    """Optimal mean pair cost of a square cost matrix and the solver that gave it."""
    n = cost.shape[0]
    if d <= 4:
        ones = np.ones(n)
        _, log = ot.emd(ones, ones, cost, numItermax=sys.maxsize, log=True)
        if int(log["result_code"]) == 1:
            return float(log["cost"]) / n, "pot.emd uncapped"
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean()), "scipy linear_sum_assignment"


def gap(cost: float, opt: float, indep: float) -> float:
    return (cost - opt) / (indep - opt)


# --------------------------------------------------------------------------- timing
def median_time(fn: Callable[..., Any], repeats: int, *args: Any) -> tuple[float, Any, int]:
    """Median wall time of ``fn(*args)`` over up to ``repeats`` calls (one if a call > 5 s)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
        if times[-1] > 5.0:
            break
    return statistics.median(times), out, len(times)


def predict(last: dict[tuple[str, int], tuple[int, float]], key: tuple[str, int], b: int) -> float:
    if key not in last:
        return 0.0
    b0, s0 = last[key]
    return s0 * (b / b0) ** GROWTH


# --------------------------------------------------------------------------- plan part
def plan_solvers() -> list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor], Any]]]:
    """(library, solver, fn(x0, x1) -> (i, j, extra)) for every available solver."""
    out: list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor], Any]]] = []
    if torchcfm is not None:
        sampler = OTPlanSampler(method="exact")

        def tcfm(x0: torch.Tensor, x1: torch.Tensor) -> Any:
            pi = sampler.get_map(x0, x1)
            i, j = sampler.sample_map(pi, x0.shape[0], replace=True)
            return i, j, {"plan": pi}

        out.append(("torchcfm", "OTPlanSampler(exact)", tcfm))
    exact = ExactOT()
    g = torch.Generator().manual_seed(0)

    def ours(fn: Any) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        def call(x0: torch.Tensor, x1: torch.Tensor) -> Any:
            p = fn(x0, x1, generator=g)
            record = convergence_fields(p)
            if fn is exact:  # the assignment code its solver="auto" picked for (B, d)
                record["picked"] = auto_solver(x0.shape[0], x0[0].numel())
            return p.i.numpy(), p.j.numpy(), {"record": record}

        return call

    out.append(("otcfm", "ExactOT()", ours(exact)))
    if ApproxOT is not None:
        out.append(("otcfm", "ApproxOT(tol=0.01)", ours(ApproxOT(tol=0.01))))
    out.append(("otcfm", ENTROPIC, ours(EntropicOT(reg=0.05, normalize_cost=True))))
    return out


ENTROPIC = "EntropicOT(reg=0.05, normalize_cost=True)"


def convergence_fields(pair: Pairing) -> dict[str, Any]:
    """Record fields of how an iterative coupling's solve ended (none for the others)."""
    c = pair.convergence
    if c is None:
        return {}
    return {"converged": c.converged, "marginal_error": c.marginal_error,
            "iterations": c.iterations, "tol": c.tol}


def run_plan(cfg: Cfg, emit: Callable[[dict[str, Any]], None]) -> None:
    if ApproxOT is None:
        print("note: otcfm.couplings.ApproxOT is not available; its rows are skipped")
    if torchcfm is None:
        print("note: torchcfm is not installed; its rows are skipped")
    solvers = plan_solvers()
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for d in cfg.grid["plan_d"]:
        for b in cfg.grid["plan_B"]:
            x0, x1 = make_batch(b, d, cfg.seed + b + d)
            ref_key = ("reference", d)
            guess = predict(last, ref_key, b)
            base = {"kind": "plan", "B": b, "d": d}
            opt = indep = None
            if guess > cfg.max_seconds:
                emit({**base, "library": "reference", "solver": "reference", "seconds": None,
                      "gap": None, "skipped": f"predicted {guess:.0f} s"})
            else:
                start = time.perf_counter()
                cost = cost64(x0, x1)
                opt, ref_name = reference(cost, d)
                indep = float(cost.mean())
                secs = time.perf_counter() - start
                last[ref_key] = (b, secs)
                emit({**base, "library": "reference", "solver": ref_name, "seconds": secs,
                      "gap": 0.0, "repeats": 1, "optimal": opt, "independent": indep})
            for lib, name, fn in solvers:
                key = (name, d)
                guess = predict(last, key, b)
                if guess > cfg.max_seconds:
                    emit({**base, "library": lib, "solver": name, "seconds": None, "gap": None,
                          "skipped": f"predicted {guess:.0f} s"})
                    continue
                np.random.seed(cfg.seed)
                torch.manual_seed(cfg.seed)
                secs, (i, j, extra), n = median_time(fn, cfg.repeats, x0, x1)
                last[key] = (b, secs)
                rec = {**base, "library": lib, "solver": name, "seconds": secs, "gap": None,
                       "repeats": n, **extra.get("record", {})}
                if opt is not None:
                    pair_cost = float(cost[np.asarray(i), np.asarray(j)].mean())
                    rec["gap"] = gap(pair_cost, opt, indep)
                    if "plan" in extra:
                        rec["plan_gap"] = gap(float((extra["plan"] * cost).sum()), opt, indep)
                rec["distinct"] = len(np.unique(np.asarray(i))) / b
                emit(rec)
            cost = None  # free the float64 matrix before the next cell


# --------------------------------------------------------------------------- step part
def step_fns(
    d: int, width: int, b: int, seed: int
) -> list[tuple[str, str, Callable[[], float]]]:
    """(library, method, one-optimizer-step fn) with a fresh model and optimizer each."""
    batches = [make_batch(b, d, seed + k) for k in range(4)]
    out = []

    def build(loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]):
        model = MLP(d, width=width, depth=3, activation="selu",
                    generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
        state = {"k": 0}

        def step() -> float:
            x0, x1 = batches[state["k"] % len(batches)]
            state["k"] += 1
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x0, x1)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    g = torch.Generator().manual_seed(seed)
    ours = [("otcfm", matcher("otcfm", sigma=0.1)), ("icfm", matcher("icfm", sigma=0.1))]
    if ApproxOT is not None:
        ours.append(("otcfm-approx", matcher("otcfm", sigma=0.1, coupling=ApproxOT(tol=0.01))))
    for method, fm in ours:
        out.append(("otcfm", method, build(lambda m, a, c, fm=fm: fm.loss(m, a, c, generator=g))))
    if torchcfm is not None:
        for method, cls in (("otcfm", ExactOptimalTransportConditionalFlowMatcher),
                            ("icfm", ConditionalFlowMatcher)):
            tfm = cls(sigma=0.1)

            def tloss(m: torch.nn.Module, a: torch.Tensor, c: torch.Tensor, tfm=tfm) -> Any:
                t, xt, ut = tfm.sample_location_and_conditional_flow(a, c)
                return (m(xt, t) - ut).pow(2).mean()

            out.append(("torchcfm", method, build(tloss)))
    return out


def run_step(cfg: Cfg, emit: Callable[[dict[str, Any]], None]) -> None:
    n_steps = max(3, 4 * cfg.repeats)
    for d, width, b in cfg.grid["step"]:
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        for lib, method, step in step_fns(d, width, b, cfg.seed):
            step()  # warm-up
            times: list[float] = []
            budget = time.perf_counter() + max(3.0, cfg.max_seconds / 10)
            while len(times) < n_steps and (len(times) < 3 or time.perf_counter() < budget):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            emit({"kind": "step", "library": lib, "solver": method, "B": b, "d": d,
                  "seconds": statistics.median(times), "gap": None, "width": width,
                  "repeats": len(times)})


# --------------------------------------------------------------------------- entropic part
def entropic_cost(case: str, b: int, seed: int) -> tuple[torch.Tensor, float]:
    """The float64 squared-distance cost of one entropic case and its reg."""
    from otcfm.couplings._base import sq_cost
    from otcfm.data import toy

    g = torch.Generator().manual_seed(seed)
    if case == "cells":
        from otcfm.data.preprocess import fit_preprocessor
        from otcfm.data.synthetic_cells import SyntheticCells

        raw = SyntheticCells(obs_dim=20).snapshots(max(b, 1000), g)
        ts = raw.map(fit_preprocessor(raw.x, dims=5, pca=True, standardize=True).transform)
        x0, x1 = ts.at(1)[:b], ts.at(2)[:b]
        return sq_cost(x0, x1, torch.float64), ENTROPIC_REG["cells"]
    src, tgt = toy.task(case)
    x0, x1 = toy.sample(src, b, g), toy.sample(tgt, b, g)
    return sq_cost(x0, x1, torch.float64), ENTROPIC_REG["2d"]


def entropic_solvers() -> list[tuple[str, str, Callable[[torch.Tensor, float], Any]]]:
    """(library, solver, fn(cost, reg) -> (plan, fields)) for the entropic part."""
    from otcfm.couplings._sinkhorn import EPS_SCALING, log_sinkhorn

    def ours(**kw: Any) -> Callable[[torch.Tensor, float], Any]:
        def call(cost: torch.Tensor, reg: float) -> Any:
            r = log_sinkhorn(cost, reg, tol=ENTROPIC_TOL, **kw)
            return r.log_plan.exp(), {"iterations": r.iterations, "newton_steps": r.newton_steps,
                                      "stages": r.stages, "converged": r.converged,
                                      "sparse": r.sparse}
        return call

    def pot(cost: torch.Tensor, reg: float) -> Any:
        n0, n1 = cost.shape
        plan, log = ot.bregman.sinkhorn_log(
            np.full(n0, 1 / n0), np.full(n1, 1 / n1), cost.numpy(), reg,
            numItermax=POT_MAX_ITER, stopThr=POT_STOP, log=True)
        return torch.from_numpy(plan), {"iterations": int(log["niter"])}

    return [("otcfm", f"log_sinkhorn (scaling {EPS_SCALING:g}, CG Newton; sparse where near a "
                      "permutation)", ours()),
            ("otcfm", f"log_sinkhorn dense (scaling {EPS_SCALING:g}, CG Newton)",
             ours(sparse=False)),
            ("otcfm", "log_sinkhorn before (scaling 0.5, formed Hessian)",
             ours(scaling=0.5, cg=False, sparse=False)),
            ("pot", f"ot.bregman.sinkhorn_log (at most {POT_MAX_ITER:,} iterations)", pot)]


def run_entropic(cfg: Cfg, emit: Callable[[dict[str, Any]], None]) -> None:
    """Each case: every solver once untimed (its result recorded), then the timed repeats in
    turn across the solvers, in reverse order every other round (so that no solver is
    favoured by running after another), the median per solver; a solver predicted to exceed
    --max-seconds is skipped."""
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for case, b in cfg.grid["entropic"]:
        cost, reg = entropic_cost(case, b, cfg.seed + b)
        base = {"kind": "entropic", "case": case, "B": b, "d": 5 if case == "cells" else 2,
                "reg": reg, "cost_max_over_reg": float(cost.max()) / reg, "gap": None}
        runs: dict[str, dict[str, Any]] = {}
        for lib, name, fn in entropic_solvers():
            key = (name, 0 if case == "cells" else 1)
            guess = predict(last, key, b)
            if guess > cfg.max_seconds:
                emit({**base, "library": lib, "solver": name, "seconds": None,
                      "skipped": f"predicted {guess:.0f} s"})
                continue
            start = time.perf_counter()
            plan, fields = fn(cost, reg)
            first = time.perf_counter() - start
            last[key] = (b, first)
            n0, n1 = plan.shape
            err = float((plan.sum(1) - 1 / n0).abs().sum() + (plan.sum(0) - 1 / n1).abs().sum())
            fields.setdefault("converged", err <= ENTROPIC_TOL)
            runs[name] = {"lib": lib, "fn": fn, "times": [first] if first > 5.0 else [],
                          "fields": {"marginal_error": err, "tol": ENTROPIC_TOL, **fields}}
        for k in range(cfg.repeats):  # the order reversed every other round
            for run in list(runs.values())[::1 if k % 2 == 0 else -1]:
                if not run["times"] or sum(run["times"]) < 5.0:
                    start = time.perf_counter()
                    run["fn"](cost, reg)
                    run["times"].append(time.perf_counter() - start)
        for name, run in runs.items():
            emit({**base, "library": run["lib"], "solver": name,
                  "seconds": statistics.median(run["times"]), "repeats": len(run["times"]),
                  **run["fields"]})


# --------------------------------------------------------------------------- memory part
def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM in KiB from /proc (Linux); ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(lib: str, solver: str, b: int, d: int, seed: int) -> dict[str, Any]:
    """Peak RSS growth (bytes) of one coupling call; run in a fresh process."""
    fns = {name: fn for _, name, fn in plan_solvers()}
    fn = fns[solver]
    small = make_batch(16, d, seed)
    fn(*small)  # load lazily imported code before measuring
    x0, x1 = make_batch(b, d, seed)
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    fn(x0, x1)
    secs = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    delta = max(0, peak - before) * 1024
    return {"kind": "memory", "library": lib, "solver": solver, "B": b, "d": d,
            "seconds": secs, "gap": None, "peak_bytes": delta,
            "cost_matrix_bytes": b * b * 4, "ratio_to_cost_matrix": delta / (b * b * 4)}


def run_memory(cfg: Cfg, emit: Callable[[dict[str, Any]], None], threads: int) -> None:
    b, d = cfg.grid["memory"]
    for lib, name, _ in plan_solvers():
        if not cfg.grid.get("memory_subprocess", True):
            emit(memory_child(lib, name, b, d, cfg.seed))
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", lib, name,
               str(b), str(d), "--threads", str(threads), "--seed", str(cfg.seed)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 timeout=max(120.0, 10 * cfg.max_seconds))
            emit(json.loads(res.stdout.strip().splitlines()[-1]))
        except (subprocess.SubprocessError, ValueError, IndexError) as err:
            emit({"kind": "memory", "library": lib, "solver": name, "B": b, "d": d,
                  "seconds": None, "gap": None, "skipped": f"failed: {str(err)[:200]}"})


# --------------------------------------------------------------------------- report
def _fmt_s(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "n/a"
    if rec.get("seconds") is None:
        return "skipped"
    s = rec["seconds"]
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_gap(rec: dict[str, Any] | None) -> str:
    if rec is None or rec.get("gap") is None:
        return "-"
    return f"{rec['gap']:.1e}" if abs(rec["gap"]) >= 1e-12 else "0"


def _ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    if not ours or not theirs or ours.get("seconds") is None or theirs.get("seconds") is None:
        return "-"
    return f"{ours['seconds'] / theirs['seconds']:.3f}"


def tables(records: list[dict[str, Any]]) -> str:
    """Markdown tables of the records (plan, step, memory)."""
    def find(kind: str, lib: str, solver: str, b: int, d: int) -> dict[str, Any] | None:
        for r in records:
            if (r["kind"], r["library"], r["solver"], r["B"], r["d"]) == (kind, lib, solver, b, d):
                return r
        return None

    lines: list[str] = []
    plan = [r for r in records if r["kind"] == "plan"]
    if plan:
        approx = "ApproxOT(tol=0.01)"
        tc = "OTPlanSampler(exact)"
        lines += [
            "## Plan time and coupling gap",
            "",
            "gap = (cost - optimal) / (independent - optimal) on the returned pairs; TorchCFM's "
            "pairs are drawn with replacement (plan gap in brackets, distinct x0 kept after). "
            "Ratios are time(ours) / time(TorchCFM): below 1 is faster. ExactOT's solver: the "
            "assignment code its `solver=\"auto\"` picked (auction: the certified auction; "
            "emd: network simplex; lap: Jonker-Volgenant); exact / approx: time(ExactOT) / "
            "time(ApproxOT(0.01)). The reference solve is POT's network simplex (uncapped) up "
            "to d = 4 and scipy's linear_sum_assignment above, on the float64 costs.",
            "",
            "| B | d | TorchCFM exact | gap [plan gap] distinct | ExactOT | solver | gap | ratio | "
            "ApproxOT(0.01) | gap | ratio | exact / approx | reference solve |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        cells = sorted({(r["d"], r["B"]) for r in plan})
        for d, b in cells:
            t = find("plan", "torchcfm", tc, b, d)
            e = find("plan", "otcfm", "ExactOT()", b, d)
            a = find("plan", "otcfm", approx, b, d)
            ref = next((r for r in plan if r["library"] == "reference" and r["B"] == b
                        and r["d"] == d), None)
            tgap = _fmt_gap(t)
            if t is not None and t.get("plan_gap") is not None:
                tgap += f" [{t['plan_gap']:.1e}] {t['distinct']:.0%}"
            picked = (e or {}).get("picked", "-")
            lines.append(
                f"| {b} | {d} | {_fmt_s(t)} | {tgap} | {_fmt_s(e)} | {picked} | {_fmt_gap(e)} | "
                f"{_ratio(e, t)} | {_fmt_s(a)} | {_fmt_gap(a)} | {_ratio(a, t)} | "
                f"{_ratio(e, a)} | {_fmt_s(ref)} |"
            )
        lines.append("")
    step = [r for r in records if r["kind"] == "step"]
    if step:
        lines += [
            "## Training step (coupling + loss + backward + AdamW step)",
            "",
            "One thread, coupling inside the step (no prefetch: see benchmarks/throughput.py).",
            "",
            "| d | width | B | TorchCFM I-CFM | TorchCFM OT-CFM | ours I-CFM | ours OT-CFM | "
            "ours OT-CFM ApproxOT(0.01) | ratio OT-CFM ours/TorchCFM (exact, approx) | "
            "OT-CFM / I-CFM ours (exact, approx) | OT-CFM / I-CFM TorchCFM |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for d, w, b in sorted({(r["d"], r["width"], r["B"]) for r in step}):
            ti, to = find("step", "torchcfm", "icfm", b, d), find("step", "torchcfm", "otcfm", b, d)
            oi, oo = find("step", "otcfm", "icfm", b, d), find("step", "otcfm", "otcfm", b, d)
            oa = find("step", "otcfm", "otcfm-approx", b, d)
            lines.append(
                f"| {d} | {w} | {b} | {_fmt_s(ti)} | {_fmt_s(to)} | {_fmt_s(oi)} | "
                f"{_fmt_s(oo)} | {_fmt_s(oa)} | {_ratio(oo, to)}, {_ratio(oa, to)} | "
                f"{_ratio(oo, oi)}, {_ratio(oa, oi)} | {_ratio(to, ti)} |"
            )
        lines.append("")
    ent = [r for r in records if r["kind"] == "entropic"]
    if ent:
        lines += _entropic_table(ent)
    mem = [r for r in records if r["kind"] == "memory"]
    if mem:
        lines += [
            "## Peak memory of one coupling call",
            "",
            "Peak resident-set growth (VmHWM - VmRSS before) during the call, each call in a "
            "fresh process (in-process on the tiny grid); ratio to one float32 B x B matrix.",
            "",
            "| library | solver | B | d | peak | x float32 cost matrix | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mem:
            if r.get("peak_bytes") is None:
                lines.append(f"| {r['library']} | {r['solver']} | {r['B']} | {r['d']} | "
                             f"{r.get('skipped', '-')} | - | - |")
                continue
            lines.append(
                f"| {r['library']} | {r['solver']} | {r['B']} | {r['d']} | "
                f"{r['peak_bytes'] / 2**20:.0f} MiB | {r['ratio_to_cost_matrix']:.2f} | "
                f"{_fmt_s(r)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _entropic_table(ent: list[dict[str, Any]]) -> list[str]:
    solvers = list(dict.fromkeys(r["solver"] for r in ent))
    ours = solvers[0]
    lines = [
        "## Entropic plans: one solve",
        "",
        f"Columns per solver: time, iterations (ours: Sinkhorn iterations plus Newton steps, "
        f"the Newton steps in brackets), L1 marginal error of the plan (tolerance "
        f"{ent[0]['tol']:g}; NO: not converged; sparse: answered by the solve on the optimal "
        f"assignment's sparse support, checked on the dense plan). Ratio: time of {ours} / "
        f"time of the other.",
        "",
        "| case | B | reg | max C / reg | " + " | ".join(solvers) + " | "
        + " | ".join(f"ratio to {s}" for s in solvers[1:]) + " |",
        "|---|---|---|---|" + "---|" * (2 * len(solvers) - 1),
    ]
    for case, b in dict.fromkeys((r["case"], r["B"]) for r in ent):
        row = {r["solver"]: r for r in ent if (r["case"], r["B"]) == (case, b)}
        first = next(iter(row.values()))
        cells = []
        for name in solvers:
            r = row.get(name)
            if r is None or r.get("seconds") is None:
                cells.append("skipped" if r else "n/a")
                continue
            newton = f" [{r['newton_steps']}]" if "newton_steps" in r else ""
            flag = "" if r["converged"] else " NO"
            flag += ", sparse" if r.get("sparse") else ""
            cells.append(f"{_fmt_s(r)}, {r['iterations']}{newton} it, "
                         f"{r['marginal_error']:.0e}{flag}")
        ratios = [_ratio(row.get(ours), row.get(name)) for name in solvers[1:]]
        lines.append(f"| {case} | {b} | {first['reg']:g} | {first['cost_max_over_reg']:.0f} | "
                     + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines.append("")
    return lines


def machine(threads: int) -> str:
    cpu = cpu_name()
    tc = getattr(torchcfm, "__version__", "not installed") if torchcfm is not None else "absent"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch.set_num_threads({threads}); "
        f"Python {platform.python_version()}, torch {torch.__version__}, POT {ot.__version__}, "
        f"otcfm {getattr(otcfm, '__version__', '?')}, torchcfm {tc}"
    )


def render(report: dict[str, Any]) -> str:
    """The markdown page, a function of the JSON report alone (command, machine, date, limits
    and records)."""
    if all(r["kind"] == "entropic" for r in report["records"]):
        return "\n".join([
            "# Entropic couplings: one solve, ours against POT",
            "",
            f"- Command: `{report['command']}`",
            f"- Machine: {report['machine']}",
            f"- Date: {report['date']}",
            "- Timings are medians of repeats on a possibly shared machine: indicative.",
            "- Costs: float64 squared distances between B source and B target points (2-D "
            "tasks: the paper's distributions, SB-CFM's reg 2 sigma^2 at sigma 1; cells: time "
            "points 1 and 2 of the synthetic single-cell course, PCA to 5 of 20 features, "
            "standardised, reg 2 sigma^2 at sigma 0.1). Ours stop at an L1 marginal error "
            f"below {ENTROPIC_TOL:g}; POT by its own rule (the L2 norm of its column-marginal "
            f"error below {POT_STOP:g}, checked every 10 iterations) or at its iteration cap; "
            "every record states the L1 marginal error of the plan returned.",
            "- Rendered from the JSON record by `python benchmarks/couplings.py --report-only "
            "--out JSON --md PAGE` (runs nothing).",
            "",
            tables(report["records"]),
        ]) + "\n"
    return "\n".join([
        "# Coupling performance: otcfm vs TorchCFM",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {report['machine']}",
        f"- Date: {report['date']}",
        "- Timings are medians of repeats on a possibly shared machine: indicative.",
        f"- 'skipped': predicted to take over {report['max_seconds']:g} s (B^{GROWTH} "
        "extrapolation from the previous batch size; raise with --max-seconds).",
        "- `ExactOT()` solves the cost matrix rounded to float32 (its default `cost_dtype`) "
        "exactly; its gap is measured against a float64 reference solve, '-' where that solve "
        "was skipped (not measured).",
        "- Rendered from the JSON record by `python benchmarks/couplings.py --report-only "
        "--out JSON --md PAGE` (runs nothing).",
        "",
        tables(report["records"]),
    ]) + "\n"


def readme_section(report: dict[str, Any]) -> str:
    """The README's coupling-speed paragraph, every number from the JSON report."""
    recs = report["records"]

    def plan(lib: str, solver: str, b: int, d: int) -> dict[str, Any] | None:
        return next((r for r in recs if (r["kind"], r["library"], r["solver"], r["B"], r["d"])
                     == ("plan", lib, solver, b, d) and r.get("seconds") is not None), None)

    approx = [r for r in recs if r["kind"] == "plan" and r["solver"] == "ApproxOT(tol=0.01)"]
    gaps = [r["gap"] for r in approx if r.get("gap") is not None]
    exact = [r for r in recs if r["kind"] == "plan" and r["solver"] == "ExactOT()"]
    exact_gap = [r for r in exact if r.get("gap") is not None]
    skipped = sorted({(r["B"], r["d"]) for r in exact if r.get("gap") is None})
    sizes = sorted({r["B"] for r in exact_gap})
    unmeasured = "; ".join(
        f"B = {b}, d = {', '.join(str(d) for bb, d in skipped if bb == b)}"
        for b in sorted({b for b, _ in skipped}))
    speed = []
    for b in (1024, 4096, 8192):
        for d in (2, 64):
            ours, theirs = plan("otcfm", "ApproxOT(tol=0.01)", b, d), plan(
                "torchcfm", "OTPlanSampler(exact)", b, d)
            if ours and theirs:
                speed.append(f"B = {b}, d = {d}: {_fmt_s(ours)} against {_fmt_s(theirs)} "
                             f"({theirs['seconds'] / ours['seconds']:.0f}x)")
    capped = [r for r in recs if r["kind"] == "plan" and r["library"] == "torchcfm"
              and r["B"] == 4096 and r["d"] >= 64 and r.get("gap") is not None]
    step = {(r["library"], r["solver"]): r for r in recs
            if r["kind"] == "step" and r["B"] == 512 and r["d"] == 2}
    mem = {(r["library"], r["solver"]): r for r in recs
           if r["kind"] == "memory" and r.get("peak_bytes") is not None}
    lines = [
        README_START,
        f"Measured by `{report['command']}` ({report['machine']}; {report['date']}; "
        "record `docs/results/performance.json`, page `docs/results/performance.md`):",
        "",
        f"- approximate plans (`ApproxOT(tol=0.01)`): measured coupling gap "
        f"{min(gaps):.2%} to {max(gaps):.2%} (the gap, (cost - optimal) / (independent - "
        "optimal), not the cost relative to the optimum), against TorchCFM's exact plan: "
        + "; ".join(speed) + ".",
        f"- exact plans (`ExactOT()`, optimal for the float32-rounded costs): gap to the "
        f"float64 reference at most {max(abs(r['gap']) for r in exact_gap):.0e} at every size "
        f"measured (B = {', '.join(map(str, sizes))})"
        + (f"; the reference solve was skipped at {unmeasured}, so the gap is not measured "
           "there." if unmeasured else ".")
        + (f" TorchCFM's capped solver at B = 4096, d >= 64: gap "
           f"{min(r['gap'] for r in capped):.1%} to {max(r['gap'] for r in capped):.1%}, "
           + _span([r["distinct"] for r in capped], "{:.0%}")
           + " of the x0 kept (pairs drawn with replacement)." if capped else ""),
    ]
    if step:
        parts = [f"{name} {_fmt_s(step.get(key))}" for key, name in (
            (("otcfm", "otcfm-approx"), "OT-CFM with `ApproxOT`"),
            (("otcfm", "otcfm"), "OT-CFM exact"), (("torchcfm", "otcfm"), "TorchCFM's OT-CFM"),
            (("otcfm", "icfm"), "our I-CFM")) if step.get(key)]
        lines.append("- training step at batch 512 in 2-D, coupling inside the step: "
                     + ", ".join(parts) + ".")
    if mem:
        parts = [f"{name} {r['peak_bytes'] / 2**20:,.0f} MiB ({r['ratio_to_cost_matrix']:.1f}x "
                 "one float32 cost matrix)" for (lib, solver), r in mem.items()
                 for name in [f"{lib} {solver}"]]
        first = next(iter(mem.values()))
        lines.append(f"- peak memory of one B = {first['B']}, d = {first['d']} coupling: "
                     + "; ".join(parts) + ".")
    return "\n".join([*lines, README_END])


def _span(values: list[float], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


README_START = "<!-- coupling numbers: generated from docs/results/performance.json -->"
README_END = "<!-- end of coupling numbers -->"


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced grid (same as --grid quick)")
    p.add_argument("--grid", choices=sorted(GRIDS), default=None)
    p.add_argument("--parts", default="plan,step,memory",
                   help="comma list of plan,step,memory,entropic")
    p.add_argument("--out", type=Path, default=None, help="write JSON records here")
    p.add_argument("--md", type=Path, default=None,
                   help=f"write the markdown report here (default for the full grid: {DEFAULT_MD})")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="skip cells predicted to take longer than this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="re-render --md from the JSON report --out; run nothing")
    p.add_argument("--memory-child", nargs=4, metavar=("LIB", "SOLVER", "B", "D"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        lib, solver, b, d = args.memory_child
        print(json.dumps(memory_child(lib, solver, int(b), int(d), args.seed)))
        return []
    if args.report_only:
        if args.out is None or args.md is None:
            raise SystemExit("--report-only needs --out (the JSON report) and --md (the page)")
        args.md.write_text(render(json.loads(args.out.read_text())))
        return []
    name = args.grid or ("quick" if args.quick else "full")
    grid = GRIDS[name]
    cfg = Cfg(grid, args.repeats or grid["repeats"], args.max_seconds, args.seed)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(parts) - {"plan", "step", "memory", "entropic"}
    if unknown:
        raise SystemExit(f"unknown --parts {sorted(unknown)}; allowed: plan, step, memory, "
                         "entropic")
    records: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        records.append(rec)
        extra = f" gap={rec['gap']:.2e}" if rec.get("gap") is not None else ""
        print(f"{rec['kind']:6s} {rec['library']:9s} {rec['solver']:28s} B={rec['B']:<5d} "
              f"d={rec['d']:<5d} {_fmt_s(rec)}{extra}", flush=True)

    start = time.perf_counter()
    if "plan" in parts:
        run_plan(cfg, emit)
    if "step" in parts:
        run_step(cfg, emit)
    if "memory" in parts:
        run_memory(cfg, emit, args.threads)
    if "entropic" in parts:
        run_entropic(cfg, emit)
    total = time.perf_counter() - start
    print()
    print(tables(records))
    print(f"total {total:.0f} s")
    command = "python benchmarks/couplings.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
    report = {
        "command": command.strip(),
        "machine": machine(args.threads),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": args.threads,
        "max_seconds": args.max_seconds,
        "total_seconds": total,
        "records": records,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    md = args.md if args.md is not None else (DEFAULT_MD if name == "full" else None)
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(render(report))
    return records


if __name__ == "__main__":
    main()
