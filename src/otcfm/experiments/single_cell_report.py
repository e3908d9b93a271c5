"""The single-cell benchmark's results: summary over seeds, the markdown page and figures.

:func:`summarize` turns the per-(method, left-out time, seed) records into mean ± std over
seeds of the per-seed average over left-out times; :func:`markdown` writes the page (paired
comparisons of OT-CFM with each other method, published Table 4 numbers for the real sets);
:func:`write_figures` draws the populations with predicted paths and W1 per left-out time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from otcfm.data.timeseries import TimeSeries
from otcfm.experiments._published import mean_std_table, section
from otcfm.experiments._stats import paired_difference
from otcfm.train.datasets import stream
from otcfm.trajectory.predict import interpolation_baseline, predict_left_out, trajectories

BASELINE = "linear-ot"
LABELS = {"otcfm": "OT-CFM", "icfm": "I-CFM", "sbcfm": "SB-CFM", "sf2m": "SF2M (ODE)",
          "sf2m-sde": "SF2M (SDE)", "sf2m-sde-tapered": "SF2M (SDE, tapered g)",
          BASELINE: "linear interp. (OT)"}
# the paper's W1 (mean, std) per real set and method: published.json
_SINGLE_CELL = section("single_cell")
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = mean_std_table(_SINGLE_CELL["w1"])
PUBLISHED_NAMES: dict[str, str] = dict(_SINGLE_CELL["names"])


def method_label(entry: str) -> str:
    """A method entry's name without its sampler: 'sf2m:0.1' -> 'SF2M (σ=0.1)'."""
    return label(entry).replace(" (ODE)", "")


def label(entry: str) -> str:
    """Display name of a method entry: 'sbcfm' -> 'SB-CFM', 'sbcfm:0.1' -> 'SB-CFM (σ=0.1)'."""
    base, _, sigma = entry.partition(":")
    return LABELS.get(base, base) + (f" (σ={sigma})" if sigma else "")


# --------------------------------------------------------------------------- summary
def summarize(
    records: list[dict[str, Any]], order: list[str] | None = None
) -> dict[str, Any]:
    """Summarise records per method: mean +- std over seeds and values per left-out time.

    Per method: mean +- std over seeds of the per-seed average over left-out times, and
    per left-out time the list of values over seeds. Methods in ``order`` first, then in
    order of appearance.
    """
    out: dict[str, Any] = {}
    seen = list(dict.fromkeys(r["method"] for r in records))
    methods = [m for m in (order or []) if m in seen] + [m for m in seen if m not in (order or [])]
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        entry: dict[str, Any] = {}
        for key in ("w1", "mmd", "w1_truth"):
            if not all(key in r for r in rows):
                continue
            seeds = sorted({r["seed"] for r in rows})
            per_seed = [statistics.fmean(r[key] for r in rows if r["seed"] == s) for s in seeds]
            entry[key] = {
                "mean": statistics.fmean(per_seed),
                "std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": dict(zip(map(str, seeds), per_seed, strict=True)),
                "per_left_out": {
                    str(k): [r[key] for r in rows if r["left_out"] == k]
                    for k in sorted({r["left_out"] for r in rows})
                },
            }
        out[m] = entry
    return out


def pm(entry: dict[str, Any] | None, fmt: str = ".3f") -> str:
    """Format a summary entry as ``mean ± std`` with ``fmt``; ``-`` when there is none."""
    if not entry:
        return "-"
    return f"{entry['mean']:{fmt}} ± {entry['std']:{fmt}}"


