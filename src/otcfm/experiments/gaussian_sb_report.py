"""Outputs of ``otcfm bench gaussian-sb``: JSON records, a markdown page and the KL-vs-t figure.

Files in the report folder: ``gaussian_sb.json`` (one record per cell), ``gaussian_sb_run.json``
(the command, date, machine and protocol of the run that wrote them), ``gaussian_sb.md`` and
``gaussian_sb/kl_vs_t.png`` (and ``gaussian_sb/score_vs_t.png`` when the SF2M records carry the
score check). The page's notes quote probe measurements from
``gaussian_sb_probes.json`` when that record is in the folder; every number on the page comes
from these files or from published.json (the paper's table).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otcfm.experiments._cells import CellResult
from otcfm.experiments._machine import machine
from otcfm.experiments._published import section
from otcfm.experiments.gaussian_sb import COUPLINGS, METHODS, sb_marginal
from otcfm.train.checkpoint import write_text_atomic

RECORDS_FILE = "gaussian_sb.json"
RUN_FILE = "gaussian_sb_run.json"
PROBES_FILE = "gaussian_sb_probes.json"


def _published() -> tuple[dict, dict, dict]:
    """(PUBLISHED, PUBLISHED_NAMES, DSBM_KL_T1) from published.json (SF2M Table 3)."""
    rows = section("gaussian_sb")["rows"]
    pub, names, dsbm = {}, {}, {}
    for row in rows:
        values = {k: {int(d): float(v) for d, v in row[k].items()}
                  for k in ("kl_t1", "kl_mean") if k in row}
        if row["method"] is None:  # a row of another method (DSBM-IPF): KL(t=1) only
            dsbm = values["kl_t1"]
            continue
        pub[(row["method"], row["coupling"])] = values
        names[(row["method"], row["coupling"])] = row["name"]
    return pub, names, dsbm


# the paper's KL(t=1) and mean KL of SB-CFM (entropic) and SF2M-Exact, and DSBM-IPF's KL(t=1)
PUBLISHED, PUBLISHED_NAMES, DSBM_KL_T1 = _published()
LABELS = {"sbcfm": "SB-CFM (ODE)", "sf2m": "SF2M (SDE)"}
CHECKPOINT_TEXT = {"best": "best-validation checkpoint",
                   "final": "the final EMA weights tested"}
SCHEDULE_TEXT = {"constant": "constant learning rate",
                 "cosine": "learning rate decayed to 0 by a cosine over the steps"}
RECORD_KEYS = ("method", "coupling", "dim", "seed", "kl_t1", "kl_mean")


def write_outputs(
    results: Sequence[CellResult], out: str | Path, meta: dict[str, Any]
) -> list[Path]:
    """Write the Gaussian Schrödinger-bridge benchmark's records, page and figure.

    Write ``gaussian_sb.json``, ``gaussian_sb_run.json``, ``gaussian_sb.md`` and
    ``gaussian_sb/kl_vs_t.png``; ``meta``: command, date, jobs, wall_seconds, protocol.
    """
    out = Path(out)
    records = records_of(results)
    failed = [f"{r.cell.label}: {r.error}" for r in results if r.record is None]
    run = {**meta, "machine": machine(), "failed": failed}
    written = [write_text_atomic(json_lines(records), out / RECORDS_FILE),
               write_text_atomic(json.dumps(run, indent=1) + "\n", out / RUN_FILE)]
    figure = None
    if records:
        figure = kl_figure(records, out / "gaussian_sb" / "kl_vs_t.png", meta["protocol"])
        written.append(figure)
        if any("score_slope_t" in r for r in records):
            written.append(score_figure(records, out / "gaussian_sb" / SCORE_FIGURE,
                                        meta["protocol"], baseline_records(out, meta)))
    page = markdown(records, run, figure, out, probes=read_probes(out))
    written.insert(2, write_text_atomic(page, out / "gaussian_sb.md"))
    return written


def render_page(out: str | Path) -> str:
    """Render ``OUT/gaussian_sb.md`` from the records in ``out``.

    ``OUT/gaussian_sb.md`` as the records in ``out`` give it: a function of
    ``gaussian_sb.json``, ``gaussian_sb_run.json`` and ``gaussian_sb_probes.json`` alone
    (nothing is run; the figure is linked if it is there).
    """
    out = Path(out)
    paths = {name: out / name for name in (RECORDS_FILE, RUN_FILE)}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise ValueError(f"--report-only needs {' and '.join(missing)} (written by a run of "
                         "otcfm bench gaussian-sb with this --out)")
    records = json.loads(paths[RECORDS_FILE].read_text())
    run = json.loads(paths[RUN_FILE].read_text())
    figure = out / "gaussian_sb" / "kl_vs_t.png"
    return markdown(records, run, figure if figure.is_file() else None, out,
                    probes=read_probes(out))


def rewrite_page(out: str | Path) -> Path:
    """Rewrite ``OUT/gaussian_sb.md`` and redraw its figures from the records in ``out``.

    The page is :func:`render_page`; the figures are drawn from the same records (and from
    the constant-learning-rate baseline of :func:`baseline_records`, when there is one).
    """
    out = Path(out)
    page = render_page(out)  # checks that the records are there
    records = json.loads((out / RECORDS_FILE).read_text())
    run = json.loads((out / RUN_FILE).read_text())
    if records:
        kl_figure(records, out / "gaussian_sb" / "kl_vs_t.png", run["protocol"])
        if any("score_slope_t" in r for r in records):
            score_figure(records, out / "gaussian_sb" / SCORE_FIGURE, run["protocol"],
                         baseline_records(out, run))
    return write_text_atomic(page, out / "gaussian_sb.md")


def schedule_of(protocol: dict[str, Any]) -> str:
    """The learning-rate schedule of a run's protocol (runs before the option: constant)."""
    return protocol.get("schedule", "constant")


