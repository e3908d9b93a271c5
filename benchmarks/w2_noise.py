"""How much of the 2-D benchmark's across-seed W2 spread is the test draw, not the model.

The 2-D protocol (``otcfm bench two-dim``, paper Table 2) tests each seed's model once, on
that seed's own 10,000-point source and target test sets. This script takes the models a
finished protocol run tested (``--runs``, the run folder of ``otcfm bench two-dim``) and
tests each of them again on ``--draws`` more pairs of test sets of the same size. Draw k is
the same pair for every seed, so:

- per draw, the std across seeds is the model-to-model spread on one shared test set;
- per seed, the std across draws is the test-draw noise of one fixed model;
- the sampling floor (W2 between two independent test-sized samples of the target, what a
  perfect model would score) is drawn ``--draws`` times, its std the floor's own noise.

    python benchmarks/w2_noise.py --runs runs/two_dim_full --task moons-8gaussians \\
        --method otcfm --out docs/results/two_dim/w2_noise.json
    python benchmarks/pages.py   # docs/results/two_dim/w2_noise.md from the record

Numbers: W2 (exact EMD, squared Euclidean cost) after 100 Euler steps, as the protocol.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from otcfm.data import toy
from otcfm.experiments import _machine, _published
from otcfm.metrics import wasserstein
from otcfm.sampling import integrate
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.datasets import stream
from otcfm.train.evaluate import load_run

FIRST_SEED = 42


def measure(runs: Path, task: str, method: str, seeds: int, draws: int, n: int,
            progress: bool = True) -> dict[str, Any]:
    """Test every seed's tested weights on ``draws`` shared test-set pairs; the floor too."""
    source, target = toy.task(task)
    sets = []
    for k in range(draws):
        g = stream(0, "w2-noise", task, str(k))
        sets.append((toy.sample(source, n, g), toy.sample(target, n, g)))
    rows = []
    for seed in range(FIRST_SEED, FIRST_SEED + seeds):
        folder = runs / task / f"{method}-seed{seed}"
        cell = json.loads((folder / "cell.json").read_text())
        if cell.get("n_test") != n:
            print(f"note: {folder} was tested on {cell.get('n_test')} points; these draws have "
                  f"{n}", file=sys.stderr)
        which = "best" if cell["protocol"].get("checkpoint") == "best" else "latest"
        model = load_run(folder, which).model.eval().requires_grad_(False)
        w2 = []
        with torch.no_grad():
            for x0, x1 in sets:
                x = integrate(model, x0, method="euler", steps=100, save="ends",
                              energy=False).x_final
                w2.append(wasserstein(x, x1, p=2))
        rows.append({"seed": seed, "protocol_w2": cell["w2"], "w2": w2, "weights": which,
                     "checkpoint": cell["protocol"].get("checkpoint")})
        if progress:
            print(f"seed {seed}: protocol {cell['w2']:.3f}, draws "
                  + ", ".join(f"{v:.3f}" for v in w2), flush=True)
    floor = []
    for k in range(draws):
        g = stream(0, "w2-noise-floor", task, str(k))
        floor.append(wasserstein(sets[k][1], toy.sample(target, n, g), p=2))
    if progress:
        print("floor: " + ", ".join(f"{v:.3f}" for v in floor), flush=True)
    return {"task": task, "method": method, "n_test": n, "draws": draws, "seeds": rows,
            "floor": floor}


def main(argv: list[str] | None = None) -> int:
    """Measure (or, with --report-only, only render) and write the record and the page."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, help="run folder of a finished otcfm bench two-dim")
    ap.add_argument("--task", default="moons-8gaussians", choices=toy.TASKS)
    ap.add_argument("--method", default="otcfm")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 42, 43, ... (default 5)")
    ap.add_argument("--draws", type=int, default=5, help="test-set pairs (default 5)")
    ap.add_argument("--n", type=int, default=10_000, help="test-set size (the protocol's)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON record")
    ap.add_argument("--md", type=Path, help="the page (default: the record's .md)")
    ap.add_argument("--report-only", action="store_true", help="render the page from --out")
    args = ap.parse_args(argv)
    md = args.md or args.out.with_suffix(".md")
    if not args.report_only:
        if args.runs is None:
            ap.error("--runs is required unless --report-only")
        if min(args.seeds, args.draws, args.n) < 2:
            ap.error("--seeds, --draws and --n must be at least 2")
        start = time.perf_counter()
        record = measure(args.runs, args.task, args.method, args.seeds, args.draws, args.n)
        record["meta"] = {
            "command": "python benchmarks/w2_noise.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine.machine(), "wall_seconds": time.perf_counter() - start}
        write_text_atomic(json.dumps(record, indent=1) + "\n", args.out)
    write_text_atomic(render(json.loads(args.out.read_text())), md)
    print(f"wrote {md}")
    return 0


# --------------------------------------------------------------------------- page
def _ms(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The spreads the page states (population std throughout)."""
    rows = record["seeds"]
    k = record["draws"]
    per_draw_std = [statistics.pstdev([r["w2"][j] for r in rows]) for j in range(k)]
    per_seed_std = [statistics.pstdev(r["w2"]) for r in rows]
    means = [statistics.fmean(r["w2"]) for r in rows]
    pub = _published.section("two_dim")["w2"].get(record["method"], {})
    return {
        "protocol": [r["protocol_w2"] for r in rows],
        "shared_std": per_draw_std,
        "draw_std": per_seed_std,
        "draw_means": means,
        "all": [v for r in rows for v in r["w2"]],
        "floor": record["floor"],
        "paper": pub.get(record["task"]),
    }


