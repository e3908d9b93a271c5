"""The image benchmark's outputs: records, page, figures and README block.

The image benchmark's outputs: ``images.json``, the page ``images.md``, its figures and the
README block; every number on the page is computed from ``images.json`` (runs nothing).

``images.json``: ``{"runs": {dataset: meta}, "cells": [per cell: times, guidance sweep,
validation curve], "records": [one per evaluation: dataset, method, coupling, seed, solver,
steps, nfe, fd, (guidance, accuracy), train_seconds, ...]}``. A run of one data set replaces
that data set's entries and keeps the others, so digits and Fashion-MNIST share one page.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from otcfm.experiments._cells import CellResult
from otcfm.experiments._stats import paired_difference
from otcfm.experiments.images import (
    DATASETS,
    LABELS,
    METHODS,
    Cell,
    cell_summaries,
    flat_records,
    real_fd,
)
from otcfm.train.checkpoint import write_text_atomic

RECORDS_FILE = "images.json"
PAGE_FILE = "images.md"
FIGURES = "images"
README_START = "<!-- image numbers: generated from docs/results/images.json -->"
README_END = "<!-- end of image numbers -->"
FD_NAME = {"digits": "FD (digits features)", "fashion-mnist": "FD (Fashion-MNIST features)"}
TITLE = {"digits": "Digits (8x8, scikit-learn)", "fashion-mnist": "Fashion-MNIST (28x28)"}


# --------------------------------------------------------------------------- writing
def likelihood_table(cells: list[dict], p: dict[str, Any]) -> list[str]:
    """Table of bits per dimension of the reference images under each method's flow.

    Bits per dimension of the reference images under each method's flow (the cells that
    measured it), mean ± SE over seeds, beside the mean within-seed SE over the images.
    """
    scored = [c for c in cells if "likelihood" in c]
    if not scored:
        return ["Bits per dimension: not measured (these cells ran before the benchmark "
                "scored likelihoods).", ""]
    n = scored[0]["likelihood"]["nll_n"]
    lines = [
        f"### Bits per dimension of {n:,} reference images, mean ± SE over seeds", "",
        "log p1(x) by the change of variables (`otcfm.likelihood`): Hutchinson's divergence "
        f"with one Rademacher probe per image, dopri5 at atol = rtol = {p['tol']:g}, uniform "
        f"dequantization of pixels of {scored[0]['likelihood']['levels']} evenly spaced levels "
        "(`bits_per_dim`; the flows trained on the pixel values themselves, without "
        "dequantization noise); the class-conditional model is "
        "scored with its null class (its unconditional density). \"within-seed SE\": the "
        "standard error over the images of one seed (the images' spread and the probes' noise "
        "together), averaged over seeds.", "",
        "| method | bits/dim | within-seed SE | NLL (nats) | NFE |", "|---|---:|---:|---:|---:|"]
    for method in METHODS:
        row = [c["likelihood"] for c in scored if c["method"] == method]
        if not row:
            continue
        bpd = _pm(*mean_se([r["bits_per_dim"] for r in row]), digits=3)
        within = statistics.fmean(r["bits_per_dim_se"] for r in row)
        nll = _pm(*mean_se([r["nll"] for r in row]), digits=1)
        nfe = sorted({r["nll_nfe"] for r in row})
        lines.append(f"| {LABELS[method]} | {bpd} | {within:.3f} | {nll} | "
                     f"{nfe[0] if len(nfe) == 1 else f'{nfe[0]}-{nfe[-1]}'} |")
    return lines + [""]


def write_outputs(results: Sequence[CellResult], out: str | Path, meta: dict[str, Any],
                  runs: str | Path) -> list[Path]:
    """Merge this run's records into ``OUT/images.json``; write figures and the page."""
    out = Path(out)
    dataset = meta["protocol"]["dataset"]
    records = [r.record for r in results if r.record is not None]
    path = out / RECORDS_FILE
    data = (json.loads(path.read_text()) if path.is_file()
            else {"runs": {}, "cells": [], "records": []})
    data["runs"][dataset] = meta
    data["runs"] = {k: data["runs"][k] for k in DATASETS if k in data["runs"]}
    data["cells"] = [c for c in data["cells"] if c["dataset"] != dataset] + cell_summaries(records)
    data["records"] = ([r for r in data["records"] if r["dataset"] != dataset]
                       + flat_records(records))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(data, indent=1) + "\n", path)
    written = [add_real_fd(out)]
    if records:
        written += write_figures(data, dataset, out / FIGURES, Path(runs))
    written.append(write_text_atomic(render_page(out), out / PAGE_FILE))
    return written