def baseline_folder(out: Path, meta: dict[str, Any]) -> Path | None:
    """The subfolder run that differs from ``out``'s run by its learning rate alone, or None.

    A run of the same bench kept under ``OUT/gaussian_sb/*/`` with the constant learning
    rate, the same steps and otherwise the same protocol as ``out``'s (which must not itself
    be constant): the "before" of the score comparison.
    """
    p = meta["protocol"]
    if schedule_of(p) == "constant":
        return None
    for folder in sorted(Path(out).glob(f"gaussian_sb/*/{RECORDS_FILE}")):
        q = json.loads((folder.parent / RUN_FILE).read_text())["protocol"]
        same = {k: v for k, v in q.items() if k != "schedule"} == {
            k: v for k, v in p.items() if k != "schedule"}
        if same and schedule_of(q) == "constant":
            return folder.parent
    return None


def baseline_records(out: Path, meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The records of :func:`baseline_folder` (None when there is none)."""
    folder = baseline_folder(Path(out), meta)
    return None if folder is None else json.loads((folder / RECORDS_FILE).read_text())


def read_probes(out: Path) -> dict[str, Any] | None:
    """The probe measurements in ``out`` (``gaussian_sb_probes.json``), or None when absent."""
    path = Path(out) / PROBES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def records_of(results: Sequence[CellResult]) -> list[dict[str, Any]]:
    """One record per finished cell, the required keys first (protocol dropped)."""
    out = []
    for r in results:
        if r.record is None:
            continue
        rec = dict(r.record)
        rec.pop("protocol", None)
        out.append({**{k: rec.pop(k) for k in RECORD_KEYS}, **rec})
    return out


def json_lines(records: Sequence[dict[str, Any]]) -> str:
    """A JSON list with one record per line."""
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


# --------------------------------------------------------------------------- statistics
def groups_of(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict]]:
    """Group the records by (method, coupling, dim)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["coupling"], r["dim"]), []).append(r)
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0) over seeds."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


def kl_floor(dim: int, n: int) -> float:
    """Expected KL(fit || truth) of a Gaussian fitted to n exact samples: ~ d (d + 3) / (4 n).

    Mean: E|m_hat - m|^2 / (2 v) = d / (2n); covariance: ~ d (d + 1) / (4n) (large n).
    """
    return dim * (dim + 3) / (4 * n)