def markdown(report: dict[str, Any]) -> str:
    """The markdown page of a single-cell report."""
    summary, ts_info = report["summary"], report["data"]
    pub = report.get("published")
    synthetic = report["data"]["path"] == "synthetic"
    head = ["method", "W1 (held-out cells)", "MMD"]
    if synthetic:
        head.append("W1 (fresh ground truth)")
    if pub:
        head.append(f"published W1 ({PUBLISHED_NAMES[pub]})")
    rows = []
    for m, entry in summary.items():
        cells = [label(m), pm(entry.get("w1")), pm(entry.get("mmd"), ".4f")]
        if synthetic:
            cells.append(pm(entry.get("w1_truth")))
        if pub:
            p = PUBLISHED[pub].get(m)
            cells.append(f"{p[0]:.3f} ± {p[1]:.3f}" if p else "-")
        rows.append("| " + " | ".join(cells) + " |")
    times = sorted({int(k) for e in summary.values() for k in e["w1"]["per_left_out"]})
    names = ts_info["time_names"]
    per = ["| method | " + " | ".join(f"t={names[k]}" for k in times) + " |",
           "|---" * (len(times) + 1) + "|"]
    for m, entry in summary.items():
        vals = []
        for k in times:
            v = entry["w1"]["per_left_out"].get(str(k), [])
            sd = statistics.pstdev(v) if len(v) > 1 else 0.0
            vals.append(f"{statistics.fmean(v):.3f} ± {sd:.3f}" if v else "-")
        per.append(f"| {label(m)} | " + " | ".join(vals) + " |")
    verdict = _verdict(summary, synthetic)
    if report.get("truth_floor"):
        fl = report["truth_floor"]
        verdict += (
            "- Sampling floor: the held-out cells themselves are at W1 "
            + ", ".join(f"{fl[str(k)]:.3f} (t={names[k]})" for k in times)
            + " from fresh ground-truth cells (mean "
            + f"{statistics.fmean(fl[str(k)] for k in times):.3f}); no prediction can be "
            "expected to score much below it.\n"
        )
    ref = "\n".join(
        f"- {PUBLISHED_NAMES[s]}: " + ", ".join(
            f"{LABELS[m]} {v[0]:.3f} ± {v[1]:.3f}" for m, v in PUBLISHED[s].items())
        for s in PUBLISHED
    )
    data_line = (
        "the synthetic branching time course (`otcfm.data.synthetic_cells`: a 3-D latent SDE "
        f"in a bifurcating potential observed in {ts_info['obs_dim']} noisy features)"
        if synthetic else f"`{ts_info['path']}`"
    )
    return (
        "# Single-cell trajectory inference: leave one time point out\n\n"
        f"Data: {data_line}; {ts_info['cells']} cells at times {', '.join(names)} "
        f"(counts {', '.join(map(str, ts_info['counts']))}); representation: "
        f"{ts_info['preprocessing']}.\n\n"
        "Protocol (docs/reference.md §6): for each intermediate time k, one MLP (3x64, SELU) is "
        "trained on all other populations (interval k uses time t + k; the skip pair "
        "(k-1, k+1) uses 2t + (k-1) and target u/2), AdamW lr 1e-3 / wd 1e-5, batch 128 cells "
        f"per time, sigma {_sigmas(report)}, {report['steps']} steps; every cell of k-1 is "
        f"pushed one unit forward with {report['ode_steps']} Euler steps and compared with "
        "the true cells at k (exact W1; MMD with the RBF mixture of docs/reference.md §3). "
        f"Mean ± std over {report['seeds']} seed(s) of the average over left-out times "
        f"{', '.join(names[k] for k in times)}. The baseline pairs the cells of k-1 and k+1 "
        "by exact OT and takes the midpoints.\n\n"
        "| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|\n" + "\n".join(rows)
        + "\n\nW1 per left-out time (mean ± std over seeds):\n\n" + "\n".join(per) + "\n\n"
        + verdict
        + "\n![populations and trajectories](single_cell/time_course.png)\n\n"
        "![W1 per left-out time](single_cell/w1_per_time.png)\n\n"
        "Published W1 on the real sets (paper Table 4, docs/reference.md §6), for reference"
        + (" (not comparable with the synthetic set)" if synthetic else "") + ":\n\n"
        + ref + "\n\n"
        f"Command: `{report['command']}`  \n"
        f"Machine: {report['machine']}; {report['jobs']} worker process(es); wall time "
        f"{report['wall_seconds']:.0f} s; {report['date']}.  \n"
        "Rendered from `single_cell.json` by `otcfm bench single-cell --report-only --out DIR`, "
        "DIR the folder of this page (runs nothing).\n"
    )


def _sigmas(report: dict[str, Any]) -> str:
    parts = [f"{s:g} ({method_label(m)})" for m, s in report["sigmas"].items()]
    text = ", ".join(parts) + " (SB-CFM: entropic OT with reg 2 sigma^2"
    sb = {s for m, s in report["sigmas"].items() if m.partition(":")[0] == "sbcfm"}
    if len(sb) > 1:  # say why there are several SB-CFM rows
        text += ("; sigma 1 is SB-CFM's preset and the published row's setting: the "
                 "reference runner's model configs for this protocol (3x64 SELU, AdamW, a "
                 "left-out time point) set sigma 0.1 for I-CFM and OT-CFM, the value "
                 "docs/reference.md §6 lists, and sigma 1 with a Sinkhorn plan for SB-CFM; at "
                 "0.1 the plan (reg 0.02 on standardised cells) is close to the exact one, "
                 "so that SB-CFM differs from OT-CFM mainly in its Brownian-bridge noise, "
                 "at most 0.05")
    return text + ")"


def _verdict(summary: dict[str, Any], synthetic: bool) -> str:
    if "otcfm" not in summary:
        return ""
    ot = summary["otcfm"]["w1"]["mean"]
    lines = []
    for other in summary:
        if other != "otcfm":
            v = summary[other]["w1"]["mean"]
            word = "lower" if ot < v else "NOT lower"
            lines.append(f"- OT-CFM's mean W1 ({ot:.3f}) is {word} than {label(other)}'s "
                         f"({v:.3f}){_paired(summary['otcfm']['w1'], summary[other]['w1'])}.")
    for m in summary:  # an SF2M fit along its SDE against the same fits' ODE
        base, sep, sigma = m.partition(":")
        ode_entry = f"{base.partition('-sde')[0]}{sep}{sigma}"
        if "-sde" in base and ode_entry in summary:
            ode = summary[ode_entry]["w1"]
            paired = paired_difference(summary[m]["w1"].get("per_seed", {}),
                                       ode.get("per_seed", {}))
            if paired is not None and paired[1] is not None:
                mean, se, n = paired
                worse = mean > 2 * se
                lines.append(
                    f"- {label(m)} against the same fits' ODE: W1 {mean:+.3f} ± {se:.3f} "
                    f"(paired over {n} seeds), {'outside' if abs(mean) > 2 * se else 'within'} "
                    "the seed noise" + ("; a likely cause: the learned score, whose "
                                        "shrinkage docs/results/gaussian_sb.md measures." if worse
                                        else "."))
    if synthetic and BASELINE in summary and "w1_truth" in summary["otcfm"]:
        a, b = summary["otcfm"]["w1_truth"]["mean"], summary[BASELINE]["w1_truth"]["mean"]
        word = "closer to" if a < b else "NOT closer to"
        lines.append(f"- Against fresh ground-truth cells, OT-CFM's predictions ({a:.3f}) are "
                     f"{word} the truth than the interpolation baseline's ({b:.3f}).")
    return "\n".join(lines) + "\n"


