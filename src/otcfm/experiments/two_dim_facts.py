"""Numbers quoted by the hand-written remarks of the 2-D pages, computed from committed records.

A remarks file (``otcfm bench two-dim --remarks FILE``) is prose with ``{{name}}``
placeholders; its first line ``<!-- numbers: KIND -->`` names the set of facts that fills them
(:data:`FACTS`). Each fact is computed here from JSON records under the page's folder: the
page's own cells, the sibling 2-D pages it compares with and the coupling benchmark's
``performance.json``. A placeholder without a fact, or a fact whose record is missing, is an
error: no number of a remarks page is typed by hand.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from otcfm.experiments._published import mean_std_table, section
from otcfm.experiments._stats import paired_difference

HEADER = re.compile(r"\A<!-- numbers: (\S+) -->\n")
PLACEHOLDER = re.compile(r"\{\{([^{}]+)\}\}")
SHORT = {"gaussian-8gaussians": "N->8gaussians", "moons-8gaussians": "moons->8gaussians",
         "gaussian-moons": "N->moons", "gaussian-scurve": "N->scurve"}
TASK_ORDER = tuple(SHORT)
FIRST, SECOND = range(42, 47), range(47, 52)  # the two batches of seeds of the TorchCFM page


def fill_remarks(template: str, out: Path) -> str:
    """The remarks with every ``{{name}}`` replaced by its fact for the page folder ``out``."""
    head = HEADER.match(template)
    names = PLACEHOLDER.findall(template)
    if head is None:
        if names:
            raise ValueError(f"remarks with placeholders ({names[0]!r}, ...) need a first line "
                             "'<!-- numbers: KIND -->' naming their facts: "
                             + ", ".join(FACTS))
        return template
    kind = head.group(1)
    if kind not in FACTS:
        raise ValueError(f"unknown remarks facts {kind!r}; known: {', '.join(FACTS)}")
    facts = FACTS[kind](Path(out))
    unknown = sorted(set(names) - set(facts))
    if unknown:
        raise ValueError(f"remarks placeholders without a fact in {kind!r}: {', '.join(unknown)}")
    return PLACEHOLDER.sub(lambda m: facts[m.group(1)], template[head.end():])


# --------------------------------------------------------------------------- records
def _json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"the remarks quote {path}, which is missing")
    return json.loads(path.read_text())


def _cells(folder: Path, library: str = "otcfm") -> list[dict[str, Any]]:
    name = "two_dim.json" if library == "otcfm" else "two_dim_torchcfm.json"
    return _json(folder / name)


def _perf(path: Path) -> list[dict[str, Any]]:
    data = _json(path)
    return data["records"] if isinstance(data, dict) else data


def _by_seed(records, task: str, method: str, key: str = "w2") -> dict[int, float]:
    return {r["seed"]: r[key] for r in records if r["task"] == task and r["method"] == method}


def _group(records, task: str, method: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["task"] == task and r["method"] == method),
                  key=lambda r: r["seed"])


def _tasks(records) -> list[str]:
    present = {r["task"] for r in records}
    return [t for t in TASK_ORDER if t in present]


# --------------------------------------------------------------------------- formats
def _ms(values: Sequence[float], digits: int = 3) -> str:
    """Mean ± population std (ddof 0), as on the pages."""
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def _span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _seeds(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s))


def _paired(ours: dict[int, float], theirs: dict[int, float], seeds=None) -> str:
    if seeds is not None:
        ours = {k: v for k, v in ours.items() if k in seeds}
    got = paired_difference(ours, theirs)
    if got is None:
        raise ValueError("no common seed to pair")
    mean, se, _ = got
    return f"{mean:+.3f}" if se is None else f"{mean:+.3f} ± {se:.3f}"


def _cpu(machine: str) -> str:
    """The processor of a record's machine line (the text before its first comma)."""
    cpu = machine.split(",", 1)[0].strip()
    if not cpu:
        raise ValueError("a record without its machine: rerun it with the current benchmark")
    return cpu


def _where(measured: str, cells: str) -> str:
    """Where a record beside the cells was measured, against the cells' own machine."""
    a, b = _cpu(measured), _cpu(cells)
    return f"on the cells' machine ({a})" if a == b else f"measured on {a}, not on the cells' {b}"


