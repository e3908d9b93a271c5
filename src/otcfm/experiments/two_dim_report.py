"""Outputs of ``otcfm bench two-dim``: JSON records, the markdown page and the figures.

``OUT/two_dim.json``: one record per (task, method, seed) cell of this library;
``OUT/two_dim_torchcfm.json``: the TorchCFM cells (``--torchcfm``); ``OUT/two_dim_run.json``:
the command, date, machine, protocol, notes and sampling floors of the run; ``OUT/two_dim.md``:
mean +- std over seeds beside the published numbers, a function of these records alone
(:func:`render_page`); ``OUT/two_dim/*.png``: W2 against Euler steps, validation W2 against
training step, and a trajectory grid (methods x tasks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcfm.experiments._machine import machine, version
from otcfm.experiments._published import mean_std_table, section
from otcfm.experiments._stats import paired_difference
from otcfm.experiments.two_dim import TASKS, CellResult, records_of
from otcfm.experiments.two_dim_facts import fill_remarks
from otcfm.train.checkpoint import write_text_atomic

#: how the page names each Protocol.checkpoint
TESTED = {"best": "the best-validation checkpoint", "final": "the final weights",
          "ema": "the final EMA weights"}

FIGURES = {
    "w2_euler": "W2 against the number of Euler steps",
    "convergence": "validation W2 against training step (rf left out: it is validated "
    "against its I-CFM teacher's endpoints)",
    "trajectories": "trajectories (first seed, 100 Euler steps)",
}
METHOD_ORDER = ("otcfm", "icfm", "fm", "sbcfm", "vpcfm", "rf", "sf2m")
COLORS = dict(zip(METHOD_ORDER, ("C0", "C1", "C2", "C3", "C4", "C5", "C6"), strict=True))
RATIO = 1.2  # "W2 within 1.2 x its 100-step value"
RECORDS_FILE, TORCHCFM_FILE, RUN_FILE = "two_dim.json", "two_dim_torchcfm.json", "two_dim_run.json"

# The paper's numbers (mean, std over 5 seeds) by metric, method and task: published.json
_TWO_DIM = section("two_dim")
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    metric: mean_std_table(_TWO_DIM[metric]) for metric in ("w2", "npe")
}


def write_outputs(
    results: Sequence[CellResult], out: str | Path, meta: dict[str, Any], runs: str | Path
) -> list[Path]:
    """Write the JSON records, figures and markdown page; returns the paths written."""
    out = Path(out)
    records = records_of(results)
    theirs = records_of(results, "torchcfm")
    written = [write_text_atomic(json_lines(records), out / RECORDS_FILE)]
    if theirs:
        written.append(write_text_atomic(json_lines(theirs), out / TORCHCFM_FILE))
    figures = {}
    if records:
        figures = write_figures(records, results, out / "two_dim", Path(runs))
    failed = [f"{r.cell.label}: {r.error}" for r in results if r.record is None]
    cached = sum(r.cached for r in results)
    run = {**meta, "machine": machine(), "failed": failed, "cached": cached}
    written.append(write_text_atomic(json.dumps(run, indent=1) + "\n", out / RUN_FILE))
    page = markdown(records, theirs, run, figures, out)
    written.append(write_text_atomic(page, out / "two_dim.md"))
    return written + list(figures.values())


def render_page(out: str | Path) -> str:
    """Render ``OUT/two_dim.md`` from the committed records in ``out``.

    ``OUT/two_dim.md`` as the committed records in ``out`` give it (``two_dim.json``,
    ``two_dim_torchcfm.json`` when present, ``two_dim_run.json`` and the remarks file it
    names); runs nothing, needs no cached cells, and links the figures that are there.
    """
    out = Path(out)
    missing = [str(out / f) for f in (RECORDS_FILE, RUN_FILE) if not (out / f).is_file()]
    if missing:
        raise ValueError(f"--page-only needs {' and '.join(missing)} (written by a run of "
                         "otcfm bench two-dim with this --out)")
    records = json.loads((out / RECORDS_FILE).read_text())
    theirs = (json.loads((out / TORCHCFM_FILE).read_text())
              if (out / TORCHCFM_FILE).is_file() else [])
    run = json.loads((out / RUN_FILE).read_text())
    figures = {key: out / "two_dim" / f"{key}.png" for key in FIGURES
               if (out / "two_dim" / f"{key}.png").is_file()}
    return markdown(records, theirs, run, figures, out)


def json_lines(records: Sequence[dict[str, Any]]) -> str:
    """A JSON list with one record per line (readable diffs, still one json.load)."""
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


# --------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof = 0) over seeds."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


def by_cell(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Group the records by (task, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    return groups


def ordered(methods: Sequence[str] | set[str]) -> list[str]:
    """``methods`` in the page's order (:data:`METHOD_ORDER`), others after it by name."""
    rank = {m: k for k, m in enumerate(METHOD_ORDER)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def tasks_of(records: Sequence[dict[str, Any]]) -> list[str]:
    """The tasks present in ``records``, in the order of :data:`TASKS`."""
    present = {r["task"] for r in records}
    return [t for t in TASKS if t in present]


def mean_curve(group: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Mean over seeds of W2 at each Euler step count."""
    steps = sorted(int(k) for k in group[0]["w2_euler"])
    return {k: float(np.mean([r["w2_euler"][str(k)] for r in group])) for k in steps}


def steps_needed(curve: dict[int, float], ratio: float = RATIO) -> int:
    """Fewest Euler steps whose W2 is <= ratio x the W2 of the most steps."""
    ref = curve[max(curve)]
    return min(k for k, w in curve.items() if w <= ratio * ref)


# --------------------------------------------------------------------------- markdown
def fmt(mean: float, std: float, digits: int = 3) -> str:
    """Format ``mean ± std`` with ``digits`` decimals."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def published(metric: str, method: str, task: str) -> str:
    """The paper's ``metric`` of ``method`` on ``task`` as ``mean ± std``, or a dash."""
    value = PUBLISHED[metric].get(method, {}).get(task)
    return fmt(*value) if value else "—"


def _sigmas(records: Sequence[dict[str, Any]]) -> str:
    """Each method's sigma as its records give it, e.g. "icfm 0.1, sbcfm 1"."""
    seen: dict[str, set[float]] = {}
    for r in records:
        seen.setdefault(r["method"], set()).add(float(r["sigma"]))
    return ", ".join(f"{m} " + "/".join(f"{v:g}" for v in sorted(vs)) for m, vs in seen.items())


def markdown(
    records: Sequence[dict[str, Any]],
    theirs: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    figures: dict[str, Path],
    out: Path,
) -> str:
    """The markdown page of the 2-D benchmark from its records (ours and TorchCFM's)."""
    groups = by_cell(records)
    p = meta["protocol"]
    parts = [
        "# 2-D benchmark (paper Table 2)\n",
        f"Each cell: MLP 3x64 SELU, AdamW lr 1e-3 / weight decay 1e-5, batch {p['batch_size']}, "
        f"{p['steps']} steps on {p['n_train']} training points, sigma {_sigmas(records)}"
        + (" (SB-CFM's entropic plan: reg 2 sigma^2)"
           if any(r["method"] == "sbcfm" for r in records) else "")
        + f", validation every {p['val_every']} steps on {p['n_val']} points, "
        f"test metrics from {TESTED[p.get('checkpoint', 'best')]} on {p['n_test']}-point test sets "
        "with 100 Euler steps (docs/reference.md §4). Ours: mean ± std (population, ddof 0) over "
        "seeds; paper: SF2M Table 2 (5 seeds). NFE: dopri5, atol = rtol = "
        f"{p['tol']:g}. "
        + (f"Test NLL: -log q(x) of the flow on the test targets, exact divergence, dopri5 at "
           f"atol = rtol = {p['nll_tol']:g} in float64, the source's own density at t = 0 "
           "(Gaussian, or the moons law of moons->8gaussians). " if "nll_tol" in p else "")
        + "Train s: wall time of the training loop including validation."
        + (f" Data: one draw for every seed (train, validation and test sets drawn with seed "
           f"{p['data_seed']}): the seeds vary only the initial weights, minibatches, times and "
           "noise." if p.get("data_seed", -1) != -1 else "")
        + (f" Weights: EMA with decay {p['ema']:g} (not in the paper's protocol)."
           if p.get("ema") else "") + "\n",
        _run_line(meta, records, theirs),
    ]
    for task in tasks_of(records):
        parts.append(_task_table(task, groups, meta.get("floors", {}).get(task), p["n_test"]))
    parts.append(_claims(groups))
    parts.append(_euler_section(groups, p))
    if theirs:
        parts.append(_torchcfm_table(records, theirs))
    parts.append(_figure_links(figures, out))
    parts.append(_notes(meta, groups))
    if meta.get("remarks_file"):
        remarks = fill_remarks((out / meta["remarks_file"]).read_text(), out)
        parts.append("## Remarks\n\n" + remarks.strip() + "\n")
    return "\n".join(parts)


def _run_line(meta: dict[str, Any], records, theirs) -> str:
    compute = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in [*records, *theirs])
    return (
        f"- Command: `{meta['command']}`\n"
        f"- Machine: {meta.get('machine') or 'not recorded'}; {meta['jobs']} job(s), 1 torch "
        "thread per cell\n"
        f"- Date: {meta['date']}\n"
        f"- Wall time of this invocation: {meta['wall_seconds']:.0f} s, with "
        f"{meta.get('cached', 0)} of {len(records) + len(theirs)} cells taken from the cache; "
        f"train + eval time summed over all the cells (when each ran): {compute:.0f} s\n"
        f"- Rendered from {RECORDS_FILE}{', ' + TORCHCFM_FILE if theirs else ''} and "
        f"{RUN_FILE} by `otcfm bench two-dim --page-only --out DIR`, DIR the folder of this "
        "page (runs nothing)\n"
    )


def _task_table(task: str, groups, floor: list[float] | None = None, n_test: int = 0) -> str:
    methods = ordered({m for t, m in groups if t == task})
    nll = any("nll" in r for m in methods for r in groups[(task, m)])  # columns when measured
    rows = [
        f"## {task}\n",
        "| method | seeds | W2 (ours) | W2 (paper) | NPE (ours) | NPE (paper) | NFE dopri5 | "
        + ("test NLL | NLL − target's | " if nll else "") + "train s |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if nll else ""),
    ]
    targets: list[float] = []
    missing = False
    for method in methods:
        g = groups[(task, method)]
        nfe = mean_std([r["nfe"] for r in g])
        secs = mean_std([r["train_seconds"] for r in g])
        cells = ""
        if nll and all("nll" in r for r in g):
            cells = (f"{fmt(*mean_std([r['nll'] for r in g]))} | "
                     f"{fmt(*mean_std([r['kl'] for r in g]))} | ")
            targets += [r["nll_target"] for r in g]
        elif nll:
            cells, missing = "— | — | ", True
        rows.append(
            f"| {method} | {len(g)} | {fmt(*mean_std([r['w2'] for r in g]))} | "
            f"{published('w2', method, task)} | {fmt(*mean_std([r['npe'] for r in g]))} | "
            f"{published('npe', method, task)} | {fmt(*nfe, 1)} | {cells}{fmt(*secs, 0)} |"
        )
    if targets:
        rows.append(
            f"\nNLL in nats per point. The target's NLL under its true density on the same "
            f"test points is {sum(targets) / len(targets):.3f} (mean over the seeds' test "
            "sets): an estimate of its entropy, below which no model's expected NLL can go; "
            "NLL − target's estimates KL(target ‖ model)."
        )
    if missing:
        rows.append("\n—: cells recorded before the protocol measured the test NLL.")
    if floor:
        rows.append(
            f"\nSampling floor: W2 between two independent {n_test:,}-point samples of the "
            f"target is {sum(floor) / len(floor):.3f} (draws "
            f"{', '.join(f'{v:.3f}' for v in floor)}); a perfect model scores about this."
        )
    return "\n".join(rows) + "\n"


def _claims(groups) -> str:
    lines = ["## OT-CFM against I-CFM and the published numbers\n"]
    tasks = [t for t in TASKS if (t, "otcfm") in groups]
    if not tasks:
        return lines[0] + "OT-CFM was not run.\n"
    for task in tasks:
        ot = groups[(task, "otcfm")]
        npe_ot = mean_std([r["npe"] for r in ot])
        bits = []
        if (task, "icfm") in groups:
            npe_i = mean_std([r["npe"] for r in groups[(task, "icfm")]])
            word = "lower" if npe_ot[0] < npe_i[0] else "NOT lower"
            bits.append(f"NPE {fmt(*npe_ot)} is {word} than I-CFM's {fmt(*npe_i)}")
        for metric in ("w2", "npe"):
            ref = PUBLISHED[metric]["otcfm"].get(task)
            ours = mean_std([r[metric] for r in ot])
            if ref:
                bound = ref[0] + ref[1]
                word = "within" if ours[0] <= bound else "NOT within"
                bits.append(f"{metric.upper()} {ours[0]:.3f} is {word} the published mean + 1 "
                            f"std ({bound:.3f})")
        lines.append(f"- **{task}**: " + "; ".join(bits) + ".")
    return "\n".join(lines) + "\n"


def _euler_section(groups, p: dict[str, Any]) -> str:
    steps = list(p["euler_steps"])
    lines = [
        "## W2 against the number of Euler steps\n",
        f"Mean over seeds of W2 between {p['curve_points']} pushed test sources and "
        f"{p['curve_points']} target test points (a smaller set than the headline W2, so its "
        f"values sit higher); last column: the fewest steps with W2 <= {RATIO} x the "
        f"{max(steps)}-step value.\n",
        "| task | method | " + " | ".join(str(k) for k in steps) + f" | steps to {RATIO}x |",
        "|---|---|" + "---|" * len(steps) + "---|",
    ]
    needed: dict[tuple[str, str], int] = {}
    for task in [t for t in TASKS if any(k[0] == t for k in groups)]:
        for method in ordered({m for t, m in groups if t == task}):
            curve = mean_curve(groups[(task, method)])
            needed[(task, method)] = steps_needed(curve)
            cells = " | ".join(f"{curve[k]:.3f}" for k in steps)
            lines.append(f"| {task} | {method} | {cells} | {needed[(task, method)]} |")
    lines.append("")
    for task in TASKS:
        if (task, "otcfm") in needed and (task, "icfm") in needed:
            ot, ind = needed[(task, "otcfm")], needed[(task, "icfm")]
            word = "fewer" if ot < ind else ("as many" if ot == ind else "MORE")
            lines.append(f"- {task}: OT-CFM needs {ot} Euler steps, I-CFM {ind} ({word}).")
    return "\n".join(lines) + "\n"


def _torchcfm_table(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> str:
    mine, other = by_cell(ours), by_cell(theirs)
    lines = [
        "## Side by side with TorchCFM\n",
        "Same data tensors, minibatches, seeds, initial weights, MLP, optimizer, budget and "
        "validation schedule; TorchCFM's `ConditionalFlowMatcher` / "
        "`ExactOptimalTransportConditionalFlowMatcher` (torchcfm "
        f"{version('torchcfm')}) compute the loss in a plain loop; both evaluated by our "
        "metric code (100 Euler steps). Time: training loop including validation. "
        "W2 ours - TorchCFM: the mean over seeds of the per-seed difference (same seed, same "
        "data and initial weights) ± its standard error.\n",
        "| task | method | seeds | W2 ours | W2 TorchCFM | W2 ours - TorchCFM | NPE ours | "
        "NPE TorchCFM | train s ours | train s TorchCFM | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for method in ("icfm", "otcfm"):
            a, b = mine.get((task, method)), other.get((task, method))
            if not a or not b:
                continue
            ta, tb = mean_std([r["train_seconds"] for r in a]), mean_std(
                [r["train_seconds"] for r in b]
            )
            lines.append(
                f"| {task} | {method} | {len(b)} | {fmt(*mean_std([r['w2'] for r in a]))} | "
                f"{fmt(*mean_std([r['w2'] for r in b]))} | {_paired_w2(a, b)} | "
                f"{fmt(*mean_std([r['npe'] for r in a]))} | "
                f"{fmt(*mean_std([r['npe'] for r in b]))} | {fmt(*ta, 0)} | {fmt(*tb, 0)} | "
                f"{ta[0] / tb[0]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _paired_w2(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> str:
    """Mean per-seed W2 difference ours - theirs, with its standard error from 2 seeds on."""
    paired = paired_difference({r["seed"]: r["w2"] for r in ours},
                               {r["seed"]: r["w2"] for r in theirs})
    if paired is None:
        return "-"
    mean, se, _ = paired
    return f"{mean:+.3f}" if se is None else f"{mean:+.3f} ± {se:.3f}"


def _figure_links(figures: dict[str, Path], out: Path) -> str:
    lines = ["## Figures\n"]
    for key, path in figures.items():
        rel = path.relative_to(out).as_posix()
        lines.append(f"**{FIGURES[key]}**\n\n![{key}]({rel})\n")
    return "\n".join(lines)


def _notes(meta: dict[str, Any], groups) -> str:
    lines = ["## Notes\n"]
    lines += [f"- {n}" for n in meta.get("notes", [])]
    if any(m == "rf" for _, m in groups):
        lines.append(
            "- rf (2-rectified flow) trains on (x0, ODE(x0)) pairs of the I-CFM cell of the same "
            "seed (dopri5); its train s excludes the I-CFM training, and its validation W2 is "
            "measured against those ODE endpoints, not the true target."
        )
    if any(m == "sbcfm" for _, m in groups):
        lines.append("- SB-CFM is sampled with its probability-flow ODE (the learned drift).")
    if any(m == "sf2m" for _, m in groups):
        lines.append("- SF2M is scored by its probability-flow ODE (the drift network), with "
                     "the registry's coupling and the sigma in the records.")
        lines.append("- SF2M's bridge SDE, dx = [v + (sigma^2/2) s] dt + sigma dW with 100 "
                     "Euler-Maruyama steps from the same source test points, W2: "
                     + _sde_w2s(groups) + ".")
    for failure in meta.get("failed", []):
        lines.append(f"- FAILED: {failure}")
    return "\n".join(lines) + "\n"


def _sde_w2s(groups) -> str:
    parts = []
    for (task, method), g in groups.items():
        values = [r["w2_sde"] for r in g if "w2_sde" in r]
        if method == "sf2m" and values:
            parts.append(f"{task} {fmt(*mean_std(values))}")
    return "; ".join(parts) or "not measured"


# --------------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the figures need matplotlib: pip install 'otcfm[plot]'") from None
    return plt


def write_figures(
    records: Sequence[dict[str, Any]], results: Sequence[CellResult], fig_dir: Path, runs: Path
) -> dict[str, Path]:
    """Draw the page's figures in ``fig_dir``; return their paths by name."""
    groups = by_cell(records)
    tasks = tasks_of(records)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return {
        "w2_euler": _curves_figure(groups, tasks, fig_dir / "w2_euler.png", euler=True),
        "convergence": _curves_figure(groups, tasks, fig_dir / "convergence.png", euler=False),
        "trajectories": _trajectory_grid(groups, tasks, results, fig_dir / "trajectories.png",
                                         runs),
    }


def _curves_figure(groups, tasks: list[str], path: Path, *, euler: bool) -> Path:
    plt = _pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in ordered({m for t, m in groups if t == task}):
            if method == "rf" and not euler:
                continue  # its validation targets are the I-CFM endpoints: not comparable
            g = groups[(task, method)]
            if euler:
                xs = sorted(int(k) for k in g[0]["w2_euler"])
                ys = np.array([[r["w2_euler"][str(k)] for k in xs] for r in g])
            else:
                xs = [s for s, _ in g[0]["val_curve"]]
                ys = np.array([[w for _, w in r["val_curve"]] for r in g if len(r["val_curve"])
                               == len(xs)])
            ax.errorbar(xs, ys.mean(0), yerr=ys.std(0), label=method, marker="o", markersize=3,
                        capsize=2, linewidth=1.2, color=COLORS.get(method))
        ax.set_title(task, fontsize=10)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        if euler:
            ax.set_xscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.set_xlabel("Euler steps")
        else:
            ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    label = "W2 (test subset, mean ± std over seeds)" if euler else "validation W2 (mean ± std)"
    axes[0, 0].set_ylabel(label, fontsize=8)
    return _save(fig, path)


def _trajectory_grid(groups, tasks, results, path: Path, runs: Path) -> Path:
    from otcfm.plots import draw_trajectories

    plt = _pyplot()
    methods = ordered({m for _, m in groups})
    first = {}
    for r in results:
        if r.record is not None and r.cell.library == "otcfm":
            key = (r.cell.task, r.cell.method)
            if key not in first or r.cell.seed < first[key].seed:
                first[key] = r.cell
    fig, axes = plt.subplots(len(methods), len(tasks), figsize=(3.4 * len(tasks),
                             3.4 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            cell = first.get((task, method))
            if cell is None:
                ax.axis("off")
                continue
            saved = torch.load(cell.run_dir(runs) / "trajectories.pt", weights_only=True)
            draw_trajectories(ax, saved["xs"], saved["target"], title=f"{method}: {task}")
    return _save(fig, path, dpi=65)  # methods x tasks panels of dense lines: keep the PNG small


def _save(fig, path: Path, dpi: int = 100) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


# --------------------------------------------------------------------------- README
README_START = "<!-- 2-D numbers: generated from docs/results/two_dim*.json -->"
README_END = "<!-- end of 2-D numbers -->"


def readme_section(out: str | Path) -> str:
    """The README's 2-D results list.

    The README's 2-D results list, every number from the committed records under ``out``
    (docs/results: the 2-D page, its EMA and TorchCFM siblings, performance.json).
    """
    from otcfm.experiments.two_dim_facts import SHORT
    from otcfm.experiments.two_dim_facts import two_dim as facts_of

    out = Path(out)
    records = json.loads((out / RECORDS_FILE).read_text())
    run = json.loads((out / RUN_FILE).read_text())
    f = facts_of(out)
    groups = by_cell(records)
    tasks = [t for t in tasks_of(records) if (t, "otcfm") in groups and (t, "icfm") in groups]
    names = " / ".join(SHORT[t] for t in tasks)

    def means(method: str, metric: str) -> str:
        return " / ".join(f"{mean_std([r[metric] for r in groups[(t, method)]])[0]:.3f}"
                          for t in tasks)

    def steps(method: str) -> list[int]:
        return [steps_needed(mean_curve(groups[(t, method)])) for t in tasks]

    def span(values: list[int]) -> str:
        return str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"

    outside = [SHORT[t] for t in tasks if mean_std([r["w2"] for r in groups[(t, "otcfm")]])[0]
               > sum(PUBLISHED["w2"]["otcfm"][t])]
    pub_w2 = " / ".join(f"{PUBLISHED['w2']['otcfm'][t][0]:.3f}" for t in tasks)
    methods = ordered({m for _, m in groups})
    return "\n".join([
        README_START,
        f"- `docs/results/two_dim.md`: the paper's protocol, {f['steps']} steps of batch "
        f"{f['batch']} per cell, {f['n_seeds']} seeds, methods {', '.join(methods)} "
        f"({f['n_cells']} cells; {run['date']}). OT-CFM used `ApproxOT(tol=0.01)`, whose "
        "certified bound is on the coupling gap (cost - optimal) / (independent cost - "
        "optimal), not on the cost relative to the optimum; on the coupling benchmark's batches "
        f"its measured gaps were {f['approx_gaps']} (cost {f['approx_excess']} above the "
        f"optimum). The protocol's wall time: {f['wall_statement']}; the cells' "
        f"recorded train + eval times sum to {f['cell_hours']} CPU-hours "
        f"(SB-CFM: {f['sbcfm_share']}).",
        f"  - OT-CFM's NPE is below I-CFM's on every task: {means('otcfm', 'npe')} against "
        f"{means('icfm', 'npe')} on {names}.",
        f"  - It reaches {RATIO}x its 100-step W2 with {span(steps('otcfm'))} Euler steps, "
        f"where I-CFM needs {span(steps('icfm'))}.",
        f"  - Its W2 is {means('otcfm', 'w2')}; the paper has {pub_w2}. W2 is outside the "
        f"published mean + 1 std on {', '.join(outside) or 'no task'}; the page says what is "
        "known. On moons->8gaussians two independent test-size samples of the target are "
        f"already {f['floor_moons']} apart in W2 (the page prints this floor for every task). "
        f"Weights tested: {f['checkpoint']}.",
        f"  - Across seeds its W2 on moons->8gaussians varies by a std of {f['otcfm_moons_std']} "
        f"when each seed draws its own data (the paper: {f['published_w2_moons']});"
        f" with one data draw for {f['one_draw_n']} seeds (`--data-seed {f['one_draw_seed']}`, "
        f"`docs/results/two_dim_fixed_data/`) by {f['one_draw_moons_std']}, "
        f"{f['one_draw_verdict']}: the spread is the data draw's, not the training's.",
        f"  - At equal budget ({f['tc_steps']} steps, {f['tc_n_seeds']} seeds, "
        "`docs/results/two_dim_torchcfm/`), our OT-CFM (`ApproxOT`) trained in "
        f"{f['tc_time_ratio']} TorchCFM's time (mean per task). Paired by seed, ours minus "
        "TorchCFM in W2 is "
        + ", ".join(f"{f['tc_paired_' + t]} ({SHORT[t]})" for t in TASKS
                    if "tc_paired_" + t in f)
        + f"; on moons->8gaussians seeds 42-46 alone {f['tc_paired_moons_first']}, seeds 47-51 "
        f"alone {f['tc_paired_moons_second']}.",
        README_END,
    ])