def _paired(ours: dict[str, Any], other: dict[str, Any]) -> str:
    """The paired-over-seeds remark of a comparison, or an empty string.

    '; paired over seeds ...': the per-seed difference, its standard error and whether it
    stands out of the seed noise (``|mean|`` > 2 SE); empty with fewer than 2 common seeds.
    """
    paired = paired_difference(ours.get("per_seed", {}), other.get("per_seed", {}))
    if paired is None or paired[1] is None:
        return ""
    mean, se, n = paired
    verdict = "outside" if abs(mean) > 2 * se else "within"
    return (f"; paired over {n} seeds, OT-CFM minus it is {mean:+.3f} ± {se:.3f} "
            f"(standard error), {verdict} the seed noise")


# --------------------------------------------------------------------------- figures
def write_figures(out: Path, ts: TimeSeries, k: int, models: dict[str, torch.nn.Module],
                  summary: dict[str, Any], ode_steps: int) -> None:
    """Draw the time-course figure and the W1 per held-out time.

    The time-course figure (paths and predictions of ``models``, eval mode, by their ODE)
    and the W1 per held-out time.
    """
    from otcfm.trajectory.plots import Panel, View2D, plot_time_course, plot_w1_per_time

    g = stream(0, "figure")
    start = ts.at(0)
    cells = start[torch.randperm(start.shape[0], generator=g)[:60]]
    grid = torch.linspace(0, ts.n_times - 1, 10 * (ts.n_times - 1) + 1)[1:].tolist()
    panels = []
    for m, model in models.items():
        paths = trajectories(model, cells, 0.0, grid, steps_per_unit=ode_steps)
        pred = predict_left_out(model, ts, k, steps_per_unit=ode_steps)
        panels.append(Panel(label(m), paths.xs, pred))
    panels.append(Panel(LABELS[BASELINE], None, interpolation_baseline(ts, k, generator=g)))
    plot_time_course(
        ts, panels, out / "time_course.png", left_out=k, view=View2D.first_two(ts.dim),
        title=f"time {ts.time_names[k]} held out (black); predictions in red; grey: paths of "
              "60 cells from the first time",
    )
    table = {label(m): {int(key): v for key, v in e["w1"]["per_left_out"].items()}
             for m, e in summary.items()}
    plot_w1_per_time(table, out / "w1_per_time.png", time_names=ts.time_names,
                     title="W1 to the held-out cells (mean ± std over seeds)")


def render_page(out: str | Path) -> str:
    """``OUT/single_cell.md`` from the record ``OUT/single_cell.json`` alone."""
    path = Path(out) / "single_cell.json"
    if not path.is_file():
        raise ValueError(f"--report-only needs {path} (written by a run of otcfm bench "
                         "single-cell with this --out)")
    return markdown(json.loads(path.read_text()))


README_START = "<!-- single-cell numbers: generated from docs/results/single_cell.json -->"
README_END = "<!-- end of single-cell numbers -->"


def readme_section(report: dict[str, Any]) -> str:
    """The README's single-cell sentence, every number from the record."""
    summary = report["summary"]
    w1 = ", ".join(f"{label(m)} {summary[m]['w1']['mean']:.3f}" for m in summary)
    ties = []
    for m in summary:
        if m in ("otcfm", BASELINE):
            continue
        got = paired_difference(summary["otcfm"]["w1"]["per_seed"], summary[m]["w1"]["per_seed"])
        if got and got[1] is not None:
            ties.append(f"{label(m)} {got[0]:+.3f} ± {got[1]:.3f}")
    return "\n".join([
        README_START,
        "Leave-one-time-out W1 (mean over left-out times "
        f"{', '.join(map(str, report['left_outs']))} and {report['seeds']} seeds, "
        f"{report['steps']} steps): {w1}. OT-CFM minus each "
        f"method, paired over seeds (± standard error): {'; '.join(ties)}. The whole protocol "
        f"({len(report['methods'])} methods: "
        f"{', '.join(map(method_label, report['methods']))}) took "
        f"{report['wall_seconds']:.0f} s with `--jobs {report['jobs']}` ({report['machine']}, "
        f"{report['date']}; record `docs/results/single_cell.json`).",
        README_END,
    ])