def _seconds(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _published(metric: str, method: str, task: str) -> tuple[float, float]:
    return mean_std_table(section("two_dim")[metric])[method][task]


def _plan(perf, solver: str, b: int, d: int, library: str = "otcfm") -> dict[str, Any]:
    for r in perf:
        if (r["kind"], r["library"], r["solver"], r["B"], r["d"]) == ("plan", library, solver,
                                                                       b, d):
            return r
    raise ValueError(f"performance.json has no plan record {library} {solver} B={b} d={d}")


def _step(perf, solver: str, b: int, d: int) -> dict[str, Any]:
    for r in perf:
        if (r["kind"], r["library"], r["solver"], r["B"], r["d"]) == ("step", "otcfm", solver,
                                                                       b, d):
            return r
    raise ValueError(f"performance.json has no step record otcfm {solver} B={b} d={d}")


def approx_gaps(perf) -> dict[str, str]:
    """ApproxOT's measured coupling gaps and what tol = 0.01 allows.

    ApproxOT's measured coupling gaps, its cost above the optimum and what tol = 0.01
    allows, over the plan records of the coupling benchmark that have a reference optimum.
    """
    ref = {(r["B"], r["d"]): r for r in perf if r["kind"] == "plan" and r["library"]
           == "reference" and r.get("optimal") is not None}
    rows = [(r, ref[(r["B"], r["d"])]) for r in perf
            if r["kind"] == "plan" and r["solver"] == "ApproxOT(tol=0.01)"
            and r.get("gap") is not None and (r["B"], r["d"]) in ref]
    if not rows:
        raise ValueError("performance.json has no ApproxOT plan with a reference optimum")
    spread = [(q["independent"] - q["optimal"]) / q["optimal"] for _, q in rows]
    return {
        "perf_sizes": _span([r["B"] for r, _ in rows], str),
        "perf_dims": _span([r["d"] for r, _ in rows], str),
        "approx_gaps": _span([max(r["gap"], 0.0) for r, _ in rows], _pct),
        "approx_excess": _span([max(r["gap"], 0.0) * s for (r, _), s in zip(rows, spread,
                                                                            strict=True)], _pct),
        "approx_allowed": _span([0.01 * s for s in spread], _pct),
    }


def _sf2m_against_published(records: list[dict]) -> dict[str, str]:
    """SF2M's sigma, and which of its W2 and NPE values exceed the published mean + 1 std.

    The published row is SF2M Table 2's SF2M-Exact; one value per task and metric.
    """
    sf2m = [r for r in records if r["method"] == "sf2m"]
    sigmas = sorted({r["sigma"] for r in sf2m})
    within, outside = [], []
    for t in _tasks(records):
        rows = _group(records, t, "sf2m")
        for metric in ("w2", "npe"):
            mean = statistics.fmean(r[metric] for r in rows)
            bound = sum(_published(metric, "sf2m", t))
            text = f"{metric.upper()} {mean:.3f} ({t}, bound {bound:.3f})"
            (within if mean <= bound else outside).append(text)
    return {"sf2m_sigma": " / ".join(f"{s:g}" for s in sigmas),
            "sf2m_n_within": f"{len(within)} of {len(within) + len(outside)}",
            "sf2m_outside": "; ".join(outside) or "none"}


# --------------------------------------------------------------------------- the main page
def two_dim(out: Path) -> dict[str, str]:
    """Facts of ``docs/results/two_dim/remarks.md`` (``out``: the folder of two_dim.json)."""
    records, run = _cells(out), _json(out / "two_dim_run.json")
    p = run["protocol"]
    seeds = sorted({r["seed"] for r in records})
    facts = {"n_seeds": str(len(seeds)), "seeds": _seeds(seeds), "steps": f"{p['steps']:,}",
             "batch": str(p["batch_size"]), "n_cells": str(len(records)),
             "n_val": f"{p['n_val']:,}"}
    perf = _perf(out / "performance.json")
    facts.update(approx_gaps(perf))
    exact, approx = _step(perf, "otcfm", 512, 2), _step(perf, "otcfm-approx", 512, 2)
    n_ot = sum(r["method"] == "otcfm" for r in records)
    facts.update(step_batch="512", step_exact=_seconds(exact["seconds"]),
                 step_approx=_seconds(approx["seconds"]), n_otcfm_cells=str(n_ot),
                 exact_cells_hours=f"{exact['seconds'] * p['steps'] * n_ot / 3600:.1f}",
                 perf_where=_where(_json(out / "performance.json").get("machine", ""),
                                   run.get("machine", "")))
    moons = "moons-8gaussians"
    sb = _group(records, moons, "sbcfm")
    facts.update(
        sbcfm_moons_minutes=_span([r["train_seconds"] / 60 for r in sb], lambda v: f"{v:.0f}"),
        sbcfm_moons_w2=_ms([r["w2"] for r in sb]), sbcfm_moons_npe=_ms([r["npe"] for r in sb]),
        sbcfm_moons_w2_seeds=", ".join(f"{r['w2']:.3f}" for r in sb),
    )
    facts.update(_sf2m_against_published(records))
    facts["checkpoint"] = {"ema": f"the final EMA weights (decay {p.get('ema')})",
                           "final": "the final weights",
                           "best": "the best-validation-loss checkpoint"}[p.get("checkpoint",
                                                                                 "best")]
    ratios = {t: statistics.fmean(r["train_seconds"] for r in _group(records, t, "sbcfm"))
              / statistics.fmean(r["train_seconds"] for r in _group(records, t, "otcfm"))
              for t in _tasks(records)}
    facts["sbcfm_over_otcfm"] = ", ".join(f"{ratios[t]:.1f}x ({t})" for t in ratios)
    total = [r["train_seconds"] + r.get("eval_seconds", 0.0) for r in records]
    sbcfm = sum(t for r, t in zip(records, total, strict=True) if r["method"] == "sbcfm")
    facts.update(cell_hours=f"{sum(total) / 3600:.1f}",
                 cell_hours_half=f"{sum(total) / 7200:.1f}",
                 sbcfm_share=f"{100 * sbcfm / sum(total):.0f}%")
    facts.update(wall_facts(run, len(records)))
    factors = [statistics.fmean(r["npe"] for r in _group(records, t, "icfm"))
               / statistics.fmean(r["npe"] for r in _group(records, t, "otcfm"))
               for t in _tasks(records)]
    facts["npe_factor"] = f"{min(factors):.0f}x to {max(factors):.0f}x"
    floors = run["floors"]
    facts.update(floor_moons=_span(floors[moons], lambda v: f"{v:.2f}"),
                 floor_8g=_span(floors["gaussian-8gaussians"], lambda v: f"{v:.2f}"),
                 floor_moons_target=_span(floors["gaussian-moons"], lambda v: f"{v:.2f}"),
                 published_w2_moons="{:.3f} ± {:.3f}".format(*_published("w2", "otcfm", moons)),
                 published_npe_moons="{:.3f} ± {:.3f}".format(*_published("npe", "otcfm",
                                                                          moons)))
    ot = _group(records, moons, "otcfm")
    w2s = sorted(r["w2"] for r in ot)
    facts["best_two_moons"] = f"{w2s[0]:.2f} and {w2s[1]:.2f}"
    facts["otcfm_moons_npe"] = _ms([r["npe"] for r in ot])
    bound = sum(_published("w2", "otcfm", moons))
    facts.update(otcfm_moons_w2_mean=f"{statistics.fmean(w2s):.3f}",
                 otcfm_moons_excess=f"{statistics.fmean(w2s) - bound:.3f}",
                 published_bound_moons=f"{bound:.3f}",
                 floor_spread_moons=f"{max(floors[moons]) - min(floors[moons]):.3f}")
    ours_tc = _cells(out / "two_dim_torchcfm")
    exact_tc = _cells(out / "two_dim_tc_exact")
    diffs = [abs(r["w2"] - _by_seed(ours_tc, r["task"], "otcfm")[r["seed"]]) for r in exact_tc]
    facts["approx_vs_exact"] = f"{max(diffs):.3f}"
    pub_std = _published("w2", "otcfm", moons)[1]
    facts.update(otcfm_moons_range=f"{w2s[0]:.2f} to {w2s[-1]:.2f}",
                 otcfm_moons_std=f"{statistics.pstdev(w2s):.3f}",
                 spread_factor=f"{statistics.pstdev(w2s) / pub_std:.0f}x")
    jumps = [abs(b[1] - a[1]) for r in ot for a, b in zip(r["val_curve"], r["val_curve"][1:],
                                                          strict=False)]
    facts["val_jump"] = f"{statistics.fmean(jumps):.2f}"
    facts.update(_torchcfm_summary(out / "two_dim_torchcfm"))
    facts.update(_w2_noise(out / "two_dim" / "w2_noise.json", pub_std))
    facts.update(_one_draw(out / "two_dim_fixed_data", records, pub_std))
    facts.update(_sbcfm_rerun(out / "two_dim_sbcfm", run.get("machine", "")))
    return facts


WALL_BOUND_HOURS = 3.0  # the whole protocol's wall-time target on 2 cores
WALL_AIM_HOURS = 2.0


def wall_facts(run: dict[str, Any], n_cells: int) -> dict[str, str]:
    """The protocol's wall time from its run record, and whether it was measured end to end.

    ``wall_statement``: the measured wall time when no cell came from the cache (with the
    targets of :data:`WALL_BOUND_HOURS` and :data:`WALL_AIM_HOURS` on 2 cores, met or not),
    else why the invocation's wall time is not the protocol's.
    """
    wall, cached, jobs = run["wall_seconds"], run.get("cached", 0), run["jobs"]
    hours = wall / 3600
    where = f"{jobs} job(s) on {_cpu(run.get('machine', ''))}"
    if cached:
        statement = (f"not measured end to end: {cached} of {n_cells} cells came from the "
                     f"cache of earlier invocations (this one took {hours:.2f} hours, {where})")
    else:
        bound = "met" if hours <= WALL_BOUND_HOURS else "NOT met"
        aim = "met" if hours <= WALL_AIM_HOURS else "not met"
        statement = (f"{hours:.2f} hours ({wall / 60:.0f} min) for all {n_cells} cells, "
                     f"measured end to end in one invocation with no cell from the cache "
                     f"({where}): the {WALL_BOUND_HOURS:.0f}-hour target on 2 cores is "
                     f"{bound}, the {WALL_AIM_HOURS:.0f}-hour aim {aim}")
    return {"wall_statement": statement, "wall_hours": f"{hours:.2f}",
            "wall_cached": str(cached)}


def _sbcfm_rerun(folder: Path, machine: str) -> dict[str, str]:
    """SB-CFM against OT-CFM train time in the later SB-CFM cells run (``folder``).

    ``machine``: that of this page's cells.
    """
    cells = _cells(folder)
    (task,) = {r["task"] for r in cells}
    sb, ot = (statistics.fmean(r["train_seconds"] for r in _group(cells, task, m))
              for m in ("sbcfm", "otcfm"))
    run = _json(folder / "two_dim_run.json")
    return {"sbcfm_rerun_task": task, "sbcfm_rerun_seeds": _seeds(sorted(
                {r["seed"] for r in cells})),
            "sbcfm_rerun": f"{sb:.0f} s against {ot:.0f} s, {sb / ot:.2f}x",
            "sbcfm_rerun_date": run["date"], "sbcfm_rerun_jobs": str(run["jobs"]),
            "sbcfm_rerun_where": _where(run.get("machine", ""), machine)}


def _one_draw(folder: Path, records: list[dict], pub_std: float) -> dict[str, str]:
    """OT-CFM's spread over seeds that share one data draw (``--data-seed``) against this page's.

    ``records``: this page's cells (one data draw per seed).
    """
    fixed = _cells(folder)
    seed = _json(folder / "two_dim_run.json")["protocol"]["data_seed"]
    moons = "moons-8gaussians"
    rows = _group(fixed, moons, "otcfm")
    w2 = [r["w2"] for r in rows]
    std = statistics.pstdev(w2)
    same = _by_seed(records, moons, "otcfm").get(seed)  # this page's cell on that draw
    mine = _by_seed(fixed, moons, "otcfm").get(seed)
    by_task = "; ".join(
        f"{t} {statistics.pstdev(r['w2'] for r in _group(fixed, t, 'otcfm')):.3f} against "
        f"{statistics.pstdev(r['w2'] for r in _group(records, t, 'otcfm')):.3f}"
        for t in _tasks(fixed))
    return {
        "one_draw_seed": str(seed),
        "one_draw_n": str(len(w2)),
        "one_draw_seeds": _seeds([r["seed"] for r in rows]),
        "one_draw_moons_w2": _ms(w2),
        "one_draw_moons_values": ", ".join(f"{v:.3f}" for v in w2),
        "one_draw_moons_std": f"{std:.3f}",
        "one_draw_verdict": ("within" if std <= 2 * pub_std else "NOT within")
        + f" twice the published std ({2 * pub_std:.3f})",
        "one_draw_same_seed": "not run" if same is None or mine is None else f"{same:.3f}" + (
            " (the cell reproduced)" if f"{same:.3f}" == f"{mine:.3f}" else
            f" (this run: {mine:.3f})"),
        "one_draw_by_task": by_task,
    }


def _w2_noise(path: Path, pub_std: float) -> dict[str, str]:
    """The test-draw noise of W2 (benchmarks/w2_noise.py's record) against the published std."""
    noise = _json(path)
    rows, k = noise["seeds"], noise["draws"]
    draw_std = [statistics.pstdev(r["w2"]) for r in rows]
    shared = [statistics.pstdev([r["w2"][j] for r in rows]) for j in range(k)]
    means = [statistics.fmean(r["w2"]) for r in rows]
    return {
        "noise_draws": str(k),
        "noise_draw_std": f"{statistics.fmean(draw_std):.3f}",
        "noise_draw_std_span": _span(draw_std, lambda v: f"{v:.3f}"),
        "noise_shared_std": _span(shared, lambda v: f"{v:.3f}"),
        "noise_mean_std": f"{statistics.pstdev(means):.3f}",
        "noise_floor": _ms(noise["floor"]),
        "noise_twice_published": f"{2 * pub_std:.3f}",
    }


def _torchcfm_summary(folder: Path) -> dict[str, str]:
    ours, theirs = _cells(folder), _cells(folder, "torchcfm")
    seeds = sorted({r["seed"] for r in theirs})
    ratios = [statistics.fmean(r["train_seconds"] for r in _group(ours, t, "otcfm"))
              / statistics.fmean(r["train_seconds"] for r in _group(theirs, t, "otcfm"))
              for t in _tasks(theirs)]
    facts = {"tc_steps": f"{theirs[0]['steps']:,}", "tc_seeds": _seeds(seeds),
             "tc_n_seeds": str(len(seeds)),
             "tc_time_ratio": _span(ratios, lambda v: f"{v:.2f}x")}
    moons = "moons-8gaussians"
    for t in _tasks(theirs):
        facts[f"tc_paired_{t}"] = _paired(_by_seed(ours, t, "otcfm"),
                                          _by_seed(theirs, t, "otcfm"))
    a, b = _by_seed(ours, moons, "otcfm"), _by_seed(theirs, moons, "otcfm")
    facts["tc_paired_moons_first"] = _paired(a, b, FIRST)
    facts["tc_paired_moons_second"] = _paired(a, b, SECOND)
    return facts


# --------------------------------------------------------------------------- TorchCFM page
def two_dim_torchcfm(out: Path) -> dict[str, str]:
    """Facts of ``docs/results/two_dim_torchcfm/remarks.md``.

    ``out``: that folder; the sibling pages two_dim_tc_exact, two_dim_tc_replace and
    performance.json beside it.
    """
    ours, theirs = _cells(out), _cells(out, "torchcfm")
    seeds = sorted({r["seed"] for r in theirs})
    tasks = _tasks(theirs)
    facts = {"steps": f"{theirs[0]['steps']:,}", "seeds": _seeds(seeds),
             "n_seeds": str(len(seeds)), "n_test": f"{theirs[0]['n_test']:,}"}
    for method in ("otcfm", "icfm"):
        means = [statistics.fmean(r["train_seconds"] for r in _group(ours, t, method))
                 / statistics.fmean(r["train_seconds"] for r in _group(theirs, t, method))
                 for t in tasks]
        cells = [_by_seed(ours, t, method, "train_seconds")[s]
                 / _by_seed(theirs, t, method, "train_seconds")[s]
                 for t in tasks for s in SECOND if s in seeds]
        facts[f"{method}_time_ratio"] = _span(means, lambda v: f"{v:.2f}x")
        facts[f"{method}_cell_ratio_quiet"] = _span(cells, lambda v: f"{v:.2f}x")
    root = out.parent
    exact, replace = _cells(root / "two_dim_tc_exact"), _cells(root / "two_dim_tc_replace")
    facts["exact_train_seconds"] = _span([r["train_seconds"] for r in exact],
                                         lambda v: f"{v:.0f}")
    perf = _perf(root / "performance.json")
    facts.update(plan_batch="512",
                 plan_torchcfm=_seconds(_plan(perf, "OTPlanSampler(exact)", 512, 2,
                                              "torchcfm")["seconds"]),
                 plan_exact=_seconds(_plan(perf, "ExactOT()", 512, 2)["seconds"]),
                 plan_approx=_seconds(_plan(perf, "ApproxOT(tol=0.01)", 512, 2)["seconds"]))
    rows = []
    for t in tasks:
        a, b = _by_seed(ours, t, "otcfm"), _by_seed(theirs, t, "otcfm")
        rows.append(f"  | {SHORT[t]} | {_paired(a, b, FIRST)} | {_paired(a, b, SECOND)} | "
                    f"{_paired(a, b)} |")
    facts["paired_rows"] = "\n".join(rows)
    moons = "moons-8gaussians"
    a, b = _by_seed(ours, moons, "otcfm"), _by_seed(theirs, moons, "otcfm")
    diff = paired_difference(a, b)
    assert diff is not None and diff[1] is not None
    facts.update(
        moons_per_seed=", ".join(f"{a[s] - b[s]:+.3f}" for s in seeds),
        moons_paired=_paired(a, b),
        moons_percent=f"{100 * diff[0] / statistics.fmean(b.values()):.0f}%",
        moons_se_multiple=f"{diff[0] / diff[1]:.1f}",
        moons_paired_second=_paired(a, b, SECOND),
        moons_seed43=f"{a[43] - b[43]:+.3f}",
    )
    exact_tasks = _tasks(exact)
    facts["exact_seeds"] = _seeds(sorted({r["seed"] for r in exact}))
    rows, changes = [], []
    for t in exact_tasks:
        e = _by_seed(exact, t, "otcfm")
        changes += [abs(e[s] - _by_seed(ours, t, "otcfm")[s]) for s in e]
        rows.append(f"  | {SHORT[t]} | {' / '.join(f'{e[s]:.3f}' for s in sorted(e))} | "
                    f"{_paired(e, _by_seed(ours, t, 'otcfm'))} | "
                    f"{_paired(e, _by_seed(theirs, t, 'otcfm'))} |")
    facts["exact_rows"] = "\n".join(rows)
    facts["exact_max_change"] = f"{max(changes):.3f}"
    rows, vs_tc, vs_approx = [], [], []
    for t in _tasks(replace):
        rep = {r["seed"]: r for r in _group(replace, t, "otcfm")}
        ex = {r["seed"]: r for r in _group(exact, t, "otcfm")}
        ap = {r["seed"]: r for r in _group(ours, t, "otcfm")}
        tc = {r["seed"]: r for r in _group(theirs, t, "otcfm")}
        for s in sorted(rep):
            cells = [f"{c[s]['w2']:.3f} ({c[s]['best_step']})" if s in c else "—"
                     for c in (ap, ex, rep, tc)]
            rows.append(f"  | {SHORT[t]} | {s} | " + " | ".join(cells) + " |")
        w2 = _by_seed(replace, t, "otcfm")
        vs_tc.append(f"{_paired(w2, _by_seed(theirs, t, 'otcfm'))} on {SHORT[t]}")
        vs_approx.append(f"{_paired(w2, _by_seed(ours, t, 'otcfm'))} on {SHORT[t]}")
    facts.update(replace_rows="\n".join(rows), replace_vs_tc=" and ".join(vs_tc),
                 replace_vs_approx=" and ".join(vs_approx))
    rep42 = _by_seed(replace, moons, "otcfm")[42]
    facts["same_algorithm_gap"] = f"{abs(rep42 - b[42]):.3f}"
    return facts


FACTS: dict[str, Callable[[Path], dict[str, str]]] = {
    "two_dim": two_dim,
    "two_dim_torchcfm": two_dim_torchcfm,
}