def fmt(mean: float, std: float | None = None) -> str:
    """Format ``mean`` (and `` ± std``) with 3 decimals, 4 below 0.01."""
    digits = 4 if abs(mean) < 0.01 else 3
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# --------------------------------------------------------------------------- markdown
def markdown(
    records: Sequence[dict[str, Any]], meta: dict[str, Any], figure: Path | None, out: Path,
    probes: dict[str, Any] | None = None,
) -> str:
    """The markdown page of the benchmark from its records, run metadata and figure."""
    p = meta["protocol"]
    groups = groups_of(records)
    dims = sorted({r["dim"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    parts = [
        "# Schrödinger bridge between Gaussians (SF2M Table 3)\n",
        f"Source N(-a 1, I), target N(a 1, I), a = {p['a']:g}, reference process sigma W with "
        f"**sigma = {p['sigma']:g}** (our choice: the paper gives the formula, not the "
        "sigma; entropic coupling reg = 2 sigma^2). Exact marginals: "
        "q_t = N((2t - 1) a 1, [sqrt(4 + sigma^4) t(1 - t) + (1 - t)^2 + t^2] I).\n",
        f"Each cell: {p['n_train']:,} training points per side, batch {p['batch_size']}, "
        f"{p['steps']:,} AdamW steps (lr {p['lr']:g}, {SCHEDULE_TEXT[schedule_of(p)]}, "
        f"weight decay {p['weight_decay']:g}, EMA "
        f"{p['ema_decay']:g}), MLP {p['depth']}x{p['width']} SELU (SF2M: one for the drift, "
        f"one for the score), {CHECKPOINT_TEXT[p.get('checkpoint', 'best')]} "
        f"(validation on {p['n_val']:,} points). Evaluation: "
        f"{p['n_test']:,} fresh source points through **{p['euler_steps']} Euler steps** "
        f"(SB-CFM: probability-flow ODE) or **{p['euler_steps']} Euler-Maruyama steps** (SF2M: "
        "the bridge SDE dx = [v + (sigma^2/2) s] dt + sigma dW); a Gaussian (mean and full "
        f"covariance) fitted at each of the {p['euler_steps'] + 1} grid times t = 0, "
        f"{1 / p['euler_steps']:g}, ..., 1 is compared with q_t by KL(fit || q_t). "
        f"KL(t=1) is the last, mean KL the average over the grid. Ours: mean ± std (ddof 0) "
        f"over {len(seeds)} seed(s) {', '.join(map(str, seeds))}.\n",
        _run_lines(meta, records),
        "## KL(p_1, q_1)\n",
        _table(groups, dims, "kl_t1", p),
        "## Mean KL over the time grid\n",
        _table(groups, dims, "kl_mean", p),
        _published_section(groups, dims),
    ]
    if any("kl_ode_t1" in r for r in records):
        parts.append(_ode_of_sf2m(groups, dims, p))
    if any("kl_tapered_t1" in r for r in records):
        parts.append(_tapered_of_sf2m(groups, dims, p))
    if figure is not None:
        parts.append(f"![KL against t]({figure.relative_to(out).as_posix()})\n")
    if any("score_slope_t" in r for r in records):
        parts.append(_score_section(groups, dims, p, out, meta))
    parts.append(_notes(meta, groups, p, probes))
    for folder in sorted(out.glob(f"gaussian_sb/*/{RECORDS_FILE}")):  # other budgets
        parts.append(_other_budget_note(folder.parent, out))
    return "\n".join(parts)


def _run_lines(meta: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    compute = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in records)
    lines = (
        f"- Command: `{meta['command']}`\n"
        f"- Machine: {meta.get('machine') or 'not recorded'}; {meta['jobs']} job(s), 1 torch "
        "thread per cell\n"
        f"- Date: {meta['date']}\n"
        f"- Wall time of this invocation: {meta['wall_seconds']:.0f} s (cached cells, and "
        "training runs finished by an earlier invocation, cost nothing); train + eval time "
        f"summed over the cells: {compute:.0f} s\n"
    )
    lines += (f"- Rendered from {RECORDS_FILE}, {RUN_FILE} and {PROBES_FILE} (nothing trained) "
              "by `otcfm bench gaussian-sb --report-only --out DIR`, DIR the folder of this "
              "page\n")
    return lines


def _table(groups, dims: list[int], key: str, p: dict[str, Any]) -> str:
    head = "| method | coupling | " + " | ".join(f"d = {d}" for d in dims) + " |"
    rule = "|---|---|" + "---|" * len(dims)
    rows = [head, rule]
    for method in METHODS:
        for coupling in COUPLINGS:
            cells = []
            for d in dims:
                g = groups.get((method, coupling, d))
                cells.append(fmt(*mean_std([r[key] for r in g])) if g else "—")
            if any(c != "—" for c in cells):
                rows.append(f"| {LABELS[method]} | {coupling} | " + " | ".join(cells) + " |")
        for coupling in COUPLINGS:
            pub = PUBLISHED.get((method, coupling), {}).get(key)
            if pub:
                cells = [fmt(pub[d]) if d in pub else "—" for d in dims]
                name = PUBLISHED_NAMES[(method, coupling)]
                rows.append(f"| *{name}, paper* | {coupling} | " + " | ".join(cells) + " |")
    if key == "kl_t1":
        cells = [fmt(DSBM_KL_T1[d]) if d in DSBM_KL_T1 else "—" for d in dims]
        rows.append("| *DSBM-IPF, paper* | | " + " | ".join(cells) + " |")
    floor = [fmt(kl_floor(d, p["n_test"])) for d in dims]
    rows.append(f"| sampling floor ~ d(d+3)/(4n), n = {p['n_test']:,} | | " + " | ".join(floor)
                + " |")
    if key == "kl_mean":
        times = [k / p["euler_steps"] for k in range(p["euler_steps"] + 1)]
        exact = [fmt(sum(exact_bridge_kl(t, d, p["a"], p["sigma"]) for t in times) / len(times))
                 for d in dims]
        rows.append("| exact coupling's own bridge (population, closed form) | exact | "
                    + " | ".join(exact) + " |")
    return "\n".join(rows) + "\n"


def exact_bridge_kl(t: float, dim: int, a: float, sigma: float) -> float:
    """KL at time t of the exact coupling's population bridge against q_t (closed form).

    The exact OT coupling of N(-a 1, I) and N(a 1, I) is the translation x1 = x0 + 2a 1, so
    its Brownian bridge has marginals N((2t - 1) a 1, (1 + sigma^2 t (1 - t)) I): q_t's mean,
    a larger variance. KL(N(m, u I) || N(m, v I)) = (d / 2) (u / v - 1 - log(u / v)).
    """
    u = 1.0 + sigma**2 * t * (1.0 - t)
    v = sb_marginal(t, a, sigma)[1]
    return 0.5 * dim * (u / v - 1.0 - math.log(u / v))


def _published_section(groups, dims: list[int]) -> str:
    lines = ["## Against the published numbers (d = 5 / 20 / 50)\n"]
    for (method, coupling), pub in PUBLISHED.items():
        for key, label in (("kl_t1", "KL(t=1)"), ("kl_mean", "mean KL")):
            verdicts = []
            for d in (5, 20, 50):
                g = groups.get((method, coupling, d))
                if not g or d not in dims:
                    continue
                ours = mean_std([r[key] for r in g])[0]
                word = "at or below" if ours <= pub[key][d] else "ABOVE"
                verdicts.append(f"d = {d}: {fmt(ours)} vs {fmt(pub[key][d])} ({word})")
            if verdicts:
                name = PUBLISHED_NAMES[(method, coupling)]
                lines.append(f"- {LABELS[method]}, {coupling} vs {name}, {label}: "
                             + "; ".join(verdicts))
    pub = PUBLISHED[("sf2m", "exact")]
    for variant, name in SF2M_VARIANTS.items():
        for key, label in (("kl_t1", "KL(t=1)"), ("kl_mean", "mean KL")):
            verdicts = []
            for d in (5, 20, 50):
                g = [r for r in groups.get(("sf2m", "exact", d), []) if f"{variant}_t1" in r]
                if g:
                    ours = mean_std([r[key.replace("kl", variant)] for r in g])[0]
                    word = "at or below" if ours <= pub[key][d] else "ABOVE"
                    verdicts.append(f"d = {d}: {fmt(ours)} vs {fmt(pub[key][d])} ({word})")
            if verdicts:
                lines.append(f"- {name}, exact vs SF2M-Exact, {label}: " + "; ".join(verdicts))
    return "\n".join(lines) + "\n"


# the other samplers of the same SF2M models: record key prefix -> label
SF2M_VARIANTS = {"kl_ode": "SF2M's drift alone (ODE)", "kl_tapered": "SF2M (SDE, tapered g)"}


def _sf2m_rows(groups, dims: list[int], variant: str, title: str) -> list[str]:
    """Table of KL(t=1) and mean KL of one sampler of the SF2M models.

    KL(t=1) and mean KL of one sampler of the SF2M models (``variant``: a record key
    prefix of :data:`SF2M_VARIANTS`), a row per coupling and statistic.
    """
    rows = [f"| {title} | coupling | " + " | ".join(f"d = {d}" for d in dims) + " |",
            "|---|---|" + "---|" * len(dims)]
    for coupling in COUPLINGS:
        for key, label in ((f"{variant}_t1", "KL(t=1)"), (f"{variant}_mean", "mean KL")):
            cells = []
            for d in dims:
                g = [r for r in groups.get(("sf2m", coupling, d), []) if key in r]
                cells.append(fmt(*mean_std([r[key] for r in g])) if g else "—")
            if any(c != "—" for c in cells):
                rows.append(f"| {label} | {coupling} | " + " | ".join(cells) + " |")
    return rows


def _ode_of_sf2m(groups, dims: list[int], p: dict[str, Any]) -> str:
    rows = _sf2m_rows(groups, dims, "kl_ode", "SF2M sampled with its probability-flow ODE")
    text = ("## SF2M's drift alone\n\nThe same SF2M models sampled with the ODE dx = v dt "
            f"({p['euler_steps']} Euler steps) instead of the SDE:\n\n" + "\n".join(rows) + "\n")
    gaps = _minus_ode(groups, dims, "kl_t1", p)
    if gaps:
        text += ("\nSDE (constant g = sigma) minus the same models' ODE, KL(t=1), exact "
                 "coupling, paired by seed (mean ± std), against the sampling floor "
                 "d(d+3)/(4n): " + "; ".join(gaps) + ".\n")
    return text


def _minus_ode(groups, dims: list[int], key: str, p: dict[str, Any]) -> list[str]:
    """Per d: the SF2M-Exact KL(t=1) of ``key`` minus its ODE's, paired, against the floor."""
    gaps = []
    for d in dims:
        g = [r for r in groups.get(("sf2m", "exact", d), []) if key in r and "kl_ode_t1" in r]
        if not g:
            continue
        diff = mean_std([r[key] - r["kl_ode_t1"] for r in g])
        floor = kl_floor(d, p["n_test"])
        word = "within" if diff[0] <= floor else "ABOVE"
        gaps.append(f"d = {d}: {fmt(*diff)} against a floor of {fmt(floor)} ({word})")
    return gaps


def _tapered_of_sf2m(groups, dims: list[int], p: dict[str, Any]) -> str:
    """The SF2M models sampled with the tapered diffusion, and its distance to their ODE."""
    rows = _sf2m_rows(groups, dims, "kl_tapered", "SF2M, SDE with tapered g(t)")
    gaps = _minus_ode(groups, dims, "kl_tapered_t1", p)
    text = [
        "## SF2M's SDE with a diffusion that vanishes at the snapshots\n",
        "Every SDE dx = [v + (g(t)^2/2) s] dt + g(t) dW has the marginals of the flow v when s "
        "is the score of p_t, whatever g. The score regression controls the error of sigma_t s "
        "(its weight lambda(t)^2 = 4 sigma_t^2 / sigma^4), and a score error enters the drift "
        "as g^2 / (2 sigma_t) times that error: bounded for the tapered schedule "
        "g(t)^2 = 4 sigma^2 t (1 - t) = (2 sigma_t)^2 (sigma at t = 1/2, 0 at both ends; "
        "`integrate_sde(..., diffusion=\"tapered\")`), growing as 1 / sigma_t at the ends for "
        f"the constant g = sigma of the tables above. The same models, {p['euler_steps']} "
        "Euler-Maruyama steps, the same Brownian increments' seed:\n",
        "\n".join(rows) + "\n",
    ]
    if gaps:
        text.append("Tapered SDE minus the same models' ODE, KL(t=1), exact coupling, paired by "
                    "seed (mean ± std), against the sampling floor d(d+3)/(4n): "
                    + "; ".join(gaps) + ".\n")
    return "\n".join(text)


def _notes(meta: dict[str, Any], groups, p: dict[str, Any],
           probes: dict[str, Any] | None) -> str:
    n = p["n_test"]
    lines = [
        "## Notes\n",
        "- The KL of a Gaussian fitted to n exact samples is not 0: about d(d+3)/(4n) "
        f"({kl_floor(50, n):.4f} at d = 50, {kl_floor(100, n):.4f} at d = 100 for n = {n:,}), "
        "visible as the KL at t = 0 (the source samples themselves). The published d = 5 "
        f"SB-CFM number ({PUBLISHED[('sbcfm', 'entropic')]['kl_t1'][5]:g}) is about this "
        f"floor ({kl_floor(5, n):.4f} at n = {n:,}).",
    ]
    lines += _probe_notes(probes or {}, groups, p) if probes else []
    lines.append(NOTE_CONSTANT if schedule_of(p) == "constant" else NOTE_COSINE)
    lines += [note.format(batch=p["batch_size"]) for note in NOTES]
    for f in meta.get("failed", []):
        lines.append(f"- FAILED cell: {f}")
    return "\n".join(lines) + "\n"


def _other_budget_note(folder: Path, out: Path) -> str:
    """One line on a run of the same bench kept in a subfolder of ``out``.

    One line on a run of the same bench kept in a subfolder of ``out`` (another budget):
    its steps and SF2M-Exact's KL(t=1) with both noise schedules and the ODE, read from its
    records, against the paper.
    """
    records = json.loads((folder / RECORDS_FILE).read_text())
    run = json.loads((folder / RUN_FILE).read_text())
    groups = groups_of(records)
    pub = PUBLISHED[("sf2m", "exact")]["kl_t1"]
    dims = sorted(d for (m, c, d) in groups if (m, c) == ("sf2m", "exact") and d in pub)
    if not dims:
        return ""

    def kl(key: str) -> str:
        return " / ".join(fmt(mean_std([r[key] for r in groups[("sf2m", "exact", d)]])[0])
                          for d in dims)

    seeds = len({r["seed"] for r in records})
    link = (folder / "gaussian_sb.md").relative_to(out).as_posix()
    return (f"- The same bench at {run['protocol']['steps']:,} steps with a "
            f"{SCHEDULE_TEXT[schedule_of(run['protocol'])]} ({seeds} seeds, "
            f"[page]({link}), `{run['command']}`): SF2M-Exact KL(t=1) at d = "
            f"{' / '.join(map(str, dims))} is {kl('kl_t1')} with the constant noise, "
            f"{kl('kl_tapered_t1')} with the tapered one and {kl('kl_ode_t1')} along the ODE "
            f"(paper {' / '.join(fmt(pub[d]) for d in dims)}).\n")


def _pair(value: Sequence[float]) -> str:
    return f"{value[0]:.4f} ± {value[1]:.4f}"


def _slash(values: Sequence[float | None]) -> str:
    return " / ".join("—" if v is None else f"{v:.3f}" for v in values)


def _probe_notes(record: dict[str, Any], groups, p: dict[str, Any]) -> list[str]:
    """The notes that quote probe measurements.

    The notes that quote probe measurements, every number from ``record``
    (``gaussian_sb_probes.json``) or from this grid's records.
    """
    probes = record.get("probes", {})
    dates = sorted({v["date"] for v in probes.values()})
    lines = [
        f"- The probes below were run by hand ({', '.join(dates)}). Their numbers are "
        f"transcribed from the session logs into `{PROBES_FILE}` (with the command where it "
        "was recorded), not regenerated by the command of this page."
    ]
    budget = probes.get("sbcfm_budget")
    if budget:
        by_steps = budget["kl_t1_by_steps"]
        here = groups.get(("sbcfm", "entropic", 5))
        grid = (f", against {_pair(mean_std([r['kl_t1'] for r in here]))} at the "
                f"{p['steps']} steps of this grid" if here else "")
        lines.append(
            "- SB-CFM's gap at d = 5 is the training budget: with the entropic coupling and 3 "
            f"seeds (`{budget['command']}`, {budget['date']}), KL(t=1) is "
            + " and ".join(f"{_pair(v)} at N = {int(k):,}" for k, v in by_steps.items())
            + f" (one seed {budget['best_seed_kl_t1_at_5000']:g} at N = 5,000){grid}."
        )
    first = probes.get("first_settings_d50")
    if first:
        tried = "; ".join(
            f"{row['setting']}" + (f" at d = {row['dim']}" if row["dim"] != 50 else "")
            + (f": {row['sde']:g} / {row['ode']:g}" if row["ode"] is not None
               else f": {row['sde']:g} (SDE)")
            for row in first["rows"]
        )
        cells = [r for g in groups.values() for r in g]
        cpu = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in cells) / 60
        lines.append(
            f"- Budget: {p['steps']} steps per cell, chosen so that the whole grid ("
            f"{len(cells)} training runs here, {cpu:.0f} minutes of training and evaluation "
            "summed over the cells) runs on 2 shared CPU cores; the paper trained far longer. What "
            f"was tried first ({first['date']}; d = 50 unless stated, one seed, SF2M-Exact, "
            f"width 128, KL(t=1) of the SDE / of the ODE): {tried}."
        )
    param = probes.get("score_parameterisation")
    if param:
        lines.append(_parameterisation_note(param))
    gap = probes.get("sf2m_sde_gap")
    if gap:
        dims = " / ".join(str(d) for d in gap["dims"])
        em = gap["euler_maruyama_steps"]["kl_t1"]
        slope, var = gap["score_slope"], gap["variance_at_t1"]
        lines.append(
            f"- Probes of the SF2M SDE gap (SF2M-Exact, KL(t=1) at d = {dims}, {gap['date']}): "
            "(1) more Euler-Maruyama steps on the same models: "
            + ", ".join(f"{k} steps {_slash(v)}" for k, v in em.items())
            + ", so discretisation is a small part; (2) 1,000 training steps instead of 200 "
            f"(one seed): {_slash(gap['steps_1000']['kl_t1'])}, {_closes(gap)}; (3) an "
            "arcsine time sampler, Beta(1/2, 1/2), to put more score samples near the ends "
            f"(3 seeds): {_slash(gap['arcsine_times']['kl_t1'])}, {_against_euler(gap)}. "
            "Diagnosis: on samples of q_t, the "
            "learned score of the entropic-coupling model (whose population marginals are "
            f"q_t; d = 5, seed 42) has {slope['at_ends'][0]:.2f}-{slope['at_ends'][1]:.2f} of "
            f"the analytic slope -1/var_t at t = 0 and 1 and {slope['at_half']:.2f} at t = 0.5. "
            "The score is shrunk most where lambda(t)^2 is small, so the SDE removes too "
            "little of the noise it injects and ends with a variance above 1 at t = 1 (per "
            f"coordinate, seed 42, d = 5 and 20: {var['sde'][0]:.2f}-{var['sde'][1]:.2f} for "
            f"the SDE against {var['ode'][0]:.2f}-{var['ode'][1]:.2f} for the same models' ODE)."
        )
    return lines


def _parameterisation_note(probe: dict[str, Any]) -> str:
    """The noise-prediction probe: SDE KL(t=1) and the score's slope at t = 0, both outputs."""
    dims = sorted(probe["kl_t1_sde"]["score"], key=int)

    def mean(kind: str, out: str) -> str:
        return " / ".join(fmt(mean_std(probe[kind][out][d])[0]) for d in dims)

    return (
        "- A noise-prediction parameterisation was tried and not kept: the score network "
        "predicts e(x, t) and s = -e / sigma_t, so the loss is the plain noise regression "
        f"|e - eps|^2 (the same objective; `{probe['command']}`, {probe['date']}, seeds "
        f"{', '.join(map(str, probe['seeds']))}, {probe['steps']:,} steps with the cosine "
        f"schedule). SF2M-Exact's SDE KL(t=1) at d = {' / '.join(dims)}: "
        f"{mean('kl_t1_sde', 'eps')} against {mean('kl_t1_sde', 'score')} with the score "
        "predicted directly; the slope fraction of its score at t = 0 is "
        f"{mean('slope_t0', 'eps')} (direct: {mean('slope_t0', 'score')}): dividing by "
        "sigma_t multiplies the network's error near the snapshots, where the SDE needs the "
        "score most."
    )


def _closes(gap: dict[str, Any]) -> str:
    """Where the 1,000-step probe reaches the published SF2M-Exact KL(t=1)."""
    pub = PUBLISHED[("sf2m", "exact")]["kl_t1"]
    hit = [d for d, v in zip(gap["dims"], gap["steps_1000"]["kl_t1"], strict=True)
           if d in pub and v <= pub[d]]
    if not hit:
        return "at no d at or below the published SF2M-Exact value"
    return ("which reaches the published SF2M-Exact value at d = "
            + ", ".join(map(str, hit)) + (" only" if len(hit) < len(gap["dims"]) else ""))


def _against_euler(gap: dict[str, Any]) -> str:
    """The arcsine-times probe against the 20-step values of the same protocol."""
    base = gap["euler_maruyama_steps"]["kl_t1"].get("20")
    if base is None:
        return "not compared"
    arc = gap["arcsine_times"]["kl_t1"]
    if all(a > b for a, b in zip(arc, base, strict=True)):
        return "worse at every d"
    if all(a <= b for a, b in zip(arc, base, strict=True)):
        return "at or below the 20-step values at every d"
    return "mixed against the 20-step values"


#: the note of a grid trained with a constant learning rate (where the SDE's gap was)
NOTE_CONSTANT = (
    "- Where the gap is: the SDE with constant g = sigma follows q_t closer than the ODE over "
    "most of the interval (mean KL at or below the paper), but its KL rises over the last "
    "fifth of it, where the score regression has little weight (lambda(t)^2 = 4 t (1 - t) / "
    "sigma^2 -> 0) and the sigma^2/2 factor passes the score error on to the samples. The "
    "tapered schedule removes most of that rise with the same models; what is left is the "
    "score's error in the middle of the interval, where g is largest."
)
#: the note of a grid trained with the cosine schedule (why the schedule)
NOTE_COSINE = (
    "- Why the cosine schedule: the score's regression target -eps / sigma_t has noise of "
    "std 1 / sigma_t per coordinate (at least 2 sigma^-1 everywhere, far more near the ends), "
    "against a signal of order 1. With a constant learning rate the weights keep moving with "
    "that noise to the last step; decaying the rate to 0 averages it out. Where a subfolder "
    "holds the same cells trained with a constant rate, the score section compares the two "
    "at the same budget (\"before and after\")."
)
NOTES = [
    "- The exact coupling's own bridge is not the Schrödinger bridge: the population exact "
    "coupling of these Gaussians is the translation x1 = x0 + 2a 1, whose bridge has "
    "variance 1 + sigma^2 t (1 - t) between the snapshots, above q_t's. The last row of the "
    "mean-KL table is its mean KL against q_t in closed form: what an exact-coupling model "
    "that fits its own marginals scores on the grid, however well trained (KL(t=1) is 0 for "
    "it). A model below that row is not following its coupling's bridge.",
    "- SF2M's drift network is SB-CFM's network, trained on the same draws from the same "
    "initialisation (the score is a separate network with its own parameters), so \"SF2M's "
    "drift alone\" repeats the SB-CFM rows wherever both kept the same checkpoint.",
    "- Minibatch couplings of {batch} points are far from the population couplings at d = 50 "
    "and 100, so the exact and entropic rows differ less than the population bridges would.",
]


# --------------------------------------------------------------------------- figure
def kl_figure(records: Sequence[dict[str, Any]], path: Path, p: dict[str, Any]) -> Path:
    """KL(fit || q_t) against t, one panel per dimension, mean over seeds with a std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = groups_of(records)
    dims = sorted({r["dim"] for r in records})
    times = [k / p["euler_steps"] for k in range(p["euler_steps"] + 1)]
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.2), squeeze=False)
    styles = {("sbcfm", "exact"): ("C0", "--"), ("sbcfm", "entropic"): ("C0", "-"),
              ("sf2m", "exact"): ("C3", "--"), ("sf2m", "entropic"): ("C3", "-")}
    for ax, d in zip(axes[0], dims, strict=True):
        for (method, coupling), (color, ls) in styles.items():
            g = groups.get((method, coupling, d))
            if not g:
                continue
            curves = np.asarray([r["kl_t"] for r in g], dtype=float)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(times, mean, color=color, ls=ls, label=f"{LABELS[method]}, {coupling}")
            ax.fill_between(times, mean - std, mean + std, color=color, alpha=0.15, lw=0)
            tapered = [r["kl_tapered_t"] for r in g if "kl_tapered_t" in r]
            if tapered:
                ax.plot(times, np.asarray(tapered, dtype=float).mean(0), color="C2", ls=ls,
                        label=f"SF2M (SDE, tapered g), {coupling}")
        ax.axhline(kl_floor(d, p["n_test"]), color="grey", lw=0.8, ls=":", label="sampling floor")
        ax.set_title(f"d = {d}")
        ax.set_xlabel("t")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("KL(fit || q_t)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Gaussian Schrödinger bridge, sigma = {p['sigma']:g}: KL of the learned "
                 f"marginals ({p['euler_steps']} steps; mean ± std over seeds)", fontsize=9)
    return _save_figure(fig, path)


SCORE_FIGURE = "score_vs_t.png"
SCORE_TIMES = (0.0, 0.05, 0.5, 0.95, 1.0)  # the table's columns


def _score_section(groups, dims: list[int], p: dict[str, Any], out: Path,
                   meta: dict[str, Any]) -> str:
    times = [k / p["euler_steps"] for k in range(p["euler_steps"] + 1)]
    cols = [times.index(t) for t in SCORE_TIMES if t in times]
    base = baseline_folder(out, meta)
    lines = [
        "## SF2M's learned score against the exact one\n",
        "On samples of q_t, the slope fraction -E[s . (x - m)] v / E|x - m|^2 of the learned "
        "score s (1: the exact score -(x - m) / v of q_t; below 1: shrunk towards 0), mean ± "
        "std over seeds. q_t is the marginal of the entropic coupling's bridge; the exact "
        "coupling's marginals equal it at t = 0 and 1 only (in between its variance is "
        "larger, so its exact slope fraction there is below 1). The figure's right panel "
        "turns the relative error of the entropic-coupling models into the drift error "
        "(g^2/2)(s - s*) that the SDE receives: flat in t with the constant g = sigma, zero at "
        "the snapshots with the tapered g (thin lines).\n",
        "| coupling | d | " + " | ".join(f"t = {times[c]:g}" for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for coupling in COUPLINGS:
        for d in dims:
            g = [r for r in groups.get(("sf2m", coupling, d), []) if "score_slope_t" in r]
            if not g:
                continue
            cells = [fmt(*mean_std([r["score_slope_t"][c] for r in g])) for c in cols]
            lines.append(f"| {coupling} | {d} | " + " | ".join(cells) + " |")
    if base is not None:
        lines.append(_score_before(groups, groups_of(json.loads(
            (base / RECORDS_FILE).read_text())), cols, times, base, out))
    figure = out / "gaussian_sb" / SCORE_FIGURE
    if figure.is_file():
        lines.append(f"\n![score slope against t]({figure.relative_to(out).as_posix()})")
    return "\n".join(lines) + "\n"


def _score_before(groups, before, cols: list[int], times: list[float], folder: Path,
                  out: Path) -> str:
    """Slope fraction and SDE KL(t=1) of SF2M before (constant rate) and after (cosine)."""
    run = json.loads((folder / RUN_FILE).read_text())
    link = (folder / "gaussian_sb.md").relative_to(out).as_posix()
    lines = [
        f"\nBefore and after: the same cells trained with a constant learning rate "
        f"([page]({link}), `{run['command']}`), same steps, data, seeds and initialisation. "
        "Slope fraction of SF2M's score and the SDE's KL(t=1):\n",
        "| learning rate | coupling | d | " + " | ".join(f"t = {times[c]:g}" for c in cols)
        + " | KL(t=1), SDE |",
        "|---|---|---|" + "---|" * (len(cols) + 1),
    ]
    for coupling in COUPLINGS:
        for d in sorted({k[2] for k in before if k[:2] == ("sf2m", coupling)}):
            for label, g in (("constant", before.get(("sf2m", coupling, d), [])),
                             ("cosine", groups.get(("sf2m", coupling, d), []))):
                g = [r for r in g if "score_slope_t" in r]
                if not g:
                    continue
                cells = [fmt(*mean_std([r["score_slope_t"][c] for r in g])) for c in cols]
                kl = fmt(*mean_std([r["kl_t1"] for r in g]))
                lines.append(f"| {label} | {coupling} | {d} | " + " | ".join(cells)
                             + f" | {kl} |")
    return "\n".join(lines)


def score_drift_error(error_t: Sequence[float], times: Sequence[float], a: float,
                      sigma: float, diffusion: str) -> np.ndarray:
    """RMS per coordinate of the drift error that the score's error passes to the SDE.

    RMS per coordinate of the drift error (g(t)^2 / 2) (s - s*) that the score's error
    passes to the SDE, from the relative squared error ``E|s - s*|^2 / E|s*|^2`` on q_t
    (E|s*|^2 = d / v_t per the exact score -(x - m) / v_t): (g^2 / 2) sqrt(error / v_t).
    """
    from otcfm.sampling import DIFFUSIONS

    rate = np.asarray([DIFFUSIONS[diffusion].rate(t) for t in times])
    var = np.asarray([sb_marginal(t, a, sigma)[1] for t in times])
    return 0.5 * sigma**2 * rate * np.sqrt(np.asarray(error_t, dtype=float) / var)


def score_figure(records: Sequence[dict[str, Any]], path: Path, p: dict[str, Any],
                 before: Sequence[dict[str, Any]] | None = None) -> Path:
    """Plot SF2M's score error against t and the drift error it passes to the SDE.

    SF2M's score slope fraction and relative error against t, per dimension, and the
    drift error the score passes to the SDE with the constant and the tapered noise;
    ``before``: the records of the same cells trained with a constant learning rate, drawn
    dotted (exact coupling) in the first two panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = groups_of(records)
    dims = sorted({r["dim"] for r in records if "score_slope_t" in r})
    times = [k / p["euler_steps"] for k in range(p["euler_steps"] + 1)]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.4))
    for i, d in enumerate(dims):
        for coupling, ls in (("exact", "--"), ("entropic", "-")):
            g = [r for r in groups.get(("sf2m", coupling, d), []) if "score_slope_t" in r]
            if not g:
                continue
            for ax, key in zip(axes, ("score_slope_t", "score_error_t"), strict=False):
                curve = np.asarray([r[key] for r in g], dtype=float).mean(0)
                ax.plot(times, curve, color=f"C{i}", ls=ls, label=f"d = {d}, {coupling}")
            if coupling == "entropic":  # its population marginals are q_t at every t
                error = np.asarray([r["score_error_t"] for r in g], dtype=float).mean(0)
                for diffusion, width in (("constant", 1.6), ("tapered", 0.8)):
                    axes[2].plot(times, score_drift_error(error, times, p["a"], p["sigma"],
                                                          diffusion),
                                 color=f"C{i}", lw=width,
                                 label=f"d = {d}" if diffusion == "constant" else None)
    old = groups_of(before or [])
    for i, d in enumerate(dims):
        g = [r for r in old.get(("sf2m", "exact", d), []) if "score_slope_t" in r]
        for ax, key in zip(axes, ("score_slope_t", "score_error_t"), strict=False):
            if g:
                curve = np.asarray([r[key] for r in g], dtype=float).mean(0)
                ax.plot(times, curve, color=f"C{i}", ls=":", lw=1.2,
                        label=f"d = {d}, exact, constant lr" if key == "score_error_t" else None)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[0].set_ylabel("slope fraction of the learned score")
    axes[1].set_ylabel("|s - s*|^2 / |s*|^2")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("(g^2/2) |s - s*|, RMS per coordinate")
    axes[2].set_title("drift error from the score, entropic coupling:\nthick constant g, "
                      "thin tapered g", fontsize=8)
    for ax in axes:
        ax.set_xlabel("t")
    axes[1].legend(fontsize=6, ncol=2)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=6, ncol=3, loc="lower center")
    fig.suptitle(f"SF2M's score against q_t's (sigma = {p['sigma']:g}, mean over seeds)",
                 fontsize=9)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write ``path`` atomically (a temporary file renamed) and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


