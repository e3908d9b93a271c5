"""Which weights of a 2-D benchmark run to test: final, EMA, best validation loss or best
validation W2 (the 2-D protocol of ``otcfm bench two-dim``, paper Table 2).

Each cell (task, method, seed) trains once under the protocol with an EMA of the weights
kept beside them and every validation step's checkpoint kept. The raw weights of each
checkpoint are validated again (the trainer validates the EMA weights when an EMA is kept):
``val_loss`` and ``val_w2`` on the validation split only, exactly as the trainer computes
them. Four choices are then read off the same run and tested on the task's 10,000-point test
sets (W2 and NPE, 100 Euler steps, as the protocol):

- ``final``: the raw weights after the last step;
- ``ema``: the EMA weights after the last step (decay ``--ema``);
- ``best_val_loss``: the raw weights of the validation step with the lowest ``val_loss`` (the
  protocol's choice, and the paper's reference runner's: it monitors the validation loss);
- ``best_val_w2``: the raw weights of the validation step with the lowest ``val_w2``.

    python benchmarks/checkpoint_choice.py --runs /tmp/ckpt --jobs 2 \\
        --out docs/results/checkpoint_choice.json   # train + test (cached per cell)
    python benchmarks/checkpoint_choice.py --coupling otcfm=exact --tasks moons-8gaussians \\
        --runs /tmp/ckpt-exact --jobs 2 --out docs/results/checkpoint_choice_exact.json
    python benchmarks/pages.py   # docs/results/checkpoint_choice.md from both records

A cell's record is cached in its run folder (``choice.json``) under a key made of the
protocol's fingerprint (package version and the hash of the code a cell runs) and the
SHA-256 of this file's measuring part: a changed line of either reruns the cell.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from otcfm.experiments import _cells, _machine, _published, two_dim
from otcfm.metrics import normalized_path_energy, wasserstein
from otcfm.sampling import integrate
from otcfm.train.checkpoint import load_checkpoint, write_text_atomic
from otcfm.train.datasets import load_run_data
from otcfm.train.loop import build_matcher, build_model, needs_score
from otcfm.train.objectives import PairObjective
from otcfm.train.runfolder import step_checkpoints

CHOICES = ("final", "ema", "best_val_loss", "best_val_w2")
LABELS = {"final": "final weights", "ema": "EMA weights (final)",
          "best_val_loss": "best validation loss", "best_val_w2": "best validation W2"}
EMA_DECAY = 0.999
COUPLINGS = (("otcfm", "approx"), ("sf2m", "approx"))  # as the committed 2-D page
PAGE_MARKER = "# " + "-" * 75 + " page"
#: SHA-256 of this file's measuring part (everything above the page code): a changed line of
#: it invalidates every cached cell; the page code can change without rerunning anything
SCRIPT_HASH = hashlib.sha256(
    Path(__file__).read_text(encoding="utf-8").split(PAGE_MARKER)[0].encode()).hexdigest()


def protocol(ema: float, *, quick: bool = False,
             couplings: tuple[tuple[str, str], ...] = COUPLINGS,
             sigmas: tuple[tuple[str, float], ...] = ()) -> two_dim.Protocol:
    """The 2-D protocol with an EMA kept (``quick``: the two-dim recipe's --quick budget)."""
    p = two_dim.Protocol(ema=ema, couplings=couplings, sigmas=sigmas)
    return replace(p, **two_dim.QUICK) if quick else p


def cache_key(p: two_dim.Protocol, cell: two_dim.Cell) -> dict[str, Any]:
    return {"protocol": two_dim.for_cell(p.fingerprint(), cell), "script": SCRIPT_HASH}


def cached(cell: two_dim.Cell, p: two_dim.Protocol, runs: Path) -> dict[str, Any] | None:
    path = cell.run_dir(runs) / "choice.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == cache_key(p, cell) else None


def _model(cfg: Any, shape: tuple[int, ...], weights: dict[str, Any]) -> torch.nn.Module:
    model = build_model(cfg.model, shape, score=needs_score(cfg.method))
    model.load_state_dict(weights)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _test(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor,
          w2_ref: float) -> dict[str, float]:
    traj = integrate(model, x0, method="euler", steps=100, save="ends")
    pe = float(traj.energy.mean())
    return {"w2": wasserstein(traj.x_final, x1, p=2),
            "npe": normalized_path_energy(pe, w2_ref**2)}


def run_cell(cell: two_dim.Cell, p: two_dim.Protocol, runs: str) -> dict[str, Any]:
    """Train (or resume) one cell keeping every validation checkpoint; test the 4 choices."""
    runs_dir = Path(runs)
    cfg = two_dim.cell_config(cell, p, runs_dir)
    cfg = replace(cfg, eval=replace(cfg.eval, keep_checkpoints=p.steps // p.val_every + 1))
    two_dim._train_cell(cfg, cell)
    start = time.perf_counter()
    objective = PairObjective(cfg, build_matcher(cfg.method))
    shape = objective.event_shape
    found = sorted(step_checkpoints(cfg.run_dir / "checkpoints"))
    steps = list(range(p.val_every, p.steps + 1, p.val_every))
    if [s for s, _ in found] != steps:
        raise RuntimeError(f"{cell.label}: expected checkpoints at {steps}, found "
                           f"{[s for s, _ in found]} in {cfg.run_dir}")
    states = {s: load_checkpoint(path) for s, path in found}
    last = states[p.steps]
    ema_rows = {int(r["step"]): r for r in last["history"]}
    val = []
    for s in steps:
        raw = objective.validate(_model(cfg, shape, states[s]["model"]))
        val.append({"step": s, "val_loss": raw["val_loss"], "val_w2": raw["val_w2"],
                    "ema_val_loss": ema_rows[s]["val_loss"], "ema_val_w2": ema_rows[s]["val_w2"]})
    objective.close()
    picks = {
        "final": ("model", p.steps),
        "ema": ("ema", p.steps),
        "best_val_loss": ("model", min(val, key=lambda r: r["val_loss"])["step"]),
        "best_val_w2": ("model", min(val, key=lambda r: r["val_w2"])["step"]),
    }
    data = load_run_data(two_dim.task_data_config(cell.task, p), cell.seed)
    w2_ref = two_dim.reference_w2(cell, p, runs_dir, data)
    tested: dict[tuple[str, int], dict[str, float]] = {}
    choices = {}
    for name, (weights, s) in picks.items():
        if (weights, s) not in tested:
            model = _model(cfg, shape, states[s][weights])
            tested[weights, s] = _test(model, data.source.test, data.target.test, w2_ref)
        choices[name] = {"step": s, **tested[weights, s]}
    record = {
        "task": cell.task, "method": cell.method, "seed": cell.seed,
        "coupling": cfg.method.coupling or "default", "sigma": cfg.method.sigma,
        "ema_decay": p.ema, "steps": p.steps,
        "train_seconds": float(last["train_seconds"]),
        "eval_seconds": time.perf_counter() - start,
        "choices": choices, "val": val, "key": cache_key(p, cell),
    }
    write_text_atomic(json.dumps(record, indent=1) + "\n", cell.run_dir(runs_dir) / "choice.json")
    return record


def spread(task: str, p: two_dim.Protocol, runs: Path, seeds: list[int],
           draws: int) -> dict[str, Any]:
    """How much of a task's across-seed W2 spread the test sets alone make.

    ``floor``: W2 between two independent ``n_test``-point samples of the target, ``draws``
    pairs (the spread a perfect model would show across seeds with a test set per seed).
    ``own`` / ``common``: each seed's final EMA weights (otcfm cell) tested on its own test
    set (as the protocol) and on one common test set (the first seed's sources and targets):
    the common set removes the test sets' share of the spread.
    """
    floor = two_dim.target_floor(task, p.n_test, draws, "checkpoint-choice-floor")
    common = load_run_data(two_dim.task_data_config(task, p), seeds[0])
    own, shared = [], []
    for seed in seeds:
        cell = two_dim.Cell(task, "otcfm", seed)
        cfg = two_dim.cell_config(cell, p, runs)
        state = load_checkpoint(cfg.run_dir / "checkpoints" / f"step-{p.steps:06d}.pt")
        model = _model(cfg, (2,), state["ema"])
        data = load_run_data(two_dim.task_data_config(task, p), seed)
        own.append(_test(model, data.source.test, data.target.test, 1.0)["w2"])
        shared.append(_test(model, common.source.test, common.target.test, 1.0)["w2"])
    return {"task": task, "draws": draws, "floor": floor, "seeds": seeds, "own": own,
            "common": shared}


# --------------------------------------------------------------------------- page
def _ms(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def _paper(method: str, task: str, metric: str) -> tuple[float, float] | None:
    row = _published.section("two_dim")[metric].get(method, {}).get(task)
    return None if row is None else (float(row[0]), float(row[1]))


def _values(records: list[dict[str, Any]], method: str, task: str, choice: str,
            metric: str = "w2") -> list[float]:
    return [r["choices"][choice][metric] for r in records
            if r["method"] == method and r["task"] == task]


def stability(records: list[dict[str, Any]], method: str) -> dict[str, float]:
    """Per choice: the across-seed std of the test W2 over the paper's std, mean over tasks
    (lower: more stable; 1: as stable as the paper's runs)."""
    tasks = sorted({r["task"] for r in records if r["method"] == method})
    out = {}
    for c in CHOICES:
        ratios = [statistics.pstdev(_values(records, method, t, c)) / paper[1]
                  for t in tasks if (paper := _paper(method, t, "w2")) and paper[1] > 0]
        out[c] = statistics.fmean(ratios) if ratios else math.nan
    return out


def relative_mean(records: list[dict[str, Any]], method: str) -> dict[str, float]:
    """Per choice: the mean test W2 over the paper's mean W2, mean over tasks."""
    tasks = sorted({r["task"] for r in records if r["method"] == method})
    return {c: statistics.fmean(
        [statistics.fmean(_values(records, method, t, c)) / paper[0]
         for t in tasks if (paper := _paper(method, t, "w2"))] or [math.nan]) for c in CHOICES}


def within_band(records: list[dict[str, Any]], method: str, choice: str) -> list[str]:
    """The tasks where the mean test W2 of ``choice`` is at most the paper's mean + 1 std."""
    tasks = [t for t in two_dim.TASKS if any(r["task"] == t and r["method"] == method
                                             for r in records)]
    return [t for t in tasks if (paper := _paper(method, t, "w2"))
            and statistics.fmean(_values(records, method, t, choice)) <= paper[0] + paper[1]]


def variant(result: dict[str, Any]) -> str:
    """The settings that tell one study's runs from another's (couplings, sigmas of the
    methods it ran)."""
    used = {r["method"] for r in result["records"]}
    parts = [f"{m} coupling `{c}`" for m, c in result["couplings"] if m in used]
    parts += [f"{m} sigma {v:g}" for m, v in result.get("sigmas", []) if m in used]
    return ", ".join(parts) if parts else "the protocol's defaults"


def _section(result: dict[str, Any]) -> list[str]:
    records = result["records"]
    methods = [m for m in ("otcfm", "sf2m", *sorted({r["method"] for r in records}))
               if any(r["method"] == m for r in records)]
    methods = list(dict.fromkeys(methods))
    tasks = [t for t in two_dim.TASKS if any(r["task"] == t for r in records)]
    seeds = sorted({r["seed"] for r in records})
    floors = result["floors"]
    lines = [
        f"## {', '.join(methods)}: {variant(result)}",
        "",
        f"- Command: `{result['command']}`",
        f"- Machine: {result['machine']}; {result['jobs']} job(s), 1 torch thread per cell",
        f"- Date: {result['date']}; wall time of this invocation {result['wall_seconds']:.0f} s "
        "(cells an earlier, interrupted invocation had trained resumed from their checkpoints); "
        f"train + test time summed over cells {result['cpu_seconds']:.0f} s",
        f"- Seeds: {', '.join(str(s) for s in seeds)}; mean ± std (population) over them",
        "",
    ]
    head = "| choice | " + " | ".join(tasks) + " |"
    rule = "|---" * (len(tasks) + 1) + "|"
    for method in methods:
        lines += [f"### {method}: test W2", "", head, rule]
        for c in CHOICES:
            lines.append(f"| {LABELS[c]} | " + " | ".join(
                _ms(v) if (v := _values(records, method, t, c)) else "—" for t in tasks) + " |")
        paper = [_paper(method, t, "w2") for t in tasks]
        lines.append("| paper (best val loss) | " + " | ".join(
            f"{v[0]:.3f} ± {v[1]:.3f}" if v else "—" for v in paper) + " |")
        lines.append("| sampling floor (target vs target) | " + " | ".join(
            _ms(floors[t]) for t in tasks) + " |")
        lines += ["", f"### {method}: test NPE", "", head, rule]
        for c in CHOICES:
            lines.append(f"| {LABELS[c]} | " + " | ".join(
                _ms(v) if (v := _values(records, method, t, c, "npe")) else "—"
                for t in tasks) + " |")
        paper = [_paper(method, t, "npe") for t in tasks]
        lines.append("| paper (best val loss) | " + " | ".join(
            f"{v[0]:.3f} ± {v[1]:.3f}" if v else "—" for v in paper) + " |")
        lines += ["", f"### {method}: per-seed test W2 and the step each choice took", "",
                  "| task | choice | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(seeds)]
        for task in tasks:
            rows = {r["seed"]: r for r in records if r["method"] == method and r["task"] == task}
            for c in CHOICES:
                lines.append(f"| {task} | {LABELS[c]} | " + " | ".join(
                    f"{rows[s]['choices'][c]['w2']:.3f} @ {rows[s]['choices'][c]['step']}"
                    if s in rows else "—" for s in seeds) + " |")
        score = stability(records, method)
        level = relative_mean(records, method)
        lowest = {t: min(CHOICES, key=lambda c, t=t: statistics.fmean(
            _values(records, method, t, c))) for t in tasks}
        lines += ["", f"**Reading ({method}).**", "",
                  "- Lowest mean test W2 per task: " + "; ".join(
                      f"{t} {LABELS[c]}" for t, c in lowest.items()) + ".",
                  "- Mean test W2 over the paper's mean, mean over tasks: " + ", ".join(
                      f"{LABELS[c]} {level[c]:.2f}" for c in CHOICES) + ".",
                  "- Across-seed std of the test W2 over the paper's std, mean over tasks "
                  "(1: as steady as the paper's runs): " + ", ".join(
                      f"{LABELS[c]} {score[c]:.2f}" for c in CHOICES) + ".",
                  "- Tasks whose mean test W2 is within the paper's mean + 1 std: " + "; ".join(
                      f"{LABELS[c]}: {', '.join(within_band(records, method, c)) or 'none'}"
                      for c in CHOICES) + ".", ""]
    for task, sp in result.get("spread", {}).items():
        paper = _paper("otcfm", task, "w2")
        lines += [
            f"### {task}: how much of the spread the test sets make", "",
            "| W2 | mean ± std | std over the paper's std |", "|---|---|---|",
            f"| target vs target, {sp['draws']} pairs of independent {result['n_test']}-point "
            f"samples | {_ms(sp['floor'])} | {statistics.pstdev(sp['floor']) / paper[1]:.1f} |",
            f"| otcfm, final EMA weights of seeds {sp['seeds'][0]}-{sp['seeds'][-1]}, each on "
            f"its own test set (the protocol) | {_ms(sp['own'])} | "
            f"{statistics.pstdev(sp['own']) / paper[1]:.1f} |",
            f"| the same models on one common test set (seed {sp['seeds'][0]}'s) | "
            f"{_ms(sp['common'])} | {statistics.pstdev(sp['common']) / paper[1]:.1f} |",
            f"| paper (OT-CFM, best validation loss) | {paper[0]:.3f} ± {paper[1]:.3f} | 1.0 |",
            "",
            "With a test set per seed, a perfect model's W2 would still vary across seeds as "
            "the first row does: that std alone is "
            f"{statistics.pstdev(sp['floor']) / paper[1]:.1f} times the paper's. One common "
            "test set takes the test sets' share out: it leaves "
            f"{statistics.pstdev(sp['common']) / statistics.pstdev(sp['own']):.0%} of the "
            "protocol's std, so the rest comes from the trained models themselves (worst seed "
            f"{sp['seeds'][max(range(len(sp['common'])), key=sp['common'].__getitem__)]}: "
            f"{max(sp['common']):.3f} on the common set).", "",
        ]
    return lines


def render(results: list[dict[str, Any]]) -> str:
    """The page of one or more studies (each a JSON record of :func:`main`)."""
    first = results[0]
    lines = [
        "# Checkpoint choice on the 2-D benchmark",
        "",
        "Which weights of a run should be tested? Each cell trains once under the 2-D "
        "protocol (`otcfm bench two-dim`: MLP 3x64 SELU, AdamW 1e-3 / 1e-5, batch "
        f"{first['batch_size']}, {first['steps']} steps, validation every "
        f"{first['val_every']} steps on {first['n_val']} validation points), with an EMA of "
        f"the weights (decay {first['ema_decay']}) kept beside them and every validation "
        "step's checkpoint kept. Four choices are read off the same run and tested on the "
        f"{first['n_test']}-point test sets (W2 and NPE, 100 Euler steps): "
        + "; ".join(f"**{LABELS[c]}**" for c in CHOICES)
        + ". The raw weights of every checkpoint are validated again (the trainer validates "
        "the EMA weights when an EMA is kept), on the validation split only; the test split "
        "is used once per choice.",
        "",
        "The paper's reference runner tests the raw weights with the best validation loss. "
        "Our protocol (`otcfm bench two-dim`) tests the final EMA weights (decay 0.999) since "
        "this study: `--ema 0` (or `--ema 0 --checkpoint best`) restores the paper's choice. "
        "The sampling floor is "
        "the W2 between two independent test-sized samples of the target: what a perfect "
        "model would still score.",
        "",
        "Rendered from " + ", ".join(f"`{r['file']}`" for r in results) + " by "
        "`python benchmarks/pages.py`.",
        "",
    ]
    for result in results:
        lines += _section(result)
        if result is not first:
            lines += _paired(first, result)
    return "\n".join(lines)


def _paired(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Test W2 of ``other`` minus ``first`` for the cells both hold, paired by seed."""
    def key(r: dict[str, Any]) -> tuple[str, str, int]:
        return r["task"], r["method"], r["seed"]

    base = {key(r): r for r in first["records"]}
    shared = [(base[key(r)], r) for r in other["records"] if key(r) in base]
    if not shared:
        return []
    groups = sorted({(a["method"], a["task"]) for a, _ in shared})
    lines = [f"### {variant(other)} minus {variant(first)}: test W2, paired by seed", "",
             "| method | task | seeds | " + " | ".join(LABELS[c] for c in CHOICES) + " |",
             "|---|---|---|" + "---|" * len(CHOICES)]
    for method, task in groups:
        pairs = [(a, b) for a, b in shared if (a["method"], a["task"]) == (method, task)]
        lines.append(f"| {method} | {task} | {len(pairs)} | " + " | ".join(
            _ms([b["choices"][c]["w2"] - a["choices"][c]["w2"] for a, b in pairs])
            for c in CHOICES) + " |")
    return [*lines, ""]


# --------------------------------------------------------------------------- main
def _pairs(items: list[str], flag: str, kind: type) -> tuple[tuple[str, Any], ...]:
    out = []
    for item in items:
        method, sep, value = item.partition("=")
        if not sep or not method or not value:
            raise SystemExit(f"{flag} wants METHOD=VALUE, got {item!r}")
        out.append((method.strip(), kind(value)))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, help="folder of the cells' runs (one per cell)")
    ap.add_argument("--out", type=Path, help="JSON record to write (page beside it, .md)")
    ap.add_argument("--tasks", default=",".join(two_dim.TASKS))
    ap.add_argument("--methods", default="otcfm")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ema", type=float, default=EMA_DECAY)
    ap.add_argument("--coupling", action="append", default=[], metavar="METHOD=NAME",
                    help="coupling of a method (default: "
                    + ", ".join(f"{m}={c}" for m, c in COUPLINGS) + ", as the 2-D page)")
    ap.add_argument("--sigma", action="append", default=[], metavar="METHOD=VALUE",
                    help="sigma of a method (default: the 2-D protocol's)")
    ap.add_argument("--quick", action="store_true", help="the two-dim recipe's --quick budget "
                    "(200 steps, 500 test points): a smoke run, not the study")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--spread", metavar="TASK", help="add to --out (an existing record of "
                    "these --runs) the test sets' share of TASK's across-seed spread (spread())")
    ap.add_argument("--draws", type=int, default=10, help="target-vs-target draws of --spread")
    ap.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                    help="only write the page of these records (to --page)")
    ap.add_argument("--page", type=Path, help="page written by --render")
    args = ap.parse_args(argv)
    if args.render:
        if args.page is None:
            ap.error("--render needs --page")
        args.page.write_text(render([json.loads(f.read_text()) for f in args.render]))
        return 0
    if args.runs is None or args.out is None:
        ap.error("--runs and --out are needed to run the study")
    couplings = dict(COUPLINGS) | dict(_pairs(args.coupling, "--coupling", str))
    p = protocol(args.ema, quick=args.quick, couplings=tuple(sorted(couplings.items())),
                 sigmas=_pairs(args.sigma, "--sigma", float))
    if args.spread:
        result = json.loads(args.out.read_text())
        seeds = sorted({r["seed"] for r in result["records"] if r["method"] == "otcfm"})
        start = time.perf_counter()
        result.setdefault("spread", {})[args.spread] = {
            **spread(args.spread, p, args.runs, seeds, args.draws),
            "seconds": time.perf_counter() - start}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["spread"][args.spread]))
        return 0
    tasks = two_dim.parse_tasks(args.tasks)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cells = [two_dim.Cell(t, m, two_dim.FIRST_SEED + k)
             for m in methods for t in tasks for k in range(args.seeds)]
    start = time.perf_counter()

    def done(res: _cells.CellResult) -> None:
        if res.record is None:
            print(f"{res.cell.label}: FAILED {res.error}", flush=True)
            return
        c = res.record["choices"]
        print(f"{res.cell.label}: " + "  ".join(f"{k} {c[k]['w2']:.3f}@{c[k]['step']}"
                                                for k in CHOICES)
              + (" (cached)" if res.cached else ""), flush=True)

    results = _cells.run_cells(cells, partial(run_cell, p=p, runs=str(args.runs)),
                               partial(cached, p=p, runs=args.runs), jobs=args.jobs,
                               on_done=done)
    failed = [r for r in results if r.record is None]
    if failed:
        print(f"{len(failed)} cell(s) failed; nothing written", file=sys.stderr)
        return 1
    records = [{k: v for k, v in r.record.items() if k != "key"} for r in results]
    shown = [a if not a.startswith("/") else Path(a).name for a in (argv or sys.argv[1:])]
    result = {
        "file": args.out.name,
        "command": "python benchmarks/checkpoint_choice.py " + " ".join(shown),
        "machine": _machine.machine(),
        "jobs": args.jobs,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": sum(r["train_seconds"] + r["eval_seconds"] for r in records),
        "steps": p.steps, "val_every": p.val_every, "n_val": p.n_val, "n_test": p.n_test,
        "batch_size": p.batch_size, "ema_decay": p.ema,
        "couplings": [list(c) for c in p.couplings], "sigmas": [list(c) for c in p.sigmas],
        "floors": {t: two_dim.sampling_floor(t, p, args.runs) for t in tasks},
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render([result]))
    print(f"wrote {args.out} and its page ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