def add_real_fd(out: str | Path) -> Path:
    """Add the FD of real training images to ``OUT/images.json`` where it is missing.

    Add to ``OUT/images.json`` the FD of real training images against the reference
    (:func:`~otcfm.experiments.images.real_fd`, as many as the samples of an evaluation) for
    each data set that lacks it or has it for another sample count.
    """
    path = Path(out) / RECORDS_FILE
    data = json.loads(path.read_text())
    real = data.setdefault("real_fd", {})
    for dataset, meta in data["runs"].items():
        n = meta["protocol"]["n_samples"]
        if real.get(dataset, {}).get("n_asked") != n:
            real[dataset] = {**real_fd(dataset, n), "n_asked": n}
    return write_text_atomic(json.dumps(data, indent=1) + "\n", path)


def write_figures(data: dict[str, Any], dataset: str, folder: Path, runs: Path) -> list[Path]:
    """FD against NFE, and sample grids of the first seed's cells (from RUNS)."""
    from otcfm.plots import _plt, _save, plot_image_grids

    written = []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, w, rows in curves(data["records"], dataset):
        euler = [(r["nfe"], r["fd"]) for r in rows if r["solver"] == "euler"]
        dopri = [(r["nfe"], r["fd"]) for r in rows if r["solver"] == "dopri5"]
        label = LABELS[method] + (f", {w}" if w is not None else "")
        line, = ax.plot(*zip(*euler, strict=True), marker="o", ms=3, label=label)
        if dopri:
            ax.plot(*zip(*dopri, strict=True), marker="*", ms=10, ls="", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (Euler steps; star: dopri5)")
    ax.set_ylabel(FD_NAME[dataset] + ", mean over seeds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    written.append(_save(fig, folder / f"{dataset}_fd_nfe.png"))
    plt.close(fig)
    seeds = sorted({r["seed"] for r in data["records"] if r["dataset"] == dataset})
    for method in METHODS:
        grids_path = Cell(dataset, method, seeds[0]).run_dir(runs) / "grids.pt"
        if not grids_path.is_file():
            continue
        grids = torch.load(grids_path, weights_only=True)
        panels = {}
        for key, images in grids.items():
            images = images.float()
            if key.startswith("w"):  # conditional: "w<scale>-<solver>"
                w, _, solver = key[1:].partition("-")
                if solver in ("euler2", "euler100", "dopri5"):
                    panels[f"w = {w}, {_solver_name(solver)}"] = images
            else:
                panels[_solver_name(key)] = images
        title = f"{LABELS[method]}, seed {seeds[0]}"
        if method == "otcfm-cond":
            title += " (column k: class k)"
        written.append(plot_image_grids(panels, folder / f"{dataset}_{method}.png", title))
        plt.close("all")
    return written


def _solver_name(key: str) -> str:
    return "dopri5" if key == "dopri5" else f"Euler {key.removeprefix('euler')}"


# --------------------------------------------------------------------------- statistics
def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (None for a single value) of ``values``."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return mean, se


def variants(records: list[dict], dataset: str) -> list[tuple[str, float | None]]:
    """(method, guidance or None) in table order; the conditional method's w = 0 first."""
    out = []
    for m in METHODS:
        rows = [r for r in records if r["dataset"] == dataset and r["method"] == m]
        if not rows:
            continue
        if "guidance" in rows[0]:
            ws = sorted({r["guidance"] for r in rows})
            out.append((m, 0.0))
            if len(ws) > 1 or ws != [0.0]:
                out.append((m, "chosen"))
        else:
            out.append((m, None))
    return out


def select(records: list[dict], dataset: str, method: str, w: Any) -> list[dict]:
    """Records of ``dataset`` and ``method`` at guidance ``w``.

    ``w`` None: all of them; 0.0: the unguided ones; else each seed's chosen w.
    """
    rows = [r for r in records if r["dataset"] == dataset and r["method"] == method]
    if w is None:
        return rows
    if w == 0.0:
        return [r for r in rows if r["guidance"] == 0.0]
    # the chosen w of each seed (w = 0 when the sweep chose 0)
    chosen = {}
    for r in rows:
        chosen[r["seed"]] = max(chosen.get(r["seed"], 0.0), r["guidance"])
    return [r for r in rows if r["guidance"] == chosen[r["seed"]]]


def by_solver(rows: list[dict]) -> dict[tuple[str, int | None], dict[int, dict]]:
    """(solver, steps) -> seed -> record."""
    out: dict[tuple[str, int | None], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        out[(r["solver"], r["steps"])][r["seed"]] = r
    return out


def solver_keys(records: list[dict], dataset: str) -> list[tuple[str, int | None]]:
    """The (solver, steps) pairs evaluated on ``dataset``, Euler by increasing steps first."""
    keys = {(r["solver"], r["steps"]) for r in records if r["dataset"] == dataset}
    return sorted(keys, key=lambda k: (k[0] != "euler", k[1] or 0))


def curves(records: list[dict], dataset: str):
    """(method, guidance label or None, mean rows sorted by NFE) per variant."""
    for method, w in variants(records, dataset):
        rows = select(records, dataset, method, w)
        mean_rows = []
        for (solver, steps), seeds in sorted(by_solver(rows).items(),
                                             key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            mean_rows.append({"solver": solver, "steps": steps,
                              "nfe": statistics.fmean(r["nfe"] for r in seeds.values()),
                              "fd": statistics.fmean(r["fd"] for r in seeds.values())})
        label = None if w is None else _variant_name(records, dataset, method, w).split(", ")[-1]
        yield method, label, sorted(mean_rows, key=lambda r: r["nfe"])


def acceptance(records: list[dict], dataset: str) -> dict[str, Any] | None:
    """OT-CFM (exact) against I-CFM at Euler 2 and 100 steps: means, SEs, differences."""
    ot = by_solver(select(records, dataset, "otcfm", None))
    ic = by_solver(select(records, dataset, "icfm", None))
    out: dict[str, Any] = {}
    for steps in (2, 100):
        a, b = ot.get(("euler", steps)), ic.get(("euler", steps))
        if not a or not b:
            return None
        ma, sa = mean_se([r["fd"] for r in a.values()])
        mb, sb = mean_se([r["fd"] for r in b.values()])
        se = math.hypot(sa, sb) if sa is not None and sb is not None else None
        paired = paired_difference({s: r["fd"] for s, r in a.items()},
                                   {s: r["fd"] for s, r in b.items()})
        out[steps] = {"ot": ma, "ot_se": sa, "ic": mb, "ic_se": sb, "diff": mb - ma, "se": se,
                      "n": min(len(a), len(b)), "paired": paired}
    two, hundred = out[2], out[100]
    out["pass_2"] = two["se"] is not None and two["diff"] > 2 * two["se"]
    within10 = abs(hundred["ot"] - hundred["ic"]) <= 0.1 * hundred["ic"]
    within2se = hundred["se"] is not None and abs(hundred["diff"]) <= 2 * hundred["se"]
    out["pass_100"] = within10 or within2se
    out["within10"], out["within2se"] = within10, within2se
    return out


def _pm(mean: float, se: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def acceptance_line(acc: dict[str, Any]) -> str:
    """The sentence on the acceptance test of OT-CFM against I-CFM at 2 and 100 Euler steps."""
    two, hundred = acc[2], acc[100]

    def units(d: dict, sign: int = 1) -> str:
        return "n/a (one seed)" if not d["se"] else f"{sign * d['diff'] / d['se']:+.1f} SE"

    ratio = hundred["ot"] / hundred["ic"]
    return (
        f"OT-CFM vs I-CFM ({two['n']} seeds): at 2 Euler steps FD {_pm(two['ot'], two['ot_se'])}"
        f" vs {_pm(two['ic'], two['ic_se'])}, OT-CFM lower by {two['diff']:.2f} "
        f"= {units(two)} (needs > 2 SE: **{'pass' if acc['pass_2'] else 'fail'}**); at 100 "
        f"steps {_pm(hundred['ot'], hundred['ot_se'])} vs {_pm(hundred['ic'], hundred['ic_se'])}"
        f", ratio {ratio:.3f}, difference (OT-CFM - I-CFM) {-hundred['diff']:+.2f} = "
        f"{units(hundred, -1)} (needs "
        f"within 10% or 2 SE: **{'pass' if acc['pass_100'] else 'fail'}**)."
    )


# --------------------------------------------------------------------------- page
def render_page(out: str | Path) -> str:
    """``OUT/images.md`` from ``OUT/images.json`` (links the figures that are there)."""
    out = Path(out)
    path = out / RECORDS_FILE
    if not path.is_file():
        raise ValueError(f"no {path}: run otcfm bench images with this --out first")
    data = json.loads(path.read_text())
    lines = [
        "# Images: CPU benchmark (digits, Fashion-MNIST)",
        "",
        "Generated by `otcfm bench images` (`src/otcfm/experiments/images.py`) from "
        "`images.json` beside this page. FD is the Fréchet distance (squared, as FID reports it) "
        "between the 64-d penultimate features of a small classifier trained in this repository "
        "(`src/otcfm/experiments/feature_nets/`) of the generated images and of the reference "
        "images: \"FD (digits features)\" / \"FD (Fashion-MNIST features)\", **not FID** and not "
        "comparable with the paper's CIFAR-10 numbers. Mean ± standard error over seeds "
        "(sample std / sqrt(n)); every method and solver of a seed starts from the same noise. "
        "NFE: model evaluations as counted by the solver (guided sampling evaluates the "
        "conditional and the unconditional velocity in one call on a doubled batch and counts "
        "it once).",
        "",
    ]
    for dataset in data["runs"]:
        lines += dataset_section(data, dataset, out)
    return "\n".join(lines).rstrip() + "\n"


def dataset_section(data: dict[str, Any], dataset: str, out: Path) -> list[str]:
    """The markdown lines of the page's section on ``dataset``."""
    meta = data["runs"][dataset]
    p = meta["protocol"]
    records = [r for r in data["records"] if r["dataset"] == dataset]
    cells = [c for c in data["cells"] if c["dataset"] == dataset]
    fd = FD_NAME[dataset]
    lines = [f"## {TITLE[dataset]}", ""]
    if not records:
        return lines + ["No finished cell.", ""]
    ref = cells[0]
    cpu_seconds = sum(c["train_seconds"] + c["eval_seconds"] for c in cells)
    lines += [
        f"- Command: `{meta['command']}` ({meta['date']}); wall time "
        f"{meta['wall_seconds'] / 60:.1f} min with {meta['jobs']} job(s)"
        + (f", {meta['cached_cells']} cell(s) reused from the cache" if meta["cached_cells"]
           else "") + f"; the cells' train + eval times sum to {cpu_seconds / 60:.1f} min.",
        f"- Machine: {meta['machine']} (shared with other work while it ran).",
        f"- Seeds {', '.join(str(s) for s in meta['seeds'])}; model: MLP on the flattened "
        f"pixels, {p['depth']} hidden layers of width {p['width']} (SELU, time input; the "
        f"conditional model adds a label embedding with a null class); {p['steps']:,} AdamW "
        f"steps of batch {p['batch_size']}, lr {p['lr']:g}, grad-norm clip {p['grad_clip']:g}, "
        f"EMA {p['ema']:g} (samples from the EMA weights); sigma {p['sigma']:g} for the I-CFM "
        f"and OT-CFM paths, sigma_min {p.get('fm_sigma', 0):g} for FM's; {p['n_val']:,} "
        "training images held out for the validation loss "
        "and the guidance sweep.",
        f"- FD reference: {ref['reference']}. {p['n_samples']:,} generated images per "
        f"evaluation (conditional: balanced labels). Feature network: held-out accuracy "
        f"{ref['feature_net_accuracy']:.3f} on real images.",
        f"- Solvers: Euler with {', '.join(str(k) for k in p['euler_steps'])} steps; dopri5 "
        f"with atol = rtol = {p['tol']:g}.",
        "",
    ]
    real = data.get("real_fd", {}).get(dataset)
    if real is not None:
        lines += [f"Real images for scale: {real['n']:,} training images score {fd} "
                  f"{real['fd']:.2f} against the reference (the floor of this sample size and "
                  "the train/reference gap).", ""]
    acc = acceptance(records, dataset)
    if acc is not None:
        head = "Acceptance (issue 16, digits)" if dataset == "digits" else "Same comparison"
        lines += [f"**{head}.** " + acceptance_line(acc), ""]
    keys = solver_keys(records, dataset)
    lines += [f"### {fd}, mean ± SE", "",
              "| method | " + " | ".join(_key_name(k) for k in keys) + " |",
              "|---|" + "---:|" * len(keys)]
    for method, w in variants(records, dataset):
        rows = by_solver(select(records, dataset, method, w))
        cells_text = []
        for k in keys:
            seeds = rows.get(k, {})
            if not seeds:
                cells_text.append("")
                continue
            m, se = mean_se([r["fd"] for r in seeds.values()])
            text = _pm(m, se)
            if k[0] != "euler":
                text += f" (NFE {_nfe(seeds)})"
            cells_text.append(text)
        lines.append(f"| {_variant_name(records, dataset, method, w)} | "
                     + " | ".join(cells_text) + " |")
    lines.append("")
    cond = [(m, w) for m, w in variants(records, dataset) if w is not None]
    if cond:
        lines += ["### Class accuracy of the conditional samples (feature network), mean ± SE",
                  "", "| guidance | " + " | ".join(_key_name(k) for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for method, w in cond:
            rows = by_solver(select(records, dataset, method, w))
            vals = []
            for k in keys:
                seeds = rows.get(k, {})
                vals.append(_pm(*mean_se([r["accuracy"] for r in seeds.values()]), digits=3)
                            if seeds else "")
            lines.append(f"| {_variant_name(records, dataset, method, w)} | "
                         + " | ".join(vals) + " |")
        lines.append("")
        sweeps = [c for c in cells if "guidance_sweep" in c]
        if sweeps:
            ws = list(sweeps[0]["guidance_sweep"])
            lines += [
                f"Guidance sweep (w by the lowest FD of {p['sweep_samples']:,} samples, Euler "
                f"{p['sweep_steps']} steps, against the cell's {p['n_val']:,} held-out "
                "validation images, not the FD reference; the \"chosen w\" rows above use each "
                "seed's own choice):", "",
                "| seed | " + " | ".join(f"w = {w}" for w in ws) + " | chosen w |",
                "|---|" + "---:|" * (len(ws) + 1)]
            for c in sorted(sweeps, key=lambda c: c["seed"]):
                lines.append(f"| {c['seed']} | " + " | ".join(
                    f"{c['guidance_sweep'][w]:.2f}" for w in ws) + f" | {c['guidance_chosen']:g} |")
            lines.append("")
    lines += likelihood_table(cells, p)
    lines += _figures(dataset, out)
    shares = all("coupling_share_mean" in c for c in cells)
    lines += ["### Wall time per cell (seconds: train / evaluation)", "",
              "The cores were shared with other work while the cells ran: the times are upper "
              "bounds" + ("; the coupling's share is that of the training time, averaged over "
                          "the logging intervals and seeds." if shares else "."), "",
              "| method | " + " | ".join(f"seed {s}" for s in meta["seeds"])
              + (" | coupling share |" if shares else " |"),
              "|---|" + "---:|" * (len(meta["seeds"]) + shares)]
    for method in METHODS:
        row = {c["seed"]: c for c in cells if c["method"] == method}
        if row:
            share = (f" {statistics.fmean(c['coupling_share_mean'] for c in row.values()):.0%} |"
                     if shares else "")
            lines.append(f"| {LABELS[method]} | " + " | ".join(
                f"{row[s]['train_seconds']:.0f} / {row[s]['eval_seconds']:.0f}" if s in row
                else "" for s in meta["seeds"]) + " |" + share)
    lines.append("")
    lines += ["### What falls short", ""] + [f"- {s}" for s in shortfalls(data, dataset, acc)]
    lines.append("")
    return lines


def _figures(dataset: str, out: Path) -> list[str]:
    lines = []
    fd_plot = f"{FIGURES}/{dataset}_fd_nfe.png"
    if (out / fd_plot).is_file():
        lines += [f"![{FD_NAME[dataset]} against NFE]({fd_plot})", ""]
    grids = [m for m in METHODS if (out / f"{FIGURES}/{dataset}_{m}.png").is_file()]
    if grids:
        lines += ["Samples of the first seed (the same noise in every panel of a figure; "
                  "the conditional model's labels run 0..9 along each row):", ""]
        lines += [f"![{LABELS[m]}]({FIGURES}/{dataset}_{m}.png)" for m in grids]
        lines.append("")
    return lines


def shortfalls(data: dict[str, Any], dataset: str, acc: dict[str, Any] | None) -> list[str]:
    """Notes on where the run on ``dataset`` falls short (acceptance, FD of real images, model)."""
    meta = data["runs"][dataset]
    p = meta["protocol"]
    out = []
    if acc is None:
        out.append("No OT-CFM / I-CFM pair at Euler 2 and 100 steps: no acceptance line.")
    else:
        if not acc["pass_2"]:
            out.append("OT-CFM's FD at 2 Euler steps is not below I-CFM's by more than 2 SE.")
        if not acc["pass_100"]:
            out.append("OT-CFM's FD at 100 Euler steps is neither within 10% nor within 2 SE "
                       "of I-CFM's.")
    records = [r for r in data["records"] if r["dataset"] == dataset]
    real = data.get("real_fd", {}).get(dataset)
    uncond = [r for r in records if "guidance" not in r]
    if real is not None and uncond:
        best = min(uncond, key=lambda r: r["fd"])
        out.append(f"The lowest unconditional FD here ({best['fd']:.1f}, {LABELS[best['method']]}"
                   f", {_key_name((best['solver'], best['steps']))}, seed {best['seed']}) is "
                   f"{best['fd'] / real['fd']:.1f}x that of real training images "
                   f"({real['fd']:.2f}): the samples are far from the data at this budget.")
    pixels = {"digits": 64, "fashion-mnist": 784}[dataset]
    if p["width"] < pixels:
        out.append(f"The MLP's hidden width ({p['width']}) is below the number of pixels "
                   f"({pixels}): the velocity x1 - x0 must carry the noise x0 through that "
                   "bottleneck, which it cannot do exactly; a likely cause of the speckle in the "
                   "samples (not tested here).")
    cells = [c for c in data["cells"] if c["dataset"] == dataset]
    scored = [c for c in cells if "likelihood" in c]
    if scored:
        best = min(scored, key=lambda c: c["likelihood"]["bits_per_dim"])
        levels = best["likelihood"]["levels"]
        uniform = math.log2(levels)
        if best["likelihood"]["bits_per_dim"] > 0.75 * uniform:
            out.append(
                f"The lowest bits/dim ({best['likelihood']['bits_per_dim']:.3f}, "
                f"{LABELS[best['method']]}, seed {best['seed']}) is close to the "
                f"{uniform:.3f} of the uniform density on [-1, 1] per pixel ({levels} levels): "
                "the flows' densities are nearly as spread as no model at all.")
    train = {m: [c["train_seconds"] for c in cells if c["method"] == m] for m in METHODS}
    if train.get("icfm") and train.get("otcfm"):
        ratio = statistics.fmean(train["otcfm"]) / statistics.fmean(train["icfm"])
        out.append(f"Training time: OT-CFM (exact) cells took {ratio:.1f}x as long as I-CFM's "
                   "on average (shared cores: a rough ratio, not a measurement of the "
                   "coupling's cost).")
    top = max(p["guidance"])
    at_top = sorted(c["seed"] for c in cells if c.get("guidance_chosen") == top and top > 0)
    if at_top:
        out.append(f"The guidance sweep chose its largest w ({top:g}) for seed(s) "
                   f"{', '.join(str(s) for s in at_top)}: a wider sweep may find a better w.")
    if len(meta["seeds"]) < 3:
        out.append(f"{len(meta['seeds'])} seed(s) only: the SEs need at least 2 (the issue "
                   "asks for 3).")
    if meta.get("quick"):
        out.append(f"--quick budget: {p['steps']:,} steps, {p['n_samples']:,} samples per "
                   "evaluation.")
    if meta["failed"]:
        out.append("Cells that failed: " + "; ".join(meta["failed"]))
    if meta.get("missing"):
        out.append("Cells not finished when this page was written (not in the tables): "
                   + "; ".join(meta["missing"]) + ".")
    if meta.get("report_only"):
        out.append("Written by --report-only from the cached cells: the wall time above is "
                   "that of collecting them; the cells' own train + eval times are below.")
    out.append(f"A small MLP on flattened pixels with {p['steps']:,} steps, not the UNet of "
               "the paper: the FDs measure these CPU budgets, not the methods' best.")
    out.append(f"FD from {p['n_samples']:,} samples is biased upwards by the finite sample "
               "(equally for every method); compare numbers within this page only.")
    return out


def _key_name(key: tuple[str, int | None]) -> str:
    return "dopri5" if key[0] == "dopri5" else f"Euler {key[1]}"


def _nfe(seeds: dict[int, dict]) -> str:
    nfes = sorted(r["nfe"] for r in seeds.values())
    return f"{nfes[0]}" if nfes[0] == nfes[-1] else f"{nfes[0]}-{nfes[-1]}"


def _variant_name(records: list[dict], dataset: str, method: str, w: Any) -> str:
    if w is None:
        return LABELS[method]
    if w == 0.0:
        return "OT-CFM cond., w = 0"
    ws = sorted({r["guidance"] for r in select(records, dataset, method, w)})
    return "OT-CFM cond., chosen w = " + " / ".join(f"{x:g}" for x in ws)


# --------------------------------------------------------------------------- README
def readme_section(out: str | Path) -> str:
    """The README's image numbers.

    Per data set FD at Euler 2 / 100 and dopri5 per method, and the acceptance line; every number
    from ``OUT/images.json``.
    """
    data = json.loads((Path(out) / RECORDS_FILE).read_text())
    lines = [README_START]
    for dataset in data["runs"]:
        records = [r for r in data["records"] if r["dataset"] == dataset]
        meta = data["runs"][dataset]
        p = meta["protocol"]
        lines.append(
            f"- {TITLE[dataset]}: `{meta['command']}`, {len(meta['seeds'])} seed(s), MLP "
            f"width {p['width']}, {p['steps']:,} steps, {meta['wall_seconds'] / 60:.0f} min "
            f"wall time ({meta['date']}); {FD_NAME[dataset]} (not FID), mean ± SE:")
        for method, w in variants(records, dataset):
            rows = by_solver(select(records, dataset, method, w))
            parts = []
            for key in (("euler", 2), ("euler", 100), ("dopri5", None)):
                if rows.get(key):
                    m, se = mean_se([r["fd"] for r in rows[key].values()])
                    extra = f" (NFE {_nfe(rows[key])})" if key[0] == "dopri5" else ""
                    parts.append(f"{_key_name(key)} {_pm(m, se)}{extra}")
            lines.append(f"  - {_variant_name(records, dataset, method, w)}: "
                         + "; ".join(parts))
        acc = acceptance(records, dataset)
        if acc is not None:
            lines.append("  - " + acceptance_line(acc))
        scored = [c for c in data["cells"] if c["dataset"] == dataset and "likelihood" in c]
        if scored:
            parts = []
            for method in METHODS:
                row = [c["likelihood"]["bits_per_dim"] for c in scored if c["method"] == method]
                if row:
                    parts.append(f"{LABELS[method]} {_pm(*mean_se(row), digits=3)}")
            lines.append(f"  - Bits/dim of {scored[0]['likelihood']['nll_n']:,} reference images "
                         "(Hutchinson, dopri5): " + "; ".join(parts))
    lines += ["  - Page with tables, FD-vs-NFE plots and sample grids: "
              "`docs/results/images.md`.", README_END]
    return "\n".join(lines)