def render(record: dict[str, Any]) -> str:
    """The markdown page of a record."""
    s = summary(record)
    rows, k, task = record["seeds"], record["draws"], record["task"]
    m = record["meta"]
    lines = [
        f"# How much of the W2 spread is the test draw ({task}, {record['method']})\n",
        f"The 2-D protocol tests each seed's model once, on that seed's own "
        f"{record['n_test']:,}-point test sets. Here the same models (the weights the protocol "
        f"tested: `{rows[0]['checkpoint']}`) are tested again on {k} more pairs of test sets "
        "of the same size; draw k is the same pair for every seed. W2 after 100 Euler steps. "
        "The sampling floor is W2 between two independent test-sized samples of the target: "
        "what a perfect model would score.\n",
        f"- Command: `{m['command']}`",
        f"- Machine: {m['machine']}",
        f"- Date: {m['date']}; wall time {m['wall_seconds']:.0f} s",
        "- Rendered from `w2_noise.json` by `python benchmarks/pages.py`.\n",
        "| seed | protocol's test sets | " + " | ".join(f"draw {j}" for j in range(k))
        + " | mean over draws | std over draws |",
        "|---|---|" + "---|" * (k + 2),
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['protocol_w2']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in r["w2"])
                     + f" | {statistics.fmean(r['w2']):.3f} | {statistics.pstdev(r['w2']):.3f} |")
    lines.append("| std over seeds | " + f"{statistics.pstdev(s['protocol']):.3f} | "
                 + " | ".join(f"{v:.3f}" for v in s["shared_std"])
                 + f" | {statistics.pstdev(s['draw_means']):.3f} | |")
    lines.append("| sampling floor | | " + " | ".join(f"{v:.3f}" for v in s["floor"])
                 + f" | {statistics.fmean(s['floor']):.3f} | {statistics.pstdev(s['floor']):.3f} |")
    lines.append("")
    paper = s["paper"]
    pub = f"{paper[0]:.3f} ± {paper[1]:.3f}" if paper else "not published"
    lines += [
        "## Reading\n",
        f"- Across seeds, each on its own test sets (the protocol): {_ms(s['protocol'])}; "
        f"the paper: {pub}.",
        f"- One model, {k} test draws: the std over draws is "
        f"{min(s['draw_std']):.3f} to {max(s['draw_std']):.3f} "
        f"(mean {statistics.fmean(s['draw_std']):.3f}) per seed: the test draw alone moves a "
        "fixed model's W2 by that much.",
        f"- Sharing the test sets does not remove the spread: on one shared draw the std over "
        f"seeds is {min(s['shared_std']):.3f} to {max(s['shared_std']):.3f}; averaging the "
        f"{k} draws per seed leaves {statistics.pstdev(s['draw_means']):.3f}.",
        f"- The floor itself, over {k} draws: {_ms(s['floor'])} (range "
        f"{min(s['floor']):.3f} to {max(s['floor']):.3f}).",
    ]
    if paper:
        twice = 2 * paper[1]
        floor_std = statistics.pstdev(s["floor"])
        lines.append(
            f"- Twice the paper's std is {twice:.3f}; the floor's own std over draws (the "
            f"test-draw noise of a perfect model) is {floor_std:.3f}, and one of these models' "
            f"{statistics.fmean(s['draw_std']):.3f}. "
            + ("Twice the paper's std is below both: an across-seed std within it cannot come "
               "from one fresh test draw of this size per seed."
               if twice < min(floor_std, statistics.fmean(s["draw_std"])) else
               "Twice the paper's std is not below both of them."))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
