"""Training on several processes (torch.distributed) and global against local couplings.

    python benchmarks/distributed.py                 # CPU: all parts -> docs/results/distributed.*
    python benchmarks/distributed.py --report-only   # re-render the page from the JSON files
    bash benchmarks/distributed_gpu.sh               # CUDA machine: same parts, smaller grid

Parts (``--parts steps,coupling``):

- steps: optimizer steps per second of the real training engine (``Trainer.train_step``) on
  1 and 2 processes started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT in the environment; gloo on the CPU, nccl on GPUs), I-CFM and OT-CFM with the
  exact and the approximate coupling, coupling scope global and local, moons -> 8gaussians,
  the paper's MLP, a global batch of 512. Each process is this script in ``--worker`` mode:
  it times its own steady-state steps after a warm-up; the job's rate is the steps divided
  by the slowest process's time.
- coupling: time of one coupling of a global batch of B points (``prefetch.couple_batch``,
  as the training thread calls it: draw the points, cost matrix, solve) against one process's
  coupling of its B / W points under scope "local" (on real hardware the W processes couple
  their shares at the same time), for ExactOT and ApproxOT, simulated in this one process;
  and the coupling gap of the local pairs: the cost of the union of the W local pairings
  against the global (optimal) pairing, on the global batch's own cost matrix.

Every measurement is written to the JSON file with the machine, date and command; the page
is rendered from the JSON files alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TASK = "moons-8gaussians"
BATCH = 512
CASES = (("icfm", ""), ("otcfm", "exact"), ("otcfm", "approx"))
SOLVERS = ("exact", "approx")
HIGH_D_TARGET = (1.0, 2.0)  # d > 2: source N(0, I), target N(shift, scale^2 I)

CPU_DEFAULTS = {
    "sizes": [256, 512, 1024, 2048, 4096], "dims": [2, 3072], "worlds": [2, 4], "seeds": 3,
    "procs": [1, 2], "steps": 300, "exact_steps": 100, "warmup": 20, "max_seconds": 60.0,
    "budget": 900.0,
}
GPU_DEFAULTS = {
    "sizes": [256, 1024, 4096], "dims": [2, 3072], "worlds": [2, 4], "seeds": 2,
    "procs": [1, 2], "steps": 300, "exact_steps": 100, "warmup": 20, "max_seconds": 20.0,
    "budget": 200.0,
}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- machine
def machine(device: str) -> dict[str, Any]:
    import numpy
    import ot

    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(),
        "cpu_cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": numpy.__version__, "pot": ot.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    if device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------- part 1: steps/s
def run_config(job: dict[str, Any]):
    from otcfm.data import toy
    from otcfm.train.config import RunConfig

    source, target = toy.task(TASK)
    items = {
        "data.source": f"'{source}'", "data.target": f"'{target}'",
        "method.name": f"'{job['method']}'", "method.coupling": f"'{job['coupling']}'",
        "optim.batch_size": job["batch"], "optim.steps": job["warmup"] + job["steps"],
        "couplings.scope": f"'{job['scope']}'", "distributed.timeout": 300.0,
    }
    cfg = RunConfig(name="bench", out_dir=job["out_dir"], device=job["device"])
    return cfg.override([f"{k}={v}" for k, v in items.items()])


def worker(path: str) -> None:
    """One process of a steps/s job: warm up, then time ``steps`` steady-state steps.

    optim.steps is exactly warm-up + measured steps, so every coupled batch the prefetch
    thread makes (and, with scope "global", broadcasts) is consumed by every process.
    """
    import torch.distributed as dist

    from otcfm.train.launch import process_group
    from otcfm.train.loop import Trainer

    job = json.loads(Path(path).read_text())
    torch.set_num_threads(1)
    cfg = run_config(job)
    with process_group(cfg.device, timeout=300.0):
        trainer = Trainer(cfg, progress=False)
        cuda = trainer.device.type == "cuda"
        try:
            for _ in range(job["warmup"]):
                trainer.train_step()
            if trainer.world > 1:
                dist.barrier()
            start = time.perf_counter()
            for _ in range(job["steps"]):
                trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        finally:
            trainer.close()
        result = {"rank": trainer.rank, "world": trainer.world, "seconds": seconds,
                  "steps": job["steps"], "device": str(trainer.device)}
    Path(job["result_dir"], f"rank{result['rank']}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_job(method: str, coupling: str, scope: str, world: int, *, steps: int, warmup: int,
              device: str, tmp: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Start ``world`` worker processes as torchrun would and return the job's record."""
    name = f"{method}-{coupling or 'independent'}-{scope}-{world}"
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    job = {"method": method, "coupling": coupling, "scope": scope, "batch": BATCH,
           "steps": steps, "warmup": warmup, "device": device, "out_dir": str(folder / "runs"),
           "result_dir": str(folder)}
    (folder / "job.json").write_text(json.dumps(job))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder / "job.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        if p.returncode != 0:
            raise RuntimeError(f"{name}: rank {rank} exited with {p.returncode}:\n{out[-3000:]}")
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
    slowest = max(r["seconds"] for r in ranks)
    return {"kind": "steps", "method": method, "coupling": coupling or "independent",
            "scope": scope, "processes": world, "device": device, "global_batch": BATCH,
            "warmup_steps": warmup, "steps": steps, "rank_seconds": [r["seconds"] for r in ranks],
            "steps_per_second": steps / slowest}