README_START = "<!-- gaussian-sb numbers: generated from docs/results/gaussian_sb.json -->"
README_END = "<!-- end of gaussian-sb numbers -->"


def readme_section(out: str | Path, dims: tuple[int, ...] = (20, 50)) -> str:
    """The README's Schrödinger-bridge sentence.

    KL(p_1, q_1) of SB-CFM (entropic) and SF2M (exact, SDE) at ``dims`` against the paper, from
    ``OUT/gaussian_sb.json``.
    """
    groups = groups_of(json.loads((Path(out) / RECORDS_FILE).read_text()))

    def ours(method: str, coupling: str, key: str = "kl_t1") -> str:
        return " / ".join(fmt(mean_std([r[key] for r in groups[(method, coupling, d)]])[0])
                          for d in dims)

    def paper(method: str, coupling: str) -> str:
        return " / ".join(fmt(PUBLISHED[(method, coupling)]["kl_t1"][d]) for d in dims)

    at = " / ".join(map(str, dims))
    return "\n".join([
        README_START,
        f"KL(p1, q1) at d = {at}: SB-CFM (entropic, ODE) {ours('sbcfm', 'entropic')} (paper "
        f"{paper('sbcfm', 'entropic')}); SF2M (exact, SDE) {ours('sf2m', 'exact')}, with the "
        f"tapered diffusion {ours('sf2m', 'exact', 'kl_tapered_t1')} (paper "
        f"{paper('sf2m', 'exact')}); record `docs/results/gaussian_sb.json`.",
        README_END,
    ])