def measure_steps(procs: Sequence[int], *, steps: int, exact_steps: int, warmup: int,
                  device: str, sink: Callable[[dict[str, Any]], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="otcfm-dist-") as tmp:
        for world in procs:
            for method, coupling in CASES:
                n = exact_steps if coupling == "exact" else steps
                for scope in ("global", "local") if world > 1 else ("global",):
                    rec = steps_job(method, coupling, scope, world, steps=n, warmup=warmup,
                                    device=device, tmp=Path(tmp))
                    log(f"[steps] {world} process(es) {method} {rec['coupling']} {scope}: "
                        f"{rec['steps_per_second']:.1f} steps/s (rank seconds "
                        f"{', '.join(f'{s:.2f}' for s in rec['rank_seconds'])})")
                    sink(rec)


# --------------------------------------------------------------------------- part 2+3: couplings
def pools(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and target sets points are drawn from (n points each)."""
    from otcfm.data import toy

    g = torch.Generator().manual_seed(seed)
    if d == 2:
        source, target = toy.task(TASK)
        return toy.sample(source, n, generator=g), toy.sample(target, n, generator=g)
    shift, scale = HIGH_D_TARGET
    x0 = torch.randn(n, d, generator=g)
    return x0, shift + scale * torch.randn(n, d, generator=g)


def make_coupling(solver: str):
    from otcfm.couplings import ApproxOT, ExactOT

    return ExactOT() if solver == "exact" else ApproxOT()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def coupling_grid(sizes: Sequence[int], dims: Sequence[int], worlds: Sequence[int], seeds: int,
                  *, solvers: Sequence[str] = SOLVERS, device: str = "cpu",
                  max_seconds: float = 60.0, deadline: float = math.inf,
                  sink: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Global and local couplings of the same global batches; one record per solve.

    Coupled batch k (k = 0 .. seeds - 1) of a run with seed 0 is drawn from the pools by
    ``couple_batch`` exactly as in training. The global record holds the global pairing's
    cost and the independent cost (mean of the whole B x B cost matrix); each local record
    (one per process of W) the cost of its pairs read from the same global cost matrix, so
    that the union of the W local pairings and the global one are compared on one matrix.
    Cells predicted to take over ``max_seconds`` per global solve (extrapolated from the
    previous B as B^2.5), or left when ``deadline`` (time.monotonic) passes, are recorded as
    skipped with the reason.
    """
    from otcfm.couplings._base import sq_cost
    from otcfm.train.prefetch import Shard, couple_batch

    out: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        out.append(rec)
        sink(rec)

    for solver in solvers:  # warm-up: compile the kernels, import the solvers, start CUDA
        x = torch.randn(64, 3)
        make_coupling(solver)(x.to(device), (x + 1).to(device))
    sizes = sorted(sizes)
    for d in dims:
        source, target = pools(d, 2 * sizes[-1], seed=d)
        last: dict[str, tuple[int, float]] = {}
        for b in sizes:
            for solver in solvers:
                base = {"kind": "coupling", "device": device, "d": d, "B": b, "solver": solver}
                reason = None
                if time.monotonic() > deadline:
                    reason = "time budget of the run spent"
                elif solver in last:
                    b0, t0 = last[solver]
                    guess = t0 * (b / b0) ** 2.5
                    if guess > max_seconds:
                        reason = (f"predicted {guess:.0f} s per global solve (B^2.5 from "
                                  f"{t0:.2f} s at B = {b0}) > {max_seconds:g} s")
                if reason is not None:
                    emit({**base, "skipped": reason})
                    log(f"[coupling] d={d} B={b} {solver}: skipped ({reason})")
                    last[solver] = (b, math.inf)
                    continue
                coupling = make_coupling(solver)
                times = []
                for k in range(seeds):
                    start = time.perf_counter()
                    pair = couple_batch(coupling, source, target, b, k, seed=0,
                                        device=device).pair
                    _sync(device)
                    seconds = time.perf_counter() - start
                    times.append(seconds)
                    # the drawn batch in its own order (both couplings are one-to-one)
                    x0, x1 = pair.x0[torch.argsort(pair.i)], pair.x1[torch.argsort(pair.j)]
                    cost = sq_cost(x0, x1).to(torch.float64)
                    glob = float(cost[pair.i, pair.j].sum())
                    emit({**base, "seed": k, "scope": "global", "world": 1, "seconds": seconds,
                          "cost": glob, "independent_cost": float(cost.mean()) * b,
                          "gap_bound": pair.info.get("gap_bound")})
                    for w in worlds:
                        m = b // w
                        for r in range(w):
                            start = time.perf_counter()
                            part = couple_batch(coupling, source, target, b, k, seed=0,
                                                shard=Shard(r, w, "local"), device=device).pair
                            _sync(device)
                            sec = time.perf_counter() - start
                            local = float(cost[r * m + part.i, r * m + part.j].sum())
                            emit({**base, "seed": k, "scope": "local", "world": w, "shard": r,
                                  "seconds": sec, "cost": local})
                    if seconds > max_seconds:
                        break
                med = statistics.median(times)
                last[solver] = (b, med)
                log(f"[coupling] d={d} B={b} {solver}: global {med:.4f} s (median of "
                    f"{len(times)}), locals done for W = {', '.join(map(str, worlds))}")
    return out



# --------------------------------------------------------------------------- summaries
def _order(item: tuple) -> tuple:
    """Table order: d, B, then the solvers in SOLVERS order."""
    device, d, b, solver, *rest = item[0]
    rank = SOLVERS.index(solver) if solver in SOLVERS else len(SOLVERS)
    return (device, d, b, rank, solver, *rest)


def coupling_gaps(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (d, B, solver, W): the coupling gap of the union of the W local pairings against
    the global pairing of the same batch, over the seeds (mean, min, max).

    ``relative`` = (local - global) / global; ``of_independent`` = (local - global) /
    (independent - global), the share of what global OT gains over random pairs that local
    coupling gives back.
    """
    glob: dict[tuple, dict[str, Any]] = {}
    local: dict[tuple, float] = {}
    for r in records:
        if r.get("kind") != "coupling" or "skipped" in r:
            continue
        key = (r["device"], r["d"], r["B"], r["solver"], r["seed"])
        if r["scope"] == "global":
            glob[key] = r
        else:
            local[(*key, r["world"])] = local.get((*key, r["world"]), 0.0) + r["cost"]
    cells: dict[tuple, list[tuple[float, float]]] = {}
    for (*key, w), cost in local.items():
        g = glob[tuple(key)]
        rel = (cost - g["cost"]) / g["cost"]
        ind = (cost - g["cost"]) / (g["independent_cost"] - g["cost"])
        cells.setdefault((*key[:4], w), []).append((rel, ind))
    out = []
    for (device, d, b, solver, w), values in sorted(cells.items(), key=_order):
        rel, ind = [v[0] for v in values], [v[1] for v in values]
        out.append({"device": device, "d": d, "B": b, "solver": solver, "world": w,
                    "seeds": len(values), "relative": statistics.fmean(rel),
                    "relative_min": min(rel), "relative_max": max(rel),
                    "of_independent": statistics.fmean(ind),
                    "of_independent_min": min(ind), "of_independent_max": max(ind)})
    return out


def coupling_times(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (d, B, solver): median global seconds and, per W, median seconds of one process's
    local coupling (over seeds and processes)."""
    cells: dict[tuple, dict[Any, list[float]]] = {}
    for r in records:
        if r.get("kind") != "coupling" or "skipped" in r:
            continue
        slot = cells.setdefault((r["device"], r["d"], r["B"], r["solver"]), {})
        slot.setdefault("global" if r["scope"] == "global" else r["world"], []).append(
            r["seconds"])
    out = []
    for (device, d, b, solver), slot in sorted(cells.items(), key=_order):
        g = statistics.median(slot["global"])
        for w in sorted(k for k in slot if k != "global"):
            loc = statistics.median(slot[w])
            out.append({"device": device, "d": d, "B": b, "solver": solver, "world": w,
                        "global_seconds": g, "global_repeats": len(slot["global"]),
                        "local_seconds": loc, "local_repeats": len(slot[w]),
                        "speedup": g / loc if loc > 0 else math.inf})
    return out


# --------------------------------------------------------------------------- page
def _s(x: float) -> str:
    """Seconds for a table: ms below one second."""
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _header(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    libs = ", ".join(f"{k} {m[k]}" for k in ("torch", "numpy", "pot", "numba") if m.get(k))
    gpus = f"; GPUs: {', '.join(m['gpus'])} (CUDA {m.get('cuda')})" if m.get("gpus") else ""
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    end = data.get("load_average_at_end")
    load_end = f", at the end {', '.join(f'{x:.2f}' for x in end)}" if end else ""
    took = data.get("seconds_total")
    return [
        f"- Command: `{data['command']}`",
        f"- Machine: {m['machine']}, {m['cpu_cores']} CPU cores, Python {m['python']}, "
        f"{libs}{gpus}; {m['platform']}.",
        f"- Date: {data['date']}; load average (1, 5, 15 min) at the start {load}{load_end}"
        + (f"; the run took {took:.0f} s." if took is not None else "."),
    ]


def _steps_section(data: dict[str, Any], title: str) -> list[str]:
    recs = [r for r in data["records"] if r.get("kind") == "steps"]
    if not recs:
        return []
    st, m = data["settings"], data["machine"]
    backend = "nccl" if data["device"] == "cuda" else "gloo"
    lines = [
        f"### {title}", "",
        f"The training engine (`Trainer.train_step`: coupling from the prefetch thread, path "
        f"sample, loss, backward with the DDP gradient all-reduce, AdamW step) on "
        f"{TASK.replace('-', ' -> ')}, the paper's MLP (3 x 64 SELU), a global batch of "
        f"{recs[0]['global_batch']} points (each of W processes trains on {recs[0]['global_batch']}"
        f" / W), device {data['device']}, backend {backend} when W > 1. Each process is "
        f"`benchmarks/distributed.py --worker` started with RANK, WORLD_SIZE, MASTER_ADDR and "
        f"MASTER_PORT set, as torchrun starts it, with `torch.set_num_threads(1)` and one "
        f"coupling thread (`couplings.workers = 1`; I-CFM's in-order pairs "
        f"are drawn in the training thread). Each process times {st['steps']} steps "
        f"({st['exact_steps']} for exact OT) after {st['warmup']} warm-up steps, starting "
        f"together after a barrier; steps/s = steps / the slowest process's time. Scope global: "
        f"the processes take turns coupling the whole batch and broadcast the index pairs "
        f"(each solves its next turn in a thread of its own while it waits for the others'); "
        f"local: each couples its own share (I-CFM's in-order pairs need no solve: with scope "
        f"global each process draws the whole batch itself, nothing is broadcast). Scope does "
        f"not apply to 1 process. One run per row.",
        "",
    ]
    busy = 2 * max(r["processes"] for r in recs)
    if data["device"] == "cpu" and m["cpu_cores"] < busy:
        lines += [
            f"**This machine has {m['cpu_cores']} CPU cores.** Each process runs a training "
            f"thread and a coupling thread, so {busy // 2} processes ({busy} busy threads) "
            f"share the cores: the ratio to 1 process measures the overhead of the distributed "
            f"engine (gradient all-reduce, broadcast of the pairs, processes competing for the "
            f"cores), not how it scales on hardware with a core or device per process. The load "
            f"average above says how busy the machine was.", "",
        ]
    one = {(r["method"], r["coupling"]): r["steps_per_second"]
           for r in recs if r["processes"] == 1}
    lines += ["| method | coupling | processes | scope | steps/s | ratio to 1 process "
              "| seconds per process |", "|---|---|---|---|---|---|---|"]
    for r in recs:
        base = one.get((r["method"], r["coupling"]))
        ratio = f"{r['steps_per_second'] / base:.2f}" if base else "-"
        secs = ", ".join(f"{s:.2f}" for s in r["rank_seconds"])
        scope = r["scope"] if r["processes"] > 1 else "-"
        lines.append(f"| {r['method']} | {r['coupling']} | {r['processes']} | {scope} "
                     f"| {r['steps_per_second']:.1f} | {ratio} | {secs} |")
    return lines + [""]


def _coupling_sections(data: dict[str, Any]) -> list[str]:
    recs = [r for r in data["records"] if r.get("kind") == "coupling"]
    if not recs:
        return []
    st = data["settings"]
    shift, scale = st["high_d_target"]
    threads = "1 torch thread" if data["device"] == "cpu" else "CUDA, 1 CPU thread"
    lines = [
        "### Coupling time: global batch against one process's share", "",
        f"One call of `couple_batch` as the training thread makes it (draw the points, cost "
        f"matrix, solve; {threads}, device {data['device']}): global = the whole batch of B "
        f"points on one process; local = one process's share of B / W points (scope local). "
        f"The W local couplings run at the same time on W processes on real hardware, so "
        f"the local column is the wall time of the coupling step there; all were timed one "
        f"after another in one process here. Median over {st['seeds']} batches (coupled "
        f"batches 0..{st['seeds'] - 1} of seed 0; local: over batches and processes). "
        f"ExactOT: exact assignment (solver 'auto'); ApproxOT: tol 0.01 (certified gap "
        f"<= 1%), the engine's `method.coupling = \"approx\"`. Data: d = 2 "
        f"{TASK.replace('-', ' -> ')} (the training task); d > 2: source N(0, I), target "
        f"N({shift:g}, {scale:g}^2 I) (shifted and scaled). Cells predicted to take over "
        f"{st['max_seconds']:g} s per global solve are skipped.", "",
        "| d | B | solver | W | global | local (one process) | global / local |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in coupling_times(recs):
        lines.append(f"| {r['d']} | {r['B']} | {r['solver']} | {r['world']} "
                     f"| {_s(r['global_seconds'])} | {_s(r['local_seconds'])} "
                     f"| {r['speedup']:.1f} |")
    skipped = [r for r in recs if "skipped" in r]
    lines.append("")
    if skipped:
        lines += ["Skipped:", ""]
        lines += [f"- d = {r['d']}, B = {r['B']}, {r['solver']}: {r['skipped']}"
                  for r in skipped]
    else:
        lines.append("Skipped: none.")
    lines += [
        "", "### Coupling gap of local pairs (exact OT)", "",
        "Same batches. global = cost (sum of squared distances) of the exact OT pairing of "
        "the B points; local = cost of the union of the W exact pairings of the processes' "
        "shares; independent = expected cost of a random pairing (B x the mean of the cost "
        "matrix). All three on the global batch's cost matrix as the solver sees it (float32 "
        "entries summed in float64). The global pairing is optimal, so both gaps are >= 0. "
        "Mean over the batches [min, max].", "",
        "| d | B | W | batches | (local - global) / global "
        "| (local - global) / (independent - global) |", "|---|---|---|---|---|---|",
    ]
    for g in coupling_gaps(recs):
        if g["solver"] != "exact":
            continue
        lines.append(
            f"| {g['d']} | {g['B']} | {g['world']} | {g['seeds']} | {_pct(g['relative'])} "
            f"[{_pct(g['relative_min'])}, {_pct(g['relative_max'])}] "
            f"| {_pct(g['of_independent'])} [{_pct(g['of_independent_min'])}, "
            f"{_pct(g['of_independent_max'])}] |")
    return lines + [""]


def render(cpu: dict[str, Any] | None, gpu: dict[str, Any] | None) -> str:
    """The page, from the CPU and GPU result files (either may be missing)."""
    lines = [
        "# Distributed training: processes, and global against local couplings", "",
        "Rendered by `python benchmarks/distributed.py --report-only` from "
        "`docs/results/distributed.json` (CPU) and `docs/results/distributed_gpu.json` (GPU); "
        "every raw measurement is in those files.", "",
    ]
    if cpu is None:
        lines += ["## CPU", "", "Not run yet: `python benchmarks/distributed.py`.", ""]
    else:
        lines += ["## CPU", ""] + _header(cpu) + [""]
        lines += _steps_section(cpu, "Training steps per second")
        lines += _coupling_sections(cpu)
    lines += ["## GPU", ""]
    if gpu is None:
        lines += ["Not run yet. On a machine with CUDA: `bash benchmarks/distributed_gpu.sh` "
                  "(under 5 minutes) writes `docs/results/distributed_gpu.json` and this page.",
                  ""]
    else:
        lines += _header(gpu) + [""]
        lines += _steps_section(gpu, "Training steps per second")
        lines += _coupling_sections(gpu)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main
def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    head = {k: v for k, v in data.items() if k != "records"}
    text = json.dumps(head, indent=1)[:-2]  # without the closing brace: the records follow
    rows = ",\n".join("  " + json.dumps(r) for r in data.get("records", []))
    tmp.write_text(f'{text},\n "records": [\n{rows}\n ]\n}}\n')
    tmp.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_page(cpu_path: Path, gpu_path: Path, md: Path) -> None:
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render(_read(cpu_path), _read(gpu_path)))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true",
                   help="run on CUDA (nccl when more than one GPU), smaller grid; writes --gpu-out")
    p.add_argument("--report-only", action="store_true", help="only re-render the page")
    p.add_argument("--parts", default="steps,coupling", help="comma-separated: steps, coupling")
    p.add_argument("--out", type=Path, default=RESULTS / "distributed.json")
    p.add_argument("--gpu-out", type=Path, default=RESULTS / "distributed_gpu.json")
    p.add_argument("--md", type=Path, default=RESULTS / "distributed.md")
    p.add_argument("--sizes", type=int, nargs="+", help="global batch sizes B")
    p.add_argument("--dims", type=int, nargs="+", help="dimensions d")
    p.add_argument("--worlds", type=int, nargs="+", help="simulated numbers of processes W")
    p.add_argument("--seeds", type=int, help="batches per cell (timing repeats, gap seeds)")
    p.add_argument("--procs", type=int, nargs="+", help="process counts of the steps part")
    p.add_argument("--steps", type=int, help="measured steps per run (I-CFM, approx)")
    p.add_argument("--exact-steps", type=int, help="measured steps per run, exact OT")
    p.add_argument("--warmup", type=int, help="warm-up steps per run (not timed)")
    p.add_argument("--max-seconds", type=float, help="skip cells predicted slower than this")
    p.add_argument("--budget", type=float, help="seconds; coupling cells after it are skipped")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if args.gpu else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args.worker)
        return
    cpu_path = args.out
    if args.report_only:
        write_page(cpu_path, args.gpu_out, args.md)
        log(f"wrote {args.md}")
        return
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: CUDA is not available on this machine")
    torch.set_num_threads(1)
    start = time.monotonic()
    out = args.gpu_out if args.gpu else args.out
    procs = list(args.procs)
    if args.gpu:
        procs = [p for p in procs if p <= torch.cuda.device_count()]
    argv_text = sys.argv[1:] if argv is None else list(argv)
    data: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/distributed.py", *argv_text]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device, "machine": machine(device),
        "settings": {"task": TASK, "global_batch": BATCH, "sizes": args.sizes,
                     "dims": args.dims, "worlds": args.worlds, "seeds": args.seeds,
                     "procs": procs, "steps": args.steps, "exact_steps": args.exact_steps,
                     "warmup": args.warmup, "max_seconds": args.max_seconds,
                     "budget": args.budget, "torch_threads": 1,
                     "high_d_target": list(HIGH_D_TARGET)},
        "records": [],
    }

    def sink(rec: dict[str, Any]) -> None:
        data["records"].append(rec)
        _write_json(data, out)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if unknown := parts - {"steps", "coupling"}:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; use steps, coupling")
    if "steps" in parts:
        measure_steps(procs, steps=args.steps, exact_steps=args.exact_steps,
                      warmup=args.warmup, device=device, sink=sink)
    if "coupling" in parts:
        coupling_grid(args.sizes, args.dims, args.worlds, args.seeds, device=device,
                      max_seconds=args.max_seconds, deadline=start + args.budget, sink=sink)
    data["seconds_total"] = time.monotonic() - start
    data["load_average_at_end"] = list(os.getloadavg())
    _write_json(data, out)
    write_page(args.out, args.gpu_out, args.md)
    log(f"wrote {out} and {args.md} ({data['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
